/* A NACK's error_detail text, built entry by entry: "name: reason" entries joined by "; " (as istio/ztunnel
 * src/xds/client.rs joins its rejections), at most XDS_NACK_MAX bytes, the rest counted in "; ... and N more
 * rejected". For the client-side stores of zmesh's own types (enrol_store.h, l7_store.h). */
#pragma once
#include <stdio.h>

struct xds_nack {
    FILE *f;
    char *text;
    size_t len, entries, dropped;
};

/* Adds one entry (printf-formatted reason). */
void xds_nack_add(struct xds_nack *k, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Finishes the text: malloc'd (the caller frees it), or NULL when nothing was added. k is spent. */
char *xds_nack_done(struct xds_nack *k);

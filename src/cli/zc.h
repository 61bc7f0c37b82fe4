/* `zmesh ztunnel-config`: istioctl's tables and JSON views of a ztunnel's admin /config_dump
 * (istio/istio istioctl/pkg/writer/ztunnel/configdump/). Rendering only: the caller fetches the dump. */
#ifndef ZMESH_CLI_ZC_H
#define ZMESH_CLI_ZC_H

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include <jansson.h>

enum zc_kind { ZC_WORKLOADS, ZC_SERVICES, ZC_POLICIES, ZC_CERTIFICATES, ZC_ALL };

enum zc_format { ZC_SHORT, ZC_JSON };

/* istioctl's filters; NULL or "" = no filter. Compared case-insensitively, as istioctl's strings.EqualFold.
 */
struct zc_filter {
    const char *workload_namespace, *workload_node; /* workloads */
    const char *service_namespace;                  /* services */
    const char *policy_namespace;                   /* policies */
    bool with_headers;                              /* all: "------ WORKLOAD INFO ------" before each table */
};

/* Parses a /config_dump body into *dump (the caller json_decref()s it). Returns 0, or -EINVAL with a reason
 * in err when the body is not a JSON object. */
int zc_parse(const char *body, size_t len, json_t **dump, char *err, size_t errlen);

/* Writes the view of `kind` in format fmt to out. raw/raw_len is the dump's text, printed as it is for
 * `all -o json` (istioctl prints the full dump unchanged). now (whole seconds) decides each certificate's
 * VALID CERT. Returns 0, -ENOMEM, or -EIO when out fails. */
int zc_render(FILE *out, const json_t *dump, const char *raw, size_t raw_len, enum zc_kind kind,
              enum zc_format fmt, const struct zc_filter *f, time_t now);

/* Go text/tabwriter with istioctl's settings (minwidth 0, padchar ' ', no flags): every cell but the last
 * of a row is padded to its column's widest cell (in UTF-8 characters) plus `padding` spaces. Exposed for
 * the unit tests. */
struct zc_table;
struct zc_table *zc_table_new(size_t ncols, size_t padding);
/* Adds a row of ncols cells (copied). Returns 0 or -ENOMEM. */
int zc_table_row(struct zc_table *t, const char *const *cells);
/* Writes the rows and frees t. Returns 0 or -EIO. */
int zc_table_flush(struct zc_table *t, FILE *out);
void zc_table_free(struct zc_table *t);

/* Decimal string -> lowercase hexadecimal without leading zeros, as Go's fmt %x of a big.Int ("<nil>" when
 * dec is not a decimal number). Returns 0 or -ENOSPC when buf is too small. */
int zc_serial_hex(const char *dec, char *buf, size_t n);

/* Parses an RFC 3339 timestamp (Z or a numeric offset, optional fraction). Returns 0 or -EINVAL. */
int zc_parse_rfc3339(const char *s, time_t *out);

#endif

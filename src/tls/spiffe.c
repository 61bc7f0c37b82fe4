/* SPIFFE id parsing and formatting. Kept free of OpenSSL so the fuzz target links nothing else. */
#include "tls/spiffe.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SPIFFE_PREFIX "spiffe://"
#define SPIFFE_PREFIX_LEN (sizeof(SPIFFE_PREFIX) - 1)

/* Bytes that may never appear in a segment: the separator, URI query/fragment markers, and anything that
 * would corrupt a log line or a metric label. */
static int seg_byte_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '/' && c != '?' && c != '#';
}

static int seg_ok(const char *s, size_t len)
{
    if (len == 0) return 0;
    for (size_t i = 0; i < len; i++)
        if (!seg_byte_ok((unsigned char)s[i])) return 0;
    return 1;
}

/* Copies a segment into a fixed buffer; fails when it does not fit with its NUL. */
static int seg_copy(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap) return -EINVAL;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

int spiffe_parse(const char *s, size_t len, struct spiffe_id *out)
{
    const char *seg[5];
    size_t seglen[5];
    size_t nseg = 0;
    int rc = -EINVAL;

    memset(out, 0, sizeof(*out));
    if (!s || len >= SPIFFE_MAX || len < SPIFFE_PREFIX_LEN) goto out;
    if (memcmp(s, SPIFFE_PREFIX, SPIFFE_PREFIX_LEN) != 0) goto out;

    /* Split the rest on '/'; a sixth segment (including an empty one after a trailing slash) is an error. */
    const char *p = s + SPIFFE_PREFIX_LEN, *end = s + len;
    for (;;) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *segend = slash ? slash : end;
        if (nseg == 5) goto out;
        seg[nseg] = p;
        seglen[nseg] = (size_t)(segend - p);
        if (!seg_ok(seg[nseg], seglen[nseg])) goto out;
        nseg++;
        if (!slash) break;
        p = slash + 1;
    }
    if (nseg != 5) goto out;
    if (seglen[1] != 2 || memcmp(seg[1], "ns", 2) != 0) goto out;
    if (seglen[3] != 2 || memcmp(seg[3], "sa", 2) != 0) goto out;
    if (seg_copy(out->td, sizeof(out->td), seg[0], seglen[0]) < 0) goto out;
    if (seg_copy(out->ns, sizeof(out->ns), seg[2], seglen[2]) < 0) goto out;
    if (seg_copy(out->sa, sizeof(out->sa), seg[4], seglen[4]) < 0) goto out;
    rc = 0;
out:
    if (rc < 0) memset(out, 0, sizeof(*out));
    return rc;
}

int spiffe_format(const struct spiffe_id *id, char *buf, size_t n)
{
    int len = snprintf(buf, n, SPIFFE_PREFIX "%s/ns/%s/sa/%s", id->td, id->ns, id->sa);
    if (len < 0 || (size_t)len >= n) {
        if (n) buf[0] = '\0';
        return -ENOSPC;
    }
    return len;
}

int spiffe_set(struct spiffe_id *id, const char *td, const char *ns, const char *sa)
{
    struct spiffe_id tmp;

    if (!td || !*td) td = "cluster.local";
    if (!sa || !*sa) sa = "default";
    if (!ns || !*ns) return -EINVAL;
    if (!seg_ok(td, strlen(td)) || !seg_ok(ns, strlen(ns)) || !seg_ok(sa, strlen(sa))) return -EINVAL;
    if (seg_copy(tmp.td, sizeof(tmp.td), td, strlen(td)) < 0) return -EINVAL;
    if (seg_copy(tmp.ns, sizeof(tmp.ns), ns, strlen(ns)) < 0) return -EINVAL;
    if (seg_copy(tmp.sa, sizeof(tmp.sa), sa, strlen(sa)) < 0) return -EINVAL;
    /* Keep the invariant that every id held in a struct formats into SPIFFE_MAX. */
    if (SPIFFE_PREFIX_LEN + strlen(td) + 4 + strlen(ns) + 4 + strlen(sa) >= SPIFFE_MAX) return -EINVAL;
    *id = tmp;
    return 0;
}

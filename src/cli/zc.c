/* istioctl's ztunnel-config views (istio/istio istioctl/pkg/writer/ztunnel/configdump/{workload,services,
 * policies,certificates,configdump}.go), computed from the JSON that /config_dump serves. Facts taken from
 * there: columns and their order, sorting, "None"/"NA" for waypoints, ENDPOINTS as healthy/total counted by
 * workload status, certificate types and hex serials, and Go text/tabwriter's padding. */
#include "cli/zc.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>

/* istioctl's tabwriter padding: 1 for most tables, 5 for the certificate summary (certificates.go). */
#define ZC_PAD 1
#define ZC_CERT_PAD 5
/* Room for a certificate serial in hex: X.509 allows 20 octets, room is left for malformed dumps. */
#define ZC_SERIAL_HEX_MAX 128
/* jansson's indentation for -o json: istioctl's json.MarshalIndent(.., "", "    "). */
#define ZC_JSON_INDENT 4

/* ---- tabwriter ---- */

struct zc_table {
    size_t ncols, padding, nrows, cap;
    char **cells; /* nrows * ncols */
};

struct zc_table *zc_table_new(size_t ncols, size_t padding)
{
    struct zc_table *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->ncols = ncols;
    t->padding = padding;
    return t;
}

void zc_table_free(struct zc_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

int zc_table_row(struct zc_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 16;
        char **nc = realloc(t->cells, ncap * t->ncols * sizeof(*nc));
        if (!nc) return -ENOMEM;
        t->cells = nc;
        t->cap = ncap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t c = 0; c < t->ncols; c++) {
        row[c] = strdup(cells[c] ? cells[c] : "");
        if (!row[c]) {
            while (c > 0)
                free(row[--c]);
            return -ENOMEM;
        }
    }
    t->nrows++;
    return 0;
}

/* Width as tabwriter counts it: UTF-8 characters (continuation bytes do not count). */
static size_t utf8_width(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80) n++;
    return n;
}

int zc_table_flush(struct zc_table *t, FILE *out)
{
    int rc = 0;
    size_t *w = calloc(t->ncols ? t->ncols : 1, sizeof(*w));
    if (!w) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t cw = utf8_width(t->cells[r * t->ncols + c]);
            if (cw > w[c]) w[c] = cw;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            fputs(cell, out);
            /* The last cell follows the last tab: tabwriter leaves it unpadded. */
            if (c + 1 < t->ncols) fprintf(out, "%*s", (int)(w[c] - utf8_width(cell) + t->padding), "");
        }
        fputc('\n', out);
    }
    if (ferror(out)) rc = -EIO;
out:
    free(w);
    zc_table_free(t);
    return rc;
}

/* ---- helpers over the dump ---- */

/* A JSON string member, "" when absent or not a string (Go's zero value for a missing field). */
static const char *str_of(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static bool filter_ok(const char *want, const char *have)
{
    return !want || !*want || !strcasecmp(want, have);
}

/* istioctl accepts each section as a list or as a map of values (configdump.go unmarshalListOrMap). The
 * elements are borrowed from the dump into a malloc'd array (*out, freed by the caller). */
static int section(const json_t *dump, const char *key, const json_t ***out, size_t *n)
{
    const json_t *v = json_object_get(dump, key);
    size_t cap = json_is_array(v) ? json_array_size(v) : json_is_object(v) ? json_object_size(v) : 0;
    *out = NULL;
    *n = 0;
    if (!cap) return 0;
    const json_t **a = calloc(cap, sizeof(*a));
    if (!a) return -ENOMEM;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) a[(*n)++] = e;
    } else {
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e) a[(*n)++] = e;
    }
    *out = a;
    return 0;
}

static int cmp_workloads(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    /* workload.go sorts by namespace + "." + name, then node. */
    char *kx = NULL, *ky = NULL;
    int r = 0;
    if (asprintf(&kx, "%s.%s", str_of(x, "namespace"), str_of(x, "name")) < 0) kx = NULL;
    if (asprintf(&ky, "%s.%s", str_of(y, "namespace"), str_of(y, "name")) < 0) ky = NULL;
    if (kx && ky) r = strcmp(kx, ky);
    free(kx);
    free(ky);
    return r ? r : strcmp(str_of(x, "node"), str_of(y, "node"));
}

static int cmp_services(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    int r = strcmp(str_of(x, "namespace"), str_of(y, "namespace"));
    if (!r) r = strcmp(str_of(x, "name"), str_of(y, "name"));
    return r ? r : strcmp(str_of(x, "hostname"), str_of(y, "hostname"));
}

static int cmp_policies(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    int r = strcmp(str_of(x, "namespace"), str_of(y, "namespace"));
    return r ? r : strcmp(str_of(x, "name"), str_of(y, "name"));
}

/* istioctl finds a waypoint's service and an endpoint's workload by linear scans; zmesh indexes them in
 * jansson objects (hash tables) so that the dump of a large mesh renders in linear time. */

/* "ns/hostname" and every VIP of each service -> that service; the first service wins, as istioctl's scan
 * returns the first match. Returns a new object or NULL (ENOMEM). */
static json_t *waypoint_index(const json_t *const *svcs, size_t n)
{
    json_t *idx = json_object();
    for (size_t i = 0; idx && i < n; i++) {
        char *key = NULL;
        if (asprintf(&key, "%s/%s", str_of(svcs[i], "namespace"), str_of(svcs[i], "hostname")) < 0) goto fail;
        int r = json_object_get(idx, key) ? 0 : json_object_set(idx, key, (json_t *)svcs[i]);
        free(key);
        if (r) goto fail;
        size_t j;
        json_t *vip;
        json_array_foreach(json_object_get(svcs[i], "vips"), j, vip)
        {
            const char *v = json_string_value(vip);
            if (v && !json_object_get(idx, v) && json_object_set(idx, v, (json_t *)svcs[i])) goto fail;
        }
    }
    return idx;
fail:
    json_decref(idx);
    return NULL;
}

/* The WAYPOINT column (workload.go waypointName): "None" without a waypoint, else the name of the service
 * whose "ns/hostname" or one of whose VIPs is the waypoint's destination, else "NA". */
static const char *waypoint_name(const json_t *obj, const json_t *idx)
{
    const json_t *wp = json_object_get(obj, "waypoint");
    if (!wp || json_is_null(wp)) return "None";
    const json_t *svc = json_object_get(idx, str_of(wp, "destination"));
    return svc ? str_of(svc, "name") : "NA";
}

/* Joins the strings of a JSON array with sep into a malloc'd string; each element goes through pick() (the
 * VIP column keeps what follows "network/"). */
static char *join(const json_t *arr, const char *sep, const char *(*pick)(const char *))
{
    size_t len = 1, i;
    json_t *e;
    json_array_foreach(arr, i, e) len +=
        strlen(json_string_value(e) ? json_string_value(e) : "") + strlen(sep);
    char *s = malloc(len);
    if (!s) return NULL;
    s[0] = '\0';
    json_array_foreach(arr, i, e)
    {
        const char *v = json_string_value(e) ? json_string_value(e) : "";
        if (i) strcat(s, sep);
        strcat(s, pick ? pick(v) : v);
    }
    return s;
}

/* services.go: strings.Cut(addr, "/") keeps what follows the first slash, "" when there is none. */
static const char *after_network(const char *addr)
{
    const char *slash = strchr(addr, '/');
    return slash ? slash + 1 : "";
}

/* ---- summaries ---- */

static int print_workloads(FILE *out, const json_t *dump, const struct zc_filter *f)
{
    const json_t **wls = NULL, **svcs = NULL;
    size_t n_wls = 0, n_svcs = 0, kept = 0;
    struct zc_table *t = NULL;
    json_t *wp_idx = NULL;
    int rc = section(dump, "workloads", &wls, &n_wls);
    if (!rc) rc = section(dump, "services", &svcs, &n_svcs);
    if (rc) goto out;
    rc = -ENOMEM;
    if (!(wp_idx = waypoint_index(svcs, n_svcs))) goto out;
    for (size_t i = 0; i < n_wls; i++)
        if (filter_ok(f->workload_namespace, str_of(wls[i], "namespace")) &&
            filter_ok(f->workload_node, str_of(wls[i], "node")))
            wls[kept++] = wls[i];
    if (kept) qsort(wls, kept, sizeof(*wls), cmp_workloads);
    rc = -ENOMEM;
    if (!(t = zc_table_new(6, ZC_PAD))) goto out;
    static const char *const head[] = {"NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"};
    if (zc_table_row(t, head)) goto out;
    for (size_t i = 0; i < kept; i++) {
        char *addr = join(json_object_get(wls[i], "workloadIps"), ",", NULL);
        if (!addr) goto out;
        const char *row[] = {str_of(wls[i], "namespace"),
                             str_of(wls[i], "name"),
                             *addr ? addr : str_of(wls[i], "hostname"),
                             str_of(wls[i], "node"),
                             waypoint_name(wls[i], wp_idx),
                             str_of(wls[i], "protocol")};
        int r = zc_table_row(t, row);
        free(addr);
        if (r) goto out;
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    json_decref(wp_idx);
    free(wls);
    free(svcs);
    return rc;
}

static int print_services(FILE *out, const json_t *dump, const struct zc_filter *f)
{
    const json_t **wls = NULL, **svcs = NULL, **shown = NULL;
    size_t n_wls = 0, n_svcs = 0, kept = 0;
    struct zc_table *t = NULL;
    json_t *wp_idx = NULL, *by_uid = NULL;
    int rc = section(dump, "workloads", &wls, &n_wls);
    if (!rc) rc = section(dump, "services", &svcs, &n_svcs);
    if (rc) goto out;
    rc = -ENOMEM;
    if (!(wp_idx = waypoint_index(svcs, n_svcs)) || !(by_uid = json_object())) goto out;
    /* services.go groups the workloads by uid with slices.GroupUnique: the last one with a uid wins. */
    for (size_t i = 0; i < n_wls; i++)
        if (json_object_set(by_uid, str_of(wls[i], "uid"), (json_t *)wls[i])) goto out;
    /* The waypoint lookup sees every service, the table only the filtered ones: keep a sorted copy. */
    if (n_svcs && !(shown = calloc(n_svcs, sizeof(*shown)))) goto out;
    for (size_t i = 0; i < n_svcs; i++)
        if (filter_ok(f->service_namespace, str_of(svcs[i], "namespace"))) shown[kept++] = svcs[i];
    if (kept) qsort(shown, kept, sizeof(*shown), cmp_services);
    rc = -ENOMEM;
    if (!(t = zc_table_new(5, ZC_PAD))) goto out;
    static const char *const head[] = {"NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"};
    if (zc_table_row(t, head)) goto out;
    for (size_t i = 0; i < kept; i++) {
        /* services.go: every endpoint counts in the total; it is healthy when the workload with its uid is
         * in the dump with status Healthy (the endpoint's own status is not consulted). */
        const json_t *eps = json_object_get(shown[i], "endpoints");
        size_t total = json_is_object(eps) ? json_object_size(eps) : 0, healthy = 0;
        const char *k;
        json_t *ep;
        json_object_foreach((json_t *)eps, k, ep)
        {
            const json_t *match = json_object_get(by_uid, str_of(ep, "workloadUid"));
            if (match && !strcmp(str_of(match, "status"), "Healthy")) healthy++;
        }
        char counts[48];
        snprintf(counts, sizeof(counts), "%zu/%zu", healthy, total);
        char *vips = join(json_object_get(shown[i], "vips"), ",", after_network);
        if (!vips) goto out;
        const char *row[] = {str_of(shown[i], "namespace"), str_of(shown[i], "name"), vips,
                             waypoint_name(shown[i], wp_idx), counts};
        int r = zc_table_row(t, row);
        free(vips);
        if (r) goto out;
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    json_decref(wp_idx);
    json_decref(by_uid);
    free(shown);
    free(wls);
    free(svcs);
    return rc;
}

static int print_policies(FILE *out, const json_t *dump, const struct zc_filter *f)
{
    const json_t **pols = NULL;
    size_t n = 0, kept = 0;
    struct zc_table *t = NULL;
    int rc = section(dump, "policies", &pols, &n);
    if (rc) goto out;
    for (size_t i = 0; i < n; i++)
        if (filter_ok(f->policy_namespace, str_of(pols[i], "namespace"))) pols[kept++] = pols[i];
    if (kept) qsort(pols, kept, sizeof(*pols), cmp_policies);
    rc = -ENOMEM;
    if (!(t = zc_table_new(4, ZC_PAD))) goto out;
    static const char *const head[] = {"NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"};
    if (zc_table_row(t, head)) goto out;
    for (size_t i = 0; i < kept; i++) {
        const char *row[] = {str_of(pols[i], "namespace"), str_of(pols[i], "name"), str_of(pols[i], "action"),
                             str_of(pols[i], "scope")};
        if (zc_table_row(t, row)) goto out;
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    free(pols);
    return rc;
}

int zc_serial_hex(const char *dec, char *buf, size_t n)
{
    BIGNUM *bn = NULL;
    char *hex = NULL;
    int rc = 0;
    const char *p = dec;
    /* Go's big.Int SetString(s, 10): an optional sign, then decimal digits only. */
    if (*p == '+' || *p == '-') p++;
    bool ok = *p != '\0';
    for (const char *q = p; ok && *q; q++)
        ok = isdigit((unsigned char)*q);
    const char *res = "<nil>";
    if (ok && BN_dec2bn(&bn, p) > 0 && (hex = BN_bn2hex(bn))) {
        res = hex;
        while (res[0] == '0' && res[1]) /* BN_bn2hex writes whole octets; %x has no leading zeros */
            res++;
    }
    bool neg = ok && *dec == '-' && strcmp(res, "0") != 0;
    if ((size_t)snprintf(buf, n, "%s%s", neg ? "-" : "", res) >= n) rc = -ENOSPC;
    for (char *c = buf; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    OPENSSL_free(hex);
    BN_free(bn);
    return rc;
}

int zc_parse_rfc3339(const char *s, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p) return -EINVAL;
    if (*p == '.') { /* fractional seconds do not change the second the certificate turns valid */
        p++;
        if (!isdigit((unsigned char)*p)) return -EINVAL;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        if (!isdigit((unsigned char)p[1]) || !isdigit((unsigned char)p[2]) || p[3] != ':' ||
            !isdigit((unsigned char)p[4]) || !isdigit((unsigned char)p[5]))
            return -EINVAL;
        off = sign * (((p[1] - '0') * 10 + (p[2] - '0')) * 3600L + ((p[4] - '0') * 10 + (p[5] - '0')) * 60L);
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p) return -EINVAL;
    *out = timegm(&tm) - off;
    return 0;
}

/* certificates.go certNotExpired: valid when both times parse and now is after validFrom and before
 * expirationTime. istioctl compares with a sub-second clock and the dump's times are whole seconds, so with
 * now truncated to seconds "after validFrom" is now >= from (a root minted this second is valid). */
static bool cert_valid(const json_t *cert, time_t now)
{
    time_t from, to;
    if (zc_parse_rfc3339(str_of(cert, "validFrom"), &from) ||
        zc_parse_rfc3339(str_of(cert, "expirationTime"), &to))
        return false;
    return now >= from && now < to;
}

static const char *or_na(const char *s)
{
    return *s ? s : "NA";
}

static int cert_row(struct zc_table *t, const char *identity, const char *type, const char *state,
                    const json_t *cert, time_t now)
{
    char serial[ZC_SERIAL_HEX_MAX];
    if (zc_serial_hex(str_of(cert, "serialNumber"), serial, sizeof(serial)))
        snprintf(serial, sizeof(serial), "<too long>");
    const char *row[] = {identity,
                         type,
                         state,
                         cert_valid(cert, now) ? "true" : "false",
                         serial,
                         or_na(str_of(cert, "expirationTime")),
                         or_na(str_of(cert, "validFrom"))};
    return zc_table_row(t, row);
}

static int print_certificates(FILE *out, const json_t *dump, time_t now)
{
    const json_t **certs = NULL;
    size_t n = 0;
    struct zc_table *t = NULL;
    int rc = section(dump, "certificates", &certs, &n);
    if (rc) goto out;
    rc = -ENOMEM;
    if (!(t = zc_table_new(7, ZC_CERT_PAD))) goto out;
    static const char *const head[] = {"CERTIFICATE NAME", "TYPE",      "STATUS",    "VALID CERT",
                                       "SERIAL NUMBER",    "NOT AFTER", "NOT BEFORE"};
    if (zc_table_row(t, head)) goto out;
    /* In the dump's order: istioctl does not sort certificates. */
    for (size_t i = 0; i < n; i++) {
        const char *id = str_of(certs[i], "identity");
        /* "Unavailable: <error>" is shortened to its state name. */
        const char *state =
            strstr(str_of(certs[i], "state"), "Unavailable") ? "Unavailable" : str_of(certs[i], "state");
        const json_t *chain = json_object_get(certs[i], "certChain");
        const json_t *roots = json_object_get(certs[i], "rootCerts");
        size_t n_chain = json_is_array(chain) ? json_array_size(chain) : 0;
        if (!n_chain) {
            const char *row[] = {id, "NA", state, "false", "NA", "NA", "NA"};
            if (zc_table_row(t, row)) goto out;
            continue;
        }
        /* Older ztunnels put the root at the end of certChain and had no rootCerts. */
        bool legacy = !json_is_array(roots) || json_array_size(roots) == 0;
        for (size_t j = 0; j < n_chain; j++) {
            const char *type = j == 0 ? "Leaf" : j == n_chain - 1 && legacy ? "Root" : "Intermediate";
            if (cert_row(t, id, type, state, json_array_get(chain, j), now)) goto out;
        }
        size_t j;
        json_t *root;
        json_array_foreach(roots, j, root)
        {
            if (cert_row(t, id, "Root", state, root, now)) goto out;
        }
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    free(certs);
    return rc;
}

/* configdump.go PrintFullSummary. zmesh's dump has no workloadState (connections), so the last table is
 * istioctl's header alone, as istioctl prints it for such a dump. */
static int print_all(FILE *out, const json_t *dump, const struct zc_filter *f, time_t now)
{
    static const struct zc_filter none = {0};
    static const char *const conn_head[] = {"WORKLOAD", "DIRECTION",     "LOCAL",
                                            "REMOTE",   "REMOTE TARGET", "PROTOCOL"};
    struct zc_table *t = NULL;
    int rc;
#define ZC_SECTION(title)                                                                                    \
    do {                                                                                                     \
        fputs("\n", out);                                                                                    \
        if (f->with_headers) fputs("------ " title " ------\n\n", out);                                      \
    } while (0)
    ZC_SECTION("WORKLOAD INFO");
    if ((rc = print_workloads(out, dump, &none))) goto out;
    ZC_SECTION("SERVICE INFO");
    if ((rc = print_services(out, dump, &none))) goto out;
    ZC_SECTION("POLICY INFO");
    if ((rc = print_policies(out, dump, &none))) goto out;
    ZC_SECTION("SECRET INFO");
    if ((rc = print_certificates(out, dump, now))) goto out;
    ZC_SECTION("CONNECTIONS INFO");
#undef ZC_SECTION
    rc = -ENOMEM;
    if (!(t = zc_table_new(6, ZC_PAD)) || zc_table_row(t, conn_head)) goto out;
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    return rc;
}

/* ---- -o json ---- */

/* A section's elements as a JSON array, filtered (keep) and sorted (cmp, may be NULL), printed with
 * istioctl's four-space indent. */
static int print_json_section(FILE *out, const json_t *dump, const char *key, const struct zc_filter *f,
                              bool (*keep)(const json_t *, const struct zc_filter *),
                              int (*cmp)(const void *, const void *))
{
    const json_t **el = NULL;
    size_t n = 0, kept = 0;
    json_t *arr = NULL;
    int rc = section(dump, key, &el, &n);
    if (rc) goto out;
    for (size_t i = 0; i < n; i++)
        if (!keep || keep(el[i], f)) el[kept++] = el[i];
    if (cmp && kept) qsort(el, kept, sizeof(*el), cmp);
    rc = -ENOMEM;
    if (!(arr = json_array())) goto out;
    for (size_t i = 0; i < kept; i++)
        if (json_array_append(arr, (json_t *)el[i])) goto out;
    rc = json_dumpf(arr, out, JSON_INDENT(ZC_JSON_INDENT) | JSON_PRESERVE_ORDER) ? -EIO : 0;
    fputc('\n', out);
out:
    json_decref(arr);
    free(el);
    return rc;
}

static bool keep_workload(const json_t *w, const struct zc_filter *f)
{
    return filter_ok(f->workload_namespace, str_of(w, "namespace")) &&
           filter_ok(f->workload_node, str_of(w, "node"));
}

static bool keep_service(const json_t *s, const struct zc_filter *f)
{
    return filter_ok(f->service_namespace, str_of(s, "namespace"));
}

static bool keep_policy(const json_t *p, const struct zc_filter *f)
{
    return filter_ok(f->policy_namespace, str_of(p, "namespace"));
}

int zc_parse(const char *body, size_t len, json_t **dump, char *err, size_t errlen)
{
    json_error_t je;
    *dump = json_loadb(body, len, 0, &je);
    if (!*dump) {
        snprintf(err, errlen, "line %d column %d: %s", je.line, je.column, je.text);
        return -EINVAL;
    }
    if (!json_is_object(*dump)) {
        json_decref(*dump);
        *dump = NULL;
        snprintf(err, errlen, "not a JSON object");
        return -EINVAL;
    }
    return 0;
}

int zc_render(FILE *out, const json_t *dump, const char *raw, size_t raw_len, enum zc_kind kind,
              enum zc_format fmt, const struct zc_filter *f, time_t now)
{
    static const struct zc_filter none = {0};
    int rc = -EINVAL;
    if (!f) f = &none;
    if (fmt == ZC_SHORT) {
        switch (kind) {
        case ZC_WORKLOADS:
            rc = print_workloads(out, dump, f);
            break;
        case ZC_SERVICES:
            rc = print_services(out, dump, f);
            break;
        case ZC_POLICIES:
            rc = print_policies(out, dump, f);
            break;
        case ZC_CERTIFICATES:
            rc = print_certificates(out, dump, now);
            break;
        case ZC_ALL:
            rc = print_all(out, dump, f, now);
            break;
        }
    } else {
        switch (kind) {
        case ZC_WORKLOADS:
            rc = print_json_section(out, dump, "workloads", f, keep_workload, NULL);
            break;
        case ZC_SERVICES:
            rc = print_json_section(out, dump, "services", f, keep_service, cmp_services);
            break;
        case ZC_POLICIES:
            rc = print_json_section(out, dump, "policies", f, keep_policy, cmp_policies);
            break;
        case ZC_CERTIFICATES:
            rc = print_json_section(out, dump, "certificates", f, NULL, NULL);
            break;
        case ZC_ALL:
            /* configdump.go PrintFullDump: the dump as received, then a newline (fmt.Fprintln). */
            rc = fwrite(raw, 1, raw_len, out) == raw_len ? 0 : -EIO;
            fputc('\n', out);
            break;
        }
    }
    if (!rc && ferror(out)) rc = -EIO;
    return rc;
}

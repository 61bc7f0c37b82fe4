/* `zmesh proxy-status` rendering (see ps.h). */
#include "cli/ps.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/zc.h"

/* Between columns. istioctl's tabwriter pads with 5; 3 keeps the table of a ztunnel (two types) in 80
 * columns with istiod-like names. */
#define PS_PADDING 3
#define PS_MAX_TYPES 16

static const char *str_of(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

int ps_parse(const char *body, size_t len, json_t **syncz, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    if (!j) {
        snprintf(err, errlen, "line %d: %s", je.line, je.text);
        return -EINVAL;
    }
    if (!json_is_array(j)) {
        snprintf(err, errlen, "not a JSON array (is this zmeshd's /debug/syncz?)");
        json_decref(j);
        return -EINVAL;
    }
    size_t i;
    json_t *p;
    json_array_foreach(j, i, p)
    {
        if (!json_is_object(p) || !json_is_string(json_object_get(p, "proxy"))) {
            snprintf(err, errlen, "entry %zu is not a proxy object with a \"proxy\" name", i);
            json_decref(j);
            return -EINVAL;
        }
    }
    *syncz = j;
    return 0;
}

json_t *ps_filter_namespace(const json_t *syncz, const char *ns)
{
    json_t *out = json_array(), *p;
    size_t i;
    if (!out) return NULL;
    json_array_foreach(syncz, i, p)
    {
        if (strcmp(str_of(p, "namespace"), ns)) continue;
        if (json_array_append(out, p) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

void ps_human_duration(int64_t ms, char *buf, size_t n)
{
    if (ms < -1000) {
        snprintf(buf, n, "<invalid>");
        return;
    }
    if (ms < 0) ms = 0;
    int64_t s = ms / 1000, m = s / 60, h = m / 60, d = h / 24, y = d / 365;
    if (s < 60 * 2)
        snprintf(buf, n, "%llds", (long long)s);
    else if (m < 10)
        s % 60 ? snprintf(buf, n, "%lldm%llds", (long long)m, (long long)(s % 60))
               : snprintf(buf, n, "%lldm", (long long)m);
    else if (m < 60 * 3)
        snprintf(buf, n, "%lldm", (long long)m);
    else if (h < 8)
        m % 60 ? snprintf(buf, n, "%lldh%lldm", (long long)h, (long long)(m % 60))
               : snprintf(buf, n, "%lldh", (long long)h);
    else if (h < 48)
        snprintf(buf, n, "%lldh", (long long)h);
    else if (h < 24 * 8)
        h % 24 ? snprintf(buf, n, "%lldd%lldh", (long long)d, (long long)(h % 24))
               : snprintf(buf, n, "%lldd", (long long)d);
    else if (h < 24 * 365 * 2)
        snprintf(buf, n, "%lldd", (long long)d);
    else if (h < 24 * 365 * 8)
        d % 365 ? snprintf(buf, n, "%lldy%lldd", (long long)y, (long long)(d % 365))
                : snprintf(buf, n, "%lldy", (long long)y);
    else
        snprintf(buf, n, "%lldy", (long long)y);
}

/* istioctl's order of the type columns: the four Envoy types in their legacy order, then the rest by URL. */
static int type_rank(const char *url)
{
    static const char *const core[] = {
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    };
    for (int i = 0; i < 4; i++)
        if (!strcmp(url, core[i])) return i;
    return 4;
}

static int type_cmp(const void *a, const void *b)
{
    const json_t *ta = *(const json_t *const *)a, *tb = *(const json_t *const *)b;
    const char *ua = str_of(ta, "type_url"), *ub = str_of(tb, "type_url");
    int ra = type_rank(ua), rb = type_rank(ub);
    return ra != rb ? ra - rb : strcmp(ua, ub);
}

static int proxy_cmp(const void *a, const void *b)
{
    const json_t *pa = *(const json_t *const *)a, *pb = *(const json_t *const *)b;
    return strcmp(str_of(pa, "proxy"), str_of(pb, "proxy"));
}

/* The proxy's entry for type_url, or NULL. */
static const json_t *type_of(const json_t *proxy, const char *type_url)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(proxy, "types"), i,
                       t) if (!strcmp(str_of(t, "type_url"), type_url)) return t;
    return NULL;
}

/* istioctl's formatStatus: NOT_SENT is "NOT SENT", an unknown state IGNORED, else the state with its age. */
static void format_status(const json_t *t, bool wide, int64_t now_ms, char *buf, size_t n)
{
    const char *st = str_of(t, "status");
    if (!*st || !strcmp(st, "UNKNOWN")) {
        snprintf(buf, n, "IGNORED");
        return;
    }
    if (!strcmp(st, "NOT_SENT")) {
        snprintf(buf, n, "NOT SENT");
        return;
    }
    time_t when;
    const char *lu = str_of(t, "last_updated");
    if (wide && *lu && zc_parse_rfc3339(lu, &when) == 0) {
        char age[32];
        ps_human_duration(now_ms - (int64_t)when * 1000, age, sizeof(age));
        snprintf(buf, n, "%s (%s)", st, age);
        return;
    }
    snprintf(buf, n, "%s", st);
}

int ps_render(FILE *out, const json_t *syncz, enum ps_format fmt, int64_t now_ms)
{
    size_t np = json_array_size(syncz), nt = 0, i, j;
    const json_t *types[PS_MAX_TYPES];
    const json_t **proxies = NULL;
    struct zc_table *tab = NULL;
    int rc = 0;

    if (np == 0) return -ENOENT;
    if (fmt == PS_JSON) {
        if (json_dumpf(syncz, out, JSON_INDENT(2)) < 0 || fputc('\n', out) == EOF) return -EIO;
        return 0;
    }
    /* The columns: every type any proxy watches (a type beyond PS_MAX_TYPES is left out of the table). */
    for (i = 0; i < np; i++) {
        json_t *t;
        json_array_foreach(json_object_get(json_array_get(syncz, i), "types"), j, t)
        {
            bool seen = false;
            for (size_t k = 0; k < nt && !seen; k++)
                seen = !strcmp(str_of(types[k], "type_url"), str_of(t, "type_url"));
            if (!seen && nt < PS_MAX_TYPES) types[nt++] = t;
        }
    }
    qsort(types, nt, sizeof(types[0]), type_cmp);
    /* -o wide adds the node each proxy says it runs on (its NODE_NAME metadata), which istioctl does not show. */
    size_t extra = fmt == PS_WIDE ? 1 : 0;
    if (!(proxies = malloc(np * sizeof(*proxies))) || !(tab = zc_table_new(nt + 4 + extra, PS_PADDING))) {
        rc = -ENOMEM;
        goto out;
    }
    for (i = 0; i < np; i++)
        proxies[i] = json_array_get(syncz, i);
    qsort(proxies, np, sizeof(*proxies), proxy_cmp);

    const char *cells[PS_MAX_TYPES + 5];
    char status[PS_MAX_TYPES][64];
    cells[0] = "NAME";
    cells[1] = "CLUSTER";
    for (j = 0; j < nt; j++) /* istioctl's short name, else the type URL as istioctl prints an unknown one */
        cells[2 + j] = *str_of(types[j], "type") ? str_of(types[j], "type") : str_of(types[j], "type_url");
    cells[2 + nt] = "ISTIOD";
    cells[3 + nt] = "VERSION";
    if (extra) cells[4 + nt] = "NODE";
    if ((rc = zc_table_row(tab, cells))) goto out;
    for (i = 0; i < np; i++) {
        const json_t *p = proxies[i];
        cells[0] = str_of(p, "proxy");
        cells[1] = str_of(p, "cluster_id");
        for (j = 0; j < nt; j++) {
            const json_t *t = type_of(p, str_of(types[j], "type_url"));
            if (t)
                format_status(t, fmt == PS_WIDE, now_ms, status[j], sizeof(status[j]));
            else
                snprintf(status[j], sizeof(status[j]), "IGNORED");
            cells[2 + j] = status[j];
        }
        cells[2 + nt] = str_of(p, "istiod");
        cells[3 + nt] = str_of(p, "istio_version");
        if (extra) cells[4 + nt] = str_of(p, "node");
        if ((rc = zc_table_row(tab, cells))) goto out;
    }
    rc = zc_table_flush(tab, out);
    tab = NULL;
    if (rc) goto out;
    /* What the table cannot show: why a type is in ERROR (the NACK's message), and streams that failed. */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        bool header = false;
        for (i = 0; i < np && !rc; i++) {
            const json_t *p = proxies[i], *t;
            if (pass == 1) {
                if (!*str_of(p, "error")) continue;
                if ((!header && fprintf(out, "\nStream errors:\n") < 0) ||
                    fprintf(out, "  %s (%s): %s\n", str_of(p, "proxy"), str_of(p, "state"),
                            str_of(p, "error")) < 0)
                    rc = -EIO;
                header = true;
                continue;
            }
            json_array_foreach(json_object_get(p, "types"), j, t)
            {
                const json_t *nack = json_object_get(t, "last_nack");
                if (!json_is_object(nack)) continue;
                if ((!header && fprintf(out, "\nNACKs:\n") < 0) ||
                    fprintf(out, "  %s %s (nonce %s, code %lld): %s\n", str_of(p, "proxy"), str_of(t, "type"),
                            str_of(nack, "nonce"),
                            (long long)json_integer_value(json_object_get(nack, "code")),
                            str_of(nack, "message")) < 0)
                    rc = -EIO;
                header = true;
            }
        }
    }
out:
    zc_table_free(tab);
    free(proxies);
    return rc;
}

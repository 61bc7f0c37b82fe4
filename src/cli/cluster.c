/* zmesh up's pure parts: addresses, placement, the resource record, the Pod spec reader and the manifest
 * reading on top of zmeshd's reader (manifest_load_json: one YAML reader in the project). */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cluster.h"

#define MANIFEST_FILES_MAX 10000
#define RECORD_LINE_MAX 2048

/* ---- settings ---- */

bool cluster_dns_label(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 63) return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-')) return false;
    return s[0] != '-' && s[n - 1] != '-';
}

bool cluster_dns_subdomain(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 253) return false;
    char buf[254];
    memcpy(buf, s, n + 1);
    for (char *save = NULL, *t = strtok_r(buf, ".", &save); t; t = strtok_r(NULL, ".", &save))
        if (!cluster_dns_label(t)) return false;
    return s[0] != '.' && s[n - 1] != '.' && !strstr(s, "..");
}

/* a.b.c.0 with the last octet 0 (node network, a /24) or a.b.0.0 (pod network, a /16). */
static int subnet_octets(const char *s, int want_zero, uint8_t o[4])
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1) return -EINVAL;
    memcpy(o, &a, 4);
    if (o[3] != 0 || (want_zero == 2 && o[2] != 0)) return -EINVAL;
    return 0;
}

int cluster_cfg_derive(struct cluster_cfg *cfg, char *err, size_t errlen)
{
    uint8_t no[4], po[4];
    size_t pl = strlen(cfg->prefix);
    if (!pl || pl > CLUSTER_PREFIX_MAX || !cluster_dns_label(cfg->prefix)) {
        snprintf(err, errlen, "--prefix \"%s\": expected 1-%d characters of [a-z0-9-]", cfg->prefix,
                 CLUSTER_PREFIX_MAX);
        return -EINVAL;
    }
    if (subnet_octets(cfg->node_subnet, 1, no)) {
        snprintf(err, errlen, "--node-subnet \"%s\": expected the network address of a /24, e.g. 172.30.0.0",
                 cfg->node_subnet);
        return -EINVAL;
    }
    if (subnet_octets(cfg->pod_subnet, 2, po)) {
        snprintf(err, errlen, "--pod-subnet \"%s\": expected the network address of a /16, e.g. 10.244.0.0",
                 cfg->pod_subnet);
        return -EINVAL;
    }
    if (!cfg->n_nodes || cfg->n_nodes > CLUSTER_MAX_NODES) {
        snprintf(err, errlen, "%zu nodes: expected 1 to %d", cfg->n_nodes, CLUSTER_MAX_NODES);
        return -EINVAL;
    }
    snprintf(cfg->host_ip, sizeof(cfg->host_ip), "%u.%u.%u.1", no[0], no[1], no[2]);
    snprintf(cfg->bridge, sizeof(cfg->bridge), "%s0", cfg->prefix);
    for (size_t i = 0; i < cfg->n_nodes; i++) {
        struct cluster_node *n = &cfg->nodes[i];
        if (!cluster_dns_label(n->name)) {
            snprintf(err, errlen, "node name \"%s\": expected a DNS label ([a-z0-9-], at most 63)", n->name);
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(cfg->nodes[j].name, n->name)) {
                snprintf(err, errlen, "node \"%s\" is declared twice", n->name);
                return -EINVAL;
            }
        n->index = (unsigned)i + 1;
        snprintf(n->ip, sizeof(n->ip), "%u.%u.%u.%u", no[0], no[1], no[2], (unsigned)(i + 2));
        snprintf(n->pod_cidr, sizeof(n->pod_cidr), "%u.%u.%u.0/24", po[0], po[1], n->index);
        snprintf(n->netns, sizeof(n->netns), "%s-%s", cfg->prefix, n->name);
    }
    return 0;
}

char *cluster_path(const struct cluster_cfg *cfg, char *buf, size_t n, const char *fmt, ...)
{
    int k = snprintf(buf, n, "%s/", cfg->state);
    va_list ap;
    va_start(ap, fmt);
    if (k > 0 && (size_t)k < n) vsnprintf(buf + k, n - (size_t)k, fmt, ap);
    va_end(ap);
    return buf;
}

void cluster_pod_netns(const struct cluster_cfg *cfg, const char *ns, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s-%s_%s", cfg->prefix, ns, name);
}

const struct cluster_node *cluster_node_find(const struct cluster_cfg *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_nodes; i++)
        if (!strcmp(cfg->nodes[i].name, name)) return &cfg->nodes[i];
    return NULL;
}

size_t cluster_place_next(unsigned *rr, size_t n_nodes)
{
    return n_nodes ? (*rr)++ % n_nodes : 0;
}

int cluster_cfg_save(const struct cluster_cfg *cfg, char *err, size_t errlen)
{
    json_t *nodes = json_array();
    for (size_t i = 0; i < cfg->n_nodes; i++)
        json_array_append_new(nodes, json_string(cfg->nodes[i].name));
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:b,s:o}", "prefix", cfg->prefix, "node_subnet", cfg->node_subnet,
                  "pod_subnet", cfg->pod_subnet, "bin_dir", cfg->bin_dir, "mesh", cfg->mesh, "nodes", nodes);
    char *s = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    char path[CLUSTER_PATH_MAX];
    int rc = s ? cluster_write_atomic(cluster_path(cfg, path, sizeof(path), "cluster.json"), s, strlen(s))
               : -ENOMEM;
    if (rc) snprintf(err, errlen, "cannot write %s/cluster.json: %s", cfg->state, strerror(-rc));
    free(s);
    return rc;
}

int cluster_cfg_load(const char *state, struct cluster_cfg *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->state, sizeof(cfg->state), "%s", state);
    char path[CLUSTER_PATH_MAX];
    json_error_t je;
    json_t *o = json_load_file(cluster_path(cfg, path, sizeof(path), "cluster.json"), 0, &je);
    if (!o) {
        if (access(path, F_OK))
            snprintf(err, errlen,
                     "no cluster in %s (no cluster.json; is it up? zmesh up <dir> --state-dir %s)", state,
                     state);
        else
            snprintf(err, errlen, "%s: %s (line %d)", path, je.text, je.line);
        return -ENOENT;
    }
    const char *prefix = NULL, *ns = NULL, *ps = NULL, *bin = NULL;
    json_t *nodes = NULL;
    int mesh = 0, rc = 0;
    if (json_unpack(o, "{s:s,s:s,s:s,s:s,s:b,s:o}", "prefix", &prefix, "node_subnet", &ns, "pod_subnet", &ps,
                    "bin_dir", &bin, "mesh", &mesh, "nodes", &nodes) ||
        !json_is_array(nodes) || json_array_size(nodes) > CLUSTER_MAX_NODES) {
        snprintf(err, errlen, "%s: not a cluster.json written by zmesh up", path);
        rc = -EINVAL;
        goto out;
    }
    snprintf(cfg->prefix, sizeof(cfg->prefix), "%s", prefix);
    snprintf(cfg->node_subnet, sizeof(cfg->node_subnet), "%s", ns);
    snprintf(cfg->pod_subnet, sizeof(cfg->pod_subnet), "%s", ps);
    snprintf(cfg->bin_dir, sizeof(cfg->bin_dir), "%s", bin);
    cfg->mesh = mesh;
    cfg->n_nodes = json_array_size(nodes);
    for (size_t i = 0; i < cfg->n_nodes; i++) {
        const char *n = json_string_value(json_array_get(nodes, i));
        snprintf(cfg->nodes[i].name, sizeof(cfg->nodes[i].name), "%s", n ? n : "");
    }
    rc = cluster_cfg_derive(cfg, err, errlen);
out:
    json_decref(o);
    return rc;
}

/* ---- files and time ---- */

int cluster_write_atomic(const char *path, const char *data, size_t len)
{
    char tmp[CLUSTER_PATH_MAX + 16];
    const char *slash = strrchr(path, '/');
    /* A dot-file: zmeshd's watcher ignores it, so only the rename is a change it sees. */
    if (slash)
        snprintf(tmp, sizeof(tmp), "%.*s/.%s.tmp", (int)(slash - path), path, slash + 1);
    else
        snprintf(tmp, sizeof(tmp), ".%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    size_t off = 0;
    while (off < len) {
        ssize_t k = write(fd, data + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            return -e;
        }
        off += (size_t)k;
    }
    if (close(fd) || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    return 0;
}

int cluster_read_file(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if ((size_t)sb.st_size > max) {
        close(fd);
        return -EFBIG;
    }
    size_t cap = (size_t)sb.st_size + 1, n = 0;
    char *b = malloc(cap);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) break;
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                close(fd);
                return -ENOMEM;
            }
            b = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, b + n, cap - n - 1);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int e = errno;
            free(b);
            close(fd);
            return -e;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    b[n] = '\0';
    *out = b;
    if (len) *len = n;
    return 0;
}

int cluster_mkdirs(const char *path, unsigned mode)
{
    char buf[CLUSTER_PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, mode) && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) && errno != EEXIST) return -errno;
    return 0;
}

int64_t cluster_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cluster_rfc3339(int64_t unix_s, char *buf, size_t n)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int cluster_parse_rfc3339(const char *s, int64_t *out)
{
    struct tm tm = {0};
    const char *e = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (!e || (*e && strcmp(e, "Z"))) return -EINVAL;
    *out = (int64_t)timegm(&tm);
    return 0;
}

/* ---- the record ---- */

static const char *const rec_names[REC_KIND_COUNT] = {[REC_NETNS] = "netns",
                                                      [REC_BRIDGE] = "bridge",
                                                      [REC_ROUTE] = "route",
                                                      [REC_POD] = "pod",
                                                      [REC_PROC] = "proc"};

const char *record_kind_str(enum record_kind k)
{
    return k < REC_KIND_COUNT ? rec_names[k] : "?";
}

static int record_append(const char *state, char sign, const struct record_entry *e)
{
    char path[CLUSTER_PATH_MAX + 8], line[RECORD_LINE_MAX];
    snprintf(path, sizeof(path), "%s/record", state);
    int n = snprintf(line, sizeof(line), "%c %s %s%s%s%s%s%s%s\n", sign, record_kind_str(e->kind), e->a,
                     *e->b ? " " : "", e->b, *e->c ? " " : "", e->c, *e->d ? " " : "", e->d);
    if (n <= 0 || (size_t)n >= sizeof(line)) return -ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    /* One write of one line with O_APPEND: a crash leaves at most a torn last line, which the reader skips.
     */
    int rc = write(fd, line, (size_t)n) == n ? 0 : -EIO;
    if (!rc && fsync(fd)) rc = -errno;
    close(fd);
    return rc;
}

int cluster_record_add(const char *state, const struct record_entry *e)
{
    return record_append(state, '+', e);
}

int cluster_record_remove(const char *state, const struct record_entry *e)
{
    return record_append(state, '-', e);
}

int cluster_record_parse_line(const char *line, struct record_entry *e, bool *added)
{
    memset(e, 0, sizeof(*e));
    if ((line[0] != '+' && line[0] != '-') || line[1] != ' ') return -EINVAL;
    *added = line[0] == '+';
    char buf[RECORD_LINE_MAX];
    if (snprintf(buf, sizeof(buf), "%s", line + 2) >= (int)sizeof(buf)) return -EINVAL;
    buf[strcspn(buf, "\n")] = '\0';
    char *save = NULL, *kind = strtok_r(buf, " ", &save);
    if (!kind) return -EINVAL;
    int k = -1;
    for (int i = 0; i < REC_KIND_COUNT; i++)
        if (!strcmp(rec_names[i], kind)) k = i;
    if (k < 0) return -EINVAL;
    e->kind = (enum record_kind)k;
    char *f[4] = {e->a, e->b, e->c, e->d};
    size_t sz[4] = {sizeof(e->a), sizeof(e->b), sizeof(e->c), sizeof(e->d)};
    int nf = 0;
    for (char *t = strtok_r(NULL, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (nf == 4 || strlen(t) >= sz[nf]) return -EINVAL;
        strcpy(f[nf++], t);
    }
    static const int want[REC_KIND_COUNT] = {
        [REC_NETNS] = 1, [REC_BRIDGE] = 1, [REC_ROUTE] = 2, [REC_POD] = 4, [REC_PROC] = 3};
    return nf == want[k] ? 0 : -EINVAL;
}

static bool rec_eq(const struct record_entry *x, const struct record_entry *y)
{
    return x->kind == y->kind && !strcmp(x->a, y->a) && !strcmp(x->b, y->b) && !strcmp(x->c, y->c) &&
           !strcmp(x->d, y->d);
}

int cluster_record_live(const char *text, struct record_entry **out, size_t *n, size_t *bad)
{
    struct record_entry *v = NULL;
    size_t nv = 0, cap = 0;
    *bad = 0;
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        char line[RECORD_LINE_MAX];
        struct record_entry e;
        bool added;
        if (l >= sizeof(line) || !nl) { /* no newline: a line torn by a crash */
            if (l) ++*bad;
        } else {
            memcpy(line, p, l);
            line[l] = '\0';
            if (cluster_record_parse_line(line, &e, &added)) {
                if (l) ++*bad;
            } else if (added) {
                if (nv == cap) {
                    cap = cap ? cap * 2 : 32;
                    struct record_entry *nvp = realloc(v, cap * sizeof(*v));
                    if (!nvp) {
                        free(v);
                        return -ENOMEM;
                    }
                    v = nvp;
                }
                v[nv++] = e;
            } else {
                /* Removes the latest matching live entry. */
                for (size_t i = nv; i-- > 0;)
                    if (rec_eq(&v[i], &e)) {
                        memmove(&v[i], &v[i + 1], (nv - i - 1) * sizeof(*v));
                        nv--;
                        break;
                    }
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    *out = v;
    *n = nv;
    return 0;
}

/* ---- objects ---- */

const char *cluster_obj_kind(const json_t *o)
{
    const char *s = json_string_value(json_object_get(o, "kind"));
    return s ? s : "";
}

const char *cluster_obj_ns(const json_t *o)
{
    const char *s = json_string_value(json_object_get(json_object_get(o, "metadata"), "namespace"));
    return s ? s : "";
}

const char *cluster_obj_name(const json_t *o)
{
    const char *s = json_string_value(json_object_get(json_object_get(o, "metadata"), "name"));
    return s ? s : "";
}

bool cluster_kind_cluster_scoped(const char *kind)
{
    static const char *const kinds[] = {
        "Namespace",        "Node",         "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
        "PersistentVolume", "StorageClass", NULL};
    for (const char *const *k = kinds; *k; k++)
        if (!strcmp(*k, kind)) return true;
    return false;
}

void cluster_api_file(const char *kind, const char *ns, const char *name, char *buf, size_t n)
{
    char k[64];
    size_t i = 0;
    for (; kind[i] && i < sizeof(k) - 1; i++)
        k[i] = (char)tolower((unsigned char)kind[i]);
    k[i] = '\0';
    snprintf(buf, n, "%s_%s_%s.json", k, ns, name);
}

/* ---- Pod specs ---- */

const char *restart_policy_str(enum restart_policy r)
{
    return r == RESTART_NEVER ? "Never" : r == RESTART_ON_FAILURE ? "OnFailure" : "Always";
}

struct pod_reader {
    const struct manifest_src *src;
    cluster_report_fn report;
    void *ud;
    struct cluster_warned *w;
    bool failed;
};

static void pr_say(struct pod_reader *r, bool warn, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void pr_say(struct pod_reader *r, bool warn, const char *field, const char *fmt, ...)
{
    char msg[600], line[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(line, sizeof(line), "%s#%u: %s: %s", r->src->file, r->src->doc, field, msg);
    if (!warn) r->failed = true;
    r->report(r->ud, warn, line);
}

/* Once-only warnings, by bit. */
enum {
    W_IMAGE = 0,
    W_LIVENESS,
    W_STARTUP,
    W_INIT,
    W_VALUE_FROM,
    W_ENV_FROM,
    W_PROBE_HOST,
    W_SECURITY,
    W_VOLUMES,
    W_RESOURCES,
    W_HOST_NETWORK,
    W_LIFECYCLE,
    W_PROBE_HEADERS,
    W_SCHEDULING,
    W_HOST_PORT,
    W_HOST_NS,
    W_STDIN
};

static void warn_once(struct pod_reader *r, int bit, const char *field, const char *msg)
{
    if (r->w->bits & (1u << bit)) return;
    r->w->bits |= 1u << bit;
    pr_say(r, true, field, "%s (said once)", msg);
}

static char *xstrdup(const char *s)
{
    return strdup(s ? s : "");
}

/* A list of strings into a NULL-terminated vector appended to *v (of *n). */
static int strs_append(struct pod_reader *r, const json_t *a, const char *field, char ***v, size_t *n)
{
    if (!a || json_is_null(a)) return 0;
    if (!json_is_array(a)) {
        pr_say(r, false, field, "expected a list of strings");
        return -EINVAL;
    }
    size_t k = json_array_size(a);
    if (*n + k > CLUSTER_MAX_ARGS) {
        pr_say(r, false, field, "more than %d entries", CLUSTER_MAX_ARGS);
        return -EINVAL;
    }
    char **nv = realloc(*v, (*n + k + 1) * sizeof(char *));
    if (!nv) return -ENOMEM;
    *v = nv;
    for (size_t i = 0; i < k; i++) {
        const json_t *e = json_array_get(a, i);
        char buf[64];
        /* Kubernetes' decoder refuses a number here; so does zmesh up, so a manifest that works here also
         * applies to a real cluster. */
        if (!json_is_string(e)) {
            snprintf(buf, sizeof(buf), "%s[%zu]", field, i);
            pr_say(r, false, buf, "expected a string (quote numbers and booleans)");
            (*v)[*n] = NULL;
            return -EINVAL;
        }
        if (!((*v)[(*n)++] = strdup(json_string_value(e)))) return -ENOMEM;
    }
    (*v)[*n] = NULL;
    return 0;
}

static int get_int(struct pod_reader *r, const json_t *o, const char *key, const char *field, int def,
                   int min, int max, int *out)
{
    const json_t *v = json_object_get(o, key);
    *out = def;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        pr_say(r, false, field, "%s: expected an integer %d..%d", key, min, max);
        return -EINVAL;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A probe's port: a number, or the name of one of the container's ports. */
static int probe_port(struct pod_reader *r, const json_t *c, const json_t *h, const char *field,
                      uint16_t *out)
{
    const json_t *p = json_object_get(h, "port");
    if (json_is_integer(p) && json_integer_value(p) >= 1 && json_integer_value(p) <= 65535) {
        *out = (uint16_t)json_integer_value(p);
        return 0;
    }
    if (json_is_string(p)) {
        const json_t *ports = json_object_get(c, "ports");
        size_t i;
        const json_t *e;
        json_array_foreach(ports, i, e)
        {
            const json_t *cp = json_object_get(e, "containerPort");
            if (json_is_string(json_object_get(e, "name")) &&
                !strcmp(json_string_value(json_object_get(e, "name")), json_string_value(p))) {
                json_int_t v = json_is_integer(cp) ? json_integer_value(cp) : 0;
                if (v < 1 || v > 65535) {
                    /* Found by fuzz_up_pod: containerPort 0 (or 70000, cut to 16 bits) made a probe of port 0. */
                    pr_say(r, false, field, "port: \"%s\" names a containerPort that is not a port 1-65535",
                           json_string_value(p));
                    return -EINVAL;
                }
                *out = (uint16_t)v;
                return 0;
            }
        }
        pr_say(r, false, field, "port: \"%s\" names no port of this container", json_string_value(p));
        return -EINVAL;
    }
    pr_say(r, false, field, "port: %s",
           p ? "expected a port 1-65535 or a port name" : "required field is missing");
    return -EINVAL;
}

static int read_probe(struct pod_reader *r, const json_t *c, const json_t *pj, const char *cfield,
                      struct probe_spec *p)
{
    char f[160];
    int rc;
    snprintf(f, sizeof(f), "%s.readinessProbe", cfield);
    if (!json_is_object(pj)) {
        pr_say(r, false, f, "expected a mapping");
        return -EINVAL;
    }
    const json_t *tcp = json_object_get(pj, "tcpSocket"), *ex = json_object_get(pj, "exec"),
                 *http = json_object_get(pj, "httpGet"), *grpc = json_object_get(pj, "grpc");
    int kinds = !!tcp + !!ex + !!http + !!grpc;
    if (kinds != 1) {
        pr_say(r, false, f, "expected exactly one of tcpSocket, exec, httpGet%s",
               grpc ? " (grpc is not supported)" : "");
        return -EINVAL;
    }
    if (grpc) {
        pr_say(r, false, f, "grpc: not supported by zmesh up (use tcpSocket, exec or httpGet)");
        return -EINVAL;
    }
    char sub[200];
    if (tcp) {
        snprintf(sub, sizeof(sub), "%s.tcpSocket", f);
        p->kind = PROBE_TCP;
        if ((rc = probe_port(r, c, tcp, sub, &p->port))) return rc;
        if (json_object_get(tcp, "host"))
            warn_once(r, W_PROBE_HOST, sub, "host: ignored; the probe connects to 127.0.0.1 in the pod");
    } else if (http) {
        snprintf(sub, sizeof(sub), "%s.httpGet", f);
        p->kind = PROBE_HTTP;
        if ((rc = probe_port(r, c, http, sub, &p->port))) return rc;
        const json_t *path = json_object_get(http, "path");
        if (path && !json_is_string(path)) {
            pr_say(r, false, sub, "path: expected a string");
            return -EINVAL;
        }
        if (!(p->path = xstrdup(path ? json_string_value(path) : "/"))) return -ENOMEM;
        if (p->path[0] != '/' || strpbrk(p->path, " \r\n")) {
            pr_say(r, false, sub, "path: expected an absolute path without blanks");
            return -EINVAL;
        }
        const json_t *scheme = json_object_get(http, "scheme");
        if (scheme && (!json_is_string(scheme) || strcmp(json_string_value(scheme), "HTTP"))) {
            pr_say(r, false, sub, "scheme: only HTTP is supported");
            return -EINVAL;
        }
        if (json_object_get(http, "host") || json_object_get(http, "httpHeaders"))
            warn_once(r, W_PROBE_HEADERS, sub, "host and httpHeaders: ignored; the probe asks 127.0.0.1");
    } else {
        snprintf(sub, sizeof(sub), "%s.exec.command", f);
        p->kind = PROBE_EXEC;
        size_t n = 0;
        if ((rc = strs_append(r, json_object_get(ex, "command"), sub, &p->command, &n))) return rc;
        if (!n) {
            pr_say(r, false, sub, "required field is missing");
            return -EINVAL;
        }
    }
    /* Kubernetes' defaults: delay 0, period 10 s, timeout 1 s, success 1, failure 3. */
    if ((rc = get_int(r, pj, "initialDelaySeconds", f, 0, 0, 3600, &p->initial_delay_s)) ||
        (rc = get_int(r, pj, "periodSeconds", f, 10, 1, 3600, &p->period_s)) ||
        (rc = get_int(r, pj, "timeoutSeconds", f, 1, 1, 3600, &p->timeout_s)) ||
        (rc = get_int(r, pj, "successThreshold", f, 1, 1, 1000, &p->success_threshold)) ||
        (rc = get_int(r, pj, "failureThreshold", f, 3, 1, 1000, &p->failure_threshold)))
        return rc;
    return 0;
}

static int read_container(struct pod_reader *r, const json_t *c, size_t i, struct container_spec *cs)
{
    char f[64], sub[100];
    int rc;
    snprintf(f, sizeof(f), "spec.containers[%zu]", i);
    if (!json_is_object(c)) {
        pr_say(r, false, f, "expected a mapping");
        return -EINVAL;
    }
    const json_t *name = json_object_get(c, "name");
    if (!json_is_string(name) || !cluster_dns_label(json_string_value(name))) {
        snprintf(sub, sizeof(sub), "%s.name", f);
        pr_say(r, false, sub,
               name ? "expected a DNS label ([a-z0-9-], at most 63)" : "required field is missing");
        return -EINVAL;
    }
    if (!(cs->name = xstrdup(json_string_value(name)))) return -ENOMEM;
    size_t n = 0;
    snprintf(sub, sizeof(sub), "%s.command", f);
    if ((rc = strs_append(r, json_object_get(c, "command"), sub, &cs->argv, &n))) return rc;
    if (!n) {
        /* Without an image there is no entrypoint for args to follow. */
        pr_say(r, false, sub,
               "required by zmesh up, which runs command/args in the pod's network namespace (no images, so "
               "no image entrypoint)");
        return -EINVAL;
    }
    snprintf(sub, sizeof(sub), "%s.args", f);
    if ((rc = strs_append(r, json_object_get(c, "args"), sub, &cs->argv, &n))) return rc;
    if (json_object_get(c, "image"))
        warn_once(r, W_IMAGE, f, "image: zmesh up runs command/args; image ignored");
    const json_t *env = json_object_get(c, "env");
    size_t ne = 0;
    if (env && !json_is_null(env)) {
        snprintf(sub, sizeof(sub), "%s.env", f);
        if (!json_is_array(env) || json_array_size(env) > CLUSTER_MAX_ARGS) {
            pr_say(r, false, sub, "expected a list of {name, value}");
            return -EINVAL;
        }
        if (!(cs->env = calloc(json_array_size(env) + 1, sizeof(char *)))) return -ENOMEM;
        size_t k;
        const json_t *e;
        json_array_foreach(env, k, e)
        {
            char ef[160];
            snprintf(ef, sizeof(ef), "%s[%zu]", sub, k);
            const json_t *en = json_object_get(e, "name"), *ev = json_object_get(e, "value");
            if (!json_is_string(en) || !*json_string_value(en) || strchr(json_string_value(en), '=')) {
                pr_say(r, false, ef, "name: expected a variable name");
                return -EINVAL;
            }
            if (json_object_get(e, "valueFrom")) {
                warn_once(r, W_VALUE_FROM, ef,
                          "valueFrom: not supported by zmesh up; the variable is not set");
                continue;
            }
            if (ev && !json_is_string(ev)) {
                pr_say(r, false, ef, "value: expected a string (quote numbers and booleans)");
                return -EINVAL;
            }
            size_t l = strlen(json_string_value(en)) + (ev ? strlen(json_string_value(ev)) : 0) + 2;
            if (!(cs->env[ne] = malloc(l))) return -ENOMEM;
            snprintf(cs->env[ne++], l, "%s=%s", json_string_value(en), ev ? json_string_value(ev) : "");
        }
    }
    if (json_object_get(c, "envFrom"))
        warn_once(r, W_ENV_FROM, f, "envFrom: not supported by zmesh up; ignored");
    const json_t *wd = json_object_get(c, "workingDir");
    if (wd && (!json_is_string(wd) || json_string_value(wd)[0] != '/')) {
        snprintf(sub, sizeof(sub), "%s.workingDir", f);
        pr_say(r, false, sub, "expected an absolute path");
        return -EINVAL;
    }
    if (wd && !(cs->working_dir = xstrdup(json_string_value(wd)))) return -ENOMEM;
    const json_t *rp = json_object_get(c, "readinessProbe");
    if (rp && !json_is_null(rp) && (rc = read_probe(r, c, rp, f, &cs->readiness))) return rc;
    if (json_object_get(c, "livenessProbe"))
        warn_once(r, W_LIVENESS, f,
                  "livenessProbe: not supported by zmesh up; ignored (only readinessProbe)");
    if (json_object_get(c, "startupProbe"))
        warn_once(r, W_STARTUP, f, "startupProbe: not supported by zmesh up; ignored (only readinessProbe)");
    if (json_object_get(c, "securityContext"))
        warn_once(r, W_SECURITY, f, "securityContext: not supported by zmesh up; containers run as root");
    if (json_object_get(c, "volumeMounts"))
        warn_once(r, W_VOLUMES, f,
                  "volumeMounts: not supported by zmesh up; containers see the host's files");
    if (json_object_get(c, "resources")) warn_once(r, W_RESOURCES, f, "resources: not enforced by zmesh up");
    size_t pi;
    const json_t *port;
    json_array_foreach(json_object_get(c, "ports"), pi, port) if (json_object_get(port, "hostPort"))
        warn_once(r, W_HOST_PORT, f, "ports[].hostPort: not published on the node by zmesh up; ignored");
    if (json_is_true(json_object_get(c, "stdin")) || json_is_true(json_object_get(c, "tty")))
        warn_once(r, W_STDIN, f, "stdin/tty: containers get /dev/null as stdin in zmesh up");
    if (json_object_get(c, "lifecycle"))
        warn_once(r, W_LIFECYCLE, f, "lifecycle: hooks are not run by zmesh up");
    return 0;
}

int cluster_pod_spec_parse(const json_t *pod, const struct manifest_src *src, struct pod_spec *out,
                           struct cluster_warned *w, cluster_report_fn report, void *ud)
{
    struct pod_reader r = {.src = src, .report = report, .ud = ud, .w = w};
    int rc = 0;
    memset(out, 0, sizeof(*out));
    const char *name = cluster_obj_name(pod), *ns = cluster_obj_ns(pod);
    if (!cluster_dns_subdomain(name)) {
        pr_say(&r, false, "metadata.name", "\"%s\": expected a DNS subdomain ([a-z0-9-.], at most 253)",
               name);
        return -EINVAL;
    }
    if (!cluster_dns_label(ns)) {
        pr_say(&r, false, "metadata.namespace", "\"%s\": expected a DNS label", ns);
        return -EINVAL;
    }
    if (!(out->name = xstrdup(name)) || !(out->ns = xstrdup(ns))) return -ENOMEM;
    const json_t *spec = json_object_get(pod, "spec");
    if (!json_is_object(spec)) {
        pr_say(&r, false, "spec", spec ? "expected a mapping" : "required field is missing");
        return -EINVAL;
    }
    const json_t *node = json_object_get(spec, "nodeName"), *sa = json_object_get(spec, "serviceAccountName");
    if (!(out->node = xstrdup(json_string_value(node))) ||
        !(out->service_account = xstrdup(json_string_value(sa))))
        return -ENOMEM;
    const json_t *rp = json_object_get(spec, "restartPolicy");
    if (rp) {
        const char *s = json_string_value(rp);
        if (s && !strcmp(s, "Always"))
            out->restart = RESTART_ALWAYS;
        else if (s && !strcmp(s, "OnFailure"))
            out->restart = RESTART_ON_FAILURE;
        else if (s && !strcmp(s, "Never"))
            out->restart = RESTART_NEVER;
        else {
            pr_say(&r, false, "spec.restartPolicy", "expected Always, OnFailure or Never");
            return -EINVAL;
        }
    }
    if ((rc = get_int(&r, spec, "terminationGracePeriodSeconds", "spec", CLUSTER_GRACE_DEFAULT_S, 0, 1 << 30,
                      &out->grace_s)))
        return rc;
    if (out->grace_s > CLUSTER_GRACE_MAX_S) out->grace_s = CLUSTER_GRACE_MAX_S;
    if (json_object_get(spec, "nodeSelector") || json_object_get(spec, "affinity") ||
        json_object_get(spec, "tolerations") || json_object_get(spec, "topologySpreadConstraints"))
        warn_once(
            &r, W_SCHEDULING, "spec",
            "nodeSelector, affinity, tolerations and topologySpreadConstraints are not honoured by zmesh up; "
            "pods go to spec.nodeName, else round robin");
    if (json_is_true(json_object_get(spec, "hostPID")) || json_is_true(json_object_get(spec, "hostIPC")))
        warn_once(&r, W_HOST_NS, "spec",
                  "hostPID/hostIPC: zmesh up shares the host's PID and IPC namespaces anyway");
    if (json_object_get(spec, "initContainers"))
        warn_once(&r, W_INIT, "spec.initContainers", "not run by zmesh up; ignored");
    if (json_is_true(json_object_get(spec, "hostNetwork")))
        warn_once(&r, W_HOST_NETWORK, "spec.hostNetwork",
                  "not supported by zmesh up; the pod gets its own network namespace");
    const json_t *cs = json_object_get(spec, "containers");
    if (!json_is_array(cs) || !json_array_size(cs) || json_array_size(cs) > CLUSTER_MAX_CONTAINERS) {
        pr_say(&r, false, "spec.containers",
               cs ? "expected a list of 1 to 16 containers" : "required field is missing");
        return -EINVAL;
    }
    if (!(out->c = calloc(json_array_size(cs), sizeof(*out->c)))) return -ENOMEM;
    for (size_t i = 0; i < json_array_size(cs); i++) {
        out->n = i + 1;
        if ((rc = read_container(&r, json_array_get(cs, i), i, &out->c[i]))) return rc;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(out->c[j].name, out->c[i].name)) {
                char f[64];
                snprintf(f, sizeof(f), "spec.containers[%zu].name", i);
                pr_say(&r, false, f, "duplicate container name \"%s\"", out->c[i].name);
                return -EINVAL;
            }
    }
    return r.failed ? -EINVAL : 0;
}

static void strv_free(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

void cluster_pod_spec_free(struct pod_spec *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->c[i].name);
        strv_free(p->c[i].argv);
        strv_free(p->c[i].env);
        free(p->c[i].working_dir);
        free(p->c[i].readiness.path);
        strv_free(p->c[i].readiness.command);
    }
    free(p->c);
    free(p->ns);
    free(p->name);
    free(p->node);
    free(p->service_account);
    memset(p, 0, sizeof(*p));
}

/* ---- manifests ---- */

struct mread {
    json_t *objs;
    struct cluster_warned *w;
    cluster_report_fn report;
    void *ud;
    int errors;
};

static void on_finding(void *ud, const struct manifest_finding *f)
{
    struct mread *m = ud;
    char buf[1024];
    manifest_finding_format(f, buf, sizeof(buf));
    /* INFO findings (a terminated pod is no workload ...) concern zmeshd's view, not whether the object is
     * valid: not shown here. */
    if (f->level == MANIFEST_INFO) return;
    /* An unknown kind is fine for zmesh up (Node, Deployment ...): it is kept in api/ as applied. */
    if (f->level == MANIFEST_WARN && !strcmp(f->field, "kind")) return;
    if (f->level == MANIFEST_ERROR) m->errors++;
    m->report(m->ud, f->level != MANIFEST_ERROR, buf);
}

static void on_quiet(void *ud, const struct manifest_finding *f)
{
    (void)ud;
    (void)f; /* the same findings as on_finding's pass over the same text */
}

static int add_obj(struct mread *m, json_t *o, const struct manifest_src *src, const char *where)
{
    char msg[700];
    if (!json_is_object(o)) return 0; /* zmeshd's pass reported it */
    const char *kind = cluster_obj_kind(o);
    json_t *md = json_object_get(o, "metadata");
    if (!strcmp(kind, "List") && !*where) {
        size_t i;
        json_t *it;
        char w2[64];
        json_array_foreach(json_object_get(o, "items"), i, it)
        {
            snprintf(w2, sizeof(w2), "items[%zu].", i);
            int rc = add_obj(m, it, src, w2);
            if (rc) return rc;
        }
        return 0;
    }
    if (!*kind || !json_is_object(md) || !*cluster_obj_name(o)) return 0; /* reported by zmeshd's pass */
    if (!json_is_string(json_object_get(o, "apiVersion"))) {
        snprintf(msg, sizeof(msg), "%s#%u: %sapiVersion: required field is missing", src->file, src->doc,
                 where);
        m->report(m->ud, false, msg);
        m->errors++;
        return 0;
    }
    if (cluster_kind_cluster_scoped(kind))
        json_object_del(md, "namespace");
    else if (!*cluster_obj_ns(o))
        json_object_set_new(md, "namespace", json_string("default"));
    if (!cluster_dns_subdomain(cluster_obj_name(o))) {
        snprintf(msg, sizeof(msg), "%s#%u: %smetadata.name: \"%s\" is not a DNS subdomain", src->file,
                 src->doc, where, cluster_obj_name(o));
        m->report(m->ud, false, msg);
        m->errors++;
        return 0;
    }
    if (!strcmp(kind, "Pod")) {
        struct pod_spec ps;
        struct manifest_src s2 = *src;
        char file[CLUSTER_PATH_MAX];
        if (*where) {
            snprintf(file, sizeof(file), "%s#%u: %.*s", src->file, src->doc, (int)strlen(where) - 1, where);
            s2.file = file; /* names the List item, as zmeshd's findings do */
        }
        int rc = cluster_pod_spec_parse(o, &s2, &ps, m->w, m->report, m->ud);
        cluster_pod_spec_free(&ps);
        if (rc == -ENOMEM) return rc;
        if (rc) {
            m->errors++;
            return 0;
        }
    }
    return json_array_append(m->objs, o) ? -ENOMEM : 0;
}

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    return add_obj(ud, doc, src, "");
}

static int read_one(struct mread *m, const char *path, const char *shown)
{
    char *buf;
    size_t len;
    int rc = cluster_read_file(path, MANIFEST_MAX_FILE, &buf, &len);
    if (rc) {
        char msg[CLUSTER_PATH_MAX + 100];
        snprintf(msg, sizeof(msg), "%s: cannot read: %s", path, strerror(-rc));
        m->report(m->ud, false, msg);
        m->errors++;
        return 0;
    }
    /* zmeshd's reader first (its errors are what zmeshd would refuse), then the same text as JSON. */
    struct manifest_store *st;
    if ((rc = manifest_store_new(&st))) goto out;
    rc = manifest_load_buf(st, shown, buf, len, on_finding, m);
    manifest_store_free(st);
    if (!rc) rc = manifest_load_json(shown, buf, len, on_quiet, NULL, on_doc, m);
out:
    free(buf);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int cluster_manifests_read(const char *path, json_t **out, struct cluster_warned *w, cluster_report_fn report,
                           void *ud)
{
    struct mread m = {.objs = json_array(), .w = w, .report = report, .ud = ud};
    struct stat sb;
    int rc = 0;
    if (!m.objs) return -ENOMEM;
    if (stat(path, &sb)) {
        rc = -errno;
        goto out;
    }
    if (!S_ISDIR(sb.st_mode)) {
        const char *base = strrchr(path, '/');
        rc = read_one(&m, path, base ? base + 1 : path);
    } else {
        DIR *d = opendir(path);
        if (!d) {
            rc = -errno;
            goto out;
        }
        char **names = NULL;
        size_t n = 0;
        for (struct dirent *e; (e = readdir(d)) && n < MANIFEST_FILES_MAX;) {
            size_t l = strlen(e->d_name);
            if (e->d_name[0] == '.') continue;
            if (!((l > 5 && !strcmp(e->d_name + l - 5, ".yaml")) ||
                  (l > 4 && !strcmp(e->d_name + l - 4, ".yml")) ||
                  (l > 5 && !strcmp(e->d_name + l - 5, ".json"))))
                continue;
            char **nn = realloc(names, (n + 1) * sizeof(*names));
            if (!nn || !(nn[n] = strdup(e->d_name))) {
                free(nn ? nn : names);
                closedir(d);
                rc = -ENOMEM;
                goto out;
            }
            names = nn;
            n++;
        }
        closedir(d);
        qsort(names, n, sizeof(*names), name_cmp);
        for (size_t i = 0; i < n; i++) {
            char p[CLUSTER_PATH_MAX * 2];
            snprintf(p, sizeof(p), "%s/%s", path, names[i]);
            if (!rc) rc = read_one(&m, p, names[i]);
            free(names[i]);
        }
        free(names);
    }
    if (!rc && m.errors) rc = -EINVAL;
out:
    if (rc) {
        json_decref(m.objs);
        return rc;
    }
    *out = m.objs;
    return 0;
}

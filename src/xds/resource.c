/* xDS resources <-> model structs; see resource.h. */
#include "xds/resource.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "xds/pb.h"

/* Longest field path a message names, e.g. "rules[12].clauses[3].matches[7]". */
#define PATH_MAX_LEN 96

static inline const char *S(const char *s)
{
    return s ? s : "";
}

/* ---- decoding ---- */

struct dctx {
    struct xds_resource *r;
    const struct xds_decode_opts *o;
    char *err;
    size_t n;
};

/* A zeroed block owned by the resource (freed by xds_resource_free). */
static void *ralloc(struct dctx *c, size_t count, size_t size)
{
    if (count && size > SIZE_MAX / count) return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) return NULL;
    void **slot = vec_push(&c->r->allocs);
    if (!slot) {
        free(p);
        return NULL;
    }
    *slot = p;
    return p;
}

__attribute__((format(printf, 2, 3))) static int rej(struct dctx *c, const char *fmt, ...)
{
    if (c->err && c->n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

__attribute__((format(printf, 2, 3))) static void warn(struct dctx *c, const char *fmt, ...)
{
    char m[XDS_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    if (c->o && c->o->warn)
        c->o->warn(c->o->warn_ud, S(c->r->key), m);
    else
        log_kv(LOG_WARN, "xds", m, "resource", S(c->r->key), NULL);
}

/* Sets r->key to a copy of a "/" b (or a alone when b is NULL). */
static int set_key(struct dctx *c, const char *a, const char *b)
{
    size_t la = strlen(S(a)), lb = b ? strlen(b) + 1 : 0;
    char *k = ralloc(c, la + lb + 1, 1);
    if (!k) return -ENOMEM;
    memcpy(k, S(a), la);
    if (b) {
        k[la] = '/';
        memcpy(k + la + 1, b, lb - 1);
    }
    c->r->key = k;
    return 0;
}

/* Address bytes as ztunnel's byte_to_ip: 4 bytes are IPv4, 16 are IPv6, anything else is refused. */
static bool bytes_ip(const ProtobufCBinaryData *b, struct ip_addr *ip)
{
    memset(ip, 0, sizeof(*ip));
    if (b->len == 4) {
        ip->family = AF_INET;
    } else if (b->len == 16) {
        ip->family = AF_INET6;
    } else {
        return false;
    }
    memcpy(ip->a, b->data, b->len);
    return true;
}

static unsigned max_prefix(const struct ip_addr *ip)
{
    return ip->family == AF_INET ? 32 : 128;
}

/* ztunnel casts ports "as u16", so 65616 would quietly become 80; zmesh refuses instead. */
static int port16(struct dctx *c, uint32_t v, uint16_t *out, const char *path)
{
    if (v > UINT16_MAX) return rej(c, "%s: port %u out of range (expected 0-65535)", path, v);
    *out = (uint16_t)v;
    return 0;
}

/* Warns about fields present on the wire that this build's workload.proto / authorization.proto does not
 * declare (a newer istiod): protoc-c keeps them as unknown fields and the model has no place for them. Walks
 * every sub-message through the descriptors; path holds the field path so far (len bytes of cap), and the
 * top message, whose path is empty, is called top. */
static void scan_unknown(struct dctx *c, const ProtobufCMessage *m, const char *top, char *path, size_t len,
                         size_t cap, int depth)
{
    if (depth > PB_MAX_DEPTH) return;
    if (m->n_unknown_fields)
        warn(c, "%s: %u unknown field(s) ignored (first: field %u)", len ? path : top, m->n_unknown_fields,
             m->unknown_fields[0].tag);
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        size_t n = 1;
        ProtobufCMessage *const *subs;
        bool rep = f->label == PROTOBUF_C_LABEL_REPEATED;
        if (rep) {
            n = *(const size_t *)(base + f->quantifier_offset);
            subs = *(ProtobufCMessage *const *const *)(base + f->offset);
        } else {
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                *(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
            subs = (ProtobufCMessage *const *)(base + f->offset);
        }
        for (size_t j = 0; j < n; j++) {
            if (!subs || !subs[j]) continue;
            int w = rep ? snprintf(path + len, cap - len, "%s%s[%zu]", len ? "." : "", f->name, j)
                        : snprintf(path + len, cap - len, "%s%s", len ? "." : "", f->name);
            size_t nl = w < 0 || (size_t)w >= cap - len ? cap - 1 : len + (size_t)w;
            scan_unknown(c, subs[j], top, path, nl, cap, depth + 1);
            path[len] = '\0';
        }
    }
}

static void warn_unknown(struct dctx *c, const ProtobufCMessage *m, const char *top)
{
    char path[PATH_MAX_LEN * 2] = "";
    scan_unknown(c, m, top, path, 0, sizeof(path), 0);
}

static void warn_extensions(struct dctx *c, size_t n, Istio__Workload__Extension *const *ext,
                            const char *path)
{
    if (!n) return;
    warn(c, "%s: %zu extension(s) not supported, ignored (first: \"%s\")", path, n,
         ext[0] ? S(ext[0]->name) : "");
}

static int dec_gateway(struct dctx *c, const Istio__Workload__GatewayAddress *g, struct gateway_addr *out,
                       const char *field)
{
    *out = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    if (!g) return 0;
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof(path), "%s.hbone_mtls_port", field);
    if (port16(c, g->hbone_mtls_port, &out->hbone_port, path)) return -EINVAL;
    switch (g->destination_case) {
    case ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_HOSTNAME:
        if (!g->hostname) break;
        out->set = true;
        out->is_host = true;
        out->ns = S(g->hostname->namespace_);
        out->host = S(g->hostname->hostname);
        return 0;
    case ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_ADDRESS:
        if (!g->address) break;
        if (!bytes_ip(&g->address->address, &out->ip))
            return rej(c, "%s.address: failed to parse address, had %zu bytes", field,
                       g->address->address.len);
        /* ztunnel reads only the address of a gateway; a prefix length would make it a block, not a host. */
        if (g->address->length_present_case == ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT_LENGTH &&
            g->address->length != max_prefix(&out->ip))
            return rej(c, "%s.address.length: a gateway is one address, not a block (length %u)", field,
                       g->address->length);
        out->set = true;
        out->network = S(g->address->network);
        return 0;
    default:
        break;
    }
    return rej(c, "%s: nonempty gateway address is missing address", field);
}

static int dec_ports(struct dctx *c, Istio__Workload__Port *const *in, size_t n, const struct port_map **out,
                     size_t *n_out, const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    struct port_map *pm = ralloc(c, n, sizeof(*pm));
    if (!pm) return -ENOMEM;
    char path[PATH_MAX_LEN + 32];
    for (size_t i = 0; i < n; i++) {
        if (!in[i]) continue;
        /* app_protocol: kept for the waypoint's protocol choice; values this build does not know are
         * unknown (detect), as a newer control plane may add some. */
        if ((unsigned)in[i]->app_protocol <= (unsigned)PORT_PROTO_TLS) pm[i].app_protocol = (uint8_t)in[i]->app_protocol;
        snprintf(path, sizeof(path), "%s[%zu].service_port", field, i);
        if (port16(c, in[i]->service_port, &pm[i].port, path)) return -EINVAL;
        snprintf(path, sizeof(path), "%s[%zu].target_port", field, i);
        if (port16(c, in[i]->target_port, &pm[i].target, path)) return -EINVAL;
    }
    *out = pm;
    *n_out = n;
    return 0;
}

static const char *const wtype_names[] = {"deployment", "cronjob", "pod", "job"};

static int dec_workload(struct dctx *c, const Istio__Workload__Workload *in)
{
    struct workload *w = &c->r->workload;
    c->r->kind = BUILDER_WORKLOAD;
    int rc = set_key(c, in->uid, NULL);
    if (rc) return rc;
    /* ztunnel keys workloads by uid; istiod always sets it. The builder would invent one from the name,
     * which could never match the xDS resource name. */
    if (!*S(in->uid)) return rej(c, "uid: missing");

    w->uid = S(in->uid);
    w->name = S(in->name);
    w->namespace_ = S(in->namespace_);
    w->hostname = S(in->hostname);
    w->network = S(in->network);
    w->trust_domain = S(in->trust_domain);
    w->service_account = S(in->service_account);
    w->node = S(in->node);
    w->cluster_id = S(in->cluster_id);
    w->canonical_name = S(in->canonical_name);
    w->canonical_revision = S(in->canonical_revision);
    w->workload_name = S(in->workload_name);
    w->spiffe_id = "";

    if (in->n_addresses) {
        struct ip_addr *ips = ralloc(c, in->n_addresses, sizeof(*ips));
        if (!ips) return -ENOMEM;
        for (size_t i = 0; i < in->n_addresses; i++)
            if (!bytes_ip(&in->addresses[i], &ips[i]))
                return rej(c, "addresses[%zu]: failed to parse address, had %zu bytes", i,
                           in->addresses[i].len);
        w->ips = ips;
        w->n_ips = in->n_addresses;
    }

    switch (in->tunnel_protocol) {
    case ISTIO__WORKLOAD__TUNNEL_PROTOCOL__NONE:
        w->protocol = WL_PROTO_TCP;
        break;
    case ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE:
        w->protocol = WL_PROTO_HBONE;
        break;
    case ISTIO__WORKLOAD__TUNNEL_PROTOCOL__LEGACY_ISTIO_MTLS:
        return rej(c, "tunnel_protocol: unsupported tunnel protocol: legacy istio mtls");
    default:
        return rej(c, "tunnel_protocol: unknown enum value %d", (int)in->tunnel_protocol);
    }

    if ((rc = dec_gateway(c, in->waypoint, &w->waypoint, "waypoint")) ||
        (rc = dec_gateway(c, in->network_gateway, &w->network_gateway, "network_gateway")))
        return rc;

    /* prost's workload_type() getter turns an unknown value into DEPLOYMENT, so ztunnel accepts it as such.
     */
    if ((unsigned)in->workload_type < sizeof(wtype_names) / sizeof(wtype_names[0])) {
        w->workload_type = wtype_names[in->workload_type];
    } else {
        warn(c, "workload_type: unknown enum value %d, taken as DEPLOYMENT", (int)in->workload_type);
        w->workload_type = wtype_names[0];
    }

    /* ztunnel reads native_tunnel only to prefetch the workload's certificate; zmesh fetches on demand. */
    if (in->native_tunnel) warn(c, "native_tunnel: not supported, ignored");

    if (in->application_tunnel) {
        const Istio__Workload__ApplicationTunnel *at = in->application_tunnel;
        if (at->protocol != ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__NONE &&
            at->protocol != ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__PROXY)
            return rej(c, "application_tunnel.protocol: unknown enum value %d", (int)at->protocol);
        w->app_tunnel_protocol = at->protocol == ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__PROXY
                                     ? WL_APP_TUNNEL_PROXY
                                     : WL_APP_TUNNEL_NONE;
        if (port16(c, at->port, &w->app_tunnel_port, "application_tunnel.port")) return -EINVAL;
    }

    if (in->n_services) {
        struct wl_service_ports *sp = ralloc(c, in->n_services, sizeof(*sp));
        if (!sp) return -ENOMEM;
        char field[PATH_MAX_LEN];
        for (size_t i = 0; i < in->n_services; i++) {
            const Istio__Workload__Workload__ServicesEntry *e = in->services[i];
            sp[i].key = e ? S(e->key) : "";
            /* The key's "namespace/hostname" form is the builder's check (the same words as ztunnel's). */
            snprintf(field, sizeof(field), "services[%zu].ports", i);
            if (e && e->value &&
                (rc = dec_ports(c, e->value->ports, e->value->n_ports, &sp[i].ports, &sp[i].n_ports, field)))
                return rc;
        }
        w->services = sp;
        w->n_services = in->n_services;
    }

    w->authorization_policies = (const char *const *)in->authorization_policies;
    w->n_authorization_policies = in->n_authorization_policies;

    switch (in->status) {
    case ISTIO__WORKLOAD__WORKLOAD_STATUS__HEALTHY:
        w->healthy = true;
        break;
    case ISTIO__WORKLOAD__WORKLOAD_STATUS__UNHEALTHY:
        w->healthy = false;
        break;
    default:
        return rej(c, "status: unknown enum value %d", (int)in->status);
    }

    w->locality = (struct locality){"", "", ""};
    if (in->locality)
        w->locality =
            (struct locality){S(in->locality->region), S(in->locality->zone), S(in->locality->subzone)};

    switch (in->network_mode) {
    case ISTIO__WORKLOAD__NETWORK_MODE__STANDARD:
        w->network_mode = WL_NET_STANDARD;
        break;
    case ISTIO__WORKLOAD__NETWORK_MODE__HOST_NETWORK:
        w->network_mode = WL_NET_HOST;
        break;
    default:
        return rej(c, "network_mode: unknown enum value %d", (int)in->network_mode);
    }

    warn_extensions(c, in->n_extensions, in->extensions, "extensions");
    /* An absent capacity is 1 (ztunnel: capacity.unwrap_or(1)); a present 0 stays 0. */
    w->capacity = in->capacity ? in->capacity->value : 1;
    return 0;
}

static int dec_service(struct dctx *c, const Istio__Workload__Service *in)
{
    struct service *s = &c->r->service;
    c->r->kind = BUILDER_SERVICE;
    int rc = set_key(c, in->namespace_, S(in->hostname));
    if (rc) return rc;

    s->name = S(in->name);
    s->namespace_ = S(in->namespace_);
    s->hostname = S(in->hostname);

    if (in->n_addresses) {
        struct net_addr *v = ralloc(c, in->n_addresses, sizeof(*v));
        if (!v) return -ENOMEM;
        for (size_t i = 0; i < in->n_addresses; i++) {
            const Istio__Workload__NetworkAddress *a = in->addresses[i];
            if (!a || !bytes_ip(&a->address, &v[i].ip))
                return rej(c, "addresses[%zu]: failed to parse address, had %zu bytes", i,
                           a ? a->address.len : 0);
            if (a->length_present_case == ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT_LENGTH &&
                a->length != max_prefix(&v[i].ip)) {
                if (a->length > max_prefix(&v[i].ip))
                    return rej(c, "addresses[%zu].length: invalid cidr: prefix length %u exceeds %u", i,
                               a->length, max_prefix(&v[i].ip));
                /* ztunnel keeps these as cidr_vips (a ServiceEntry with a CIDR address); the model's VIP
                 * index holds single addresses only. */
                return rej(c, "addresses[%zu].length: CIDR VIPs are not supported (length %u)", i, a->length);
            }
            v[i].network = S(a->network);
        }
        s->vips = v;
        s->n_vips = in->n_addresses;
    }

    if ((rc = dec_ports(c, in->ports, in->n_ports, &s->ports, &s->n_ports, "ports"))) return rc;
    s->subject_alt_names = (const char *const *)in->subject_alt_names;
    s->n_sans = in->n_subject_alt_names;
    if ((rc = dec_gateway(c, in->waypoint, &s->waypoint, "waypoint"))) return rc;

    if (in->load_balancing) {
        const Istio__Workload__LoadBalancing *lb = in->load_balancing;
        if (lb->n_routing_preference) {
            uint8_t *rp = ralloc(c, lb->n_routing_preference, 1);
            if (!rp) return -ENOMEM;
            for (size_t i = 0; i < lb->n_routing_preference; i++) {
                int v = (int)lb->routing_preference[i];
                /* UNSPECIFIED_SCOPE is "invalid target" to ztunnel (TryFrom<XdsScope>). */
                if (v < ISTIO__WORKLOAD__LOAD_BALANCING__SCOPE__REGION ||
                    v > ISTIO__WORKLOAD__LOAD_BALANCING__SCOPE__NETWORK)
                    return rej(c, "load_balancing.routing_preference[%zu]: invalid target %d", i, v);
                rp[i] = (uint8_t)v;
            }
            s->routing_prefs = rp;
            s->n_routing_prefs = lb->n_routing_preference;
        }
        if ((unsigned)lb->mode > ISTIO__WORKLOAD__LOAD_BALANCING__MODE__PASSTHROUGH)
            return rej(c, "load_balancing.mode: unknown enum value %d", (int)lb->mode);
        s->lb_mode = (uint8_t)lb->mode;
        if ((unsigned)lb->health_policy > ISTIO__WORKLOAD__LOAD_BALANCING__HEALTH_POLICY__ALLOW_ALL)
            return rej(c, "load_balancing.health_policy: unknown enum value %d", (int)lb->health_policy);
        s->health_policy = (uint8_t)lb->health_policy;
    }
    if ((unsigned)in->ip_families > ISTIO__WORKLOAD__IPFAMILIES__DUAL)
        return rej(c, "ip_families: unknown enum value %d", (int)in->ip_families);
    s->ip_families = (uint8_t)in->ip_families;

    /* Traffic split across waypoints would go all to `waypoint` if ignored. */
    if (in->n_weighted_waypoints) return rej(c, "weighted_waypoints: not supported");
    switch (in->visibility) {
    case ISTIO__WORKLOAD__SERVICE__VISIBILITY__PUBLIC:
        break;
    case ISTIO__WORKLOAD__SERVICE__VISIBILITY__NAMESPACE:
        /* Ignoring it would open the service to every namespace. */
        return rej(c, "visibility: NAMESPACE is not supported");
    default:
        /* ztunnel: unknown values fall back to PUBLIC rather than dropping the service. */
        warn(c, "visibility: unknown enum value %d, taken as PUBLIC", (int)in->visibility);
        break;
    }
    /* canonical breaks ties between services sharing a VIP; the model's VIP index keeps the first. */
    if (in->canonical)
        warn(c, "canonical: not supported, ignored (a shared VIP resolves to the first service)");
    /* ztunnel does not read ingress_use_waypoint either (it is for ingress gateways). */
    if (in->ingress_use_waypoint) warn(c, "ingress_use_waypoint: not supported, ignored");
    warn_extensions(c, in->n_extensions, in->extensions, "extensions");
    return 0;
}

static int dec_strmatch(struct dctx *c, Istio__Security__StringMatch *const *in, size_t n,
                        const struct string_match **out, size_t *n_out, const char *path, const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    struct string_match *sm = ralloc(c, n, sizeof(*sm));
    if (!sm) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const Istio__Security__StringMatch *m = in[i];
        switch (m ? m->match_type_case : ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE__NOT_SET) {
        case ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_EXACT:
            sm[i] = (struct string_match){SM_EXACT, S(m->exact)};
            break;
        case ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PREFIX:
            sm[i] = (struct string_match){SM_PREFIX, S(m->prefix)};
            break;
        case ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_SUFFIX:
            sm[i] = (struct string_match){SM_SUFFIX, S(m->suffix)};
            break;
        case ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PRESENCE:
            sm[i] = (struct string_match){SM_PRESENCE, ""};
            break;
        default:
            /* ztunnel drops such an entry (filter_map), which can widen a policy; refuse it instead. */
            return rej(c, "%s.%s[%zu]: string match has no match type", path, field, i);
        }
    }
    *out = sm;
    *n_out = n;
    return 0;
}

static int dec_sa(struct dctx *c, Istio__Security__ServiceAccountMatch *const *in, size_t n,
                  const struct sa_match **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    struct sa_match *sa = ralloc(c, n, sizeof(*sa));
    if (!sa) return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        sa[i] = (struct sa_match){in[i] ? S(in[i]->namespace_) : "", in[i] ? S(in[i]->serviceaccount) : ""};
    *out = sa;
    *n_out = n;
    return 0;
}

static int dec_cidrs(struct dctx *c, Istio__Security__Address *const *in, size_t n, const struct cidr **out,
                     size_t *n_out, const char *path, const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    struct cidr *ci = ralloc(c, n, sizeof(*ci));
    if (!ci) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        /* ztunnel drops an address it cannot parse (filter_map ... .ok()); refused here, as for strings. */
        if (!in[i] || !bytes_ip(&in[i]->address, &ci[i].ip))
            return rej(c, "%s.%s[%zu]: failed to parse address, had %zu bytes", path, field, i,
                       in[i] ? in[i]->address.len : 0);
        if (in[i]->length > max_prefix(&ci[i].ip))
            return rej(c, "%s.%s[%zu]: invalid cidr: prefix length %u exceeds %u", path, field, i,
                       in[i]->length, max_prefix(&ci[i].ip));
        ci[i].len = (uint8_t)in[i]->length;
    }
    *out = ci;
    *n_out = n;
    return 0;
}

static int dec_dports(struct dctx *c, const uint32_t *in, size_t n, const uint16_t **out, size_t *n_out,
                      const char *path, const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    uint16_t *p = ralloc(c, n, sizeof(*p));
    if (!p) return -ENOMEM;
    char where[PATH_MAX_LEN + 48];
    for (size_t i = 0; i < n; i++) {
        snprintf(where, sizeof(where), "%s.%s[%zu]", path, field, i);
        if (port16(c, in[i], &p[i], where)) return -EINVAL;
    }
    *out = p;
    *n_out = n;
    return 0;
}

static int dec_match(struct dctx *c, const Istio__Security__Match *m, struct auth_match *o, const char *path)
{
    int rc;
    /* An extension is a condition zmesh cannot evaluate: ignoring it would make the match wider. */
    if (m->n_extensions) return rej(c, "%s.extensions: not supported", path);
    if ((rc = dec_strmatch(c, m->namespaces, m->n_namespaces, &o->namespaces, &o->n_namespaces, path,
                           "namespaces")) ||
        (rc = dec_strmatch(c, m->not_namespaces, m->n_not_namespaces, &o->not_namespaces,
                           &o->n_not_namespaces, path, "not_namespaces")) ||
        (rc = dec_strmatch(c, m->principals, m->n_principals, &o->principals, &o->n_principals, path,
                           "principals")) ||
        (rc = dec_strmatch(c, m->not_principals, m->n_not_principals, &o->not_principals,
                           &o->n_not_principals, path, "not_principals")) ||
        (rc = dec_sa(c, m->service_accounts, m->n_service_accounts, &o->service_accounts,
                     &o->n_service_accounts)) ||
        (rc = dec_sa(c, m->not_service_accounts, m->n_not_service_accounts, &o->not_service_accounts,
                     &o->n_not_service_accounts)) ||
        (rc = dec_cidrs(c, m->source_ips, m->n_source_ips, &o->source_ips, &o->n_source_ips, path,
                        "source_ips")) ||
        (rc = dec_cidrs(c, m->not_source_ips, m->n_not_source_ips, &o->not_source_ips, &o->n_not_source_ips,
                        path, "not_source_ips")) ||
        (rc = dec_cidrs(c, m->destination_ips, m->n_destination_ips, &o->destination_ips,
                        &o->n_destination_ips, path, "destination_ips")) ||
        (rc = dec_cidrs(c, m->not_destination_ips, m->n_not_destination_ips, &o->not_destination_ips,
                        &o->n_not_destination_ips, path, "not_destination_ips")) ||
        (rc = dec_dports(c, m->destination_ports, m->n_destination_ports, &o->destination_ports,
                         &o->n_destination_ports, path, "destination_ports")) ||
        (rc = dec_dports(c, m->not_destination_ports, m->n_not_destination_ports, &o->not_destination_ports,
                         &o->n_not_destination_ports, path, "not_destination_ports")))
        return rc;
    return 0;
}

static int dec_policy(struct dctx *c, const Istio__Security__Authorization *in)
{
    struct policy *p = &c->r->policy;
    c->r->kind = BUILDER_POLICY;
    int rc = set_key(c, in->namespace_, S(in->name));
    if (rc) return rc;
    p->name = S(in->name);
    p->namespace_ = S(in->namespace_);
    if ((unsigned)in->scope > ISTIO__SECURITY__SCOPE__WORKLOAD_SELECTOR)
        return rej(c, "scope: unknown enum value %d", (int)in->scope);
    p->scope = (uint8_t)in->scope;
    if ((unsigned)in->action > ISTIO__SECURITY__ACTION__DENY)
        return rej(c, "action: unknown enum value %d", (int)in->action);
    p->action = (uint8_t)in->action;
    p->dry_run = in->dry_run;
    warn_extensions(c, in->n_extensions, in->extensions, "extensions");
    if (!in->n_rules) return 0;
    struct auth_rule *rules = ralloc(c, in->n_rules, sizeof(*rules));
    if (!rules) return -ENOMEM;
    char path[PATH_MAX_LEN];
    for (size_t i = 0; i < in->n_rules; i++) {
        const Istio__Security__Rule *r = in->rules[i];
        if (!r || !r->n_clauses) continue;
        struct auth_clause *cl = ralloc(c, r->n_clauses, sizeof(*cl));
        if (!cl) return -ENOMEM;
        for (size_t j = 0; j < r->n_clauses; j++) {
            const Istio__Security__Clause *k = r->clauses[j];
            if (!k || !k->n_matches) continue;
            struct auth_match *ms = ralloc(c, k->n_matches, sizeof(*ms));
            if (!ms) return -ENOMEM;
            for (size_t m = 0; m < k->n_matches; m++) {
                snprintf(path, sizeof(path), "rules[%zu].clauses[%zu].matches[%zu]", i, j, m);
                if (k->matches[m] && (rc = dec_match(c, k->matches[m], &ms[m], path))) return rc;
            }
            cl[j] = (struct auth_clause){ms, k->n_matches};
        }
        rules[i] = (struct auth_rule){cl, r->n_clauses};
    }
    p->rules = rules;
    p->n_rules = in->n_rules;
    return 0;
}

static void init_ctx(struct dctx *c, struct xds_resource *out, const struct xds_decode_opts *opts, char *err,
                     size_t n)
{
    memset(out, 0, sizeof(*out));
    out->allocs = VEC(void *);
    *c = (struct dctx){out, opts, err, n};
    if (err && n) err[0] = '\0';
}

static int finish(struct dctx *c, int rc)
{
    if (rc == -ENOMEM) rej(c, "out of memory");
    if (rc) xds_resource_free(c->r);
    return rc;
}

int xds_resource_from_address(const Istio__Workload__Address *a, const struct xds_decode_opts *opts,
                              struct xds_resource *out, char *err, size_t n)
{
    struct dctx c;
    init_ctx(&c, out, opts, err, n);
    int rc;
    if (a->type_case == ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD && a->workload)
        rc = dec_workload(&c, a->workload);
    else if (a->type_case == ISTIO__WORKLOAD__ADDRESS__TYPE_SERVICE && a->service)
        rc = dec_service(&c, a->service);
    else
        rc = rej(&c, "unknown address type"); /* ztunnel's words for an Address with neither */
    if (!rc) warn_unknown(&c, &a->base, "address");
    return finish(&c, rc);
}

int xds_resource_from_authorization(const Istio__Security__Authorization *a,
                                    const struct xds_decode_opts *opts, struct xds_resource *out, char *err,
                                    size_t n)
{
    struct dctx c;
    init_ctx(&c, out, opts, err, n);
    int rc = dec_policy(&c, a);
    if (!rc) warn_unknown(&c, &a->base, "authorization");
    return finish(&c, rc);
}

int xds_resource_decode(const char *type_url, const uint8_t *data, size_t len,
                        const struct xds_decode_opts *opts, struct xds_resource *out, char *err, size_t n)
{
    memset(out, 0, sizeof(*out));
    if (err && n) err[0] = '\0';
    const ProtobufCMessageDescriptor *d;
    bool is_addr = type_url && !strcmp(type_url, PB_TYPE_URL_ADDRESS);
    if (is_addr)
        d = &istio__workload__address__descriptor;
    else if (type_url && !strcmp(type_url, PB_TYPE_URL_AUTHORIZATION))
        d = &istio__security__authorization__descriptor;
    else {
        if (err && n) snprintf(err, n, "unknown resource type: %s", S(type_url));
        return -EPROTOTYPE;
    }
    ProtobufCMessage *m = NULL;
    int rc = pb_message_unpack(d, data, len, &m);
    if (rc) {
        /* ztunnel's AdsError::Decode prefix, then why. */
        if (err && n)
            snprintf(err, n, "decode: %s",
                     rc == -ELOOP ? "message nested deeper than 100 levels" : "invalid protobuf message");
        return rc;
    }
    rc = is_addr
             ? xds_resource_from_address((const Istio__Workload__Address *)m, opts, out, err, n)
             : xds_resource_from_authorization((const Istio__Security__Authorization *)m, opts, out, err, n);
    if (rc) {
        protobuf_c_message_free_unpacked(m, NULL);
        return rc;
    }
    out->msg = m;
    return 0;
}

void xds_resource_free(struct xds_resource *r)
{
    if (!r) return;
    void **blocks = (void **)r->allocs.p;
    for (size_t i = 0; i < r->allocs.n; i++)
        free(blocks[i]);
    vec_free(&r->allocs);
    if (r->msg) protobuf_c_message_free_unpacked(r->msg, NULL);
    memset(r, 0, sizeof(*r));
}

int xds_resource_add(struct snapshot_builder *b, const struct xds_resource *r, struct builder_err *err)
{
    switch (r->kind) {
    case BUILDER_WORKLOAD:
        return builder_add_workload(b, &r->workload, err);
    case BUILDER_SERVICE:
        return builder_add_service(b, &r->service, err);
    case BUILDER_POLICY:
        return builder_add_policy(b, &r->policy, err);
    }
    return -EINVAL;
}

/* ---- names ---- */

static int put_name(char *buf, size_t n, const char *a, const char *b)
{
    int len = b ? snprintf(buf, n, "%s/%s", S(a), b) : snprintf(buf, n, "%s", S(a));
    if (len < 0 || (size_t)len >= n) {
        if (n) buf[0] = '\0';
        return -ENOSPC;
    }
    return len;
}

int xds_workload_name(const struct workload *w, char *buf, size_t n)
{
    return put_name(buf, n, w->uid, NULL);
}

int xds_service_name(const struct service *s, char *buf, size_t n)
{
    return put_name(buf, n, s->namespace_, S(s->hostname));
}

int xds_policy_name(const struct policy *p, char *buf, size_t n)
{
    return put_name(buf, n, p->namespace_, S(p->name));
}

/* ---- encoding ---- */

/* Every message and array built for one encoding; freed once the bytes are packed. */
struct ectx {
    struct vec allocs; /* void * */
    char *err;
    size_t n;
};

static void *ealloc(struct ectx *e, size_t count, size_t size)
{
    if (count && size > SIZE_MAX / count) return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) return NULL;
    void **slot = vec_push(&e->allocs);
    if (!slot) {
        free(p);
        return NULL;
    }
    *slot = p;
    return p;
}

static void efree(struct ectx *e)
{
    void **blocks = (void **)e->allocs.p;
    for (size_t i = 0; i < e->allocs.n; i++)
        free(blocks[i]);
    vec_free(&e->allocs);
}

__attribute__((format(printf, 2, 3))) static int erej(struct ectx *e, const char *fmt, ...)
{
    if (e->err && e->n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->err, e->n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* protoc-c's string fields are char * but packing only reads them. */
static char *W(const char *s)
{
    return (char *)S(s);
}

static ProtobufCBinaryData ip_bytes(const struct ip_addr *ip)
{
    return (ProtobufCBinaryData){ip->family == AF_INET ? 4 : 16, (uint8_t *)ip->a};
}

static int enc_ip_ok(struct ectx *e, const struct ip_addr *ip, const char *field)
{
    if (ip->family != AF_INET && ip->family != AF_INET6)
        return erej(e, "%s: not an IPv4 or IPv6 address", field);
    return 0;
}

static int enc_gateway(struct ectx *e, const struct gateway_addr *g, Istio__Workload__GatewayAddress **out,
                       const char *field)
{
    *out = NULL;
    if (!g->set) return 0;
    Istio__Workload__GatewayAddress *ga = ealloc(e, 1, sizeof(*ga));
    if (!ga) return -ENOMEM;
    istio__workload__gateway_address__init(ga);
    ga->hbone_mtls_port = g->hbone_port;
    if (g->is_host) {
        Istio__Workload__NamespacedHostname *h = ealloc(e, 1, sizeof(*h));
        if (!h) return -ENOMEM;
        istio__workload__namespaced_hostname__init(h);
        h->namespace_ = W(g->ns);
        h->hostname = W(g->host);
        ga->destination_case = ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_HOSTNAME;
        ga->hostname = h;
    } else {
        if (enc_ip_ok(e, &g->ip, field)) return -EINVAL;
        Istio__Workload__NetworkAddress *a = ealloc(e, 1, sizeof(*a));
        if (!a) return -ENOMEM;
        istio__workload__network_address__init(a);
        a->network = W(g->network);
        a->address = ip_bytes(&g->ip);
        ga->destination_case = ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_ADDRESS;
        ga->address = a;
    }
    *out = ga;
    return 0;
}

static int enc_ports(struct ectx *e, const struct port_map *pm, size_t n, Istio__Workload__Port ***out,
                     size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    Istio__Workload__Port **pp = ealloc(e, n, sizeof(*pp));
    Istio__Workload__Port *ports = ealloc(e, n, sizeof(*ports));
    if (!pp || !ports) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        istio__workload__port__init(&ports[i]);
        ports[i].service_port = pm[i].port;
        ports[i].target_port = pm[i].target;
        ports[i].app_protocol = (Istio__Workload__AppProtocol)pm[i].app_protocol;
        pp[i] = &ports[i];
    }
    *out = pp;
    *n_out = n;
    return 0;
}

static int pack_out(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t sz = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(sz ? sz : 1);
    if (!buf) return -ENOMEM;
    protobuf_c_message_pack(m, buf);
    *out = buf;
    *len = sz;
    return 0;
}

static void eset(struct ectx *e, char *err, size_t n)
{
    *e = (struct ectx){.allocs = VEC(void *), .err = err, .n = n};
    if (err && n) err[0] = '\0';
}

static int efinish(struct ectx *e, int rc)
{
    if (rc == -ENOMEM) erej(e, "out of memory");
    efree(e);
    return rc;
}

static int enc_workload(struct ectx *e, const struct workload *w, Istio__Workload__Workload *o)
{
    int rc;
    istio__workload__workload__init(o);
    o->uid = W(w->uid);
    o->name = W(w->name);
    o->namespace_ = W(w->namespace_);
    o->hostname = W(w->hostname);
    o->network = W(w->network);
    o->trust_domain = W(w->trust_domain);
    o->service_account = W(w->service_account);
    o->node = W(w->node);
    o->canonical_name = W(w->canonical_name);
    o->canonical_revision = W(w->canonical_revision);
    o->workload_name = W(w->workload_name);
    o->cluster_id = W(w->cluster_id);
    if (w->n_ips) {
        o->addresses = ealloc(e, w->n_ips, sizeof(*o->addresses));
        if (!o->addresses) return -ENOMEM;
        char f[32];
        for (size_t i = 0; i < w->n_ips; i++) {
            snprintf(f, sizeof(f), "addresses[%zu]", i);
            if (enc_ip_ok(e, &w->ips[i], f)) return -EINVAL;
            o->addresses[i] = ip_bytes(&w->ips[i]);
        }
        o->n_addresses = w->n_ips;
    }
    switch (w->protocol) {
    case WL_PROTO_TCP:
        o->tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__NONE;
        break;
    case WL_PROTO_HBONE:
        o->tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE;
        break;
    default:
        return erej(e, "tunnel_protocol: unknown value %d", (int)w->protocol);
    }
    if ((rc = enc_gateway(e, &w->waypoint, &o->waypoint, "waypoint")) ||
        (rc = enc_gateway(e, &w->network_gateway, &o->network_gateway, "network_gateway")))
        return rc;
    /* The model keeps ztunnel's lower-case names ("" = DEPLOYMENT, the proto's 0). */
    const char *wt = S(w->workload_type);
    size_t k = 0;
    if (*wt) {
        for (k = 0; k < sizeof(wtype_names) / sizeof(wtype_names[0]); k++)
            if (!strcmp(wt, wtype_names[k])) break;
        if (k == sizeof(wtype_names) / sizeof(wtype_names[0]))
            return erej(e, "workload_type: unknown value \"%s\" (expected deployment, cronjob, pod or job)",
                        wt);
    }
    o->workload_type = (Istio__Workload__WorkloadType)k;
    if (w->app_tunnel_protocol > WL_APP_TUNNEL_PROXY)
        return erej(e, "application_tunnel.protocol: unknown value %u", w->app_tunnel_protocol);
    if (w->app_tunnel_protocol != WL_APP_TUNNEL_NONE || w->app_tunnel_port) {
        Istio__Workload__ApplicationTunnel *at = ealloc(e, 1, sizeof(*at));
        if (!at) return -ENOMEM;
        istio__workload__application_tunnel__init(at);
        at->protocol = w->app_tunnel_protocol == WL_APP_TUNNEL_PROXY
                           ? ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__PROXY
                           : ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__NONE;
        at->port = w->app_tunnel_port;
        o->application_tunnel = at;
    }
    if (w->n_services) {
        Istio__Workload__Workload__ServicesEntry **ents = ealloc(e, w->n_services, sizeof(*ents));
        Istio__Workload__Workload__ServicesEntry *ent = ealloc(e, w->n_services, sizeof(*ent));
        Istio__Workload__PortList *pl = ealloc(e, w->n_services, sizeof(*pl));
        if (!ents || !ent || !pl) return -ENOMEM;
        for (size_t i = 0; i < w->n_services; i++) {
            istio__workload__workload__services_entry__init(&ent[i]);
            istio__workload__port_list__init(&pl[i]);
            ent[i].key = W(w->services[i].key);
            if ((rc = enc_ports(e, w->services[i].ports, w->services[i].n_ports, &pl[i].ports,
                                &pl[i].n_ports)))
                return rc;
            ent[i].value = &pl[i];
            ents[i] = &ent[i];
        }
        o->services = ents;
        o->n_services = w->n_services;
    }
    o->authorization_policies = (char **)w->authorization_policies;
    o->n_authorization_policies = w->n_authorization_policies;
    o->status =
        w->healthy ? ISTIO__WORKLOAD__WORKLOAD_STATUS__HEALTHY : ISTIO__WORKLOAD__WORKLOAD_STATUS__UNHEALTHY;
    if (*S(w->locality.region) || *S(w->locality.zone) || *S(w->locality.subzone)) {
        Istio__Workload__Locality *l = ealloc(e, 1, sizeof(*l));
        if (!l) return -ENOMEM;
        istio__workload__locality__init(l);
        l->region = W(w->locality.region);
        l->zone = W(w->locality.zone);
        l->subzone = W(w->locality.subzone);
        o->locality = l;
    }
    if (w->network_mode > WL_NET_HOST) return erej(e, "network_mode: unknown value %u", w->network_mode);
    o->network_mode = w->network_mode == WL_NET_HOST ? ISTIO__WORKLOAD__NETWORK_MODE__HOST_NETWORK
                                                     : ISTIO__WORKLOAD__NETWORK_MODE__STANDARD;
    /* Absent means 1, so only another weight is written (istiod sets capacity only when it is not the
     * default). */
    if (w->capacity != 1) {
        Google__Protobuf__UInt32Value *cap = ealloc(e, 1, sizeof(*cap));
        if (!cap) return -ENOMEM;
        google__protobuf__uint32_value__init(cap);
        cap->value = w->capacity;
        o->capacity = cap;
    }
    return 0;
}

int xds_encode_workload(const struct workload *w, uint8_t **out, size_t *len, char *err, size_t n)
{
    struct ectx e;
    eset(&e, err, n);
    Istio__Workload__Workload wl;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    int rc = enc_workload(&e, w, &wl);
    if (!rc) {
        a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
        a.workload = &wl;
        rc = pack_out(&a.base, out, len);
    }
    return efinish(&e, rc);
}

static int enc_service(struct ectx *e, const struct service *s, Istio__Workload__Service *o)
{
    int rc;
    istio__workload__service__init(o);
    o->name = W(s->name);
    o->namespace_ = W(s->namespace_);
    o->hostname = W(s->hostname);
    if (s->n_vips) {
        Istio__Workload__NetworkAddress **pp = ealloc(e, s->n_vips, sizeof(*pp));
        Istio__Workload__NetworkAddress *na = ealloc(e, s->n_vips, sizeof(*na));
        if (!pp || !na) return -ENOMEM;
        char f[32];
        for (size_t i = 0; i < s->n_vips; i++) {
            snprintf(f, sizeof(f), "addresses[%zu]", i);
            if (enc_ip_ok(e, &s->vips[i].ip, f)) return -EINVAL;
            istio__workload__network_address__init(&na[i]);
            /* A plain VIP carries no length, as istiod's toNetworkAddress writes it. */
            na[i].network = W(s->vips[i].network);
            na[i].address = ip_bytes(&s->vips[i].ip);
            pp[i] = &na[i];
        }
        o->addresses = pp;
        o->n_addresses = s->n_vips;
    }
    if ((rc = enc_ports(e, s->ports, s->n_ports, &o->ports, &o->n_ports))) return rc;
    o->subject_alt_names = (char **)s->subject_alt_names;
    o->n_subject_alt_names = s->n_sans;
    if ((rc = enc_gateway(e, &s->waypoint, &o->waypoint, "waypoint"))) return rc;
    if (s->n_routing_prefs || s->lb_mode || s->health_policy) {
        Istio__Workload__LoadBalancing *lb = ealloc(e, 1, sizeof(*lb));
        if (!lb) return -ENOMEM;
        istio__workload__load_balancing__init(lb);
        if (s->n_routing_prefs) {
            lb->routing_preference = ealloc(e, s->n_routing_prefs, sizeof(*lb->routing_preference));
            if (!lb->routing_preference) return -ENOMEM;
            for (size_t i = 0; i < s->n_routing_prefs; i++) {
                if (s->routing_prefs[i] < LB_SCOPE_REGION || s->routing_prefs[i] > LB_SCOPE_NETWORK)
                    return erej(e, "load_balancing.routing_preference[%zu]: invalid scope %u", i,
                                s->routing_prefs[i]);
                lb->routing_preference[i] = (Istio__Workload__LoadBalancing__Scope)s->routing_prefs[i];
            }
            lb->n_routing_preference = s->n_routing_prefs;
        }
        if (s->lb_mode > LB_MODE_PASSTHROUGH)
            return erej(e, "load_balancing.mode: unknown value %u", s->lb_mode);
        lb->mode = (Istio__Workload__LoadBalancing__Mode)s->lb_mode;
        if (s->health_policy > LB_HEALTH_ALLOW_ALL)
            return erej(e, "load_balancing.health_policy: unknown value %u", s->health_policy);
        lb->health_policy = (Istio__Workload__LoadBalancing__HealthPolicy)s->health_policy;
        o->load_balancing = lb;
    }
    if (s->ip_families > IP_FAMILIES_DUAL) return erej(e, "ip_families: unknown value %u", s->ip_families);
    o->ip_families = (Istio__Workload__IPFamilies)s->ip_families;
    return 0;
}

int xds_encode_service(const struct service *s, uint8_t **out, size_t *len, char *err, size_t n)
{
    struct ectx e;
    eset(&e, err, n);
    Istio__Workload__Service svc;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    int rc = enc_service(&e, s, &svc);
    if (!rc) {
        a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_SERVICE;
        a.service = &svc;
        rc = pack_out(&a.base, out, len);
    }
    return efinish(&e, rc);
}

static Google__Protobuf__Empty empty_msg = GOOGLE__PROTOBUF__EMPTY__INIT;

static int enc_strmatch(struct ectx *e, const struct string_match *sm, size_t n,
                        Istio__Security__StringMatch ***out, size_t *n_out, const char *path,
                        const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    Istio__Security__StringMatch **pp = ealloc(e, n, sizeof(*pp));
    Istio__Security__StringMatch *m = ealloc(e, n, sizeof(*m));
    if (!pp || !m) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        istio__security__string_match__init(&m[i]);
        switch (sm[i].kind) {
        case SM_EXACT:
            m[i].match_type_case = ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_EXACT;
            m[i].exact = W(sm[i].value);
            break;
        case SM_PREFIX:
            m[i].match_type_case = ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PREFIX;
            m[i].prefix = W(sm[i].value);
            break;
        case SM_SUFFIX:
            m[i].match_type_case = ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_SUFFIX;
            m[i].suffix = W(sm[i].value);
            break;
        case SM_PRESENCE:
            m[i].match_type_case = ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PRESENCE;
            m[i].presence = &empty_msg;
            break;
        default:
            return erej(e, "%s.%s[%zu]: unknown string match kind %u", path, field, i, sm[i].kind);
        }
        pp[i] = &m[i];
    }
    *out = pp;
    *n_out = n;
    return 0;
}

static int enc_sa(struct ectx *e, const struct sa_match *sa, size_t n,
                  Istio__Security__ServiceAccountMatch ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    Istio__Security__ServiceAccountMatch **pp = ealloc(e, n, sizeof(*pp));
    Istio__Security__ServiceAccountMatch *m = ealloc(e, n, sizeof(*m));
    if (!pp || !m) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        istio__security__service_account_match__init(&m[i]);
        m[i].namespace_ = W(sa[i].namespace_);
        m[i].serviceaccount = W(sa[i].service_account);
        pp[i] = &m[i];
    }
    *out = pp;
    *n_out = n;
    return 0;
}

static int enc_cidrs(struct ectx *e, const struct cidr *ci, size_t n, Istio__Security__Address ***out,
                     size_t *n_out, const char *path, const char *field)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    Istio__Security__Address **pp = ealloc(e, n, sizeof(*pp));
    Istio__Security__Address *a = ealloc(e, n, sizeof(*a));
    if (!pp || !a) return -ENOMEM;
    char f[PATH_MAX_LEN + 48];
    for (size_t i = 0; i < n; i++) {
        snprintf(f, sizeof(f), "%s.%s[%zu]", path, field, i);
        if (enc_ip_ok(e, &ci[i].ip, f)) return -EINVAL;
        istio__security__address__init(&a[i]);
        /* istiod always writes the length, the full one for a bare IP (authorization.go). */
        a[i].address = ip_bytes(&ci[i].ip);
        a[i].length = ci[i].len;
        pp[i] = &a[i];
    }
    *out = pp;
    *n_out = n;
    return 0;
}

static int enc_dports(struct ectx *e, const uint16_t *p, size_t n, uint32_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!n) return 0;
    uint32_t *v = ealloc(e, n, sizeof(*v));
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        v[i] = p[i];
    *out = v;
    *n_out = n;
    return 0;
}

static int enc_match(struct ectx *e, const struct auth_match *m, Istio__Security__Match *o, const char *path)
{
    int rc;
    istio__security__match__init(o);
    if ((rc = enc_strmatch(e, m->namespaces, m->n_namespaces, &o->namespaces, &o->n_namespaces, path,
                           "namespaces")) ||
        (rc = enc_strmatch(e, m->not_namespaces, m->n_not_namespaces, &o->not_namespaces,
                           &o->n_not_namespaces, path, "not_namespaces")) ||
        (rc = enc_strmatch(e, m->principals, m->n_principals, &o->principals, &o->n_principals, path,
                           "principals")) ||
        (rc = enc_strmatch(e, m->not_principals, m->n_not_principals, &o->not_principals,
                           &o->n_not_principals, path, "not_principals")) ||
        (rc = enc_sa(e, m->service_accounts, m->n_service_accounts, &o->service_accounts,
                     &o->n_service_accounts)) ||
        (rc = enc_sa(e, m->not_service_accounts, m->n_not_service_accounts, &o->not_service_accounts,
                     &o->n_not_service_accounts)) ||
        (rc = enc_cidrs(e, m->source_ips, m->n_source_ips, &o->source_ips, &o->n_source_ips, path,
                        "source_ips")) ||
        (rc = enc_cidrs(e, m->not_source_ips, m->n_not_source_ips, &o->not_source_ips, &o->n_not_source_ips,
                        path, "not_source_ips")) ||
        (rc = enc_cidrs(e, m->destination_ips, m->n_destination_ips, &o->destination_ips,
                        &o->n_destination_ips, path, "destination_ips")) ||
        (rc = enc_cidrs(e, m->not_destination_ips, m->n_not_destination_ips, &o->not_destination_ips,
                        &o->n_not_destination_ips, path, "not_destination_ips")) ||
        (rc = enc_dports(e, m->destination_ports, m->n_destination_ports, &o->destination_ports,
                         &o->n_destination_ports)) ||
        (rc = enc_dports(e, m->not_destination_ports, m->n_not_destination_ports, &o->not_destination_ports,
                         &o->n_not_destination_ports)))
        return rc;
    return 0;
}

int xds_encode_policy(const struct policy *p, uint8_t **out, size_t *len, char *err, size_t n)
{
    struct ectx e;
    eset(&e, err, n);
    int rc = 0;
    Istio__Security__Authorization a = ISTIO__SECURITY__AUTHORIZATION__INIT;
    a.name = W(p->name);
    a.namespace_ = W(p->namespace_);
    if (p->scope > POLICY_SCOPE_WORKLOAD_SELECTOR) {
        rc = erej(&e, "scope: unknown value %u", p->scope);
        goto out;
    }
    a.scope = (Istio__Security__Scope)p->scope;
    if (p->action > POLICY_DENY) {
        rc = erej(&e, "action: unknown value %u", p->action);
        goto out;
    }
    a.action = (Istio__Security__Action)p->action;
    a.dry_run = p->dry_run;
    if (p->n_rules) {
        a.rules = ealloc(&e, p->n_rules, sizeof(*a.rules));
        Istio__Security__Rule *rules = ealloc(&e, p->n_rules, sizeof(*rules));
        if (!a.rules || !rules) {
            rc = -ENOMEM;
            goto out;
        }
        char path[PATH_MAX_LEN];
        for (size_t i = 0; i < p->n_rules; i++) {
            const struct auth_rule *r = &p->rules[i];
            istio__security__rule__init(&rules[i]);
            a.rules[i] = &rules[i];
            if (!r->n_clauses) continue;
            rules[i].clauses = ealloc(&e, r->n_clauses, sizeof(*rules[i].clauses));
            Istio__Security__Clause *cl = ealloc(&e, r->n_clauses, sizeof(*cl));
            if (!rules[i].clauses || !cl) {
                rc = -ENOMEM;
                goto out;
            }
            rules[i].n_clauses = r->n_clauses;
            for (size_t j = 0; j < r->n_clauses; j++) {
                const struct auth_clause *k = &r->clauses[j];
                istio__security__clause__init(&cl[j]);
                rules[i].clauses[j] = &cl[j];
                if (!k->n_matches) continue;
                cl[j].matches = ealloc(&e, k->n_matches, sizeof(*cl[j].matches));
                Istio__Security__Match *ms = ealloc(&e, k->n_matches, sizeof(*ms));
                if (!cl[j].matches || !ms) {
                    rc = -ENOMEM;
                    goto out;
                }
                cl[j].n_matches = k->n_matches;
                for (size_t m = 0; m < k->n_matches; m++) {
                    snprintf(path, sizeof(path), "rules[%zu].clauses[%zu].matches[%zu]", i, j, m);
                    if ((rc = enc_match(&e, &k->matches[m], &ms[m], path))) goto out;
                    cl[j].matches[m] = &ms[m];
                }
            }
        }
        a.n_rules = p->n_rules;
    }
    rc = pack_out(&a.base, out, len);
out:
    return efinish(&e, rc);
}

int xds_encode_resource(enum builder_kind kind, const void *model, const char *version,
                        Envoy__Service__Discovery__V3__Resource *out, char *err, size_t n)
{
    envoy__service__discovery__v3__resource__init(out);
    if (err && n) err[0] = '\0';
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *url;
    char *name = NULL;
    int rc, nl = -1;
    switch (kind) {
    case BUILDER_WORKLOAD:
        url = PB_TYPE_URL_ADDRESS;
        rc = xds_encode_workload(model, &buf, &len, err, n);
        nl = asprintf(&name, "%s", S(((const struct workload *)model)->uid));
        break;
    case BUILDER_SERVICE:
        url = PB_TYPE_URL_ADDRESS;
        rc = xds_encode_service(model, &buf, &len, err, n);
        nl = asprintf(&name, "%s/%s", S(((const struct service *)model)->namespace_),
                      S(((const struct service *)model)->hostname));
        break;
    case BUILDER_POLICY:
        url = PB_TYPE_URL_AUTHORIZATION;
        rc = xds_encode_policy(model, &buf, &len, err, n);
        nl = asprintf(&name, "%s/%s", S(((const struct policy *)model)->namespace_),
                      S(((const struct policy *)model)->name));
        break;
    default:
        if (err && n) snprintf(err, n, "unknown resource kind %d", (int)kind);
        return -EINVAL;
    }
    if (nl < 0) name = NULL;
    Google__Protobuf__Any *any = calloc(1, sizeof(*any));
    char *ver = strdup(S(version)), *type_url = strdup(url);
    if (!rc && (!name || !any || !ver || !type_url)) rc = -ENOMEM;
    if (rc) {
        if (rc == -ENOMEM && err && n) snprintf(err, n, "out of memory");
        free(buf);
        free(name);
        free(any);
        free(ver);
        free(type_url);
        return rc;
    }
    google__protobuf__any__init(any);
    any->type_url = type_url;
    any->value = (ProtobufCBinaryData){len, buf};
    out->name = name;
    out->version = ver;
    out->resource = any;
    return 0;
}

void xds_encoded_resource_clear(Envoy__Service__Discovery__V3__Resource *r)
{
    if (r->resource) {
        pb_any_clear(r->resource);
        free(r->resource);
    }
    if (r->name != protobuf_c_empty_string) free(r->name);
    if (r->version != protobuf_c_empty_string) free(r->version);
    envoy__service__discovery__v3__resource__init(r);
}

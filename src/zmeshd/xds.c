/* zmeshd's delta ADS service (see xds.h). */
#include "zmeshd/xds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/list.h"
#include "core/log.h"
#include "core/vec.h"
#include "xds/pb.h"
#include "xds/resource.h"
#include "zmeshd/enrolment.h"
#include "zmeshd/l7.h"
#include "zmeshd/jwks.h"
#include "zmeshd/request_authentication.h"
#include "zmeshd/vs.h"
#include "mesh/l7.h"

struct xds_stream;

struct zmeshd_xds {
    struct zmeshd *d;
    struct zmeshd_server *srv;
    struct ads_server *ads;
    struct xds_stream *streams;
    uint64_t generations; /* snapshots loaded into the tables */
    /* Bytes of responses on their way (packed in send queues), and the streams waiting for that to drop
     * below ZMESHD_XDS_INFLIGHT_MAX before they build their next response (FIFO). */
    size_t inflight;
    struct xds_stream *wait_head, *wait_tail;
    /* For monotonic counters (the debug port's /metrics): streams accepted and refused, and per type the
     * counts of the clients that are gone (the live ones are added when asked). */
    uint64_t streams_opened, streams_refused;
    struct {
        uint64_t responses, acks, nacks, resources_sent, bytes_sent;
    } retired[3 + L7_N_TYPES]; /* per type_urls[] */
};

struct xds_stream {
    struct xds_stream *next, *prev;
    struct zmeshd_xds *x;
    struct grpc_call *call;
    struct ads_client *ac;
    bool finished;
    size_t inflight;     /* the size of this stream's response in its send queue, 0 when empty */
    bool waiting;        /* on the wait queue */
    struct xds_stream *wait_prev, *wait_next;
    char peer[2 * TOKEN_NAME_MAX + 2];
};

/* ztunnel's two types, the node agents' PodEnrolment, and the waypoints' L7 types. A client is sent only the
 * types it subscribes to, so a ztunnel (Address and Authorization) never sees the others. */
#define N_L4_TYPES 3
#define N_TYPES (N_L4_TYPES + L7_N_TYPES)
static const char *const type_urls[N_TYPES] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION, PB_TYPE_URL_POD_ENROLMENT,
                                               L7_TYPE_URLS};

/* ---- tables from snapshots ---- */

struct encoded {
    char *name;
    uint8_t *bytes;
    size_t len;
};

static void encoded_free(struct vec *v)
{
    struct encoded *e = (struct encoded *)v->p;
    for (size_t i = 0; i < v->n; i++) {
        free(e[i].name);
        free(e[i].bytes);
    }
    vec_free(v);
}

/* Encodes one model resource and appends it; a resource the protocol cannot carry is logged and left out
 * (the builder accepted it, so this is zmesh's own limit). Returns 0 or -ENOMEM. */
static int encode_one(struct vec *out, enum builder_kind kind, const void *m)
{
    char name[BUILDER_MAX_STR * 2 + 2], err[XDS_REASON_MAX];
    struct encoded e = {0};
    int rc;
    if (kind == BUILDER_WORKLOAD)
        rc = xds_workload_name(m, name, sizeof(name));
    else if (kind == BUILDER_SERVICE)
        rc = xds_service_name(m, name, sizeof(name));
    else
        rc = xds_policy_name(m, name, sizeof(name));
    if (rc < 0) return 0;
    if (kind == BUILDER_WORKLOAD)
        rc = xds_encode_workload(m, &e.bytes, &e.len, err, sizeof(err));
    else if (kind == BUILDER_SERVICE)
        rc = xds_encode_service(m, &e.bytes, &e.len, err, sizeof(err));
    else
        rc = xds_encode_policy(m, &e.bytes, &e.len, err, sizeof(err));
    if (rc == -ENOMEM) return -ENOMEM;
    if (rc < 0) {
        LOG_LIMITED(LOG_ERROR, "xds", "%s %s cannot be served: %s", builder_kind_name(kind), name, err);
        return 0;
    }
    struct encoded *slot = NULL;
    if (!(e.name = strdup(name)) || !(slot = vec_push(out))) {
        free(e.name);
        free(e.bytes);
        return -ENOMEM;
    }
    *slot = e;
    return 0;
}

static int table_load(struct zmeshd_xds *x, const char *type, struct vec *v, struct ads_diff *df)
{
    struct ads_resource_in *in = calloc(v->n ? v->n : 1, sizeof(*in));
    char err[256];
    if (!in) return -ENOMEM;
    struct encoded *e = (struct encoded *)v->p;
    for (size_t i = 0; i < v->n; i++)
        in[i] = (struct ads_resource_in){.name = e[i].name, .value = e[i].bytes, .len = e[i].len};
    int rc = ads_table_replace(x->ads, type, in, v->n, df, err, sizeof(err));
    if (rc < 0 && rc != -ENOMEM) LOG_E("xds", "cannot serve the %s resources: %s", type, err);
    free(in);
    return rc;
}

/* Replaces both tables with the resources of s. */
static int load_snapshot(struct zmeshd_xds *x, const struct snapshot *s)
{
    struct vec addr = VEC(struct encoded), authz = VEC(struct encoded);
    struct ads_diff da = {0}, dz = {0};
    int rc = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; !rc && i < snapshot_n_workloads(s); i++)
        rc = encode_one(&addr, BUILDER_WORKLOAD, snapshot_workload_at(s, i));
    for (size_t i = 0; !rc && i < snapshot_n_services(s); i++)
        rc = encode_one(&addr, BUILDER_SERVICE, snapshot_service_at(s, i));
    for (size_t i = 0; !rc && i < snapshot_n_policies(s); i++)
        rc = encode_one(&authz, BUILDER_POLICY, snapshot_policy_at(s, i));
    if (!rc) rc = table_load(x, PB_TYPE_URL_ADDRESS, &addr, &da);
    if (!rc) rc = table_load(x, PB_TYPE_URL_AUTHORIZATION, &authz, &dz);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!rc) {
        x->generations++;
        unsigned clients = 0;
        for (struct xds_stream *st = x->streams; st; st = st->next)
            clients++;
        LOG_I("xds",
              "pushing: addresses +%zu ~%zu -%zu, authorizations +%zu ~%zu -%zu to %u clients (encoded in "
              "%.1f ms)",
              da.added, da.changed, da.removed, dz.added, dz.changed, dz.removed, clients,
              (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    } else if (rc == -ENOMEM) {
        LOG_E("xds", "out of memory while encoding the snapshot; clients keep the previous one");
    }
    encoded_free(&addr);
    encoded_free(&authz);
    return rc;
}

static void on_snapshot(void *ud, struct snapshot *old, struct snapshot *cur)
{
    (void)old;
    load_snapshot(ud, cur);
}

/* Replaces the PodEnrolment table with the pods of st. Computed from the store, not the snapshot, after every
 * reload: a pod without an address is no workload but has an enrolment, so the snapshot may stay the same while
 * this table changes. The table compares bytes, so a reload that changes no pod's enrolment pushes nothing, and a
 * namespace label flipped changes (and pushes) exactly that namespace's pods. */
static int load_enrolments(struct zmeshd_xds *x, const struct manifest_store *st)
{
    struct zmeshd_enrolment *v = NULL;
    size_t n = 0;
    struct ads_diff df = {0};
    char err[256];
    int rc = zmeshd_enrolments(st, &zmeshd_config(x->d)->k8s, &v, &n);
    struct ads_resource_in *in = rc ? NULL : calloc(n ? n : 1, sizeof(*in));
    if (!rc && !in) rc = -ENOMEM;
    for (size_t i = 0; !rc && i < n; i++)
        in[i] = (struct ads_resource_in){.name = v[i].name, .value = v[i].bytes, .len = v[i].len};
    if (!rc) rc = ads_table_replace(x->ads, PB_TYPE_URL_POD_ENROLMENT, in, n, &df, err, sizeof(err));
    if (rc == -ENOMEM)
        LOG_E("xds", "out of memory while computing pod enrolments; node agents keep the previous ones");
    else if (rc < 0)
        LOG_E("xds", "cannot serve the %s resources: %s", PB_TYPE_URL_POD_ENROLMENT, err);
    else if (df.added || df.changed || df.removed)
        LOG_I("xds", "pushing: pod enrolments +%zu ~%zu -%zu (%zu pods)", df.added, df.changed, df.removed, n);
    free(in);
    zmeshd_enrolments_free(v, n);
    return rc;
}

/* Replaces the waypoints' tables with the L7 documents of st, converted (src/zmeshd/l7.h, one table per
 * enum l7_type). A document the conversion refuses is left out whole (its findings say why); a second document
 * with the same resource name and type is an ERROR and left out. */
static int load_l7(struct zmeshd_xds *x, const struct manifest_store *st)
{
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    struct vec tables[L7_N_TYPES];
    struct ads_diff diffs[L7_N_TYPES] = {0};
    for (int t = 0; t < L7_N_TYPES; t++)
        tables[t] = VEC(struct encoded);
    int rc = 0;
    vs_report_conflicts(docs, n, NULL, NULL); /* a VirtualService and an HTTPRoute on one Service */
    zmeshd_jwks_pass_begin(); /* jwksUri sources no policy of this pass uses are dropped (jwks.h) */
    for (size_t i = 0; i < n && !rc; i++) {
        struct encoded e = {0};
        char name[L7_NAME_MAX];
        int type = 0;
        int c = l7_convert_doc(&docs[i], &type, &e.bytes, &e.len, name, sizeof(name), NULL, NULL);
        if (c == -ENOMEM) rc = c;
        if (c < 0) continue;
        struct vec *v = &tables[type];
        bool dup = false;
        for (size_t k = 0; k < v->n && !dup; k++)
            dup = !strcmp(((struct encoded *)v->p)[k].name, name);
        if (dup) {
            manifest_finding_emit(NULL, NULL, &(struct manifest_finding){.level = MANIFEST_ERROR, .src = docs[i].src,
                                                             .field = "metadata.name",
                                                             .message = "duplicate L7 resource: left out"});
            free(e.bytes);
            continue;
        }
        struct encoded *slot = NULL;
        if (!(e.name = strdup(name)) || !(slot = vec_push(v))) {
            free(e.name);
            free(e.bytes);
            rc = -ENOMEM;
            break;
        }
        *slot = e;
    }
    if (!rc) (void)zmeshd_jwks_pass_end();
    for (int t = 0; t < L7_N_TYPES && !rc; t++)
        rc = table_load(x, l7_type_urls[t], &tables[t], &diffs[t]);
    if (rc == -ENOMEM)
        LOG_E("xds", "out of memory while converting L7 resources; waypoints keep the previous ones");
    for (int t = 0; t < L7_N_TYPES && !rc; t++)
        if (diffs[t].added || diffs[t].changed || diffs[t].removed)
            LOG_I("xds", "pushing: %s +%zu ~%zu -%zu", strrchr(l7_type_urls[t], '.') + 1, diffs[t].added,
                  diffs[t].changed, diffs[t].removed);
    for (int t = 0; t < L7_N_TYPES; t++)
        encoded_free(&tables[t]);
    return rc;
}

static void on_store(void *ud, const struct manifest_store *st)
{
    load_enrolments(ud, st);
    load_l7(ud, st);
}

/* A jwksUri document changed (src/zmeshd/request_authentication.h): convert and push the L7 resources again. */
static void on_jwks(void *ud)
{
    struct zmeshd_xds *x = ud;
    if (zmeshd_store(x->d)) (void)load_l7(x, zmeshd_store(x->d));
}

/* ---- streams ---- */

static void stream_finish(struct xds_stream *st, enum grpc_status code, const char *msg)
{
    if (st->finished) return;
    st->finished = true;
    grpc_call_finish(st->call, code, msg, NULL, 0);
}

static void pump(struct xds_stream *st);

/* The stream's response has left (or the stream ended): its bytes no longer count, and streams that waited for
 * room build theirs, oldest first. */
static void release_inflight(struct xds_stream *st)
{
    struct zmeshd_xds *x = st->x;
    x->inflight -= st->inflight;
    st->inflight = 0;
    while (x->wait_head && x->inflight < ZMESHD_XDS_INFLIGHT_MAX) {
        struct xds_stream *w = x->wait_head;
        QUEUE_DEL(x->wait_head, x->wait_tail, w, wait_prev, wait_next);
        w->waiting = false;
        pump(w);
    }
}

/* Sends responses while HTTP/2 takes them: one at a time per stream, each built only when it can leave, so a
 * slow client gets the latest state when it is ready rather than a backlog; and while the responses on their way
 * to all clients hold ZMESHD_XDS_INFLIGHT_MAX bytes, new ones wait, so a full push of a large mesh to many
 * clients goes out in waves instead of one packed copy per client at once. */
static void pump(struct xds_stream *st)
{
    struct zmeshd_xds *x = st->x;
    while (!st->finished && !st->inflight && ads_client_pending(st->ac)) {
        if (x->inflight >= ZMESHD_XDS_INFLIGHT_MAX) {
            if (!st->waiting) {
                st->waiting = true;
                QUEUE_APPEND(x->wait_head, x->wait_tail, st, wait_prev, wait_next);
            }
            return;
        }
        struct ads_response *r = NULL;
        int rc = ads_client_next_response(st->ac, &r);
        if (rc < 0) {
            LOG_W("xds", "ending the stream of %s: %s", st->peer, ads_client_error(st->ac));
            stream_finish(st, (enum grpc_status)ads_client_grpc_status(st->ac), ads_client_error(st->ac));
            return;
        }
        if (!r) return; /* nothing to send: on_pending says when there is */
        /* Packed straight into the (empty) send queue, which always takes one message. */
        size_t n = ads_response_size(r);
        uint8_t *buf = grpc_call_send_alloc(st->call, n, &rc);
        if (buf) ads_response_pack(r, buf);
        ads_response_free(r);
        if (!buf) {
            stream_finish(st, rc == -ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL,
                          rc == -ENOMEM ? "out of memory" : "cannot send");
            return;
        }
        /* Counted until HTTP/2 has taken it all: the server's send queue holds one message, so on_writable
         * means empty (asking while bytes are queued cannot fire at once). */
        st->inflight = n ? n : 1;
        x->inflight += st->inflight;
        grpc_call_notify_writable(st->call);
    }
}

static void on_pending(struct ads_client *ac, void *ud)
{
    (void)ac;
    pump(ud);
}

static void on_writable(struct grpc_call *c, void *ud)
{
    struct xds_stream *st = ud;
    (void)c;
    if (st->inflight && grpc_call_queued(st->call) == 0) release_inflight(st);
    pump(st);
}

static void on_message(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    struct xds_stream *st = ud;
    (void)c;
    if (st->finished) return;
    if (ads_client_recv(st->ac, p, n) < 0) {
        LOG_LIMITED(LOG_WARN, "xds", "ending the stream of %s: %s", st->peer, ads_client_error(st->ac));
        stream_finish(st, (enum grpc_status)ads_client_grpc_status(st->ac), ads_client_error(st->ac));
        return;
    }
    pump(st);
}

static void on_half_close(struct grpc_call *c, void *ud)
{
    (void)c;
    stream_finish(ud, GRPC_STATUS_OK, NULL);
}

static void on_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    struct xds_stream *st = ud;
    (void)c;
    LOG_I("xds", "stream of %s (%s) ended: %s%s%s", st->peer, ads_client_node_id(st->ac),
          grpc_status_to_str(r->status), r->message[0] ? ": " : "", r->message);
    LIST_DEL(st->x->streams, st);
    if (st->waiting) QUEUE_DEL(st->x->wait_head, st->x->wait_tail, st, wait_prev, wait_next);
    st->finished = true;
    for (size_t i = 0; i < N_TYPES; i++) {
        struct ads_watch_info wi;
        if (ads_client_watch_info(st->ac, i, &wi) < 0) continue;
        st->x->retired[i].responses += wi.responses;
        st->x->retired[i].acks += wi.acks;
        st->x->retired[i].nacks += wi.nacks;
        st->x->retired[i].resources_sent += wi.resources_sent;
        st->x->retired[i].bytes_sent += wi.bytes_sent;
    }
    ads_client_free(st->ac);
    st->ac = NULL;
    release_inflight(st); /* may let waiting streams build theirs */
    free(st);
}

static const struct grpc_call_ops stream_ops = {
    .on_message = on_message, .on_half_close = on_half_close, .on_writable = on_writable, .on_end = on_end};

static void refused_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c, (void)ud, (void)r;
}
static const struct grpc_call_ops refused_ops = {.on_end = refused_end};

static void ads_handler(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    struct zmeshd_xds *x = ud;
    struct token_caller caller;
    char why[512];
    if (zmeshd_server_authenticate(x->srv, info, &caller, why, sizeof(why)) < 0) {
        grpc_call_set_ops(c, &refused_ops, NULL);
        x->streams_refused++;
        LOG_LIMITED(LOG_WARN, "xds", "xDS stream refused (UNAUTHENTICATED): %s", why);
        grpc_call_finish(c, GRPC_STATUS_UNAUTHENTICATED, "authentication failure", NULL, 0);
        return;
    }
    struct xds_stream *st = calloc(1, sizeof(*st));
    if (st) snprintf(st->peer, sizeof(st->peer), "%s/%s", caller.ns, caller.sa);
    if (!st || ads_client_new(x->ads, st->peer, on_pending, st, &st->ac) < 0) {
        free(st);
        grpc_call_set_ops(c, &refused_ops, NULL);
        grpc_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    st->x = x;
    st->call = c;
    LIST_PUSH(x->streams, st);
    x->streams_opened++;
    grpc_call_set_ops(c, &stream_ops, st);
    LOG_I("xds", "stream of %s opened", st->peer);
}

/* ---- lifecycle ---- */

int zmeshd_xds_new(struct zmeshd *d, struct zmeshd_server *srv, struct zmeshd_xds **out, char *err,
                   size_t errlen)
{
    struct zmeshd_xds *x = calloc(1, sizeof(*x));
    int rc;
    *out = NULL;
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    x->d = d;
    x->srv = srv;
    struct ads_server_opts o = {.type_urls = type_urls, .n_types = N_TYPES, .control_plane_id = "zmeshd"};
    if ((rc = ads_server_new(&o, &x->ads, err, errlen)) < 0) goto fail;
    if ((rc = grpc_server_add(zmeshd_server_grpc(srv), ZMESHD_ADS_METHOD, GRPC_STREAMING, ads_handler, x)) <
        0) {
        snprintf(err, errlen, "cannot register %s: %s", ZMESHD_ADS_METHOD, strerror(-rc));
        goto fail;
    }
    if (zmeshd_snapshot(d) && (rc = load_snapshot(x, zmeshd_snapshot(d))) < 0) {
        snprintf(err, errlen, "cannot encode the first snapshot: %s", strerror(-rc));
        goto fail;
    }
    if (zmeshd_store(d) && (rc = load_l7(x, zmeshd_store(d))) < 0) {
        snprintf(err, errlen, "cannot convert the first L7 resources: %s", strerror(-rc));
        goto fail;
    }
    if (zmeshd_store(d) && (rc = load_enrolments(x, zmeshd_store(d))) < 0) {
        snprintf(err, errlen, "cannot compute the first pod enrolments: %s", strerror(-rc));
        goto fail;
    }
    if ((rc = zmeshd_subscribe(d, on_snapshot, x)) < 0) {
        snprintf(err, errlen, "cannot subscribe to snapshots: %s", strerror(-rc));
        goto fail;
    }
    if ((rc = zmeshd_subscribe_store(d, on_store, x)) < 0) {
        (void)zmeshd_unsubscribe(d, on_snapshot, x);
        snprintf(err, errlen, "cannot subscribe to manifest reloads: %s", strerror(-rc));
        goto fail;
    }
    if ((rc = zmeshd_jwks_watch(zmeshd_loop(d), on_jwks, x)) < 0) {
        (void)zmeshd_unsubscribe(d, on_snapshot, x);
        (void)zmeshd_unsubscribe_store(d, on_store, x);
        snprintf(err, errlen, "cannot watch the JWKS resolver: %s", strerror(-rc));
        goto fail;
    }
    *out = x;
    return 0;
fail:
    ads_server_free(x->ads);
    free(x);
    return rc;
}

void zmeshd_xds_free(struct zmeshd_xds *x)
{
    if (!x) return;
    (void)zmeshd_unsubscribe(x->d, on_snapshot, x);
    (void)zmeshd_unsubscribe_store(x->d, on_store, x);
    zmeshd_jwks_shutdown();
    ads_server_free(x->ads); /* after zmeshd_server_free, which ended every stream */
    free(x);
}

json_t *zmeshd_xds_status(const struct zmeshd_xds *x)
{
    json_t *j = ads_server_status_json(x->ads), *types = json_array();
    if (!j || !types) goto fail;
    for (size_t i = 0; i < N_TYPES; i++) {
        uint64_t r = x->retired[i].responses, a = x->retired[i].acks, n = x->retired[i].nacks;
        uint64_t rs = x->retired[i].resources_sent, b = x->retired[i].bytes_sent;
        for (const struct ads_client *c = ads_server_first_client(x->ads); c; c = ads_client_next(c)) {
            struct ads_watch_info wi;
            if (ads_client_watch_info(c, i, &wi) < 0) continue;
            r += wi.responses, a += wi.acks, n += wi.nacks, rs += wi.resources_sent, b += wi.bytes_sent;
        }
        if (json_array_append_new(types, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "type_url", type_urls[i],
                                                   "responses", (json_int_t)r, "acks", (json_int_t)a, "nacks",
                                                   (json_int_t)n, "resources_sent", (json_int_t)rs,
                                                   "bytes_sent", (json_int_t)b)) < 0)
            goto fail;
    }
    if (json_object_set_new(j, "generations", json_integer((json_int_t)x->generations)) < 0) goto fail;
    /* The pack takes types (also when it fails), json_object_set_new the pack's result. */
    json_t *totals = json_pack("{s:I, s:I, s:o}", "streams_opened", (json_int_t)x->streams_opened,
                               "streams_refused", (json_int_t)x->streams_refused, "types", types);
    types = NULL;
    if (json_object_set_new(j, "totals", totals) < 0) goto fail;
    return j;
fail:
    json_decref(types);
    json_decref(j);
    return NULL;
}

struct ads_server *zmeshd_xds_ads(const struct zmeshd_xds *x)
{
    return x->ads;
}

/* The remote CA provider (see ca_client.h). */
#include "xds/ca_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "citadel.pb-c.h"
#include "core/log.h"
#include "tls/csr.h"
#include "xds/pb.h"
#include "xds/pbstruct.h"

/* A channel and the calls on it. A channel that stopped taking calls (GOAWAY, closed) is retired: freed once
 * its last call has ended (grpc_channel_free may run inside that call's on_end). */
struct ca_chan {
    struct grpc_channel *ch;
    struct loop *loop;
    unsigned calls;
    bool retired;
};

struct ca_client {
    struct cert_provider base; /* first: the provider pointer is the ca_client pointer */
    struct xds_endpoint *ep;
    int64_t ttl_s;
    bool impersonate;
    uint32_t timeout_ms;
    struct ca_chan *chan; /* the channel of the loop fetch_async last ran on */
};

struct ca_req {
    struct ca_client *cc;
    struct ca_chan *chan;
    struct loop *loop;
    struct spiffe_id id;
    char uri[SPIFFE_MAX];
    cert_fetch_done_fn done;
    void *ud;
    EVP_PKEY *key;
    uint8_t *answer;
    size_t answer_len;
    char err[512];
    struct task fail_task; /* reports a failure found before any call started, after fetch_async returned */
};

static void chan_free(struct ca_chan *c)
{
    grpc_channel_free(c->ch);
    free(c);
}

static void chan_release(struct ca_chan *c)
{
    if (--c->calls == 0 && c->retired) chan_free(c);
}

static void chan_retire(struct ca_chan *c)
{
    if (c->retired) return;
    c->retired = true;
    if (c->calls == 0) chan_free(c);
}

/* The channel for loop l: the current one if it still takes calls, else a new one. */
static struct ca_chan *chan_get(struct ca_client *cc, struct loop *l, char *err, size_t errlen)
{
    if (cc->chan && (cc->chan->loop != l || !grpc_channel_usable(cc->chan->ch))) {
        chan_retire(cc->chan);
        cc->chan = NULL;
    }
    if (cc->chan) return cc->chan;
    struct ca_chan *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct grpc_opts o = {.max_recv = CA_CLIENT_MAX_ANSWER};
    if (!(c->ch = xds_endpoint_dial(cc->ep, l, &o, err, errlen))) {
        free(c);
        return NULL;
    }
    c->loop = l;
    cc->chan = c;
    return c;
}

static void req_free(struct ca_req *r)
{
    EVP_PKEY_free(r->key);
    free(r->answer);
    free(r);
}

static void fail_task_cb(struct task *t)
{
    struct ca_req *r = container_of(t, struct ca_req, fail_task);
    r->done(r->ud, NULL, r->err);
    req_free(r);
}

static void on_message(struct grpc_call *call, void *ud, const uint8_t *p, size_t n)
{
    struct ca_req *r = ud;
    free(r->answer);
    r->answer_len = 0;
    if ((r->answer = malloc(n ? n : 1))) {
        memcpy(r->answer, p, n);
        r->answer_len = n;
    }
}

/* Turns the answer into a certificate, or says why not in r->err. */
static struct tls_cert *answer_cert(struct ca_req *r)
{
    ProtobufCMessage *m = NULL;
    struct tls_cert *c = NULL;
    size_t extra = 0;
    char why[400];
    if (!r->answer) {
        snprintf(r->err, sizeof(r->err), "CA %s: answer lost (out of memory)",
                 xds_endpoint_authority(r->cc->ep));
        return NULL;
    }
    if (pb_message_unpack(&istio__v1__auth__istio_certificate_response__descriptor, r->answer, r->answer_len,
                          &m) < 0) {
        snprintf(r->err, sizeof(r->err), "CA %s: the answer is not an IstioCertificateResponse",
                 xds_endpoint_authority(r->cc->ep));
        return NULL;
    }
    Istio__V1__Auth__IstioCertificateResponse *resp = (Istio__V1__Auth__IstioCertificateResponse *)m;
    if (tls_cert_from_ca_answer(r->key, (const char *const *)resp->cert_chain, resp->n_cert_chain, &r->id, &c,
                                &extra, why, sizeof(why)) < 0)
        snprintf(r->err, sizeof(r->err), "CA %s: %s", xds_endpoint_authority(r->cc->ep), why);
    else if (extra)
        LOG_W("identity", "CA %s answered %zu roots for %s; only the one that signed it is trusted for peers",
              xds_endpoint_authority(r->cc->ep), extra + 1, r->uri);
    protobuf_c_message_free_unpacked(m, NULL);
    return c;
}

static void on_end(struct grpc_call *call, void *ud, const struct grpc_result *res)
{
    struct ca_req *r = ud;
    struct tls_cert *c = NULL;
    if (res->status == GRPC_STATUS_OK)
        c = answer_cert(r);
    else
        snprintf(r->err, sizeof(r->err), "CA %s: %s%s%s", xds_endpoint_authority(r->cc->ep),
                 grpc_status_to_str(res->status), res->message[0] ? ": " : "", res->message);
    chan_release(r->chan);
    r->done(r->ud, c, c ? NULL : r->err);
    req_free(r);
}

static const struct grpc_call_ops call_ops = {.on_message = on_message, .on_end = on_end};

/* The serialized IstioCertificateRequest for csr, or NULL. */
static uint8_t *request_bytes(struct ca_client *cc, const char *csr, const char *uri, size_t *len)
{
    Istio__V1__Auth__IstioCertificateRequest req = ISTIO__V1__AUTH__ISTIO_CERTIFICATE_REQUEST__INIT;
    req.csr = (char *)csr;
    req.validity_duration = cc->ttl_s;
    uint8_t *buf = NULL;
    if (cc->impersonate && (!(req.metadata = pb_struct_new()) ||
                            pb_struct_set_string(req.metadata, "ImpersonatedIdentity", uri) < 0))
        goto out;
    *len = istio__v1__auth__istio_certificate_request__get_packed_size(&req);
    if ((buf = malloc(*len ? *len : 1))) istio__v1__auth__istio_certificate_request__pack(&req, buf);
out:
    if (req.metadata) protobuf_c_message_free_unpacked(&req.metadata->base, NULL);
    return buf;
}

static int ca_fetch_async(struct cert_provider *p, struct loop *l, const struct spiffe_id *id,
                          cert_fetch_done_fn done, void *ud)
{
    struct ca_client *cc = (struct ca_client *)p;
    struct ca_req *r = calloc(1, sizeof(*r));
    char *csr = NULL;
    uint8_t *req = NULL;
    size_t req_len = 0;
    if (!r) return -ENOMEM;
    *r = (struct ca_req){.cc = cc, .loop = l, .id = *id, .done = done, .ud = ud};
    r->fail_task.cb = fail_task_cb;
    if (spiffe_format(id, r->uri, sizeof(r->uri)) < 0) {
        snprintf(r->err, sizeof(r->err), "identity too long");
        goto fail;
    }
    if (tls_csr_new(r->uri, &r->key, &csr, r->err, sizeof(r->err)) < 0) goto fail;
    if (!(req = request_bytes(cc, csr, r->uri, &req_len))) {
        snprintf(r->err, sizeof(r->err), "out of memory");
        goto fail;
    }
    const struct grpc_md *md;
    char why[300];
    int n_md = xds_endpoint_metadata(cc->ep, &md, why, sizeof(why));
    if (n_md < 0) {
        snprintf(r->err, sizeof(r->err), "CA %s: %s", xds_endpoint_authority(cc->ep), why);
        goto fail;
    }
    struct grpc_call_opts co = {.timeout_ms = cc->timeout_ms, .md = md, .n_md = (size_t)n_md};
    /* A channel that took its last call just now (GOAWAY) refuses with -EPIPE: one new channel, once. */
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!(r->chan = chan_get(cc, l, why, sizeof(why)))) {
            snprintf(r->err, sizeof(r->err), "CA %s: %s", xds_endpoint_authority(cc->ep), why);
            goto fail;
        }
        int err = 0;
        r->chan->calls++;
        if (grpc_call_unary(r->chan->ch, CA_CLIENT_METHOD, &co, req, req_len, &call_ops, r, &err)) {
            free(csr);
            free(req);
            return 0;
        }
        chan_release(r->chan);
        if (err != -EPIPE) {
            snprintf(r->err, sizeof(r->err), "CA %s: cannot start the call: %s",
                     xds_endpoint_authority(cc->ep), strerror(-err));
            goto fail;
        }
        if (cc->chan == r->chan) cc->chan = NULL;
        chan_retire(r->chan);
    }
    snprintf(r->err, sizeof(r->err), "CA %s: UNAVAILABLE: the connection takes no calls",
             xds_endpoint_authority(cc->ep));
fail:
    free(csr);
    free(req);
    loop_defer(l, &r->fail_task);
    return 0;
}

/* The blocking fetch: the same request on a private loop, run until it is done. */
struct sync_wait {
    struct loop *loop;
    struct tls_cert *cert;
    char *err;
    size_t errlen;
};

static void sync_done(void *ud, struct tls_cert *c, const char *err)
{
    struct sync_wait *w = ud;
    w->cert = c;
    if (!c) snprintf(w->err, w->errlen, "%s", err);
    loop_stop(w->loop);
}

static struct tls_cert *ca_fetch(struct cert_provider *p, const struct spiffe_id *id, char *err,
                                 size_t errlen)
{
    struct ca_client *cc = (struct ca_client *)p;
    struct sync_wait w = {.loop = loop_new(), .err = err, .errlen = errlen};
    if (!w.loop) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct ca_chan *saved = cc->chan;
    cc->chan = NULL; /* a channel of its own, on this loop only */
    ca_fetch_async(p, w.loop, id, sync_done, &w);
    loop_run(w.loop);
    if (cc->chan) chan_free(cc->chan);
    cc->chan = saved;
    loop_run_tasks(w.loop); /* the closed connection and any retired channel are freed from tasks */
    loop_free(w.loop);
    return w.cert;
}

static void ca_destroy(struct cert_provider *p)
{
    struct ca_client *cc = (struct ca_client *)p;
    if (cc->chan) chan_free(cc->chan); /* the identity manager has stopped: no call is in flight */
    xds_endpoint_free(cc->ep);
    free(cc);
}

struct cert_provider *ca_client_new(const struct ca_client_opts *o, char *err, size_t errlen)
{
    struct ca_client *cc = calloc(1, sizeof(*cc));
    if (!cc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (xds_endpoint_new(&o->endpoint, "CA", &cc->ep, err, errlen) < 0) {
        free(cc);
        return NULL;
    }
    cc->base =
        (struct cert_provider){.fetch = ca_fetch, .fetch_async = ca_fetch_async, .destroy = ca_destroy};
    cc->ttl_s = o->ttl_s;
    cc->impersonate = o->impersonate;
    cc->timeout_ms = o->timeout_ms ? o->timeout_ms : CA_CLIENT_TIMEOUT_MS;
    return &cc->base;
}

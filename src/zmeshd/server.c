/* zmeshd's gRPC port and its CA service (see server.h). */
#include "zmeshd/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "citadel.pb-c.h"
#include "core/acceptor.h"
#include "core/log.h"
#include "core/net.h"
#include "tls/control.h"
#include "xds/pb.h"
#include "xds/pbstruct.h"

/* istiod's metadata key for the identity a node proxy asks for (security/pkg/server/ca/server.go). */
#define IMPERSONATED_IDENTITY "ImpersonatedIdentity"

struct zmeshd_server {
    struct loop *loop;
    struct zmeshd *d;
    struct grpc_server *grpc;
    struct acceptor acc;
    char acc_name[64];
    uint16_t port;
    SSL_CTX *ctx; /* new connections get the current one; SSL objects hold their own reference */
    struct timer renew;
    struct zmeshd_ca_stats stats;
};

/* ---- the serving certificate ---- */

/* Signs a new serving certificate and makes it current. Returns 0 or -errno with err. */
static int server_cert(struct zmeshd_server *s, char *err, size_t errlen)
{
    static const char *const names[] = ZMESHD_SERVER_NAMES;
    struct ca_chain ch;
    EVP_PKEY *key = NULL;
    int rc = ca_issuer_sign_server(zmeshd_ca(s->d), names, sizeof(names) / sizeof(names[0]),
                                   ZMESHD_SERVER_CERT_TTL_S, &ch, &key, err, errlen);
    if (rc < 0) return rc;
    SSL_CTX *ctx = tls_control_server_ctx_new((const char *const *)ch.pem, ch.n, key, err, errlen);
    ca_chain_free(&ch);
    EVP_PKEY_free(key);
    if (!ctx) return -EIO;
    SSL_CTX_free(s->ctx);
    s->ctx = ctx;
    return 0;
}

/* Renews at half the lifetime (as workload certificates); on failure retries in a minute with the old one,
 * which is still valid for hours. */
static void renew_cb(struct timer *t)
{
    struct zmeshd_server *s = container_of(t, struct zmeshd_server, renew);
    char err[512];
    if (server_cert(s, err, sizeof(err)) < 0) {
        LOG_E("zmeshd", "cannot renew the serving certificate: %s (retrying in 60 s)", err);
        timer_start(s->loop, &s->renew, 60 * 1000);
        return;
    }
    LOG_I("zmeshd", "renewed the serving certificate");
    timer_start(s->loop, &s->renew, ZMESHD_SERVER_CERT_TTL_S * 1000 / 2);
}

/* ---- CreateCertificate ---- */

static const struct grpc_md *md_get(const struct grpc_call_info *info, const char *name)
{
    for (size_t i = 0; i < info->n_md; i++)
        if (!strcmp(info->md[i].name, name)) return &info->md[i];
    return NULL;
}

static void ca_on_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c, (void)ud, (void)r;
}

static const struct grpc_call_ops ca_ops = {.on_end = ca_on_end};

/* Refuses the caller: UNAUTHENTICATED without detail, the reason in one rate-limited line. */
static void refuse(struct zmeshd_server *s, struct grpc_call *c, const struct grpc_call_info *info,
                   const char *why)
{
    s->stats.unauthenticated++;
    LOG_LIMITED(LOG_WARN, "ca", "CreateCertificate refused (UNAUTHENTICATED): %s (peer %s)", why,
                info->authority[0] ? info->authority : "?");
    grpc_call_finish(c, GRPC_STATUS_UNAUTHENTICATED, "request authenticate failure", NULL, 0);
}

int zmeshd_server_authenticate(struct zmeshd_server *s, const struct grpc_call_info *info,
                               struct token_caller *caller, char *why, size_t wn)
{
    const struct zmeshd_config *cfg = zmeshd_config(s->d);
    const struct grpc_md *auth = md_get(info, "authorization");
    if (!auth) {
        snprintf(why, wn, "no authorization metadata (a bearer token is required)");
        return -EACCES;
    }
    if (auth->len < 7 || strncasecmp((const char *)auth->value, "Bearer ", 7) != 0) {
        snprintf(why, wn, "the authorization metadata is not \"Bearer <token>\"");
        return -EACCES;
    }
    /* istiod's kube JWT authenticator picks the cluster by the clusterid metadata and refuses one it does not
     * know (security/pkg/server/ca/authenticate/kubeauth). */
    const struct grpc_md *cluster = md_get(info, "clusterid");
    const char *ours =
        cfg->k8s.cluster_id && *cfg->k8s.cluster_id ? cfg->k8s.cluster_id : K8S_DEFAULT_CLUSTER_ID;
    if (cluster && (cluster->len != strlen(ours) || memcmp(cluster->value, ours, cluster->len))) {
        snprintf(why, wn, "client claims to be in cluster \"%.*s\", but zmeshd only knows cluster \"%s\"",
                 (int)(cluster->len < 100 ? cluster->len : 100), (const char *)cluster->value, ours);
        return -EACCES;
    }
    if (token_verify(zmeshd_token_key(s->d), NULL, NULL, (const char *)auth->value + 7, auth->len - 7,
                     time(NULL), caller, why, wn) < 0)
        return -EACCES;
    return 0;
}

static void ca_handler(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    struct zmeshd_server *s = ud;
    const struct zmeshd_config *cfg = zmeshd_config(s->d);
    char why[512];
    grpc_call_set_ops(c, &ca_ops, s);

    struct token_caller caller;
    if (zmeshd_server_authenticate(s, info, &caller, why, sizeof(why)) < 0) {
        refuse(s, c, info, why);
        return;
    }

    /* The request. */
    ProtobufCMessage *m = NULL;
    if (pb_message_unpack(&istio__v1__auth__istio_certificate_request__descriptor, info->request,
                          info->request_len, &m) < 0) {
        s->stats.invalid++;
        grpc_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "the request is not an IstioCertificateRequest",
                         NULL, 0);
        return;
    }
    Istio__V1__Auth__IstioCertificateRequest *req = (Istio__V1__Auth__IstioCertificateRequest *)m;
    const char *imp = pb_struct_get_string(req->metadata, IMPERSONATED_IDENTITY);

    /* Authorization: which identity this caller may have. */
    struct spiffe_id id;
    if (ca_authorize(&caller, cfg->k8s.trust_domain, imp, zmeshd_trusted(s->d), zmeshd_pod_on_node, s->d, &id,
                     why, sizeof(why)) < 0) {
        char line[2 * TOKEN_NAME_MAX + 520];
        snprintf(line, sizeof(line), "%s/%s: %s", caller.ns, caller.sa, why);
        refuse(s, c, info, line);
        protobuf_c_message_free_unpacked(m, NULL);
        return;
    }

    struct ca_chain chain;
    int rc = ca_issuer_sign_csr(zmeshd_ca(s->d), req->csr, strlen(req->csr), &id, req->validity_duration,
                                &chain, why, sizeof(why));
    protobuf_c_message_free_unpacked(m, NULL);
    if (rc < 0) {
        bool bad = rc == -EINVAL || rc == -ERANGE;
        char msg[600];
        /* istiod's wording (server.go): "CSR signing error (<reason>)". */
        snprintf(msg, sizeof(msg), "CSR signing error (%s)", why);
        if (bad)
            s->stats.invalid++;
        else
            s->stats.internal++;
        LOG_LIMITED(LOG_WARN, "ca", "CreateCertificate for %s/%s failed: %s", caller.ns, caller.sa, why);
        grpc_call_finish(c, bad ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_INTERNAL, msg, NULL, 0);
        return;
    }
    Istio__V1__Auth__IstioCertificateResponse resp = ISTIO__V1__AUTH__ISTIO_CERTIFICATE_RESPONSE__INIT;
    resp.n_cert_chain = chain.n;
    resp.cert_chain = chain.pem;
    size_t len = istio__v1__auth__istio_certificate_response__get_packed_size(&resp);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        ca_chain_free(&chain);
        s->stats.internal++;
        grpc_call_finish(c, GRPC_STATUS_INTERNAL, "out of memory", NULL, 0);
        return;
    }
    istio__v1__auth__istio_certificate_response__pack(&resp, buf);
    ca_chain_free(&chain);
    char uri[SPIFFE_MAX];
    spiffe_format(&id, uri, sizeof(uri));
    if (grpc_call_send(c, buf, len) < 0) {
        s->stats.internal++;
        grpc_call_finish(c, GRPC_STATUS_INTERNAL, "cannot send the answer", NULL, 0);
    } else {
        s->stats.signed_ok++;
        LOG_D("ca", "signed %s for %s/%s%s%s", uri, caller.ns, caller.sa, caller.node[0] ? " on node " : "",
              caller.node);
        grpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL, 0);
    }
    free(buf);
}

/* ---- the listener ---- */

static void on_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    (void)peer;
    struct zmeshd_server *s = container_of(a, struct zmeshd_server, acc);
    net_set_nodelay(fd);
    grpc_server_serve(s->grpc, fd, s->ctx);
}

static const struct acceptor_ops acc_ops = {.on_accept = on_accept};

int zmeshd_server_new(struct loop *l, struct zmeshd *d, struct zmeshd_server **out, char *err, size_t errlen)
{
    int rc;
    struct zmeshd_server *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->loop = l;
    s->d = d;
    s->renew.cb = renew_cb;
    s->acc.io.fd = -1;
    if ((rc = server_cert(s, err, errlen)) < 0) goto fail;
    /* A send queue of one message: the ADS glue builds a response only when the previous one has left, so a
     * slow client gets the latest state, not a backlog (the CA sends one message per call anyway). With the
     * queue's bound at 1 byte, on_writable comes exactly when the queue is empty again. */
    struct grpc_opts o = {.max_recv = ZMESHD_MAX_REQUEST, .send_queue_max = 1};
    if (!(s->grpc = grpc_server_new(l, &o)) ||
        grpc_server_add(s->grpc, "/istio.v1.auth.IstioCertificateService/CreateCertificate", GRPC_UNARY,
                        ca_handler, s) < 0) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    int fd = net_listen_addr(zmeshd_listen_addr(d), 1024);
    if (fd < 0) {
        rc = fd;
        snprintf(err, errlen, "listen on %s: %s", zmeshd_listen(d), strerror(-fd));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof(bound);
    getsockname(fd, (struct sockaddr *)&bound, &bl);
    s->port = ip_port_of(&bound).port;
    snprintf(s->acc_name, sizeof(s->acc_name), "zmeshd gRPC :%u", s->port);
    if ((rc = acceptor_start(&s->acc, l, fd, s->acc_name, &acc_ops)) < 0) {
        snprintf(err, errlen, "listen on %s: %s", zmeshd_listen(d), strerror(-rc));
        goto fail;
    }
    timer_start(l, &s->renew, ZMESHD_SERVER_CERT_TTL_S * 1000 / 2);
    *out = s;
    return 0;
fail:
    zmeshd_server_free(s);
    return rc;
}

void zmeshd_server_free(struct zmeshd_server *s)
{
    if (!s) return;
    if (s->acc.io.fd >= 0) acceptor_close(&s->acc);
    timer_stop(s->loop, &s->renew);
    grpc_server_free(s->grpc);
    SSL_CTX_free(s->ctx);
    free(s);
}

struct grpc_server *zmeshd_server_grpc(struct zmeshd_server *s)
{
    return s->grpc;
}

uint16_t zmeshd_server_port(const struct zmeshd_server *s)
{
    return s->port;
}

const struct zmeshd_ca_stats *zmeshd_server_ca_stats(const struct zmeshd_server *s)
{
    return &s->stats;
}

/* Simulated control-plane clients for bench/cp.py, on zmesh's own gRPC layer (src/grpc, src/xds/endpoint.h):
 * many delta ADS streams, or many concurrent CreateCertificate calls, from one process on one event loop.
 *
 *   xds_clients ads --addr HOST:PORT --roots PEM --alt-hostname NAME --token FILE|TOKEN [--clients N]
 *                   [--cluster-id ID] [--node-prefix P]
 *     N clients, each with its own TLS connection and one DeltaAggregatedResources stream, subscribed as
 *     ztunnel subscribes (wildcard Address, then Authorization, with a Node), that decode every response
 *     (protobuf-c, the whole DeltaDiscoveryResponse) and ACK it with its nonce at once. They apply nothing:
 *     this is the control plane's cost per client, not a data plane's. Runs until stdin reaches EOF (or
 *     SIGTERM). One line on stdout per event, times on CLOCK_MONOTONIC in ns (Python's time.monotonic_ns):
 *       R <ns> <client> <A|Z> <resources> <removed> <bytes> <system_version>   a response, its ACK queued
 *       S <ns> <clients>                         every client got its first response of both types
 *       E <ns> <client> <grpc status> <message>  a stream ended (not reconnected)
 *
 *   xds_clients ca --addr ... --roots ... --alt-hostname ... --token FILE|TOKEN --identity SPIFFE-ID
 *                  [--conns C] [--inflight K] [--seconds S] [--warmup S]
 *     K CreateCertificate calls kept in flight over C connections for S seconds (after S of warm-up). One
 *     CSR (a P-256 key made once, as ztunnel makes it: tls_csr_new) for every call, so the client spends
 *     nothing on key generation; the first answer is checked in full (tls_cert_from_ca_answer: the leaf
 *     carries the CSR's key and exactly the identity, and verifies to the root). One line on stdout:
 *       CA ok=<n> errors=<n> seconds=<s> rate=<ok/s> p50_ms=<> p99_ms=<> max_ms=<> first_error=<...>
 *
 * Exit status 0, 1 on a setup failure (message on stderr), 2 for usage. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/loop.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "h2/grpc.h"
#include "citadel.pb-c.h"
#include "tls/ca.h"
#include "tls/csr.h"
#include "tls/spiffe.h"
#include "xds/endpoint.h"
#include "xds/node.h"
#include "xds/pb.h"

#define ADS_METHOD "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
#define CA_METHOD "/istio.v1.auth.IstioCertificateService/CreateCertificate"
#define MAX_MESSAGE (200u << 20) /* as ztunnel (XDS_CLIENT_MAX_MESSAGE) */
#define MAX_CLIENTS 20000
#define MAX_CONNS 256
#define MAX_INFLIGHT 4096
#define MAX_SAMPLES (1u << 22)

static struct loop *L;
static struct xds_endpoint *EP;
static char OUTBUF[1 << 20];
static struct task flush_task;
static bool flush_queued;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void flush_cb(struct task *t)
{
    (void)t;
    flush_queued = false;
    fflush(stdout);
}

/* Lines are flushed once per batch of events, after every callback of the batch ran. */
static void out_later(void)
{
    if (!flush_queued) {
        flush_queued = true;
        loop_defer(L, &flush_task);
    }
}

/* ---- stdin EOF and signals stop the loop ---- */

static struct io stdin_io, sig_io;

static void stdin_cb(struct io *io, uint32_t ev)
{
    char buf[256];
    (void)ev;
    ssize_t n = read(io->fd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        loop_io_del(L, io);
        loop_stop(L);
    }
}

static void sig_cb(struct io *io, uint32_t ev)
{
    struct signalfd_siginfo si;
    (void)ev;
    if (read(io->fd, &si, sizeof(si)) > 0) loop_stop(L);
}

static void watch_stop_sources(bool use_stdin)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    sigprocmask(SIG_BLOCK, &s, NULL);
    sig_io = (struct io){.fd = signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC), .cb = sig_cb};
    if (sig_io.fd >= 0) loop_io_add(L, &sig_io, EPOLLIN);
    if (use_stdin) {
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
        stdin_io = (struct io){.fd = 0, .cb = stdin_cb};
        if (loop_io_add(L, &stdin_io, EPOLLIN) < 0) {
            /* /dev/null and regular files cannot be polled: no stdin control then, signals only. */
        }
    }
}

/* ---- ads ---- */

static const char *const TYPES[2] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION};

struct client {
    int idx;
    struct grpc_channel *ch;
    struct grpc_call *call;
    bool got[2], synced, ended;
};

static struct client *CLIENTS;
static int N_CLIENTS, N_SYNCED, N_ENDED;
static bool QUITTING; /* the loop has stopped: streams ended by us are not reported */
static Envoy__Config__Core__V3__Node **NODES;

static void ads_on_message(struct grpc_call *call, void *ud, const uint8_t *p, size_t n)
{
    struct client *c = ud;
    ProtobufCMessage *m = NULL;
    (void)call;
    if (pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, p, n, &m) < 0) {
        grpc_call_cancel(c->call, GRPC_STATUS_INTERNAL, "undecodable response");
        return;
    }
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp = (void *)m;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest ack =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    ack.type_url = resp->type_url;
    ack.response_nonce = resp->nonce;
    int rc = pb_call_send(c->call, &ack.base);
    uint64_t t = now_ns();
    int ti = !strcmp(resp->type_url, TYPES[0]) ? 0 : !strcmp(resp->type_url, TYPES[1]) ? 1 : -1;
    printf("R %" PRIu64 " %d %c %zu %zu %zu %s\n", t, c->idx, ti == 0 ? 'A' : ti == 1 ? 'Z' : '?',
           resp->n_resources, resp->n_removed_resources, n,
           resp->system_version_info && *resp->system_version_info ? resp->system_version_info : "-");
    if (ti >= 0) c->got[ti] = true;
    protobuf_c_message_free_unpacked(m, NULL);
    if (rc < 0) printf("E %" PRIu64 " %d ACK cannot send the ACK: %s\n", t, c->idx, strerror(-rc));
    if (!c->synced && c->got[0] && c->got[1]) {
        c->synced = true;
        if (++N_SYNCED == N_CLIENTS) printf("S %" PRIu64 " %d\n", t, N_SYNCED);
    }
    out_later();
}

static void ads_on_end(struct grpc_call *call, void *ud, const struct grpc_result *r)
{
    struct client *c = ud;
    (void)call;
    c->call = NULL;
    c->ended = true;
    if (QUITTING) return;
    N_ENDED++;
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", r->message);
    for (char *q = msg; *q; q++)
        if (*q == '\n') *q = ' ';
    printf("E %" PRIu64 " %d %s %s\n", now_ns(), c->idx, grpc_status_to_str(r->status), msg);
    out_later();
}

static const struct grpc_call_ops ads_ops = {.on_message = ads_on_message, .on_end = ads_on_end};

static int ads_start(struct client *c)
{
    char err[512];
    const struct grpc_md *md;
    int n_md = xds_endpoint_metadata(EP, &md, err, sizeof(err));
    struct grpc_opts go = {.max_recv = MAX_MESSAGE};
    if (n_md < 0 || !(c->ch = xds_endpoint_dial(EP, L, &go, err, sizeof(err)))) {
        fprintf(stderr, "xds_clients: client %d: %s\n", c->idx, err);
        return -1;
    }
    struct grpc_call_opts co = {.md = md, .n_md = (size_t)n_md};
    int e = 0;
    if (!(c->call = grpc_call_start(c->ch, ADS_METHOD, &co, &ads_ops, c, &e))) {
        fprintf(stderr, "xds_clients: client %d: cannot start the stream: %s\n", c->idx, strerror(-e));
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        Envoy__Service__Discovery__V3__DeltaDiscoveryRequest req =
            ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
        req.type_url = (char *)TYPES[i];
        req.node = NODES[c->idx];
        if (pb_call_send(c->call, &req.base) < 0) return -1;
    }
    return 0;
}

/* ---- ca ---- */

struct ca_call {
    uint64_t t0;
    int chan;
};

static struct grpc_channel *CHANS[MAX_CONNS];
static int N_CONNS = 4, INFLIGHT = 32;
static uint8_t *CA_REQ;
static size_t CA_REQ_LEN;
static EVP_PKEY *CA_KEY;
static struct spiffe_id CA_ID;
static bool CHECKED, MEASURING, STOPPING;
static uint64_t OK, ERRORS, WARM_OK;
static uint32_t *SAMPLES; /* latencies in µs of the measured calls */
static size_t N_SAMPLES;
static char FIRST_ERROR[300];
static int OUTSTANDING;
static uint64_t T_MEASURE0, T_MEASURE1;
static int CA_SECONDS = 3, CA_WARMUP = 1;
static struct timer phase_timer;
static int next_chan;

static void ca_issue(void);

static void ca_on_message(struct grpc_call *call, void *ud, const uint8_t *p, size_t n)
{
    struct ca_call *cc = ud;
    (void)call;
    ProtobufCMessage *m = NULL;
    if (pb_message_unpack(&istio__v1__auth__istio_certificate_response__descriptor, p, n, &m) < 0) {
        cc->t0 = 0; /* counted as an error in on_end */
        return;
    }
    Istio__V1__Auth__IstioCertificateResponse *r = (void *)m;
    if (r->n_cert_chain < 2) {
        cc->t0 = 0;
    } else if (!CHECKED) {
        struct tls_cert *cert = NULL;
        size_t extra = 0;
        char err[300];
        if (tls_cert_from_ca_answer(CA_KEY, (const char *const *)r->cert_chain, r->n_cert_chain, &CA_ID,
                                    &cert, &extra, err, sizeof(err)) < 0) {
            fprintf(stderr, "xds_clients: the CA's answer does not check: %s\n", err);
            exit(1);
        }
        tls_cert_unref(cert);
        CHECKED = true;
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void ca_on_end(struct grpc_call *call, void *ud, const struct grpc_result *r)
{
    struct ca_call *cc = ud;
    (void)call;
    OUTSTANDING--;
    bool ok = r->status == GRPC_STATUS_OK && cc->t0;
    uint64_t t = now_ns();
    if (MEASURING) {
        if (ok) {
            OK++;
            if (N_SAMPLES < MAX_SAMPLES) SAMPLES[N_SAMPLES++] = (uint32_t)((t - cc->t0) / 1000);
        } else {
            ERRORS++;
        }
    } else if (ok) {
        WARM_OK++;
    }
    if (!ok && !FIRST_ERROR[0])
        snprintf(FIRST_ERROR, sizeof(FIRST_ERROR), "%s: %s", grpc_status_to_str(r->status),
                 r->message[0] ? r->message : "bad answer");
    if (!ok && !MEASURING && !STOPPING) ERRORS++;
    free(cc);
    if (!STOPPING) {
        ca_issue();
    } else if (OUTSTANDING == 0) {
        loop_stop(L);
    }
}

static const struct grpc_call_ops ca_ops = {.on_message = ca_on_message, .on_end = ca_on_end};

static void ca_issue(void)
{
    char err[300];
    const struct grpc_md *md;
    int n_md = xds_endpoint_metadata(EP, &md, err, sizeof(err));
    if (n_md < 0) {
        fprintf(stderr, "xds_clients: %s\n", err);
        exit(1);
    }
    struct ca_call *cc = calloc(1, sizeof(*cc));
    if (!cc) exit(1);
    int k = next_chan++ % N_CONNS;
    if (!CHANS[k] || !grpc_channel_usable(CHANS[k])) {
        /* The old channel (if any) is leaked on purpose: its calls may still end on it. */
        struct grpc_opts go = {.max_recv = MAX_MESSAGE};
        if (!(CHANS[k] = xds_endpoint_dial(EP, L, &go, err, sizeof(err)))) {
            fprintf(stderr, "xds_clients: %s\n", err);
            exit(1);
        }
    }
    cc->chan = k;
    cc->t0 = now_ns();
    struct grpc_call_opts co = {.timeout_ms = 30000, .md = md, .n_md = (size_t)n_md};
    int e = 0;
    OUTSTANDING++;
    if (!grpc_call_unary(CHANS[k], CA_METHOD, &co, CA_REQ, CA_REQ_LEN, &ca_ops, cc, &e)) {
        OUTSTANDING--;
        free(cc);
        fprintf(stderr, "xds_clients: cannot start a CreateCertificate call: %s\n", strerror(-e));
        exit(1);
    }
}

static void phase_cb(struct timer *t)
{
    (void)t;
    if (!MEASURING && !STOPPING) {
        MEASURING = true;
        T_MEASURE0 = now_ns();
        timer_start(L, &phase_timer, (uint64_t)CA_SECONDS * 1000);
    } else if (MEASURING) {
        MEASURING = false;
        STOPPING = true;
        T_MEASURE1 = now_ns();
        if (OUTSTANDING == 0) loop_stop(L);
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(double q)
{
    if (!N_SAMPLES) return 0;
    size_t i = (size_t)(q * (double)N_SAMPLES);
    if (i >= N_SAMPLES) i = N_SAMPLES - 1;
    return SAMPLES[i] / 1000.0;
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: xds_clients ads --addr HOST:PORT --roots PEM --alt-hostname NAME --token FILE|TOKEN\n"
            "                       [--clients N] [--cluster-id ID] [--node-prefix P]\n"
            "       xds_clients ca  --addr HOST:PORT --roots PEM --alt-hostname NAME --token FILE|TOKEN\n"
            "                       --identity SPIFFE-ID [--conns C] [--inflight K] [--seconds S] [--warmup S]\n");
    exit(2);
}

static long num(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) usage();
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    const char *mode = argv[1];
    const char *addr = NULL, *roots = NULL, *alt = NULL, *token = NULL, *cluster = "Kubernetes";
    const char *prefix = "sim", *identity = NULL;
    int clients = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--addr"))
            addr = v;
        else if (!strcmp(a, "--roots"))
            roots = v;
        else if (!strcmp(a, "--alt-hostname"))
            alt = v;
        else if (!strcmp(a, "--token"))
            token = v;
        else if (!strcmp(a, "--cluster-id"))
            cluster = v;
        else if (!strcmp(a, "--node-prefix"))
            prefix = v;
        else if (!strcmp(a, "--clients"))
            clients = (int)num(v, 1, MAX_CLIENTS);
        else if (!strcmp(a, "--identity"))
            identity = v;
        else if (!strcmp(a, "--conns"))
            N_CONNS = (int)num(v, 1, MAX_CONNS);
        else if (!strcmp(a, "--inflight"))
            INFLIGHT = (int)num(v, 1, MAX_INFLIGHT);
        else if (!strcmp(a, "--seconds"))
            CA_SECONDS = (int)num(v, 1, 600);
        else if (!strcmp(a, "--warmup"))
            CA_WARMUP = (int)num(v, 0, 600);
        else
            usage();
    }
    if (!addr || !roots || !token) usage();
    bool ads = !strcmp(mode, "ads");
    if (!ads && strcmp(mode, "ca")) usage();
    if (!ads && !identity) usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    setvbuf(stdout, OUTBUF, _IOFBF, sizeof(OUTBUF));
    flush_task.cb = flush_cb;
    char err[512];
    struct xds_endpoint_opts eo = {.address = addr, .roots = roots, .alt_hostname = alt, .token = token,
                                   .cluster_id = cluster};
    if (!(L = loop_new()) || xds_endpoint_new(&eo, ads ? "XDS" : "CA", &EP, err, sizeof(err)) < 0) {
        fprintf(stderr, "xds_clients: %s\n", L ? err : "cannot make the loop");
        return 1;
    }
    if (ads) {
        N_CLIENTS = clients;
        CLIENTS = calloc((size_t)clients, sizeof(*CLIENTS));
        NODES = calloc((size_t)clients, sizeof(*NODES));
        if (!CLIENTS || !NODES) return 1;
        for (int i = 0; i < clients; i++) {
            char ip[32], pod[96], node[64];
            snprintf(ip, sizeof(ip), "10.%d.%d.%d", 200 + i / 65536, (i / 256) % 256, i % 256);
            snprintf(pod, sizeof(pod), "ztunnel-%s-%d", prefix, i);
            snprintf(node, sizeof(node), "%s-node%d", prefix, i);
            struct xds_node_info ni = {.instance_ip = ip, .pod_name = pod, .pod_ns = "istio-system",
                                       .node_name = node};
            if (xds_node_new(&ni, NULL, &NODES[i], err, sizeof(err)) < 0) {
                fprintf(stderr, "xds_clients: %s\n", err);
                return 1;
            }
            CLIENTS[i].idx = i;
            if (ads_start(&CLIENTS[i]) < 0) return 1;
        }
        watch_stop_sources(true);
        loop_run(L);
        QUITTING = true;
        fflush(stdout);
        fprintf(stderr, "xds_clients: %d clients, %d synced, %d streams ended\n", N_CLIENTS, N_SYNCED, N_ENDED);
        for (int i = 0; i < clients; i++) {
            grpc_channel_free(CLIENTS[i].ch);
            protobuf_c_message_free_unpacked(&NODES[i]->base, NULL);
        }
        free(CLIENTS);
        free(NODES);
    } else {
        if (spiffe_parse(identity, strlen(identity), &CA_ID) < 0) {
            fprintf(stderr, "xds_clients: --identity %s is not a SPIFFE id\n", identity);
            return 2;
        }
        char *csr = NULL;
        if (tls_csr_new(identity, &CA_KEY, &csr, err, sizeof(err)) < 0) {
            fprintf(stderr, "xds_clients: %s\n", err);
            return 1;
        }
        Istio__V1__Auth__IstioCertificateRequest req = ISTIO__V1__AUTH__ISTIO_CERTIFICATE_REQUEST__INIT;
        req.csr = csr;
        req.validity_duration = 86400;
        CA_REQ_LEN = istio__v1__auth__istio_certificate_request__get_packed_size(&req);
        CA_REQ = malloc(CA_REQ_LEN);
        SAMPLES = malloc(MAX_SAMPLES * sizeof(*SAMPLES));
        if (!CA_REQ || !SAMPLES) return 1;
        istio__v1__auth__istio_certificate_request__pack(&req, CA_REQ);
        free(csr);
        watch_stop_sources(false);
        phase_timer.cb = phase_cb;
        if (CA_WARMUP == 0)
            phase_cb(&phase_timer);
        else
            timer_start(L, &phase_timer, (uint64_t)CA_WARMUP * 1000);
        for (int i = 0; i < INFLIGHT; i++)
            ca_issue();
        loop_run(L);
        if (!T_MEASURE1) T_MEASURE1 = now_ns();
        double secs = T_MEASURE0 ? (double)(T_MEASURE1 - T_MEASURE0) / 1e9 : 0;
        qsort(SAMPLES, N_SAMPLES, sizeof(*SAMPLES), cmp_u32);
        for (char *q = FIRST_ERROR; *q; q++)
            if (*q == ' ' || *q == '\n') *q = '_';
        printf("CA ok=%" PRIu64 " errors=%" PRIu64 " seconds=%.3f rate=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
               "warmup_ok=%" PRIu64 " checked=%d first_error=%s\n",
               OK, ERRORS, secs, secs > 0 ? (double)OK / secs : 0, pct_ms(0.5), pct_ms(0.99),
               N_SAMPLES ? SAMPLES[N_SAMPLES - 1] / 1000.0 : 0, WARM_OK, CHECKED ? 1 : 0,
               FIRST_ERROR[0] ? FIRST_ERROR : "-");
        fflush(stdout);
        for (int i = 0; i < N_CONNS; i++)
            grpc_channel_free(CHANS[i]);
        EVP_PKEY_free(CA_KEY);
        free(CA_REQ);
        free(SAMPLES);
    }
    xds_endpoint_free(EP);
    loop_free(L);
    return 0;
}

/* The identity lifecycle: a workload certificate with the TLS contexts made from it, as one refcounted
 * immutable object, and the manager that fetches, renews and retries it per SPIFFE id on its own thread.
 *
 * Semantics follow Istio's ztunnel (src/identity/manager.rs in istio/ztunnel): a certificate is renewed at
 * half its life; a failed fetch is retried with exponential backoff (500 ms doubling to 150 s, +-20 %
 * jitter) while the previous certificate stays in use until it expires; the state of each certificate is
 * Initializing (first fetch not done yet), Available, or Unavailable (last fetch failed and there is no
 * valid certificate), and /config_dump shows it with those names. */
#pragma once
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "tls/ca.h"
#include "tls/spiffe.h"

/* A certificate and the two HBONE contexts made from it. Immutable; shared between threads through the
 * reference count. A connection made from one of the contexts should hold a reference for its whole life
 * (hbone_client_new/hbone_server_new borrow the SSL_CTX). */
struct identity {
    _Atomic int refs;
    struct tls_cert *cert; /* reference held */
    SSL_CTX *server_ctx;   /* tls_server_ctx_new(cert) */
    SSL_CTX *client_ctx;   /* tls_client_ctx_new(cert) */
};

/* Builds an identity from cert (takes its own reference; the caller keeps its own). Returns 0 with *out = a
 * new identity (one reference), or -ENOMEM/-EINVAL with err filled. */
int identity_new(struct tls_cert *cert, struct identity **out, char *err, size_t errlen);
/* Takes one more reference. */
void identity_ref(struct identity *id);
/* Drops one reference; the last frees the contexts and the certificate reference. NULL is ignored. */
void identity_unref(struct identity *id);

enum identity_state {
    IDENTITY_INITIALIZING, /* the first fetch has not completed */
    IDENTITY_AVAILABLE,    /* a certificate is in use (possibly while a renewal is being retried) */
    IDENTITY_UNAVAILABLE,  /* the last fetch failed and no unexpired certificate is left */
};
/* "Initializing", "Available", "Unavailable": Istio's CertState names. */
const char *identity_state_to_str(enum identity_state s);

/* Retry after a failed fetch: 500 ms, doubling per consecutive failure up to 150 s, each randomized by
 * +-20 % (the parameters of Istio's ExponentialBackoff in manager.rs; the jitter applies at the cap too). */
#define IDENTITY_BACKOFF_INITIAL_MS 500
#define IDENTITY_BACKOFF_MAX_MS 150000
#define IDENTITY_BACKOFF_JITTER_PCT 20
/* The manager sleeps on the monotonic clock but certificates expire on the wall clock: it compares the two
 * this often and re-plans every renewal when the wall clock moved differently (NTP steps, suspend,
 * libfaketime in tests). */
#define IDENTITY_CLOCK_CHECK_MS 1000
/* Wall-clock drift against the monotonic clock below this is ignored. */
#define IDENTITY_CLOCK_SLACK_MS 200
/* No renewal is planned sooner than this after a certificate arrived, so that a CA handing out
 * nearly-expired certificates cannot make the manager spin. */
#define IDENTITY_MIN_REFRESH_MS 1000
/* Longest error text kept for an Unavailable certificate. */
#define IDENTITY_ERR_MAX 256

/* The delay before retry number failures+1 (failures >= 0 consecutive failures so far), for a uniform
 * random value rnd: base = min(INITIAL << failures, MAX), result in [base * 0.8, base * 1.2]. Pure. */
uint64_t identity_backoff_ms(unsigned failures, uint64_t rnd);

/* When to renew a certificate valid [not_before, not_after] that arrived at received (wall-clock ms): at
 * half of the validity it had left on arrival, t0 + (not_after - t0) / 2 with t0 = max(not_before,
 * received), and no sooner than received + IDENTITY_MIN_REFRESH_MS. For a certificate that starts when it is
 * issued this is Istio's not_before + (not_after - not_before) / 2; for a backdated one (the local CA's minus
 * 1 minute, istiod's minus 2) it stays in the future even when the lifetime is shorter than the backdating.
 * Pure. */
int64_t identity_refresh_at_ms(int64_t not_before_ms, int64_t not_after_ms, int64_t received_ms);

struct identity_mgr;
struct identity_sub;

/* Called when a subscribed id gets a new certificate: cur is borrowed (take a reference to keep it). Runs on
 * the manager's thread, or on the caller's thread inside identity_mgr_acquire when the id already has one,
 * always with the manager's lock held: it must not block and must not call identity_mgr_* functions. */
typedef void (*identity_watch_fn)(void *ud, struct identity *cur);

/* Starts a manager fetching from prov (borrowed; must outlive the manager) on a new thread that blocks all
 * signals. Returns the manager or NULL with err filled. */
struct identity_mgr *identity_mgr_new(struct cert_provider *prov, char *err, size_t errlen);
/* Stops the manager's thread (waiting for a fetch in progress): no fetch, renewal or callback happens
 * afterwards, while identity_mgr_current/status keep answering. For a program about to exit(), whose atexit
 * handlers tear OpenSSL down under any thread still using it. Idempotent; main thread only. */
void identity_mgr_stop(struct identity_mgr *m);
/* Stops the thread (identity_mgr_stop) and frees every entry; subscriptions still held are freed too (their
 * callbacks are not called again). An asynchronous fetch must not be in flight. NULL is ignored. */
void identity_mgr_free(struct identity_mgr *m);

/* Starts (or joins) the management of id: the first subscriber of an id starts its first fetch on the
 * manager's thread; cb(ud, cur) runs for every certificate from then on, at once if one is already there.
 * Returns a subscription (release with identity_mgr_release), or NULL on ENOMEM or an unformattable id. */
struct identity_sub *identity_mgr_acquire(struct identity_mgr *m, const struct spiffe_id *id,
                                          identity_watch_fn cb, void *ud);
/* Ends a subscription; when it was the id's last, the id is forgotten (renewals stop, its certificate is
 * released once nobody else holds it). cb is not called after this returns. NULL is ignored. */
void identity_mgr_release(struct identity_mgr *m, struct identity_sub *s);

/* A new reference to id's current certificate, or NULL when it has none (Initializing, Unavailable, or not
 * managed). Any thread. */
struct identity *identity_mgr_current(struct identity_mgr *m, const struct spiffe_id *id);

/* One managed certificate as /config_dump reports it. */
struct identity_status {
    char uri[SPIFFE_MAX];
    enum identity_state state;
    char error[IDENTITY_ERR_MAX]; /* the last fetch error when Unavailable, else "" */
    struct identity *cur;         /* reference held when Available, else NULL */
    unsigned fetches;             /* successful fetches so far (1 = the first certificate, no renewal yet) */
};
/* Copies the state of every managed id, sorted by uri, into *out (caller frees with identity_status_free).
 * Returns the count (0 with *out = NULL when none) or -ENOMEM. Any thread. */
int identity_mgr_status(struct identity_mgr *m, struct identity_status **out);
/* Frees what identity_mgr_status returned (drops the identity references). NULL is ignored. */
void identity_status_free(struct identity_status *s, size_t n);

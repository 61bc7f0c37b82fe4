/* Retry decisions of the waypoint, as Envoy's router makes them (envoyproxy/envoy
 * source/common/router/retry_state_impl.cc wouldRetryFromHeaders / wouldRetryFromReset, and
 * source/common/common/backoff_strategy.cc JitteredExponentialBackOffStrategy), for a policy of l7.h
 * (VirtualService retries, or Istio's default l7_default_retry). Pure functions: the codecs report how a try
 * ended, this says whether another try is due and after how long. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "mesh/l7.h"

/* How one try ended. */
enum l7_try_end {
    L7_TRY_RESPONSE,        /* response headers arrived (status, and grpc-status when the response has one) */
    L7_TRY_CONNECT_FAILURE, /* the upstream connection failed or timed out (Envoy's ConnectionFailure) */
    L7_TRY_RESET,           /* the upstream reset or closed the stream before the response headers */
    L7_TRY_REFUSED_STREAM,  /* HTTP/2 REFUSED_STREAM, or a GOAWAY above the stream: never processed */
    L7_TRY_PER_TRY_TIMEOUT, /* perTryTimeout fired: judged as a 504 response, as Envoy's router does */
    L7_TRY_OVERFLOW,        /* a circuit breaker refused it (never retried) */
};

struct l7_try {
    enum l7_try_end end;
    int status;      /* L7_TRY_RESPONSE: the HTTP status */
    int grpc_status; /* L7_TRY_RESPONSE: grpc-status of a trailers-only or headers response, -1 when none */
};

/* Whether policy p (NULL: l7_default_retry) retries a try that ended as t. Attempts left are the caller's
 * count (p->attempts retries after the first try). */
bool l7_retry_wanted(const struct l7_retry *p, const struct l7_try *t);

/* Envoy's grpcToHttpStatus (source/common/grpc/status.cc): the HTTP status a gRPC status stands for, which
 * Envoy's router reports to outlier detection for a gRPC response (UNAVAILABLE 503, DEADLINE_EXCEEDED 504,
 * INTERNAL 500, ...; an unknown code 500). */
int l7_grpc_to_http_status(int grpc_status);

/* Envoy's fully jittered exponential back-off before retry n (1 for the first retry): uniform in
 * [0, min(base * 2^(n-1), max)) with base 25 ms (Envoy's default, router filter docs) and max 10 x base. rnd
 * is a uniformly random 64-bit value. */
#define L7_RETRY_BASE_MS 25u
#define L7_RETRY_MAX_MS (10u * L7_RETRY_BASE_MS)
uint64_t l7_retry_backoff_ms(unsigned n, uint64_t rnd);
/* The same under policy p's retries.backoff (Envoy's retry_back_off.base_interval; its max_interval defaults
 * to 10 x base): p NULL or without a backoff is l7_retry_backoff_ms. */
uint64_t l7_retry_policy_backoff_ms(const struct l7_retry *p, unsigned n, uint64_t rnd);

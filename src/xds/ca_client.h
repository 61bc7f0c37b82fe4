/* The remote CA: a certificate provider (tls/ca.h) that asks Istio's IstioCertificateService (istiod, or
 * zmeshd) for each certificate, as Istio's ztunnel does (istio/ztunnel src/identity/caclient.rs): a new P-256
 * key and CSR per request (tls/csr.h), validity_duration from SECRET_TTL, ImpersonatedIdentity metadata in
 * shared mode, the token and clusterid as gRPC metadata (xds/endpoint.h), and the answer checked before use.
 * It implements fetch_async on the identity manager's loop, so no worker ever waits for the CA; the plain
 * fetch runs the same request on a private loop (for tools and tests). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "tls/ca.h"
#include "xds/endpoint.h"

#define CA_CLIENT_METHOD "/istio.v1.auth.IstioCertificateService/CreateCertificate"
/* A CA call that gets no answer in this long fails (and the identity manager backs off and retries). Istio's
 * tonic client has no deadline of its own; zmesh bounds it so a black-holed CA cannot stall renewals. */
#define CA_CLIENT_TIMEOUT_MS 10000
/* The largest answer accepted (a chain is a few KiB). */
#define CA_CLIENT_MAX_ANSWER (1u << 20)

struct ca_client_opts {
    struct xds_endpoint_opts endpoint;
    int64_t ttl_s;       /* validity_duration asked for (SECRET_TTL) */
    bool impersonate;    /* send ImpersonatedIdentity (shared mode: the node's ztunnel asks for its pods) */
    uint32_t timeout_ms; /* 0: CA_CLIENT_TIMEOUT_MS */
};

/* A provider, or NULL with err naming the setting at fault ("CA_ADDRESS: ..."). Free with p->destroy(p)
 * after the identity manager that uses it stopped. */
struct cert_provider *ca_client_new(const struct ca_client_opts *o, char *err, size_t errlen);

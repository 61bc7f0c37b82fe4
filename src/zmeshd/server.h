/* zmeshd's gRPC port (istiod's 15012): one TLS listener serving Istio's CA
 * (/istio.v1.auth.IstioCertificateService/CreateCertificate, handled here) and the delta ADS stream
 * (registered by the ADS glue through zmeshd_server_grpc). Its certificate comes from zmeshd's own CA with
 * istiod's DNS names and is renewed at half its life; clients verify it against the CA's root (XDS_ROOT_CA /
 * CA_ROOT_CA).
 *
 * CreateCertificate follows istiod (istio/istio security/pkg/server/ca/server.go): the bearer token in the
 * `authorization` metadata is verified (tls/token.h; istiod asks the API server's TokenReview, zmeshd signs
 * the tokens itself), the `clusterid` metadata, when sent, must name zmeshd's cluster, the identity is
 * decided by ca_authorize (its own, or a pod's on the caller's node for a trusted node proxy:
 * ImpersonatedIdentity), and the CSR is signed with the requested TTL. Refusals are UNAUTHENTICATED with no
 * detail for the caller and one (rate-limited) log line saying why; a bad CSR or TTL is INVALID_ARGUMENT with
 * istiod's text. */
#pragma once
#include <stddef.h>

#include "h2/grpc.h"
#include "zmeshd/daemon.h"

/* The names zmeshd's certificate carries: istiod's (clients of a real istiod verify this one) and zmeshd's.
 */
#define ZMESHD_SERVER_NAMES                                                                                  \
    {                                                                                                        \
        "istiod.istio-system.svc", "zmeshd.istio-system.svc"                                                 \
    }
#define ZMESHD_SERVER_CERT_TTL_S (24L * 3600)
/* The largest request accepted (a CSR is ~500 bytes; ADS requests carry a node and names). */
#define ZMESHD_MAX_REQUEST (4u << 20)

struct zmeshd_server;

/* Listens on zmeshd_listen(d) with a fresh serving certificate and registers CreateCertificate. Returns 0
 * with *out, or -errno with err. */
int zmeshd_server_new(struct loop *l, struct zmeshd *d, struct zmeshd_server **out, char *err, size_t errlen);
void zmeshd_server_free(struct zmeshd_server *s);
/* The gRPC server, to register more methods (the ADS stream). */
struct grpc_server *zmeshd_server_grpc(struct zmeshd_server *s);
/* The port actually bound (for ":0" in tests). */
uint16_t zmeshd_server_port(const struct zmeshd_server *s);

/* The caller of a call on this port, as istiod authenticates xDS and CA calls: the bearer token of the
 * `authorization` metadata verified with zmeshd's token key, and the `clusterid` metadata, when sent, naming
 * zmeshd's cluster. Returns 0 with *caller, or -EACCES with why (for the log; callers answer UNAUTHENTICATED
 * without detail). */
int zmeshd_server_authenticate(struct zmeshd_server *s, const struct grpc_call_info *info,
                               struct token_caller *caller, char *why, size_t wn);

/* Counters for logs and tests. */
struct zmeshd_ca_stats {
    uint64_t signed_ok, unauthenticated, invalid, internal;
};
const struct zmeshd_ca_stats *zmeshd_server_ca_stats(const struct zmeshd_server *s);

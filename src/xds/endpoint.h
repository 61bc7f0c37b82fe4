/* A control-plane server as Istio's ztunnel is configured to reach it (istio/ztunnel src/config.rs): an
 * address (XDS_ADDRESS, CA_ADDRESS), the roots that verify it (XDS_ROOT_CA, CA_ROOT_CA), the name its
 * certificate must carry (ALT_XDS_HOSTNAME, ALT_CA_HOSTNAME, else the address's host), and the credentials
 * every call carries (AUTH_TOKEN or the default token file, re-read for each call; clusterid; XDS_HEADER_* /
 * CA_HEADER_*). Shared by the xDS client and the CA client. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "h2/grpc.h"

/* Istio's defaults (config.rs DEFAULT_ROOT_CERT_PROVIDER, DEFAULT_TOKEN_PROVIDER; Istio writes them relative
 * to the working directory, "./var/run/...", which is "/" in its container). */
#define XDS_DEFAULT_ROOT_CA "/var/run/secrets/istio/root-cert.pem"
#define XDS_DEFAULT_TOKEN_PATH "/var/run/secrets/tokens/istio-token"
/* Largest token file read. Kubernetes tokens are about 1 KiB. */
#define XDS_TOKEN_MAX (64 * 1024)
/* Most extra headers (XDS_HEADER_* or CA_HEADER_*). */
#define XDS_MAX_HEADERS 16

struct xds_endpoint_opts {
    const char *address;      /* "https://host:port" or "host:port" (https assumed, as Istio) */
    const char *roots;        /* a PEM file, inline PEM, or "SYSTEM" (tls/control.h) */
    const char *alt_hostname; /* the name to verify instead of the host; NULL or "" for none */
    /* The token: a readable file (re-read for every call), else the token itself, as Istio's AUTH_TOKEN; NULL
     * or "": XDS_DEFAULT_TOKEN_PATH when that file exists, else no authorization header. */
    const char *token;
    const char *cluster_id;    /* clusterid metadata; NULL or "": none */
    const char *header_prefix; /* "XDS_HEADER_" or "CA_HEADER_": envp entries with it become metadata */
    char *const *envp;
    /* SO_MARK of the connections (0: none). A ztunnel inside a pod's network namespace marks its own sockets so
     * that the pod's redirection rules leave them alone (ztunnel's 0x539). */
    uint32_t mark;
};

struct xds_endpoint;

/* Parses and checks the options (the address, the roots, the extra headers' names and values) and makes the
 * TLS context. Returns 0 with *out, or -EINVAL / -ENOMEM with err naming the setting ("CA_ADDRESS: ..."; what
 * names the setting is the caller's prefix in err_prefix, e.g. "CA"). */
int xds_endpoint_new(const struct xds_endpoint_opts *o, const char *err_prefix, struct xds_endpoint **out,
                     char *err, size_t errlen);
void xds_endpoint_free(struct xds_endpoint *e);

/* "host:port" as configured (for logs and :authority). */
const char *xds_endpoint_authority(const struct xds_endpoint *e);

/* Resolves the host (getaddrinfo: blocking, so call it from a thread that may wait, not a data-path worker)
 * and starts a channel to its first address. Returns the channel or NULL with err. */
struct grpc_channel *xds_endpoint_dial(const struct xds_endpoint *e, struct loop *l,
                                       const struct grpc_opts *o, char *err, size_t errlen);

/* The metadata of one call: authorization (when a token is configured; the file is read now), clusterid and
 * the extra headers. Points into md_buf, valid until the next call or xds_endpoint_free. Returns the count,
 * or -EIO with err when the token file cannot be read. */
int xds_endpoint_metadata(struct xds_endpoint *e, const struct grpc_md **md, char *err, size_t errlen);

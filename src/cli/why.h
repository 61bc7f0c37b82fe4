/* zmesh why: explains one request or connection end to end from the cluster's objects, by running the same
 * code zmeshd, ztunnel and the waypoint run (the manifest reader, the snapshot and waypoint binding of
 * src/zmeshd, the L7 conversion and model of src/zmeshd/l7.h and src/mesh/l7.h, L4 and L7 authorization, the
 * load balancer's candidates). Nothing is sent: the answer is what the mesh's configuration decides, with the
 * result line first (docs/why.md).
 *
 *     zmesh why <source-pod> <destination> [--port P] [--path /x] [--method GET] [--header k=v]...
 *               [-n NS] [--state-dir DIR | --manifests DIR]
 */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "zmeshd/manifest.h"

#define WHY_MAX_HEADERS 32

struct why_header {
    const char *name, *value;
};

struct why_query {
    const char *source; /* "ns/pod", "pod.ns" or "pod" (in ns) */
    const char *dest;   /* a Service ("svc", "svc.ns", "svc.ns.svc[.<domain>]"), an IP, or "pod/<name>" */
    const char *ns;     /* the namespace of names without one; NULL: "default" */
    uint16_t port;      /* 0: the Service's only port */
    const char *path, *method; /* NULL: "/" and "GET" */
    const struct why_header *headers;
    size_t n_headers;
};

/* The outcome of why_explain, for scripts (the exit status of zmesh why). */
enum why_result {
    WHY_ALLOWED = 0,  /* the request reaches an endpoint (or the waypoint answers it as configured) */
    WHY_DENIED = 1,   /* an authorization policy refuses it (L4 or L7) */
    WHY_NO_ROUTE = 3, /* the waypoint answers 404 NR / 500 (no backend) */
    WHY_REFUSED = 4,  /* refused by the mesh: no healthy upstream, a waypoint without a ready pod */
};

/* Explains q against the objects of st and writes the report to out. Returns an enum why_result, or -ENOENT
 * (q names a pod, service or port that does not exist; err says which), -EINVAL (a malformed argument) or
 * -ENOMEM. */
int why_explain(const struct manifest_store *st, const struct why_query *q, FILE *out, char *err,
                size_t errlen);

/* The command: argv from "why" on. Exit status: enum why_result, 2 for usage errors, 5 for lookup errors. */
int cmd_why(int argc, char **argv);

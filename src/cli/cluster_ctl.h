/* zmesh up's controller: the daemon that plays kubelet, container runtime and API server for a local cluster.
 *
 * It runs on one event loop (src/core/loop.h): SIGCHLD through a signalfd (containers, probes, zmeshd,
 * ztunnels and node agents are its children), one timer per restart backoff and per probe period, and the
 * command socket <state>/controller.sock: one JSON request per connection (the client half-closes), one JSON
 * answer, then close:
 *     {"op":"apply","objects":[...],"workdir":"/abs/dir"} -> {"ok":true,"results":["pod/x created", ...]}
 *     {"op":"delete","objects":[{"kind","metadata":{"name","namespace"}}]}
 *     {"op":"label","kind":"Namespace","namespace":"","name":"shop","set":{"k":"v"},"remove":["k"]}
 *     {"op":"status"}                       -> {"ok":true,"ready":bool,"waiting":[...],"notes":[...]}
 *     {"op":"shutdown"}                     -> {"ok":true}, then every pod is stopped (CNI DEL) and the
 *                                              controller exits; `zmesh down` removes the rest from the
 * record Errors: {"ok":false,"error":"..."}. Reads need no controller: api/ holds every object with its
 * status.
 *
 * Objects come in through one interface (ctl_apply_object / ctl_delete_object): today the manifest directory
 * given to up and the apply/delete commands; a Kubernetes API watch would call the same two. Status goes out
 * through the api/ directory (written atomically), which zmeshd watches. As istiod's deployment controller, a
 * Gateway of class istio-waypoint applied here also gets its ServiceAccount, Service and waypoint pod, deleted
 * with it, and its status written back (docs/waypoint.md; the objects and status are built in waypoint.h). */
#pragma once
#include <jansson.h>

#include "cli/cluster.h"

/* The object source interface: everything the cluster runs enters through these two, on the controller's
 * loop thread. o is borrowed (the controller keeps a copy with uid and creationTimestamp); results gets one
 * kubectl-like line ("pod/web created|configured|unchanged", "pod \"web\" deleted"). Returns 0, or -errno
 * with err set (an immutable Pod spec, an unknown node, not found). */
struct ctl;
int ctl_apply_object(struct ctl *ctl, json_t *o, const char *workdir, json_t *results, char *err,
                     size_t errlen);
int ctl_delete_object(struct ctl *ctl, const char *kind, const char *ns, const char *name, json_t *results,
                      char *err, size_t errlen);

/* Runs the controller until shutdown (or SIGTERM/SIGINT, which also stop every pod). objects (borrowed) are
 * applied first; workdir is their manifests' directory, where containers run unless workingDir says
 * otherwise (an apply request carries its own "workdir"). Returns the process exit status. */
int ctl_run(const struct cluster_cfg *cfg, json_t *objects, const char *workdir);

/* Client side: sends req (borrowed) to the controller of state and returns its answer (new reference) in
 * *resp. Returns 0, or -errno with err set (no controller, no answer). timeout_ms bounds the whole exchange.
 */
int ctl_call(const char *state, json_t *req, json_t **resp, int timeout_ms, char *err, size_t errlen);

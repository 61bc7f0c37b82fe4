/* The local-cluster commands of zmesh (docs/local-cluster.md): up, down, apply, delete, get, exec, logs,
 * label. Each takes argc/argv from its own name on and returns the exit status (0, 1 failure, 2 usage;
 * exec returns the command's). */
#pragma once
#include <jansson.h>

int cmd_up(int argc, char **argv);
int cmd_down(int argc, char **argv);
int cmd_apply(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_exec(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_label(int argc, char **argv);
int cmd_rollout(int argc, char **argv);
/* The local cluster's (ZMESH_STATE_DIR, else /run/zmesh) node: its network namespace and the admin port of
 * the ztunnel serving it, for zmesh ztunnel-config --node. Returns 0 or -errno with err filled. */
int up_ztunnel_admin(const char *node, char *netns, size_t nn, int *port, char *err, size_t errlen);
/* The state directory as given (--state-dir, ZMESH_STATE_DIR), made absolute, without a trailing slash.
 * Returns 0 or -errno. */
int up_state_abs(const char *in, char *out, size_t n);
/* The API server's view (<state>/api/): every object of kind (in namespace ns, NULL: all), sorted by
 * namespace and name, as a new array; one object, or NULL when it does not exist. */
json_t *up_api_list(const char *state, const char *kind, const char *ns);
json_t *up_api_get(const char *state, const char *kind, const char *ns, const char *name);

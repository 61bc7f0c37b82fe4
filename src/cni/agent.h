/* The node agent, `zmesh-cni agent` (the ambient part of Istio's istio-cni node agent, istio/istio
 * cni/pkg/nodeagent): one per node. It
 *   - answers the CNI plugin (plugin.c) on a SOCK_SEQPACKET socket: one JSON message per pod sandbox event
 *     (src/cni/README.md "The message to the node agent"), one JSON answer;
 *   - keeps every sandbox it was told about, and whether it is enrolled, in a state file written atomically on
 *     each change, and on start re-serves what it finds there (so an agent restart restarts no pod);
 *   - enrols a pod when the enrolment source says it is ambient: in-pod rules (rules.h), then ZDS Add to
 *     ztunnel (zds_server.h); un-enrols it when the source stops saying so (ZDS Del, rules removed), and forgets
 *     it at CNI DEL.
 * The enrolment source is given as the full set of this node's pods after each change
 * (agent_set_enrolment): zmeshd's enrolment client, or a static JSON file (agent_watch_file).
 *
 * Everything runs on one loop and nothing blocks it: rule changes run in a child per change (rules_start), one
 * at a time per sandbox, and what happens meanwhile (a CNI ADD, DEL, an enrolment change) is applied when the
 * child ends. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cni/rules.h"
#include "core/loop.h"

#define AGENT_DEFAULT_PLUGIN_SOCKET "/var/run/zmesh-cni/pluginevent.sock"
#define AGENT_DEFAULT_STATE_DIR "/var/run/zmesh-cni"
/* The state file's name in the state directory. */
#define AGENT_STATE_FILE "agent-state.json"
/* How long a plugin connection may take to send its message. */
#define AGENT_PLUGIN_READ_MS 5000
/* Plugin connections at once (kubelet starts a few pods at a time; each takes milliseconds). */
#define AGENT_PLUGIN_CONNS_MAX 64
/* Sandboxes known at once, and enrolment entries accepted (a node runs at most a few hundred pods). */
#define AGENT_SANDBOXES_MAX 4096
#define AGENT_ENROLMENT_MAX 65536
/* Files read whole: the state file and the enrolment file. */
#define AGENT_FILE_MAX (16u << 20)
/* How often enrolments that failed (in-pod rules that did not install) are tried again. */
#define AGENT_RETRY_MS 5000
/* A CNI ADD of a pod the enrolment source does not list yet waits this long for it before it is answered
 * (the pod then starts outside the mesh, and is enrolled when the source lists it): a pod created a moment
 * ago reaches the agent through its CNI ADD before zmeshd's update names it, where Istio's plugin asks the
 * API server during the ADD. Below the plugin's agent_timeout (5 s). */
#define AGENT_UNKNOWN_POD_WAIT_MS 2000
/* A changed enrolment file is re-read once it has been quiet this long (an editor's several writes). */
#define AGENT_FILE_DEBOUNCE_MS 100

struct agent;

struct agent_config {
    const char *plugin_socket; /* NULL: AGENT_DEFAULT_PLUGIN_SOCKET */
    const char *zds_socket;    /* NULL: ZDS_SERVER_DEFAULT_PATH */
    const char *state_dir;     /* NULL: AGENT_DEFAULT_STATE_DIR */
    enum rules_backend backend;
    const char *node_name; /* entries of another node are ignored; NULL or "": all entries are this node's */
    /* The source may not list a pod yet when its sandbox comes (zmeshd, which learns pods as the runtime
     * creates them): a CNI ADD of an unlisted pod waits AGENT_UNKNOWN_POD_WAIT_MS for it. Off for a static
     * source (the file), where an unlisted pod is simply not enrolled. */
    bool wait_for_unlisted;
};

/* One pod of the enrolment source: the fields of zmeshd's enrolment client (struct enrol_pod of
 * src/xds/enrol_client.h), in the same order. Strings are borrowed for the call; uid and node may be NULL. */
struct agent_enrolment {
    const char *uid, *name, *namespace_, *service_account, *node;
    bool ambient;
};

/* Starts the agent on l: listens on both sockets, loads the state file (dropping sandboxes whose netns is
 * gone) and replays the enrolled ones (rules, ZDS). cfg's strings are copied. Returns 0 with *out, or -1 with
 * err. */
int agent_new(struct loop *l, const struct agent_config *cfg, struct agent **out, char *err, size_t errlen);
/* Stops: closes the sockets (ztunnel keeps serving its pods: rules stay, as Istio's agent leaves them on
 * shutdown) and frees everything. Answers a plugin waiting for ztunnel with an error. NULL is a no-op. */
void agent_free(struct agent *a);

/* Replaces the enrolment with pods[0..n) (the whole set) and reconciles every sandbox: enrol the ones now
 * ambient, un-enrol the others. Sandboxes match entries by namespace/name. Until the first call (the source's
 * first sync, zmeshd's on_synced) nothing is enrolled or un-enrolled: replayed pods stay as the state file has
 * them and new sandboxes wait. Returns 0, or -EINVAL (an entry
 * without name or namespace, or a pair given twice: nothing changed), -E2BIG, -ENOMEM. */
int agent_set_enrolment(struct agent *a, const struct agent_enrolment *pods, size_t n);

/* The static enrolment source: a JSON array of {"name", "namespace", "service_account", "ambient"} objects
 * (optional "uid", "node"), validated strictly. Parses text (len bytes; `file` names it in errors) into a
 * malloc'd array the caller frees with agent_enrolment_free. Returns 0, or -1 with err naming the file, the
 * entry and the field. */
int agent_enrolment_parse(const char *file, const char *text, size_t len, struct agent_enrolment **out,
                          size_t *n, char *err, size_t errlen);
void agent_enrolment_free(struct agent_enrolment *pods, size_t n);
/* Reads path and applies it (agent_set_enrolment); on start-up or after agent_watch_file it is re-read on
 * inotify changes and agent_reload_file (SIGHUP). A file that fails to load keeps the previous enrolment.
 * Returns 0 or -1 with err. */
int agent_watch_file(struct agent *a, const char *path, char *err, size_t errlen);
int agent_reload_file(struct agent *a, char *err, size_t errlen);

/* Handles one plugin message as if it arrived on the socket; reply(ud, answer_json) gets the answer, maybe
 * later (after ztunnel's ack). For tests and the fuzz target. */
typedef void (*agent_reply_fn)(void *ud, const char *answer);
void agent_handle_message(struct agent *a, const char *msg, size_t len, agent_reply_fn reply, void *ud);

/* Validates a plugin message (src/cni/README.md). Returns 0, or -1 with err naming the field. For the fuzz
 * target. */
int agent_message_check(const char *msg, size_t len, char *err, size_t errlen);

enum agent_pod_state { AGENT_POD_PENDING, AGENT_POD_ENROLLED };
const char *agent_pod_state_to_str(enum agent_pod_state s);

/* For tests and logs. */
struct agent_stats {
    size_t sandboxes, enrolled;
    size_t jobs; /* rule changes under way (children running) */
    uint64_t adds, dels, bad_messages, rule_failures;
};
void agent_stats(const struct agent *a, struct agent_stats *out);
/* Whether the sandbox of namespace/name is known, and enrolled (*enrolled may be NULL). */
bool agent_has_pod(const struct agent *a, const char *namespace_, const char *name, bool *enrolled);

/* One accept loop for every listening socket: a bounded batch of accept4() per event, a "may accept" hook
 * that lets the owner hold the listener while it is at a limit, and a pause on descriptor exhaustion.
 *
 * At RLIMIT_NOFILE a level-triggered listener makes accept() fail with EMFILE on every loop iteration while
 * the connection stays in the backlog; retrying at once spins a core. On EMFILE/ENFILE (and ENOBUFS/ENOMEM)
 * the acceptor takes its fd out of epoll and re-arms it after ACCEPTOR_PAUSE_MS; the log line says how many
 * more were suppressed (LOG_LIMITED). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/loop.h"

/* Connections taken per readiness event, so one busy listener does not starve the other fds of a loop. */
#define ACCEPTOR_BATCH 64
/* How long a listener stays out of epoll after EMFILE/ENFILE/ENOBUFS/ENOMEM or an unexpected error: long
 * enough that a full process costs a few wakeups per second, short enough that service resumes promptly
 * once descriptors are freed. */
#define ACCEPTOR_PAUSE_MS 100

enum acceptor_state {
    ACC_IDLE = 0,  /* not started, or closed */
    ACC_LISTENING, /* in epoll */
    ACC_HELD,      /* out of epoll: may_accept said no; acceptor_resume puts it back */
    ACC_PAUSED,    /* out of epoll: no descriptors (or an unexpected error); a timer puts it back */
};
const char *acceptor_state_to_str(enum acceptor_state s);

struct acceptor;

struct acceptor_ops {
    /* A new connection: fd is non-blocking and close-on-exec, and ownership passes to the callee. peer is
     * the client's address (valid during the call). */
    void (*on_accept)(struct acceptor *a, int fd, const struct sockaddr_storage *peer);
    /* Optional: false while the owner is at a limit; the acceptor then leaves epoll (ACC_HELD) until the
     * owner calls acceptor_resume. Asked before every accept4(). */
    bool (*may_accept)(struct acceptor *a);
};

/* Embedded in its owner (container_of from the callbacks). */
struct acceptor {
    struct io io;
    struct loop *loop;
    struct timer pause_timer;
    const struct acceptor_ops *ops;
    const char *name; /* for logs, e.g. "outbound :15001"; borrowed, must outlive the acceptor */
    enum acceptor_state st;
    /* Counters for tests and logs. */
    uint64_t accept_calls; /* accept4() calls, successful or not */
    uint64_t accepted;
    uint64_t pauses; /* times it left epoll for lack of descriptors or an error */
};

/* Starts accepting on the listening socket fd (non-blocking; ownership passes to a, also on failure). name
 * is borrowed. Returns 0 or -errno (fd closed). */
int acceptor_start(struct acceptor *a, struct loop *l, int fd, const char *name,
                   const struct acceptor_ops *ops);
/* The owner may accept again (a limit was released): a held acceptor goes back into epoll if may_accept
 * agrees. No effect in other states. */
void acceptor_resume(struct acceptor *a);
/* Stops and closes the listening socket (idempotent). */
void acceptor_close(struct acceptor *a);

/* Raises the soft RLIMIT_NOFILE to the hard limit, as Istio's ztunnel does at start-up (src/main.rs
 * increase_open_files_limit), and logs both values. Returns 0 or -errno (logged as a warning). */
int acceptor_raise_fd_limit(void);

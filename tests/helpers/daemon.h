/* SPDX-License-Identifier: MIT */
/*
 * Test fixture: a real kvdrived on a temporary socket, and a raw protocol
 * connection for tests that must send what libkvclient never would.
 *
 * The fixture runs $KVDRIVED (set by tests/meson.build) in the foreground in
 * a fresh temporary directory, waits for its sd_notify READY=1, and on stop
 * sends SIGTERM and checks that it exits 0. The daemon is killed with the
 * process that started it (PR_SET_PDEATHSIG), and an atexit() handler stops
 * any fixture daemon still running, so that a failed Check assertion (which
 * exits the test's process) does not leave daemons or directories behind.
 *
 * Functions return 0 or -errno; on failure they also write a reason into
 * d->error (and stderr), for ck_assert_msg(rc == 0, "%s", d->error).
 * Nothing here uses Check: it is usable from forked helper processes too.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "kvdrive.pb-c.h"

#define KVD_TEST_READY_TIMEOUT_MS 15000
#define KVD_TEST_STOP_TIMEOUT_MS  10000
#define KVD_TEST_RECV_TIMEOUT_MS  10000

/* The NOTIFY_SOCKET reader: a thread drains it at once, as systemd does (a
 * daemon's sd_notify() blocks once ~10 datagrams sit unread). */
struct kvd_test_notify;

/* How kvd_test_daemon_spawn() sets up the child, beyond the defaults. */
struct kvd_test_opts {
        uint64_t fsize_limit;   /* its RLIMIT_FSIZE (ulimit -f) in bytes; 0: inherited */
        bool log_file;          /* its stderr (the log) goes to DIR/kvdrived.log, not the test's */
};

struct kvd_test_daemon {
        pid_t pid;                     /* the daemon (or its launcher), 0 if none */
        struct kvd_test_notify *notify; /* NULL if none */
        int slot;                      /* index in the atexit registry, -1 if none */
        bool reaped;                   /* pid was waited for: see wait_status */
        int wait_status;               /* waitpid() status once reaped */
        char dir[96];                  /* the temporary directory */
        char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct kvd_test_opts opts;     /* set after prepare (which zeroes it), used by spawn */
        char error[512];               /* why the last call failed */
};

/*
 * Creates the temporary directory (mkdtemp under $TMPDIR, else /tmp) and the
 * NOTIFY_SOCKET datagram socket in it, and registers d for cleanup at exit.
 * d->socket_path is set to DIR/kvd.sock. Used by kvd_test_daemon_start();
 * call it directly to launch something else with kvd_test_daemon_spawn().
 */
int kvd_test_daemon_prepare(struct kvd_test_daemon *d);

/*
 * Forks and execs argv (argv[0] is a path) with NOTIFY_SOCKET set to the
 * fixture's notify socket plus the NAME=VALUE strings of env (NULL-terminated,
 * may be NULL). The child's stdout goes to stderr (stdout is the TAP
 * stream), and it dies with the calling thread (PR_SET_PDEATHSIG).
 */
int kvd_test_daemon_spawn(struct kvd_test_daemon *d, const char *const *argv,
                          const char *const *env);

/*
 * prepare + spawn `$KVDRIVED --foreground --socket DIR/kvd.sock --host-bytes
 * 64M` followed by extra_args (NULL-terminated, may be NULL), then waits
 * for READY=1. Fails (and cleans up) if the daemon exits first or is not
 * ready within KVD_TEST_READY_TIMEOUT_MS.
 */
int kvd_test_daemon_start(struct kvd_test_daemon *d, const char *const *extra_args);
/* The same with opts (NULL: none) applied to the daemon. */
int kvd_test_daemon_start_opts(struct kvd_test_daemon *d, const struct kvd_test_opts *opts,
                               const char *const *extra_args);

/*
 * Waits up to timeout_ms for an sd_notify message holding the line `line`
 * (e.g. "READY=1"; a line ending in '=' matches any value, as "STATUS=").
 * Messages seen before count. Returns 0, -ETIMEDOUT, or -ECHILD if the
 * daemon exited first.
 */
int kvd_test_daemon_wait_notify(struct kvd_test_daemon *d, const char *line, int timeout_ms);

/* Whether the notify log already holds the line (same matching as above). */
bool kvd_test_daemon_notified(const struct kvd_test_daemon *d, const char *line);

/* Whether the daemon process still runs (reaps it if it exited). */
bool kvd_test_daemon_alive(struct kvd_test_daemon *d);

/* Sends sig to the daemon. 0 or -errno (-ESRCH if it was reaped). */
int kvd_test_daemon_kill(struct kvd_test_daemon *d, int sig);

/*
 * Waits up to timeout_ms (-1: forever) for the daemon to exit and stores
 * its waitpid() status in *ret_status. 0 or -ETIMEDOUT.
 */
int kvd_test_daemon_wait_exit(struct kvd_test_daemon *d, int timeout_ms, int *ret_status);

/*
 * SIGTERM, wait up to KVD_TEST_STOP_TIMEOUT_MS (then SIGKILL), remove the
 * temporary directory, unregister. Returns 0 only if the daemon exited with
 * status 0 (or had already been reaped with status 0). Safe to call twice.
 */
int kvd_test_daemon_stop(struct kvd_test_daemon *d);

/* Writes DIR/name into buf. 0 or -ENAMETOOLONG. */
int kvd_test_daemon_path(const struct kvd_test_daemon *d, const char *name, char *buf,
                         size_t size);

/* Describes a waitpid() status ("exited 1", "killed by signal 9") into buf. */
const char *kvd_test_status_str(int status, char *buf, size_t size);

/*
 * Runs argv (argv[0] a path) to completion with stdout captured into a
 * malloc'd NUL-terminated *ret_out (the caller frees it); stderr is
 * inherited. Kills it after timeout_ms. Stores the waitpid() status.
 */
int kvd_test_run_capture(const char *const *argv, int timeout_ms, char **ret_out,
                         int *ret_status);

/* ---- raw protocol connection ----------------------------------------- */

/* Connects a SOCK_SEQPACKET socket (O_CLOEXEC) to path. fd or -errno. */
int kvd_test_raw_connect(const char *path);

/* Sends bytes as one message, exactly as given (no framing). 0 or -errno. */
int kvd_test_raw_send_bytes(int sock, const void *buf, size_t len);

/* Packs req and sends it as one frame, with fd as SCM_RIGHTS if >= 0. */
int kvd_test_raw_send(int sock, const Kvdrive__Request *req, int fd);

/*
 * Receives one frame within timeout_ms and unpacks it into *ret (free with
 * kvdrive__response__free_unpacked(r, NULL)). -ETIMEDOUT, -ECONNRESET if
 * the peer closed, -EBADMSG if the frame or its payload is bad.
 */
int kvd_test_raw_recv(int sock, int timeout_ms, Kvdrive__Response **ret);

/* send + recv (KVD_TEST_RECV_TIMEOUT_MS). */
int kvd_test_raw_call(int sock, const Kvdrive__Request *req, int fd, Kvdrive__Response **ret);

/* The error code of an Error response, or -1 if r is not an Error. */
int kvd_test_error_code(const Kvdrive__Response *r);

/*
 * Says Hello (version 1) and checks the HelloReply; stores max_frame and
 * max_items if the pointers are not NULL. 0, -EPROTO (not a HelloReply:
 * *ret_code, if not NULL, gets the error code or -1), or -errno.
 */
int kvd_test_raw_hello(int sock, uint64_t id, uint32_t *ret_max_frame, uint32_t *ret_max_items);

/* Name of a response's body case, for messages ("error(7: E_NO_NAMESPACE)"). */
const char *kvd_test_response_str(const Kvdrive__Response *r, char *buf, size_t size);

/*
 * Creates a memfd of size bytes (MFD_CLOEXEC | MFD_ALLOW_SEALING), its pages
 * allocated (fallocate, as the daemon requires), sealed with F_SEAL_SHRINK
 * if seal is true. fd or -errno.
 */
int kvd_test_memfd(size_t size, bool seal);

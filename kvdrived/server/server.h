/* SPDX-License-Identifier: MIT */
/*
 * The server: the epoll event loop, the listening sockets (socket-activated
 * or bound by us), client sessions and the wire <-> core translation. It
 * holds no policy: requests become calls on the cache and the I/O layer.
 */
#pragma once

#include <stdbool.h>

#include "cache.h"
#include "config.h"
#include "device.h"
#include "xfer.h"

struct kvd_server;

/*
 * Start-up is three steps, so that a daemon claims its socket before it
 * builds anything costly (a second daemon on a served socket stops before
 * it maps and locks a host tier):
 *   kvd_server_new()    - the event loop and the signalfd (SIGTERM, SIGINT,
 *                         SIGHUP; the caller blocks them); nothing costly
 *   kvd_server_listen() - the listening sockets; connections queue on the
 *                         backlog until kvd_server_run()
 *   kvd_server_attach() - the cache, transfer engine and CUDA loader
 * then kvd_server_run(). kvd_server_free() may be called after any step.
 */
int kvd_server_new(const struct kvd_config *cfg, struct kvd_server **ret);

/* Takes the sockets systemd passed (sd_listen_fds), else binds cfg->socket.
 * Refuses to take over a socket path another daemon is serving. */
int kvd_server_listen(struct kvd_server *s);

/* Wires the server to what it serves: cache, xfer and cuda are the
 * caller's. cuda (may be NULL: CUDA pools refused) must outlive the
 * transfer engine (device.h). 0 or -errno. */
int kvd_server_attach(struct kvd_server *s, struct kvd_cache *cache, struct kvd_xfer *xfer,
                      struct kvd_cuda *cuda);

/* On SIGHUP the loop calls fn(userdata), on the loop thread, between
 * requests: the owner of the (otherwise const) config reloads it there
 * (kvd_config_reload()). Without one SIGHUP is logged and ignored. */
void kvd_server_on_reload(struct kvd_server *s, void (*fn)(void *userdata), void *userdata);

/* Runs until SIGTERM/SIGINT (blocked by the caller and read via signalfd;
 * SIGHUP: see kvd_server_on_reload()). Returns 0 on a clean stop, -errno on a
 * fatal error. */
int kvd_server_run(struct kvd_server *s);

/*
 * One turn of the loop kvd_server_run() repeats: submits queued SSD I/O,
 * waits up to timeout_ms (-1: forever, 0: not at all) for events and
 * handles them. Returns how many events it handled (0: none came),
 * -ECANCELED when SIGTERM/SIGINT asked it to stop, or -errno on a fatal
 * error. For drivers that own the loop themselves (tests/fuzz/).
 */
int kvd_server_run_once(struct kvd_server *s, int timeout_ms);

/*
 * Serves fd — a connected AF_UNIX SOCK_SEQPACKET socket, e.g. one end of a
 * socketpair() — as a client session, exactly as if it had been accepted
 * (max-clients, SO_PEERCRED). Takes ownership of fd in every case (closed
 * on failure; made O_NONBLOCK and O_CLOEXEC). Returns 0, or -errno
 * (-EUSERS when max-clients sessions are connected).
 */
int kvd_server_adopt(struct kvd_server *s, int fd);

/* Whether no connected session has a request in flight or a reply queued
 * (requests of closed sessions still finishing are not counted). */
bool kvd_server_idle(const struct kvd_server *s);

/* Closes every session and listener (unlinking the socket it bound). Batches
 * still in flight keep their sessions alive until the transfer engine
 * completes them. Accepts NULL. */
struct kvd_server *kvd_server_free(struct kvd_server *s);

/* One-line status for sd_notify STATUS= and logs. */
void kvd_server_status_line(const struct kvd_server *s, char *buf, size_t size);

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

/* cuda (may be NULL: CUDA pools refused) is the caller's, and must outlive
 * the transfer engine (device.h). */
int kvd_server_new(const struct kvd_config *cfg, struct kvd_cache *cache, struct kvd_xfer *xfer,
                   struct kvd_cuda *cuda, struct kvd_server **ret);

/* Takes the sockets systemd passed (sd_listen_fds), else binds cfg->socket.
 * Refuses to take over a socket path another daemon is serving. */
int kvd_server_listen(struct kvd_server *s);

/* Runs until SIGTERM/SIGINT (blocked by the caller and read via signalfd).
 * Returns 0 on a clean stop, -errno on a fatal error. */
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

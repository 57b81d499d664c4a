/* SPDX-License-Identifier: MIT */
/*
 * The server: the epoll event loop, the listening sockets (socket-activated
 * or bound by us), client sessions and the wire <-> core translation. It
 * holds no policy: requests become calls on the cache and the I/O layer.
 */
#pragma once

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

/* Closes every session and listener (unlinking the socket it bound). Batches
 * still in flight keep their sessions alive until the transfer engine
 * completes them. Accepts NULL. */
struct kvd_server *kvd_server_free(struct kvd_server *s);

/* One-line status for sd_notify STATUS= and logs. */
void kvd_server_status_line(const struct kvd_server *s, char *buf, size_t size);

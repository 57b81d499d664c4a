/* SPDX-License-Identifier: MIT */
/*
 * Framing of the KVDrive control protocol.
 *
 * The socket is AF_UNIX SOCK_SEQPACKET: the kernel keeps message boundaries
 * and delivers the SCM_RIGHTS fds of a message with that message. Each
 * message is one frame: an 8-byte header (magic, payload length, both
 * little-endian) and a packed kvdrive.Request or kvdrive.Response. The length
 * lets the receiver tell a truncated frame from a complete one; the magic
 * rejects a peer that speaks something else.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define KVD_PROTO_VERSION      1u
#define KVD_FRAME_MAGIC        0x3144564bu /* "KVD1" little-endian */
#define KVD_FRAME_HDR          8u
/* The kernel bounds one SEQPACKET message by the sender's SO_SNDBUF
 * (net.core.wmem_default, 208 KiB on stock kernels): stay below it. */
#define KVD_FRAME_MAX_DEFAULT  (128u * 1024u)
#define KVD_FRAME_MAX_LIMIT    (192u * 1024u)
#define KVD_FRAME_MAX_FDS      4u

/* The system socket: where kvdrived.socket (and a root kvdrived) listens. */
#define KVD_SYSTEM_SOCKET      "/run/kvdrive/kvdrived.sock"

/* The daemon's default listening socket: $KVDRIVE_SOCKET, else
 * KVD_SYSTEM_SOCKET for root, else the per-user socket
 * (kvd_user_socket_path()). Clients search more than one place: see
 * kvc_connect() in kvdrive/client.h. Writes a NUL-terminated path into buf;
 * -ENAMETOOLONG if it does not fit. */
int kvd_default_socket_path(char *buf, size_t size);

/* The per-user socket of the effective uid: $XDG_RUNTIME_DIR/kvdrive/
 * kvdrived.sock, else /tmp/kvdrive-$EUID/kvdrived.sock. 0 or -ENAMETOOLONG. */
int kvd_user_socket_path(char *buf, size_t size);

/* Writes the header for a payload of len bytes into hdr[KVD_FRAME_HDR]. */
void kvd_frame_put_header(uint8_t hdr[KVD_FRAME_HDR], uint32_t len);

/*
 * Checks a received message of n bytes (n may exceed the buffer when the
 * kernel reported truncation: pass the real length). On success points
 * *ret_payload at the payload inside buf and sets *ret_len.
 * Returns 0, -EBADMSG (short or bad magic), -EPROTO (truncated: fewer bytes
 * than the header says, or trailing bytes), -EMSGSIZE (over max).
 */
int kvd_frame_parse(const uint8_t *buf, size_t n, size_t max,
                    const uint8_t **ret_payload, size_t *ret_len);

/*
 * Sends one frame with the payload, and fd (if >= 0) as SCM_RIGHTS.
 * MSG_NOSIGNAL; flags are added to sendmsg (e.g. MSG_DONTWAIT).
 * Returns 0 or -errno (-EAGAIN when the socket is full and non-blocking).
 */
int kvd_frame_send(int sock, const void *payload, size_t len, int fd, int flags);

/*
 * Receives one message into buf (cap bytes). Received fds are stored in
 * fds[*nfds] (at most KVD_FRAME_MAX_FDS; the caller owns and closes them).
 * Returns the message's real length (may exceed cap: then it was cut, and
 * kvd_frame_parse says -EMSGSIZE), 0 on orderly shutdown, or -errno.
 */
ssize_t kvd_frame_recv(int sock, uint8_t *buf, size_t cap, int fds[KVD_FRAME_MAX_FDS],
                       unsigned *nfds, int flags);

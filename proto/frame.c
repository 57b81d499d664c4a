/* SPDX-License-Identifier: MIT */
#include "frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static void put_le32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
}

int kvd_user_socket_path(char *buf, size_t size)
{
        const char *env = getenv("XDG_RUNTIME_DIR");
        int n;

        if (env && *env)
                n = snprintf(buf, size, "%s/kvdrive/kvdrived.sock", env);
        else
                n = snprintf(buf, size, "/tmp/kvdrive-%u/kvdrived.sock", (unsigned)geteuid());
        if (n < 0 || (size_t)n >= size)
                return -ENAMETOOLONG;
        return 0;
}

int kvd_default_socket_path(char *buf, size_t size)
{
        const char *env = getenv("KVDRIVE_SOCKET");
        int n;

        if (!(env && *env) && geteuid() != 0)
                return kvd_user_socket_path(buf, size);
        n = snprintf(buf, size, "%s", env && *env ? env : KVD_SYSTEM_SOCKET);
        if (n < 0 || (size_t)n >= size)
                return -ENAMETOOLONG;
        return 0;
}

void kvd_frame_put_header(uint8_t hdr[KVD_FRAME_HDR], uint32_t len)
{
        put_le32(hdr, KVD_FRAME_MAGIC);
        put_le32(hdr + 4, len);
}

int kvd_frame_parse(const uint8_t *buf, size_t n, size_t max,
                    const uint8_t **ret_payload, size_t *ret_len)
{
        uint32_t len;

        if (n > max + KVD_FRAME_HDR)
                return -EMSGSIZE;
        if (n < KVD_FRAME_HDR || get_le32(buf) != KVD_FRAME_MAGIC)
                return -EBADMSG;
        len = get_le32(buf + 4);
        if (len > max)
                return -EMSGSIZE;
        if ((size_t)len != n - KVD_FRAME_HDR)
                return -EPROTO;
        *ret_payload = buf + KVD_FRAME_HDR;
        *ret_len = len;
        return 0;
}

int kvd_frame_send(int sock, const void *payload, size_t len, int fd, int flags)
{
        uint8_t hdr[KVD_FRAME_HDR];
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov[2] = {
                { .iov_base = hdr, .iov_len = sizeof(hdr) },
                { .iov_base = (void *)payload, .iov_len = len },
        };
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
        ssize_t n;

        if (len > UINT32_MAX)
                return -EMSGSIZE;
        kvd_frame_put_header(hdr, (uint32_t)len);
        if (fd >= 0) {
                struct cmsghdr *c;

                memset(&ctl, 0, sizeof(ctl));
                msg.msg_control = ctl.buf;
                msg.msg_controllen = sizeof(ctl.buf);
                c = CMSG_FIRSTHDR(&msg);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        do
                n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        /* SEQPACKET sends are all or nothing. */
        return (size_t)n == len + sizeof(hdr) ? 0 : -EIO;
}

ssize_t kvd_frame_recv(int sock, uint8_t *buf, size_t cap, int fds[KVD_FRAME_MAX_FDS],
                       unsigned *nfds, int flags)
{
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(KVD_FRAME_MAX_FDS * sizeof(int))];
        } ctl;
        struct iovec iov = { .iov_base = buf, .iov_len = cap };
        struct msghdr msg = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = ctl.buf,
                .msg_controllen = sizeof(ctl.buf),
        };
        ssize_t n;

        *nfds = 0;
        do
                n = recvmsg(sock, &msg, MSG_TRUNC | MSG_CMSG_CLOEXEC | flags);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
                size_t k;

                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int fd;

                        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                        if (*nfds < KVD_FRAME_MAX_FDS)
                                fds[(*nfds)++] = fd;
                        else
                                close(fd);
                }
        }
        /* MSG_CTRUNC: fds beyond our buffer were closed by the kernel. */
        return n;
}

/* SPDX-License-Identifier: MIT */
/* Framing: header parse rules and a real SEQPACKET round trip with an fd. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check-main.h"
#include "frame.h"

START_TEST(parse_rules)
{
        uint8_t buf[64];
        const uint8_t *p;
        size_t len;

        kvd_frame_put_header(buf, 10);
        memset(buf + KVD_FRAME_HDR, 0xab, 10);
        ck_assert_int_eq(kvd_frame_parse(buf, KVD_FRAME_HDR + 10, 100, &p, &len), 0);
        ck_assert_uint_eq(len, 10);
        ck_assert_ptr_eq(p, buf + KVD_FRAME_HDR);
        /* truncated: fewer bytes than the header says */
        ck_assert_int_eq(kvd_frame_parse(buf, KVD_FRAME_HDR + 9, 100, &p, &len), -EPROTO);
        /* trailing garbage is as wrong as a short frame */
        ck_assert_int_eq(kvd_frame_parse(buf, KVD_FRAME_HDR + 11, 100, &p, &len), -EPROTO);
        /* over the limit, by header or by real size */
        ck_assert_int_eq(kvd_frame_parse(buf, KVD_FRAME_HDR + 10, 9, &p, &len), -EMSGSIZE);
        ck_assert_int_eq(kvd_frame_parse(buf, 1000, 100, &p, &len), -EMSGSIZE);
        /* short header, bad magic */
        ck_assert_int_eq(kvd_frame_parse(buf, 5, 100, &p, &len), -EBADMSG);
        buf[0] ^= 1;
        ck_assert_int_eq(kvd_frame_parse(buf, KVD_FRAME_HDR + 10, 100, &p, &len), -EBADMSG);
}
END_TEST

START_TEST(send_recv_with_fd)
{
        int sv[2], fds[KVD_FRAME_MAX_FDS], memfd;
        uint8_t buf[256];
        const uint8_t *p;
        unsigned nfds;
        size_t len;
        ssize_t n;

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
        memfd = memfd_create("t", MFD_CLOEXEC);
        ck_assert_int_ge(memfd, 0);
        ck_assert_int_eq(kvd_frame_send(sv[0], "hello", 5, memfd, 0), 0);
        n = kvd_frame_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0);
        ck_assert_int_eq(n, KVD_FRAME_HDR + 5);
        ck_assert_uint_eq(nfds, 1);
        ck_assert_int_ge(fds[0], 0);
        ck_assert_int_ne(fds[0], memfd);
        ck_assert_int_eq(kvd_frame_parse(buf, (size_t)n, 100, &p, &len), 0);
        ck_assert_mem_eq(p, "hello", 5);
        close(fds[0]);

        /* An oversized message is reported with its real length. */
        {
                static uint8_t big[4096];

                ck_assert_int_eq(kvd_frame_send(sv[0], big, sizeof(big), -1, 0), 0);
                n = kvd_frame_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0);
                ck_assert_int_eq(n, KVD_FRAME_HDR + sizeof(big));
                ck_assert_int_eq(kvd_frame_parse(buf, (size_t)n, 1024, &p, &len), -EMSGSIZE);
        }
        /* Orderly shutdown reads as 0. */
        close(sv[0]);
        ck_assert_int_eq(kvd_frame_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0), 0);
        close(sv[1]);
        close(memfd);
}
END_TEST

START_TEST(default_socket_path)
{
        char path[108];

        setenv("KVDRIVE_SOCKET", "/tmp/x/y.sock", 1);
        ck_assert_int_eq(kvd_default_socket_path(path, sizeof(path)), 0);
        ck_assert_str_eq(path, "/tmp/x/y.sock");
        ck_assert_int_eq(kvd_default_socket_path(path, 4), -ENAMETOOLONG);
        unsetenv("KVDRIVE_SOCKET");
        ck_assert_int_eq(kvd_default_socket_path(path, sizeof(path)), 0);
        ck_assert(geteuid() != 0 || strcmp(path, "/run/kvdrive/kvdrived.sock") == 0);
}
END_TEST

START_TEST(user_socket_path)
{
        char path[108], want[64];

        setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
        ck_assert_int_eq(kvd_user_socket_path(path, sizeof(path)), 0);
        ck_assert_str_eq(path, "/run/user/4242/kvdrive/kvdrived.sock");
        ck_assert_int_eq(kvd_user_socket_path(path, 8), -ENAMETOOLONG);
        unsetenv("XDG_RUNTIME_DIR");
        ck_assert_int_eq(kvd_user_socket_path(path, sizeof(path)), 0);
        snprintf(want, sizeof(want), "/tmp/kvdrive-%u/kvdrived.sock", (unsigned)geteuid());
        ck_assert_str_eq(path, want);
}
END_TEST

static Suite *frame_suite(void)
{
        Suite *s = suite_create("frame");
        TCase *tc = tcase_create("frame");

        tcase_add_test(tc, parse_rules);
        tcase_add_test(tc, send_recv_with_fd);
        tcase_add_test(tc, default_socket_path);
        tcase_add_test(tc, user_socket_path);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(frame_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Start-up: a second daemon on a served socket refuses to start and leaves
 * the first one serving; a stale socket file is replaced; bad configuration
 * and an unsafe socket directory are refused with a clear exit status;
 * without --foreground the daemon detaches only once it serves.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"

static const char *kvdrived(void)
{
        const char *p = getenv("KVDRIVED");

        ck_assert_msg(p && *p, "$KVDRIVED is not set (run the tests with meson test)");
        return p;
}

/* Runs kvdrived with args to completion; returns its exit status. */
static int run_daemon(const char *const *args)
{
        const char *argv[16] = { kvdrived() };
        char *out = NULL;
        int status = 0, n = 1;

        for (; args[n - 1] && n < 15; n++)
                argv[n] = args[n - 1];
        argv[n] = NULL;
        ck_assert_int_eq(kvd_test_run_capture(argv, 20000, &out, &status), 0);
        free(out);
        ck_assert_msg(WIFEXITED(status), "kvdrived did not exit normally");
        return WEXITSTATUS(status);
}

static void assert_serves(const char *sock)
{
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;

        ck_assert_int_eq(kvc_connect(sock, "probe", &c), 0);
        ck_assert_int_eq(kvc_stats_get(c, &st), 0);
        kvc_stats_free(st);
        kvc_disconnect(c);
}

START_TEST(test_second_daemon_refused)
{
        struct kvd_test_daemon d;

        E2E_START(&d, );
        {
                const char *args[] = { "--foreground", "--socket", d.socket_path, "--host-bytes", "32M", NULL };

                ck_assert_int_eq(run_daemon(args), 1);
        }
        assert_serves(d.socket_path); /* the first one still owns its socket */
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_stale_socket_replaced)
{
        struct kvd_test_daemon d;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        ck_assert_int_eq(kvd_test_daemon_prepare(&d), 0);
        /* A socket file nobody listens on, as a crashed daemon leaves it. */
        fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        strcpy(sa.sun_path, d.socket_path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        close(fd);
        {
                const char *argv[] = { kvdrived(), "--foreground", "--socket", d.socket_path, "--host-bytes", "32M",
                                       NULL };

                ck_assert_msg(kvd_test_daemon_spawn(&d, argv, NULL) == 0, "%s", d.error);
                ck_assert_msg(kvd_test_daemon_wait_notify(&d, "READY=1", 15000) == 0, "%s", d.error);
        }
        assert_serves(d.socket_path);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_bad_configuration)
{
        char dir[] = "/tmp/kvd-startup-XXXXXX", sock[128], conf[128];
        FILE *f;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(sock, sizeof(sock), "%s/s.sock", dir);
        snprintf(conf, sizeof(conf), "%s/kvdrived.conf", dir);
        {
                const char *a[] = { "--foreground", "--socket", sock, "--host-bytes", "lots", NULL };
                ck_assert_int_eq(run_daemon(a), 1);
        }
        {
                const char *a[] = { "--foreground", "--socket", sock, "--config", conf, NULL };
                ck_assert_int_eq(run_daemon(a), 1); /* missing file */
        }
        f = fopen(conf, "w");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "[kvdrived]\nworkers = many\n");
        fclose(f);
        {
                const char *a[] = { "--foreground", "--socket", sock, "--config", conf, NULL };
                ck_assert_int_eq(run_daemon(a), 1);
        }
        ck_assert_int_ne(access(sock, F_OK), 0); /* nothing was created */
        unlink(conf);
        rmdir(dir);
}
END_TEST

START_TEST(test_unsafe_socket_directory)
{
        char dir[] = "/tmp/kvd-startup-XXXXXX", sock[128];

        ck_assert_ptr_nonnull(mkdtemp(dir));
        ck_assert_int_eq(chmod(dir, 0777), 0);
        snprintf(sock, sizeof(sock), "%s/s.sock", dir);
        {
                const char *a[] = { "--foreground", "--socket", sock, "--host-bytes", "32M", NULL };
                ck_assert_int_eq(run_daemon(a), 1);
        }
        ck_assert_int_ne(access(sock, F_OK), 0);
        rmdir(dir);
}
END_TEST

START_TEST(test_detach_when_ready)
{
        char dir[] = "/tmp/kvd-startup-XXXXXX", sock[128], logf[128];
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        pid_t pid;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(sock, sizeof(sock), "%s/s.sock", dir);
        snprintf(logf, sizeof(logf), "%s/kvdrived.log", dir); /* not the default: /var/log as root */
        unsetenv("NOTIFY_SOCKET");
        unsetenv("LISTEN_FDS");
        {
                const char *a[] = { "--socket", sock, "--host-bytes", "32M", "--log-file", logf, NULL };
                ck_assert_int_eq(run_daemon(a), 0); /* returns only once serving */
        }
        ck_assert_int_eq(kvc_connect(sock, "probe", &c), 0); /* no retry needed */
        ck_assert_int_eq(kvc_stats_get(c, &st), 0);
        pid = (pid_t)st->pid;
        kvc_stats_free(st);
        kvc_disconnect(c);
        ck_assert_int_ne(pid, getpid());
        ck_assert_int_eq(kill(pid, SIGTERM), 0);
        for (int i = 0; i < 200 && kill(pid, 0) == 0; i++)
                usleep(50000);
        ck_assert_msg(kill(pid, 0) < 0, "detached daemon did not stop on SIGTERM");
        ck_assert_int_ne(access(sock, F_OK), 0); /* it removed its socket */
        unlink(logf);
        rmdir(dir);
}
END_TEST

static Suite *startup_suite(void)
{
        Suite *s = suite_create("startup");
        TCase *tc = tcase_create("startup");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_second_daemon_refused);
        tcase_add_test(tc, test_stale_socket_replaced);
        tcase_add_test(tc, test_bad_configuration);
        tcase_add_test(tc, test_unsafe_socket_directory);
        tcase_add_test(tc, test_detach_when_ready);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(startup_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Socket activation for real: systemd-socket-activate listens on a
 * SOCK_SEQPACKET socket and, on the first connection, execs kvdrived in its
 * own process with LISTEN_FDS=1. The daemon must serve that socket (it has
 * no --socket), announce READY=1, and stop cleanly on SIGTERM.
 *
 * Skipped (TAP "1..0 # SKIP") only when systemd-socket-activate is absent.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

#define NBLK 4u

static const char *activate_path(void)
{
        static const char *const candidates[] = {
                "/usr/bin/systemd-socket-activate",
                "/bin/systemd-socket-activate",
                "/usr/lib/systemd/systemd-socket-activate",
                "/lib/systemd/systemd-activate",
        };

        for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++)
                if (access(candidates[i], X_OK) == 0)
                        return candidates[i];
        return NULL;
}

/* Connects to path once the launcher has bound it (it may still be starting). */
static int connect_when_listening(struct kvd_test_daemon *d, const char *path)
{
        struct timespec ts = { .tv_nsec = 10 * 1000000L };

        for (int waited = 0; waited < KVD_TEST_READY_TIMEOUT_MS; waited += 10) {
                int fd = kvd_test_raw_connect(path);

                if (fd >= 0)
                        return fd;
                if (fd != -ENOENT && fd != -ECONNREFUSED)
                        return fd;
                if (!kvd_test_daemon_alive(d))
                        return -ECHILD;
                nanosleep(&ts, NULL);
        }
        return -ETIMEDOUT;
}

START_TEST(test_socket_activation)
{
        static const char *const pass_env[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
                                                "LD_LIBRARY_PATH" };
        char act[sizeof(((struct kvd_test_daemon *)0)->socket_path)];
        char notify_env[160], env_buf[4][512], why[96];
        const char *argv[32], *kvdrived = getenv("KVDRIVED");
        struct kvc_block_ref refs[NBLK];
        struct kvd_test_daemon d;
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st[NBLK], *want;
        size_t n = 0;
        uint32_t ns, last = 0;
        int fd, rc, ws = 0;

        ck_assert_msg(kvdrived && *kvdrived, "$KVDRIVED is not set");
        ck_assert_msg(kvd_test_daemon_prepare(&d) == 0, "%s", d.error);
        ck_assert_int_eq(kvd_test_daemon_path(&d, "act.sock", act, sizeof(act)), 0);
        snprintf(notify_env, sizeof(notify_env), "NOTIFY_SOCKET=%s", d.notify_path);

        /* The launcher passes on only the environment it is told to. */
        argv[n++] = activate_path();
        argv[n++] = "--seqpacket";
        argv[n++] = "-l";
        argv[n++] = act;
        argv[n++] = "-E";
        argv[n++] = notify_env;
        for (size_t i = 0; i < sizeof(pass_env) / sizeof(pass_env[0]); i++) {
                const char *v = getenv(pass_env[i]);

                if (!v)
                        continue;
                snprintf(env_buf[i], sizeof(env_buf[i]), "%s=%s", pass_env[i], v);
                argv[n++] = "-E";
                argv[n++] = env_buf[i];
        }
        argv[n++] = kvdrived;
        argv[n++] = "--foreground";
        argv[n++] = "--host-bytes";
        argv[n++] = "32M";
        argv[n] = NULL;
        rc = kvd_test_daemon_spawn(&d, argv, NULL);
        ck_assert_msg(rc == 0, "%s", d.error);

        /* The first connection makes the launcher exec the daemon. */
        fd = connect_when_listening(&d, act);
        ck_assert_msg(fd >= 0, "connect %s: %s", act, strerror(-fd));
        rc = kvd_test_daemon_wait_notify(&d, "READY=1", KVD_TEST_READY_TIMEOUT_MS);
        ck_assert_msg(rc == 0, "%s", d.error);
        rc = kvd_test_raw_hello(fd, 1, NULL, NULL);
        ck_assert_msg(rc == 0, "Hello on the connection that activated it: %s", strerror(-rc));
        close(fd);

        /* A libkvclient round trip on the activated socket. */
        ck_assert_int_eq(e2e_open(act, "activated", "e2e-activation-model", &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 2 * NBLK, E2E_BLOCK_BYTES, &p), 0);
        want = malloc((size_t)NBLK * E2E_BLOCK_BYTES);
        ck_assert_ptr_nonnull(want);
        for (uint32_t i = 0; i < NBLK; i++) {
                refs[i] = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = i };
                ck_assert_int_eq(kvc_key_sequence_new(&refs[i].key), 0);
                ck_assert_int_eq(e2e_random(kvc_pool_slot(p, i), E2E_BLOCK_BYTES), 0);
                memcpy(want + (size_t)i * E2E_BLOCK_BYTES, kvc_pool_slot(p, i), E2E_BLOCK_BYTES);
        }
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, NBLK, st), (int)NBLK);
        for (uint32_t i = 0; i < NBLK; i++)
                refs[i].slot = NBLK + i;
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, NBLK, st), (int)NBLK);
        for (uint32_t i = 0; i < NBLK; i++)
                ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, NBLK + i),
                                          want + (size_t)i * E2E_BLOCK_BYTES, E2E_BLOCK_BYTES) < 0,
                              "block %u came back different", i);
        free(want);

        ck_assert_msg(e2e_wait_clients(c, 1, E2E_WAIT_MS, &last) == 0, "stats clients %u, want 1", last);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        /* The launcher execs the daemon in place: same pid. */
        ck_assert_uint_eq(s->pid, (uint32_t)d.pid);
        ck_assert_uint_eq(s->puts, NBLK);
        ck_assert_uint_eq(s->gets, NBLK);
        ck_assert_uint_eq(s->clients_total, 2);
        ck_assert_ptr_nonnull(e2e_tier(s, "host"));
        ck_assert_uint_eq(e2e_tier(s, "host")->blocks, NBLK);
        ck_assert_uint_eq(e2e_tier(s, "host")->capacity_bytes, 32u << 20);
        ck_assert_ptr_nonnull(e2e_ns(s, "e2e-activation-model"));
        ck_assert_uint_eq(e2e_ns(s, "e2e-activation-model")->blocks, NBLK);
        kvc_stats_free(s);
        kvc_pool_free(p);
        kvc_disconnect(c);

        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGTERM), 0);
        rc = kvd_test_daemon_wait_notify(&d, "STOPPING=1", KVD_TEST_STOP_TIMEOUT_MS);
        ck_assert_msg(rc == 0, "%s", d.error);
        rc = kvd_test_daemon_wait_exit(&d, KVD_TEST_STOP_TIMEOUT_MS, &ws);
        ck_assert_msg(rc == 0, "no exit within %d ms of SIGTERM", KVD_TEST_STOP_TIMEOUT_MS);
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the daemon %s",
                      kvd_test_status_str(ws, why, sizeof(why)));
        E2E_STOP(&d);
}
END_TEST

static Suite *activation_suite(void)
{
        Suite *s = suite_create("e2e-socket-activation");
        TCase *tc = tcase_create("activation");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_socket_activation);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        if (!activate_path()) {
                printf("1..0 # SKIP systemd-socket-activate is not installed\n");
                return EXIT_SUCCESS;
        }
        sr = srunner_create(activation_suite());
        srunner_set_tap(sr, "-");
        srunner_run_all(sr, CK_SILENT);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

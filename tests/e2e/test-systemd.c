/* SPDX-License-Identifier: MIT */
/*
 * systemd readiness protocol: READY=1 once serving (the fixture waits for
 * it), a STATUS= line, STOPPING=1 on SIGTERM or SIGINT, then exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "check-main.h"
#include "common.h"

/* Ready means serving: a Hello on a fresh connection is answered. */
static void assert_serving(struct kvd_test_daemon *d)
{
        int fd = kvd_test_raw_connect(d->socket_path);
        int rc;

        ck_assert_msg(fd >= 0, "connect %s after READY=1: %s", d->socket_path, strerror(-fd));
        rc = kvd_test_raw_hello(fd, 1, NULL, NULL);
        ck_assert_msg(rc == 0, "Hello after READY=1: %s", strerror(-rc));
        close(fd);
}

static void assert_stops_on(struct kvd_test_daemon *d, int sig)
{
        char why[96];
        int rc, st = 0;

        ck_assert_int_eq(kvd_test_daemon_kill(d, sig), 0);
        rc = kvd_test_daemon_wait_notify(d, "STOPPING=1", KVD_TEST_STOP_TIMEOUT_MS);
        ck_assert_msg(rc == 0, "after signal %d: %s", sig, d->error);
        rc = kvd_test_daemon_wait_exit(d, KVD_TEST_STOP_TIMEOUT_MS, &st);
        ck_assert_msg(rc == 0, "the daemon did not exit within %d ms of signal %d",
                      KVD_TEST_STOP_TIMEOUT_MS, sig);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "after signal %d the daemon %s",
                      sig, kvd_test_status_str(st, why, sizeof(why)));
}

START_TEST(test_ready_status_stopping)
{
        struct kvd_test_daemon d;
        int rc;

        E2E_START(&d);
        ck_assert(kvd_test_daemon_notified(&d, "READY=1"));
        assert_serving(&d);
        rc = kvd_test_daemon_wait_notify(&d, "STATUS=", E2E_WAIT_MS);
        ck_assert_msg(rc == 0, "%s", d.error);
        ck_assert(!kvd_test_daemon_notified(&d, "STOPPING=1"));
        assert_stops_on(&d, SIGTERM);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_sigint_stops)
{
        struct kvd_test_daemon d;

        E2E_START(&d);
        assert_serving(&d);
        assert_stops_on(&d, SIGINT);
        E2E_STOP(&d);
}
END_TEST

/* SIGTERM with clients connected and a session holding a pool. */
START_TEST(test_sigterm_with_clients)
{
        struct kvd_test_daemon d;
        struct kvc_block_ref ref = { .layer = 0, .slot = 0 };
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st;
        uint32_t ns;
        int raw;

        E2E_START(&d);
        ck_assert_int_eq(e2e_open(d.socket_path, "lingering", "e2e-systemd-model", &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 1, E2E_BLOCK_BYTES, &p), 0);
        ck_assert_int_eq(kvc_key_sequence_new(&ref.key), 0);
        ck_assert_int_eq(e2e_random(kvc_pool_slot(p, 0), E2E_BLOCK_BYTES), 0);
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, &ref, 1, &st), 1);
        raw = kvd_test_raw_connect(d.socket_path);       /* no Hello yet */
        ck_assert_int_ge(raw, 0);
        assert_stops_on(&d, SIGTERM);
        close(raw);
        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

static Suite *systemd_suite(void)
{
        Suite *s = suite_create("e2e-systemd");
        TCase *tc = tcase_create("notify");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_ready_status_stopping);
        tcase_add_test(tc, test_sigint_stops);
        tcase_add_test(tc, test_sigterm_with_clients);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(systemd_suite)

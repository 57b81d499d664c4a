/* SPDX-License-Identifier: MIT */
/*
 * Reload: SIGHUP re-reads the config file (the command line still wins over
 * it), applies what can change live — a new max-clients refuses the next
 * client, a new quota-namespaces holds for a uid that already owns a
 * namespace, a new log-level — says in the log what changed and what needs
 * a restart, and refuses a bad file (a bad value, a syntax error) while
 * every old setting holds.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"

#define WAIT_MS 15000

static void write_conf(const char *path, const char *text)
{
        char tmp[256];
        FILE *f;

        /* Written whole, then renamed: the daemon never reads half a file. */
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        f = fopen(tmp, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(text, f), 0);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_int_eq(rename(tmp, path), 0);
}

/* The daemon's log (its stderr, DIR/kvdrived.log) as a malloc'd string. */
static char *read_log(const struct kvd_test_daemon *d)
{
        char path[256], *buf;
        FILE *f;
        long n;

        ck_assert_int_eq(kvd_test_daemon_path(d, "kvdrived.log", path, sizeof(path)), 0);
        f = fopen(path, "r");
        ck_assert_ptr_nonnull(f);
        buf = malloc(1 << 20);
        ck_assert_ptr_nonnull(buf);
        n = (long)fread(buf, 1, (1 << 20) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

/* Asserts cond, the log on stderr if it fails (not in the TAP stream). */
#define LOG_ASSERT(log, cond)                                                   \
        do {                                                                    \
                if (!(cond)) {                                                  \
                        fputs((log), stderr);                                   \
                        ck_abort_msg("'%s' failed (the log is on stderr)", #cond); \
                }                                                               \
        } while (0)

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits until the log holds text `count` times; returns the log. */
static char *wait_log(struct kvd_test_daemon *d, const char *text, int count)
{
        uint64_t deadline = now_ms() + WAIT_MS;

        for (;;) {
                char *log = read_log(d);
                int seen = 0;

                for (const char *p = log; (p = strstr(p, text)); p += strlen(text))
                        seen++;
                if (seen >= count)
                        return log;
                if (now_ms() >= deadline || !kvd_test_daemon_alive(d)) {
                        fputs(log, stderr);
                        ck_abort_msg("no '%s' (x%d) in the log within %d ms (or the daemon died)", text, count,
                                     WAIT_MS);
                }
                free(log);
                usleep(20000);
        }
}

static char conf_path[128];

/* A failed assertion exits the test's process: the file goes too. */
static void remove_conf(void)
{
        if (conf_path[0])
                unlink(conf_path);
}

/* Starts a daemon with --config FILE (text in it) and extra arguments. */
static void start(struct kvd_test_daemon *d, char *conf, size_t size, const char *text,
                  const char *const *extra)
{
        const struct kvd_test_opts opts = { .log_file = true };
        const char *args[16] = { "--config", conf };
        int n = 2, r;

        /* Not in the fixture's directory: that is made by the start. */
        snprintf(conf, size, "/tmp/kvd-reload-%d-%llu.conf", (int)getpid(), (unsigned long long)now_ms());
        snprintf(conf_path, sizeof(conf_path), "%s", conf);
        atexit(remove_conf);
        write_conf(conf, text);
        for (; extra && *extra && n < 15; extra++)
                args[n++] = *extra;
        args[n] = NULL;
        r = kvd_test_daemon_start_opts(d, &opts, args);
        ck_assert_msg(r == 0, "daemon start: %s", d->error);
}

static kvc_client *connect_ok(const struct kvd_test_daemon *d, const char *name)
{
        kvc_client *c = NULL;
        int r = kvc_connect(d->socket_path, name, &c);

        ck_assert_msg(r == 0, "connect %s: %d (%s)", name, r, kvc_strerror(r));
        return c;
}

static void assert_refused(const struct kvd_test_daemon *d)
{
        kvc_client *c = NULL;
        int r = kvc_connect(d->socket_path, "one-too-many", &c);

        ck_assert_msg(r < 0, "a client over max-clients was let in");
        ck_assert_ptr_null(c);
}

START_TEST(test_reload_applies_live_settings)
{
        struct kvd_test_daemon d;
        char conf[128], *log;
        kvc_client *a, *b, *c;
        uint32_t ns;
        int r;

        {
                const char *extra[] = { "--max-inflight-per-client", "8", NULL };

                start(&d, conf, sizeof(conf),
                      "[kvdrived]\nmax-clients = 4\nlog-level = info\nmax-inflight-per-client = 32\n", extra);
        }
        a = connect_ok(&d, "a");
        b = connect_ok(&d, "b");
        ck_assert_int_eq(kvc_register_namespace(a, "first", &e2e_geom, &ns, NULL), 0);

        write_conf(conf, "[kvdrived]\nmax-clients = 2\nlog-level = debug\nquota-namespaces = 1\n"
                         "max-inflight-per-client = 32\nworkers = 3\n");
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        log = wait_log(&d, "reloaded the configuration", 1);
        LOG_ASSERT(log, strstr(log, "reload: max-clients: 4 -> 2"));
        LOG_ASSERT(log, strstr(log, "reload: log-level: info -> debug"));
        LOG_ASSERT(log, strstr(log, "reload: quota-namespaces: 16 -> 1"));
        LOG_ASSERT(log, strstr(log, "reload: workers: 2 -> 3 needs a restart; keeping 2"));
        /* The command line's 8 wins over the file's 32, as at start. */
        LOG_ASSERT(log, !strstr(log, "max-inflight-per-client"));
        LOG_ASSERT(log, strstr(log, "3 settings changed, 1 kept"));
        free(log);

        /* max-clients 2: a and b are in, a third is refused. */
        assert_refused(&d);
        /* The tenant that already owned a namespace has the new quota. */
        r = kvc_register_namespace(a, "second", &e2e_geom, &ns, NULL);
        ck_assert_msg(r == -KVC_E_QUOTA, "second namespace under quota-namespaces 1: %d (%s)", r, kvc_last_error(a));
        /* log-level debug: that refusal was logged at debug. */
        log = wait_log(&d, "kvdrived[debug]", 1);
        free(log);
        /* One leaves, one more may come in. */
        kvc_disconnect(b);
        c = connect_ok(&d, "c");

        kvc_disconnect(c);
        kvc_disconnect(a);
        E2E_STOP(&d);
        unlink(conf);
}
END_TEST

START_TEST(test_reload_refuses_bad_file)
{
        struct kvd_test_daemon d;
        char conf[128], *log;
        kvc_client *a, *b, *c;

        start(&d, conf, sizeof(conf), "[kvdrived]\nmax-clients = 2\n", NULL);
        a = connect_ok(&d, "a");
        b = connect_ok(&d, "b");

        /* A bad value, among good ones: nothing of it is taken. */
        write_conf(conf, "[kvdrived]\nmax-clients = 8\nmax-clients-per-uid = lots\n");
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        log = wait_log(&d, "keeping the running configuration", 1);
        LOG_ASSERT(log, strstr(log, "reload refused:") && strstr(log, "max-clients-per-uid"));
        LOG_ASSERT(log, !strstr(log, "reload: max-clients:"));
        free(log);
        assert_refused(&d);

        /* A syntax error. */
        write_conf(conf, "[kvdrived]\nmax-clients 8\n");
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        log = wait_log(&d, "keeping the running configuration", 2);
        LOG_ASSERT(log, strstr(log, "syntax error"));
        free(log);
        assert_refused(&d);

        /* A missing file. */
        ck_assert_int_eq(unlink(conf), 0);
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        log = wait_log(&d, "keeping the running configuration", 3);
        LOG_ASSERT(log, strstr(log, "cannot open config file"));
        free(log);
        assert_refused(&d);
        ck_assert(kvd_test_daemon_alive(&d));

        /* And a good one again is taken. */
        write_conf(conf, "[kvdrived]\nmax-clients = 3\n");
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        log = wait_log(&d, "reload: max-clients: 2 -> 3", 1);
        free(log);
        c = connect_ok(&d, "c");

        kvc_disconnect(c);
        kvc_disconnect(b);
        kvc_disconnect(a);
        E2E_STOP(&d);
        unlink(conf);
}
END_TEST

static Suite *reload_suite(void)
{
        Suite *s = suite_create("reload");
        TCase *tc = tcase_create("reload");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_reload_applies_live_settings);
        tcase_add_test(tc, test_reload_refuses_bad_file);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(reload_suite)

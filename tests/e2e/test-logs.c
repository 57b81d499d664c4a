/* SPDX-License-Identifier: MIT */
/*
 * Logs never go nowhere: a detached daemon (no --foreground, no systemd)
 * writes its log to log-file, creating the file's directory, reopens it on
 * SIGHUP (log rotation), and a daemon that cannot open it says so on
 * stderr and refuses to start.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"

#define WAIT_MS 15000

static const char *kvdrived(void)
{
        const char *p = getenv("KVDRIVED");

        ck_assert_msg(p && *p, "$KVDRIVED is not set (run the tests with meson test)");
        return p;
}

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The file as a malloc'd string, NULL if it cannot be read. */
static char *slurp(const char *path)
{
        char *buf;
        FILE *f = fopen(path, "r");
        size_t n;

        if (!f)
                return NULL;
        buf = malloc(1 << 20);
        ck_assert_ptr_nonnull(buf);
        n = fread(buf, 1, (1 << 20) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

static void wait_file_holds(const char *path, const char *text)
{
        uint64_t deadline = now_ms() + WAIT_MS;

        for (;;) {
                char *s = slurp(path);
                bool found = s && strstr(s, text);

                if (found) {
                        free(s);
                        return;
                }
                if (now_ms() >= deadline) {
                        fputs(s ? s : "(no file)\n", stderr);
                        ck_abort_msg("no '%s' in %s within %d ms (the file is on stderr)", text, path, WAIT_MS);
                }
                free(s);
                usleep(20000);
        }
}

/* Runs argv (via sh, stderr into stdout) to completion: its status and,
 * in *ret_out, what it printed. */
static int run(const char *const *args, char **ret_out)
{
        const char *argv[24] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", kvdrived() };
        int status = 0, n = 4;

        for (; *args && n < 23; args++)
                argv[n++] = *args;
        argv[n] = NULL;
        ck_assert_int_eq(kvd_test_run_capture(argv, 20000, ret_out, &status), 0);
        ck_assert_msg(WIFEXITED(status), "kvdrived did not exit normally");
        return WEXITSTATUS(status);
}

static char dir[] = "/tmp/kvd-logs-XXXXXX";
static char sock[128], logdir[128], logfile[160], rotated[170];
static pid_t daemon_pid;

/* A failed assertion exits the test's process: nothing is left behind. */
static void cleanup(void)
{
        if (daemon_pid > 0)
                kill(daemon_pid, SIGKILL);
        unlink(logfile);
        unlink(rotated);
        rmdir(logdir);
        unlink(sock);
        rmdir(dir);
}

START_TEST(test_detached_logs_to_file)
{
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        char *out = NULL, *log;
        uint64_t deadline;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        atexit(cleanup);
        snprintf(sock, sizeof(sock), "%s/s.sock", dir);
        snprintf(logdir, sizeof(logdir), "%s/log", dir); /* made by the daemon */
        snprintf(logfile, sizeof(logfile), "%s/kvdrived.log", logdir);
        snprintf(rotated, sizeof(rotated), "%s.1", logfile);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("LISTEN_FDS");
        unsetenv("INVOCATION_ID");
        {
                const char *a[] = { "--socket", sock, "--host-bytes", "32M", "--log-file", logfile, NULL };

                if (run(a, &out) != 0) {
                        fputs(out, stderr);
                        ck_abort_msg("the detached start failed (its output is on stderr)");
                }
                free(out);
        }
        ck_assert_int_eq(kvc_connect(sock, "probe", &c), 0);
        ck_assert_int_eq(kvc_stats_get(c, &st), 0);
        daemon_pid = (pid_t)st->pid;
        kvc_stats_free(st);
        kvc_disconnect(c);
        ck_assert_int_ne(daemon_pid, getpid());

        /* Start-up, then a session, are in the file, with the pid. */
        wait_file_holds(logfile, " ready: ");
        wait_file_holds(logfile, "hello from 'probe'");
        {
                char tag[32];

                snprintf(tag, sizeof(tag), "kvdrived[%d]: ", (int)daemon_pid);
                wait_file_holds(logfile, tag);
        }

        /* Rotation: the file moved away, SIGHUP, a new one takes the log. */
        ck_assert_int_eq(rename(logfile, rotated), 0);
        ck_assert_int_eq(kill(daemon_pid, SIGHUP), 0);
        wait_file_holds(logfile, "reloaded the configuration");
        log = slurp(rotated);
        ck_assert_ptr_nonnull(log);
        ck_assert_msg(!strstr(log, "reloaded the configuration"), "the old file got the new lines");
        free(log);

        ck_assert_int_eq(kill(daemon_pid, SIGTERM), 0);
        deadline = now_ms() + WAIT_MS;
        while (kill(daemon_pid, 0) == 0 && now_ms() < deadline)
                usleep(20000);
        ck_assert_msg(kill(daemon_pid, 0) < 0, "the detached daemon did not stop on SIGTERM");
        daemon_pid = 0;
        wait_file_holds(logfile, ": info: stopped");
}
END_TEST

START_TEST(test_unopenable_log_file_refused)
{
        char *out = NULL;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        atexit(cleanup);
        snprintf(sock, sizeof(sock), "%s/s.sock", dir);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("LISTEN_FDS");
        unsetenv("INVOCATION_ID");
        {
                /* Its directory's parent does not exist: it cannot be made. */
                const char *a[] = { "--socket", sock, "--host-bytes", "32M", "--log-file",
                                    "/nonexistent-kvd/log/kvdrived.log", NULL };

                ck_assert_int_eq(run(a, &out), 1);
        }
        if (!strstr(out, "cannot open the log file /nonexistent-kvd/log/kvdrived.log")) {
                fputs(out, stderr);
                ck_abort_msg("it did not say why (its stderr is on stderr)");
        }
        free(out);
        ck_assert_int_ne(access(sock, F_OK), 0); /* it never served */
}
END_TEST

static Suite *logs_suite(void)
{
        Suite *s = suite_create("logs");
        TCase *tc = tcase_create("logs");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_detached_logs_to_file);
        tcase_add_test(tc, test_unopenable_log_file_refused);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(logs_suite)

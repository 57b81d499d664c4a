/* SPDX-License-Identifier: MIT */
/*
 * A shared daemon that no client can hurt, and that no client is steered
 * away from:
 *  - a client trusts a default socket only in a directory owned by root or
 *    by itself and writable by nobody else, and says which paths it tried;
 *  - a sparse memfd pool is refused at once, costing the daemon nothing;
 *  - SIGHUP does not kill the daemon;
 *  - an empty message is a malformed frame, not the end of the session;
 *  - a host tier larger than the machine gives is refused with the sizes;
 *  - a second daemon on a served socket stops before it builds a host tier.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"
#include "frame.h"

#define RUN_TIMEOUT_MS 30000

static const char *env_path(const char *name)
{
        const char *p = getenv(name);

        ck_assert_msg(p && *p, "$%s is not set (run the tests with meson test)", name);
        return p;
}

/*
 * Runs argv[0] with the rest of argv, its stderr merged into the captured
 * stdout (the daemon logs to stderr), to completion. Returns the output
 * (free it) and stores the exit status.
 */
static char *run_merged(const char *const *args, int *ret_status)
{
        const char *argv[24] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1" };
        char *out = NULL;
        int n = 3, rc;

        for (int i = 0; args[i] && n < 23; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        rc = kvd_test_run_capture(argv, RUN_TIMEOUT_MS, &out, ret_status);
        ck_assert_msg(rc == 0, "running %s: %s", args[0], strerror(-rc));
        fprintf(stderr, "--- output of %s ---\n%s--- end ---\n", args[0], out);
        return out;
}

static int exit_code(int status)
{
        ck_assert_msg(WIFEXITED(status), "did not exit normally (status 0x%x)", status);
        return WEXITSTATUS(status);
}

static void assert_serves(const char *sock)
{
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;

        E2E_ASSERT_RC(c, kvc_connect(sock, "probe", &c), 0);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &st), 0);
        kvc_stats_free(st);
        kvc_disconnect(c);
}

/* ---- 1. which socket a client trusts ---------------------------------- */

/* The per-test uid: unlikely to be anybody's, and distinct per run so that
 * runs in parallel do not share /tmp/kvdrive-$UID. */
static uid_t test_uid(void)
{
        return (uid_t)(3000000u + (unsigned)getpid() % 1000000u);
}

static char user_dir[64], user_sock[96], moved_dir[80];

/* Whatever a test left of /tmp/kvdrive-$UID (it may fail half-way). */
static void cleanup_user_dir(void)
{
        struct stat st;

        if (!user_dir[0])
                return;
        if (lstat(user_dir, &st) == 0 && S_ISLNK(st.st_mode))
                unlink(user_dir);
        if (moved_dir[0] && lstat(moved_dir, &st) == 0 && rename(moved_dir, user_dir) < 0)
                rmdir(moved_dir);
        unlink(user_sock);
        rmdir(user_dir);
}

struct trust_case {
        uid_t uid;
        bool expect_ok;
        const char *expect_text;        /* in the report */
        int expect_err;                 /* when !expect_ok: the return, 0 = any < 0 */
        const char *env_socket;         /* $KVDRIVE_SOCKET for the child, or NULL */
};

/* As the unprivileged uid, without HOME / XDG_RUNTIME_DIR: connect with the
 * default search and check the outcome and the report. */
static int trust_child(void *arg)
{
        const struct trust_case *t = arg;
        char report[2048] = "";
        struct kvc_connect_opts o = { .size = sizeof(o), .name = "trust-probe", .report = report,
                                      .report_size = sizeof(report) };
        kvc_client *c = NULL;
        int r;

        CHILD_ASSERT(setgroups(0, NULL) == 0 && setgid((gid_t)t->uid) == 0 && setuid(t->uid) == 0,
                     "dropping to uid %u: %s", (unsigned)t->uid, strerror(errno));
        /* A credential change clears these: keep dying with the test, and
         * let the sanitizers look at us. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        prctl(PR_SET_DUMPABLE, 1);
        unsetenv("HOME");
        unsetenv("XDG_RUNTIME_DIR");
        unsetenv("KVDRIVE_SOCKET");
        if (t->env_socket)
                setenv("KVDRIVE_SOCKET", t->env_socket, 1);
        r = kvc_connect_opts(&o, &c);
        fprintf(stderr, "[child uid %u] kvc_connect_opts = %d (%s); report:\n%s", (unsigned)t->uid, r,
                r < 0 ? kvc_strerror(r) : "ok", report);
        if (t->expect_ok) {
                struct kvc_stats *st = NULL;

                CHILD_ASSERT(r == 0, "connect failed: %s", kvc_strerror(r));
                CHILD_ASSERT(kvc_stats_get(c, &st) == 0, "stats failed");
                kvc_stats_free(st);
                kvc_disconnect(c);
        } else {
                CHILD_ASSERT(r < 0, "connected, but should have refused");
                CHILD_ASSERT(t->expect_err == 0 || r == t->expect_err, "returned %d (%s), want %d (%s)", r,
                             kvc_strerror(r), t->expect_err, kvc_strerror(t->expect_err));
        }
        CHILD_ASSERT(strstr(report, t->expect_text), "report lacks '%s'", t->expect_text);
        if (!t->env_socket) {
                /* Every path of the search is named, in order. */
                const char *sys = strstr(report, KVD_SYSTEM_SOCKET ": ");
                const char *usr = strstr(report, user_sock);

                CHILD_ASSERT(sys, "report does not name %s", KVD_SYSTEM_SOCKET);
                CHILD_ASSERT(usr && usr > sys, "report does not name %s after the system socket", user_sock);
        }
        return 0;
}

/* Runs one case in a child; on failure (and only then) describes it in
 * failed, which keeps the first failure. */
static void run_trust(const struct trust_case *t, const char *what, char *failed, size_t size)
{
        char why[96];
        int st;

        if (failed[0])
                return;
        st = e2e_wait_child(e2e_fork(trust_child, (void *)t), E2E_CHILD_TIMEOUT_MS, why, sizeof(why));
        if (st != 0)
                snprintf(failed, size, "%s: %s (its stderr is above)", what, why);
}

/* Notes the first failed step instead of asserting: a Check assertion ends
 * the test with _exit(), and /tmp/kvdrive-$UID must go whatever happens. */
#define STEP(failed, cond)                                                              \
        do {                                                                            \
                if (!(failed)[0] && !(cond))                                            \
                        snprintf((failed), sizeof(failed), "%s: %s", #cond, strerror(errno)); \
        } while (0)

/* A daemon on the system socket would answer the search first. */
static bool system_socket_answers(void)
{
        int fd = kvd_test_raw_connect(KVD_SYSTEM_SOCKET);

        if (fd < 0)
                return false;
        close(fd);
        return true;
}

START_TEST(test_default_socket_trust)
{
        struct kvd_test_daemon d;
        uid_t uid = test_uid();
        char want[256], failed[512] = "";
        int rc;

        if (geteuid() != 0) {
                fprintf(stderr, "skipped: needs root (to be another uid)\n");
                return;
        }
        if (system_socket_answers()) {
                fprintf(stderr, "skipped: a daemon answers on %s, which the search tries first\n", KVD_SYSTEM_SOCKET);
                return;
        }
        snprintf(user_dir, sizeof(user_dir), "/tmp/kvdrive-%u", (unsigned)uid);
        snprintf(user_sock, sizeof(user_sock), "%s/kvdrived.sock", user_dir);
        snprintf(moved_dir, sizeof(moved_dir), "%s.real", user_dir);
        cleanup_user_dir();

        /* The daemon (root) serves the client's per-user path; it makes
         * the directory, root's and 0755: trusted. */
        E2E_START(&d, "--socket", user_sock, "--socket-mode", "0666",);
        snprintf(want, sizeof(want), "%s: connected", user_sock);
        run_trust(&(struct trust_case){ uid, true, want, 0, NULL }, "root's 0755 directory", failed, sizeof(failed));

        /* Owned by somebody else: whoever that is could have put their own
         * daemon there, and would get our pools. */
        STEP(failed, chown(user_dir, uid + 1, (gid_t)-1) == 0);
        snprintf(want, sizeof(want), "%s: not trusted: directory %s is owned by uid %u", user_sock, user_dir,
                 (unsigned)(uid + 1));
        run_trust(&(struct trust_case){ uid, false, want, -EPERM, NULL }, "another uid's directory", failed,
                  sizeof(failed));

        /* Ours, but writable by our group (or others). */
        STEP(failed, chown(user_dir, uid, (gid_t)uid) == 0);
        STEP(failed, chmod(user_dir, 0775) == 0);
        snprintf(want, sizeof(want), "not trusted: directory %s is writable by its group", user_dir);
        run_trust(&(struct trust_case){ uid, false, want, -EPERM, NULL }, "a group-writable directory", failed,
                  sizeof(failed));
        STEP(failed, chmod(user_dir, 0757) == 0);
        snprintf(want, sizeof(want), "not trusted: directory %s is writable by others", user_dir);
        run_trust(&(struct trust_case){ uid, false, want, -EPERM, NULL }, "a world-writable directory", failed,
                  sizeof(failed));

        /* Ours and private: trusted. */
        STEP(failed, chmod(user_dir, 0700) == 0);
        snprintf(want, sizeof(want), "%s: connected", user_sock);
        run_trust(&(struct trust_case){ uid, true, want, 0, NULL }, "our own 0700 directory", failed, sizeof(failed));

        /* A symlink to a good directory is not the directory. */
        STEP(failed, rename(user_dir, moved_dir) == 0);
        STEP(failed, symlink(moved_dir, user_dir) == 0);
        snprintf(want, sizeof(want), "not trusted: directory %s is a symbolic link", user_dir);
        run_trust(&(struct trust_case){ uid, false, want, -EPERM, NULL }, "a symlinked directory", failed,
                  sizeof(failed));

        /* $KVDRIVE_SOCKET is an explicit choice: used as is, alone. */
        snprintf(want, sizeof(want), "$KVDRIVE_SOCKET=%s: connected", user_sock);
        run_trust(&(struct trust_case){ uid, true, want, 0, user_sock }, "$KVDRIVE_SOCKET", failed, sizeof(failed));

        /* Whatever failed: stop the daemon (it unlinks its socket through
         * the path it bound) and remove the directory, then report. */
        rc = kvd_test_daemon_stop(&d);
        cleanup_user_dir();
        ck_assert_msg(!failed[0], "%s", failed);
        ck_assert_msg(rc == 0, "daemon stop: %s", d.error);
}
END_TEST

/* Nothing answers: the error names each path tried and why it failed. */
START_TEST(test_connect_report_names_paths)
{
        struct kvd_test_daemon d;       /* only its temporary directory */
        char sock[sizeof(d.socket_path)], want[256], failed[512] = "";
        char *out;
        int status;

        ck_assert_msg(kvd_test_daemon_prepare(&d) == 0, "%s", d.error);
        ck_assert_int_eq(kvd_test_daemon_path(&d, "nobody.sock", sock, sizeof(sock)), 0);
        if (geteuid() == 0 && !system_socket_answers()) {
                uid_t uid = test_uid();

                snprintf(user_dir, sizeof(user_dir), "/tmp/kvdrive-%u", (unsigned)uid);
                snprintf(user_sock, sizeof(user_sock), "%s/kvdrived.sock", user_dir);
                cleanup_user_dir();
                snprintf(want, sizeof(want), "%s: No such file or directory", user_sock);
                run_trust(&(struct trust_case){ uid, false, want, -ENOENT, NULL }, "no daemon anywhere", failed,
                          sizeof(failed));
                ck_assert_msg(!failed[0], "%s", failed);
        } else {
                fprintf(stderr, "search part skipped: needs root and no daemon on %s\n", KVD_SYSTEM_SOCKET);
        }
        /* kvdrivectl prints the report. */
        setenv("KVDRIVE_SOCKET", sock, 1);
        {
                const char *args[] = { env_path("KVDRIVECTL"), "status", NULL };

                out = run_merged(args, &status);
        }
        unsetenv("KVDRIVE_SOCKET");
        ck_assert_int_eq(exit_code(status), 1);
        snprintf(want, sizeof(want), "$KVDRIVE_SOCKET=%s: No such file or directory", sock);
        ck_assert_msg(strstr(out, want), "kvdrivectl's error lacks '%s'", want);
        free(out);
        E2E_STOP(&d);
}
END_TEST

/* ---- 2. pools cost the daemon nothing at registration ------------------ */

static uint64_t vm_rss_kib(pid_t pid)
{
        char path[64], line[256];
        unsigned long long kib = 0;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        f = fopen(path, "re");
        ck_assert_msg(f, "cannot open %s", path);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %llu kB", &kib) == 1)
                        break;
        fclose(f);
        ck_assert_msg(kib > 0, "no VmRSS in %s", path);
        return kib;
}

static pid_t daemon_pid(const char *sock)
{
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        pid_t pid;

        E2E_ASSERT_RC(c, kvc_connect(sock, "pid-probe", &c), 0);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &st), 0);
        pid = (pid_t)st->pid;
        kvc_stats_free(st);
        kvc_disconnect(c);
        return pid;
}

START_TEST(test_sparse_pool_refused)
{
        enum { SLOTS = 131072, SLOT = 8192 };   /* 1 GiB */
        const uint64_t bytes = (uint64_t)SLOTS * SLOT;
        Kvdrive__RegisterPool rp = KVDRIVE__REGISTER_POOL__INIT;
        Kvdrive__Stats stq = KVDRIVE__STATS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT, sreq = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        struct kvd_test_daemon d;
        uint64_t rss0, rss1;
        char b[512];
        pid_t pid;
        int a, other, mfd;

        E2E_START(&d, "--max-pool-bytes-per-client", "4G",);
        pid = daemon_pid(d.socket_path);
        a = kvd_test_raw_connect(d.socket_path);
        other = kvd_test_raw_connect(d.socket_path);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(other, 0);
        ck_assert_int_eq(kvd_test_raw_hello(a, 1, NULL, NULL), 0);
        ck_assert_int_eq(kvd_test_raw_hello(other, 1, NULL, NULL), 0);
        rss0 = vm_rss_kib(pid);

        /* 1 GiB, sealed, not one page allocated: costs the client nothing. */
        mfd = memfd_create("sparse-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(ftruncate(mfd, (off_t)bytes), 0);
        ck_assert_int_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        rp.backend = KVDRIVE__BACKEND__BACKEND_MEMFD;
        rp.slot_count = SLOTS;
        rp.slot_bytes = SLOT;
        req.id = 2;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_POOL;
        req.register_pool = &rp;
        ck_assert_int_eq(kvd_test_raw_send(a, &req, mfd), 0);
        close(mfd);

        /* Another client is answered meanwhile. */
        sreq.id = 7;
        sreq.body_case = KVDRIVE__REQUEST__BODY_STATS;
        sreq.stats = &stq;
        ck_assert_int_eq(kvd_test_raw_call(other, &sreq, -1, &r), 0);
        ck_assert_msg(r->body_case == KVDRIVE__RESPONSE__BODY_STATS && r->id == 7, "other client got %s",
                      kvd_test_response_str(r, b, sizeof(b)));
        kvdrive__response__free_unpacked(r, NULL);

        /* The pool is refused, with the reason. */
        ck_assert_int_eq(kvd_test_raw_recv(a, KVD_TEST_RECV_TIMEOUT_MS, &r), 0);
        ck_assert_msg(kvd_test_error_code(r) == KVDRIVE__ERROR_CODE__E_BAD_ARG && r->id == 2,
                      "sparse pool: got %s, want E_BAD_ARG", kvd_test_response_str(r, b, sizeof(b)));
        ck_assert_msg(strstr(r->error->message, "not all allocated") && strstr(r->error->message, "fallocate"),
                      "the refusal does not say why: '%s'", r->error->message);
        kvdrive__response__free_unpacked(r, NULL);

        /* And it cost the daemon nothing like the pool's size. */
        rss1 = vm_rss_kib(pid);
        ck_assert_msg(rss1 < rss0 + (bytes >> 10) / 8, "daemon RSS grew from %llu to %llu KiB for a refused pool",
                      (unsigned long long)rss0, (unsigned long long)rss1);

        /* The session goes on. */
        sreq.id = 3;
        ck_assert_int_eq(kvd_test_raw_call(a, &sreq, -1, &r), 0);
        ck_assert_msg(r->body_case == KVDRIVE__RESPONSE__BODY_STATS, "after the refusal: %s",
                      kvd_test_response_str(r, b, sizeof(b)));
        kvdrive__response__free_unpacked(r, NULL);
        close(a);
        close(other);
        E2E_STOP(&d);
}
END_TEST

/* ---- 3. SIGHUP ---------------------------------------------------------- */

START_TEST(test_sighup_harmless)
{
        struct kvd_test_daemon d;
        int status = -1;

        E2E_START(&d, );
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        /* A default SIGHUP kills the process before it can run again: any
         * answer after kill() returned proves it survived. */
        assert_serves(d.socket_path);
        ck_assert_msg(kvd_test_daemon_alive(&d), "the daemon died of SIGHUP");
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGHUP), 0);
        assert_serves(d.socket_path);

        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGTERM), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&d, KVD_TEST_STOP_TIMEOUT_MS, &status), 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SIGTERM after SIGHUP: status 0x%x", status);
        ck_assert_msg(access(d.socket_path, F_OK) < 0, "the daemon left its socket behind");
        E2E_STOP(&d);
}
END_TEST

/* ---- 4. an empty message ------------------------------------------------ */

START_TEST(test_empty_message)
{
        Kvdrive__Stats stq = KVDRIVE__STATS__INIT;
        Kvdrive__Request sreq = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        struct kvd_test_daemon d;
        kvc_client *c = NULL;
        uint32_t last = 0;
        char b[512];
        int fd, fd2;

        E2E_START(&d, );
        fd = kvd_test_raw_connect(d.socket_path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(kvd_test_raw_hello(fd, 1, NULL, NULL), 0);
        ck_assert_int_eq(kvd_test_raw_send_bytes(fd, "", 0), 0);
        ck_assert_int_eq(kvd_test_raw_recv(fd, KVD_TEST_RECV_TIMEOUT_MS, &r), 0);
        ck_assert_msg(kvd_test_error_code(r) == KVDRIVE__ERROR_CODE__E_MALFORMED && r->id == 0,
                      "empty message: got %s, want E_MALFORMED", kvd_test_response_str(r, b, sizeof(b)));
        kvdrive__response__free_unpacked(r, NULL);
        /* The session is still there. */
        sreq.id = 2;
        sreq.body_case = KVDRIVE__REQUEST__BODY_STATS;
        sreq.stats = &stq;
        ck_assert_int_eq(kvd_test_raw_call(fd, &sreq, -1, &r), 0);
        ck_assert_msg(r->body_case == KVDRIVE__RESPONSE__BODY_STATS && r->id == 2, "after it: %s",
                      kvd_test_response_str(r, b, sizeof(b)));
        kvdrive__response__free_unpacked(r, NULL);

        /* EOF still ends a session, even right after an empty message. */
        fd2 = kvd_test_raw_connect(d.socket_path);
        ck_assert_int_ge(fd2, 0);
        ck_assert_int_eq(kvd_test_raw_hello(fd2, 1, NULL, NULL), 0);
        ck_assert_int_eq(kvd_test_raw_send_bytes(fd2, "", 0), 0);
        close(fd2);
        close(fd);
        E2E_ASSERT_RC(c, kvc_connect(d.socket_path, "counter", &c), 0);
        ck_assert_msg(e2e_wait_clients(c, 1, 20000, &last) == 0, "closed sessions linger: %u clients", last);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

/* ---- 5. a host tier over what the machine gives ------------------------ */

START_TEST(test_host_over_memavailable)
{
        struct kvd_test_daemon d;       /* only its temporary directory */
        char sock[sizeof(d.socket_path)];
        char *out;
        int status;

        ck_assert_msg(kvd_test_daemon_prepare(&d) == 0, "%s", d.error);
        ck_assert_int_eq(kvd_test_daemon_path(&d, "s.sock", sock, sizeof(sock)), 0);
        {
                /* 64 TiB: far over this machine's MemAvailable. */
                const char *args[] = { env_path("KVDRIVED"), "--foreground", "--socket", sock, "--host-bytes",
                                       "64T", NULL };

                out = run_merged(args, &status);
        }
        ck_assert_int_eq(exit_code(status), 1);
        ck_assert_msg(strstr(out, "host-bytes 67108864 MiB is more than this machine can give: MemAvailable is"),
                      "no message naming host-bytes and MemAvailable");
        ck_assert_msg(!strstr(out, "host tier: 67108864 MiB"), "the host tier was built anyway");
        ck_assert_msg(access(sock, F_OK) < 0, "a socket was left behind");
        free(out);
        E2E_STOP(&d);
}
END_TEST

/* ---- 6. a second daemon claims the socket first ------------------------ */

START_TEST(test_second_daemon_stops_before_host_tier)
{
        struct kvd_test_daemon d;
        char *out;
        int status;

        E2E_START(&d, );
        {
                const char *args[] = { env_path("KVDRIVED"), "--foreground", "--socket", d.socket_path,
                                       "--host-bytes", "512M", "--log-level", "debug", NULL };

                out = run_merged(args, &status);
        }
        ck_assert_int_eq(exit_code(status), 1);
        ck_assert_msg(strstr(out, "another kvdrived is serving"), "no 'another kvdrived is serving' error");
        ck_assert_msg(!strstr(out, "host tier:"), "the second daemon built its host tier first");
        free(out);
        assert_serves(d.socket_path);
        E2E_STOP(&d);
}
END_TEST

static Suite *hardening_suite(void)
{
        Suite *s = suite_create("hardening");
        TCase *tc = tcase_create("hardening");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_default_socket_trust);
        tcase_add_test(tc, test_connect_report_names_paths);
        tcase_add_test(tc, test_sparse_pool_refused);
        tcase_add_test(tc, test_sighup_harmless);
        tcase_add_test(tc, test_empty_message);
        tcase_add_test(tc, test_host_over_memavailable);
        tcase_add_test(tc, test_second_daemon_stops_before_host_tier);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(hardening_suite)

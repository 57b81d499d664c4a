/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier keeps its promises when its directory or file is misused:
 * a second daemon on the same directory, a missing directory, the file
 * truncated, unlinked or replaced under a running daemon, a file size limit
 * (ulimit -f). After damage no durable Put is acknowledged, the stats and
 * the log say so (once), nothing wrong is ever served, and a restart finds
 * every durable block that is still on disk.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "slot.h"
#include "ssd-common.h"

/* 16 MiB host tier (~1300 blocks of 8 KiB + header); 64 MiB SSD in 1 MiB
 * extents of 85 slots of 12 KiB. */
#define EXTENT_BYTES (1u << 20)
#define SLOT_BYTES (KVD_SLOT_HDR_BYTES + E2E_BLOCK_BYTES)
#define SSD_ARGS(dir) "--host-bytes", "16M", "--ssd-dir", (dir), "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M"

static struct kvc_key new_seq(void)
{
        struct kvc_key seq;

        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        return seq;
}

/* Runs a kvdrived that must refuse to start, to its end: its wait status,
 * and all it wrote (its log included) in *ret_out. */
static int run_refused(const char *const *args, char **ret_out)
{
        const char *argv[32] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", getenv("KVDRIVED"), "--foreground" };
        size_t n = 5;
        int status;

        for (; *args; args++)
                argv[n++] = *args;
        argv[n] = NULL;
        ck_assert_int_eq(kvd_test_run_capture(argv, 15000, ret_out, &status), 0);
        return status;
}

static void assert_exit_1(int status, const char *out)
{
        char why[64];

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "kvdrived %s, said: %s",
                      kvd_test_status_str(status, why, sizeof(why)), out);
}

/* ---- one daemon per directory ------------------------------------------ */

START_TEST(test_second_daemon_refused)
{
        struct kvd_test_daemon a, c;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = new_seq();
        char sock[200], pid[32], lock[200], held[32] = { 0 }, *out;
        int status;

        ssd_dir_make(&dir);
        E2E_START(&a, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, a.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 200, KVC_PUT_DURABLE, 1), 200);

        snprintf(sock, sizeof(sock), "%s.b.sock", dir.path);
        snprintf(pid, sizeof(pid), "pid %d", (int)a.pid);
        {
                const char *const args[] = { "--socket", sock, SSD_ARGS(dir.path), NULL };

                status = run_refused(args, &out);
        }
        assert_exit_1(status, out);
        ck_assert_msg(strstr(out, dir.path) && strstr(out, pid) && strstr(out, "in use"),
                      "no clear refusal naming %s and %s: %s", dir.path, pid, out);
        /* It stopped before it mapped and locked its host memory. */
        ck_assert_msg(!strstr(out, "host tier:"), "it set up its host tier first: %s", out);
        ck_assert_int_ne(access(sock, F_OK), 0);
        free(out);

        /* The first daemon goes on, its blocks whole. */
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 200, 1).ok, 200);
        ck_assert_int_eq(ssd_put(&sc, &seq, 200, 64, KVC_PUT_DURABLE, 1), 64);
        ssd_client_close(&sc);
        snprintf(lock, sizeof(lock), "%s/kvdrive.lock", dir.path);
        {
                int fd = open(lock, O_RDONLY | O_CLOEXEC);

                ck_assert_int_ge(fd, 0);
                ck_assert_int_gt(read(fd, held, sizeof(held) - 1), 0);
                close(fd);
        }
        ck_assert_int_eq(atoi(held), (int)a.pid);

        /* A killed daemon leaves its lock file behind: no obstacle. */
        ck_assert_int_eq(kvd_test_daemon_kill(&a, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&a, 10000, &status), 0);
        kvd_test_daemon_stop(&a);
        ck_assert_int_eq(access(lock, F_OK), 0);
        E2E_START(&c, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, c.socket_path, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 264, 1).ok, 264);
        ssd_client_close(&sc);
        E2E_STOP(&c);
        ssd_dir_remove(&dir);
}
END_TEST

/* The same directory twice would stripe two halves of the tier over one
 * file. */
START_TEST(test_same_directory_twice_refused)
{
        struct ssd_dir dir;
        char sock[200], dirs[300], *out;
        int status;

        ssd_dir_make(&dir);
        snprintf(sock, sizeof(sock), "%s.sock", dir.path);
        snprintf(dirs, sizeof(dirs), "%s,%s/.", dir.path, dir.path);
        {
                const char *const args[] = { "--socket", sock, SSD_ARGS(dirs), NULL };

                status = run_refused(args, &out);
        }
        assert_exit_1(status, out);
        ck_assert_msg(strstr(out, "named twice"), "no clear refusal: %s", out);
        ck_assert_int_ne(access(sock, F_OK), 0);
        free(out);
        ssd_dir_remove(&dir);
}
END_TEST

/* A mistyped mount point must not fill the root disk. */
START_TEST(test_missing_directory_refused)
{
        struct ssd_dir dir;
        char sock[200], missing[200], file[200], *out;
        int status, fd;

        ssd_dir_make(&dir);
        snprintf(sock, sizeof(sock), "%s.sock", dir.path);
        snprintf(missing, sizeof(missing), "%s/not-mounted", dir.path);
        {
                const char *const args[] = { "--socket", sock, SSD_ARGS(missing), NULL };

                status = run_refused(args, &out);
        }
        assert_exit_1(status, out);
        ck_assert_msg(strstr(out, missing), "the error does not name %s: %s", missing, out);
        ck_assert_int_ne(access(missing, F_OK), 0); /* not created */
        ck_assert_int_ne(access(sock, F_OK), 0);
        free(out);

        snprintf(file, sizeof(file), "%s/a-file", dir.path);
        fd = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        {
                const char *const args[] = { "--socket", sock, SSD_ARGS(file), NULL };

                status = run_refused(args, &out);
        }
        assert_exit_1(status, out);
        ck_assert_msg(strstr(out, file) && strstr(out, "is not a directory"), "no clear refusal: %s", out);
        free(out);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *damage_suite(void)
{
        Suite *s = suite_create("ssd-damage");
        TCase *tc = tcase_create("ssd-damage");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_second_daemon_refused);
        tcase_add_test(tc, test_same_directory_twice_refused);
        tcase_add_test(tc, test_missing_directory_refused);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(damage_suite)

/* SPDX-License-Identifier: MIT */
/*
 * A restart after a clean stop loads the SSD tier's index checkpoint
 * (tiers/ssd-checkpoint.h) instead of reading every slot header, and serves
 * every block byte for byte; a damaged checkpoint, one whose files changed
 * since (more writes, a SIGKILL, another ssd-bytes) is ignored: the slot
 * headers are scanned, every block is found and nothing stale is served.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-main.h"
#include "ssd-common.h"

/* Checkpoints only at a clean stop here (test-ssd-crash.c: while serving). */
#define SSD_ARGS(dir) "--host-bytes", "16M", "--ssd-dir", (dir), "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M", \
                      "--ssd-checkpoint-interval", "0"
#define FROM_CKPT "from the index checkpoint, 0 slot headers read"
#define SCANNED "by scanning"

static void start(struct kvd_test_daemon *d, const char *dir, const char *ssd_bytes)
{
        const struct kvd_test_opts opts = { .log_file = true };
        const char *const args[] = { SSD_ARGS(dir), "--ssd-bytes", ssd_bytes, NULL };
        int rc = kvd_test_daemon_start_opts(d, &opts, args);

        ck_assert_msg(rc == 0, "daemon start: %s", d->error);
}

/* How many lines of the daemon's log hold both a and b. */
static int logged(const struct kvd_test_daemon *d, const char *a, const char *b)
{
        char *log = ssd_daemon_log(d);
        int n = ssd_log_count(log, a, b);

        if (n == 0)
                fputs(log, stderr);
        free(log);
        return n;
}

static void ckpt_path(const struct ssd_dir *dir, char *buf, size_t n)
{
        snprintf(buf, n, "%s/kvdrive.ckpt", dir->path);
}

static bool ckpt_exists(const struct ssd_dir *dir)
{
        char path[256];

        ckpt_path(dir, path, sizeof(path));
        return access(path, F_OK) == 0;
}

static void copy_file(const char *from, const char *to)
{
        char buf[65536];
        ssize_t n;
        int in = open(from, O_RDONLY | O_CLOEXEC), out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        ck_assert_int_ge(in, 0);
        ck_assert_int_ge(out, 0);
        while ((n = read(in, buf, sizeof(buf))) > 0)
                ck_assert_int_eq(write(out, buf, (size_t)n), n);
        close(in);
        close(out);
}

/* Blocks [0, 600) on SSD: 300 durable, 300 written back at the stop. */
static void fill_and_stop(struct kvd_test_daemon *d, struct ssd_dir *dir, const struct kvc_key *seq)
{
        struct ssd_client sc;

        start(d, dir->path, "64M");
        ck_assert(logged(d, "recovered 0 blocks", SCANNED) == 1);
        ssd_client_open(&sc, d->socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, seq, 0, 300, KVC_PUT_DURABLE, 5), 300);
        ck_assert_int_eq(ssd_put(&sc, seq, 300, 300, 0, 5), 300);
        ssd_client_close(&sc);
        E2E_STOP(d);
        ck_assert(ckpt_exists(dir));
}

static void assert_all(struct kvd_test_daemon *d, const struct kvc_key *seq, uint32_t n)
{
        struct ssd_client sc;
        struct ssd_got got;

        ssd_client_open(&sc, d->socket_path, 64);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").blocks, n);
        got = ssd_get(&sc, seq, 0, n, 5);
        ck_assert_uint_eq(got.ok, n);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        ssd_client_close(&sc);
}

START_TEST(test_clean_stop_loads_checkpoint)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();

        ssd_dir_make(&dir);
        fill_and_stop(&d, &dir, &seq);
        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        ck_assert(!ckpt_exists(&dir)); /* read once: a crash from now on scans */
        assert_all(&d, &seq, 600);
        E2E_STOP(&d);
        /* And again: the second stop wrote a new one. */
        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        assert_all(&d, &seq, 600);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_damaged_checkpoint_scans)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();
        char path[256];
        struct stat st;

        ssd_dir_make(&dir);
        fill_and_stop(&d, &dir, &seq);
        ckpt_path(&dir, path, sizeof(path));
        ck_assert_int_eq(stat(path, &st), 0);
        ssd_flip_byte(path, st.st_size / 2);
        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "it is damaged"), 1);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        assert_all(&d, &seq, 600);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* A checkpoint put back after the disk moved on (more writes, deletes that
 * free slots for other blocks, a SIGKILL): ignored; the new blocks are
 * found and the deleted ones are not served. */
START_TEST(test_stale_checkpoint_after_crash)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct ssd_got got;
        char path[256], saved[300];
        int status;

        ssd_dir_make(&dir);
        fill_and_stop(&d, &dir, &seq);
        ckpt_path(&dir, path, sizeof(path));
        snprintf(saved, sizeof(saved), "%s/saved.ckpt", dir.path);
        copy_file(path, saved);

        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        ssd_client_open(&sc, d.socket_path, 64);
        for (uint32_t i = 0; i < 100; i++) {
                struct kvc_block_ref r;

                ssd_ref(&seq, i, 0, &r);
                ck_assert_int_eq(kvc_delete(sc.c, sc.ns, &r.key, 1, (int32_t)r.layer), 1);
        }
        usleep(200 * 1000); /* the wipes of their headers, in the background */
        ck_assert_int_eq(ssd_put(&sc, &seq, 600, 300, KVC_PUT_DURABLE, 5), 300);
        ssd_client_close(&sc);
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&d, 10000, &status), 0);
        kvd_test_daemon_stop(&d);
        ck_assert(!ckpt_exists(&dir));
        copy_file(saved, path);

        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "files changed"), 1);
        ck_assert_int_eq(logged(&d, "recovered 800 blocks", SCANNED), 1);
        ssd_client_open(&sc, d.socket_path, 64);
        got = ssd_get(&sc, &seq, 0, 100, 5);
        ck_assert_uint_eq(got.ok, 0);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        got = ssd_get(&sc, &seq, 100, 800, 5);
        ck_assert_uint_eq(got.ok, 800);
        ck_assert_uint_eq(got.wrong, 0);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* Deletes every sixth block of [0, 600) (no extent empties, so none is
 * given a new generation) and puts [600, 700) durably in their slots, then
 * SIGKILL. */
static void overwrite_and_kill(struct kvd_test_daemon *d, const struct kvc_key *seq)
{
        struct ssd_client sc;
        int status;

        ssd_client_open(&sc, d->socket_path, 64);
        for (uint32_t i = 0; i < 600; i += 6) {
                struct kvc_block_ref r;

                ssd_ref(seq, i, 0, &r);
                ck_assert_int_eq(kvc_delete(sc.c, sc.ns, &r.key, 1, (int32_t)r.layer), 1);
        }
        usleep(200 * 1000); /* the wipes of their headers, in the background */
        ck_assert_int_eq(ssd_put(&sc, seq, 600, 100, KVC_PUT_DURABLE, 5), 100);
        ssd_client_close(&sc);
        ck_assert_int_eq(kvd_test_daemon_kill(d, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(d, 10000, &status), 0);
        kvd_test_daemon_stop(d);
}

/* Even a stale checkpoint forced on the daemon (put back, the file's mtime
 * set back as it was) serves nothing stale: its records of blocks whose
 * slots now hold others are misses, as the read checks the slot header. */
START_TEST(test_forced_stale_checkpoint_serves_nothing_wrong)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct ssd_got got;
        struct timespec ts[2];
        char path[256], saved[300];
        struct stat st;

        ssd_dir_make(&dir);
        fill_and_stop(&d, &dir, &seq);
        ckpt_path(&dir, path, sizeof(path));
        snprintf(saved, sizeof(saved), "%s/saved.ckpt", dir.path);
        copy_file(path, saved);
        ck_assert_int_eq(stat(dir.file, &st), 0);
        start(&d, dir.path, "64M");
        overwrite_and_kill(&d, &seq);
        copy_file(saved, path);
        ts[0] = st.st_atim;
        ts[1] = st.st_mtim;
        ck_assert_int_eq(utimensat(AT_FDCWD, dir.file, ts, 0), 0);

        start(&d, dir.path, "64M");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        ssd_client_open(&sc, d.socket_path, 64);
        for (uint32_t i = 0; i < 600; i++) {
                got = ssd_get(&sc, &seq, i, 1, 5);
                ck_assert_uint_eq(got.ok, i % 6 ? 1 : 0);
                ck_assert_uint_eq(got.wrong, 0);
                ck_assert_uint_eq(got.other, 0);
        }
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_other_ssd_bytes_ignores_checkpoint)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();

        ssd_dir_make(&dir);
        fill_and_stop(&d, &dir, &seq);
        start(&d, dir.path, "96M");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "files changed"), 1);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        assert_all(&d, &seq, 600);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *restart_suite(void)
{
        Suite *s = suite_create("ssd-restart");
        TCase *tc = tcase_create("ssd-restart");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_clean_stop_loads_checkpoint);
        tcase_add_test(tc, test_damaged_checkpoint_scans);
        tcase_add_test(tc, test_stale_checkpoint_after_crash);
        tcase_add_test(tc, test_forced_stale_checkpoint_serves_nothing_wrong);
        tcase_add_test(tc, test_other_ssd_bytes_ignores_checkpoint);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(restart_suite)

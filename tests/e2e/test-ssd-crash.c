/* SPDX-License-Identifier: MIT */
/*
 * A restart after a crash loads the newest index checkpoint the SSD tier
 * took while serving (ssd-checkpoint-interval) and reads only the slot
 * headers of the extents its journal (kvdrive.dirty) says were written or
 * wiped since: every acknowledged durable block comes back byte for byte,
 * the deleted ones do not, and fewer headers are read than a scan reads. A
 * damaged journal or checkpoint means a scan of every slot header, never
 * wrong bytes (tiers/ssd-interval.c, tiers/ssd-journal.h).
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

#define FROM_CKPT "from the index checkpoint"
#define SCANNED "by scanning"
#define CKPT_DONE "index checkpoint", "written:"

/* step: blocks a checkpoint gathers per loop turn. */
static void start_step(struct kvd_test_daemon *d, const char *dir, const char *interval, const char *step)
{
        const struct kvd_test_opts opts = { .log_file = true };
        const char *const args[] = { "--host-bytes", "16M", "--ssd-dir", dir, "--ssd-bytes", "64M",
                                     "--ssd-extent-bytes", "1M", "--ssd-checkpoint-interval", interval,
                                     "--ssd-checkpoint-step", step, NULL };
        int rc = kvd_test_daemon_start_opts(d, &opts, args);

        ck_assert_msg(rc == 0, "daemon start: %s", d->error);
}

static void start(struct kvd_test_daemon *d, const char *dir, const char *interval)
{
        start_step(d, dir, interval, "16384");
}

static int logged(const struct kvd_test_daemon *d, const char *a, const char *b)
{
        char *log = ssd_daemon_log(d);
        int n = ssd_log_count(log, a, b);

        free(log);
        return n;
}

/* Waits until the log holds at least n lines with a and b. */
static void wait_logged(const struct kvd_test_daemon *d, const char *a, const char *b, int n)
{
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;

        while (logged(d, a, b) < n) {
                if (e2e_now_ms() > deadline) {
                        char *log = ssd_daemon_log(d);

                        fputs(log, stderr);
                        free(log);
                        ck_abort_msg("no %d log lines with \"%s\" and \"%s\"", n, a, b);
                }
                usleep(20 * 1000);
        }
}

/* Slot headers the last start read, from its "recovered" line. */
static long headers_read(const struct kvd_test_daemon *d)
{
        char *log = ssd_daemon_log(d), *p = strstr(log, "SSD tier: recovered "), *q;
        long n = -1;

        ck_assert_ptr_nonnull(p);
        p = strstr(p, " slot headers read)");
        ck_assert_ptr_nonnull(p);
        for (q = p; q > log && q[-1] != ' '; q--)
                ;
        n = strtol(q, NULL, 10);
        free(log);
        return n;
}

/* A checkpoint begun after now is on disk: two more done (one may have
 * begun before). */
static void wait_checkpoint(const struct kvd_test_daemon *d)
{
        wait_logged(d, CKPT_DONE, logged(d, CKPT_DONE) + 2);
}

/* Until no slot header of blocks [first, first + n) is left in the file:
 * their deletes' wipes, done in the background, have landed. */
static void wait_wiped(const struct ssd_dir *dir, const struct kvc_key *seq, uint32_t first, uint32_t n)
{
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;

        for (;;) {
                struct ssd_slot *slots = NULL;
                size_t count = ssd_scan_slots(dir->file, &slots);
                bool left = false;

                for (uint32_t i = first; i < first + n && !left; i++) {
                        struct kvc_block_ref r;

                        ssd_ref(seq, i, 0, &r);
                        for (size_t j = 0; j < count && !left; j++)
                                left = slots[j].key_hi == r.key.hi && slots[j].key_lo == r.key.lo &&
                                       slots[j].layer == r.layer;
                }
                free(slots);
                if (!left)
                        return;
                ck_assert_msg(e2e_now_ms() < deadline, "deleted blocks' headers still on disk");
                usleep(20 * 1000);
        }
}

static void delete_blocks(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n)
{
        for (uint32_t i = first; i < first + n; i++) {
                struct kvc_block_ref r;

                ssd_ref(seq, i, 0, &r);
                ck_assert_int_eq(kvc_delete(sc->c, sc->ns, &r.key, 1, (int32_t)r.layer), 1);
        }
}

static void crash(struct kvd_test_daemon *d)
{
        int status;

        ck_assert_int_eq(kvd_test_daemon_kill(d, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(d, 10000, &status), 0);
        kvd_test_daemon_stop(d);
}

/* Durable blocks [0, 600), an interval checkpoint of them, then [0, 100)
 * deleted and [600, 700) put durably, then SIGKILL. */
static void fill_checkpoint_crash(struct kvd_test_daemon *d, struct ssd_dir *dir, const struct kvc_key *seq)
{
        struct ssd_client sc;

        start(d, dir->path, "1");
        ssd_client_open(&sc, d->socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, seq, 0, 600, KVC_PUT_DURABLE, 5), 600);
        wait_checkpoint(d);
        delete_blocks(&sc, seq, 0, 100);
        ck_assert_int_eq(ssd_put(&sc, seq, 600, 100, KVC_PUT_DURABLE, 5), 100);
        wait_wiped(dir, seq, 0, 100);
        ssd_client_close(&sc);
        crash(d);
}

/* [0, gone) gone, [gone, end) byte for byte. */
static void assert_blocks(struct kvd_test_daemon *d, const struct kvc_key *seq, uint32_t gone, uint32_t end)
{
        struct ssd_client sc;
        struct ssd_got got;

        ssd_client_open(&sc, d->socket_path, 64);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").blocks, end - gone);
        got = ssd_get(&sc, seq, 0, gone, 5);
        ck_assert_uint_eq(got.ok, 0);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        got = ssd_get(&sc, seq, gone, end - gone, 5);
        ck_assert_uint_eq(got.ok, end - gone);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        ssd_client_close(&sc);
}

static void assert_after(struct kvd_test_daemon *d, const struct kvc_key *seq)
{
        assert_blocks(d, seq, 100, 700);
}

/* 4 KiB blocks in 8 KiB slots, 127 to a 1 MiB extent: 700 blocks fill 6
 * extents, and a scan reads 762 headers. The writes and wipes after a
 * checkpoint here touch at most 4 extents (the deletes' 1 or 2, the new
 * blocks' 1 or 2). */
#define MAX_DIRTY_HEADERS (4 * 127)

START_TEST(test_crash_after_interval_checkpoint)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        long read;

        ssd_dir_make(&dir);
        fill_checkpoint_crash(&d, &dir, &seq);
        /* No checkpoint while this one serves: what it writes and wipes
         * before its crash is found through the journal alone. */
        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        ck_assert_int_eq(logged(&d, "taken while serving", "extents written since it"), 1);
        ck_assert_int_le(headers_read(&d), MAX_DIRTY_HEADERS);
        assert_after(&d, &seq);
        ssd_client_open(&sc, d.socket_path, 64);
        delete_blocks(&sc, &seq, 100, 50);
        ck_assert_int_eq(ssd_put(&sc, &seq, 700, 50, KVC_PUT_DURABLE, 5), 50);
        wait_wiped(&dir, &seq, 100, 50);
        ssd_client_close(&sc);
        crash(&d);

        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        read = headers_read(&d);
        ck_assert_int_gt(read, 0);
        ck_assert_int_le(read, MAX_DIRTY_HEADERS);
        assert_blocks(&d, &seq, 150, 750);
        /* And once more, after a clean stop this time. */
        E2E_STOP(&d);
        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", "from the index checkpoint, 0 slot headers read"), 1);
        assert_blocks(&d, &seq, 150, 750);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* The same crash with the scan for reference: the header count is less. */
START_TEST(test_fewer_headers_than_a_scan)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();
        char path[256];
        long from_ckpt;

        ssd_dir_make(&dir);
        fill_checkpoint_crash(&d, &dir, &seq);
        /* A copy of the tier's state to recover twice: with and without. */
        start(&d, dir.path, "0");
        from_ckpt = headers_read(&d);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        assert_after(&d, &seq);
        crash(&d);
        snprintf(path, sizeof(path), "%s/kvdrive.ckpt", dir.path);
        ck_assert_int_ne(access(path, F_OK), 0); /* interval 0: read once, removed */
        start(&d, dir.path, "0");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        ck_assert_int_lt(from_ckpt, headers_read(&d));
        assert_after(&d, &seq);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static void flip_in(const struct ssd_dir *dir, const char *name, long long off)
{
        char path[256];

        snprintf(path, sizeof(path), "%s/%s", dir->path, name);
        ssd_flip_byte(path, off);
}

START_TEST(test_damaged_journal_scans)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();

        ssd_dir_make(&dir);
        fill_checkpoint_crash(&d, &dir, &seq);
        flip_in(&dir, "kvdrive.dirty", 10); /* in its header */
        start(&d, dir.path, "1");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "journal of the extents written since it is "
                                "damaged"), 1);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        assert_after(&d, &seq);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_missing_journal_scans)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();
        char path[256];

        ssd_dir_make(&dir);
        fill_checkpoint_crash(&d, &dir, &seq);
        snprintf(path, sizeof(path), "%s/kvdrive.dirty", dir.path);
        ck_assert_int_eq(unlink(path), 0);
        start(&d, dir.path, "1");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "no journal"), 1);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        assert_after(&d, &seq);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_damaged_interval_checkpoint_scans)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq();
        char path[256];
        struct stat st;

        ssd_dir_make(&dir);
        fill_checkpoint_crash(&d, &dir, &seq);
        snprintf(path, sizeof(path), "%s/kvdrive.ckpt", dir.path);
        ck_assert_int_eq(stat(path, &st), 0);
        ssd_flip_byte(path, st.st_size / 2);
        start(&d, dir.path, "1");
        ck_assert_int_eq(logged(&d, "ignoring the index checkpoint", "it is damaged"), 1);
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", SCANNED), 1);
        assert_after(&d, &seq);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* A clean stop's checkpoint, kept by the next start (a journal from then
 * on): a crash of that one reads only what it wrote or wiped. */
START_TEST(test_crash_after_clean_start)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();

        ssd_dir_make(&dir);
        start(&d, dir.path, "3600");
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 600, KVC_PUT_DURABLE, 5), 600);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", "from the index checkpoint, 0 slot headers read"), 1);
        ssd_client_open(&sc, d.socket_path, 64);
        delete_blocks(&sc, &seq, 0, 100);
        ck_assert_int_eq(ssd_put(&sc, &seq, 600, 100, KVC_PUT_DURABLE, 5), 100);
        wait_wiped(&dir, &seq, 0, 100);
        ssd_client_close(&sc);
        crash(&d);
        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "recovered 600 blocks", FROM_CKPT), 1);
        ck_assert_int_eq(logged(&d, "of a clean stop", "extents written since it"), 1);
        ck_assert_int_gt(headers_read(&d), 0);
        ck_assert_int_le(headers_read(&d), MAX_DIRTY_HEADERS);
        assert_after(&d, &seq);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* The most loop turns a checkpoint's gathering took, from the log. */
static long most_turns(const struct kvd_test_daemon *d)
{
        char *log = ssd_daemon_log(d), *p = log;
        long most = 0;

        while ((p = strstr(p, " turns), written in"))) {
                char *q = p;

                while (q > log && q[-1] != '(')
                        q--;
                long n = strtol(q, NULL, 10);

                most = n > most ? n : most;
                p++;
        }
        free(log);
        return most;
}

/* Checkpoints gathered one block a loop turn while blocks are deleted and
 * put: whatever the walk saw of a block that changed under it, the start
 * after a crash gives back every acknowledged durable block, byte for byte,
 * and none of the deleted. */
START_TEST(test_crash_during_stepped_gathers)
{
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        uint32_t gone = 0, end = 600;
        int n0;

        ssd_dir_make(&dir);
        start_step(&d, dir.path, "1", "1");
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, end, KVC_PUT_DURABLE, 5), (int)end);
        n0 = logged(&d, CKPT_DONE);
        while (logged(&d, CKPT_DONE) < n0 + 3) {
                ck_assert_msg(e2e_now_ms() < deadline, "no 3 checkpoints while blocks change");
                delete_blocks(&sc, &seq, gone, 10);
                gone += 10;
                ck_assert_int_eq(ssd_put(&sc, &seq, end, 10, KVC_PUT_DURABLE, 5), 10);
                end += 10;
        }
        wait_wiped(&dir, &seq, 0, gone);
        ck_assert_int_ge(most_turns(&d), 500); /* ~600 blocks, one a turn */
        ssd_client_close(&sc);
        crash(&d);

        start(&d, dir.path, "3600");
        ck_assert_int_eq(logged(&d, "blocks", FROM_CKPT), 1);
        ck_assert_int_eq(logged(&d, "taken while serving", "extents written since it"), 1);
        assert_blocks(&d, &seq, gone, end);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *crash_suite(void)
{
        Suite *s = suite_create("ssd-crash");
        TCase *tc = tcase_create("ssd-crash");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_crash_after_interval_checkpoint);
        tcase_add_test(tc, test_fewer_headers_than_a_scan);
        tcase_add_test(tc, test_damaged_journal_scans);
        tcase_add_test(tc, test_missing_journal_scans);
        tcase_add_test(tc, test_damaged_interval_checkpoint_scans);
        tcase_add_test(tc, test_crash_after_clean_start);
        tcase_add_test(tc, test_crash_during_stepped_gathers);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(crash_suite)

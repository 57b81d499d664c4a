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
#include <jansson.h>
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

static void start_opts(struct kvd_test_daemon *d, const struct kvd_test_opts *o, const char *dir)
{
        const char *const args[] = { SSD_ARGS(dir), NULL };
        int rc = kvd_test_daemon_start_opts(d, o, args);

        ck_assert_msg(rc == 0, "daemon start: %s", d->error);
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

/* Polls the SSD tier's stats until it says damaged (the daemon checks
 * about once a second), for up to 15 s. */
static struct kvc_tier_stats wait_damaged(struct ssd_client *sc)
{
        struct kvc_tier_stats t = { 0 };

        for (int i = 0; i < 300; i++) {
                t = ssd_tier_stats(sc, "ssd");
                if (t.damaged)
                        break;
                usleep(50 * 1000);
        }
        return t;
}

/* ---- one daemon per directory ------------------------------------------ */

START_TEST(test_second_daemon_refused)
{
        struct kvd_test_daemon a, c;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
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

/* ---- damage under a running daemon ------------------------------------- */

enum damage { CUT_TO_ZERO, CUT_IN_HALF, UNLINK, REPLACE };

static const char *const damage_word[] = { "truncated", "truncated", "unlinked", "replaced" };

/* Damages dir's file; returns the length it was cut to, or -1 if the file
 * at its path is no longer the tier's. */
static long long do_damage(const struct ssd_dir *dir, enum damage how)
{
        struct stat st;
        char tmp[200];
        long long cut;
        int fd;

        ck_assert_int_eq(stat(dir->file, &st), 0);
        switch (how) {
        case CUT_TO_ZERO:
                ck_assert_int_eq(truncate(dir->file, 0), 0);
                return 0;
        case CUT_IN_HALF:
                /* Mid-extent, mid-slot: that slot keeps its header, loses its payload. */
                cut = st.st_size / 2 + 3 * 4096 + 100;
                ck_assert_int_eq(truncate(dir->file, cut), 0);
                return cut;
        case UNLINK:
                ck_assert_int_eq(unlink(dir->file), 0);
                return -1;
        case REPLACE:
                snprintf(tmp, sizeof(tmp), "%s.new", dir->file);
                fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(ftruncate(fd, st.st_size), 0);
                close(fd);
                ck_assert_int_eq(rename(tmp, dir->file), 0);
                return -1;
        }
        return -1;
}

/* Whether block r's slot, and its extent's header, survived a cut at cut. */
static bool slot_on_disk(const struct ssd_slot *slots, size_t n, const struct kvc_block_ref *r, long long cut)
{
        for (size_t i = 0; i < n; i++) {
                if (slots[i].key_hi != r->key.hi || slots[i].key_lo != r->key.lo || slots[i].layer != r->layer)
                        continue;
                return cut >= 0 && slots[i].off + SLOT_BYTES <= cut &&
                       slots[i].off / EXTENT_BYTES * EXTENT_BYTES + KVD_EXTENT_HDR_BYTES <= cut;
        }
        ck_abort_msg("block not found in the file");
        return false;
}

static void damage_under_daemon(enum damage how)
{
        enum { PRE = 500, PLAIN = 100, POST = 128, MORE = 2500 };
        const struct kvd_test_opts opts = { .log_file = true };
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats before, t;
        struct ssd_put_st p;
        struct ssd_got got;
        struct ssd_slot *slots;
        size_t n_slots;
        uint32_t on_disk = 0;
        long long cut;
        char *log;

        ssd_dir_make(&dir);
        start_opts(&d, &opts, dir.path);
        ssd_client_open(&sc, d.socket_path, 64);
        /* Before the damage: PRE blocks durable, PLAIN in host memory only. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, PRE, KVC_PUT_DURABLE, 1), PRE);
        ck_assert_int_eq(ssd_put(&sc, &seq, PRE, PLAIN, 0, 1), PLAIN);
        before = ssd_tier_stats(&sc, "ssd");
        ck_assert(!before.damaged);
        ck_assert_str_eq(before.condition, "ok");
        n_slots = ssd_scan_slots(dir.file, &slots); /* where each block sits, for after the restart */
        ck_assert_uint_eq(n_slots, PRE);

        cut = do_damage(&dir, how);

        /* No durable Put is acknowledged any more: not for new blocks, not
         * for ones held in host memory only (not even as "exists"). */
        p = ssd_put_st(&sc, &seq, PRE + PLAIN, POST, KVC_PUT_DURABLE, 1);
        ck_assert_uint_eq(p.ok, 0);
        ck_assert_uint_eq(p.exists, 0);
        ck_assert_uint_eq(p.error, POST);
        p = ssd_put_st(&sc, &seq, PRE, PLAIN, KVC_PUT_DURABLE, 1);
        ck_assert_uint_eq(p.ok + p.exists, 0);
        ck_assert_uint_eq(p.error, PLAIN);
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert(t.damaged);
        ck_assert_msg(strncmp(t.condition, "damaged: ", 9) == 0 && strstr(t.condition, damage_word[how]),
                      "condition '%s'", t.condition);

        /* Plain Puts go on in host memory; making room drops blocks
         * (counted) instead of writing them to the damaged file. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 10000, MORE, 0, 1), MORE);
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_eq(t.writes, before.writes);
        ck_assert_uint_eq(t.demotions, before.demotions);
        ck_assert_uint_gt(t.dropped, before.dropped);

        /* What is served is right, or a miss. The unlinked or replaced
         * file is still open: every durable block is still served from it. */
        got = ssd_get(&sc, &seq, 0, PRE + PLAIN + POST, 1);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        if (how == UNLINK || how == REPLACE)
                ck_assert_uint_eq(ssd_get(&sc, &seq, 0, PRE, 1).ok, PRE);
        got = ssd_get(&sc, &seq, 10000, MORE, 1);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        ck_assert(ssd_tier_stats(&sc, "ssd").damaged);

        /* Logged once, with the path. */
        log = ssd_daemon_log(&d);
        fputs(log, stderr);
        ck_assert_int_eq(ssd_log_count(log, "SSD tier damaged", dir.file), 1);
        free(log);
        ssd_client_close(&sc);
        E2E_STOP(&d);

        /* After a restart: every block acknowledged durable before the
         * damage whose slot is still on disk is back, byte for byte; the
         * others are misses; nothing is wrong. */
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        for (uint32_t i = 0; i < PRE; i++) {
                struct kvc_block_ref r;
                bool there;

                ssd_ref(&seq, i, 0, &r);
                there = slot_on_disk(slots, n_slots, &r, cut);
                got = ssd_get(&sc, &seq, i, 1, 1);
                ck_assert_uint_eq(got.wrong, 0);
                ck_assert_uint_eq(got.other, 0);
                ck_assert_msg(!there || got.ok == 1, "block %u is on disk but not served", i);
                on_disk += there;
        }
        if (how == CUT_IN_HALF)
                ck_assert_uint_gt(on_disk, 100);
        got = ssd_get(&sc, &seq, PRE, PLAIN + POST, 1);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        /* A restart (the file is the tier's again) makes it whole. */
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert(!t.damaged);
        ck_assert_int_eq(ssd_put(&sc, &seq, 20000, 64, KVC_PUT_DURABLE, 2), 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 20000, 64, 2).ok, 64);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        free(slots);
        ssd_dir_remove(&dir);
}

START_TEST(test_cut_to_zero_under_daemon)
{
        damage_under_daemon(CUT_TO_ZERO);
}
END_TEST

START_TEST(test_cut_in_half_under_daemon)
{
        damage_under_daemon(CUT_IN_HALF);
}
END_TEST

START_TEST(test_unlinked_under_daemon)
{
        damage_under_daemon(UNLINK);
}
END_TEST

START_TEST(test_replaced_under_daemon)
{
        damage_under_daemon(REPLACE);
}
END_TEST

/* kvdrivectl stats says so too, in text and in JSON. */
static void assert_ctl_says_damaged(const char *sock, const char *word)
{
        const char *ctl = getenv("KVDRIVECTL");
        const char *text[] = { ctl, "--socket", sock, "stats", NULL };
        const char *js[] = { ctl, "--socket", sock, "stats", "--json", NULL };
        json_t *root, *ssd;
        json_error_t jerr;
        char *out;
        int status;

        ck_assert_msg(ctl && *ctl, "$KVDRIVECTL is not set (run the tests with meson test)");
        ck_assert_int_eq(kvd_test_run_capture(text, 20000, &out, &status), 0);
        ck_assert_msg(status == 0 && strstr(out, "DAMAGED") && strstr(out, word), "kvdrivectl stats: %s", out);
        free(out);
        ck_assert_int_eq(kvd_test_run_capture(js, 20000, &out, &status), 0);
        ck_assert_int_eq(status, 0);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "stats --json: %s: %s", jerr.text, out);
        ssd = json_object_get(json_object_get(root, "tiers"), "ssd");
        ck_assert_msg(json_is_true(json_object_get(ssd, "damaged")), "stats --json: %s", out);
        ck_assert_msg(strstr(json_string_value(json_object_get(ssd, "condition")), word), "stats --json: %s", out);
        json_decref(root);
        free(out);
}

/* Found without any I/O, by the daemon's periodic check: an unlinked
 * file, and one cut and grown back to its length (its extent headers gone). */
static void damage_found_idle(bool regrow)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats t;
        struct stat st;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 300, KVC_PUT_DURABLE, 3), 300);
        ck_assert(!ssd_tier_stats(&sc, "ssd").damaged);
        if (regrow) {
                ck_assert_int_eq(stat(dir.file, &st), 0);
                ck_assert_int_eq(truncate(dir.file, 0), 0);
                ck_assert_int_eq(truncate(dir.file, st.st_size), 0);
        } else {
                ck_assert_int_eq(unlink(dir.file), 0);
        }
        t = wait_damaged(&sc);
        ck_assert_msg(t.damaged, "not found damaged; condition '%s'", t.condition);
        ck_assert_msg(strstr(t.condition, regrow ? "lost the header" : "unlinked"), "condition '%s'", t.condition);
        assert_ctl_says_damaged(d.socket_path, regrow ? "lost the header" : "unlinked");
        ck_assert_uint_eq(ssd_put_st(&sc, &seq, 300, 64, KVC_PUT_DURABLE, 3).error, 64);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}

START_TEST(test_unlink_found_idle)
{
        damage_found_idle(false);
}
END_TEST

START_TEST(test_cut_and_regrown_found_idle)
{
        damage_found_idle(true);
}
END_TEST

/* Cut to zero and grown back to its length, the file has its size but not
 * its extent headers: the very next durable Put, into an extent already in
 * use (no new space asked for), must not be acknowledged. */
START_TEST(test_cut_and_regrown_durable_refused)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct ssd_put_st p;
        struct stat st;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* 300 slots: 3 full extents and 45 of the 4th's 85. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 300, KVC_PUT_DURABLE, 6), 300);
        ck_assert_int_eq(stat(dir.file, &st), 0);
        ck_assert_int_eq(truncate(dir.file, 0), 0);
        ck_assert_int_eq(truncate(dir.file, st.st_size), 0);
        p = ssd_put_st(&sc, &seq, 300, 16, KVC_PUT_DURABLE, 6);
        ck_assert_uint_eq(p.ok, 0);
        ck_assert_uint_eq(p.error, 16);
        ck_assert(ssd_tier_stats(&sc, "ssd").damaged);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* With --ssd-write-through, a damaged tier takes no more writes: Puts are
 * kept in host memory and acknowledged, as without an SSD tier (docs). */
START_TEST(test_write_through_when_damaged)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats t;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), "--ssd-write-through", );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 64, 0, 7), 64);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").writes, 64);
        ck_assert_int_eq(unlink(dir.file), 0);
        t = wait_damaged(&sc);
        ck_assert(t.damaged);
        ck_assert_int_eq(ssd_put(&sc, &seq, 64, 64, 0, 7), 64);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").writes, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 128, 7).ok, 128);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* ---- a file size limit (ulimit -f) -------------------------------------- */

/* A fresh tier under a 4 MiB limit: fallocate past it fails with EFBIG (and
 * SIGXFSZ, which used to kill the daemon): the tier caps itself, "full". */
START_TEST(test_file_size_limit_caps_the_tier)
{
        const struct kvd_test_opts opts = { .fsize_limit = 4u << 20 };
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats t;
        struct ssd_got got;

        ssd_dir_make(&dir);
        start_opts(&d, &opts, dir.path);
        ssd_client_open(&sc, d.socket_path, 64);
        /* ~36 MiB of slots through 16 MiB of host memory: demotions run
         * into the limit. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 3000, 0, 4), 3000);
        ck_assert(kvd_test_daemon_alive(&d));
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert(t.full);
        ck_assert(!t.damaged);
        ck_assert_msg(strstr(t.condition, "File too large"), "condition '%s'", t.condition);
        ck_assert_uint_le(t.capacity_bytes, 4u << 20);
        ck_assert_uint_gt(t.demotions, 0);
        /* Durable Puts still land (the full tier evicts its oldest). */
        ck_assert_int_eq(ssd_put(&sc, &seq, 3000, 64, KVC_PUT_DURABLE, 4), 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 2900, 164, 4).ok, 164);
        got = ssd_get(&sc, &seq, 0, 3064, 4);
        ck_assert_uint_eq(got.wrong, 0);
        ck_assert_uint_eq(got.other, 0);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* A file already larger than the limit (an earlier run had none): writes
 * into its space past the limit fail with EFBIG. Each is an error item,
 * never a crash; the tier says why and stops writing; what it holds is
 * still served. */
START_TEST(test_file_size_limit_write_fails)
{
        const struct kvd_test_opts opts = { .fsize_limit = 4u << 20 };
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats t;
        struct ssd_put_st p;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* 1000 slots: 11 full extents and 65 of the 12th's 85 (~12 MiB). */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 1000, KVC_PUT_DURABLE, 5), 1000);
        ssd_client_close(&sc);
        E2E_STOP(&d);

        start_opts(&d, &opts, dir.path);
        ssd_client_open(&sc, d.socket_path, 64);
        /* 16 more: all into the 12th extent's free slots, past the limit. */
        p = ssd_put_st(&sc, &seq, 1000, 16, KVC_PUT_DURABLE, 5);
        ck_assert(kvd_test_daemon_alive(&d));
        ck_assert_uint_eq(p.ok, 0);
        ck_assert_uint_eq(p.error, 16);
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert(t.damaged);
        ck_assert_msg(strstr(t.condition, "File too large"), "condition '%s'", t.condition);
        ck_assert_uint_ge(t.write_errors, 1);
        ck_assert_uint_eq(ssd_put_st(&sc, &seq, 1016, 64, KVC_PUT_DURABLE, 5).error, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 1000, 5).ok, 1000);
        ssd_client_close(&sc);
        E2E_STOP(&d);
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
        tcase_add_test(tc, test_cut_to_zero_under_daemon);
        tcase_add_test(tc, test_cut_in_half_under_daemon);
        tcase_add_test(tc, test_unlinked_under_daemon);
        tcase_add_test(tc, test_replaced_under_daemon);
        tcase_add_test(tc, test_unlink_found_idle);
        tcase_add_test(tc, test_cut_and_regrown_found_idle);
        tcase_add_test(tc, test_cut_and_regrown_durable_refused);
        tcase_add_test(tc, test_write_through_when_damaged);
        tcase_add_test(tc, test_file_size_limit_caps_the_tier);
        tcase_add_test(tc, test_file_size_limit_write_fails);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(damage_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Compression of the SSD tier (ssd-codec): blocks are stored encoded (the
 * slot header says how, and its crc covers the encoded bytes), come back
 * decoded within the codec's error (bit-exact for values the codec holds
 * exactly), survive a restart, are a miss when damaged, stay raw where the
 * codec cannot take them, and a codec the tier cannot use is refused.
 */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "codec.h"
#include "kernels.h"
#include "slot.h"
#include "ssd-common.h"

/* 64 KiB f16 blocks: 4 heads x 64 channels x 64 tokens, K and V. */
static const struct kvc_geometry GEOM = { 1, 4, 64, KVC_DTYPE_F16, 64 };
#define RAW_BYTES (2u * 4 * 64 * 64 * 2)
#define MAX_BLOCK (256u << 10)
#define BATCH 32u

#define ARGS(dir, codec)                                                                                   \
        "--host-bytes", "16M", "--ssd-dir", (dir), "--ssd-bytes", "96M", "--ssd-extent-bytes", "4M",       \
                "--ssd-codec", (codec)

struct cc {
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        uint32_t elems;         /* 16-bit words per block */
        struct kvc_key seq;
};

static void cc_open(struct cc *x, const char *sock, const struct kvc_geometry *g, const struct kvc_key *seq)
{
        memset(x, 0, sizeof(*x));
        ck_assert_int_eq(kvc_connect(sock, "codec-test", &x->c), 0);
        E2E_ASSERT_RC(x->c, kvc_register_namespace(x->c, "e2e-codec", g, &x->ns, NULL), 0);
        x->elems = 2 * g->kv_heads * g->head_dim * g->block_tokens * (g->dtype == KVC_DTYPE_F32 ? 2 : 1);
        ck_assert_uint_le(x->elems * 2, MAX_BLOCK);
        E2E_ASSERT_RC(x->c, kvc_pool_create(x->c, BATCH, x->elems * 2, &x->p), 0);
        x->seq = *seq;
}

static void cc_close(struct cc *x)
{
        x->p = kvc_pool_free(x->p);
        x->c = kvc_disconnect(x->c);
}

static uint64_t mix(uint64_t x)
{
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ULL;
        return x ^ (x >> 33);
}

/* Block i's f16 elements. exact: values e4m3 holds exactly (any finite
 * byte), else uniform in [-1, 1). */
static void fill(uint16_t *e, uint32_t n, uint32_t i, bool exact)
{
        for (uint32_t j = 0; j < n; j++) {
                uint64_t r = mix((uint64_t)i << 32 | j);

                if (exact) {
                        uint8_t b = (uint8_t)r;

                        if ((b & 0x7f) == 0x7f)
                                b = 0x10; /* not NaN */
                        e[j] = kvk_f32_to_f16(kvd_e4m3_to_f32(b));
                } else {
                        e[j] = kvk_f32_to_f16((float)((double)(r >> 11) / (double)(1ull << 53) * 2.0 - 1.0));
                }
        }
}

static void ref(const struct cc *x, uint32_t i, uint32_t slot, struct kvc_block_ref *r)
{
        *r = (struct kvc_block_ref){ .layer = 0, .slot = slot };
        kvc_key_private(&x->seq, i, &r->key);
}

/* Blocks [first, first + n), durably. */
static void put(struct cc *x, uint32_t first, uint32_t n, bool exact)
{
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH];
        uint64_t id;

        for (uint32_t at = 0; at < n; at += BATCH) {
                uint32_t k = n - at < BATCH ? n - at : BATCH;

                for (uint32_t j = 0; j < k; j++) {
                        ref(x, first + at + j, j, &refs[j]);
                        fill(kvc_pool_slot(x->p, j), x->elems, first + at + j, exact);
                }
                E2E_ASSERT_RC(x->c, kvc_put_submit_flags(x->c, x->ns, x->p, refs, k, KVC_PUT_DURABLE, st, &id), 0);
                E2E_ASSERT_RC(x->c, kvc_wait(x->c, id, 60000), (int)k);
        }
}

struct got {
        uint32_t ok, miss, other;
        double max_err;         /* largest |decoded - stored| over the blocks that came */
};

static struct got get(struct cc *x, uint32_t first, uint32_t n, bool exact)
{
        static uint16_t want[MAX_BLOCK / 2];
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH];
        struct got g = { 0 };

        for (uint32_t at = 0; at < n; at += BATCH) {
                uint32_t k = n - at < BATCH ? n - at : BATCH;

                for (uint32_t j = 0; j < k; j++)
                        ref(x, first + at + j, j, &refs[j]);
                E2E_ASSERT_RC(x->c, kvc_get(x->c, x->ns, x->p, refs, k, st) >= 0 ? 0 : -1, 0);
                for (uint32_t j = 0; j < k; j++) {
                        const uint16_t *e = kvc_pool_slot(x->p, j);

                        if (st[j] == KVC_ITEM_MISS) {
                                g.miss++;
                                continue;
                        }
                        if (st[j] != KVC_ITEM_OK) {
                                g.other++;
                                continue;
                        }
                        g.ok++;
                        fill(want, x->elems, first + at + j, exact);
                        for (uint32_t m = 0; m < x->elems; m++) {
                                double d = fabs((double)kvk_f16_to_f32(e[m]) - (double)kvk_f16_to_f32(want[m]));

                                g.max_err = d > g.max_err || d != d ? d : g.max_err;
                                if (d != d)
                                        g.max_err = INFINITY;
                        }
                }
        }
        return g;
}

static struct kvc_tier_stats tier(struct cc *x)
{
        struct kvc_tier_stats t = { 0 };
        struct kvc_stats *s = NULL;
        const struct kvc_tier_stats *p;

        E2E_ASSERT_RC(x->c, kvc_stats_get(x->c, &s), 0);
        p = e2e_tier(s, "ssd");
        if (p)
                t = *p;
        kvc_stats_free(s);
        return t;
}

/* Block i's slot header as on disk. */
static struct kvd_slot_header slot_of(const struct ssd_dir *dir, const struct cc *x, uint32_t i, long long *ret_off)
{
        struct kvd_slot_header h;
        struct kvc_block_ref r;
        long long off;
        int fd;

        ref(x, i, 0, &r);
        off = ssd_find_slot(dir->file, &r.key, 0);
        ck_assert_int_ge(off, 0);
        fd = open(dir->file, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, &h, sizeof(h), off), (ssize_t)sizeof(h));
        close(fd);
        if (ret_off)
                *ret_off = off;
        return h;
}

/* A fresh SSD directory, a daemon on it storing with codec, and a client
 * with a namespace of geometry g. */
struct rig {
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq;
        struct cc x;
};

static void rig_restart(struct rig *r, const char *codec, const struct kvc_geometry *g)
{
        E2E_START(&r->d, ARGS(r->dir.path, codec), );
        cc_open(&r->x, r->d.socket_path, g, &r->seq);
}

static void rig_start(struct rig *r, const char *codec, const struct kvc_geometry *g)
{
        ck_assert_int_eq(kvc_key_sequence_new(&r->seq), 0);
        ssd_dir_make(&r->dir);
        rig_restart(r, codec, g);
}

static void rig_stop(struct rig *r)
{
        cc_close(&r->x);
        E2E_STOP(&r->d);
}

static void rig_end(struct rig *r)
{
        rig_stop(r);
        ssd_dir_remove(&r->dir);
}

/* fp8 stores half the bytes; values e4m3 holds come back bit for bit, from
 * SSD (more blocks than the host tier holds). */
START_TEST(test_fp8_round_trip)
{
        struct kvc_tier_stats t;
        struct kvd_slot_header h;
        struct got g;
        struct rig r;

        rig_start(&r, "fp8", &GEOM);
        put(&r.x, 0, 600, true);
        g = get(&r.x, 0, 600, true);
        ck_assert_uint_eq(g.ok, 600);
        ck_assert_msg(g.max_err == 0, "fp8 changed a value it holds exactly (by %g)", g.max_err);
        t = tier(&r.x);
        ck_assert_uint_gt(t.promotions, 100);
        ck_assert_uint_eq(t.crc_failures, 0);
        h = slot_of(&r.dir, &r.x, 0, NULL);
        ck_assert_uint_eq(h.codec, KVD_CODEC_ID_FP8);
        ck_assert_uint_eq(h.payload_len, KVD_CODEC_HEADER_BYTES + RAW_BYTES / 2);
        /* The tier's space is the encoded slots': 4 KiB header + 36 KiB each. */
        ck_assert_uint_eq(t.used_bytes, 600u * (40u << 10));
        rig_end(&r);
}
END_TEST

/* int8 and int4 (per-channel K, per-token V scales): every value within
 * its group's quantisation step. */
START_TEST(test_int_codecs_bounded_error)
{
        static const struct {
                const char *name;
                enum kvd_codec id;
                double tol;
        } cases[] = { { "int8", KVD_CODEC_ID_INT8, 2.0 / 255 }, { "int4", KVD_CODEC_ID_INT4, 2.0 / 15 } };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct got g;
                struct rig r;

                rig_start(&r, cases[i].name, &GEOM);
                put(&r.x, 0, 400, false);
                g = get(&r.x, 0, 400, false);
                ck_assert_uint_eq(g.ok, 400);
                ck_assert_msg(g.max_err > 0 && g.max_err <= cases[i].tol, "%s: max error %g (step %g)",
                              cases[i].name, g.max_err, cases[i].tol);
                ck_assert_uint_eq(slot_of(&r.dir, &r.x, 0, NULL).codec, cases[i].id);
                ck_assert_uint_eq(tier(&r.x).crc_failures, 0);
                rig_end(&r);
        }
}
END_TEST

static void assert_all_back(struct rig *r)
{
        struct got g;

        rig_restart(r, "fp8", &GEOM);
        ck_assert_uint_eq(tier(&r->x).blocks, 100);
        g = get(&r->x, 0, 100, true);
        ck_assert_uint_eq(g.ok, 100);
        ck_assert(g.max_err == 0);
        ck_assert_uint_eq(tier(&r->x).promotions, 100);
        rig_stop(r);
}

/* Encoded blocks come back after a crash (the slot headers are scanned)
 * and after a clean stop (from the checkpoint) with the same codec; with
 * another one they are forgotten (their slots are of another size), never
 * served wrong. */
START_TEST(test_restart)
{
        struct rig r;

        rig_start(&r, "fp8", &GEOM);
        put(&r.x, 0, 100, true); /* durable: on SSD once acknowledged */
        cc_close(&r.x);
        ck_assert_int_eq(kvd_test_daemon_kill(&r.d, SIGKILL), 0);
        kvd_test_daemon_stop(&r.d);
        assert_all_back(&r);
        assert_all_back(&r);

        rig_restart(&r, "none", &GEOM);
        ck_assert_uint_eq(tier(&r.x).blocks, 0);
        ck_assert_uint_eq(get(&r.x, 0, 100, true).miss, 100);
        rig_end(&r);
}
END_TEST

static int logged(const struct kvd_test_daemon *d, const char *a, const char *b)
{
        char *log = ssd_daemon_log(d);
        int n = ssd_log_count(log, a, b);

        free(log);
        return n;
}

/* Encoded blocks, an interval checkpoint of them, more written after it,
 * then SIGKILL: the next start loads the checkpoint (encoded slot sizes,
 * codec) and reads the slot headers of the journaled extents only; every
 * block comes back bit for bit. */
START_TEST(test_crash_after_interval_checkpoint)
{
        const struct kvd_test_opts opts = { .log_file = true };
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;
        struct got g;
        struct rig r;

        ck_assert_int_eq(kvc_key_sequence_new(&r.seq), 0);
        ssd_dir_make(&r.dir);
        {
                const char *const args[] = { ARGS(r.dir.path, "fp8"), "--ssd-checkpoint-interval", "1", NULL };

                ck_assert_msg(kvd_test_daemon_start_opts(&r.d, &opts, args) == 0, "start: %s", r.d.error);
        }
        cc_open(&r.x, r.d.socket_path, &GEOM, &r.seq);
        put(&r.x, 0, 100, true);
        while (logged(&r.d, "index checkpoint", "written: 100 blocks") == 0) {
                ck_assert_msg(e2e_now_ms() < deadline, "no checkpoint of the 100 blocks");
                usleep(20 * 1000);
        }
        put(&r.x, 100, 60, true);
        cc_close(&r.x);
        ck_assert_int_eq(kvd_test_daemon_kill(&r.d, SIGKILL), 0);
        kvd_test_daemon_stop(&r.d);
        {
                const char *const args[] = { ARGS(r.dir.path, "fp8"), NULL };

                ck_assert_msg(kvd_test_daemon_start_opts(&r.d, &opts, args) == 0, "start: %s", r.d.error);
        }
        ck_assert_int_eq(logged(&r.d, "recovered 160 blocks", "from the index checkpoint"), 1);
        ck_assert_int_eq(logged(&r.d, "taken while serving", "extents written since it"), 1);
        cc_open(&r.x, r.d.socket_path, &GEOM, &r.seq);
        ck_assert_uint_eq(tier(&r.x).blocks, 160);
        g = get(&r.x, 0, 160, true);
        ck_assert_uint_eq(g.ok, 160);
        ck_assert_msg(g.max_err == 0, "a block came back changed (by %g)", g.max_err);
        ck_assert_uint_eq(tier(&r.x).crc_failures, 0);
        rig_end(&r);
}
END_TEST

/* A byte flipped in an encoded payload makes that block a miss (its crc
 * covers the encoded bytes); the others still come. */
START_TEST(test_damage_is_a_miss)
{
        struct got g;
        struct rig r;
        long long off;

        rig_start(&r, "int4", &GEOM);
        put(&r.x, 0, 40, false);
        rig_stop(&r);
        (void)slot_of(&r.dir, &r.x, 7, &off);
        ssd_flip_byte(r.dir.file, off + KVD_SLOT_HDR_BYTES + 5000);

        rig_restart(&r, "int4", &GEOM);
        g = get(&r.x, 0, 40, false);
        ck_assert_uint_eq(g.ok, 39);
        ck_assert_uint_eq(g.miss, 1);
        ck_assert_uint_eq(g.other, 0);
        ck_assert_uint_ge(tier(&r.x).crc_failures, 1);
        rig_end(&r);
}
END_TEST

/* A namespace the codec cannot take (f32) is stored raw, bit for bit;
 * blocks of 256 KiB, many in flight, so their checksums are taken by the
 * tier's threads. */
START_TEST(test_raw_where_codec_cannot)
{
        const struct kvc_geometry g32 = { 1, 4, 64, KVC_DTYPE_F32, 128 }; /* 256 KiB */
        struct got g;
        struct rig r;

        rig_start(&r, "fp8", &g32);
        put(&r.x, 0, 200, false); /* 50 MiB: most of it leaves the 16 MiB host tier */
        g = get(&r.x, 0, 200, false);
        ck_assert_uint_eq(g.ok, 200);
        ck_assert_uint_gt(tier(&r.x).promotions, 100);
        ck_assert(g.max_err == 0);
        ck_assert_uint_eq(slot_of(&r.dir, &r.x, 0, NULL).codec, KVD_CODEC_ID_NONE);
        rig_end(&r);
}
END_TEST

/* zstd's length varies and an SSD slot's does not: refused, with a reason,
 * before anything is created. */
START_TEST(test_zstd_refused)
{
        struct ssd_dir dir;
        const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", getenv("KVDRIVED"), "--foreground",
                               "--socket", NULL, "--metrics-listen", "off", ARGS(dir.path, "zstd"), NULL };
        char sock[192], *out = NULL;
        int status;

        ssd_dir_make(&dir);
        snprintf(sock, sizeof(sock), "%s/s.sock", dir.path);
        argv[6] = sock;
        ck_assert_int_eq(kvd_test_run_capture(argv, 15000, &out, &status), 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "said: %s", out);
        ck_assert_msg(strstr(out, "ssd-codec=zstd"), "said: %s", out);
        ck_assert_int_ne(access(sock, F_OK), 0);
        free(out);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *codec_suite(void)
{
        Suite *s = suite_create("ssd-codec");
        TCase *tc = tcase_create("codec");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_fp8_round_trip);
        tcase_add_test(tc, test_int_codecs_bounded_error);
        tcase_add_test(tc, test_restart);
        tcase_add_test(tc, test_crash_after_interval_checkpoint);
        tcase_add_test(tc, test_damage_is_a_miss);
        tcase_add_test(tc, test_raw_where_codec_cannot);
        tcase_add_test(tc, test_zstd_refused);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(codec_suite)

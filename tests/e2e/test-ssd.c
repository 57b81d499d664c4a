/* SPDX-License-Identifier: MIT */
/*
 * SSD tier end to end: blocks move host <-> SSD and come back byte for
 * byte; they survive a restart and a SIGKILL (those acknowledged durable);
 * a corrupt or torn slot is never served; space freed by deletes is reused
 * safely; admission, write-through and prefetch do what they say. (The
 * whole file damaged, the directory misused: test-ssd-damage.c.)
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

/* 16 MiB host tier: 12 KiB pages (8 KiB block + 4 KiB slot header) -> ~1300
 * blocks; 64 MiB SSD in 1 MiB extents. */
#define SSD_ARGS(dir) "--host-bytes", "16M", "--ssd-dir", (dir), "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M"

START_TEST(test_demote_and_promote)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats host, ssd;
        struct ssd_got got;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* 3000 blocks: more than twice what host memory holds. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 3000, 0, 1), 3000);
        got = ssd_get(&sc, &seq, 0, 3000, 1);
        ck_assert_uint_eq(got.ok, 3000);
        ck_assert_uint_eq(got.wrong, 0);
        host = ssd_tier_stats(&sc, "host");
        ssd = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_gt(host.evictions, 0);
        ck_assert_uint_gt(ssd.demotions, 1000);
        ck_assert_uint_gt(ssd.promotions, 1000);
        ck_assert_uint_eq(ssd.hits, ssd.promotions);
        ck_assert_uint_eq(ssd.dropped, 0);
        ck_assert_uint_eq(ssd.crc_failures, 0);
        ck_assert_str_eq(ssd.condition, "ok");
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* More Get items in flight than host memory has pages: the ones that find
 * every page busy (pinned by copies, loading from SSD) wait for a page
 * instead of failing with "no space" — found by the decode sweep at 128K
 * with two clients. Every block arrives, byte for byte. */
START_TEST(test_gets_beyond_host_pages_wait)
{
        enum { N = 2000, PER = 500 };   /* host holds ~1300 blocks */
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_block_ref *refs = calloc(N, sizeof(*refs));
        uint8_t *st = malloc(N), *want = malloc(E2E_BLOCK_BYTES);
        uint64_t ids[N / PER];

        ck_assert_ptr_nonnull(refs);
        ck_assert_ptr_nonnull(st);
        ck_assert_ptr_nonnull(want);
        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, N);
        /* durable: every block clean on SSD, so no demotion is in flight to wait on */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 3000, KVC_PUT_DURABLE, 7), 3000);
        memset(st, 0xff, N);
        for (uint32_t i = 0; i < N; i++)
                ssd_ref(&seq, i, i, &refs[i]);
        for (uint32_t r = 0; r < N / PER; r++)
                E2E_ASSERT_RC(sc.c, kvc_get_submit(sc.c, sc.ns, sc.p, refs + r * PER, PER, st + r * PER, &ids[r]), 0);
        for (uint32_t r = 0; r < N / PER; r++)
                E2E_ASSERT_RC(sc.c, kvc_wait(sc.c, ids[r], 60000), PER);
        for (uint32_t i = 0; i < N; i++) {
                ck_assert_msg(st[i] == KVC_ITEM_OK, "item %u: status %u", i, st[i]);
                e2e_fill_block(want, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, 7);
                ck_assert_msg(memcmp(kvc_pool_slot(sc.p, i), want, E2E_BLOCK_BYTES) == 0, "item %u: wrong bytes", i);
        }
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
        free(refs);
        free(st);
        free(want);
}
END_TEST

START_TEST(test_restart_serves_blocks)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct ssd_got got;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* Fits host memory: nothing is on SSD until the clean stop writes it back. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 500, 0, 2), 500);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").writes, 0);
        ssd_client_close(&sc);
        E2E_STOP(&d);

        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").blocks, 500);
        got = ssd_get(&sc, &seq, 0, 500, 2);
        ck_assert_uint_eq(got.ok, 500);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").promotions, 500);
        /* Lookup sees recovered blocks too (layer 0 holds blocks 0, 4, ...). */
        {
                struct kvc_block_ref r;
                uint32_t prefix[E2E_LAYERS];

                ssd_ref(&seq, 0, 0, &r);
                E2E_ASSERT_RC(sc.c, kvc_lookup(sc.c, sc.ns, &r.key, 1, prefix, E2E_LAYERS), 0);
                ck_assert_uint_eq(prefix[0], 1);
        }
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

struct writer_arg {
        const char *sock;
        struct kvc_key seq;
};

/* Puts blocks 1000-3999, durable and not, until its daemon is killed: few
 * enough that nothing evicts the first 300 from a 128 MiB SSD tier. */
static int endless_writer(void *arg)
{
        struct writer_arg *w = arg;
        struct ssd_client sc;

        if (e2e_open(w->sock, "writer", SSD_NS, &sc.c, &sc.ns) != 0 ||
            kvc_pool_create(sc.c, 64, E2E_BLOCK_BYTES, &sc.p) != 0)
                return 1;
        sc.slots = 64;
        for (uint32_t i = 1000; i < 4000; i += 64)
                if (ssd_put(&sc, &w->seq, i, 64, (i / 64) % 2 ? KVC_PUT_DURABLE : 0, 3) < 0)
                        return 0; /* the daemon is gone */
        return 0;
}

START_TEST(test_sigkill_keeps_durable_blocks)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct writer_arg w = { .seq = ssd_new_seq() };
        struct ssd_got got;
        char why[128];
        pid_t pid;
        int status;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), "--ssd-bytes", "128M", );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &w.seq, 0, 300, KVC_PUT_DURABLE, 3), 300);
        ssd_client_close(&sc);
        /* Kill the daemon while a client is writing durable and plain blocks. */
        w.sock = d.socket_path;
        pid = e2e_fork(endless_writer, &w);
        usleep(300 * 1000);
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&d, 10000, &status), 0);
        ck_assert_int_eq(e2e_wait_child(pid, 20000, why, sizeof(why)), 0);
        kvd_test_daemon_stop(&d);

        E2E_START(&d, SSD_ARGS(dir.path), "--ssd-bytes", "128M", );
        ssd_client_open(&sc, d.socket_path, 64);
        got = ssd_get(&sc, &w.seq, 0, 300, 3);
        ck_assert_uint_eq(got.ok, 300);         /* every durable acknowledgement holds */
        got = ssd_get(&sc, &w.seq, 1000, 3000, 3);
        ck_assert_uint_eq(got.wrong, 0);        /* whatever came back is right */
        ck_assert_uint_eq(got.other, 0);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* Stores 50 blocks durably, stops, damages block 7's slot at `delta` from
 * its header, restarts: block 7 is a miss, counted, its space reclaimed. */
static void damage_and_restart(long long delta)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_block_ref r;
        struct ssd_got got;
        struct kvc_tier_stats t;
        long long off;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 50, KVC_PUT_DURABLE, 4), 50);
        ssd_client_close(&sc);
        E2E_STOP(&d);

        ssd_ref(&seq, 7, 0, &r);
        off = ssd_find_slot(dir.file, &r.key, r.layer);
        ck_assert_int_ge(off, 0);
        ssd_flip_byte(dir.file, off + delta);

        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        got = ssd_get(&sc, &seq, 7, 1, 4);
        ck_assert_uint_eq(got.miss, 1);
        ck_assert_uint_eq(got.wrong, 0);
        /* Its slot is given back once its header is wiped (in the background). */
        for (int i = 0; i < 100 && (t = ssd_tier_stats(&sc, "ssd")).blocks != 49; i++)
                usleep(50 * 1000);
        ck_assert_uint_ge(t.crc_failures, 1);
        ck_assert_uint_eq(t.blocks, 49);
        got = ssd_get(&sc, &seq, 0, 50, 4);
        ck_assert_uint_eq(got.ok, 49);
        ck_assert_uint_eq(got.miss, 1);
        ck_assert_uint_eq(got.wrong, 0);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}

START_TEST(test_flipped_payload_byte)
{
        damage_and_restart(KVD_SLOT_HDR_BYTES + 1234);
}
END_TEST

START_TEST(test_flipped_header_byte)
{
        damage_and_restart(offsetof(struct kvd_slot_header, key_lo) + 3);
}
END_TEST

/* A 1 MiB block's read goes as several pieces; a byte flipped in a later
 * piece still makes the block a miss, and its neighbour comes back whole. */
START_TEST(test_split_read_damage)
{
        const struct kvc_geometry g = { 1, 8, 128, KVC_DTYPE_F16, 256 }; /* 1 MiB blocks */
        const uint32_t size = 1u << 20;
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_key seq = ssd_new_seq(), keys[2];
        struct kvc_block_ref refs[2];
        struct kvc_tier_stats t = { 0 };
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        kvc_pool *pool = NULL;
        uint8_t status[2], *expect = malloc(size);
        uint32_t ns;
        uint64_t id;
        long long off;

        ck_assert_ptr_nonnull(expect);
        for (int i = 0; i < 2; i++)
                kvc_key_private(&seq, (uint64_t)i, &keys[i]);
        ssd_dir_make(&dir);
        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "64M",
                  "--ssd-extent-bytes", "16M", );
        ck_assert_int_eq(kvc_connect(d.socket_path, "split", &c), 0);
        ck_assert_int_eq(kvc_register_namespace(c, "split", &g, &ns, NULL), 0);
        ck_assert_int_eq(kvc_pool_create(c, 2, size, &pool), 0);
        for (uint32_t i = 0; i < 2; i++) {
                memset(kvc_pool_slot(pool, i), 0x40 + (int)i, size);
                refs[i] = (struct kvc_block_ref){ keys[i], 0, i, 0 };
        }
        ck_assert_int_eq(kvc_put_submit_flags(c, ns, pool, refs, 2, KVC_PUT_DURABLE, status, &id), 0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 2);
        kvc_pool_free(pool);
        kvc_disconnect(c);
        E2E_STOP(&d);

        off = ssd_find_slot(dir.file, &keys[0], 0);
        ck_assert_int_ge(off, 0);
        ssd_flip_byte(dir.file, off + KVD_SLOT_HDR_BYTES + 700 * 1024);

        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "64M",
                  "--ssd-extent-bytes", "16M", );
        ck_assert_int_eq(kvc_connect(d.socket_path, "split", &c), 0);
        ck_assert_int_eq(kvc_register_namespace(c, "split", &g, &ns, NULL), 0);
        ck_assert_int_eq(kvc_pool_create(c, 2, size, &pool), 0);
        ck_assert_int_eq(kvc_get_submit(c, ns, pool, refs, 2, status, &id), 0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 1);
        ck_assert_int_ne(status[0], KVC_ITEM_OK);
        ck_assert_int_eq(status[1], KVC_ITEM_OK);
        memset(expect, 0x41, size);
        ck_assert_int_eq(memcmp(kvc_pool_slot(pool, 1), expect, size), 0);
        ck_assert_int_eq(kvc_stats_get(c, &st), 0);
        for (uint32_t i = 0; i < st->n_tiers; i++)
                if (strcmp(st->tiers[i].name, "ssd") == 0)
                        t = st->tiers[i];
        ck_assert_uint_ge(t.crc_failures, 1);
        kvc_stats_free(st);
        kvc_pool_free(pool);
        kvc_disconnect(c);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
        free(expect);
}
END_TEST

/* Freed slots are reused by blocks of another size; wipes of the old slots'
 * headers must never land in the new blocks. */
START_TEST(test_delete_then_reuse)
{
        static const struct kvc_geometry big = { E2E_LAYERS, 8, 128, KVC_DTYPE_F16, 16 }; /* 64 KiB */
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq(), keys[64];
        struct kvc_block_ref refs[64];
        uint8_t st[64], want[65536];
        kvc_pool *bp;
        uint32_t bns;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 2000, KVC_PUT_DURABLE, 5), 2000);
        for (uint32_t i = 0; i < 2000; i += 64) {
                for (uint32_t j = 0; j < 64; j++)
                        kvc_key_private(&seq, i + j, &keys[j]);
                E2E_ASSERT_RC(sc.c, kvc_delete(sc.c, sc.ns, keys, 64 < 2000 - i ? 64 : 2000 - i, -1) >= 0 ? 0 : -1, 0);
        }
        E2E_ASSERT_RC(sc.c, kvc_register_namespace(sc.c, "e2e-ssd-big", &big, &bns, NULL), 0);
        E2E_ASSERT_RC(sc.c, kvc_pool_create(sc.c, 64, 65536, &bp), 0);
        for (uint32_t round = 0; round < 8; round++) {
                for (uint32_t j = 0; j < 64; j++) {
                        refs[j] = (struct kvc_block_ref){ .layer = j % E2E_LAYERS, .slot = j };
                        kvc_key_private(&seq, 100000 + round * 64 + j, &refs[j].key);
                        e2e_fill_block(kvc_pool_slot(bp, j), 65536, &refs[j].key, refs[j].layer, 6);
                }
                uint64_t id;

                E2E_ASSERT_RC(sc.c, kvc_put_submit_flags(sc.c, bns, bp, refs, 64, KVC_PUT_DURABLE, st, &id), 0);
                E2E_ASSERT_RC(sc.c, kvc_wait(sc.c, id, -1), 64);
        }
        kvc_pool_free(bp);
        ssd_client_close(&sc);
        E2E_STOP(&d);

        E2E_START(&d, SSD_ARGS(dir.path), );
        ck_assert_int_eq(e2e_open(d.socket_path, "reader", SSD_NS, &sc.c, &sc.ns), 0);
        E2E_ASSERT_RC(sc.c, kvc_register_namespace(sc.c, "e2e-ssd-big", &big, &bns, NULL), 0);
        E2E_ASSERT_RC(sc.c, kvc_pool_create(sc.c, 64, 65536, &bp), 0);
        for (uint32_t round = 0; round < 8; round++) {
                for (uint32_t j = 0; j < 64; j++) {
                        refs[j] = (struct kvc_block_ref){ .layer = j % E2E_LAYERS, .slot = j };
                        kvc_key_private(&seq, 100000 + round * 64 + j, &refs[j].key);
                }
                E2E_ASSERT_RC(sc.c, kvc_get(sc.c, bns, bp, refs, 64, st), 64);
                for (uint32_t j = 0; j < 64; j++) {
                        e2e_fill_block(want, sizeof(want), &refs[j].key, refs[j].layer, 6);
                        ck_assert_msg(memcmp(want, kvc_pool_slot(bp, j), sizeof(want)) == 0, "block %u", j);
                }
        }
        /* The deleted blocks stayed deleted across the restart. */
        sc.p = NULL;
        E2E_ASSERT_RC(sc.c, kvc_pool_create(sc.c, 64, E2E_BLOCK_BYTES, &sc.p), 0);
        sc.slots = 64;
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 2000, 5).miss, 2000);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").crc_failures, 0);
        kvc_pool_free(bp);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static bool ssd_demoted(const struct kvc_stats *s, void *arg)
{
        const struct kvc_tier_stats *t = e2e_tier(s, "ssd");

        return t && t->demotions > 0;
}

START_TEST(test_admission_spares_the_drive)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_tier_stats t;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), "--ssd-admit-reads", "1", );
        ssd_client_open(&sc, d.socket_path, 64);
        /* Blocks 0-63 are read once: admitted. The rest are never read. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 64, 0, 9), 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 64, 9).ok, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 64, 3000, 0, 9), 3000);
        /* Demotions are background writes that the Puts need not wait for
         * (dropping never-read blocks makes their room): they count when
         * they land. */
        {
                struct kvc_stats *st = NULL;
                int rc = e2e_wait_stats(sc.c, ssd_demoted, NULL, E2E_WAIT_MS, &st);
                const struct kvc_tier_stats *ts = st ? e2e_tier(st, "ssd") : NULL;

                /* If none ever lands, say whether the tier could write at all. */
                ck_assert_msg(rc == 0, "no demotion landed (%d): ssd writes %llu, write errors %llu, dropped %llu, "
                              "full %d, condition '%s'", rc, ts ? (unsigned long long)ts->writes : 0ull,
                              ts ? (unsigned long long)ts->write_errors : 0ull,
                              ts ? (unsigned long long)ts->dropped : 0ull, ts ? ts->full : -1,
                              ts ? ts->condition : "?");
                kvc_stats_free(st);
        }
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_gt(t.demotions, 0);      /* only read blocks went to SSD; */
        ck_assert_uint_le(t.demotions, 64);     /* (hot ones may still be in host) */
        ck_assert_uint_gt(t.dropped, 1000);     /* the never-read ones were dropped */
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 64, 9).ok, 64);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_write_through)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), "--ssd-write-through", );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 128, 0, 10), 128);
        /* Acknowledged means on SSD already. */
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").writes, 128);
        ssd_client_close(&sc);
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGKILL), 0);
        kvd_test_daemon_stop(&d);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 128, 10).ok, 128);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_prefetch_promotes)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_block_ref refs[64];
        struct kvc_tier_stats h0, s0, h1, s1;
        uint8_t st[64];

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 64, KVC_PUT_DURABLE, 11), 64);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        for (uint32_t j = 0; j < 64; j++)
                ssd_ref(&seq, j, 0, &refs[j]);
        refs[63].key.lo ^= 1; /* one unknown key */
        E2E_ASSERT_RC(sc.c, kvc_prefetch(sc.c, sc.ns, refs, 64, st), 63);
        ck_assert_uint_eq(st[0], KVC_ITEM_OK);
        ck_assert_uint_eq(st[63], KVC_ITEM_MISS);
        h0 = ssd_tier_stats(&sc, "host");
        s0 = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_eq(s0.promotions, 63);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 63, 11).ok, 63);
        h1 = ssd_tier_stats(&sc, "host");
        s1 = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_eq(h1.hits - h0.hits, 63);       /* served from host memory */
        ck_assert_uint_eq(s1.promotions, s0.promotions);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* Two directories (two drives): extents alternate between their files. */
START_TEST(test_two_directories)
{
        struct kvd_test_daemon d;
        struct ssd_dir a, b;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        char dirs[300];
        struct stat sa, sb;

        ssd_dir_make(&a);
        ssd_dir_make(&b);
        snprintf(dirs, sizeof(dirs), "%s,%s", a.path, b.path);
        E2E_START(&d, SSD_ARGS(dirs), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 400, KVC_PUT_DURABLE, 13), 400);
        ck_assert_int_eq(stat(a.file, &sa), 0);
        ck_assert_int_eq(stat(b.file, &sb), 0);
        /* 400 slots of 12 KiB fill several 1 MiB extents: both files grew. */
        ck_assert_int_ge(sa.st_size, 1 << 20);
        ck_assert_int_ge(sb.st_size, 1 << 20);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        E2E_START(&d, SSD_ARGS(dirs), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 400, 13).ok, 400);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&a);
        ssd_dir_remove(&b);
}
END_TEST

/* Reading layer l of SSD-only blocks stages layer l+1 into free host memory;
 * reading that next is a host hit. */
START_TEST(test_next_layer_promotion)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_block_ref refs[64];
        struct kvc_stats *st = NULL;
        uint8_t stv[64];
        uint64_t spec, h0;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* Key j at layers 0 and 1, stored durably. */
        for (uint32_t j = 0; j < 32; j++)
                for (uint32_t l = 0; l < 2; l++) {
                        refs[2 * j + l] = (struct kvc_block_ref){ .layer = l, .slot = 2 * j + l };
                        kvc_key_private(&seq, j, &refs[2 * j + l].key);
                        e2e_fill_block(kvc_pool_slot(sc.p, 2 * j + l), E2E_BLOCK_BYTES, &refs[2 * j + l].key, l, 14);
                }
        {
                uint64_t id;

                E2E_ASSERT_RC(sc.c, kvc_put_submit_flags(sc.c, sc.ns, sc.p, refs, 64, KVC_PUT_DURABLE, stv, &id), 0);
                E2E_ASSERT_RC(sc.c, kvc_wait(sc.c, id, -1), 64);
        }
        ssd_client_close(&sc);
        E2E_STOP(&d);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        for (uint32_t j = 0; j < 32; j++) {
                refs[j] = (struct kvc_block_ref){ .layer = 0, .slot = j };
                kvc_key_private(&seq, j, &refs[j].key);
        }
        E2E_ASSERT_RC(sc.c, kvc_get(sc.c, sc.ns, sc.p, refs, 32, stv), 32);
        E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0);
        spec = st->speculative_promotions;
        h0 = e2e_tier(st, "host")->hits;
        kvc_stats_free(st);
        ck_assert_uint_ge(spec, 1);
        /* Let the staged reads land, then read layer 1. */
        for (int i = 0; i < 100; i++) {
                E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0);
                if (e2e_tier(st, "ssd")->promotions >= 32 + spec) {
                        kvc_stats_free(st);
                        break;
                }
                kvc_stats_free(st);
                usleep(20 * 1000);
        }
        for (uint32_t j = 0; j < 32; j++)
                refs[j].layer = 1;
        E2E_ASSERT_RC(sc.c, kvc_get(sc.c, sc.ns, sc.p, refs, 32, stv), 32);
        for (uint32_t j = 0; j < 32; j++) {
                uint8_t want[E2E_BLOCK_BYTES];

                e2e_fill_block(want, sizeof(want), &refs[j].key, 1, 14);
                ck_assert(memcmp(want, kvc_pool_slot(sc.p, j), sizeof(want)) == 0);
        }
        E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0);
        ck_assert_uint_eq(e2e_tier(st, "host")->hits - h0, spec); /* the staged ones hit */
        ck_assert_str_eq(st->eviction, "heat");
        kvc_stats_free(st);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* Scores reach the daemon; bad ones are refused with a clear error. */
START_TEST(test_report_scores)
{
        struct kvd_test_daemon d;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct kvc_block_score sco[8];
        struct kvc_stats *st = NULL;
        uint64_t applied = 0;

        E2E_START(&d, );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 8, 0, 15), 8);
        for (uint32_t i = 0; i < 8; i++) {
                kvc_key_private(&seq, i, &sco[i].key);
                sco[i].layer = i % E2E_LAYERS;
                sco[i].mass = 0.1f * (float)i;
        }
        E2E_ASSERT_RC(sc.c, kvc_report_scores(sc.c, sc.ns, sco, 8), 0);
        for (int i = 0; i < 100 && applied < 8; i++) {
                E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0);
                applied = st->scores;
                kvc_stats_free(st);
        }
        ck_assert_uint_eq(applied, 8);
        sco[3].mass = 2.0f;
        E2E_ASSERT_RC(sc.c, kvc_report_scores(sc.c, sc.ns, sco, 8), 0);
        E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0); /* the error reply arrives first */
        ck_assert_uint_eq(st->scores, 8);                  /* nothing applied */
        kvc_stats_free(st);
        ck_assert_msg(strstr(kvc_last_error(sc.c), "mass") != NULL, "last error '%s'", kvc_last_error(sc.c));
        ssd_client_close(&sc);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_durable_needs_ssd)
{
        struct kvd_test_daemon d;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();

        E2E_START(&d, );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 8, KVC_PUT_DURABLE, 12), -KVC_E_BAD_ARG);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 8, 0, 12), 8);
        ck_assert_uint_eq(ssd_tier_stats(&sc, "ssd").capacity_bytes, 0); /* no such tier */
        ssd_client_close(&sc);
        E2E_STOP(&d);
}
END_TEST

/* A durable Put of keys stored before without durability is acknowledged
 * (EXISTS) only once their blocks are durable: those only in host memory
 * are written, those demoted without RWF_DSYNC are synced. A SIGKILL then
 * loses none of them. */
START_TEST(test_durable_put_of_stored_blocks)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = ssd_new_seq();
        struct ssd_put_st st;
        struct kvc_tier_stats t0, t1;
        int status;

        ssd_dir_make(&dir);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        /* 3000 blocks of 8 KiB through a 16 MiB host tier: the older ones are
         * demoted (no RWF_DSYNC), the newer ones are in host memory only. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 3000, 0, 21), 3000);
        t0 = ssd_tier_stats(&sc, "ssd");
        st = ssd_put_st(&sc, &seq, 0, 3000, KVC_PUT_DURABLE, 21);
        ck_assert_msg(st.exists == 3000 && st.error == 0 && st.other == 0, "exists %u ok %u error %u other %u",
                      st.exists, st.ok, st.error, st.other);
        t1 = ssd_tier_stats(&sc, "ssd");
        ck_assert_uint_gt(t1.writes, t0.writes); /* the host-only ones were written */
        ssd_client_close(&sc);
        ck_assert_int_eq(kvd_test_daemon_kill(&d, SIGKILL), 0);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&d, 10000, &status), 0);
        kvd_test_daemon_stop(&d);
        E2E_START(&d, SSD_ARGS(dir.path), );
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, 3000, 21).ok, 3000);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *ssd_suite(void)
{
        Suite *s = suite_create("ssd");
        TCase *tc = tcase_create("ssd");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_demote_and_promote);
        tcase_add_test(tc, test_gets_beyond_host_pages_wait);
        tcase_add_test(tc, test_restart_serves_blocks);
        tcase_add_test(tc, test_durable_put_of_stored_blocks);
        tcase_add_test(tc, test_sigkill_keeps_durable_blocks);
        tcase_add_test(tc, test_flipped_payload_byte);
        tcase_add_test(tc, test_flipped_header_byte);
        tcase_add_test(tc, test_split_read_damage);
        tcase_add_test(tc, test_delete_then_reuse);
        tcase_add_test(tc, test_admission_spares_the_drive);
        tcase_add_test(tc, test_write_through);
        tcase_add_test(tc, test_prefetch_promotes);
        tcase_add_test(tc, test_two_directories);
        tcase_add_test(tc, test_next_layer_promotion);
        tcase_add_test(tc, test_report_scores);
        tcase_add_test(tc, test_durable_needs_ssd);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(ssd_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Data path end to end: blocks stored by one process come back byte for
 * byte in another process on another connection; misses leave slots alone;
 * a re-Put of a stored key copies nothing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define NBLK    16u                     /* blocks in the chain */
#define NITEMS  (NBLK * E2E_LAYERS)     /* (block, layer) pairs */
#define BATCH   16u
#define NS_NAME "e2e-datapath-model"

struct dp {
        const char *sock;
        char expected[160];             /* file of NITEMS blocks, item order */
        uint64_t token_seed;
};

static int chain_keys(uint64_t seed, struct kvc_key *keys)
{
        uint32_t tok[NBLK * E2E_BLOCK_TOKENS];

        e2e_tokens(tok, NBLK * E2E_BLOCK_TOKENS, seed);
        return kvc_key_prefix_chain(tok, NBLK * E2E_BLOCK_TOKENS, E2E_BLOCK_TOKENS, keys, NBLK);
}

/* Item i is block i / LAYERS at layer i % LAYERS. */
static void item_ref(const struct kvc_key *keys, uint32_t i, uint32_t slot,
                     struct kvc_block_ref *ref)
{
        *ref = (struct kvc_block_ref){ .key = keys[i / E2E_LAYERS], .layer = i % E2E_LAYERS, .slot = slot };
}

/* Process A: random blocks into its pool, Put them, record what it wrote. */
static int writer(void *arg)
{
        struct dp *t = arg;
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH], *all;
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(chain_keys(t->token_seed, keys) == NBLK, "kvc_key_prefix_chain");
        CHILD_ASSERT(e2e_open(t->sock, "writer", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, NITEMS, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        all = malloc((size_t)NITEMS * E2E_BLOCK_BYTES);
        CHILD_ASSERT(all, "malloc");
        for (uint32_t i = 0; i < NITEMS; i++) {
                CHILD_ASSERT(e2e_random(kvc_pool_slot(p, i), E2E_BLOCK_BYTES) == 0, "getrandom");
                memcpy(all + (size_t)i * E2E_BLOCK_BYTES, kvc_pool_slot(p, i), E2E_BLOCK_BYTES);
        }
        CHILD_ASSERT(e2e_write_file(t->expected, all, (size_t)NITEMS * E2E_BLOCK_BYTES) == 0,
                     "write %s", t->expected);
        for (uint32_t b = 0; b < NITEMS; b += BATCH) {
                for (uint32_t j = 0; j < BATCH; j++)
                        item_ref(keys, b + j, b + j, &refs[j]);
                memset(st, 0xff, sizeof(st));
                rc = kvc_put(c, ns, p, refs, BATCH, st);
                CHILD_ASSERT(rc == (int)BATCH, "put items %u..: %d (%s: %s)", b, rc,
                             kvc_strerror(rc), kvc_last_error(c));
                for (uint32_t j = 0; j < BATCH; j++)
                        CHILD_ASSERT(st[j] == KVC_ITEM_OK, "put item %u status %u", b + j, st[j]);
        }
        free(all);
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

/* Process B: Get every block by key into different slots and compare. */
static int reader(void *arg)
{
        struct dp *t = arg;
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH], *want;
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(chain_keys(t->token_seed, keys) == NBLK, "kvc_key_prefix_chain");
        want = malloc((size_t)NITEMS * E2E_BLOCK_BYTES);
        CHILD_ASSERT(want, "malloc");
        CHILD_ASSERT(e2e_read_file(t->expected, want, (size_t)NITEMS * E2E_BLOCK_BYTES) == 0,
                     "read %s", t->expected);
        CHILD_ASSERT(e2e_open(t->sock, "reader", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, NITEMS, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        for (uint32_t i = 0; i < NITEMS; i++)
                memset(kvc_pool_slot(p, i), 0x5a, E2E_BLOCK_BYTES);
        /* Reverse slot order, so a daemon that ignores the slot index fails. */
        for (uint32_t b = 0; b < NITEMS; b += BATCH) {
                for (uint32_t j = 0; j < BATCH; j++)
                        item_ref(keys, b + j, NITEMS - 1 - (b + j), &refs[j]);
                memset(st, 0xff, sizeof(st));
                rc = kvc_get(c, ns, p, refs, BATCH, st);
                CHILD_ASSERT(rc == (int)BATCH, "get items %u..: %d (%s: %s)", b, rc,
                             kvc_strerror(rc), kvc_last_error(c));
                for (uint32_t j = 0; j < BATCH; j++)
                        CHILD_ASSERT(st[j] == KVC_ITEM_OK, "get item %u status %u", b + j, st[j]);
        }
        for (uint32_t i = 0; i < NITEMS; i++) {
                long off = e2e_memdiff(kvc_pool_slot(p, NITEMS - 1 - i),
                                       want + (size_t)i * E2E_BLOCK_BYTES, E2E_BLOCK_BYTES);

                CHILD_ASSERT(off < 0, "block %u layer %u differs at byte %ld", i / E2E_LAYERS,
                             i % E2E_LAYERS, off);
        }
        free(want);
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

static void dp_init(struct dp *t, struct kvd_test_daemon *d)
{
        t->sock = d->socket_path;
        ck_assert_int_eq(kvd_test_daemon_path(d, "expected.bin", t->expected,
                                              sizeof(t->expected)), 0);
        ck_assert_int_eq(e2e_random(&t->token_seed, sizeof(t->token_seed)), 0);
}

START_TEST(test_put_get_across_processes)
{
        struct kvd_test_daemon d;
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;
        struct dp t;

        E2E_START(&d);
        dp_init(&t, &d);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer process");
        E2E_ASSERT_CHILD_OK(e2e_fork(reader, &t), "reader process");

        E2E_ASSERT_RC(c, kvc_connect(d.socket_path, "check", &c), 0);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        ck_assert_uint_eq(s->puts, NITEMS);
        ck_assert_uint_eq(s->gets, NITEMS);
        ck_assert_uint_eq(s->bytes_in, (uint64_t)NITEMS * E2E_BLOCK_BYTES);
        ck_assert_uint_eq(s->bytes_out, (uint64_t)NITEMS * E2E_BLOCK_BYTES);
        ck_assert_ptr_nonnull(e2e_ns(s, NS_NAME));
        ck_assert_uint_eq(e2e_ns(s, NS_NAME)->blocks, NITEMS);
        ck_assert_uint_eq(e2e_ns(s, NS_NAME)->block_bytes, E2E_BLOCK_BYTES);
        ck_assert_uint_eq(e2e_ns(s, NS_NAME)->geometry.layers, E2E_LAYERS);
        kvc_stats_free(s);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_get_missing_is_miss)
{
        struct kvd_test_daemon d;
        struct kvc_key keys[NBLK], other[NBLK];
        struct kvc_block_ref refs[8];
        uint8_t st[8], *want;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint64_t seed;
        uint32_t ns;

        E2E_START(&d);
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        ck_assert_int_eq(chain_keys(seed, keys), NBLK);
        ck_assert_int_eq(chain_keys(seed + 1, other), NBLK);
        ck_assert_int_eq(e2e_open(d.socket_path, "miss", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 16, E2E_BLOCK_BYTES, &p), 0);
        want = malloc(E2E_BLOCK_BYTES);
        ck_assert_ptr_nonnull(want);

        /* Store block 0 at layer 1 only. */
        ck_assert_int_eq(e2e_random(kvc_pool_slot(p, 0), E2E_BLOCK_BYTES), 0);
        memcpy(want, kvc_pool_slot(p, 0), E2E_BLOCK_BYTES);
        refs[0] = (struct kvc_block_ref){ .key = keys[0], .layer = 1, .slot = 0 };
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, 1, st), 1);

        /* All missing: never stored keys, and the stored key at other layers. */
        for (uint32_t i = 0; i < 8; i++)
                memset(kvc_pool_slot(p, 8 + i), 0xc3, E2E_BLOCK_BYTES);
        for (uint32_t i = 0; i < 4; i++)
                refs[i] = (struct kvc_block_ref){ .key = other[i], .layer = i, .slot = 8 + i };
        refs[4] = (struct kvc_block_ref){ .key = keys[0], .layer = 0, .slot = 12 };
        refs[5] = (struct kvc_block_ref){ .key = keys[0], .layer = 2, .slot = 13 };
        refs[6] = (struct kvc_block_ref){ .key = keys[0], .layer = 3, .slot = 14 };
        refs[7] = (struct kvc_block_ref){ .key = keys[1], .layer = 1, .slot = 15 };
        memset(st, 0xff, sizeof(st));
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, 8, st), 0);
        for (uint32_t i = 0; i < 8; i++) {
                ck_assert_msg(st[i] == KVC_ITEM_MISS, "item %u: status %u, want MISS", i, st[i]);
                ck_assert_msg(e2e_all_bytes(kvc_pool_slot(p, 8 + i), E2E_BLOCK_BYTES, 0xc3),
                              "slot %u was written by a Get that missed", 8 + i);
        }

        /* Mixed batch: only the hit is loaded and counted. */
        refs[0] = (struct kvc_block_ref){ .key = other[5], .layer = 1, .slot = 8 };
        refs[1] = (struct kvc_block_ref){ .key = keys[0], .layer = 1, .slot = 9 };
        refs[2] = (struct kvc_block_ref){ .key = keys[0], .layer = 2, .slot = 10 };
        memset(st, 0xff, sizeof(st));
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, 3, st), 1);
        ck_assert_uint_eq(st[0], KVC_ITEM_MISS);
        ck_assert_uint_eq(st[1], KVC_ITEM_OK);
        ck_assert_uint_eq(st[2], KVC_ITEM_MISS);
        ck_assert_msg(e2e_all_bytes(kvc_pool_slot(p, 8), E2E_BLOCK_BYTES, 0xc3), "slot 8 written");
        ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, 9), want, E2E_BLOCK_BYTES) < 0,
                      "hit loaded wrong bytes");
        ck_assert_msg(e2e_all_bytes(kvc_pool_slot(p, 10), E2E_BLOCK_BYTES, 0xc3),
                      "slot 10 written");

        free(want);
        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

/* B re-Puts A's keys with other bytes: EXISTS, nothing copied or counted. */
static int reputter(void *arg)
{
        struct dp *t = arg;
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH];
        struct kvc_stats *s0 = NULL, *s1 = NULL;
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(chain_keys(t->token_seed, keys) == NBLK, "kvc_key_prefix_chain");
        CHILD_ASSERT(e2e_open(t->sock, "reputter", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, BATCH, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        CHILD_ASSERT(kvc_stats_get(c, &s0) == 0, "stats");
        for (uint32_t b = 0; b < NITEMS; b += BATCH) {
                for (uint32_t j = 0; j < BATCH; j++) {
                        item_ref(keys, b + j, j, &refs[j]);
                        memset(kvc_pool_slot(p, j), 0xee, E2E_BLOCK_BYTES);
                }
                memset(st, 0xff, sizeof(st));
                rc = kvc_put(c, ns, p, refs, BATCH, st);
                CHILD_ASSERT(rc == 0, "re-put items %u..: %d (%s), want 0 stored", b, rc,
                             rc < 0 ? kvc_strerror(rc) : "ok");
                for (uint32_t j = 0; j < BATCH; j++)
                        CHILD_ASSERT(st[j] == KVC_ITEM_EXISTS, "re-put item %u status %u, want EXISTS",
                                     b + j, st[j]);
        }
        CHILD_ASSERT(kvc_stats_get(c, &s1) == 0, "stats");
        CHILD_ASSERT(s1->puts == s0->puts, "puts went from %llu to %llu on EXISTS",
                     (unsigned long long)s0->puts, (unsigned long long)s1->puts);
        CHILD_ASSERT(s1->bytes_in == s0->bytes_in, "bytes_in went from %llu to %llu on EXISTS",
                     (unsigned long long)s0->bytes_in, (unsigned long long)s1->bytes_in);
        CHILD_ASSERT(e2e_ns(s1, NS_NAME) && e2e_ns(s1, NS_NAME)->blocks == NITEMS,
                     "namespace blocks changed");
        kvc_stats_free(s0);
        kvc_stats_free(s1);
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

START_TEST(test_reput_exists)
{
        struct kvd_test_daemon d;
        struct dp t;

        E2E_START(&d);
        dp_init(&t, &d);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer process");
        E2E_ASSERT_CHILD_OK(e2e_fork(reputter, &t), "re-put process");
        /* The reader compares against the writer's bytes, not the 0xee ones. */
        E2E_ASSERT_CHILD_OK(e2e_fork(reader, &t), "reader process");
        E2E_STOP(&d);
}
END_TEST

/* A Get that carries the client's compute time per layer is answered with
 * a prefetch depth; without one, nothing is asked and the last answer stays. */
START_TEST(test_compute_hint_depth)
{
        struct kvd_test_daemon d;
        struct kvc_key keys[NBLK];
        struct kvc_block_ref ref;
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint64_t seed;
        uint32_t ns;
        uint8_t s1;
        int64_t asked_ms;
        int deep, shallow;

        E2E_START(&d);
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        ck_assert_int_eq(chain_keys(seed, keys), NBLK);
        ck_assert_int_eq(e2e_open(d.socket_path, "hint", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 2, E2E_BLOCK_BYTES, &p), 0);
        ref = (struct kvc_block_ref){ .key = keys[0], .layer = 0, .slot = 0 };
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, &ref, 1, &s1), 1);
        ck_assert_int_eq(kvc_prefetch_depth(c), -ENODATA);
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &s1), 1);
        ck_assert_int_eq(kvc_prefetch_depth(c), -ENODATA);      /* not asked */

        ck_assert_int_eq(kvc_set_compute_hint(c, 1000000), 0); /* 1 s of compute per layer */
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &s1), 1);
        deep = kvc_prefetch_depth(c);
        ck_assert_int_gt(deep, 0);
        ck_assert_int_eq(kvc_set_compute_hint(c, 1), 0);       /* 1 us: not a block's worth */
        asked_ms = e2e_now_ms();
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &s1), 1);
        shallow = kvc_prefetch_depth(c);
        ck_assert_int_eq(shallow, 0);
        ck_assert_int_eq(kvc_set_compute_hint(c, 0), 0);
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &s1), 1);
        ck_assert_int_eq(kvc_prefetch_depth(c), shallow);
        ck_assert_int_eq(kvc_set_compute_hint(NULL, 1), -EINVAL);

        E2E_ASSERT_RC(c, kvc_stats_get(c, &st), 0);
        ck_assert_uint_eq(st->sched_decisions, 2);
        ck_assert_uint_eq(st->sched_prefetch_depth, 0);
        /* A client counts as prefetching for a second (SCHED_ACTIVE_MS)
         * after its last Get with a compute time: only a run that got here
         * within that second can say it still does. */
        if (e2e_now_ms() - asked_ms < 1000)
                ck_assert_uint_eq(st->sched_active_clients, 1);
        else
                ck_assert_uint_le(st->sched_active_clients, 1);
        kvc_stats_free(st);
        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

static Suite *datapath_suite(void)
{
        Suite *s = suite_create("e2e-datapath");
        TCase *tc = tcase_create("datapath");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_put_get_across_processes);
        tcase_add_test(tc, test_get_missing_is_miss);
        tcase_add_test(tc, test_reput_exists);
        tcase_add_test(tc, test_compute_hint_depth);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(datapath_suite)

/* SPDX-License-Identifier: MIT */
/*
 * kvc_sparse against a real daemon: the plan (top-k with sink and local
 * blocks, slots, what is resident), pinning and residency across layers,
 * the bytes that land, the tail, errors and -EBUSY, a failed miss, staging
 * from SSD, and two engines (processes) sharing a prompt's prefix.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kvdrive/sparse.h>

#include "check-main.h"
#include "common.h"
#include "ssd-common.h"

#define NS_NAME "e2e-sparse-model"
#define NB 32u                  /* stored blocks per layer */
#define BUDGET 8u
#define PREFILL_SLOTS NB        /* the engine's own slots, before the policy's */

struct engine {
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        kvc_sparse *sp;
        kvc_sparse_seq *seq;
};

static struct kvc_sparse_opts opts(void)
{
        return (struct kvc_sparse_opts){ .size = sizeof(struct kvc_sparse_opts), .layers = E2E_LAYERS,
                                         .block_tokens = E2E_BLOCK_TOKENS, .max_seqs = 1, .slot0 = PREFILL_SLOTS,
                                         .budget = BUDGET, .topk = 0.25, .sink = 1, .local = 1 };
}

static int engine_open(const char *sock, const struct kvc_sparse_opts *o, struct engine *e)
{
        int r;

        memset(e, 0, sizeof(*e));
        r = e2e_open(sock, "sparse", NS_NAME, &e->c, &e->ns);
        if (r == 0)
                r = kvc_pool_create(e->c, (uint32_t)(PREFILL_SLOTS + kvc_sparse_pool_slots(o)), E2E_BLOCK_BYTES,
                                    &e->p);
        if (r == 0)
                r = kvc_sparse_open(e->c, e->ns, e->p, o, &e->sp);
        return r;
}

static void engine_close(struct engine *e)
{
        kvc_sparse_close(e->sp);
        kvc_pool_free(e->p);
        kvc_disconnect(e->c);
}

/* Puts blocks [0, NB) of every layer of seq, bytes from e2e_fill_block(). */
static int prefill(struct engine *e, uint64_t salt)
{
        for (uint32_t l = 0; l < E2E_LAYERS; l++) {
                struct kvc_block_ref refs[NB];
                uint8_t st[NB];
                int r;

                for (uint32_t b = 0; b < NB; b++) {
                        refs[b] = (struct kvc_block_ref){ .layer = l, .slot = b };
                        r = kvc_sparse_seq_key(e->seq, b, &refs[b].key);
                        if (r < 0)
                                return r;
                        e2e_fill_block(kvc_pool_slot(e->p, b), E2E_BLOCK_BYTES, &refs[b].key, l, salt);
                }
                r = kvc_put(e->c, e->ns, e->p, refs, NB, st);
                if (r < 0)
                        return r;
        }
        return kvc_sparse_seq_set_stored(e->seq, NB);
}

/* Whether every chosen block's slot holds its bytes. */
static bool plan_bytes_ok(struct engine *e, const struct kvc_sparse_plan *pl, uint64_t salt)
{
        uint8_t want[E2E_BLOCK_BYTES];

        for (uint32_t i = 0; i < pl->n; i++) {
                struct kvc_key k;

                if (!pl->resident[i] || kvc_sparse_seq_key(e->seq, pl->blocks[i], &k) < 0)
                        return false;
                e2e_fill_block(want, sizeof(want), &k, pl->layer, salt);
                if (memcmp(kvc_pool_slot(e->p, pl->slots[i]), want, sizeof(want)) != 0)
                        return false;
        }
        return true;
}

static bool chosen(const struct kvc_sparse_plan *pl, uint32_t b)
{
        for (uint32_t i = 0; i < pl->n; i++)
                if (pl->blocks[i] == b)
                        return true;
        return false;
}

START_TEST(test_plan_residency_and_bytes)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        struct kvc_sparse_stats st;
        float scores[NB];
        uint32_t slot_of_20 = 0;
        struct engine e;

        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 3), 0);
        /* Blocks 20..25 score best; k = 25% of 32 = 8 with block 0 (sink)
         * and block 31 (local) forced. */
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = b >= 20 && b < 26 ? 10.0f + (float)b : (float)b / 100.0f;
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 1, scores, NB, &pl), 0);
        ck_assert_uint_eq(pl->layer, 1);
        ck_assert_uint_eq(pl->n, 8);
        ck_assert(chosen(pl, 0) && chosen(pl, 31));
        for (uint32_t b = 20; b < 26; b++)
                ck_assert(chosen(pl, b));
        for (uint32_t i = 0; i < pl->n; i++) {
                ck_assert(i == 0 || pl->blocks[i] > pl->blocks[i - 1]);         /* ascending */
                ck_assert(pl->slots[i] >= PREFILL_SLOTS && pl->slots[i] < PREFILL_SLOTS + BUDGET);
                ck_assert(!pl->resident[i]);
                if (pl->blocks[i] == 20)
                        slot_of_20 = pl->slots[i];
        }
        ck_assert_uint_eq(pl->n_missing, 8);
        ck_assert(!pl->two_pass);               /* 8 misses: under split_min's 16 */
        ck_assert_uint_eq(pl->tail_slot, PREFILL_SLOTS + BUDGET + 1);
        /* One layer at a time. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), -EBUSY);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert(plan_bytes_ok(&e, pl, 3));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), -EINVAL);
        /* Next step, same choice: every block resident, in the same slot. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 1, scores, NB, &pl), 0);
        ck_assert_uint_eq(pl->n_missing, 0);
        for (uint32_t i = 0; i < pl->n; i++) {
                ck_assert(pl->resident[i]);
                if (pl->blocks[i] == 20)
                        ck_assert_uint_eq(pl->slots[i], slot_of_20);
        }
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 0), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        /* Another layer: its own blocks (the budget holds one layer's top-k,
         * so layer 1's go), all fetched, bytes of layer 3. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 3, scores, NB, &pl), 0);
        ck_assert_uint_eq(pl->n_missing, 8);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert(plan_bytes_ok(&e, pl, 3));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        kvc_sparse_get_stats(e.sp, &st);
        ck_assert_uint_eq(st.layers, 3);
        ck_assert_uint_eq(st.chosen, 24);
        ck_assert_uint_eq(st.hits, 8);
        ck_assert_uint_eq(st.misses, 16);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_tail_and_errors)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts(), bad;
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        struct kvc_sparse_seq *second;
        float scores[NB + 1];
        struct kvc_key k;
        kvc_sparse *sp2;
        struct engine e;
        int slot;

        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        /* Bad options change nothing. */
        bad = o;
        bad.topk = 0;
        ck_assert_int_eq(kvc_sparse_open(e.c, e.ns, e.p, &bad, &sp2), -EINVAL);
        bad = o;
        bad.slot0 = 1000;       /* past the pool */
        ck_assert_int_eq(kvc_sparse_open(e.c, e.ns, e.p, &bad, &sp2), -EINVAL);
        bad = o;
        bad.size = 8;
        ck_assert_int_eq(kvc_sparse_open(e.c, e.ns, e.p, &bad, &sp2), -EINVAL);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &second), -EBUSY);    /* max_seqs 1 */
        ck_assert_int_eq(prefill(&e, 4), 0);
        for (uint32_t b = 0; b <= NB; b++)
                scores[b] = (float)b;
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB + 1, &pl), -EINVAL); /* not stored */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, E2E_LAYERS, scores, NB, &pl), -EINVAL);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 0), -EINVAL);      /* none begun */
        /* The tail: block 32 of layer 0, written by the engine, Put by the policy. */
        slot = kvc_sparse_tail_slot(e.seq, 0);
        ck_assert_int_eq(slot, PREFILL_SLOTS + BUDGET + 0);
        ck_assert_int_eq(kvc_sparse_seq_key(e.seq, NB, &k), 0);
        e2e_fill_block(kvc_pool_slot(e.p, (uint32_t)slot), E2E_BLOCK_BYTES, &k, 0, 4);
        ck_assert_int_eq(kvc_sparse_tail_full(e.seq, 0, NULL), 0);
        ck_assert_uint_eq(kvc_sparse_seq_stored(e.seq, 0), NB + 1);
        ck_assert_uint_eq(kvc_sparse_seq_stored(e.seq, 1), NB);
        ck_assert_int_eq(kvc_sparse_tail_slot(e.seq, 0), slot);         /* waits for the Put */
        memset(kvc_pool_slot(e.p, (uint32_t)slot), 0, E2E_BLOCK_BYTES);  /* the next tail */
        /* Layer 0 may now choose block 32, and gets its bytes. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB + 1, &pl), 0);
        ck_assert(chosen(pl, NB));
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert(plan_bytes_ok(&e, pl, 4));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        /* A block that is gone: -EIO, not resident, and asked for again. */
        ck_assert_int_eq(kvc_sparse_seq_key(e.seq, 5, &k), 0);
        ck_assert_int_eq(kvc_delete(e.c, e.ns, &k, 1, 2), 1);
        scores[5] = 1000;
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert(chosen(pl, 5));
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), -EIO);
        for (uint32_t i = 0; i < pl->n; i++)
                ck_assert_int_eq(pl->resident[i], pl->blocks[i] != 5);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_uint_eq(pl->n_missing, 1);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), -EIO);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        /* The sequence's place is free again. */
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &second), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(second), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

/* Whether the resident blocks of a plan hold their bytes (the others are not read). */
static bool resident_bytes_ok(struct engine *e, const struct kvc_sparse_plan *pl, uint64_t salt)
{
        uint8_t want[E2E_BLOCK_BYTES];

        for (uint32_t i = 0; i < pl->n; i++) {
                struct kvc_key k;

                if (!pl->resident[i])
                        continue;
                if (kvc_sparse_seq_key(e->seq, pl->blocks[i], &k) < 0)
                        return false;
                e2e_fill_block(want, sizeof(want), &k, pl->layer, salt);
                if (memcmp(kvc_pool_slot(e->p, pl->slots[i]), want, sizeof(want)) != 0)
                        return false;
        }
        return true;
}

/* The resident flag of block b in the plan (-1: not chosen). */
static int resident_of(const struct kvc_sparse_plan *pl, uint32_t b)
{
        for (uint32_t i = 0; i < pl->n; i++)
                if (pl->blocks[i] == b)
                        return pl->resident[i];
        return -1;
}

/*
 * A miss that failed is never called resident: not by a second wait after
 * the -EIO, and not when the engine ended the layer without waiting (gave
 * up on it) and plans the layer again. And a failure the engine never
 * waited for does not make a later, good layer fail.
 */
START_TEST(test_failed_miss_never_resident)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        struct kvc_block_ref ref = { .layer = 2, .slot = 0 };
        float scores[NB];
        uint8_t st;
        struct engine e;

        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 8), 0);
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)b;
        scores[5] = 1000;
        ck_assert_int_eq(kvc_sparse_seq_key(e.seq, 5, &ref.key), 0);
        ck_assert_int_eq(kvc_delete(e.c, e.ns, &ref.key, 1, 2), 1);
        /* Waiting twice: the second wait does not make block 5 resident. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_int_eq(resident_of(pl, 5), 0);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), -EIO);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), -EIO);
        ck_assert_int_eq(resident_of(pl, 5), 0);
        ck_assert(resident_bytes_ok(&e, pl, 8));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        /* Ending the layer without waiting: block 5's Get fails unseen; the
         * next plan must not take its slot for block 5's bytes. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_int_eq(resident_of(pl, 5), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_int_eq(resident_of(pl, 5), 0);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), -EIO);
        ck_assert_int_eq(resident_of(pl, 5), 0);
        ck_assert(resident_bytes_ok(&e, pl, 8));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        /* Once more unwaited, then block 5 comes back: the layer that loads
         * it succeeds, with its bytes, whatever failed unseen before. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        e2e_fill_block(kvc_pool_slot(e.p, 0), E2E_BLOCK_BYTES, &ref.key, 2, 8);
        ck_assert_int_eq(kvc_put(e.c, e.ns, e.p, &ref, 1, &st), 1);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert(plan_bytes_ok(&e, pl, 8));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

/*
 * A Get the daemon refuses whole (here: its namespace was dropped) counts
 * nothing on the layer's counter: the wait says the refusal, it does not
 * sleep to its timeout, the misses stay non-resident, and so on every
 * later layer.
 */
START_TEST(test_refused_get_ends_the_wait)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        float scores[NB];
        struct engine e;

        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 9), 0);
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)b;
        ck_assert_int_eq(kvc_drop_namespace(e.c, e.ns, NULL), 0);
        for (uint32_t round = 0; round < 3; round++) {
                ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, round % E2E_LAYERS, scores, NB, &pl), 0);
                ck_assert_uint_gt(pl->n_missing, 0);
                /* -1 would sleep for ever before the fix: the test's own
                 * timeout would fail it; 60 s says which. */
                ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 60000), -KVC_E_NO_NAMESPACE);
                ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 60000), -KVC_E_NO_NAMESPACE);
                for (uint32_t i = 0; i < pl->n; i++)
                        ck_assert_int_eq(pl->resident[i], 0);
                ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        }
        /* Ended without a wait: the next plan does not trust those slots. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB, &pl), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB, &pl), 0);
        for (uint32_t i = 0; i < pl->n; i++)
                ck_assert_int_eq(pl->resident[i], 0);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, -1), -KVC_E_NO_NAMESPACE);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        kvc_sparse_seq_end(e.seq);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

static void sleep_ms(long ms)
{
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0)
                ;
}

/*
 * Layers that could go either way (misses and resident blocks enough to
 * overlap) try both; when two passes cost the engine more (here: 20 ms
 * more per layer), most layers then go in one, and some still try two.
 * The engine "attends" by sleeping 1 ms per pass, so that there is a first
 * pass worth overlapping.
 */
START_TEST(test_two_pass_learns_what_pays)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        uint32_t either = 0, two = 0, late_two = 0, late = 0;
        bool was_two;
        float scores[NB];
        struct engine e;

        o.split_min = 2;
        o.overlap_us = 1;
        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 6), 0);
        for (uint32_t t = 0; t < 64; t++) {
                /* Six by score (and the sink and local blocks): a window that
                 * moves by three blocks a step, so three of them miss. */
                for (uint32_t b = 0; b < NB; b++)
                        scores[b] = (b + NB - (3 * t) % (NB - 8)) % NB < 6 ? 100.0f : 0.0f;
                ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB, &pl), 0);
                if (pl->n_missing >= 2 && pl->n > pl->n_missing) {
                        either++;
                        two += pl->two_pass != 0;
                }
                was_two = pl->two_pass != 0;
                sleep_ms(1);
                ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
                sleep_ms(was_two ? 21 : 1);
                ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
                if (t >= 32) {
                        late++;
                        late_two += was_two;
                }
        }
        /* Both ways were tried; late on, one pass won, two still explored. */
        ck_assert_uint_ge(either, 48);
        ck_assert_uint_gt(two, 0);
        ck_assert_uint_lt(two, either);
        ck_assert_uint_le(late_two, late / 4);
        kvc_sparse_seq_end(e.seq);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

/* Many misses: the plan says two passes are worth it. */
START_TEST(test_two_pass_advice)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        float scores[NB];
        struct engine e;

        o.split_min = 4;
        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 5), 0);
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)b;
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB, &pl), 0);
        ck_assert(pl->two_pass && pl->n_missing == 8);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, scores, NB, &pl), 0);
        ck_assert(!pl->two_pass && pl->n_missing == 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

/* ---- two engines, one prompt ------------------------------------------- */

#define PROMPT_TOKENS (NB * E2E_BLOCK_TOKENS + 5)

struct shared {
        const char *sock;
        uint32_t tokens[PROMPT_TOKENS];
};

static int engine_b(void *arg)
{
        struct shared *sh = arg;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PREFIX,
                                          .tokens = sh->tokens, .n_tokens = PROMPT_TOKENS };
        const struct kvc_sparse_plan *pl;
        float scores[NB];
        struct engine e;
        int cached;

        CHILD_ASSERT(engine_open(sh->sock, &o, &e) == 0, "open");
        CHILD_ASSERT(kvc_sparse_seq_begin(e.sp, &so, &e.seq) == 0, "seq");
        cached = kvc_sparse_seq_cached(e.seq);
        CHILD_ASSERT(cached == (int)NB, "engine B finds %d of the prompt's %u blocks cached", cached, NB);
        CHILD_ASSERT(kvc_sparse_seq_set_stored(e.seq, (uint32_t)cached) == 0, "set stored");
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)((b * 7) % NB);
        for (uint32_t l = 0; l < E2E_LAYERS; l++) {
                CHILD_ASSERT(kvc_sparse_begin_layer(e.seq, l, scores, NB, &pl) == 0, "begin %u", l);
                CHILD_ASSERT(kvc_sparse_wait_layer(e.seq, 10000) == 0, "wait %u", l);
                CHILD_ASSERT(plan_bytes_ok(&e, pl, 6), "layer %u: the bytes engine A stored", l);
                CHILD_ASSERT(kvc_sparse_end_layer(e.seq, NULL) == 0, "end");
        }
        kvc_sparse_seq_end(e.seq);
        engine_close(&e);
        return 0;
}

START_TEST(test_two_engines_share_a_prefix)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct shared sh;
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PREFIX };
        struct engine e;
        pid_t pid;

        E2E_START(&d);
        sh.sock = d.socket_path;
        e2e_tokens(sh.tokens, PROMPT_TOKENS, 77);
        so.tokens = sh.tokens;
        so.n_tokens = PROMPT_TOKENS;
        /* Engine A computes the prompt and stores it. */
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(kvc_sparse_seq_cached(e.seq), 0);
        ck_assert_int_eq(prefill(&e, 6), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);
        /* Engine B, another process, loads it instead. */
        pid = e2e_fork(engine_b, &sh);
        E2E_ASSERT_CHILD_OK(pid, "engine B");
        E2E_STOP(&d);
}
END_TEST

/* ---- staging from SSD ------------------------------------------------- */

static bool promoted(const struct kvc_stats *s, void *arg)
{
        const struct kvc_tier_stats *t = e2e_tier(s, "ssd");

        return t && t->promotions >= *(uint64_t *)arg;
}

START_TEST(test_stage_from_ssd)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PREFIX };
        struct kvc_sparse_stats st;
        uint32_t tokens[PROMPT_TOKENS];
        float scores[NB];
        struct engine e;
        uint64_t want;

        ssd_dir_make(&dir);
        e2e_tokens(tokens, PROMPT_TOKENS, 78);
        so.tokens = tokens;
        so.n_tokens = PROMPT_TOKENS;
        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "64M", "--ssd-extent-bytes",
                  "1M", "--ssd-write-through",);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 7), 0);
        kvc_sparse_seq_end(e.seq);
        engine_close(&e);
        E2E_STOP(&d);
        /* A restart: every block on SSD only. */
        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "64M", "--ssd-extent-bytes",
                  "1M",);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(kvc_sparse_seq_cached(e.seq), (int)NB);
        ck_assert_int_eq(kvc_sparse_seq_set_stored(e.seq, NB), 0);
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)b;
        ck_assert_int_eq(kvc_sparse_stage(e.seq, 2, scores, NB), 0);
        kvc_sparse_get_stats(e.sp, &st);
        ck_assert_uint_eq(st.staged, 8);        /* the predicted top-k, none resident */
        want = 8;
        ck_assert_int_eq(e2e_wait_stats(e.c, promoted, &want, E2E_WAIT_MS, NULL), 0);
        kvc_sparse_seq_end(e.seq);
        engine_close(&e);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST


/* With KVC_SPARSE_REPORT_SCORES, a layer's masses reach the daemon at
 * every report_every-th end of that layer: 7 ends at 3 are 3 reports. */
START_TEST(test_scores_reported_every_n)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts();
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        struct kvc_stats *stats;
        float scores[NB], masses[NB];
        struct engine e;

        o.flags = KVC_SPARSE_REPORT_SCORES;
        o.report_every = 3;
        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 5), 0);
        for (uint32_t b = 0; b < NB; b++)
                scores[b] = (float)b;
        for (int step = 0; step < 7; step++) {
                ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 1, scores, NB, &pl), 0);
                ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
                for (uint32_t i = 0; i < pl->n; i++)
                        masses[i] = 1.0f / (float)pl->n;
                ck_assert_uint_eq(pl->n, 8);
                ck_assert_int_eq(kvc_sparse_end_layer(e.seq, masses), 0);
                /* Another layer's ends do not count for layer 1's. */
                ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 2, scores, NB, &pl), 0);
                ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
                ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        }
        /* The reports are fire and forget, on the same connection: the
         * daemon has applied them when it answers the Stats after them. */
        ck_assert_int_eq(kvc_stats_get(e.c, &stats), 0);
        ck_assert_uint_eq(stats->scores, 3 * 8);
        kvc_stats_free(stats);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

/* The dynamic budget: the sink and local blocks, then blocks by estimated
 * mass until mass_target, never more than the top-k; a caller built against
 * the first version of the options (its smaller size) gets the top-k; a
 * target out of (0, 1] is refused. */
START_TEST(test_mass_target)
{
        struct kvd_test_daemon d;
        struct kvc_sparse_opts o = opts(), v1, bad;
        struct kvc_sparse_seq_opts so = { .size = sizeof(so), .keys = KVC_SPARSE_KEYS_PRIVATE };
        const struct kvc_sparse_plan *pl;
        float peaked[NB], flat[NB];
        kvc_sparse *sp2;
        struct engine e;

        /* Masses: blocks 10 and 11 hold 0.9 between them; the rest share 0.1. */
        for (uint32_t b = 0; b < NB; b++) {
                peaked[b] = b == 10 || b == 11 ? 0.45f : 0.1f / (NB - 2);
                flat[b] = 1.0f / NB;
        }
        o.mass_target = 0.9f;
        E2E_START(&d);
        ck_assert_int_eq(engine_open(d.socket_path, &o, &e), 0);
        bad = o;
        bad.mass_target = 1.5f;
        ck_assert_int_eq(kvc_sparse_open(e.c, e.ns, e.p, &bad, &sp2), -EINVAL);
        bad.mass_target = -0.1f;
        ck_assert_int_eq(kvc_sparse_open(e.c, e.ns, e.p, &bad, &sp2), -EINVAL);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 5), 0);
        /* Peaked: sink, 10, 11, local: the two blocks bring the 0.9. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, peaked, NB, &pl), 0);
        ck_assert_uint_eq(pl->n, 4);
        ck_assert(chosen(pl, 0) && chosen(pl, 10) && chosen(pl, 11) && chosen(pl, NB - 1));
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert(plan_bytes_ok(&e, pl, 5));
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        /* Flat: 0.9 would need 29 of 32 blocks; the top-k (25%: 8) caps it. */
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 1, flat, NB, &pl), 0);
        ck_assert_uint_eq(pl->n, 8);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);

        /* The options of the first version: no mass_target, so the top-k. */
        v1 = o;
        v1.size = KVC_SPARSE_OPTS_SIZE_V1;
        ck_assert_int_eq(engine_open(d.socket_path, &v1, &e), 0);
        ck_assert_int_eq(kvc_sparse_seq_begin(e.sp, &so, &e.seq), 0);
        ck_assert_int_eq(prefill(&e, 6), 0);
        ck_assert_int_eq(kvc_sparse_begin_layer(e.seq, 0, peaked, NB, &pl), 0);
        ck_assert_uint_eq(pl->n, 8);
        ck_assert_int_eq(kvc_sparse_wait_layer(e.seq, 10000), 0);
        ck_assert_int_eq(kvc_sparse_end_layer(e.seq, NULL), 0);
        ck_assert_int_eq(kvc_sparse_seq_end(e.seq), 0);
        engine_close(&e);
        E2E_STOP(&d);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("sparse");
        TCase *tc = tcase_create("sparse");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_plan_residency_and_bytes);
        tcase_add_test(tc, test_tail_and_errors);
        tcase_add_test(tc, test_failed_miss_never_resident);
        tcase_add_test(tc, test_refused_get_ends_the_wait);
        tcase_add_test(tc, test_two_pass_advice);
        tcase_add_test(tc, test_two_pass_learns_what_pays);
        tcase_add_test(tc, test_two_engines_share_a_prefix);
        tcase_add_test(tc, test_stage_from_ssd);
        tcase_add_test(tc, test_scores_reported_every_n);
        tcase_add_test(tc, test_mass_target);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(suite)

/* SPDX-License-Identifier: MIT */
/*
 * Concurrent clients: several processes store and load their own blocks and
 * a shared set at the same time, each with many requests in flight, reaped
 * out of order. Every byte is checked, and the daemon's block counts add up.
 */
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define NPROC       5u
#define OWN         48u                 /* private blocks per process */
#define SHARED_BLK  6u                  /* shared chain blocks ... */
#define SHARED      (SHARED_BLK * E2E_LAYERS)  /* ... at every layer */
#define BATCH       4u
#define OWN_REQS    (OWN / BATCH)
#define SHARED_REQS (SHARED / BATCH)
#define NREQS       (OWN_REQS + SHARED_REQS)
/* Pool: own blocks, shared blocks, then the same again as Get targets. */
#define SLOTS       (2 * (OWN + SHARED))
#define NS_OWN      "e2e-conc-own"
#define NS_SHARED   "e2e-conc-shared"

struct conc {
        const char *sock;
        uint64_t token_seed;
        int start_fd;                   /* read end of the start barrier */
        int start_wfd;                  /* its write end, closed by the child */
        uint32_t index;
};

static void shared_keys(uint64_t seed, struct kvc_key keys[SHARED_BLK])
{
        uint32_t tok[SHARED_BLK * E2E_BLOCK_TOKENS];

        e2e_tokens(tok, SHARED_BLK * E2E_BLOCK_TOKENS, seed);
        kvc_key_prefix_chain(tok, SHARED_BLK * E2E_BLOCK_TOKENS, E2E_BLOCK_TOKENS, keys,
                             SHARED_BLK);
}

/* Request r of a round: own batches and shared batches interleaved. */
static void request_refs(uint32_t r, bool get, const struct kvc_key *own_keys,
                         const struct kvc_key *sh_keys, struct kvc_block_ref refs[BATCH],
                         bool *ret_shared)
{
        bool shared = r % 3 == 2 && r / 3 < SHARED_REQS;
        uint32_t k = shared ? r / 3 : r - (r / 3 < SHARED_REQS ? r / 3 : SHARED_REQS);

        for (uint32_t j = 0; j < BATCH; j++) {
                uint32_t i = k * BATCH + j;     /* item within own or shared */
                uint32_t slot = shared ? OWN + i : i;

                if (shared)
                        refs[j] = (struct kvc_block_ref){ .key = sh_keys[i / E2E_LAYERS],
                                                          .layer = i % E2E_LAYERS };
                else
                        refs[j] = (struct kvc_block_ref){ .key = own_keys[i],
                                                          .layer = i % E2E_LAYERS };
                refs[j].slot = get ? OWN + SHARED + slot : slot;
        }
        *ret_shared = shared;
}

static void shuffle(uint32_t *v, uint32_t n, uint64_t seed)
{
        for (uint32_t i = 0; i < n; i++)
                v[i] = i;
        for (uint32_t i = n - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(e2e_splitmix(&seed) % (i + 1)), x = v[i];

                v[i] = v[j];
                v[j] = x;
        }
}

static int client(void *arg)
{
        struct conc *t = arg;
        struct kvc_key own_keys[OWN], sh_keys[SHARED_BLK], seq;
        struct kvc_block_ref refs[BATCH];
        uint8_t st[NREQS][BATCH];
        uint64_t ids[NREQS];
        uint32_t order[NREQS], ns_own, ns_sh;
        bool is_shared[NREQS];
        uint8_t *copy;
        kvc_client *c;
        kvc_pool *p;
        char go;
        int rc;

        CHILD_ASSERT(kvc_key_sequence_new(&seq) == 0, "sequence");
        for (uint32_t i = 0; i < OWN; i++)
                kvc_key_private(&seq, i, &own_keys[i]);
        shared_keys(t->token_seed, sh_keys);
        CHILD_ASSERT(e2e_open(t->sock, "conc", NS_OWN, &c, &ns_own) == 0, "open");
        rc = kvc_register_namespace(c, NS_SHARED, &e2e_geom, &ns_sh, NULL);
        CHILD_ASSERT(rc == 0, "register %s: %s", NS_SHARED, kvc_strerror(rc));
        CHILD_ASSERT(kvc_max_items(c) >= BATCH, "max_items %u", kvc_max_items(c));
        rc = kvc_pool_create(c, SLOTS, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        for (uint32_t i = 0; i < OWN; i++)
                CHILD_ASSERT(e2e_random(kvc_pool_slot(p, i), E2E_BLOCK_BYTES) == 0, "random");
        for (uint32_t i = 0; i < SHARED; i++)
                e2e_fill_block(kvc_pool_slot(p, OWN + i), E2E_BLOCK_BYTES,
                               &sh_keys[i / E2E_LAYERS], i % E2E_LAYERS, 0);
        for (uint32_t i = OWN + SHARED; i < SLOTS; i++)
                memset(kvc_pool_slot(p, i), 0x11, E2E_BLOCK_BYTES);
        copy = malloc((size_t)(OWN + SHARED) * E2E_BLOCK_BYTES);
        CHILD_ASSERT(copy, "malloc");
        for (uint32_t i = 0; i < OWN + SHARED; i++)
                memcpy(copy + (size_t)i * E2E_BLOCK_BYTES, kvc_pool_slot(p, i), E2E_BLOCK_BYTES);

        /* Everyone starts together. */
        close(t->start_wfd);
        CHILD_ASSERT(read(t->start_fd, &go, 1) == 0, "start barrier");

        /* Puts: all in flight, reaped in a shuffled order. */
        for (uint32_t r = 0; r < NREQS; r++) {
                request_refs(r, false, own_keys, sh_keys, refs, &is_shared[r]);
                memset(st[r], 0xff, BATCH);
                rc = kvc_put_submit(c, is_shared[r] ? ns_sh : ns_own, p, refs, BATCH, st[r],
                                    &ids[r]);
                CHILD_ASSERT(rc == 0, "put_submit %u: %s (%s)", r, kvc_strerror(rc),
                             kvc_last_error(c));
        }
        shuffle(order, NREQS, seq.lo ^ t->index);
        for (uint32_t k = 0; k < NREQS; k++) {
                uint32_t r = order[k], ok = 0;

                rc = kvc_wait(c, ids[r], 20000);
                CHILD_ASSERT(rc >= 0, "put %u: %s (%s)", r, kvc_strerror(rc), kvc_last_error(c));
                for (uint32_t j = 0; j < BATCH; j++) {
                        if (is_shared[r])
                                CHILD_ASSERT(st[r][j] == KVC_ITEM_OK || st[r][j] == KVC_ITEM_EXISTS,
                                             "shared put %u item %u status %u", r, j, st[r][j]);
                        else
                                CHILD_ASSERT(st[r][j] == KVC_ITEM_OK,
                                             "own put %u item %u status %u", r, j, st[r][j]);
                        ok += st[r][j] == KVC_ITEM_OK;
                }
                CHILD_ASSERT((uint32_t)rc == ok, "put %u: done %d but %u items OK", r, rc, ok);
        }

        /* Gets of everything into the second half of the pool, same way. */
        for (uint32_t r = 0; r < NREQS; r++) {
                request_refs(r, true, own_keys, sh_keys, refs, &is_shared[r]);
                memset(st[r], 0xff, BATCH);
                rc = kvc_get_submit(c, is_shared[r] ? ns_sh : ns_own, p, refs, BATCH, st[r],
                                    &ids[r]);
                CHILD_ASSERT(rc == 0, "get_submit %u: %s (%s)", r, kvc_strerror(rc),
                             kvc_last_error(c));
        }
        shuffle(order, NREQS, seq.hi + t->index);
        for (uint32_t k = 0; k < NREQS; k++) {
                uint32_t r = order[k];

                rc = kvc_wait(c, ids[r], 20000);
                CHILD_ASSERT(rc == (int)BATCH, "get %u: %d (%s; %s)", r, rc,
                             rc < 0 ? kvc_strerror(rc) : "short", kvc_last_error(c));
                for (uint32_t j = 0; j < BATCH; j++)
                        CHILD_ASSERT(st[r][j] == KVC_ITEM_OK, "get %u item %u status %u", r, j,
                                     st[r][j]);
        }
        for (uint32_t i = 0; i < OWN + SHARED; i++) {
                long off = e2e_memdiff(kvc_pool_slot(p, OWN + SHARED + i),
                                       copy + (size_t)i * E2E_BLOCK_BYTES, E2E_BLOCK_BYTES);

                CHILD_ASSERT(off < 0, "%s block %u differs at byte %ld",
                             i < OWN ? "own" : "shared", i < OWN ? i : i - OWN, off);
        }
        free(copy);
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

START_TEST(test_concurrent_clients)
{
        struct kvd_test_daemon d;
        struct kvc_key sh_keys[SHARED_BLK];
        struct kvc_block_ref refs[SHARED];
        struct conc t[NPROC];
        struct kvc_stats *s = NULL;
        pid_t pids[NPROC];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st[SHARED], *blk;
        uint64_t seed;
        uint32_t ns_sh, last;
        int barrier[2];

        E2E_START(&d);
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        ck_assert_int_eq(pipe(barrier), 0);
        for (uint32_t i = 0; i < NPROC; i++) {
                t[i] = (struct conc){ .sock = d.socket_path, .token_seed = seed,
                                      .start_fd = barrier[0], .start_wfd = barrier[1],
                                      .index = i };
                pids[i] = e2e_fork(client, &t[i]);
                ck_assert_int_ge(pids[i], 0);
        }
        close(barrier[0]);
        close(barrier[1]);              /* go */
        for (uint32_t i = 0; i < NPROC; i++) {
                char what[32];

                snprintf(what, sizeof(what), "client process %u", i);
                E2E_ASSERT_CHILD_OK(pids[i], what);
        }

        ck_assert_int_eq(e2e_open(d.socket_path, "conc-check", NS_SHARED, &c, &ns_sh), 0);
        ck_assert_msg(e2e_wait_clients(c, 1, E2E_WAIT_MS, &last) == 0,
                      "stats clients %u after every client process exited, want 1", last);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        ck_assert_ptr_nonnull(e2e_tier(s, "host"));
        ck_assert_ptr_nonnull(e2e_ns(s, NS_OWN));
        ck_assert_ptr_nonnull(e2e_ns(s, NS_SHARED));
        ck_assert_uint_eq(e2e_ns(s, NS_OWN)->blocks, NPROC * OWN);
        ck_assert_uint_eq(e2e_ns(s, NS_SHARED)->blocks, SHARED);
        ck_assert_uint_eq(e2e_tier(s, "host")->blocks, NPROC * OWN + SHARED);
        ck_assert_uint_eq(e2e_tier(s, "host")->evictions, 0);
        ck_assert_uint_ge(s->clients_total, NPROC + 1);
        ck_assert_uint_eq(s->gets, NPROC * (OWN + SHARED));
        kvc_stats_free(s);

        /* The shared blocks, raced by every process, hold the right bytes. */
        shared_keys(seed, sh_keys);
        E2E_ASSERT_RC(c, kvc_pool_create(c, SHARED, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < SHARED; i++)
                refs[i] = (struct kvc_block_ref){ .key = sh_keys[i / E2E_LAYERS],
                                                  .layer = i % E2E_LAYERS, .slot = i };
        E2E_ASSERT_RC(c, kvc_get(c, ns_sh, p, refs, SHARED, st), (int)SHARED);
        blk = malloc(E2E_BLOCK_BYTES);
        ck_assert_ptr_nonnull(blk);
        for (uint32_t i = 0; i < SHARED; i++) {
                e2e_fill_block(blk, E2E_BLOCK_BYTES, &sh_keys[i / E2E_LAYERS], i % E2E_LAYERS, 0);
                ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, i), blk, E2E_BLOCK_BYTES) < 0,
                              "shared block %u differs", i);
        }
        free(blk);
        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

/*
 * ITEM_EXISTS acknowledges a block as cached: a Get right after it must load
 * the block, even while another client's Put of the same key is still
 * copying. Client A submits a big Put and does not wait; client B Puts the
 * last keys of A's batch (EXISTS, or OK if it got there first) and at once
 * Gets them. The window is short: a few rounds.
 */
#define RACE_A      512u        /* A's batch: 4 MiB */
#define RACE_B      32u         /* B's: the last keys of A's */
#define RACE_ROUNDS 8

START_TEST(test_exists_then_get_hits)
{
        struct kvd_test_daemon d;
        struct kvc_block_ref *refs, rb[RACE_B];
        kvc_client *a = NULL, *b = NULL;
        kvc_pool *pa = NULL, *pb = NULL;
        uint8_t *st_a, st_b[RACE_B], st_g[RACE_B], *blk;
        uint32_t ns_a, ns_b, batch, nreq, raced = 0;
        struct kvc_key seq;
        uint64_t *ids;
        int rc;

        E2E_START(&d);
        ck_assert_int_eq(e2e_open(d.socket_path, "race-a", NS_SHARED, &a, &ns_a), 0);
        ck_assert_int_eq(e2e_open(d.socket_path, "race-b", NS_SHARED, &b, &ns_b), 0);
        E2E_ASSERT_RC(a, kvc_pool_create(a, RACE_A, E2E_BLOCK_BYTES, &pa), 0);
        E2E_ASSERT_RC(b, kvc_pool_create(b, 2 * RACE_B, E2E_BLOCK_BYTES, &pb), 0);
        batch = kvc_max_items(a) < 128 ? kvc_max_items(a) : 128;
        nreq = (RACE_A + batch - 1) / batch;
        refs = calloc(RACE_A, sizeof(*refs));
        st_a = calloc(RACE_A, 1);
        ids = calloc(nreq, sizeof(*ids));
        blk = malloc(E2E_BLOCK_BYTES);
        ck_assert(refs && st_a && ids && blk);

        for (int round = 0; round < RACE_ROUNDS; round++) {
                uint32_t exists = 0, miss = 0;

                ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
                for (uint32_t i = 0; i < RACE_A; i++) {
                        refs[i] = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = i };
                        kvc_key_private(&seq, i, &refs[i].key);
                        e2e_fill_block(kvc_pool_slot(pa, i), E2E_BLOCK_BYTES, &refs[i].key,
                                       refs[i].layer, 0);
                }
                for (uint32_t i = 0; i < RACE_B; i++) {
                        rb[i] = refs[RACE_A - RACE_B + i];
                        rb[i].slot = i;
                        e2e_fill_block(kvc_pool_slot(pb, i), E2E_BLOCK_BYTES, &rb[i].key,
                                       rb[i].layer, 0);
                        memset(kvc_pool_slot(pb, RACE_B + i), 0x11, E2E_BLOCK_BYTES);
                }

                for (uint32_t r = 0, j = 0; j < RACE_A; r++, j += batch)
                        E2E_ASSERT_RC(a, kvc_put_submit(a, ns_a, pa, refs + j,
                                                        RACE_A - j < batch ? RACE_A - j : batch,
                                                        st_a + j, &ids[r]), 0);
                rc = kvc_put(b, ns_b, pb, rb, RACE_B, st_b);
                ck_assert_msg(rc >= 0, "B's put: %s", kvc_strerror(rc));
                for (uint32_t i = 0; i < RACE_B; i++) {
                        ck_assert_msg(st_b[i] == KVC_ITEM_OK || st_b[i] == KVC_ITEM_EXISTS,
                                      "B's put item %u: status %u", i, st_b[i]);
                        exists += st_b[i] == KVC_ITEM_EXISTS;
                        rb[i].slot = RACE_B + i;
                }
                /* Every block is acknowledged to B: B must be able to read it now. */
                memset(st_g, 0xff, sizeof(st_g));
                rc = kvc_get(b, ns_b, pb, rb, RACE_B, st_g);
                for (uint32_t i = 0; i < RACE_B; i++)
                        miss += st_g[i] == KVC_ITEM_MISS;
                ck_assert_msg(rc == (int)RACE_B,
                              "round %d: B's Get right after its Put (%u of %u items answered "
                              "EXISTS while A's Put of them was in flight): %d loaded, %u MISS",
                              round, exists, RACE_B, rc, miss);
                for (uint32_t i = 0; i < RACE_B; i++) {
                        e2e_fill_block(blk, E2E_BLOCK_BYTES, &rb[i].key, rb[i].layer, 0);
                        ck_assert_msg(e2e_memdiff(kvc_pool_slot(pb, RACE_B + i), blk,
                                                  E2E_BLOCK_BYTES) < 0,
                                      "round %d: block %u differs", round, i);
                }
                for (uint32_t r = 0; r < nreq; r++)
                        ck_assert_int_ge(kvc_wait(a, ids[r], 20000), 0);
                raced += exists;
        }
        fprintf(stderr, "# %u of %u racing Puts answered EXISTS\n", raced,
                RACE_ROUNDS * RACE_B);
        free(blk);
        free(ids);
        free(st_a);
        free(refs);
        kvc_pool_free(pa);
        kvc_pool_free(pb);
        kvc_disconnect(a);
        kvc_disconnect(b);
        E2E_STOP(&d);
}
END_TEST

static Suite *concurrent_suite(void)
{
        Suite *s = suite_create("e2e-concurrent");
        TCase *tc = tcase_create("concurrent");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_concurrent_clients);
        tcase_add_test(tc, test_exists_then_get_hits);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(concurrent_suite)

/* SPDX-License-Identifier: MIT */
/*
 * Prefix Lookup across processes: a process that computes the key chain
 * from the same tokens sees exactly the per-layer cached prefix another
 * process stored, and Delete shrinks it.
 */
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define NBLK     12u
#define NTOK     (NBLK * E2E_BLOCK_TOKENS)
#define NS_NAME  "e2e-lookup-model"

/* What the writer stores: which blocks of the chain, per layer. Layer 2 has
 * a hole at block 4 (blocks after it do not count), layer 3 nothing. */
static bool stored(uint32_t blk, uint32_t layer)
{
        switch (layer) {
        case 0: return blk < 10;
        case 1: return blk < 6;
        case 2: return blk < 9 && blk != 4;
        default: return false;
        }
}

struct lk {
        const char *sock;
        uint64_t seed;
};

static void tokens(uint64_t seed, uint32_t *tok)
{
        e2e_tokens(tok, NTOK, seed);
}

static int writer(void *arg)
{
        struct lk *t = arg;
        uint32_t tok[NTOK];
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[NBLK * E2E_LAYERS];
        uint8_t st[NBLK * E2E_LAYERS];
        uint32_t n = 0, ns;
        kvc_client *c;
        kvc_pool *p;
        int rc;

        tokens(t->seed, tok);
        CHILD_ASSERT(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK) == NBLK,
                     "prefix chain");
        CHILD_ASSERT(e2e_open(t->sock, "lookup-writer", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, NBLK * E2E_LAYERS, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        for (uint32_t b = 0; b < NBLK; b++)
                for (uint32_t l = 0; l < E2E_LAYERS; l++) {
                        if (!stored(b, l))
                                continue;
                        e2e_fill_block(kvc_pool_slot(p, n), E2E_BLOCK_BYTES, &keys[b], l, 0);
                        refs[n] = (struct kvc_block_ref){ .key = keys[b], .layer = l, .slot = n };
                        n++;
                }
        rc = kvc_put(c, ns, p, refs, n, st);
        CHILD_ASSERT(rc == (int)n, "put %u: %d (%s: %s)", n, rc, kvc_strerror(rc),
                     kvc_last_error(c));
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

/* Leading keys of keys[first..first+nkeys) stored at layer: the daemon
 * counts cached leading keys, whatever chain they come from. */
static uint32_t expected_prefix(uint32_t layer, uint32_t first, uint32_t nkeys)
{
        uint32_t n = 0;

        while (n < nkeys && stored(first + n, layer))
                n++;
        return n;
}

static void assert_prefix(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
                          const uint32_t want[E2E_LAYERS], const char *what)
{
        uint32_t got[E2E_LAYERS];

        memset(got, 0xff, sizeof(got));
        E2E_ASSERT_RC(c, kvc_lookup(c, ns, keys, n, got, E2E_LAYERS), 0);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_msg(got[l] == want[l], "%s: layer %u prefix %u, want %u", what, l,
                              got[l], want[l]);
}

START_TEST(test_prefix_across_processes)
{
        struct kvd_test_daemon d;
        uint32_t tok[NTOK], want[E2E_LAYERS];
        struct kvc_key keys[NBLK];
        kvc_client *c = NULL;
        struct lk t;
        uint32_t ns;

        E2E_START(&d);
        t.sock = d.socket_path;
        ck_assert_int_eq(e2e_random(&t.seed, sizeof(t.seed)), 0);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer process");

        /* This process derives the chain from the tokens on its own. */
        tokens(t.seed, tok);
        ck_assert_int_eq(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK), NBLK);
        ck_assert_int_eq(e2e_open(d.socket_path, "lookup-reader", NS_NAME, &c, &ns), 0);

        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                want[l] = expected_prefix(l, 0, NBLK);
        ck_assert_uint_eq(want[0], 10);
        ck_assert_uint_eq(want[1], 6);
        ck_assert_uint_eq(want[2], 4);
        ck_assert_uint_eq(want[3], 0);
        assert_prefix(c, ns, keys, NBLK, want, "whole chain");

        /* A shorter query is capped by its length. */
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                want[l] = expected_prefix(l, 0, 3);
        assert_prefix(c, ns, keys, 3, want, "first 3 keys");

        /* Keys are opaque to the daemon: the chain from block 1 on counts from there. */
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                want[l] = expected_prefix(l, 1, NBLK - 1);
        ck_assert_uint_eq(want[0], 9);
        ck_assert_uint_eq(want[2], 3);
        assert_prefix(c, ns, keys + 1, NBLK - 1, want, "keys from block 1");

        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_shared_prefix_diverging_tokens)
{
        struct kvd_test_daemon d;
        uint32_t tok[NTOK], want[E2E_LAYERS];
        struct kvc_key keys[NBLK];
        kvc_client *c = NULL;
        struct lk t;
        uint32_t ns;

        E2E_START(&d);
        t.sock = d.socket_path;
        ck_assert_int_eq(e2e_random(&t.seed, sizeof(t.seed)), 0);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer process");

        /* Same first 5 blocks of tokens, then one token differs: the chain keys
         * agree up to block 4 and differ from block 5 on. */
        tokens(t.seed, tok);
        tok[5 * E2E_BLOCK_TOKENS + 3] ^= 0x5555;
        ck_assert_int_eq(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK), NBLK);
        ck_assert_int_eq(e2e_open(d.socket_path, "lookup-diverge", NS_NAME, &c, &ns), 0);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                want[l] = expected_prefix(l, 0, 5);
        ck_assert_uint_eq(want[0], 5);
        ck_assert_uint_eq(want[1], 5);
        ck_assert_uint_eq(want[2], 4);
        assert_prefix(c, ns, keys, NBLK, want, "diverging chain");

        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_delete_shrinks_prefix)
{
        struct kvd_test_daemon d;
        uint32_t tok[NTOK], want[E2E_LAYERS];
        struct kvc_key keys[NBLK];
        struct kvc_block_ref ref;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st;
        struct lk t;
        uint32_t ns;

        E2E_START(&d);
        t.sock = d.socket_path;
        ck_assert_int_eq(e2e_random(&t.seed, sizeof(t.seed)), 0);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer process");

        tokens(t.seed, tok);
        ck_assert_int_eq(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK), NBLK);
        ck_assert_int_eq(e2e_open(d.socket_path, "lookup-deleter", NS_NAME, &c, &ns), 0);

        /* Block 2 at every layer: stored at layers 0, 1, 2. */
        E2E_ASSERT_RC(c, kvc_delete(c, ns, &keys[2], 1, -1), 3);
        want[0] = 2, want[1] = 2, want[2] = 2, want[3] = 0;
        assert_prefix(c, ns, keys, NBLK, want, "after deleting block 2");

        /* Block 1 at layer 0 only. */
        E2E_ASSERT_RC(c, kvc_delete(c, ns, &keys[1], 1, 0), 1);
        want[0] = 1;
        assert_prefix(c, ns, keys, NBLK, want, "after deleting block 1 at layer 0");

        /* Deleting what is not there deletes nothing. */
        E2E_ASSERT_RC(c, kvc_delete(c, ns, &keys[1], 1, 0), 0);
        E2E_ASSERT_RC(c, kvc_delete(c, ns, &keys[11], 1, -1), 0);
        assert_prefix(c, ns, keys, NBLK, want, "after deleting absent blocks");

        /* A deleted block is gone for Get too; its neighbours are not. */
        E2E_ASSERT_RC(c, kvc_pool_create(c, 2, E2E_BLOCK_BYTES, &p), 0);
        ref = (struct kvc_block_ref){ .key = keys[2], .layer = 0, .slot = 0 };
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &st), 0);
        ck_assert_uint_eq(st, KVC_ITEM_MISS);
        ref = (struct kvc_block_ref){ .key = keys[3], .layer = 0, .slot = 1 };
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &st), 1);
        {
                uint8_t *blk = malloc(E2E_BLOCK_BYTES);

                ck_assert_ptr_nonnull(blk);
                e2e_fill_block(blk, E2E_BLOCK_BYTES, &keys[3], 0, 0);
                ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, 1), blk, E2E_BLOCK_BYTES) < 0,
                              "block 3 changed after deleting block 2");
                free(blk);
        }

        /* Re-storing the deleted block restores the prefix at that layer. */
        e2e_fill_block(kvc_pool_slot(p, 0), E2E_BLOCK_BYTES, &keys[2], 0, 0);
        ref = (struct kvc_block_ref){ .key = keys[2], .layer = 0, .slot = 0 };
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, &ref, 1, &st), 1);
        ck_assert_uint_eq(st, KVC_ITEM_OK);
        want[0] = 1;  /* block 1 at layer 0 is still deleted */
        assert_prefix(c, ns, keys, NBLK, want, "after re-putting block 2 at layer 0");
        /* From block 1: deleted at layer 0; block 2 still gone at layers 1, 2. */
        want[0] = 0, want[1] = 1, want[2] = 1, want[3] = 0;
        assert_prefix(c, ns, keys + 1, NBLK - 1, want, "keys from block 1");

        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

static Suite *lookup_suite(void)
{
        Suite *s = suite_create("e2e-lookup");
        TCase *tc = tcase_create("lookup");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_prefix_across_processes);
        tcase_add_test(tc, test_shared_prefix_diverging_tokens);
        tcase_add_test(tc, test_delete_shrinks_prefix);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(lookup_suite)

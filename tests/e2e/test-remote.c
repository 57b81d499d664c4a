/* SPDX-License-Identifier: MIT */
/*
 * The remote tier on a real 3-master Redis Cluster (tools/redis-cluster):
 * two daemons with their own host and SSD directories, two "machines",
 * share prefix blocks through it. A stores, a client of B finds them
 * (Lookup) and reads them byte-exact; private blocks never leave A; a
 * namespace of the same name and another fingerprint never sees them; a
 * damaged value is a miss; a node killed, a node that hangs, slots moved
 * while B reads: both keep serving, count what failed, and recover.
 */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"
#include "remote-common.h"
#include "ssd-common.h"

#define NBLK    24u
#define NTOK    (NBLK * E2E_BLOCK_TOKENS)
#define NITEMS  (NBLK * E2E_LAYERS)
#define NS_NAME "e2e-remote-model"
#define FP_A    "model=llama-e2e rev=1 dtype=f16 tp=0/1"
#define FP_B    "model=llama-e2e rev=2 dtype=f16 tp=0/1"

static struct e2e_cluster *cl = &e2e_fixture_cluster;

struct machine {
        struct kvd_test_daemon d;
        kvc_client *c;
        uint32_t ns;
        kvc_pool *p;
        char url[512];
        struct ssd_dir ssd;
        bool have_ssd;
};

#define SSD_ARGS(dir) "--ssd-dir", (dir), "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M"

/* The remote-codec of the machines machine_start() starts. */
static const char *remote_codec = "none";

/* Starts a daemon on the fixture cluster (with an SSD tier of its own when
 * ssd) and connects to it with namespace NS_NAME of fingerprint fp. */
static void machine_start(struct machine *m, const char *fp, bool ssd, const char *timeout_ms)
{
        struct kvc_ns_opts o = { .size = sizeof(o), .name = NS_NAME, .geometry = &e2e_geom,
                                 .fingerprint = fp, .fingerprint_len = strlen(fp) };
        uint64_t bb;

        memset(m, 0, sizeof(*m));
        snprintf(m->url, sizeof(m->url), "redis-cluster://%s", cl->seeds);
        if (ssd) {
                ssd_dir_make(&m->ssd);
                m->have_ssd = true;
                E2E_START(&m->d, "--remote", m->url, "--remote-timeout-ms", timeout_ms, "--remote-codec", remote_codec,
                          SSD_ARGS(m->ssd.path), );
        } else {
                E2E_START(&m->d, "--remote", m->url, "--remote-timeout-ms", timeout_ms, "--remote-codec",
                          remote_codec, );
        }
        ck_assert_int_eq(kvc_connect(m->d.socket_path, "remote-e2e", &m->c), 0);
        E2E_ASSERT_RC(m->c, kvc_register_namespace_opts(m->c, &o, &m->ns, &bb), 0);
        ck_assert_uint_eq(bb, E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(m->c, kvc_pool_create(m->c, NITEMS, E2E_BLOCK_BYTES, &m->p), 0);
}

static void machine_stop(struct machine *m)
{
        kvc_pool_free(m->p);
        kvc_disconnect(m->c);
        E2E_STOP(&m->d);
        if (m->have_ssd)
                ssd_dir_remove(&m->ssd);
}

/* The prefix chain of seed's tokens. */
static void chain(uint64_t seed, struct kvc_key *keys)
{
        uint32_t tok[NTOK];

        e2e_tokens(tok, NTOK, seed);
        ck_assert_int_eq(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK), NBLK);
}

static void refs_of(const struct kvc_key *keys, struct kvc_block_ref *refs)
{
        for (uint32_t b = 0; b < NBLK; b++)
                for (uint32_t l = 0; l < E2E_LAYERS; l++)
                        refs[b * E2E_LAYERS + l] = (struct kvc_block_ref){ .key = keys[b], .layer = l,
                                                                           .slot = b * E2E_LAYERS + l };
}

/* Stores blocks [first, first + n) of keys from m, every layer (shared or
 * not); all OK. */
static void put_range(struct machine *m, const struct kvc_key *keys, uint32_t first, uint32_t n, unsigned flags)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        uint32_t items = n * E2E_LAYERS;
        uint64_t id;

        refs_of(keys, refs);
        for (uint32_t i = first * E2E_LAYERS; i < (first + n) * E2E_LAYERS; i++)
                e2e_fill_block(kvc_pool_slot(m->p, i), E2E_BLOCK_BYTES, &keys[i / E2E_LAYERS], i % E2E_LAYERS, 7);
        E2E_ASSERT_RC(m->c,
                      kvc_put_submit_flags(m->c, m->ns, m->p, refs + first * E2E_LAYERS, items, flags, st, &id), 0);
        E2E_ASSERT_RC(m->c, kvc_wait(m->c, id, E2E_WAIT_MS), (int)items);
}

static void put_all(struct machine *m, const struct kvc_key *keys, unsigned flags)
{
        put_range(m, keys, 0, NBLK, flags);
}

/* Gets every block of keys into m's pool: how many came, each checked
 * byte-exact (a block that came must be the one stored). */
static int get_all(struct machine *m, const struct kvc_key *keys, unsigned flags, uint8_t *st)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t want[E2E_BLOCK_BYTES];
        uint64_t id;
        int n;

        refs_of(keys, refs);
        for (uint32_t i = 0; i < NITEMS; i++)
                memset(kvc_pool_slot(m->p, i), 0xee, E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(m->c, kvc_get_submit_flags(m->c, m->ns, m->p, refs, NITEMS, flags, st, &id), 0);
        n = kvc_wait(m->c, id, E2E_WAIT_MS);
        ck_assert_msg(n >= 0, "get: %s (%s)", kvc_strerror(n), kvc_last_error(m->c));
        for (uint32_t i = 0; i < NITEMS; i++) {
                if (st[i] != KVC_ITEM_OK) {
                        ck_assert_msg(st[i] == KVC_ITEM_MISS, "item %u: status %u", i, st[i]);
                        continue;
                }
                e2e_fill_block(want, sizeof(want), &keys[i / E2E_LAYERS], i % E2E_LAYERS, 7);
                ck_assert_msg(e2e_memdiff(want, kvc_pool_slot(m->p, i), sizeof(want)) < 0,
                              "item %u: served bytes that are not the block", i);
        }
        return n;
}

static struct kvc_stats *stats(struct machine *m)
{
        struct kvc_stats *s = NULL;

        E2E_ASSERT_RC(m->c, kvc_stats_get(m->c, &s), 0);
        ck_assert_int_eq(s->remote.have, 1);
        return s;
}

/* Keys in the cluster (DBSIZE over the nodes that answer). */
static long cluster_keys(void)
{
        long n = 0;

        for (unsigned i = 1; i <= cl->n; i++) {
                char out[64];

                if (e2e_redis_cli_node(cl, i, out, sizeof(out), "DBSIZE", NULL) > 0)
                        n += atol(out);
        }
        return n;
}

static void flush_cluster(void)
{
        char out[64];

        for (unsigned i = 1; i <= cl->n; i++)
                ck_assert_int_ge(e2e_redis_cli_node(cl, i, out, sizeof(out), "FLUSHALL", NULL), 0);
}

/* Waits until m's remote stats have written n blocks (write-through ends
 * after the Put's reply). */
struct writes_arg {
        uint64_t writes;
};

static bool wrote(const struct kvc_stats *s, void *arg)
{
        return s->remote.writes >= ((struct writes_arg *)arg)->writes;
}

static void wait_writes(struct machine *m, uint64_t n)
{
        struct writes_arg a = { n };
        struct kvc_stats *last = NULL;
        int rc = e2e_wait_stats(m->c, wrote, &a, E2E_WAIT_MS, &last);

        ck_assert_msg(rc == 0, "remote writes %llu (skips %llu, errors %llu), want %llu",
                      last ? (unsigned long long)last->remote.writes : 0,
                      last ? (unsigned long long)last->remote.write_skips : 0,
                      last ? (unsigned long long)last->remote.errors : 0, (unsigned long long)n);
        kvc_stats_free(last);
}

static void lookup(struct machine *m, const struct kvc_key *keys, uint32_t *prefix)
{
        E2E_ASSERT_RC(m->c, kvc_lookup(m->c, m->ns, keys, NBLK, prefix, E2E_LAYERS), 0);
}

START_TEST(test_share_between_machines)
{
        struct machine a, b;
        struct kvc_key keys[NBLK], priv[NBLK];
        uint32_t prefix[E2E_LAYERS];
        uint8_t st[NITEMS];
        struct kvc_stats *s;
        uint64_t seed;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, true, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        chain(seed + 1, priv);

        put_all(&a, keys, KVC_PUT_SHARED);
        put_all(&a, priv, 0);
        wait_writes(&a, NITEMS);
        /* One key per shared block; the private ones stayed on A. */
        ck_assert_int_eq(cluster_keys(), (long)NITEMS);

        /* B has nothing of its own: its Lookup finds the chain remotely. */
        lookup(&b, keys, prefix);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], NBLK);
        lookup(&b, priv, prefix);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], 0);

        /* A plain Get does not ask the remote tier; a shared one does. */
        ck_assert_int_eq(get_all(&b, keys, 0, st), 0);
        ck_assert_int_eq(get_all(&b, keys, KVC_GET_SHARED, st), (int)NITEMS);
        ck_assert_int_eq(get_all(&b, priv, KVC_GET_SHARED, st), 0);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.hits, NITEMS);
        ck_assert_uint_ge(s->remote.misses, NITEMS);
        ck_assert_uint_eq(s->remote.crc_failures, 0);
        ck_assert_uint_eq(s->remote.n_nodes, 3);
        kvc_stats_free(s);

        /* Promoted: B serves them from its own host memory now. */
        ck_assert_int_eq(get_all(&b, keys, KVC_GET_SHARED, st), (int)NITEMS);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.hits, NITEMS);
        kvc_stats_free(s);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* A Lookup's prefix goes on through the remote tier's blocks and then
 * through this daemon's own again. */
START_TEST(test_lookup_remote_then_local)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        uint32_t prefix[E2E_LAYERS];
        uint64_t seed;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, false, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_range(&a, keys, 0, 10, KVC_PUT_SHARED);
        wait_writes(&a, 10 * E2E_LAYERS);
        put_range(&b, keys, 10, NBLK - 10, 0);
        lookup(&b, keys, prefix);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], NBLK);
        /* Without the remote tier's part, nothing: the chain starts there. */
        flush_cluster();
        lookup(&b, keys, prefix);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], 0);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* A shared Prefetch brings the remote tier's blocks into host memory: the
 * Gets after it need not ask (a plain Get finds them). */
START_TEST(test_prefetch_from_remote)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        struct kvc_stats *s;
        uint64_t seed, id;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, false, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);
        refs_of(keys, refs);
        E2E_ASSERT_RC(b.c, kvc_prefetch_submit_flags(b.c, b.ns, refs, NITEMS, KVC_GET_SHARED | 4u, st, &id),
                      -EINVAL);
        E2E_ASSERT_RC(b.c, kvc_prefetch_submit_flags(b.c, b.ns, refs, NITEMS, KVC_GET_SHARED, st, &id), 0);
        E2E_ASSERT_RC(b.c, kvc_wait(b.c, id, E2E_WAIT_MS), (int)NITEMS);
        ck_assert_int_eq(get_all(&b, keys, 0, st), (int)NITEMS);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.hits, NITEMS);
        kvc_stats_free(s);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

START_TEST(test_fingerprints_never_mix)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        uint32_t prefix[E2E_LAYERS];
        uint8_t st[NITEMS];
        struct kvc_ns_opts o = { .size = sizeof(o), .name = NS_NAME, .geometry = &e2e_geom,
                                 .fingerprint = FP_B, .fingerprint_len = strlen(FP_B) };
        uint32_t ns2;
        uint64_t seed, bb;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_B, false, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);

        lookup(&b, keys, prefix);
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], 0);
        ck_assert_int_eq(get_all(&b, keys, KVC_GET_SHARED, st), 0);
        /* On one daemon, another fingerprint under the same name is a conflict. */
        ck_assert_int_eq(kvc_register_namespace_opts(a.c, &o, &ns2, &bb), -KVC_E_NS_CONFLICT);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* A value damaged in the cluster (in the payload, or in the header) is a
 * miss and a crc failure, never served; the rest still comes. */
START_TEST(test_corrupt_value_is_a_miss)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        char names[4096], *save = NULL, *k1, *k2;
        uint8_t st[NITEMS];
        struct kvc_stats *s;
        uint64_t seed;
        int n, len;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, false, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);

        /* Two keys from the node that has some. */
        names[0] = '\0';
        for (unsigned i = 1; i <= cl->n && !names[0]; i++) {
                len = e2e_redis_cli_node(cl, i, names, sizeof(names), "KEYS", "kvd:*", NULL);
                ck_assert_int_ge(len, 0);
        }
        k1 = strtok_r(names, "\n", &save);
        k2 = strtok_r(NULL, "\n", &save);
        ck_assert_ptr_nonnull(k1);
        ck_assert_ptr_nonnull(k2);
        ck_assert_int_ge(e2e_redis_cli(cl, (char[64]){ 0 }, 64, "SETRANGE", k1, "1000", "garbage", NULL), 0);
        ck_assert_int_ge(e2e_redis_cli(cl, (char[64]){ 0 }, 64, "SETRANGE", k2, "40", "x", NULL), 0);

        n = get_all(&b, keys, KVC_GET_SHARED, st);
        ck_assert_int_eq(n, (int)NITEMS - 2);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.crc_failures, 2);
        ck_assert_uint_eq(s->remote.hits, NITEMS - 2);
        kvc_stats_free(s);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* remote-codec zstd: values are stored encoded (the header says so) and
 * come back byte-exact on the other machine; a machine with no codec takes
 * only raw values, so it misses them, never serves them wrong. */
START_TEST(test_codec_between_machines)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        char names[4096], out[64], *save = NULL, *k1;
        uint8_t st[NITEMS];
        struct kvc_stats *s;
        uint64_t seed;

        flush_cluster();
        remote_codec = "zstd";
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, true, "2000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);
        ck_assert_int_eq(get_all(&b, keys, KVC_GET_SHARED, st), (int)NITEMS);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.hits, NITEMS);
        ck_assert_uint_eq(s->remote.crc_failures, 0);
        kvc_stats_free(s);
        machine_stop(&b);

        names[0] = '\0';
        for (unsigned i = 1; i <= cl->n && !names[0]; i++)
                ck_assert_int_ge(e2e_redis_cli_node(cl, i, names, sizeof(names), "KEYS", "kvd:*", NULL), 0);
        k1 = strtok_r(names, "\n", &save);
        ck_assert_ptr_nonnull(k1);
        /* The slot header's codec field (offset 6, little-endian). */
        ck_assert_int_eq(e2e_redis_cli(cl, out, sizeof(out), "GETRANGE", k1, "6", "6", NULL), 1);
        ck_assert_int_eq(out[0], 1);

        remote_codec = "none";
        machine_start(&b, FP_A, false, "2000");
        ck_assert_int_eq(get_all(&b, keys, KVC_GET_SHARED, st), 0);
        s = stats(&b);
        ck_assert_uint_eq(s->remote.hits, 0);
        ck_assert_uint_eq(s->remote.misses, NITEMS);
        kvc_stats_free(s);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

struct nodes_arg {
        unsigned down;          /* want exactly this many nodes down */
};

static bool nodes_down(const struct kvc_stats *s, void *arg)
{
        unsigned down = 0;

        for (uint32_t i = 0; i < s->remote.n_nodes; i++)
                down += !s->remote.nodes[i].up;
        return s->remote.n_nodes == 3 && down == ((struct nodes_arg *)arg)->down;
}

static void wait_nodes_down(struct machine *m, unsigned down)
{
        struct nodes_arg a = { down };
        struct kvc_stats *last = NULL;
        int rc = e2e_wait_stats(m->c, nodes_down, &a, E2E_WAIT_MS, &last);

        ck_assert_msg(rc == 0, "want %u nodes down: condition '%s'", down, last ? last->remote.condition : "?");
        kvc_stats_free(last);
}

/* A node killed while both daemons run: local blocks are served as ever,
 * blocks on the dead node are misses (counted), the others still come;
 * once it is back (empty: the nodes keep nothing on disk) sharing works
 * again. */
START_TEST(test_node_killed)
{
        struct machine a, b;
        struct kvc_key keys[NBLK], more[NBLK];
        uint8_t st[NITEMS];
        struct kvc_stats *s;
        uint64_t seed;
        int n;

        flush_cluster();
        machine_start(&a, FP_A, false, "1000");
        machine_start(&b, FP_A, false, "1000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);

        ck_assert_int_eq(e2e_cluster_kill(cl, 1), 0);
        /* A's own blocks: all there. */
        ck_assert_int_eq(get_all(&a, keys, KVC_GET_SHARED, st), (int)NITEMS);
        /* B: those on the two live nodes (about two thirds), not the rest. */
        n = get_all(&b, keys, KVC_GET_SHARED, st);
        ck_assert_int_gt(n, 0);
        ck_assert_int_lt(n, (int)NITEMS);
        wait_nodes_down(&b, 1);
        s = stats(&b);
        ck_assert_uint_gt(s->remote.errors, 0);
        ck_assert_uint_eq(s->remote.crc_failures, 0);
        kvc_stats_free(s);
        /* Stores go on: the blocks for the dead node are counted, not waited for. */
        chain(seed + 1, more);
        put_all(&a, more, KVC_PUT_SHARED);

        ck_assert_int_eq(e2e_cluster_restart(cl, 1), 0);
        wait_nodes_down(&b, 0);
        wait_nodes_down(&a, 0);
        chain(seed + 2, more);
        s = stats(&a);
        put_all(&a, more, KVC_PUT_SHARED);
        wait_writes(&a, s->remote.writes + NITEMS);
        kvc_stats_free(s);
        ck_assert_int_eq(get_all(&b, more, KVC_GET_SHARED, st), (int)NITEMS);
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* A node that stops answering, with a remote timeout far beyond the test's
 * patience: requests for local blocks are never held behind it. */
START_TEST(test_hung_node_costs_local_nothing)
{
        struct machine a;
        struct kvc_key keys[NBLK], other[NBLK];
        uint32_t prefix[E2E_LAYERS];
        uint8_t st[NITEMS];
        uint64_t seed;

        flush_cluster();
        machine_start(&a, FP_A, false, "60000");
        ck_assert_int_eq(e2e_random(&seed, sizeof(seed)), 0);
        chain(seed, keys);
        chain(seed + 1, other);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);
        ck_assert_int_eq(e2e_cluster_pause(cl, 2), 0);

        /* Stored and read locally, fully answered at once. */
        put_all(&a, other, KVC_PUT_SHARED);
        ck_assert_int_eq(get_all(&a, keys, KVC_GET_SHARED, st), (int)NITEMS);
        ck_assert_int_eq(get_all(&a, other, 0, st), (int)NITEMS);
        lookup(&a, keys, prefix); /* all local: the remote tier is not asked */
        for (uint32_t l = 0; l < E2E_LAYERS; l++)
                ck_assert_uint_eq(prefix[l], NBLK);
        ck_assert_int_eq(e2e_cluster_resume(cl, 2), 0);
        ck_assert_int_eq(e2e_cluster_wait(cl), 0);
        machine_stop(&a);
}
END_TEST

struct reader {
        const char *sock;
        uint64_t seed;
        int stop_fd;            /* read end: EOF once the slots have moved */
        int stop_wfd;           /* the parent's write end: closed in the reader */
};

/* Reads the chain from the remote tier over and over (a Delete between
 * rounds drops the local copies, not the remote ones): every round must
 * find every block, byte-exact. */
static int reader(void *arg)
{
        struct reader *r = arg;
        struct kvc_ns_opts o = { .size = sizeof(o), .name = NS_NAME, .geometry = &e2e_geom,
                                 .fingerprint = FP_A, .fingerprint_len = strlen(FP_A) };
        struct kvc_key keys[NBLK];
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS], want[E2E_BLOCK_BYTES];
        uint32_t tok[NTOK], ns;
        kvc_client *c;
        kvc_pool *p;
        uint64_t id, bb;

        e2e_tokens(tok, NTOK, r->seed);
        CHILD_ASSERT(kvc_key_prefix_chain(tok, NTOK, E2E_BLOCK_TOKENS, keys, NBLK) == NBLK, "chain");
        CHILD_ASSERT(kvc_connect(r->sock, "reshard-reader", &c) == 0, "connect");
        CHILD_ASSERT(kvc_register_namespace_opts(c, &o, &ns, &bb) == 0, "register");
        CHILD_ASSERT(kvc_pool_create(c, NITEMS, E2E_BLOCK_BYTES, &p) == 0, "pool");
        refs_of(keys, refs);
        close(r->stop_wfd);
        /* Until the parent has moved the slots, then one round more. */
        for (int round = 0, last = 0; !last; round++) {
                struct pollfd pf = { .fd = r->stop_fd, .events = POLLIN };
                int n;

                last = poll(&pf, 1, 0) > 0;

                CHILD_ASSERT(kvc_get_submit_flags(c, ns, p, refs, NITEMS, KVC_GET_SHARED, st, &id) == 0, "get");
                n = kvc_wait(c, id, E2E_WAIT_MS);
                CHILD_ASSERT(n == (int)NITEMS, "round %d: %d of %u blocks came", round, n, NITEMS);
                for (uint32_t i = 0; i < NITEMS; i++) {
                        e2e_fill_block(want, sizeof(want), &keys[i / E2E_LAYERS], i % E2E_LAYERS, 7);
                        CHILD_ASSERT(e2e_memdiff(want, kvc_pool_slot(p, i), sizeof(want)) < 0,
                                     "round %d item %u: not the block", round, i);
                }
                CHILD_ASSERT(kvc_delete(c, ns, keys, NBLK, -1) >= 0, "delete");
        }
        kvc_pool_free(p);
        kvc_disconnect(c);
        return 0;
}

static bool refreshed(const struct kvc_stats *s, void *arg)
{
        (void)arg;
        return s->remote.slot_map_refreshes > 1;
}

/* Slots move (with their keys) from one node to another while B reads:
 * MOVED and ASK are followed and every read is whole. */
START_TEST(test_reshard_during_reads)
{
        struct machine a, b;
        struct kvc_key keys[NBLK];
        struct reader r;
        struct kvc_stats *s;
        uint64_t redirects = 0, moved = 0;
        int stop[2];
        pid_t pid;

        flush_cluster();
        machine_start(&a, FP_A, false, "2000");
        machine_start(&b, FP_A, false, "2000");
        ck_assert_int_eq(e2e_random(&r.seed, sizeof(r.seed)), 0);
        chain(r.seed, keys);
        put_all(&a, keys, KVC_PUT_SHARED);
        wait_writes(&a, NITEMS);

        r.sock = b.d.socket_path;
        ck_assert_int_eq(pipe(stop), 0);
        r.stop_fd = stop[0];
        r.stop_wfd = stop[1];
        pid = e2e_fork(reader, &r);
        ck_assert_int_gt(pid, 0);
        close(stop[0]);
        ck_assert_int_eq(e2e_cluster_reshard(cl, 1, 2, 1000), 0);
        ck_assert_int_eq(e2e_cluster_reshard(cl, 3, 1, 600), 0);
        close(stop[1]);
        E2E_ASSERT_CHILD_OK(pid, "reader during resharding");
        s = stats(&b);
        for (uint32_t i = 0; i < s->remote.n_nodes; i++) {
                redirects += s->remote.nodes[i].moved + s->remote.nodes[i].ask;
                moved += s->remote.nodes[i].moved;
        }
        ck_assert_uint_gt(redirects, 0);
        ck_assert_uint_eq(s->remote.crc_failures, 0);
        kvc_stats_free(s);
        /* A MOVED schedules a fetch of the whole map (at most one a second):
         * it comes, reads or not. */
        if (moved > 0) {
                s = NULL;
                ck_assert_msg(e2e_wait_stats(b.c, refreshed, NULL, E2E_WAIT_MS, &s) == 0,
                              "%llu MOVED, but the slot map was fetched %llu times",
                              (unsigned long long)moved, s ? (unsigned long long)s->remote.slot_map_refreshes : 0ull);
                kvc_stats_free(s);
        }
        machine_stop(&a);
        machine_stop(&b);
}
END_TEST

/* kvdrive-bench remote as a user runs it, small: its own cluster and
 * daemons, every block checked, both sides measured. */
START_TEST(test_bench_remote_runs)
{
        const char *const args[] = { "remote", "--blocks", "48", "--repeat", "1", "--block-bytes", "64K", "--json",
                                     NULL };
        struct ssd_dir tmp;
        char *out = NULL, *err = NULL;
        json_error_t jerr;
        json_t *root, *row;
        int st;

        ssd_dir_make(&tmp);
        st = e2e_run_bench(tmp.path, args, E2E_CLUSTER_TIMEOUT_MS, &out, &err);
        ck_assert_msg(st == 0, "kvdrive-bench remote: status %d: %s", st, err);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "not JSON: %s", jerr.text);
        row = json_array_get(json_object_get(root, "rows"), 0);
        ck_assert_ptr_nonnull(row);
        ck_assert_int_eq(json_integer_value(json_object_get(row, "size")), 65536);
        ck_assert(json_real_value(json_object_get(json_object_get(row, "kvdrive_gibps"), "median")) > 0);
        ck_assert(json_real_value(json_object_get(json_object_get(row, "redis_benchmark_gibps"), "median")) > 0);
        json_decref(root);
        free(out);
        free(err);
        ssd_dir_remove(&tmp);
}
END_TEST

/* A remote address that is not one: the daemon refuses to start (its
 * message, on its stderr, says why: tests/unit/test_config.c). */
START_TEST(test_bad_remote_refused)
{
        static const char *const bad[] = { "redis://127.0.0.1:6379", "redis-cluster://", "redis-cluster://host",
                                           "redis-cluster://127.0.0.1:0", "redis-cluster://127.0.0.1:6379,:7" };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct kvd_test_daemon d;
                const char *const args[] = { "--remote", bad[i], NULL };

                ck_assert_int_eq(kvd_test_daemon_prepare(&d), 0);
                ck_assert_msg(kvd_test_daemon_start(&d, args) != 0, "started with --remote %s", bad[i]);
                ck_assert_msg(strstr(d.error, "exited with status 1") != NULL, "--remote %s: %s", bad[i], d.error);
                kvd_test_daemon_stop(&d);
        }
}
END_TEST

static Suite *remote_suite(void)
{
        Suite *s = suite_create("remote");
        TCase *tc = tcase_create("cluster");

        tcase_set_timeout(tc, 240);
        tcase_add_unchecked_fixture(tc, e2e_cluster_setup, e2e_cluster_teardown);
        tcase_add_test(tc, test_share_between_machines);
        tcase_add_test(tc, test_lookup_remote_then_local);
        tcase_add_test(tc, test_prefetch_from_remote);
        tcase_add_test(tc, test_fingerprints_never_mix);
        tcase_add_test(tc, test_corrupt_value_is_a_miss);
        tcase_add_test(tc, test_codec_between_machines);
        tcase_add_test(tc, test_node_killed);
        tcase_add_test(tc, test_hung_node_costs_local_nothing);
        tcase_add_test(tc, test_reshard_during_reads);
        suite_add_tcase(s, tc);
        tc = tcase_create("config");
        tcase_add_test(tc, test_bad_remote_refused);
        tcase_set_timeout(tc, 240);
        tcase_add_test(tc, test_bench_remote_runs);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN_IF(e2e_have_redis(), "redis-server or redis-cli is not installed", remote_suite)

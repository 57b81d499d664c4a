/* SPDX-License-Identifier: MIT */
/* Host tier slabs and the cache on top: namespaces, LRU eviction, pins. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "check-main.h"
#include "host.h"
#include "index.h"
#include "slab.h"

static struct kvd_config cfg;

static void setup(void)
{
        const char *argv[] = { "kvdrived", "--host-bytes=16M", "--host-extent-bytes=1M", "--host-lock=off",
                               "--host-hugepages=false", "--max-namespaces=4" };

        ck_assert_int_eq(kvd_config_load(&cfg, 6, (char **)argv), 0);
}

static void teardown(void)
{
        kvd_config_free(&cfg);
}

START_TEST(host_slabs)
{
        struct kvd_host *h;
        struct kvd_tier *t;
        struct kvd_tier_usage u;
        uint32_t locs[64], loc;
        int a, b;

        ck_assert_int_eq(kvd_host_new(&cfg, &h), 0);
        t = kvd_host_tier(h);
        a = t->ops->class_for(t, 256 << 10);       /* 4 per extent */
        b = t->ops->class_for(t, 1000);            /* rounds to 4 KiB */
        ck_assert_int_ge(a, 0);
        ck_assert_int_ne(a, b);
        ck_assert_int_eq(t->ops->class_for(t, 256 << 10), a);
        ck_assert_uint_eq(kvd_host_class_bytes(h, b), 4096);
        ck_assert_int_eq(t->ops->class_for(t, (1 << 20) + 1), -E2BIG);
        /* 16 extents of 4 blocks: 64 blocks, then full. */
        for (int i = 0; i < 64; i++) {
                ck_assert_int_eq(t->ops->alloc(t, a, &locs[i]), 0);
                memset(kvd_host_ptr(h, locs[i]), i, 256 << 10); /* distinct, in bounds */
        }
        ck_assert_int_eq(t->ops->alloc(t, a, &loc), -ENOSPC);
        ck_assert_int_eq(t->ops->alloc(t, b, &loc), -ENOSPC);
        for (int i = 0; i < 64; i++)
                ck_assert_uint_eq(*(uint8_t *)kvd_host_ptr(h, locs[i]), (uint8_t)i);
        t->ops->usage(t, &u);
        ck_assert_uint_eq(u.blocks, 64);
        ck_assert_uint_eq(u.used_bytes, 16u << 20);
        /* Freeing one block lets its class allocate, not another class. */
        t->ops->free(t, locs[5]);
        ck_assert(kvd_host_can_alloc(h, a));
        ck_assert(!kvd_host_can_alloc(h, b));
        /* Emptying a whole extent gives it to any class. */
        for (int i = 4; i < 8; i++)
                if (i != 5)
                        t->ops->free(t, locs[i]);
        ck_assert(kvd_host_can_alloc(h, b)); /* a free extent for any class */
        ck_assert_int_eq(t->ops->alloc(t, b, &loc), 0);
        ck_assert_uint_eq(kvd_host_class_bytes(h, b), 4096);
        t->ops->usage(t, &u);
        ck_assert_uint_eq(u.blocks, 61);
        t->ops->destroy(t);
}
END_TEST

static struct kvd_bkey key(uint32_t ns, uint64_t i)
{
        return (struct kvd_bkey){ 0x1234, i, ns, 0 };
}

START_TEST(namespaces)
{
        struct kvd_cache *c;
        struct kvd_geometry g = { 4, 2, 64, 1, 16 }, g2 = g;
        uint32_t id, id2;
        bool created;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &id, &created), 0);
        ck_assert(created);
        ck_assert_uint_eq(kvd_cache_ns(c, id)->block_bytes, 2 * 2 * 64 * 16 * 2);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &id2, &created), 0);
        ck_assert(!created);
        ck_assert_uint_eq(id, id2);
        g2.head_dim = 128;
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g2, 0, true, &id2, &created), -EEXIST);
        g2 = g;
        g2.dtype = 9;
        ck_assert_int_eq(kvd_cache_ns_register(c, "x", &g2, 0, true, &id2, &created), -EINVAL);
        g2 = g;
        g2.layers = 0;
        ck_assert_int_eq(kvd_cache_ns_register(c, "x", &g2, 0, true, &id2, &created), -EINVAL);
        g2 = g;
        g2.block_tokens = 4096; /* 2 MiB block > 1 MiB extent */
        ck_assert_int_eq(kvd_cache_ns_register(c, "x", &g2, 0, true, &id2, &created), -E2BIG);
        ck_assert_int_eq(kvd_cache_ns_register(c, "", &g, 0, true, &id2, &created), -EINVAL);
        ck_assert_uint_eq(kvd_cache_ns_count(c), 1); /* errors changed nothing */
        for (int i = 0; i < 3; i++) {
                char name[8] = { 'n', (char)('0' + i), 0 };

                ck_assert_int_eq(kvd_cache_ns_register(c, name, &g, 0, true, &id2, &created), 0);
        }
        ck_assert_int_eq(kvd_cache_ns_register(c, "full", &g, 0, true, &id2, &created), -ENOSPC);
        kvd_cache_free(c);
}
END_TEST

START_TEST(lru_eviction_and_pins)
{
        /* 256 KiB blocks: 64 fit in 16 MiB. */
        struct kvd_geometry g = { 1, 8, 128, 1, 64 };
        struct kvd_cache_stats st;
        struct kvd_cache *c;
        uint32_t ns, id, pinned;
        bool created;
        void *p;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &ns, &created), 0);
        for (uint64_t i = 0; i < 64; i++) {
                struct kvd_bkey k = key(ns, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                memset(p, (int)i, 256 << 10);
                ck_assert(!kvd_cache_contains(c, &k)); /* pending is not readable */
                kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
                ck_assert(kvd_cache_contains(c, &k));
        }
        {
                struct kvd_bkey k = key(ns, 3);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), -EEXIST);
        }
        /* Touch block 0 (now most recent) and pin block 1. */
        {
                struct kvd_bkey k0 = key(ns, 0), k1 = key(ns, 1);

                ck_assert_int_eq(kvd_cache_get_pin(c, &k0, false, NULL, NULL, 0, &id, &p), 0);
                ck_assert_uint_eq(*(uint8_t *)p, 0);
                kvd_cache_unpin(c, id);
                ck_assert_int_eq(kvd_cache_get_pin(c, &k1, false, NULL, NULL, 0, &pinned, &p), 0);
        }
        /* Two new blocks evict the two least recent unpinned: 2 and 3. */
        for (uint64_t i = 100; i < 102; i++) {
                struct kvd_bkey k = key(ns, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
        }
        for (uint64_t i = 0; i < 6; i++) {
                struct kvd_bkey k = key(ns, i);

                ck_assert_msg(kvd_cache_contains(c, &k) == (i != 2 && i != 3), "block %lu", (unsigned long)i);
        }
        /* Deleting a pinned block dooms it: gone for readers now, freed on unpin. */
        {
                struct kvd_bkey k1 = key(ns, 1);

                ck_assert_int_eq(kvd_cache_delete(c, &k1), 1);
                ck_assert(!kvd_cache_contains(c, &k1));
                ck_assert_int_eq(kvd_cache_get_pin(c, &k1, false, NULL, NULL, 0, &id, &p), -ENOENT);
                kvd_cache_unpin(c, pinned);
                ck_assert_int_eq(kvd_cache_delete(c, &k1), 0);
        }
        kvd_cache_stats(c, &st);
        ck_assert_uint_eq(st.evictions, 2);
        ck_assert_uint_eq(st.host.blocks, 63);
        ck_assert_uint_eq(kvd_cache_ns(c, ns)->blocks, 63);
        ck_assert_uint_eq(st.misses, 1);
        kvd_cache_free(c);
}
END_TEST

/* pins never wrap: a copy past KVD_BLOCK_PINS_MAX is refused (-EBUSY, the
 * caller's error) and changes nothing; the pins already taken still hold. */
START_TEST(pins_refused_at_max)
{
        struct kvd_geometry g = { 1, 8, 128, 1, 64 };
        struct kvd_cache_stats st;
        struct kvd_bkey k;
        struct kvd_cache *c;
        uint32_t ns, id, got;
        bool created;
        void *p;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &ns, &created), 0);
        k = key(ns, 7);
        ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
        memset(p, 0x5a, 256 << 10);
        kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
        for (uint32_t i = 0; i < KVD_BLOCK_PINS_MAX; i++) {
                ck_assert_int_eq(kvd_cache_get_pin(c, &k, false, NULL, NULL, 0, &got, &p), 0);
                ck_assert_uint_eq(got, id);
        }
        ck_assert_int_eq(kvd_cache_get_pin(c, &k, false, NULL, NULL, 0, &got, &p), -EBUSY);
        ck_assert(kvd_cache_contains(c, &k));
        /* Still pinned 65535 times: a delete dooms it, the last unpin frees it. */
        ck_assert_int_eq(kvd_cache_delete(c, &k), 1);
        ck_assert(!kvd_cache_contains(c, &k));
        for (uint32_t i = 0; i < KVD_BLOCK_PINS_MAX; i++) {
                ck_assert_uint_eq(kvd_cache_ns(c, ns)->blocks, 1);      /* held until the last unpin */
                kvd_cache_unpin(c, id);
        }
        kvd_cache_stats(c, &st);
        ck_assert_uint_eq(st.host.blocks, 0);
        ck_assert_ptr_null(kvd_cache_ns(c, ns));        /* no block left, no client: it went */
        kvd_cache_free(c);
}
END_TEST

/* Every page held by a Put in flight: a new one must wait (-EAGAIN: the
 * caller queues for space), not fail, since those pages come back on their
 * own; once one commits, there is room. */
START_TEST(everything_pinned_waits)
{
        struct kvd_geometry g = { 1, 8, 128, 1, 64 };
        struct kvd_bkey k = key(0, 999);
        struct kvd_cache *c;
        uint32_t ns, id, first = 0;
        bool created;
        void *p;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &ns, &created), 0);
        for (uint64_t i = 0; i < 64; i++) {
                struct kvd_bkey ki = key(ns, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &ki, &id, &p), 0); /* left pending */
                if (i == 0)
                        first = id;
        }
        k.ns = ns;
        ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), -EAGAIN);
        ck_assert(!kvd_cache_contains(c, &k));
        ck_assert_int_eq(kvd_cache_put_commit(c, first, false, NULL, NULL, 0), 0);
        ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
        kvd_cache_free(c);
}
END_TEST


/* A namespace with a new block size takes whole extents from another class. */
START_TEST(cross_class_eviction)
{
        struct kvd_geometry big = { 1, 8, 128, 1, 64 }, small = { 1, 8, 128, 1, 8 };
        struct kvd_cache_stats st;
        struct kvd_cache *c;
        uint32_t a, b, id;
        bool created;
        void *p;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "big", &big, 0, true, &a, &created), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "small", &small, 0, true, &b, &created), 0);
        for (uint64_t i = 0; i < 64; i++) {
                struct kvd_bkey k = key(a, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
        }
        {
                struct kvd_bkey k = key(b, 0);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
                ck_assert(kvd_cache_contains(c, &k));
        }
        kvd_cache_stats(c, &st);
        ck_assert_uint_ge(st.evictions, 1);
        ck_assert_uint_le(st.evictions, 4); /* at most one extent's worth */
        ck_assert_uint_eq(st.host.blocks, 64 - st.evictions + 1);
        kvd_cache_free(c);
}
END_TEST

/* With heat eviction, a block attention keeps using outlives colder blocks
 * touched after it; with LRU eviction it is the first to go. */
static bool hot_block_survives(const char *eviction)
{
        const char *argv[] = { "kvdrived", "--host-bytes=16M", "--host-extent-bytes=1M", "--host-lock=off",
                               "--host-hugepages=false", eviction };
        struct kvd_geometry g = { 1, 8, 128, 1, 64 }; /* 256 KiB: 64 fit */
        struct kvd_config hc;
        struct kvd_cache *c;
        uint32_t ns, id;
        bool created, survived;
        void *p;

        ck_assert_int_eq(kvd_config_load(&hc, 6, (char **)argv), 0);
        ck_assert_int_eq(kvd_cache_new(&hc, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &ns, &created), 0);
        for (uint64_t i = 0; i < 64; i++) {
                struct kvd_bkey k = key(ns, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                ck_assert_int_eq(kvd_cache_put_commit(c, id, false, NULL, NULL, 0), 0);
        }
        {
                struct kvd_bkey hot = key(ns, 0), nope = key(ns, 999);

                ck_assert_int_eq(kvd_cache_score(c, &hot, 0.9f), 1);
                ck_assert_int_eq(kvd_cache_score(c, &nope, 0.9f), 0);  /* not cached */
                ck_assert_int_eq(kvd_cache_score(c, &hot, 1.5f), 0);   /* out of range */
        }
        /* Four new blocks evict four: the least recent is block 0. */
        for (uint64_t i = 100; i < 104; i++) {
                struct kvd_bkey k = key(ns, i);

                ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
                kvd_cache_put_commit(c, id, false, NULL, NULL, 0);
        }
        {
                struct kvd_bkey hot = key(ns, 0);

                survived = kvd_cache_contains(c, &hot);
        }
        kvd_cache_free(c);
        kvd_config_free(&hc);
        return survived;
}

static void put_one(struct kvd_cache *c, uint32_t ns, uint64_t i)
{
        struct kvd_bkey k = key(ns, i);
        uint32_t id;
        void *p;

        ck_assert_int_eq(kvd_cache_put_reserve(c, &k, &id, &p), 0);
        ck_assert_int_eq(kvd_cache_put_commit(c, id, false, NULL, NULL, 0), 0);
}

/* A uid over its host quota evicts its own least recent blocks, never
 * another uid's, though the tier has room for both. */
START_TEST(quota_evicts_own)
{
        char path[] = "/tmp/kvd-quota-XXXXXX";
        int fd = mkstemp(path);
        const char *argv[] = { "kvdrived", "--host-bytes=16M", "--host-extent-bytes=1M", "--host-lock=off",
                               "--host-hugepages=false", "--config", path };
        struct kvd_geometry g = { 1, 8, 128, 1, 64 }; /* 256 KiB */
        struct kvd_tenant_stats ts;
        struct kvd_config qc;
        struct kvd_cache *c;
        uint32_t a, b;
        bool created;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_gt(write(fd, "[quota 7]\nhost-bytes = 1M\n", 26), 0);
        close(fd);
        ck_assert_int_eq(kvd_config_load(&qc, 7, (char **)argv), 0);
        unlink(path);
        ck_assert_int_eq(kvd_cache_new(&qc, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "a", &g, 0, true, &a, &created), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "b", &g, 7, true, &b, &created), 0);
        for (uint64_t i = 0; i < 32; i++)
                put_one(c, a, i);
        for (uint64_t i = 0; i < 40; i++)
                put_one(c, b, i);
        kvd_cache_tenant(c, 7, &ts);
        ck_assert_uint_eq(ts.host_bytes, 1u << 20);
        ck_assert_uint_eq(ts.quota_evictions, 36);
        for (uint64_t i = 0; i < 32; i++) {
                struct kvd_bkey k = key(a, i);

                ck_assert(kvd_cache_contains(c, &k));
        }
        for (uint64_t i = 0; i < 40; i++) {
                struct kvd_bkey k = key(b, i);

                ck_assert(kvd_cache_contains(c, &k) == (i >= 36));
        }
        kvd_cache_tenant(c, 0, &ts);
        ck_assert_uint_eq(ts.host_bytes, 32u << 18);
        ck_assert_uint_eq(ts.quota_evictions, 0);
        kvd_cache_free(c);
        kvd_config_free(&qc);
}
END_TEST

/* A namespace lives while held or while it has a block; a dropped one
 * loses its blocks in slices and then goes, its id free for reuse. */
START_TEST(namespace_lifecycle)
{
        struct kvd_geometry g = { 4, 2, 64, 1, 16 };
        struct kvd_cache *c;
        uint64_t cursor = 0, deleted = 0;
        uint32_t id, id2;
        bool created;
        int slices = 0;

        ck_assert_int_eq(kvd_cache_new(&cfg, &c), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &id, &created), 0);
        kvd_cache_ns_hold(c, id);
        kvd_cache_ns_release(c, id);
        ck_assert_ptr_null(kvd_cache_ns(c, id)); /* no blocks, nobody: gone */
        /* Same name, other owner: another namespace. */
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 0, true, &id, &created), 0);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 5, false, &id2, &created), -ENOENT);
        ck_assert_int_eq(kvd_cache_ns_register(c, "m", &g, 5, true, &id2, &created), 0);
        ck_assert(created && id2 != id);
        kvd_cache_ns_hold(c, id);
        put_one(c, id, 1);
        kvd_cache_ns_release(c, id);
        ck_assert_ptr_nonnull(kvd_cache_ns(c, id)); /* its block keeps it */
        {
                struct kvd_bkey k = key(id, 1);

                ck_assert_int_eq(kvd_cache_delete(c, &k), 1);
        }
        ck_assert_ptr_null(kvd_cache_ns(c, id));
        /* Drop: in slices of 10 records, 200 blocks. */
        ck_assert_int_eq(kvd_cache_ns_register(c, "d", &g, 0, true, &id, &created), 0);
        kvd_cache_ns_hold(c, id);
        for (uint64_t i = 0; i < 200; i++)
                put_one(c, id, i);
        kvd_cache_ns_drop(c, id);
        ck_assert_int_eq(kvd_cache_ns_register(c, "d", &g, 0, false, &id2, &created), -ENOENT);
        while (!kvd_cache_ns_purge(c, id, &cursor, 10, &deleted))
                slices++;
        ck_assert_int_ge(slices, 19);
        ck_assert_uint_eq(deleted, 200);
        ck_assert_uint_eq(kvd_cache_ns(c, id)->blocks, 0);
        kvd_cache_ns_release(c, id);
        ck_assert_ptr_null(kvd_cache_ns(c, id));
        kvd_cache_free(c);
}
END_TEST

START_TEST(heat_eviction)
{
        ck_assert(hot_block_survives("--eviction=heat"));
        ck_assert(!hot_block_survives("--eviction=lru"));
}
END_TEST

/* Rebuilding from disk claims given slots; retired extents are never used. */
START_TEST(slab_claim_and_retire)
{
        struct kvd_slab *s;
        uint64_t cap, used, slots;
        uint32_t loc;
        bool fresh;
        int a, b;

        /* 4 extents of 64 KiB with a 4 KiB header: 60 KiB for slots, so 15
         * slots of 4 KiB (class a) or 3 of 20 KiB (class b). */
        ck_assert_int_eq(kvd_slab_new(4, 64 << 10, 4096, &s), 0);
        a = kvd_slab_class_for(s, 4096);
        b = kvd_slab_class_for(s, 20 << 10);
        ck_assert_int_eq(kvd_slab_class_for(s, 61 << 10), -E2BIG);
        /* extent 1 slot 2 of class a: page 16 (extent) + 1 (header) + 2 */
        ck_assert_int_eq(kvd_slab_claim(s, a, 16 + 1 + 2), 0);
        ck_assert_int_eq(kvd_slab_claim(s, a, 16 + 1 + 2), -EBUSY);     /* taken */
        ck_assert_int_eq(kvd_slab_claim(s, b, 16 + 1), -EBUSY);         /* other class */
        ck_assert_int_eq(kvd_slab_claim(s, b, 32 + 2), -EINVAL);        /* not a slot boundary */
        ck_assert_int_eq(kvd_slab_claim(s, a, 16), -EINVAL);            /* the header */
        ck_assert_int_eq(kvd_slab_extent_class(s, 1), a);
        kvd_slab_retire(s, 3);
        kvd_slab_usage(s, &cap, &used, &slots);
        ck_assert_uint_eq(cap, 3 * (64 << 10));
        ck_assert_uint_eq(slots, 1);
        /* Class b fills extents 0 and 2 (3 slots each); 3 is retired. */
        for (int i = 0; i < 6; i++) {
                ck_assert_int_eq(kvd_slab_alloc(s, b, &loc, &fresh), 0);
                ck_assert_uint_ne(kvd_slab_extent_of(s, loc), 3);
                ck_assert_uint_ne(kvd_slab_extent_of(s, loc), 1);
                ck_assert(fresh == (i % 3 == 0));
        }
        ck_assert_int_eq(kvd_slab_alloc(s, b, &loc, &fresh), -ENOSPC);
        /* Class a still has room in extent 1 (14 free slots). */
        ck_assert_int_eq(kvd_slab_alloc(s, a, &loc, &fresh), 0);
        ck_assert_uint_eq(kvd_slab_extent_of(s, loc), 1);
        ck_assert(!fresh);
        kvd_slab_release(s, loc);
        kvd_slab_release(s, 16 + 1 + 2);
        ck_assert(kvd_slab_extent_free(s, 1));          /* empty: back to the free list */
        kvd_slab_free(s);
}
END_TEST

static Suite *cache_suite(void)
{
        Suite *s = suite_create("cache");
        TCase *tc = tcase_create("cache");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, host_slabs);
        tcase_add_test(tc, namespaces);
        tcase_add_test(tc, lru_eviction_and_pins);
        tcase_add_test(tc, pins_refused_at_max);
        tcase_add_test(tc, everything_pinned_waits);
        tcase_add_test(tc, cross_class_eviction);
        tcase_add_test(tc, slab_claim_and_retire);
        tcase_add_test(tc, heat_eviction);
        tcase_add_test(tc, quota_evicts_own);
        tcase_add_test(tc, namespace_lifecycle);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(cache_suite)

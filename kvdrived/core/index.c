/* SPDX-License-Identifier: MIT */
#include "index.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "macro.h"
#include "tier.h"

/* 4 Ki records (224 KiB) a chunk: at most one part-filled chunk, so the
 * records cost sizeof(struct kvd_block) per block plus under 224 KiB. */
#define CHUNK_SHIFT 12
#define CHUNK_BLOCKS (1u << CHUNK_SHIFT)
#define MAX_CHUNKS (1u << (32 - CHUNK_SHIFT))   /* ids are 32 bits */
#define MIN_TABLE 1024
#define MAX_TABLE (UINT64_C(1) << 32)  /* home(): (32-bit hash) * cap >> 32 */
/* Grow by a quarter at a load of 0.8: 5-6.25 B of table per block. Linear
 * probing at 0.8 runs ~13 slots for an absent key, but 4-B slots put 16 in
 * a cache line and the tags spare the records (docs/decisions.md). */
#define LOAD_NUM 4
#define LOAD_DEN 5
#define GROW_DIV 4
/* Prefetch the record of the slot this far ahead while growing. */
#define GROW_AHEAD 16

static_assert(sizeof(struct kvd_block) == 56, "issue 16: a 56-B record");
static_assert(KVD_BLOCK_READY < 4 && KVD_BLOCK_RGET < 16, "state and rflags fit their bitfields");

/*
 * A slot is a uint32_t: 0 when empty, else the record id in its low
 * id_bits and, above them, the same bits of the key's hash (a tag; every
 * id in use is below 2^id_bits). The home slot is taken from the hash's
 * other half, so when ids outgrow id_bits the table keeps its layout and
 * only drops each tag's lowest bit (widen_ids()). Growth and backward-shift
 * deletion need homes, hence the hashes of the records they move.
 */
struct kvd_index {
        uint32_t *table;
        uint64_t cap;           /* slots: any size from MIN_TABLE to MAX_TABLE */
        uint64_t count;
        struct kvd_block **chunks;
        uint32_t n_chunks;
        uint32_t chunks_cap;    /* entries allocated in chunks[] */
        uint32_t next_fresh;    /* first never-used id */
        uint32_t free_head;     /* recycled ids */
        uint32_t id_bits;       /* CHUNK_SHIFT..32 */
};

static uint64_t hash_key(const struct kvd_bkey *k)
{
        uint64_t buf[3] = { k->hi, k->lo, (uint64_t)k->ns << 32 | k->layer };

        return XXH3_64bits(buf, sizeof(buf));
}

static uint64_t hash_block(const struct kvd_block *b)
{
        struct kvd_bkey k = { b->key_hi, b->key_lo, b->ns, b->layer };

        return hash_key(&k);
}

/* Multiply-shift ("fastrange"): the hash's high half onto [0, cap). */
static uint64_t home(uint64_t h, uint64_t cap)
{
        return (h >> 32) * cap >> 32;
}

static uint64_t next_slot(uint64_t i, uint64_t cap)
{
        return i + 1 == cap ? 0 : i + 1;
}

/* How far slot b lies after slot a, wrapping. */
static uint64_t dist(uint64_t a, uint64_t b, uint64_t cap)
{
        return b >= a ? b - a : b + cap - a;
}

static uint32_t id_mask(const struct kvd_index *idx)
{
        return (uint32_t)((UINT64_C(1) << idx->id_bits) - 1);
}

static bool key_fits(const struct kvd_bkey *k)
{
        return k->ns < (1u << KVD_BLOCK_NS_BITS) && k->layer < (1u << KVD_BLOCK_LAYER_BITS);
}

static bool block_matches(const struct kvd_block *b, const struct kvd_bkey *k)
{
        return b->key_hi == k->hi && b->key_lo == k->lo && b->ns == k->ns && b->layer == k->layer;
}

struct kvd_block *kvd_index_block(const struct kvd_index *idx, uint32_t id)
{
        return &idx->chunks[id >> CHUNK_SHIFT][id & (CHUNK_BLOCKS - 1)];
}

int kvd_index_new(uint64_t expected, struct kvd_index **ret)
{
        struct kvd_index *idx;
        uint64_t cap = MIN_TABLE;

        /* The smallest table that holds expected blocks at the load limit. */
        if (expected > MAX_TABLE * LOAD_NUM / LOAD_DEN)
                cap = MAX_TABLE;
        else if (expected * LOAD_DEN > MIN_TABLE * LOAD_NUM)
                cap = (expected * LOAD_DEN + LOAD_NUM - 1) / LOAD_NUM;
        idx = calloc(1, sizeof(*idx));
        if (!idx)
                return -ENOMEM;
        idx->table = calloc(cap, sizeof(*idx->table));
        if (!idx->table) {
                kvd_index_free(idx);
                return -ENOMEM;
        }
        idx->cap = cap;
        idx->next_fresh = 1;    /* id 0 is KVD_ID_NONE */
        idx->free_head = KVD_ID_NONE;
        idx->id_bits = CHUNK_SHIFT;
        *ret = idx;
        return 0;
}

struct kvd_index *kvd_index_free(struct kvd_index *idx)
{
        if (!idx)
                return NULL;
        if (idx->chunks)
                for (uint32_t i = 0; i < idx->n_chunks; i++)
                        free(idx->chunks[i]);
        free(idx->chunks);
        free(idx->table);
        free(idx);
        return NULL;
}

uint32_t kvd_index_find(const struct kvd_index *idx, const struct kvd_bkey *k)
{
        uint32_t idm = id_mask(idx), tag;
        uint64_t h;

        if (!key_fits(k))
                return KVD_ID_NONE;
        h = hash_key(k);
        tag = (uint32_t)h & ~idm;
        for (uint64_t i = home(h, idx->cap);; i = next_slot(i, idx->cap)) {
                uint32_t s = idx->table[i];

                if (s == 0)
                        return KVD_ID_NONE;
                if ((s & ~idm) == tag && block_matches(kvd_index_block(idx, s & idm), k))
                        return s & idm;
        }
}

static void place(uint32_t *table, uint64_t cap, uint64_t h, uint32_t slot)
{
        uint64_t i = home(h, cap);

        while (table[i] != 0)
                i = next_slot(i, cap);
        table[i] = slot;
}

static int grow(struct kvd_index *idx)
{
        uint64_t cap = MIN(idx->cap + idx->cap / GROW_DIV, MAX_TABLE);
        uint32_t idm = id_mask(idx), *t;

        if (idx->cap == MAX_TABLE)
                return -ENOSPC;
        t = calloc(cap, sizeof(*t));
        if (!t)
                return -ENOMEM;
        /* At once: each record is hashed again (a slot has no home bits),
         * its load started GROW_AHEAD slots early so that the misses
         * overlap (docs/decisions.md has the pause this costs). */
        for (uint64_t i = 0; i < idx->cap; i++) {
                uint32_t s = idx->table[i];

                if (i + GROW_AHEAD < idx->cap && idx->table[i + GROW_AHEAD] != 0) {
                        const struct kvd_block *p = kvd_index_block(idx, idx->table[i + GROW_AHEAD] & idm);

                        __builtin_prefetch(p);
                        __builtin_prefetch((const char *)p + offsetof(struct kvd_block, pins));
                }
                if (s != 0)
                        place(t, cap, hash_block(kvd_index_block(idx, s & idm)), s);
        }
        free(idx->table);
        idx->table = t;
        idx->cap = cap;
        return 0;
}

/* Id 2^id_bits is about to be used: the tags give up their lowest bit. */
static void widen_ids(struct kvd_index *idx)
{
        uint32_t bit = 1u << idx->id_bits;

        for (uint64_t i = 0; i < idx->cap; i++)
                idx->table[i] &= ~bit;  /* an empty slot stays 0, an id stays non-zero */
        idx->id_bits++;
}

static int alloc_id(struct kvd_index *idx, uint32_t *ret)
{
        uint32_t id = idx->free_head;

        if (id != KVD_ID_NONE) {
                idx->free_head = kvd_index_block(idx, id)->lru_next;
                *ret = id;
                return 0;
        }
        id = idx->next_fresh;
        if (id == KVD_ID_NONE)
                return -ENOSPC; /* all 2^32 - 1 ids used: next_fresh wrapped */
        if ((id >> CHUNK_SHIFT) >= idx->n_chunks) {
                if (idx->n_chunks == MAX_CHUNKS)
                        return -ENOSPC;
                if (idx->n_chunks == idx->chunks_cap) {
                        uint32_t n = idx->chunks_cap ? idx->chunks_cap * 2 : 16;
                        struct kvd_block **p = reallocarray(idx->chunks, n, sizeof(*p));

                        if (!p)
                                return -ENOMEM;
                        idx->chunks = p;
                        idx->chunks_cap = n;
                }
                idx->chunks[idx->n_chunks] = calloc(CHUNK_BLOCKS, sizeof(struct kvd_block));
                if (!idx->chunks[idx->n_chunks])
                        return -ENOMEM;
                idx->n_chunks++;
        }
        if (idx->id_bits < 32 && id == (UINT64_C(1) << idx->id_bits))
                widen_ids(idx);
        idx->next_fresh++;
        *ret = id;
        return 0;
}

int kvd_index_insert(struct kvd_index *idx, const struct kvd_bkey *k, uint32_t *ret_id)
{
        struct kvd_block *b;
        uint32_t id;
        uint64_t h;
        int r;

        if (!key_fits(k))
                return -EINVAL;
        id = kvd_index_find(idx, k);
        if (id != KVD_ID_NONE) {
                *ret_id = id;
                return -EEXIST;
        }
        if ((idx->count + 1) * LOAD_DEN > idx->cap * LOAD_NUM) {
                r = grow(idx);
                if (r < 0)
                        return r;
        }
        r = alloc_id(idx, &id);
        if (r < 0)
                return r;
        b = kvd_index_block(idx, id);
        *b = (struct kvd_block){
                .key_hi = k->hi, .key_lo = k->lo, .ns = k->ns, .layer = k->layer,
                .lru_prev = KVD_ID_NONE, .lru_next = KVD_ID_NONE, .loc = KVD_LOC_NONE, .ssd_loc = KVD_LOC_NONE,
        };
        h = hash_key(k);
        /* After alloc_id(): it may have widened the ids, so mask now. */
        place(idx->table, idx->cap, h, ((uint32_t)h & ~id_mask(idx)) | id);
        idx->count++;
        *ret_id = id;
        return 0;
}

void kvd_index_remove(struct kvd_index *idx, uint32_t id)
{
        struct kvd_block *b = kvd_index_block(idx, id);
        uint32_t idm = id_mask(idx);
        uint64_t cap = idx->cap, i = home(hash_block(b), cap), j;

        while ((idx->table[i] & idm) != id) {
                assert(idx->table[i] != 0);
                i = next_slot(i, cap);
        }
        /* Backward-shift: pull later entries of the run into the hole unless
         * their home slot lies cyclically in (hole, j]. */
        j = i;
        for (;;) {
                uint32_t s;
                uint64_t hj;

                j = next_slot(j, cap);
                s = idx->table[j];
                if (s == 0)
                        break;
                hj = home(hash_block(kvd_index_block(idx, s & idm)), cap);
                if (dist(hj, j, cap) >= dist(i, j, cap)) {
                        idx->table[i] = s;
                        i = j;
                }
        }
        idx->table[i] = 0;
        idx->count--;
        memset(b, 0, sizeof(*b));
        b->lru_next = idx->free_head;
        idx->free_head = id;
}

uint32_t kvd_index_id_end(const struct kvd_index *idx)
{
        return idx->next_fresh;
}

uint64_t kvd_index_count(const struct kvd_index *idx)
{
        return idx->count;
}

uint64_t kvd_index_capacity(const struct kvd_index *idx)
{
        return idx->cap;
}

uint64_t kvd_index_bytes(const struct kvd_index *idx)
{
        return sizeof(*idx) + idx->cap * sizeof(*idx->table) +
               (uint64_t)idx->n_chunks * CHUNK_BLOCKS * sizeof(struct kvd_block) +
               (uint64_t)idx->chunks_cap * sizeof(struct kvd_block *);
}

uint32_t kvd_index_bytes_per_block(const struct kvd_index *idx)
{
        uint64_t n = idx->count;

        if (n == 0)
                return 0;
        return (uint32_t)MIN((kvd_index_bytes(idx) + n - 1) / n, UINT32_MAX);
}

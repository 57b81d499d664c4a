/* SPDX-License-Identifier: MIT */
#include "index.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "macro.h"
#include "tier.h"

/* 4 Ki records (256 KiB) a chunk: at most one part-filled chunk, so the
 * records cost sizeof(struct kvd_block) per block plus under 256 KiB. */
#define CHUNK_SHIFT 12
#define CHUNK_BLOCKS (1u << CHUNK_SHIFT)
#define MAX_CHUNKS (1u << (32 - CHUNK_SHIFT))   /* ids are 32 bits */
#define MIN_TABLE 1024
#define MAX_TABLE (UINT64_C(1) << 32)  /* home = tag & mask needs mask < 2^32 */
#define LOAD_NUM 3
#define LOAD_DEN 4

struct slot {
        uint32_t id;    /* KVD_ID_NONE: empty */
        /* The hash's low 32 bits: the home slot is tag & mask, so growing
         * and backward-shift deletion never load a record, and the bits
         * above the mask still skip most record loads in a lookup. */
        uint32_t tag;
};

struct kvd_index {
        struct slot *table;
        uint64_t mask;          /* capacity - 1, a power of two */
        uint64_t count;
        struct kvd_block **chunks;
        uint32_t n_chunks;
        uint32_t chunks_cap;    /* entries allocated in chunks[] */
        uint32_t next_fresh;    /* first never-used id */
        uint32_t free_head;     /* recycled ids */
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

        while (cap * LOAD_NUM / LOAD_DEN < expected && cap < MAX_TABLE)
                cap <<= 1;
        idx = calloc(1, sizeof(*idx));
        if (!idx)
                return -ENOMEM;
        idx->table = calloc(cap, sizeof(struct slot));
        if (!idx->table) {
                kvd_index_free(idx);
                return -ENOMEM;
        }
        idx->mask = cap - 1;
        idx->next_fresh = 1;    /* id 0 is KVD_ID_NONE */
        idx->free_head = KVD_ID_NONE;
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
        uint64_t h = hash_key(k);
        uint32_t tag = (uint32_t)h;

        for (uint64_t i = h & idx->mask;; i = (i + 1) & idx->mask) {
                const struct slot *s = &idx->table[i];

                if (s->id == KVD_ID_NONE)
                        return KVD_ID_NONE;
                if (s->tag == tag && block_matches(kvd_index_block(idx, s->id), k))
                        return s->id;
        }
}

static void place(struct slot *table, uint64_t mask, uint32_t tag, uint32_t id)
{
        uint64_t i = tag & mask;

        while (table[i].id != KVD_ID_NONE)
                i = (i + 1) & mask;
        table[i] = (struct slot){ id, tag };
}

static int grow(struct kvd_index *idx)
{
        uint64_t cap = (idx->mask + 1) * 2;
        struct slot *t;

        if (cap > MAX_TABLE)
                return -ENOSPC;
        t = calloc(cap, sizeof(*t));
        if (!t)
                return -ENOMEM;
        /* At once, from the tags alone: about 25 ms per million blocks
         * (docs/decisions.md). */
        for (uint64_t i = 0; i <= idx->mask; i++) {
                const struct slot *s = &idx->table[i];

                if (s->id != KVD_ID_NONE)
                        place(t, cap - 1, s->tag, s->id);
        }
        free(idx->table);
        idx->table = t;
        idx->mask = cap - 1;
        return 0;
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
        idx->next_fresh++;
        *ret = id;
        return 0;
}

int kvd_index_insert(struct kvd_index *idx, const struct kvd_bkey *k, uint32_t *ret_id)
{
        uint32_t id = kvd_index_find(idx, k);
        struct kvd_block *b;
        int r;

        if (id != KVD_ID_NONE) {
                *ret_id = id;
                return -EEXIST;
        }
        if ((idx->count + 1) * LOAD_DEN > (idx->mask + 1) * LOAD_NUM) {
                r = grow(idx);
                if (r < 0)
                        return r;
        }
        r = alloc_id(idx, &id);
        if (r < 0)
                return r;
        b = kvd_index_block(idx, id);
        *b = (struct kvd_block){
                .key_hi = k->hi, .key_lo = k->lo, .ns = (uint16_t)k->ns, .layer = k->layer,
                .lru_prev = KVD_ID_NONE, .lru_next = KVD_ID_NONE, .loc = KVD_LOC_NONE, .ssd_loc = KVD_LOC_NONE,
        };
        place(idx->table, idx->mask, (uint32_t)hash_key(k), id);
        idx->count++;
        *ret_id = id;
        return 0;
}

void kvd_index_remove(struct kvd_index *idx, uint32_t id)
{
        struct kvd_block *b = kvd_index_block(idx, id);
        uint64_t i = hash_block(b) & idx->mask, j;

        while (idx->table[i].id != id) {
                assert(idx->table[i].id != KVD_ID_NONE);
                i = (i + 1) & idx->mask;
        }
        /* Backward-shift: pull later entries of the run into the hole unless
         * their home slot lies cyclically in (hole, j]. */
        j = i;
        for (;;) {
                uint64_t home;

                j = (j + 1) & idx->mask;
                if (idx->table[j].id == KVD_ID_NONE)
                        break;
                home = idx->table[j].tag & idx->mask;
                if (((j - home) & idx->mask) >= ((j - i) & idx->mask)) {
                        idx->table[i] = idx->table[j];
                        i = j;
                }
        }
        idx->table[i] = (struct slot){ KVD_ID_NONE, 0 };
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
        return idx->mask + 1;
}

uint64_t kvd_index_bytes(const struct kvd_index *idx)
{
        return sizeof(*idx) + (idx->mask + 1) * sizeof(struct slot) +
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

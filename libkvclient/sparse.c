/* SPDX-License-Identifier: MIT */
/*
 * Sparse-decode helpers: the device residency manager and the fetch
 * candidate merge. Pure bookkeeping, no connection needed.
 *
 * The manager keeps one entry per slot and an open-addressing hash table
 * (linear probing, backward-shift deletion, so no tombstones) from
 * (key, layer) to slot, sized to a power of two at least twice the slot
 * count so probes stay short. Pins are a generation number: a slot is pinned
 * when its pin_gen equals the manager's current generation, so
 * kvc_residency_begin_layer() unpins everything by bumping it.
 *
 * Victims come from a binary min-heap of the used, unpinned slots, ordered
 * by (rank, slot): a pin takes its slot out, the next layer's begin puts the
 * layer's pinned slots back, a score moves its slot down. A miss in a full
 * pool then costs O(log slots), not a scan of every slot (with thousands of
 * slots and tens of misses a layer, the scan was most of a layer's
 * bookkeeping).
 */
#include "client-internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <kvdrive/sparse.h>

#define EMPTY UINT32_MAX

struct slot_entry {
        struct kvc_key key;
        uint64_t hash;           /* of (key, layer), to re-home on deletion */
        uint64_t pin_gen;        /* pinned iff == r->gen */
        double score;            /* decayed mass as of step */
        double rank;             /* log2(score) + step / half_life: orders entries as their
                                  * decayed scores at any common later step (decay is the
                                  * same factor for all), so a victim search needs no exp2 */
        uint32_t step;
        uint32_t layer;
        uint32_t heap_pos;       /* in the victim heap, or EMPTY (pinned or free) */
        bool used;
};

struct kvc_residency {
        uint32_t slots;
        uint32_t layers;
        double half_life;
        uint64_t gen;            /* starts at 1: a fresh entry (0) is unpinned */
        struct slot_entry *entries;   /* [slots] */
        uint32_t *free_slots;         /* stack of free slot numbers */
        uint32_t n_free;
        uint32_t *table;              /* [mask + 1], slot number or EMPTY */
        uint32_t mask;
        uint32_t *heap;               /* [slots] the victim heap, of slot numbers */
        uint32_t n_heap;
        uint32_t *pinned;             /* [slots] slots pinned this generation */
        uint32_t n_pinned;
};

/* ---- the victim heap ---- */

static bool heap_less(const kvc_residency *r, uint32_t a, uint32_t b)
{
        const struct slot_entry *x = &r->entries[a], *y = &r->entries[b];

        return x->rank < y->rank || (x->rank == y->rank && a < b);
}

static void heap_set(kvc_residency *r, uint32_t pos, uint32_t slot)
{
        r->heap[pos] = slot;
        r->entries[slot].heap_pos = pos;
}

static void heap_up(kvc_residency *r, uint32_t pos)
{
        uint32_t slot = r->heap[pos];

        while (pos > 0) {
                uint32_t parent = (pos - 1) / 2;

                if (!heap_less(r, slot, r->heap[parent]))
                        break;
                heap_set(r, pos, r->heap[parent]);
                pos = parent;
        }
        heap_set(r, pos, slot);
}

static void heap_down(kvc_residency *r, uint32_t pos)
{
        uint32_t slot = r->heap[pos];

        for (;;) {
                uint32_t c = 2 * pos + 1;

                if (c >= r->n_heap)
                        break;
                if (c + 1 < r->n_heap && heap_less(r, r->heap[c + 1], r->heap[c]))
                        c++;
                if (!heap_less(r, r->heap[c], slot))
                        break;
                heap_set(r, pos, r->heap[c]);
                pos = c;
        }
        heap_set(r, pos, slot);
}

static void heap_insert(kvc_residency *r, uint32_t slot)
{
        heap_set(r, r->n_heap++, slot);
        heap_up(r, r->n_heap - 1);
}

static void heap_remove(kvc_residency *r, uint32_t slot)
{
        uint32_t pos = r->entries[slot].heap_pos, last;

        if (pos == EMPTY)
                return;
        r->entries[slot].heap_pos = EMPTY;
        last = r->heap[--r->n_heap];
        if (pos == r->n_heap)
                return;
        heap_set(r, pos, last);
        heap_up(r, pos);
        heap_down(r, r->entries[last].heap_pos);
}

/* Pins slot for this generation: out of the victim heap until the next. */
static void pin_slot(kvc_residency *r, uint32_t slot)
{
        struct slot_entry *e = &r->entries[slot];

        if (e->pin_gen == r->gen)
                return;
        e->pin_gen = r->gen;
        heap_remove(r, slot);
        r->pinned[r->n_pinned++] = slot;
}

static uint64_t block_hash(const struct kvc_key *key, uint32_t layer)
{
        /* In-process only: native byte order is fine. */
        uint8_t buf[sizeof(key->hi) + sizeof(key->lo) + sizeof(layer)];

        memcpy(buf, &key->hi, sizeof(key->hi));
        memcpy(buf + 8, &key->lo, sizeof(key->lo));
        memcpy(buf + 16, &layer, sizeof(layer));
        return XXH3_64bits(buf, sizeof(buf));
}

static bool block_args_ok(const kvc_residency *r, const struct kvc_key *key, uint32_t layer)
{
        return r && key && layer < r->layers;
}

/* Position in the table of (key, layer), or of the empty cell where it would
 * go; *found says which. The table always has an empty cell (load <= 1/2). */
static uint32_t table_find(const kvc_residency *r, const struct kvc_key *key, uint32_t layer,
                           uint64_t hash, bool *found)
{
        uint32_t i = (uint32_t)hash & r->mask;

        for (;; i = (i + 1) & r->mask) {
                uint32_t s = r->table[i];
                const struct slot_entry *e;

                if (s == EMPTY) {
                        *found = false;
                        return i;
                }
                e = &r->entries[s];
                if (e->hash == hash && e->layer == layer && e->key.hi == key->hi &&
                    e->key.lo == key->lo) {
                        *found = true;
                        return i;
                }
        }
}

static int find_slot(const kvc_residency *r, const struct kvc_key *key, uint32_t layer)
{
        bool found;
        uint32_t pos = table_find(r, key, layer, block_hash(key, layer), &found);

        return found ? (int)r->table[pos] : -ENOENT;
}

/* Removes the cell at pos, shifting later cells of the probe run back. */
static void table_erase(kvc_residency *r, uint32_t pos)
{
        uint32_t i = pos, j = pos;

        for (;;) {
                uint32_t home;
                bool stays;

                j = (j + 1) & r->mask;
                if (r->table[j] == EMPTY)
                        break;
                home = (uint32_t)r->entries[r->table[j]].hash & r->mask;
                /* The cell at j may move to i only if its home is not
                 * cyclically within (i, j]. */
                stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
                if (stays)
                        continue;
                r->table[i] = r->table[j];
                i = j;
        }
        r->table[i] = EMPTY;
}

static void slot_release(kvc_residency *r, uint32_t slot)
{
        struct slot_entry *e = &r->entries[slot];
        bool found;
        uint32_t pos = table_find(r, &e->key, e->layer, e->hash, &found);

        if (found)
                table_erase(r, pos);
        heap_remove(r, slot);
        e->used = false;
}

static double rank_of(const kvc_residency *r, const struct slot_entry *e)
{
        return e->score > 0.0 ? log2(e->score) + (double)e->step / r->half_life : -INFINITY;
}

static double decayed(const kvc_residency *r, const struct slot_entry *e, uint32_t step)
{
        if (step <= e->step || e->score == 0.0)
                return e->score;
        return e->score * exp2(-(double)(step - e->step) / r->half_life);
}

_public_ int kvc_residency_new(const struct kvc_residency_opts *o, kvc_residency **ret)
{
        kvc_residency *r;
        uint64_t cells = 2;

        if (!o || !ret || o->size < offsetof(struct kvc_residency_opts, half_life_steps) +
                                           sizeof(o->half_life_steps))
                return -EINVAL;
        if (o->slots == 0 || o->slots > KVC_RESIDENCY_MAX_SLOTS || o->layers == 0 ||
            !isfinite(o->half_life_steps) || !(o->half_life_steps > 0.0f))
                return -EINVAL;

        while (cells < 2 * (uint64_t)o->slots)
                cells <<= 1;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->slots = o->slots;
        r->layers = o->layers;
        r->half_life = o->half_life_steps;
        r->gen = 1;
        r->mask = (uint32_t)(cells - 1);
        r->entries = calloc(o->slots, sizeof(*r->entries));
        r->free_slots = calloc(o->slots, sizeof(*r->free_slots));
        r->table = malloc(cells * sizeof(*r->table));
        r->heap = calloc(o->slots, sizeof(*r->heap));
        r->pinned = calloc(o->slots, sizeof(*r->pinned));
        if (!r->entries || !r->free_slots || !r->table || !r->heap || !r->pinned) {
                kvc_residency_free(r);
                return -ENOMEM;
        }
        memset(r->table, 0xff, cells * sizeof(*r->table));
        for (uint32_t i = 0; i < o->slots; i++)
                r->entries[i].heap_pos = EMPTY;
        /* Hand out slot 0 first. */
        for (uint32_t i = 0; i < o->slots; i++)
                r->free_slots[i] = o->slots - 1 - i;
        r->n_free = o->slots;

        *ret = r;
        return 0;
}

_public_ kvc_residency *kvc_residency_free(kvc_residency *r)
{
        if (!r)
                return NULL;
        free(r->table);
        free(r->free_slots);
        free(r->entries);
        free(r->heap);
        free(r->pinned);
        free(r);
        return NULL;
}

_public_ int kvc_residency_lookup(const kvc_residency *r, const struct kvc_key *key, uint32_t layer)
{
        if (!block_args_ok(r, key, layer))
                return -EINVAL;
        return find_slot(r, key, layer);
}

_public_ int kvc_residency_begin_layer(kvc_residency *r)
{
        if (!r)
                return -EINVAL;
        /* Last layer's pins become candidates again. */
        for (uint32_t i = 0; i < r->n_pinned; i++) {
                uint32_t slot = r->pinned[i];

                if (r->entries[slot].used && r->entries[slot].pin_gen == r->gen &&
                    r->entries[slot].heap_pos == EMPTY)
                        heap_insert(r, slot);
        }
        r->n_pinned = 0;
        r->gen++;
        return 0;
}

_public_ int kvc_residency_pin(kvc_residency *r, const struct kvc_key *key, uint32_t layer)
{
        int slot;

        if (!block_args_ok(r, key, layer))
                return -EINVAL;
        slot = find_slot(r, key, layer);
        if (slot >= 0)
                pin_slot(r, (uint32_t)slot);
        return slot;
}

/* Unpinned slot of lowest decayed score (lowest slot on ties), or EMPTY if
 * all are pinned: the heap's top. Ranks order entries as their decayed
 * scores at any step no earlier than their own, so no exp2 is needed. */
static uint32_t pick_victim(const kvc_residency *r)
{
        return r->n_heap ? r->heap[0] : EMPTY;
}

_public_ int kvc_residency_acquire(kvc_residency *r, const struct kvc_key *key, uint32_t layer,
                          uint32_t step, bool *ret_miss)
{
        struct slot_entry *e;
        uint64_t hash;
        uint32_t pos, slot;
        bool found;

        if (!block_args_ok(r, key, layer))
                return -EINVAL;

        hash = block_hash(key, layer);
        pos = table_find(r, key, layer, hash, &found);
        if (found) {
                slot = r->table[pos];
                pin_slot(r, slot);
                if (ret_miss)
                        *ret_miss = false;
                return (int)slot;
        }

        if (r->n_free > 0) {
                slot = r->free_slots[--r->n_free];
        } else {
                slot = pick_victim(r);
                if (slot == EMPTY)
                        return -EBUSY;
                slot_release(r, slot);
                /* The erase may have shifted our empty cell: find it again. */
                pos = table_find(r, key, layer, hash, &found);
        }

        e = &r->entries[slot];
        *e = (struct slot_entry){
                .key = *key,
                .hash = hash,
                .score = 0.0,
                .rank = -INFINITY,
                .step = step,
                .layer = layer,
                .heap_pos = EMPTY,
                .used = true,
        };
        pin_slot(r, slot);
        r->table[pos] = slot;
        if (ret_miss)
                *ret_miss = true;
        return (int)slot;
}

_public_ int kvc_residency_score(kvc_residency *r, const struct kvc_key *key, uint32_t layer,
                        float mass, uint32_t step)
{
        struct slot_entry *e;
        int slot;

        if (!block_args_ok(r, key, layer) || !isfinite(mass) || mass < 0.0f)
                return -EINVAL;
        slot = find_slot(r, key, layer);
        if (slot < 0)
                return slot;
        e = &r->entries[slot];
        if (step > e->step) {
                e->score = decayed(r, e, step);
                e->step = step;
        }
        e->score += mass;
        e->rank = rank_of(r, e);
        if (e->heap_pos != EMPTY)
                heap_down(r, e->heap_pos);     /* ranks only grow */
        return 0;
}

_public_ int kvc_residency_get_score(const kvc_residency *r, const struct kvc_key *key,
                            uint32_t layer, uint32_t step, float *ret_score)
{
        int slot;

        if (!block_args_ok(r, key, layer) || !ret_score)
                return -EINVAL;
        slot = find_slot(r, key, layer);
        if (slot < 0)
                return slot;
        *ret_score = (float)decayed(r, &r->entries[slot], step);
        return 0;
}

_public_ int kvc_residency_drop(kvc_residency *r, const struct kvc_key *key, uint32_t layer)
{
        int slot;

        if (!block_args_ok(r, key, layer))
                return -EINVAL;
        slot = find_slot(r, key, layer);
        if (slot < 0)
                return slot;
        slot_release(r, (uint32_t)slot);
        r->free_slots[r->n_free++] = (uint32_t)slot;
        return slot;
}

static bool contains(const uint32_t *v, uint32_t n, uint32_t x)
{
        for (uint32_t i = 0; i < n; i++)
                if (v[i] == x)
                        return true;
        return false;
}

_public_ int kvc_predict_merge(const uint32_t *prev_step_sel, uint32_t n_prev,
                      const uint32_t *next_layer_pred, uint32_t n_pred, uint32_t k,
                      uint32_t *ret, uint32_t *ret_n)
{
        uint32_t n = 0;

        if (!ret_n || (n_prev && !prev_step_sel) || (n_pred && !next_layer_pred) ||
            (k && !ret))
                return -EINVAL;

        /* 1: in both lists, in prediction order. */
        for (uint32_t i = 0; i < n_pred && n < k; i++) {
                uint32_t b = next_layer_pred[i];

                if (contains(prev_step_sel, n_prev, b) && !contains(ret, n, b))
                        ret[n++] = b;
        }
        /* 2: only predicted. */
        for (uint32_t i = 0; i < n_pred && n < k; i++) {
                uint32_t b = next_layer_pred[i];

                if (!contains(ret, n, b))
                        ret[n++] = b;
        }
        /* 3: only selected last step. */
        for (uint32_t i = 0; i < n_prev && n < k; i++) {
                uint32_t b = prev_step_sel[i];

                if (!contains(ret, n, b))
                        ret[n++] = b;
        }

        *ret_n = n;
        return 0;
}

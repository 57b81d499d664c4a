/* SPDX-License-Identifier: MIT */
#include "slab.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

enum { EXT_FREE = -1, EXT_RETIRED = -2 };

struct extent {
        int32_t klass;          /* EXT_FREE, EXT_RETIRED or a class */
        uint32_t used;
        uint32_t prev, next;    /* partial list of the class, or free stack */
};

struct size_class {
        uint32_t bytes;
        uint32_t pages;
        uint32_t slots;         /* per extent */
        uint32_t partial;       /* extents with a free slot */
        uint64_t used;
};

struct kvd_slab {
        uint64_t extent_bytes;
        uint32_t header_pages;
        uint32_t pages_per_extent;
        uint32_t words_per_extent;
        uint32_t n_extents, n_retired;
        uint32_t free_head, n_free;
        struct extent *extents;
        uint64_t *bits;         /* free-slot bitmaps */
        struct size_class classes[KVD_SLAB_MAX_CLASSES];
        int n_classes;
};

static uint64_t *ext_bits(const struct kvd_slab *s, uint32_t e)
{
        return s->bits + (uint64_t)e * s->words_per_extent;
}

static void partial_push(struct kvd_slab *s, struct size_class *c, uint32_t e)
{
        s->extents[e].prev = NONE;
        s->extents[e].next = c->partial;
        if (c->partial != NONE)
                s->extents[c->partial].prev = e;
        c->partial = e;
}

static void partial_remove(struct kvd_slab *s, struct size_class *c, uint32_t e)
{
        struct extent *x = &s->extents[e];

        if (x->prev != NONE)
                s->extents[x->prev].next = x->next;
        else
                c->partial = x->next;
        if (x->next != NONE)
                s->extents[x->next].prev = x->prev;
        x->prev = x->next = NONE;
}

int kvd_slab_new(uint32_t n_extents, uint64_t extent_bytes, uint32_t extent_header,
                 struct kvd_slab **ret)
{
        struct kvd_slab *s;

        if (extent_bytes % KVD_SLAB_PAGE || extent_header % KVD_SLAB_PAGE || extent_header >= extent_bytes ||
            n_extents == 0)
                return -EINVAL;
        if ((uint64_t)n_extents * (extent_bytes / KVD_SLAB_PAGE) > UINT32_MAX)
                return -E2BIG;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->extent_bytes = extent_bytes;
        s->header_pages = extent_header / KVD_SLAB_PAGE;
        s->pages_per_extent = (uint32_t)(extent_bytes / KVD_SLAB_PAGE);
        s->words_per_extent = (s->pages_per_extent + 63) / 64;
        s->n_extents = n_extents;
        s->extents = calloc(n_extents, sizeof(*s->extents));
        s->bits = calloc((size_t)n_extents * s->words_per_extent, sizeof(uint64_t));
        if (!s->extents || !s->bits) {
                kvd_slab_free(s);
                return -ENOMEM;
        }
        for (uint32_t e = 0; e < n_extents; e++)
                s->extents[e] = (struct extent){ .klass = EXT_FREE, .prev = NONE,
                                                 .next = e + 1 < n_extents ? e + 1 : NONE };
        s->free_head = 0;
        s->n_free = n_extents;
        *ret = s;
        return 0;
}

struct kvd_slab *kvd_slab_free(struct kvd_slab *s)
{
        if (!s)
                return NULL;
        free(s->extents);
        free(s->bits);
        free(s);
        return NULL;
}

int kvd_slab_class_for(struct kvd_slab *s, uint64_t bytes)
{
        uint64_t rounded = (bytes + KVD_SLAB_PAGE - 1) / KVD_SLAB_PAGE * KVD_SLAB_PAGE;

        if (bytes == 0 || rounded > s->extent_bytes - (uint64_t)s->header_pages * KVD_SLAB_PAGE)
                return -E2BIG;
        for (int i = 0; i < s->n_classes; i++)
                if (s->classes[i].bytes == rounded)
                        return i;
        if (s->n_classes == KVD_SLAB_MAX_CLASSES)
                return -ENOSPC;
        s->classes[s->n_classes] = (struct size_class){
                .bytes = (uint32_t)rounded,
                .pages = (uint32_t)(rounded / KVD_SLAB_PAGE),
                .slots = (uint32_t)((s->extent_bytes - (uint64_t)s->header_pages * KVD_SLAB_PAGE) / rounded),
                .partial = NONE,
        };
        return s->n_classes++;
}

uint32_t kvd_slab_class_bytes(const struct kvd_slab *s, int klass)
{
        return s->classes[klass].bytes;
}

int kvd_slab_class_count(const struct kvd_slab *s)
{
        return s->n_classes;
}

/* Removes extent e from the free stack (O(free) when not on top: rare). */
static void free_remove(struct kvd_slab *s, uint32_t e)
{
        uint32_t *p = &s->free_head;

        while (*p != e) {
                assert(*p != NONE);
                p = &s->extents[*p].next;
        }
        *p = s->extents[e].next;
        s->n_free--;
}

static void extent_take(struct kvd_slab *s, struct size_class *c, int klass, uint32_t e)
{
        uint64_t *bits = ext_bits(s, e);

        s->extents[e].klass = klass;
        s->extents[e].used = 0;
        memset(bits, 0, s->words_per_extent * sizeof(uint64_t));
        for (uint32_t i = 0; i < c->slots; i++)
                bits[i / 64] |= UINT64_C(1) << (i % 64);
        partial_push(s, c, e);
}

static uint32_t slot_loc(const struct kvd_slab *s, const struct size_class *c, uint32_t e, uint32_t slot)
{
        return e * s->pages_per_extent + s->header_pages + slot * c->pages;
}

static void mark_used(struct kvd_slab *s, struct size_class *c, uint32_t e, uint32_t slot)
{
        ext_bits(s, e)[slot / 64] &= ~(UINT64_C(1) << (slot % 64));
        if (++s->extents[e].used == c->slots)
                partial_remove(s, c, e);
        c->used++;
}

int kvd_slab_alloc(struct kvd_slab *s, int klass, uint32_t *ret_loc, bool *ret_new_extent)
{
        struct size_class *c = &s->classes[klass];
        bool fresh = false;
        uint32_t e, slot = 0;
        uint64_t *bits;

        e = c->partial;
        if (e == NONE) {
                if (s->free_head == NONE)
                        return -ENOSPC;
                e = s->free_head;
                s->free_head = s->extents[e].next;
                s->n_free--;
                extent_take(s, c, klass, e);
                fresh = true;
        }
        bits = ext_bits(s, e);
        for (uint32_t w = 0;; w++) {
                assert(w < s->words_per_extent);
                if (bits[w]) {
                        slot = w * 64 + (uint32_t)__builtin_ctzll(bits[w]);
                        break;
                }
        }
        mark_used(s, c, e, slot);
        *ret_loc = slot_loc(s, c, e, slot);
        if (ret_new_extent)
                *ret_new_extent = fresh;
        return 0;
}

void kvd_slab_release(struct kvd_slab *s, uint32_t loc)
{
        uint32_t e = loc / s->pages_per_extent;
        struct extent *x = &s->extents[e];
        struct size_class *c;
        uint32_t slot;
        uint64_t *bits;

        assert(e < s->n_extents && x->klass >= 0);
        c = &s->classes[x->klass];
        slot = (loc % s->pages_per_extent - s->header_pages) / c->pages;
        bits = ext_bits(s, e);
        assert(!(bits[slot / 64] & (UINT64_C(1) << (slot % 64))));
        bits[slot / 64] |= UINT64_C(1) << (slot % 64);
        if (x->used == c->slots)
                partial_push(s, c, e);
        c->used--;
        if (--x->used == 0) {
                partial_remove(s, c, e);
                x->klass = EXT_FREE;
                x->next = s->free_head;
                s->free_head = e;
                s->n_free++;
        }
}

int kvd_slab_claim(struct kvd_slab *s, int klass, uint32_t loc)
{
        uint32_t e = loc / s->pages_per_extent, off = loc % s->pages_per_extent, slot;
        struct size_class *c = &s->classes[klass];

        if (e >= s->n_extents || off < s->header_pages || (off - s->header_pages) % c->pages)
                return -EINVAL;
        slot = (off - s->header_pages) / c->pages;
        if (slot >= c->slots)
                return -EINVAL;
        if (s->extents[e].klass == EXT_FREE) {
                free_remove(s, e);
                extent_take(s, c, klass, e);
        } else if (s->extents[e].klass != klass) {
                return -EBUSY;
        }
        if (!(ext_bits(s, e)[slot / 64] & (UINT64_C(1) << (slot % 64))))
                return -EBUSY;
        mark_used(s, c, e, slot);
        return 0;
}

void kvd_slab_retire(struct kvd_slab *s, uint32_t extent)
{
        assert(s->extents[extent].klass == EXT_FREE);
        free_remove(s, extent);
        s->extents[extent].klass = EXT_RETIRED;
        s->n_retired++;
}

bool kvd_slab_can_alloc(const struct kvd_slab *s, int klass)
{
        return s->classes[klass].partial != NONE || s->free_head != NONE;
}

bool kvd_slab_extent_free(const struct kvd_slab *s, uint32_t extent)
{
        return s->extents[extent].klass == EXT_FREE;
}

int kvd_slab_extent_class(const struct kvd_slab *s, uint32_t extent)
{
        return s->extents[extent].klass;
}

uint32_t kvd_slab_extent_of(const struct kvd_slab *s, uint32_t loc)
{
        return loc / s->pages_per_extent;
}

uint32_t kvd_slab_extent_count(const struct kvd_slab *s)
{
        return s->n_extents;
}

uint32_t kvd_slab_pages_per_extent(const struct kvd_slab *s)
{
        return s->pages_per_extent;
}

void kvd_slab_usage(const struct kvd_slab *s, uint64_t *ret_capacity, uint64_t *ret_used, uint64_t *ret_slots)
{
        uint64_t used = 0, slots = 0;

        for (int i = 0; i < s->n_classes; i++) {
                used += s->classes[i].used * s->classes[i].bytes;
                slots += s->classes[i].used;
        }
        *ret_capacity = (uint64_t)(s->n_extents - s->n_retired) * s->extent_bytes;
        *ret_used = used;
        *ret_slots = slots;
}

/* SPDX-License-Identifier: MIT */
/*
 * A slab allocator over a linear space of fixed-size extents, shared by the
 * host and SSD tiers. An extent serves one size class (slot size, a multiple
 * of 4 KiB) and is cut into equal slots after an optional per-extent header;
 * an emptied extent returns to a common free list. Locations are 4 KiB page
 * numbers from the start of the space, 32 bits (16 TiB).
 * Not thread-safe: the owner's thread only.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define KVD_SLAB_MAX_CLASSES 64
#define KVD_SLAB_PAGE 4096u

struct kvd_slab;

/* extent_header: bytes reserved at the start of each extent (a multiple of
 * 4 KiB, 0 for none). -E2BIG if the space does not fit 32-bit locations. */
int kvd_slab_new(uint32_t n_extents, uint64_t extent_bytes, uint32_t extent_header,
                 struct kvd_slab **ret);
struct kvd_slab *kvd_slab_free(struct kvd_slab *s);

/* Class for slots of `bytes` (rounded up to 4 KiB), created on first use.
 * -E2BIG if a slot does not fit an extent, -ENOSPC if out of classes. */
int kvd_slab_class_for(struct kvd_slab *s, uint64_t bytes);
uint32_t kvd_slab_class_bytes(const struct kvd_slab *s, int klass);
int kvd_slab_class_count(const struct kvd_slab *s);

/* Allocates a slot of klass. *ret_new_extent (may be NULL) tells whether a
 * free extent was just given to the class. -ENOSPC when full. */
int kvd_slab_alloc(struct kvd_slab *s, int klass, uint32_t *ret_loc, bool *ret_new_extent);
void kvd_slab_release(struct kvd_slab *s, uint32_t loc);

/* Marks the slot at loc used (rebuilding state from disk): the extent must
 * be free or already of klass, loc a slot boundary. -EINVAL or -EBUSY. */
int kvd_slab_claim(struct kvd_slab *s, int klass, uint32_t loc);

/* Takes a free extent out of use for good (its space could not be had). */
void kvd_slab_retire(struct kvd_slab *s, uint32_t extent);

bool kvd_slab_can_alloc(const struct kvd_slab *s, int klass);
bool kvd_slab_extent_free(const struct kvd_slab *s, uint32_t extent);
int kvd_slab_extent_class(const struct kvd_slab *s, uint32_t extent);
uint32_t kvd_slab_extent_of(const struct kvd_slab *s, uint32_t loc);
uint32_t kvd_slab_extent_count(const struct kvd_slab *s);
uint32_t kvd_slab_pages_per_extent(const struct kvd_slab *s);
/* Bytes usable for slots (retired extents excluded), used bytes, slots used. */
void kvd_slab_usage(const struct kvd_slab *s, uint64_t *ret_capacity, uint64_t *ret_used, uint64_t *ret_slots);

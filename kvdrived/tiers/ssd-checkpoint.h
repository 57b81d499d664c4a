/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's index checkpoint (kvdrive.ckpt in the first SSD
 * directory): what a clean stop leaves so that the next start need not read
 * one slot header per slot. Written last at a clean stop (temp name, fsync,
 * rename, fsync of the directory); removed by the start that reads it, before
 * anything is written, so a later crash never finds a checkpoint that no
 * longer describes the disk (it then scans the slot headers, as without one).
 *
 * It holds the files' identity (inode, size, mtime: any write to them after
 * the checkpoint changes the mtime, and the checkpoint is ignored), every
 * extent's generation and slot size, each namespace's identity once, and per
 * block its slot, key, layer and namespace. Nothing in it is trusted for the
 * bytes: a read still checks the slot header on disk (key, layer, extent
 * generation, payload crc), so a record that no longer names its slot's
 * block is a miss, never stale data. Little-endian, crc32c over the whole.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "slot.h"
#include "tier.h"

#define KVD_CKPT_MAX_FILES 8u

struct kvd_ckpt_file {
        uint64_t ino, size;
        int64_t mtime_s, mtime_ns;
};

struct kvd_ckpt_extent {
        uint64_t generation;    /* of its header on disk, 0: none valid */
        uint32_t slot_bytes;    /* 0: no block of ours in it */
        uint32_t reserved;
};

/* What the checkpoint must match to be used: the tier's files and shape. */
struct kvd_ckpt_layout {
        uint32_t n_files, n_extents;
        uint64_t extent_bytes;
        struct kvd_ckpt_file files[KVD_CKPT_MAX_FILES];
};

/* Fills f from fd's fstat(). 0 or -errno. */
int kvd_ckpt_file_of(int fd, struct kvd_ckpt_file *ret);

/* Writes dir/kvdrive.ckpt: the layout, n_extents extents, next_gen (the
 * newest slot generation written), then one record per block next() gives
 * (h: its identity as kvd_block_header() fills it; ns: a small id of its
 * namespace, the same for the same namespace). 0 or -errno (logged; no
 * checkpoint is left then). */
int kvd_ckpt_write(const char *dir, const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                   uint64_t next_gen, kvd_tier_ckpt_fn next, void *ctx);

struct kvd_ckpt;

/* Reads and checks dir/kvdrive.ckpt against lay: -ENOENT none, -EBADMSG
 * damaged (bad crc, sizes), -ESTALE another layout or files changed since.
 * The caller frees *ret with kvd_ckpt_free(). */
int kvd_ckpt_load(const char *dir, const struct kvd_ckpt_layout *lay, struct kvd_ckpt **ret);
struct kvd_ckpt *kvd_ckpt_free(struct kvd_ckpt *k);
const struct kvd_ckpt_extent *kvd_ckpt_extents(const struct kvd_ckpt *k);
uint64_t kvd_ckpt_next_gen(const struct kvd_ckpt *k);
uint64_t kvd_ckpt_blocks(const struct kvd_ckpt *k);
/* Record i (< kvd_ckpt_blocks()) as a slot header (identity fields only:
 * key, layer, payload_len, flags, namespace) and its slot. */
void kvd_ckpt_record(const struct kvd_ckpt *k, uint64_t i, struct kvd_slot_header *ret_h, uint32_t *ret_loc);

/* Removes dir/kvdrive.ckpt (and a leftover temp), durably. 0 or -errno;
 * none there is 0. */
int kvd_ckpt_remove(const char *dir);

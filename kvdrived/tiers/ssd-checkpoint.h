/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's index checkpoint (kvdrive.ckpt in the first SSD
 * directory): what lets a start skip reading one slot header per slot.
 * Written (temp name, fsync, rename, fsync of the directory) last at a clean
 * stop, and every ssd-checkpoint-interval seconds while the daemon serves.
 *
 * It holds the files' identity (inode, size, mtime), every extent's
 * generation and slot size, each namespace's identity once, and per block
 * its slot, key, layer and namespace; and what it may be trusted with after:
 * its epoch and lineage (the journal of the extents written since it,
 * tiers/ssd-journal.h, must name the same lineage), and whether it was
 * written at a clean stop (then, with no journal, the files must match it
 * exactly: any write after it changes their mtime). Nothing in it is trusted
 * for the bytes: a read still checks the slot header on disk (key, layer,
 * extent generation, payload crc), so a record that no longer names its
 * slot's block is a miss, never stale data. Little-endian, crc32c over the
 * whole (docs/decisions.md, "Interval checkpoints and the dirty-extent
 * journal").
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
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

/* What else a checkpoint says: the newest slot generation written when it
 * was taken, its epoch (journal entries of this epoch or later name the
 * extents written since), the lineage of journal it goes with, and whether
 * a clean stop wrote it (nothing was written after it). */
struct kvd_ckpt_meta {
        uint64_t next_gen, epoch, lineage;
        bool clean;
};

/* Fills f from fd's fstat(). 0 or -errno. */
int kvd_ckpt_file_of(int fd, struct kvd_ckpt_file *ret);

/* Writes dir/kvdrive.ckpt: the layout, n_extents extents, meta, then one
 * record per block next() gives
 * (h: its identity as kvd_block_header() fills it; ns: a small id of its
 * namespace, the same for the same namespace). 0 or -errno (logged; no
 * checkpoint is left then). */
int kvd_ckpt_write(const char *dir, const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                   const struct kvd_ckpt_meta *meta, kvd_tier_ckpt_fn next, void *ctx);
/* The two halves of kvd_ckpt_write(), for a caller that gathers on one
 * thread and writes on another: build the file's bytes in memory (*ret_buf
 * is the caller's to free()), then write them as dir/kvdrive.ckpt (temp
 * name, fsync, rename, fsync of dir; touches nothing but the files, logs
 * nothing). 0 or -errno; on failure no checkpoint is left by write_buf. */
int kvd_ckpt_build(const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                   const struct kvd_ckpt_meta *meta, kvd_tier_ckpt_fn next, void *ctx, uint8_t **ret_buf,
                   size_t *ret_len);
int kvd_ckpt_write_buf(const char *dir, const uint8_t *buf, size_t len);

/* kvd_ckpt_build() in steps, for a caller that must not hold its thread
 * for all the records at once: new (lay and ext copied), then add() as many
 * times as it takes, at most max records from next() each (1: next() may
 * have more; 0: it returned false; -errno), then finish() (the bytes, as
 * kvd_ckpt_build() gives them) or free(). finish() frees b either way. */
struct kvd_ckpt_builder;
int kvd_ckpt_builder_new(const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                         const struct kvd_ckpt_meta *meta, uint64_t expect, struct kvd_ckpt_builder **ret);
int kvd_ckpt_builder_add(struct kvd_ckpt_builder *b, kvd_tier_ckpt_fn next, void *ctx, uint64_t max);
uint64_t kvd_ckpt_builder_records(const struct kvd_ckpt_builder *b);
int kvd_ckpt_builder_finish(struct kvd_ckpt_builder *b, uint8_t **ret_buf, size_t *ret_len);
struct kvd_ckpt_builder *kvd_ckpt_builder_free(struct kvd_ckpt_builder *b);

struct kvd_ckpt;

/* Reads and parses dir/kvdrive.ckpt: -ENOENT none, -EBADMSG damaged (bad
 * crc, sizes). The caller frees *ret with kvd_ckpt_free() and decides with
 * the checks below whether it still describes the files. */
int kvd_ckpt_load(const char *dir, struct kvd_ckpt **ret);
/* The parser under kvd_ckpt_load(), for any bytes (the fuzz target calls it
 * directly): takes buf (malloc()ed, len bytes) whatever it returns; 0 and
 * *ret, or -EBADMSG if anything in it is inconsistent (crc, magic, version,
 * sizes that do not add up to len, a record naming no namespace). Every
 * accessor below is then safe on *ret. */
int kvd_ckpt_parse(uint8_t *buf, size_t len, struct kvd_ckpt **ret);
/* 0 if k describes lay exactly (the files not changed since), else -ESTALE. */
int kvd_ckpt_check_layout(const struct kvd_ckpt *k, const struct kvd_ckpt_layout *lay);
/* 0 if k is of lay's shape and files (the same inodes; sizes and mtimes
 * may have moved on: the journal says where), else -ESTALE. */
int kvd_ckpt_check_shape(const struct kvd_ckpt *k, const struct kvd_ckpt_layout *lay);
void kvd_ckpt_meta_of(const struct kvd_ckpt *k, struct kvd_ckpt_meta *ret);
const struct kvd_ckpt_layout *kvd_ckpt_layout_of(const struct kvd_ckpt *k);
struct kvd_ckpt *kvd_ckpt_free(struct kvd_ckpt *k);
const struct kvd_ckpt_extent *kvd_ckpt_extents(const struct kvd_ckpt *k);
uint64_t kvd_ckpt_blocks(const struct kvd_ckpt *k);
/* Record i (< kvd_ckpt_blocks()) as a slot header (identity fields only:
 * key, layer, payload_len, flags, namespace) and its slot. */
void kvd_ckpt_record(const struct kvd_ckpt *k, uint64_t i, struct kvd_slot_header *ret_h, uint32_t *ret_loc);
/* Record i's namespace: an index, the same for records of one namespace. */
uint32_t kvd_ckpt_record_ns(const struct kvd_ckpt *k, uint64_t i);

/* Removes dir/kvdrive.ckpt (and a leftover temp), durably. 0 or -errno;
 * none there is 0. */
int kvd_ckpt_remove(const char *dir);

/* Shared with ssd-journal.c: fsync() of a directory; write() of all n
 * bytes; a whole file into a malloc()ed *ret (the caller frees it). 0 or
 * -errno. */
int kvd_ckpt_fsync_dir(const char *dir);
/* Unlinks dir/name and dir/tmp_name (either may be missing), then makes
 * that durable (fsync of dir). 0 or -errno. */
int kvd_ckpt_remove_files(const char *dir, const char *name, const char *tmp_name);
int kvd_ckpt_write_all(int fd, const void *buf, size_t n);
int kvd_ckpt_read_whole(const char *path, uint8_t **ret, size_t *ret_len);

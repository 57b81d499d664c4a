/* SPDX-License-Identifier: MIT */
/*
 * The journal of extents written since the index checkpoint
 * (kvdrive.dirty, next to kvdrive.ckpt): what makes a checkpoint taken
 * while the daemon serves usable after a crash. Before any write or wipe of
 * an extent is submitted, the extent is appended here and the append made
 * durable (fdatasync), once per extent per checkpoint epoch. Recovery loads
 * the checkpoint, then reads only the slot headers of the extents the
 * journal names for the checkpoint's epoch or later.
 *
 * A header (magic, version, lineage, base epoch, extent count, crc), then
 * fixed-size entries (epoch, extent, crc), little-endian. Entries of epochs
 * before a checkpoint's are of no use to it; the file is rewritten (temp
 * name, rename) without them once a newer checkpoint is on disk. A torn
 * last entry (shorter than an entry) is an append the crash cut: its I/O
 * was never submitted. Any other entry that does not check makes the whole
 * journal damaged, and recovery scans every slot header.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a journal's bytes (len of them) for a checkpoint of the given
 * lineage and epoch over n_extents extents: sets dirty[e] (n_extents
 * bytes, cleared first) for each extent it names for epoch or later, and
 * *ret_n to how many those are. 0; -EBADMSG damaged (header or an entry
 * that does not check, an extent out of range); -ESTALE of another lineage
 * or extent count, or begun after that epoch (so it may lack some of the
 * extents written since). */
int kvd_journal_parse(const uint8_t *buf, size_t len, uint32_t n_extents, uint64_t lineage, uint64_t epoch,
                      uint8_t *dirty, uint32_t *ret_n);

/* The same on dir/kvdrive.dirty; -ENOENT if there is none. */
int kvd_journal_load(const char *dir, uint32_t n_extents, uint64_t lineage, uint64_t epoch, uint8_t *dirty,
                     uint32_t *ret_n);

/* Writes a new journal durably in place of dir's (temp name, fdatasync,
 * rename, fsync of dir): lineage, base epoch, the n extents given as
 * entries of epoch base. *ret_fd: it, open for appending (the caller
 * closes it). 0 or -errno (then dir's journal is as it was). */
int kvd_journal_create(const char *dir, uint64_t lineage, uint64_t base, uint32_t n_extents,
                       const uint32_t *extents, uint32_t n, int *ret_fd);

/* Appends n entries of epoch (one write), then fdatasync: 0 once they are
 * on stable storage, or -errno. */
int kvd_journal_append(int fd, uint64_t epoch, const uint32_t *extents, uint32_t n);

/* Removes dir/kvdrive.dirty (and a leftover temp), durably. 0 or -errno;
 * none there is 0. */
int kvd_journal_remove(const char *dir);

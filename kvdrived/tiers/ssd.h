/* SPDX-License-Identifier: MIT */
/*
 * SSD tier: files on one or more directories (one per drive), opened
 * O_DIRECT, extents striped across them, all I/O through one io_uring
 * straight from and into host-pool pages (registered as fixed buffers; no
 * bounce buffer, no page cache). Format: tiers/slot.h.
 *
 * Event-loop thread only: submissions, completions (callbacks run from
 * kvd_ssd_reap()) and the allocator. An operation, once started, belongs to
 * the tier until its callback runs; its host page must stay put till then.
 *
 * Each directory is claimed with an exclusive lock (kvdrive.lock, holding the
 * daemon's pid) for the daemon's life, so two daemons never share one.
 *
 * Damage: a file truncated below what the tier provisioned, unlinked or
 * replaced, or I/O failing for a reason other than a full file system,
 * makes the tier "damaged" for the rest of the run (logged once, in the
 * stats): it allocates no slot and acknowledges no write any more (a write
 * ending after that reports -EIO), but reads go on, each checked as always,
 * so what still verifies is served. It is looked for when I/O fails, before
 * a durable (RWF_DSYNC) write is reported done, before a new extent is
 * provisioned, and by kvd_ssd_check() (about once a second).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "host.h"
#include "prio.h"
#include "slot.h"
#include "tier.h"

struct kvd_ssd;


/* An I/O's end (tier.h's kvd_tier_cb): 0, -EBADMSG (torn or corrupt: bad
 * crc, wrong block), -EIO (short read: file truncated), or the I/O's
 * -errno. */
typedef kvd_tier_cb kvd_ssd_cb;

/* Claims the directories in cfg->ssd_dirs (each must exist; -EBUSY with a
 * message naming it and the holder's pid if another daemon holds its lock)
 * and opens (creating) the file in each. Fails with a clear message if a
 * directory refuses O_DIRECT. Needs no host tier, so that a daemon that may
 * not run stops before it maps and mlocks its host memory. */
int kvd_ssd_new(const struct kvd_config *cfg, struct kvd_ssd **ret);
/* Registers host's pool as io_uring fixed buffers (plain O_DIRECT I/O if
 * that is refused) and says the tier is ready. Before any I/O. */
void kvd_ssd_attach_host(struct kvd_ssd *s, struct kvd_host *host);
/* Runs every queued and in-flight operation to its end (callbacks run,
 * and may queue more, which run too). */
void kvd_ssd_drain(struct kvd_ssd *s);

/* Drains (above), then closes. Accepts NULL. */
struct kvd_ssd *kvd_ssd_free(struct kvd_ssd *s);

/* Registers the tier's completion eventfd with the event loop, whose turns
 * then run the callbacks of completed operations and queue the next ones
 * (kvd_ssd_reap()). 0 or -errno. */
struct kvd_loop;
int kvd_ssd_watch(struct kvd_ssd *s, struct kvd_loop *l);
/* What a turn runs when the eventfd is readable. */
void kvd_ssd_reap(struct kvd_ssd *s);
/* Submits the operations queued since the last flush in one system call;
 * the event loop calls it before it sleeps. */
void kvd_ssd_flush(struct kvd_ssd *s);

/* The tier's allocator. A slot of class_for(payload) holds the slot header
 * and the payload. alloc() provisions a new extent's space (fallocate) and
 * writes its header; -ENOSPC when the tier or its file system is full. */
struct kvd_tier *kvd_ssd_tier(struct kvd_ssd *s);

/*
 * With an SSD tier a host page is laid out as its slot: KVD_SLOT_HDR_BYTES of
 * slot header, then the payload. So one I/O moves a block, straight between
 * the page (a registered buffer) and the disk.
 */

/* Writes page (header built from tmpl — key, layer, namespace identity —
 * then len payload bytes) to slot loc. dsync: RWF_DSYNC, so the block
 * survives power loss once cb reports 0. */
void kvd_ssd_write(struct kvd_ssd *s, uint32_t loc, const struct kvd_slot_header *tmpl, void *page,
                   uint32_t len, bool dsync, enum kvd_prio prio, kvd_ssd_cb cb, void *ctx);

/* Reads slot loc into page and checks it is the block (key_hi, key_lo,
 * layer) of len payload bytes with good crcs. */
void kvd_ssd_read(struct kvd_ssd *s, uint32_t loc, void *page, uint32_t len, uint64_t key_hi,
                  uint64_t key_lo, uint32_t layer, enum kvd_prio prio, kvd_ssd_cb cb, void *ctx);

/* Makes every write completed so far to the file that holds slot loc
 * durable (fdatasync through the ring), then checks the tier as a durable
 * write would; cb reports 0 or why not. */
void kvd_ssd_sync(struct kvd_ssd *s, uint32_t loc, enum kvd_prio prio, kvd_ssd_cb cb, void *ctx);

/* Frees slot loc after zeroing its header in the background, so a deleted
 * or corrupt block does not come back after a restart. The slot is reused
 * only once the wipe is done. Replaces the tier's free() for that slot. */
void kvd_ssd_discard(struct kvd_ssd *s, uint32_t loc);

/* Called for every valid slot found by kvd_ssd_recover() (tier.h's
 * kvd_tier_recover_fn). */
typedef kvd_tier_recover_fn kvd_ssd_recover_fn;

/* Rebuilds the allocator from the disk (start-up, before serving). Returns
 * the number of slots kept, or -errno. Slots with a bad header are free. */
int64_t kvd_ssd_recover(struct kvd_ssd *s, kvd_ssd_recover_fn fn, void *ctx);

/* The periodic damage check (the loop calls it about once a second): every
 * file still linked at its path, the same file, not shorter than
 * provisioned; and a few extent headers a call, in turn, still on disk.
 * Returns true while the tier is not damaged. */
bool kvd_ssd_check(struct kvd_ssd *s);
bool kvd_ssd_damaged(const struct kvd_ssd *s);

void kvd_ssd_stats(const struct kvd_ssd *s, struct kvd_tier_stats *ret);

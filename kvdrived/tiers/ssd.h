/* SPDX-License-Identifier: MIT */
/*
 * SSD tier: files on one or more directories (one per drive), opened
 * O_DIRECT, extents striped across them, all I/O through one io_uring
 * straight from and into host-pool pages (registered as fixed buffers; no
 * bounce buffer, no page cache). Format: tiers/slot.h.
 *
 * Event-loop thread only: submissions, completions (callbacks run from the
 * loop's turns: the watch op) and the allocator. An operation, once started, belongs to
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




/* Claims the directories in cfg->ssd_dirs (each must exist; -EBUSY with a
 * message naming it and the holder's pid if another daemon holds its lock)
 * and opens (creating) the file in each. Fails with a clear message if a
 * directory refuses O_DIRECT. Needs no host tier, so that a daemon that may
 * not run stops before it maps and mlocks its host memory. */
int kvd_ssd_new(const struct kvd_config *cfg, struct kvd_ssd **ret);
/* Registers host's pool as io_uring fixed buffers (plain O_DIRECT I/O if
 * that is refused) and says the tier is ready. Before any I/O. */
void kvd_ssd_attach_host(struct kvd_ssd *s, struct kvd_host *host);
/* Drains (the drain op: every queued and in-flight operation run to its
 * end, callbacks included), then closes. Accepts NULL. */
struct kvd_ssd *kvd_ssd_free(struct kvd_ssd *s);

/* The tier's allocator. A slot of class_for(payload) holds the slot header
 * and the payload. alloc() provisions a new extent's space (fallocate) and
 * writes its header; -ENOSPC when the tier or its file system is full. */
struct kvd_tier *kvd_ssd_tier(struct kvd_ssd *s);

/*
 * With an SSD tier a host page is laid out as its slot: KVD_SLOT_HDR_BYTES of
 * slot header, then the payload. So one I/O moves a block, straight between
 * the page (a registered buffer) and the disk.
 */

/*
 * The tier's ops (tier.h) are its whole interface once it is made. What
 * they do here:
 *  - write: the page (header built from tmpl: key, layer, namespace
 *    identity; then len payload bytes) to slot loc; dsync: RWF_DSYNC, so
 *    the block survives power loss once cb reports 0.
 *  - read: slot loc into page, checked to be the block (key, layer) of len
 *    payload bytes with good crcs (-EBADMSG otherwise).
 *  - sync: every write completed so far to the file holding loc made
 *    durable (fdatasync through the ring), then the tier checked as for a
 *    durable write.
 *  - discard: frees loc after zeroing its header in the background, so a
 *    deleted or corrupt block does not come back after a restart; the slot
 *    is reused only once the wipe is done.
 *  - recover: rebuilds the allocator from the disk (start-up, before
 *    serving); slots with a bad header are free.
 *  - watch: the ring's completion eventfd into the event loop, whose turns
 *    run the callbacks of completed operations and queue the next ones;
 *    flush submits what was queued in one system call (before the loop
 *    sleeps); drain runs everything queued and in flight to its end.
 *  - check, the periodic damage check (about once a second): every file
 *    still linked at its path, the same file, not shorter than provisioned,
 *    and a few extent headers a call, in turn, still on disk; and the end
 *    of a checkpoint being written off the loop.
 *  - checkpoint (at a clean stop) and checkpoint_start (while serving,
 *    every ssd-checkpoint-interval seconds): the index checkpoint
 *    (ssd-checkpoint.h); while a checkpoint relies on it, write, discard
 *    and alloc first journal the extent they touch (ssd-journal.h,
 *    ssd-interval.c), so a crash restart reads only those extents' headers.
 */

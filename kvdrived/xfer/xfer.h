/* SPDX-License-Identifier: MIT */
/*
 * The transfer engine: worker threads that copy blocks between the host
 * tier and client device pools while the event loop keeps serving.
 *
 * A batch is submitted by the event loop and belongs to the engine until its
 * `done` callback runs — on the event-loop thread, from kvd_xfer_reap(),
 * once the loop sees the engine's eventfd readable. Workers split a batch
 * copy by copy, so one large batch uses every worker. Batches are served in
 * priority order (lower value first), FIFO within a priority.
 */
#pragma once

#include <stdatomic.h>
#include <stdint.h>

#include "prio.h"

#include "device.h"

enum kvd_xfer_dir {
        KVD_XFER_IN,    /* device pool slot -> host (Put) */
        KVD_XFER_OUT,   /* host -> device pool slot (Get) */
};


struct kvd_copy {
        void *host;
        uint32_t slot;
        uint32_t len;
        int result;             /* set by the worker: 0 or -errno */
        /* Optional: a client counter word (counters.h) the worker bumps,
         * and wakes, right after a successful copy, before the batch
         * completes: set only where that copy finishes the item. */
        _Atomic uint32_t *done_ctr;
};

struct kvd_xfer_batch {
        /* Filled by the submitter. */
        struct kvd_peer_pool *pool;     /* the submitter holds a reference */
        enum kvd_xfer_dir dir;
        enum kvd_prio prio;
        struct kvd_copy *copies;
        uint32_t n;
        void (*done)(struct kvd_xfer_batch *b);
        /* Engine-private. */
        atomic_uint next;
        atomic_uint remaining;
        struct kvd_xfer_batch *link;
};

struct kvd_xfer;

int kvd_xfer_new(unsigned workers, struct kvd_xfer **ret);
/* Stops the workers after they finish the batches already queued, reaps
 * them, and frees the engine. Accepts NULL. */
struct kvd_xfer *kvd_xfer_free(struct kvd_xfer *x);

/* eventfd that becomes readable when batches complete. */
int kvd_xfer_fd(const struct kvd_xfer *x);

/* Registers that eventfd with the event loop, whose turns then reap
 * (kvd_xfer_reap()). 0 or -errno. */
struct kvd_loop;
int kvd_xfer_watch(struct kvd_xfer *x, struct kvd_loop *l);

/* Queues b (n > 0). Never fails: the batch was fully built by the caller.
 * A batch of host-memory copies of at most 32 KiB in all is copied before
 * this returns (on the caller's thread); its done callback still runs from
 * kvd_xfer_reap(). */
void kvd_xfer_submit(struct kvd_xfer *x, struct kvd_xfer_batch *b);

/* Event-loop thread: runs the done callback of every completed batch.
 * Returns how many completed. */
unsigned kvd_xfer_reap(struct kvd_xfer *x);

/* Batches copied by the submitting thread (kvd_xfer_submit()). */
uint64_t kvd_xfer_inline_batches(const struct kvd_xfer *x);

/* Bytes copied so far per direction (for stats), and the time workers spent
 * copying them (summed over workers: bytes / busy is one worker's rate). */
uint64_t kvd_xfer_bytes(const struct kvd_xfer *x, enum kvd_xfer_dir dir);
uint64_t kvd_xfer_busy_ns(const struct kvd_xfer *x, enum kvd_xfer_dir dir);
/* Successful copies of dir by how long each took: ret[b] counts those of
 * [2^(b-1), 2^b) us (b = 0: under 1 us; the last bucket: longer). Their
 * sum of durations is kvd_xfer_busy_ns(). */
#define KVD_XFER_LAT_BUCKETS 32
void kvd_xfer_latency(const struct kvd_xfer *x, enum kvd_xfer_dir dir, uint64_t ret[KVD_XFER_LAT_BUCKETS]);

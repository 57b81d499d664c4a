/* SPDX-License-Identifier: MIT */
/*
 * Put, Get and Prefetch of a batch of blocks: reserves or pins blocks in the
 * cache, waits where the cache says to (another Put of the key, a load from
 * SSD, host room being made), hands the copies to the transfer engine, and
 * commits or releases blocks when copies end. The caller (the server) has
 * already validated the items against the namespace and the pool.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "counters.h"
#include "device.h"
#include "xfer.h"

struct kvd_item {
        uint64_t key_hi, key_lo;
        uint32_t layer;
        uint32_t slot;
        uint32_t counter;       /* 0, or i + 1: count the item on counter i */
};

/* Item outcomes; the values are the wire's ItemStatus. */
enum kvd_item_status {
        KVD_ITEM_OK = 0,
        KVD_ITEM_EXISTS = 1,
        KVD_ITEM_MISS = 2,
        KVD_ITEM_NO_SPACE = 3,
        KVD_ITEM_ERROR = 4,
        KVD_ITEM_QUOTA = 5,     /* the block does not fit its owner's quota */
};

enum kvd_io_kind {
        KVD_IO_PUT,             /* pool slots -> cache */
        KVD_IO_GET,             /* cache -> pool slots */
        KVD_IO_PREFETCH,        /* SSD -> host, no client copy; pool unused */
};

struct kvd_io;

/* Called on the event-loop thread once every item has its outcome, possibly
 * from inside kvd_io_submit() when nothing had to wait. The callee reads
 * kvd_io_status()/kvd_io_done() and frees the request with kvd_io_free(). */
typedef void (*kvd_io_done_fn)(struct kvd_io *io, void *userdata);

/*
 * Starts a request of n items of ns. items (malloc'd, n entries, or 1 when
 * n is 0) is taken: the request keeps it and frees it, on -ENOMEM too, so
 * that items are copied once, by the caller that decodes them. ns
 * (kvd_cache_ns_hold()), pool
 * (Put/Get) and counters are held until the request is freed. flags:
 * KVD_IO_DURABLE (Put) acknowledges each block once it is on SSD with
 * RWF_DSYNC; KVD_IO_SHARED: the keys are prefix-chain keys, which a Put
 * writes through to the remote tier and a Get asks of it. counters must be given when an
 * item names a counter, and every item's counter be 0..counters->count (the
 * caller checked): each such item is counted exactly once when its status
 * is final — a Get's successful copy by the transfer worker right after it,
 * every other outcome here on the event-loop thread. Returns 0 (done will
 * be called exactly once) or -ENOMEM (nothing changed, done not called).
 *
 * At most KVD_IO_SLICE items are started at once, so that one request holds
 * the event loop for a bounded time: when more remain, *ret_more is the
 * request, and the caller calls kvd_io_continue() (later turns of the loop)
 * until it returns true; else *ret_more is NULL.
 */
#define KVD_IO_SLICE 256u

/* kvd_io_submit()'s flags. */
enum {
        KVD_IO_DURABLE = 1u << 0,       /* Put: acknowledged once on SSD (RWF_DSYNC) */
        KVD_IO_SHARED = 1u << 1,        /* prefix-chain keys: through the remote tier too */
};

int kvd_io_submit(struct kvd_cache *cache, struct kvd_xfer *xfer, enum kvd_io_kind kind, unsigned flags,
                  const struct kvd_ns *ns, struct kvd_peer_pool *pool, struct kvd_counters *counters,
                  struct kvd_item *items, uint32_t n, kvd_io_done_fn done, void *userdata,
                  struct kvd_io **ret_more);

/* Starts up to budget more items of io. true once every item is started:
 * io may have completed (done called, io freed) then, so it must not be
 * touched again. */
bool kvd_io_continue(struct kvd_io *io, uint32_t budget);

/* Per-item enum kvd_item_status, n bytes, owned by io. */
const uint8_t *kvd_io_status(const struct kvd_io *io);
uint32_t kvd_io_count(const struct kvd_io *io);
/* Items stored (Put), loaded (Get) or now in host memory (Prefetch). */
uint32_t kvd_io_done(const struct kvd_io *io);
struct kvd_io *kvd_io_free(struct kvd_io *io);

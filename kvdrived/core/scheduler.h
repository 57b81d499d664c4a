/* SPDX-License-Identifier: MIT */
/*
 * The adaptive prefetch scheduler: from the links' measured rates and a
 * client's compute time per layer, how many blocks that client can prefetch
 * per layer and still have them land before the layer that needs them.
 *
 * Pure bookkeeping, no I/O and no clock of its own: the caller feeds it
 * cumulative counters (kvd_sched_sample) now and then, and asks for a depth
 * when a client sends its compute time. Rates are per link "while busy"
 * (bytes moved / time the link had work), so an idle daemon does not look
 * slow; each window's rate enters an exponential average.
 *
 * A block that a client prefetches costs one host -> device copy, plus one
 * SSD read when it is not in host memory, and a prefetch may only use what
 * demand leaves of each link (its measured busy share, "util"):
 *     ns_per_block = B / (dev_rate (1 - dev_util))
 *                    + (1 - host_hit) B / (ssd_rate (1 - ssd_util))
 *     depth        = compute_ns / ns_per_block / active_clients
 * (clients that prefetch at the same time share the links). A link busy
 * all the time leaves no room: depth falls towards 0 instead of queueing
 * guesses in front of demand.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Cumulative counters at one moment. */
struct kvd_sched_sample {
        uint64_t now_ns;
        uint64_t dev_bytes, dev_busy_ns;        /* host <-> client pool copies (busy: summed over workers) */
        uint32_t dev_lanes;                     /* workers copying in parallel */
        uint64_t ssd_bytes, ssd_busy_ns;        /* SSD reads */
        uint64_t host_hits, host_misses;        /* Gets served from host / not */
};

struct kvd_sched {
        struct kvd_sched_sample last;
        double dev_rate, ssd_rate;      /* bytes/s, 0: not measured yet */
        double dev_util, ssd_util;      /* busy share of wall time, [0, 1] */
        double host_hit;                /* in [0, 1] */
        uint32_t active;                /* clients that asked recently */
        uint32_t compute_us;            /* their mean compute per layer */
        uint32_t last_depth;
        uint64_t decisions;
        bool primed;
};

/* Rates assumed until measured: a memcpy-class device link, an NVMe-class
 * SSD, half the Gets from host. */
#define KVD_SCHED_DEFAULT_DEV_RATE 4e9
#define KVD_SCHED_DEFAULT_SSD_RATE 1e9
#define KVD_SCHED_DEFAULT_HOST_HIT 0.5
/* Windows shorter than this are merged into the next one. */
#define KVD_SCHED_MIN_WINDOW_NS 100000000ull
/* Least spare share of a link counted (a link never looks fully closed:
 * the averages lag). */
#define KVD_SCHED_MIN_SPARE 0.02
/* Time constant of the busy shares (dev_util, ssd_util): they average over
 * about the last second of wall time, whatever the number of windows in it,
 * so that they decay with time while the daemon is idle, as of the next
 * sample (kvd_prefetch_refresh() takes one whenever they are read). */
#define KVD_SCHED_UTIL_TAU_NS 1000000000ull
/* Largest depth given. */
#define KVD_SCHED_MAX_DEPTH 4096u

void kvd_sched_init(struct kvd_sched *s);

/* Folds the counters since the last accepted sample into the averages.
 * Returns 1 when a window closed, 0 when it was too short (nothing changes),
 * -EINVAL when a counter went backwards (the sample is dropped). */
int kvd_sched_update(struct kvd_sched *s, const struct kvd_sched_sample *now);

/* The depth for a client whose layers compute for compute_us, with blocks
 * of block_bytes, active_clients (>= 1) prefetching: also recorded as the
 * last decision. 0 when compute_us or block_bytes is 0. */
uint32_t kvd_sched_depth(struct kvd_sched *s, uint32_t compute_us, uint64_t block_bytes, uint32_t active_clients);

/* SPDX-License-Identifier: MIT */
/*
 * The adaptive prefetch scheduler as core runs it: the arithmetic of
 * scheduler.h, fed from the cache's and the transfer engine's own counters
 * and from the compute times clients send, so that the server only passes
 * a Get's compute time through and holds no policy.
 */
#pragma once

#include <stdint.h>

#include "cache.h"
#include "scheduler.h"
#include "xfer.h"

/* A client that sent its compute time within this window prefetches now. */
#define KVD_PREFETCH_ACTIVE_MS 1000

struct kvd_prefetch_client {
        uint64_t id;            /* the caller's (a session id) */
        uint64_t ms;            /* when it last sent a compute time (ms of kvd_now_ns()) */
        uint32_t compute_us;
};

struct kvd_prefetch {
        struct kvd_sched sched;
        struct kvd_cache *cache;
        struct kvd_xfer *xfer;
        uint32_t lanes;                 /* transfer workers */
        struct kvd_prefetch_client *clients;
        uint32_t n_clients, cap_clients;
};

void kvd_prefetch_init(struct kvd_prefetch *p, struct kvd_cache *cache, struct kvd_xfer *xfer, uint32_t lanes);
void kvd_prefetch_free(struct kvd_prefetch *p);

/* Folds the links' counters in (at most once per KVD_SCHED_MIN_WINDOW_NS)
 * and counts the clients that prefetch now and their mean compute time. */
void kvd_prefetch_refresh(struct kvd_prefetch *p);

/* Client id's Get with compute_us per layer and blocks of block_bytes: its
 * prefetch depth (0 if the client could not be recorded: out of memory). */
uint32_t kvd_prefetch_depth(struct kvd_prefetch *p, uint64_t id, uint32_t compute_us, uint64_t block_bytes);

/* Client id is gone. */
void kvd_prefetch_forget(struct kvd_prefetch *p, uint64_t id);

/* SPDX-License-Identifier: MIT */
#include "prefetch.h"

#include <stdlib.h>

#include "clock.h"

void kvd_prefetch_init(struct kvd_prefetch *p, struct kvd_cache *cache, struct kvd_xfer *xfer, uint32_t lanes)
{
        *p = (struct kvd_prefetch){ .cache = cache, .xfer = xfer, .lanes = lanes };
        kvd_sched_init(&p->sched);
}

void kvd_prefetch_free(struct kvd_prefetch *p)
{
        free(p->clients);
        p->clients = NULL;
        p->n_clients = p->cap_clients = 0;
}

void kvd_prefetch_refresh(struct kvd_prefetch *p)
{
        struct kvd_sched_sample now = { .now_ns = kvd_now_ns() };
        struct kvd_cache_stats cs;
        uint64_t sum = 0, ms = kvd_now_ns() / 1000000;
        uint32_t active = 0;

        if (!p->cache || (p->sched.primed && now.now_ns - p->sched.last.now_ns < KVD_SCHED_MIN_WINDOW_NS))
                return;
        kvd_cache_stats(p->cache, &cs);
        now.dev_bytes = kvd_xfer_bytes(p->xfer, KVD_XFER_OUT);
        now.dev_busy_ns = kvd_xfer_busy_ns(p->xfer, KVD_XFER_OUT);
        now.dev_lanes = p->lanes;
        now.ssd_bytes = cs.ssd_read_bytes;
        now.ssd_busy_ns = cs.ssd_busy_ns;
        now.host_hits = cs.hits;
        now.host_misses = cs.misses;
        (void)kvd_sched_update(&p->sched, &now);
        for (uint32_t i = 0; i < p->n_clients; i++)
                if (ms - p->clients[i].ms < KVD_PREFETCH_ACTIVE_MS) {
                        active++;
                        sum += p->clients[i].compute_us;
                }
        p->sched.active = active;
        p->sched.compute_us = active ? (uint32_t)(sum / active) : 0;
}

static struct kvd_prefetch_client *client_of(struct kvd_prefetch *p, uint64_t id)
{
        for (uint32_t i = 0; i < p->n_clients; i++)
                if (p->clients[i].id == id)
                        return &p->clients[i];
        if (p->n_clients == p->cap_clients) {
                uint32_t cap = p->cap_clients ? 2 * p->cap_clients : 16;
                struct kvd_prefetch_client *v = realloc(p->clients, sizeof(*v) * cap);

                if (!v)
                        return NULL;
                p->clients = v;
                p->cap_clients = cap;
        }
        p->clients[p->n_clients] = (struct kvd_prefetch_client){ .id = id };
        return &p->clients[p->n_clients++];
}

uint32_t kvd_prefetch_depth(struct kvd_prefetch *p, uint64_t id, uint32_t compute_us, uint64_t block_bytes)
{
        struct kvd_prefetch_client *x = client_of(p, id);

        if (!x)
                return 0;
        x->ms = kvd_now_ns() / 1000000;
        x->compute_us = compute_us;
        kvd_prefetch_refresh(p);
        return kvd_sched_depth(&p->sched, compute_us, block_bytes, p->sched.active ? p->sched.active : 1);
}

void kvd_prefetch_forget(struct kvd_prefetch *p, uint64_t id)
{
        for (uint32_t i = 0; i < p->n_clients; i++)
                if (p->clients[i].id == id) {
                        p->clients[i] = p->clients[--p->n_clients];
                        return;
                }
}

/* SPDX-License-Identifier: MIT */
#include "scheduler.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

/* Weight of the newest window in the averages: about the last 4 windows. */
#define EWMA_NEW 0.25

void kvd_sched_init(struct kvd_sched *s)
{
        memset(s, 0, sizeof(*s));
}

static double ewma(double old, double now)
{
        return old > 0 ? (1 - EWMA_NEW) * old + EWMA_NEW * now : now;
}

/* A busy share averages over time, not over windows: a window of wall_ns
 * weighs 1 - e^(-wall/tau), so that a link idle for a while reads as idle
 * at the next sample however long the window (one window of 10 s idle
 * leaves e^-10 of the old figure, not 3/4 of it). */
static double ewma_util(double old, double now, uint64_t wall_ns)
{
        double w = -expm1(-(double)wall_ns / (double)KVD_SCHED_UTIL_TAU_NS);

        now = now > 1.0 ? 1.0 : now;
        return (1 - w) * old + w * now;
}

int kvd_sched_update(struct kvd_sched *s, const struct kvd_sched_sample *now)
{
        const struct kvd_sched_sample *o = &s->last;
        uint64_t hits, misses, wall;

        if (!s->primed) {
                s->last = *now;
                s->primed = true;
                return 0;
        }
        if (now->now_ns < o->now_ns || now->dev_bytes < o->dev_bytes || now->dev_busy_ns < o->dev_busy_ns ||
            now->ssd_bytes < o->ssd_bytes || now->ssd_busy_ns < o->ssd_busy_ns || now->host_hits < o->host_hits ||
            now->host_misses < o->host_misses)
                return -EINVAL;
        if (now->now_ns - o->now_ns < KVD_SCHED_MIN_WINDOW_NS)
                return 0;
        wall = now->now_ns - o->now_ns;
        s->dev_util = ewma_util(s->dev_util, (double)(now->dev_busy_ns - o->dev_busy_ns) /
                                                     ((double)wall * (now->dev_lanes ? now->dev_lanes : 1)), wall);
        s->ssd_util = ewma_util(s->ssd_util, (double)(now->ssd_busy_ns - o->ssd_busy_ns) / (double)wall, wall);
        /* A link's rate counts only for windows it was busy in: no work, no news. */
        if (now->dev_busy_ns > o->dev_busy_ns && now->dev_bytes > o->dev_bytes)
                s->dev_rate = ewma(s->dev_rate, (double)(now->dev_bytes - o->dev_bytes) * 1e9 /
                                                        (double)(now->dev_busy_ns - o->dev_busy_ns));
        if (now->ssd_busy_ns > o->ssd_busy_ns && now->ssd_bytes > o->ssd_bytes)
                s->ssd_rate = ewma(s->ssd_rate, (double)(now->ssd_bytes - o->ssd_bytes) * 1e9 /
                                                        (double)(now->ssd_busy_ns - o->ssd_busy_ns));
        hits = now->host_hits - o->host_hits;
        misses = now->host_misses - o->host_misses;
        if (hits + misses > 0)
                s->host_hit = ewma(s->host_hit, (double)hits / (double)(hits + misses));
        s->last = *now;
        return 1;
}

uint32_t kvd_sched_depth(struct kvd_sched *s, uint32_t compute_us, uint64_t block_bytes, uint32_t active_clients)
{
        double dev = s->dev_rate > 0 ? s->dev_rate : KVD_SCHED_DEFAULT_DEV_RATE;
        double ssd = s->ssd_rate > 0 ? s->ssd_rate : KVD_SCHED_DEFAULT_SSD_RATE;
        double hit = s->host_hit > 0 ? s->host_hit : KVD_SCHED_DEFAULT_HOST_HIT;
        double per_block, depth;

        if (compute_us == 0 || block_bytes == 0)
                return 0;
        if (active_clients == 0)
                active_clients = 1;
        dev *= fmax(1.0 - s->dev_util, KVD_SCHED_MIN_SPARE);
        ssd *= fmax(1.0 - s->ssd_util, KVD_SCHED_MIN_SPARE);
        per_block = (double)block_bytes / dev + (1.0 - hit) * (double)block_bytes / ssd;
        depth = floor((double)compute_us * 1e-6 / per_block / active_clients + 1e-9);
        s->last_depth = depth >= KVD_SCHED_MAX_DEPTH ? KVD_SCHED_MAX_DEPTH : (uint32_t)depth;
        s->decisions++;
        return s->last_depth;
}

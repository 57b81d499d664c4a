/* SPDX-License-Identifier: MIT */
/* kvc_stats_get(): the daemon's StatsReply into struct kvc_stats. */
#include "client-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy_str(char *dst, size_t size, const char *src)
{
        snprintf(dst, size, "%s", src ? src : "");
}

/* kvc_tier_stats.damaged went into the tail padding: programs built before
 * it index kvc_stats.tiers[] with the same stride. */
_Static_assert(sizeof(void *) != 8 || sizeof(struct kvc_tier_stats) == 248, "kvc_tier_stats keeps its size");

/* The remote tier's part of the reply into r (zeroed by the caller); an
 * unset w leaves r->have 0. r->nodes is allocated here, freed with the
 * stats. */
static int remote_from_wire(const Kvdrive__RemoteStats *w, struct kvc_remote_stats *r)
{
        if (!w)
                return 0;
        r->nodes = calloc(w->n_nodes ? w->n_nodes : 1, sizeof(*r->nodes));
        if (!r->nodes)
                return -ENOMEM;
        r->have = 1;
        copy_str(r->seeds, sizeof(r->seeds), w->seeds);
        copy_str(r->condition, sizeof(r->condition), w->condition);
        r->hits = w->hits;
        r->misses = w->misses;
        r->writes = w->writes;
        r->write_skips = w->write_skips;
        r->crc_failures = w->crc_failures;
        r->errors = w->errors;
        r->lookups = w->lookups;
        r->lookup_hits = w->lookup_hits;
        r->slot_map_refreshes = w->slot_map_refreshes;
        r->read_bytes = w->read_bytes;
        r->write_bytes = w->write_bytes;
        r->inflight = w->inflight;
        /* Bounded by the frame size, far below UINT32_MAX. */
        r->n_nodes = (uint32_t)w->n_nodes;
        for (size_t i = 0; i < w->n_nodes; i++) {
                const Kvdrive__RemoteNodeStats *n = w->nodes[i];
                struct kvc_remote_node_stats *o = &r->nodes[i];

                copy_str(o->addr, sizeof(o->addr), n->addr);
                o->up = n->up;
                o->slots = n->slots;
                o->requests = n->requests;
                o->hits = n->hits;
                o->misses = n->misses;
                o->read_bytes = n->read_bytes;
                o->write_bytes = n->write_bytes;
                o->errors = n->errors;
                o->timeouts = n->timeouts;
                o->moved = n->moved;
                o->ask = n->ask;
                o->latency_us_sum = n->latency_us_sum;
                o->latency_us_max = n->latency_us_max;
                for (size_t b = 0; b < n->n_latency_hist && b < KVC_LOOP_BUCKETS; b++)
                        o->latency_hist[b] = n->latency_hist[b];
        }
        return 0;
}

static int stats_from_wire(const Kvdrive__StatsReply *w, struct kvc_stats **ret)
{
        struct kvc_stats *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->tiers = calloc(w->n_tiers ? w->n_tiers : 1, sizeof(*s->tiers));
        s->namespaces = calloc(w->n_namespaces ? w->n_namespaces : 1, sizeof(*s->namespaces));
        s->tenants = calloc(w->n_tenants ? w->n_tenants : 1, sizeof(*s->tenants));
        if (!s->tiers || !s->namespaces || !s->tenants || remote_from_wire(w->remote, &s->remote) < 0) {
                kvc_stats_free(s);
                return -ENOMEM;
        }
        copy_str(s->daemon_version, sizeof(s->daemon_version), w->daemon_version);
        s->pid = w->pid;
        s->uptime_ms = w->uptime_ms;
        s->clients = w->clients;
        s->clients_total = w->clients_total;
        s->workers = w->workers;
        copy_str(s->device_backends, sizeof(s->device_backends), w->device_backends);
        copy_str(s->eviction, sizeof(s->eviction), w->eviction);
        s->speculative_promotions = w->speculative_promotions;
        s->scores = w->scores;
        s->bytes_in = w->bytes_in;
        s->bytes_out = w->bytes_out;
        s->puts = w->puts;
        s->gets = w->gets;
        s->requests = w->requests;
        s->errors = w->errors;
        s->index_capacity = w->index_capacity;
        s->index_entries = w->index_entries;
        s->index_bytes = w->index_bytes;
        s->index_bytes_per_block = w->index_bytes_per_block;
        copy_str(s->cuda, sizeof(s->cuda), w->cuda);
        s->pools_memfd = w->pools_memfd;
        s->pools_cuda = w->pools_cuda;
        s->sched_device_bytes_per_s = w->sched_device_bytes_per_s;
        s->sched_ssd_bytes_per_s = w->sched_ssd_bytes_per_s;
        s->sched_host_hit_rate = w->sched_host_hit_rate;
        s->sched_active_clients = w->sched_active_clients;
        s->sched_compute_us = w->sched_compute_us;
        s->sched_prefetch_depth = w->sched_prefetch_depth;
        s->sched_decisions = w->sched_decisions;
        s->sched_device_busy = w->sched_device_busy;
        s->sched_ssd_busy = w->sched_ssd_busy;
        /* Counts are bounded by the frame size, far below UINT32_MAX. */
        s->n_tiers = (uint32_t)w->n_tiers;
        for (size_t i = 0; i < w->n_tiers; i++) {
                const Kvdrive__TierStats *t = w->tiers[i];
                struct kvc_tier_stats *o = &s->tiers[i];

                copy_str(o->name, sizeof(o->name), t->name);
                o->capacity_bytes = t->capacity_bytes;
                o->used_bytes = t->used_bytes;
                o->blocks = t->blocks;
                o->hits = t->hits;
                o->misses = t->misses;
                o->evictions = t->evictions;
                o->reads = t->reads;
                o->writes = t->writes;
                o->read_bytes = t->read_bytes;
                o->write_bytes = t->write_bytes;
                o->read_errors = t->read_errors;
                o->write_errors = t->write_errors;
                o->crc_failures = t->crc_failures;
                o->demotions = t->demotions;
                o->promotions = t->promotions;
                o->dropped = t->dropped;
                o->full = t->full;
                o->damaged = t->damaged;
                copy_str(o->condition, sizeof(o->condition), t->condition);
        }
        s->n_namespaces = (uint32_t)w->n_namespaces;
        for (size_t i = 0; i < w->n_namespaces; i++) {
                const Kvdrive__NamespaceStats *n = w->namespaces[i];
                struct kvc_ns_stats *o = &s->namespaces[i];

                o->id = n->id;
                copy_str(o->name, sizeof(o->name), n->name);
                if (n->geometry) {
                        o->geometry.layers = n->geometry->layers;
                        o->geometry.kv_heads = n->geometry->kv_heads;
                        o->geometry.head_dim = n->geometry->head_dim;
                        o->geometry.dtype = (uint32_t)n->geometry->dtype;
                        o->geometry.block_tokens = n->geometry->block_tokens;
                }
                o->block_bytes = n->block_bytes;
                o->blocks = n->blocks;
                o->owner = n->owner;
                o->rights = n->rights;
                o->dropped = n->dropped;
        }
        s->loop_turns = w->loop_turns;
        s->loop_turn_max_us = w->loop_turn_max_us;
        for (size_t i = 0; i < w->n_loop_turn_hist && i < KVC_LOOP_BUCKETS; i++)
                s->loop_turn_hist[i] = w->loop_turn_hist[i];
        s->peer_uid = w->peer_uid;
        s->peer_admin = w->peer_admin;
        s->n_tenants = (uint32_t)w->n_tenants;
        for (size_t i = 0; i < w->n_tenants; i++) {
                const Kvdrive__TenantStats *t = w->tenants[i];

                s->tenants[i] = (struct kvc_tenant_stats){
                        .uid = t->uid, .host_bytes = t->host_bytes, .ssd_bytes = t->ssd_bytes,
                        .pool_bytes = t->pool_bytes, .namespaces = t->namespaces,
                        .quota_host_bytes = t->quota_host_bytes, .quota_ssd_bytes = t->quota_ssd_bytes,
                        .quota_pool_bytes = t->quota_pool_bytes, .quota_namespaces = t->quota_namespaces,
                        .quota_evictions = t->quota_evictions, .quota_refusals = t->quota_refusals,
                };
        }
        *ret = s;
        return 0;
}

_public_ int kvc_stats_get(kvc_client *c, struct kvc_stats **ret)
{
        Kvdrive__Stats st = KVDRIVE__STATS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        int err;

        if (!c || !ret)
                return -EINVAL;
        req.body_case = KVDRIVE__REQUEST__BODY_STATS;
        req.stats = &st;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_STATS, &resp);
        if (err < 0)
                return err;
        err = resp->stats ? stats_from_wire(resp->stats, ret) : -EBADMSG;
        kvdrive__response__free_unpacked(resp, NULL);
        return err;
}

_public_ struct kvc_stats *kvc_stats_free(struct kvc_stats *s)
{
        if (!s)
                return NULL;
        free(s->tiers);
        free(s->namespaces);
        free(s->tenants);
        free(s->remote.nodes);
        free(s);
        return NULL;
}

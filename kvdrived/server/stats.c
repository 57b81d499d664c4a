/* SPDX-License-Identifier: MIT */
/*
 * The Stats request: the daemon's counters, as much of them as the asking
 * peer may see (the namespaces it may use and its own usage; an admin sees
 * every namespace and every uid).
 */
#include <stdlib.h>
#include <unistd.h>

#include "kvd-build.h"
#include "server-internal.h"

/* No cap travels as 0. */
static uint64_t cap_wire(uint64_t v)
{
        return v == UINT64_MAX ? 0 : v;
}

static void tenant_to_wire(const struct kvd_tenant_stats *t, Kvdrive__TenantStats *w, Kvdrive__TenantStats **ret)
{
        kvdrive__tenant_stats__init(w);
        w->uid = t->uid;
        w->host_bytes = t->host_bytes;
        w->ssd_bytes = t->ssd_bytes;
        w->pool_bytes = t->pool_bytes;
        w->namespaces = t->namespaces;
        w->quota_host_bytes = cap_wire(t->quota.host_bytes);
        w->quota_ssd_bytes = cap_wire(t->quota.ssd_bytes);
        w->quota_pool_bytes = cap_wire(t->quota.pool_bytes);
        w->quota_namespaces = t->quota.namespaces == UINT32_MAX ? 0 : t->quota.namespaces;
        w->quota_evictions = t->quota_evictions;
        w->quota_refusals = t->quota_refusals;
        *ret = w;
}

void kvd_geometry_wire(const struct kvd_geometry *g, Kvdrive__Geometry *ret)
{
        kvdrive__geometry__init(ret);
        ret->layers = g->layers;
        ret->kv_heads = g->kv_heads;
        ret->head_dim = g->head_dim;
        ret->dtype = (Kvdrive__Dtype)g->dtype;
        ret->block_tokens = g->block_tokens;
}

#define REMOTE_NODES_MAX 64

/* The remote tier: its line in the tier table and its own section (with
 * its nodes: the arrays are the caller's, REMOTE_NODES_MAX long). */
static bool remote_stats(const struct kvd_server *s, Kvdrive__TierStats *tier, Kvdrive__RemoteStats *rs,
                         struct kvd_tier_node_stats *ns, Kvdrive__RemoteNodeStats *nw, Kvdrive__RemoteNodeStats **nwp,
                         struct kvd_tier_stats *st)
{
        struct kvd_cache_stats cs;
        int n = kvd_cache_remote_stats(s->cache, st, ns, REMOTE_NODES_MAX);

        if (n < 0)
                return false;
        kvd_cache_stats(s->cache, &cs);
        n = n < REMOTE_NODES_MAX ? n : REMOTE_NODES_MAX;
        tier->name = (char *)"remote";
        tier->hits = st->hits;
        tier->misses = st->misses;
        tier->reads = st->reads;
        tier->writes = st->writes;
        tier->read_bytes = st->read_bytes;
        tier->write_bytes = st->write_bytes;
        tier->read_errors = st->read_errors;
        tier->write_errors = st->write_errors;
        tier->crc_failures = st->crc_failures;
        tier->promotions = cs.remote_promotions;
        tier->condition = st->condition;
        rs->seeds = (char *)s->cfg->remote;
        rs->condition = st->condition;
        rs->hits = st->hits;
        rs->misses = st->misses;
        rs->writes = st->writes;
        rs->write_skips = st->write_skips;
        rs->crc_failures = st->crc_failures;
        rs->errors = st->read_errors + st->write_errors;
        rs->lookups = st->probes;
        rs->lookup_hits = st->probe_hits;
        rs->slot_map_refreshes = st->map_refreshes;
        rs->read_bytes = st->read_bytes;
        rs->write_bytes = st->write_bytes;
        rs->inflight = st->inflight;
        for (int i = 0; i < n; i++) {
                kvdrive__remote_node_stats__init(&nw[i]);
                nw[i].addr = ns[i].addr;
                nw[i].up = ns[i].up;
                nw[i].slots = ns[i].slots;
                nw[i].requests = ns[i].requests;
                nw[i].hits = ns[i].hits;
                nw[i].misses = ns[i].misses;
                nw[i].read_bytes = ns[i].read_bytes;
                nw[i].write_bytes = ns[i].write_bytes;
                nw[i].errors = ns[i].errors;
                nw[i].timeouts = ns[i].timeouts;
                nw[i].moved = ns[i].moved;
                nw[i].ask = ns[i].ask;
                nw[i].latency_us_sum = ns[i].latency_us_sum;
                nw[i].latency_us_max = ns[i].latency_us_max;
                nw[i].n_latency_hist = KVD_TIER_LAT_BUCKETS;
                nw[i].latency_hist = ns[i].latency_hist;
                nwp[i] = &nw[i];
        }
        rs->n_nodes = (size_t)n;
        rs->nodes = nwp;
        return true;
}

void kvd_handle_stats(struct kvd_session *ss, uint64_t id)
{
        struct kvd_server *s = ss->server;
        Kvdrive__StatsReply sr = KVDRIVE__STATS_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        Kvdrive__TierStats host = KVDRIVE__TIER_STATS__INIT, ssd = KVDRIVE__TIER_STATS__INIT;
        Kvdrive__TierStats remote = KVDRIVE__TIER_STATS__INIT;
        Kvdrive__TierStats *tiers[3] = { &host, &ssd, &remote };
        Kvdrive__RemoteStats rs = KVDRIVE__REMOTE_STATS__INIT;
        struct kvd_tier_node_stats *rn = calloc(REMOTE_NODES_MAX, sizeof(*rn));
        Kvdrive__RemoteNodeStats *rnw = calloc(REMOTE_NODES_MAX, sizeof(*rnw));
        Kvdrive__RemoteNodeStats **rnwp = calloc(REMOTE_NODES_MAX, sizeof(*rnwp));
        struct kvd_tier_stats rst;
        uint32_t n_ns = kvd_cache_ns_count(s->cache), n_shown = 0;
        uint32_t n_ten = ss->peer.admin ? kvd_cache_tenants(s->cache, NULL, 0) : 1;
        Kvdrive__NamespaceStats *nss = calloc(n_ns ? n_ns : 1, sizeof(*nss));
        Kvdrive__NamespaceStats **nsp = calloc(n_ns ? n_ns : 1, sizeof(*nsp));
        Kvdrive__Geometry *geo = calloc(n_ns ? n_ns : 1, sizeof(*geo));
        struct kvd_tenant_stats *ts = calloc(n_ten ? n_ten : 1, sizeof(*ts));
        Kvdrive__TenantStats *tw = calloc(n_ten ? n_ten : 1, sizeof(*tw));
        Kvdrive__TenantStats **twp = calloc(n_ten ? n_ten : 1, sizeof(*twp));
        struct kvd_cache_stats cs;

        if (!nss || !nsp || !geo || !ts || !tw || !twp || !rn || !rnw || !rnwp) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                goto out;
        }
        kvd_cache_stats(s->cache, &cs);
        host.name = (char *)"host";
        host.capacity_bytes = cs.host.capacity_bytes;
        host.used_bytes = cs.host.used_bytes;
        host.blocks = cs.host.blocks;
        host.hits = cs.hits;
        host.misses = cs.misses;
        host.evictions = cs.evictions;
        host.dropped = cs.have_ssd ? 0 : cs.dropped;
        host.condition = (char *)"ok";
        if (cs.have_ssd) {
                ssd.name = (char *)"ssd";
                ssd.capacity_bytes = cs.ssd.capacity_bytes;
                ssd.used_bytes = cs.ssd.used_bytes;
                ssd.blocks = cs.ssd.blocks;
                ssd.hits = cs.ssd_hits;
                ssd.misses = cs.ssd_misses;
                ssd.evictions = cs.ssd_evictions;
                ssd.reads = cs.ssd_reads;
                ssd.writes = cs.ssd_writes;
                ssd.read_bytes = cs.ssd_read_bytes;
                ssd.write_bytes = cs.ssd_write_bytes;
                ssd.read_errors = cs.ssd_read_errors;
                ssd.write_errors = cs.ssd_write_errors;
                ssd.crc_failures = cs.crc_failures;
                ssd.demotions = cs.demotions;
                ssd.promotions = cs.promotions;
                ssd.dropped = cs.dropped;
                ssd.condition = cs.ssd_condition;
                ssd.full = cs.ssd_full;
                ssd.damaged = cs.ssd_damaged;
        }
        /* A peer sees the namespaces it may use; an admin sees all. */
        for (uint32_t k = 0; k < kvd_cache_ns_slots(s->cache) && n_shown < n_ns; k++) {
                const struct kvd_ns *ns = kvd_cache_ns(s->cache, k);
                uint32_t i = n_shown;
                unsigned rights;

                if (!ns)
                        continue;
                rights = kvd_peer_rights(ss, ns);
                if (!rights && !ss->peer.admin)
                        continue;
                kvdrive__namespace_stats__init(&nss[i]);
                kvd_geometry_wire(&ns->geometry, &geo[i]);
                nss[i].id = ns->id;
                nss[i].name = (char *)ns->name;
                nss[i].geometry = &geo[i];
                nss[i].block_bytes = ns->block_bytes;
                nss[i].blocks = ns->blocks;
                nss[i].owner = ns->owner;
                nss[i].rights = rights;
                nss[i].dropped = ns->dropped;
                nsp[i] = &nss[i];
                n_shown++;
        }
        /* Likewise the tenants: its own usage, or everyone's. */
        if (ss->peer.admin)
                n_ten = kvd_cache_tenants(s->cache, ts, n_ten);
        else
                kvd_cache_tenant(s->cache, (uint32_t)ss->peer.uid, &ts[0]);
        for (uint32_t i = 0; i < n_ten; i++)
                tenant_to_wire(&ts[i], &tw[i], &twp[i]);
        sr.daemon_version = (char *)KVD_VERSION;
        sr.pid = (uint32_t)getpid();
        sr.uptime_ms = kvd_now_ms() - s->started_ms;
        sr.clients = s->n_sessions;
        sr.clients_total = s->sessions_total;
        sr.n_tiers = cs.have_ssd ? 2 : 1;
        if (remote_stats(s, &remote, &rs, rn, rnw, rnwp, &rst)) {
                tiers[sr.n_tiers++] = &remote;
                sr.remote = &rs;
        }
        sr.tiers = tiers;
        sr.n_namespaces = n_shown;
        sr.namespaces = nsp;
        sr.n_tenants = n_ten;
        sr.tenants = twp;
        sr.loop_turns = s->turns;
        sr.loop_turn_max_us = s->turn_max_ns / 1000;
        sr.n_loop_turn_hist = KVD_TURN_BUCKETS;
        sr.loop_turn_hist = s->turn_hist;
        sr.peer_uid = (uint32_t)ss->peer.uid;
        sr.peer_admin = ss->peer.admin;
        sr.bytes_in = kvd_xfer_bytes(s->xfer, KVD_XFER_IN);
        sr.bytes_out = kvd_xfer_bytes(s->xfer, KVD_XFER_OUT);
        sr.puts = cs.puts;
        sr.gets = cs.gets;
        sr.index_capacity = cs.index_capacity;
        sr.index_entries = cs.index_entries;
        sr.index_bytes = cs.index_bytes;
        sr.index_bytes_per_block = cs.index_bytes_per_block;
        sr.requests = s->requests;
        sr.errors = s->errors;
        sr.workers = s->cfg->workers;
        sr.device_backends = (char *)(kvd_cuda_ready(s->cuda) ? "memfd,cuda" : "memfd");
        sr.cuda = (char *)kvd_cuda_status(s->cuda);
        sr.pools_memfd = s->pools[KVD_BACKEND_MEMFD];
        sr.pools_cuda = s->pools[KVD_BACKEND_CUDA];
        sr.eviction = (char *)cs.eviction;
        sr.speculative_promotions = cs.spec_promotions;
        sr.scores = cs.scores;
        kvd_prefetch_refresh(&s->prefetch);
        sr.sched_device_bytes_per_s = (uint64_t)s->prefetch.sched.dev_rate;
        sr.sched_ssd_bytes_per_s = (uint64_t)s->prefetch.sched.ssd_rate;
        sr.sched_host_hit_rate = s->prefetch.sched.host_hit;
        sr.sched_active_clients = s->prefetch.sched.active;
        sr.sched_compute_us = s->prefetch.sched.compute_us;
        sr.sched_prefetch_depth = s->prefetch.sched.last_depth;
        sr.sched_decisions = s->prefetch.sched.decisions;
        sr.sched_device_busy = s->prefetch.sched.dev_util;
        sr.sched_ssd_busy = s->prefetch.sched.ssd_util;
        resp.id = id;
        resp.body_case = KVDRIVE__RESPONSE__BODY_STATS;
        resp.stats = &sr;
        kvd_session_send(ss, &resp);
out:
        free(nss);
        free(nsp);
        free(geo);
        free(ts);
        free(tw);
        free(twp);
        free(rn);
        free(rnw);
        free(rnwp);
}

/* SPDX-License-Identifier: MIT */
/*
 * The administration requests of kvdrivectl: ListClients, ListNamespaces,
 * Evict, Flush, GetConfig and Shutdown. Wire -> core only: the peer's
 * rights are checked here, the work (which copies go, what is written
 * back) is the cache's.
 *
 * Who may do what: uid 0 and members of admin-group administer the daemon
 * (every client and namespace, flush, config, shutdown); others see their
 * own uid's clients and the namespaces they may use, and evict only the
 * namespaces they own.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "server-internal.h"

static void reply(struct kvd_session *ss, uint64_t id, Kvdrive__Response *resp)
{
        resp->id = id;
        kvd_session_send(ss, resp);
}

/* true if the peer administers this daemon; else replies E_DENIED. */
static bool check_admin(struct kvd_session *ss, uint64_t id, const char *what)
{
        if (ss->peer.admin)
                return true;
        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_DENIED,
                               "uid %u may not %s: only uid 0 and members of admin-group '%s' may",
                               (unsigned)ss->peer.uid, what, ss->server->cfg->admin_group);
        return false;
}

static uint32_t joined_namespaces(const struct kvd_session *ss)
{
        uint32_t n = 0;

        for (uint32_t i = 0; i < kvd_cache_ns_slots(ss->server->cache); i++)
                n += ss->ns_rights[i] != 0;
        return n;
}

void kvd_handle_list_clients(struct kvd_session *ss, uint64_t id)
{
        Kvdrive__ListClientsReply lr = KVDRIVE__LIST_CLIENTS_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        struct kvd_server *s = ss->server;
        Kvdrive__ClientInfo *ci, **cip;
        size_t n = 0;

        ci = calloc(s->n_sessions ? s->n_sessions : 1, sizeof(*ci));
        cip = calloc(s->n_sessions ? s->n_sessions : 1, sizeof(*cip));
        if (!ci || !cip) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                goto out;
        }
        for (struct kvd_session *x = s->sessions; x && n < s->n_sessions; x = x->next) {
                if (x->closed || (!ss->peer.admin && x->peer.uid != ss->peer.uid))
                        continue;
                kvdrive__client_info__init(&ci[n]);
                ci[n].session_id = x->id;
                ci[n].pid = (uint32_t)x->cred.pid;
                ci[n].uid = (uint32_t)x->peer.uid;
                ci[n].gid = (uint32_t)x->peer.gid;
                ci[n].name = x->name;
                ci[n].pools = x->n_pools;
                ci[n].pool_bytes = x->pool_bytes;
                ci[n].inflight = x->inflight;
                ci[n].namespaces = joined_namespaces(x);
                ci[n].self = x == ss;
                cip[n] = &ci[n];
                n++;
        }
        lr.clients = cip;
        lr.n_clients = n;
        lr.all = ss->peer.admin;
        resp.body_case = KVDRIVE__RESPONSE__BODY_LIST_CLIENTS;
        resp.list_clients = &lr;
        reply(ss, id, &resp);
out:
        free(ci);
        free(cip);
}

void kvd_handle_list_namespaces(struct kvd_session *ss, uint64_t id)
{
        Kvdrive__ListNamespacesReply lr = KVDRIVE__LIST_NAMESPACES_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        struct kvd_cache *cache = ss->server->cache;
        uint32_t slots = kvd_cache_ns_slots(cache);
        Kvdrive__NamespaceInfo *ni = calloc(slots, sizeof(*ni));
        Kvdrive__NamespaceInfo **nip = calloc(slots, sizeof(*nip));
        Kvdrive__Geometry *geo = calloc(slots, sizeof(*geo));
        uint64_t *host = calloc(slots, sizeof(*host));
        uint64_t *ssd = calloc(slots, sizeof(*ssd));
        size_t n = 0;

        if (!ni || !nip || !geo || !host || !ssd) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                goto out;
        }
        kvd_cache_ns_copies(cache, host, ssd);
        for (uint32_t i = 0; i < slots; i++) {
                const struct kvd_ns *ns = kvd_cache_ns(cache, i);
                unsigned rights;

                if (!ns)
                        continue;
                rights = kvd_peer_rights(ss, ns);
                if (!rights && !ss->peer.admin)
                        continue;
                kvd_geometry_wire(&ns->geometry, &geo[n]);
                kvdrive__namespace_info__init(&ni[n]);
                ni[n].id = ns->id;
                ni[n].name = (char *)ns->name;
                ni[n].owner = ns->owner;
                ni[n].geometry = &geo[n];
                ni[n].block_bytes = ns->block_bytes;
                ni[n].blocks = ns->blocks;
                ni[n].host_blocks = host[i];
                ni[n].ssd_blocks = ssd[i];
                ni[n].fingerprint.data = (uint8_t *)ns->fingerprint;
                ni[n].fingerprint.len = ns->fingerprint_len;
                ni[n].rights = ss->peer.admin && !rights ? 0 : rights;
                ni[n].dropped = ns->dropped;
                ni[n].sessions = ns->refs;
                nip[n] = &ni[n];
                n++;
        }
        lr.namespaces = nip;
        lr.n_namespaces = n;
        resp.body_case = KVDRIVE__RESPONSE__BODY_LIST_NAMESPACES;
        resp.list_namespaces = &lr;
        reply(ss, id, &resp);
out:
        free(ni);
        free(nip);
        free(geo);
        free(host);
        free(ssd);
}

/* An Evict in slices, as a drop (server-internal.h: struct kvd_task). */
struct evict_task {
        struct kvd_task task;
        uint64_t id;
        uint32_t ns;
        bool ssd;
        uint64_t cursor;
        struct kvd_evict_result res;
};

static bool evict_step(struct kvd_task *t, uint32_t budget)
{
        struct evict_task *et = container_of(t, struct evict_task, task);
        Kvdrive__EvictReply er = KVDRIVE__EVICT_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        if (!kvd_cache_ns_evict(t->ss->server->cache, et->ns, et->ssd, &et->cursor, budget * 8, &et->res))
                return false;
        log_notice("session %llu (uid %u): evicted namespace %u from %s: %llu freed, %llu demoting, %llu dropped, "
                   "%llu busy", (unsigned long long)t->ss->id, (unsigned)t->ss->peer.uid, et->ns,
                   et->ssd ? "ssd" : "host", (unsigned long long)et->res.freed,
                   (unsigned long long)et->res.demoting, (unsigned long long)et->res.dropped,
                   (unsigned long long)et->res.busy);
        er.freed = et->res.freed;
        er.demoting = et->res.demoting;
        er.dropped = et->res.dropped;
        er.busy = et->res.busy;
        resp.body_case = KVDRIVE__RESPONSE__BODY_EVICT;
        resp.evict = &er;
        reply(t->ss, et->id, &resp);
        return true;
}

static void evict_free(struct kvd_task *t)
{
        struct evict_task *et = container_of(t, struct evict_task, task);

        kvd_cache_ns_release(t->ss->server->cache, et->ns);
        free(et);
}

uint32_t kvd_handle_evict(struct kvd_session *ss, uint64_t id, const Kvdrive__Evict *m)
{
        struct kvd_cache *cache = ss->server->cache;
        const struct kvd_ns *ns = kvd_cache_ns(cache, m->ns_id);
        unsigned rights = ns ? kvd_peer_rights(ss, ns) : 0;
        struct evict_task *et;

        if (!ns || (!rights && !ss->peer.admin)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_NAMESPACE, "no namespace %u", m->ns_id);
                return 0;
        }
        if (!(rights & KVD_RIGHT_OWNER) && !ss->peer.admin) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_DENIED,
                                       "uid %u may not evict namespace '%s' of uid %u (its owner or an admin may)",
                                       (unsigned)ss->peer.uid, ns->name, ns->owner);
                return 0;
        }
        if (m->tier != KVDRIVE__TIER_KIND__TIER_HOST && m->tier != KVDRIVE__TIER_KIND__TIER_SSD) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG, "tier %d: host or ssd", (int)m->tier);
                return 0;
        }
        if (m->tier == KVDRIVE__TIER_KIND__TIER_SSD && !kvd_cache_has_ssd(cache)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_UNSUPPORTED, "this daemon has no SSD tier");
                return 0;
        }
        if (ss->inflight >= ss->server->cfg->max_inflight_per_client) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT,
                                       "too many requests in flight (max-inflight-per-client %u)",
                                       ss->server->cfg->max_inflight_per_client);
                return 0;
        }
        et = calloc(1, sizeof(*et));
        if (!et) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return 0;
        }
        et->task = (struct kvd_task){ .ss = ss, .step = evict_step, .free = evict_free };
        et->id = id;
        et->ns = ns->id;
        et->ssd = m->tier == KVDRIVE__TIER_KIND__TIER_SSD;
        kvd_cache_ns_hold(cache, ns->id);
        if (evict_step(&et->task, KVD_TASK_SLICE))
                evict_free(&et->task);
        else
                kvd_task_queue(ss, &et->task);
        return KVD_TASK_SLICE;
}

void kvd_handle_flush(struct kvd_session *ss, uint64_t id)
{
        Kvdrive__FlushReply fr = KVDRIVE__FLUSH_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        if (!check_admin(ss, id, "flush"))
                return;
        fr.have_ssd = kvd_cache_has_ssd(ss->server->cache);
        fr.started = kvd_cache_write_back(ss->server->cache);
        log_notice("session %llu (uid %u): flush: %llu blocks being written to SSD", (unsigned long long)ss->id,
                   (unsigned)ss->peer.uid, (unsigned long long)fr.started);
        resp.body_case = KVDRIVE__RESPONSE__BODY_FLUSH;
        resp.flush = &fr;
        reply(ss, id, &resp);
}

void kvd_handle_get_config(struct kvd_session *ss, uint64_t id)
{
        Kvdrive__GetConfigReply gr = KVDRIVE__GET_CONFIG_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        const struct kvd_config *cfg = ss->server->cfg;
        struct kvd_config_item *items = NULL;
        Kvdrive__ConfigOption *co = NULL, **cop = NULL;
        size_t n = 0;

        if (!check_admin(ss, id, "read the configuration"))
                return;
        items = calloc(KVD_CONFIG_OPTIONS_MAX, sizeof(*items));
        co = calloc(KVD_CONFIG_OPTIONS_MAX, sizeof(*co));
        cop = calloc(KVD_CONFIG_OPTIONS_MAX, sizeof(*cop));
        if (!items || !co || !cop) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                goto out;
        }
        for (; n < KVD_CONFIG_OPTIONS_MAX && kvd_config_item(cfg, n, &items[n]) == 0; n++) {
                kvdrive__config_option__init(&co[n]);
                co[n].name = (char *)items[n].name;
                co[n].value = items[n].value;
                co[n].source = (char *)items[n].source;
                cop[n] = &co[n];
        }
        gr.options = cop;
        gr.n_options = n;
        gr.config_file = (char *)cfg->config_file;
        resp.body_case = KVDRIVE__RESPONSE__BODY_GET_CONFIG;
        resp.get_config = &gr;
        reply(ss, id, &resp);
out:
        free(items);
        free(co);
        free(cop);
}

void kvd_handle_shutdown(struct kvd_session *ss, uint64_t id)
{
        Kvdrive__ShutdownReply sr = KVDRIVE__SHUTDOWN_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        if (!check_admin(ss, id, "stop the daemon"))
                return;
        log_notice("session %llu (uid %u, pid %d, '%s'): shutdown requested, stopping", (unsigned long long)ss->id,
                   (unsigned)ss->peer.uid, (int)ss->cred.pid, ss->name);
        sr.pid = (uint32_t)getpid();
        resp.body_case = KVDRIVE__RESPONSE__BODY_SHUTDOWN;
        resp.shutdown = &sr;
        /* Sent now (or queued on a full socket, then lost with the session);
         * the loop stops once this callback returns, as on SIGTERM. */
        reply(ss, id, &resp);
        kvd_loop_stop(&ss->server->loop);
}

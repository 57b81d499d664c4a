/* SPDX-License-Identifier: MIT */
/*
 * Wire -> core: decodes a Request, checks the session, the peer's limits and
 * every argument, and only then calls the cache / I/O layer with plain
 * structs. A request that fails a check gets an Error reply and changes no
 * state.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "io.h"
#include "kvd-build.h"
#include "log.h"
#include "macro.h"
#include "server-internal.h"

struct pending {
        struct kvd_session *ss;
        uint64_t id;
        enum kvd_io_kind kind;
        uint32_t prefetch_depth;        /* the scheduler's answer, if asked */
};

static void close_fds(int *fds, unsigned nfds)
{
        for (unsigned i = 0; i < nfds; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
}

static void reply(struct kvd_session *ss, uint64_t id, Kvdrive__Response *resp)
{
        resp->id = id;
        kvd_session_send(ss, resp);
}

static void handle_hello(struct kvd_session *ss, uint64_t id, const Kvdrive__Hello *h)
{
        Kvdrive__HelloReply hr = KVDRIVE__HELLO_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        if (h->version != KVD_PROTO_VERSION) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_VERSION,
                                       "protocol version %u not supported (daemon speaks %u)", h->version,
                                       KVD_PROTO_VERSION);
                return;
        }
        if (h->client_name && *h->client_name) {
                snprintf(ss->name, sizeof(ss->name), "%s", h->client_name);
                log_info("session %llu: hello from '%s'", (unsigned long long)ss->id, ss->name);
        }
        ss->hello = true;
        hr.version = KVD_PROTO_VERSION;
        hr.daemon_version = (char *)KVD_VERSION;
        hr.session_id = ss->id;
        hr.max_frame = ss->server->cfg->max_frame;
        hr.max_items = ss->server->cfg->max_items;
        resp.body_case = KVDRIVE__RESPONSE__BODY_HELLO;
        resp.hello = &hr;
        reply(ss, id, &resp);
}

static const char *right_name(unsigned need)
{
        return need & KVD_RIGHT_OWNER ? "manage" : need & KVD_RIGHT_WRITE ? "write to" : "read";
}

/*
 * Which namespace a peer means by name: its own, unless the config shares
 * a namespace of that name of another owner with it (then that one, with
 * the rights the share gives). Only the owner and writers may create one:
 * a reader could otherwise fix a shared namespace's geometry.
 */
static void resolve_ns(const struct kvd_session *ss, const char *name, uint32_t *ret_owner, unsigned *ret_rights)
{
        const struct kvd_share *sh = kvd_access_share(ss->server->cfg->access, name);
        unsigned rights;

        if (sh && kvd_share_owner(sh) != ss->peer.uid) {
                rights = kvd_access_rights(sh, kvd_share_owner(sh), &ss->peer);
                if (rights) {
                        *ret_owner = (uint32_t)kvd_share_owner(sh);
                        *ret_rights = rights;
                        return;
                }
        }
        *ret_owner = (uint32_t)ss->peer.uid;
        *ret_rights = KVD_RIGHT_READ | KVD_RIGHT_WRITE | KVD_RIGHT_OWNER;
}

static void handle_register_ns(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterNamespace *m)
{
        Kvdrive__RegisterNamespaceReply rr = KVDRIVE__REGISTER_NAMESPACE_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        struct kvd_cache *cache = ss->server->cache;
        struct kvd_geometry g = { 0 };
        char name[KVD_NS_NAME_MAX];
        struct kvd_tenant_stats ts;
        struct kvd_ns_ident ident;
        uint32_t ns_id, owner;
        unsigned rights;
        bool created;
        int r;

        if (!kvd_ns_name_valid((const char *)m->name.data, m->name.len)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "namespace name of %zu bytes: must be 1-%d bytes of printable ASCII "
                                       "(no NUL, no control characters)", m->name.len, KVD_NS_NAME_MAX - 1);
                return;
        }
        memcpy(name, m->name.data, m->name.len);
        name[m->name.len] = '\0';
        if (!m->geometry) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_GEOMETRY, "namespace has no geometry");
                return;
        }
        g = (struct kvd_geometry){ m->geometry->layers, m->geometry->kv_heads, m->geometry->head_dim,
                                   (uint32_t)m->geometry->dtype, m->geometry->block_tokens };
        if (m->fingerprint.len > KVD_FINGERPRINT_MAX) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "fingerprint of %zu bytes: at most %u", m->fingerprint.len,
                                       KVD_FINGERPRINT_MAX);
                return;
        }
        resolve_ns(ss, name, &owner, &rights);
        ident = (struct kvd_ns_ident){ .name = name, .geometry = &g, .owner = owner,
                                       .fingerprint = m->fingerprint.data, .fingerprint_len = m->fingerprint.len };
        r = kvd_cache_ns_register_ident(cache, &ident, rights & KVD_RIGHT_WRITE, &ns_id, &created);
        switch (r) {
        case 0:
                break;
        case -EEXIST:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NS_CONFLICT,
                                       "namespace '%s' exists with a different geometry or fingerprint", name);
                return;
        case -ENOENT:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_NAMESPACE,
                                       "namespace '%s' of uid %u does not exist yet, and its readers cannot "
                                       "create it (its owner or a writer can)", name, owner);
                return;
        case -E2BIG:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_GEOMETRY,
                                       "block larger than the host extent (%llu bytes)",
                                       (unsigned long long)ss->server->cfg->host_extent_bytes);
                return;
        case -EDQUOT:
                kvd_cache_tenant(cache, owner, &ts);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_QUOTA,
                                       "uid %u owns %u namespaces, its quota (quota-namespaces or [quota]) is %u",
                                       owner, ts.namespaces, ts.quota.namespaces);
                return;
        case -ENOSPC:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT,
                                       "the namespace table is full (max-namespaces %u)",
                                       ss->server->cfg->max_namespaces);
                return;
        case -ENOMEM:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return;
        default:
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_GEOMETRY,
                                       "invalid namespace: every geometry field non-zero, layers <= %u, "
                                       "dtype 1-4, block < 4 GiB", KVD_NS_MAX_LAYERS);
                return;
        }
        if (!ss->ns_rights[ns_id])
                kvd_cache_ns_hold(cache, ns_id);
        ss->ns_rights[ns_id] = (uint8_t)(KVD_NS_JOINED | rights);
        rr.ns_id = ns_id;
        rr.block_bytes = kvd_cache_ns(cache, ns_id)->block_bytes;
        rr.created = created;
        rr.owner = owner;
        rr.rights = rights;
        resp.body_case = KVDRIVE__RESPONSE__BODY_REGISTER_NAMESPACE;
        resp.register_namespace = &rr;
        reply(ss, id, &resp);
}

/* Allocations and per-layer events one CUDA pool may bring (a frame of
 * max-frame bytes could not carry many more). */
#define CUDA_MAX_ALLOCS 4096u
#define CUDA_MAX_EVENTS 65536u

static bool bus_id_ok(const char *id)
{
        size_t n = strlen(id);

        if (n >= KVD_CUDA_BUS_ID_MAX)
                return false;
        return strspn(id, "0123456789abcdefABCDEF:.") == n;
}

/*
 * Checks everything of a CUDA RegisterPool that needs no GPU and builds
 * *spec (its arrays malloc'd into *ret_allocs, *ret_events: the caller
 * frees them). Returns false after replying an error.
 */
static bool cuda_spec(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterPool *m, unsigned nfds,
                      struct kvd_cuda_pool_spec *spec, struct kvd_cuda_alloc **ret_allocs,
                      uint8_t (**ret_events)[KVD_CUDA_HANDLE_BYTES])
{
        struct kvd_cuda_alloc *allocs = NULL;
        uint8_t (*events)[KVD_CUDA_HANDLE_BYTES] = NULL;
        const char *bus = m->cuda_pci_bus_id ? m->cuda_pci_bus_id : "";
        uint64_t slots = 0;

        if (nfds != 0) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "a CUDA pool takes no fd (got %u)", nfds);
                return false;
        }
        if (m->n_cuda_allocations == 0 || m->n_cuda_allocations > CUDA_MAX_ALLOCS) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "a CUDA pool needs 1-%u allocations (got %zu)", CUDA_MAX_ALLOCS,
                                       m->n_cuda_allocations);
                return false;
        }
        if (m->n_cuda_event_handles > CUDA_MAX_EVENTS) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "%zu event handles over %u", m->n_cuda_event_handles, CUDA_MAX_EVENTS);
                return false;
        }
        if (*bus ? !bus_id_ok(bus) : m->cuda_device < 0) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "CUDA device: bad PCI bus id '%.40s' or ordinal %d (want \"0000:17:00.0\" "
                                       "or an ordinal >= 0)", bus, (int)m->cuda_device);
                return false;
        }
        for (size_t i = 0; i < m->n_cuda_allocations; i++) {
                const Kvdrive__CudaAllocation *a = m->cuda_allocations[i];
                uint64_t span;

                if (a->ipc_mem_handle.len != KVD_CUDA_HANDLE_BYTES) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                               "allocation %zu: IPC handle of %zu bytes (must be %u)", i,
                                               a->ipc_mem_handle.len, KVD_CUDA_HANDLE_BYTES);
                        return false;
                }
                if (a->slot_count == 0 || __builtin_mul_overflow((uint64_t)a->slot_count, m->slot_bytes, &span) ||
                    span > UINT64_MAX - a->offset) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                               "allocation %zu: %u slots at offset %llu (slots must be non-zero, "
                                               "offset + slots * slot_bytes must fit in 64 bits)",
                                               i, a->slot_count, (unsigned long long)a->offset);
                        return false;
                }
                slots += a->slot_count;
        }
        if (slots != m->slot_count) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "allocations hold %llu slots in all, slot_count says %u",
                                       (unsigned long long)slots, m->slot_count);
                return false;
        }
        for (size_t i = 0; i < m->n_cuda_event_handles; i++)
                if (m->cuda_event_handles[i].len != KVD_CUDA_HANDLE_BYTES) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                               "event handle %zu: %zu bytes (must be %u)", i,
                                               m->cuda_event_handles[i].len, KVD_CUDA_HANDLE_BYTES);
                        return false;
                }
        if (!ss->server->cuda) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_UNSUPPORTED,
                                       "this daemon has no CUDA backend");
                return false;
        }
        allocs = calloc(m->n_cuda_allocations, sizeof(*allocs));
        events = calloc(m->n_cuda_event_handles ? m->n_cuda_event_handles : 1, sizeof(*events));
        if (!allocs || !events) {
                free(allocs);
                free(events);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return false;
        }
        for (size_t i = 0; i < m->n_cuda_allocations; i++) {
                const Kvdrive__CudaAllocation *a = m->cuda_allocations[i];

                memcpy(allocs[i].handle, a->ipc_mem_handle.data, KVD_CUDA_HANDLE_BYTES);
                allocs[i].slot_count = a->slot_count;
                allocs[i].offset = a->offset;
        }
        for (size_t i = 0; i < m->n_cuda_event_handles; i++)
                memcpy(events[i], m->cuda_event_handles[i].data, KVD_CUDA_HANDLE_BYTES);
        *spec = (struct kvd_cuda_pool_spec){
                .device = m->cuda_device,
                .pci_bus_id = bus,
                .allocs = allocs,
                .n_allocs = (uint32_t)m->n_cuda_allocations,
                .slot_count = m->slot_count,
                .slot_bytes = m->slot_bytes,
                .events = (const uint8_t (*)[KVD_CUDA_HANDLE_BYTES])events,
                .n_events = (uint32_t)m->n_cuda_event_handles,
        };
        *ret_allocs = allocs;
        *ret_events = events;
        return true;
}

static Kvdrive__ErrorCode cuda_error_code(int r)
{
        switch (r) {
        case -ENOENT:
        case -ENODEV:
        case -ENOTSUP:
                return KVDRIVE__ERROR_CODE__E_UNSUPPORTED;
        case -EINVAL:
        case -EMSGSIZE:
                return KVDRIVE__ERROR_CODE__E_BAD_ARG;
        default:
                return KVDRIVE__ERROR_CODE__E_INTERNAL;
        }
}

/* Opens the CUDA pool m describes, or replies an error and returns NULL. */
static struct kvd_peer_pool *open_cuda_pool(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterPool *m,
                                            unsigned nfds)
{
        struct kvd_cuda_pool_spec spec;
        struct kvd_cuda_alloc *allocs;
        uint8_t (*events)[KVD_CUDA_HANDLE_BYTES];
        struct kvd_peer_pool *pool = NULL;
        char why[256] = "";
        int r;

        if (!cuda_spec(ss, id, m, nfds, &spec, &allocs, &events))
                return NULL;
        r = kvd_cuda_pool_open(ss->server->cuda, &spec, &pool, why, sizeof(why));
        free(allocs);
        free(events);
        if (r < 0) {
                kvd_session_send_error(ss, id, cuda_error_code(r), "%s", why);
                return NULL;
        }
        return pool;
}

static struct kvd_peer_pool *open_memfd_pool(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterPool *m,
                                             int *fds, unsigned nfds)
{
        struct kvd_peer_pool *pool = NULL;
        const char *why = NULL;
        int r;

        if (m->n_cuda_allocations || m->n_cuda_event_handles || (m->cuda_pci_bus_id && *m->cuda_pci_bus_id)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "cuda_* fields need backend CUDA");
                return NULL;
        }
        if (nfds != 1) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "RegisterPool needs exactly one memfd passed with SCM_RIGHTS (got %u)", nfds);
                return NULL;
        }
        r = kvd_memfd_pool_open(fds[0], m->slot_count, m->slot_bytes, &pool, &why);
        if (r < 0) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG, "pool: %s: %s", why, strerror(-r));
                return NULL;
        }
        return pool;
}

static void handle_register_pool(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterPool *m,
                                 int *fds, unsigned nfds)
{
        Kvdrive__RegisterPoolReply rr = KVDRIVE__REGISTER_POOL_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        const struct kvd_config *cfg = ss->server->cfg;
        struct kvd_peer_pool *pool, **pools;
        uint64_t bytes;
        int r;

        if (m->backend != KVDRIVE__BACKEND__BACKEND_MEMFD && m->backend != KVDRIVE__BACKEND__BACKEND_CUDA) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "backend %d is not available in this daemon", (int)m->backend);
                return;
        }
        if (ss->n_pools >= cfg->max_pools_per_client) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT, "too many pools (max-pools-per-client %u)",
                                       cfg->max_pools_per_client);
                return;
        }
        if (m->slot_count == 0 || m->slot_bytes == 0 || m->slot_bytes > UINT64_MAX / m->slot_count) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG, "slot count and size must be non-zero");
                return;
        }
        bytes = m->slot_bytes * m->slot_count;
        if (ss->pool_bytes + bytes > cfg->max_pool_bytes_per_client) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT,
                                       "pool bytes over max-pool-bytes-per-client (%llu)",
                                       (unsigned long long)cfg->max_pool_bytes_per_client);
                return;
        }
        pools = realloc(ss->pools, sizeof(*pools) * (ss->n_pools + 1));
        if (!pools) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return;
        }
        ss->pools = pools;
        r = kvd_cache_pool_charge(ss->server->cache, ss->peer.uid, bytes);
        if (r < 0) {
                struct kvd_tenant_stats ts;

                kvd_cache_tenant(ss->server->cache, ss->peer.uid, &ts);
                if (r == -EDQUOT)
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_QUOTA,
                                               "uid %u has %llu bytes of pools; %llu more would pass its quota "
                                               "(quota-pool-bytes or [quota]) of %llu", (unsigned)ss->peer.uid,
                                               (unsigned long long)ts.pool_bytes, (unsigned long long)bytes,
                                               (unsigned long long)ts.quota.pool_bytes);
                else
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return;
        }
        if (m->backend == KVDRIVE__BACKEND__BACKEND_CUDA)
                pool = open_cuda_pool(ss, id, m, nfds);
        else
                pool = open_memfd_pool(ss, id, m, fds, nfds);
        if (!pool) {
                kvd_cache_pool_uncharge(ss->server->cache, ss->peer.uid, bytes);
                return;
        }
        ss->pools[ss->n_pools] = pool;
        rr.pool_id = ss->n_pools++;
        ss->pool_bytes += bytes;
        ss->server->pools[pool->backend]++;
        log_info("session %llu: pool %u: %u slots of %llu bytes (%s)", (unsigned long long)ss->id, rr.pool_id,
                 m->slot_count, (unsigned long long)m->slot_bytes, pool->ops->name);
        resp.body_case = KVDRIVE__RESPONSE__BODY_REGISTER_POOL;
        resp.register_pool = &rr;
        reply(ss, id, &resp);
}

static void handle_register_counters(struct kvd_session *ss, uint64_t id, const Kvdrive__RegisterCounters *m,
                                     int *fds, unsigned nfds)
{
        Kvdrive__RegisterCountersReply rr = KVDRIVE__REGISTER_COUNTERS_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        struct kvd_counters *k = NULL;
        const char *why = NULL;
        int r;

        if (m->count == 0 || m->count > KVD_COUNTERS_MAX) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "RegisterCounters: count %u, must be 1-%u", m->count, KVD_COUNTERS_MAX);
                return;
        }
        if (nfds != 1) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       "RegisterCounters needs exactly one memfd passed with SCM_RIGHTS (got %u)",
                                       nfds);
                return;
        }
        r = kvd_counters_open(fds[0], m->count, &k, &why);
        if (r < 0) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG, "counter page: %s: %s", why,
                                       strerror(-r));
                return;
        }
        /* Requests in flight keep counting on the page they started with:
         * they hold references to it. */
        kvd_counters_unref(ss->counters);
        ss->counters = k;
        log_debug("session %llu: counter page of %u counters", (unsigned long long)ss->id, m->count);
        rr.count = m->count;
        resp.body_case = KVDRIVE__RESPONSE__BODY_REGISTER_COUNTERS;
        resp.register_counters = &rr;
        reply(ss, id, &resp);
}

/* The namespace, if this session registered it and may do what need
 * says to it; else replies an error. */
static const struct kvd_ns *session_ns(struct kvd_session *ss, uint64_t id, uint32_t ns_id, unsigned need)
{
        const struct kvd_ns *ns = kvd_cache_ns(ss->server->cache, ns_id);

        if (!ns || ns_id >= ss->server->cfg->max_namespaces || !ss->ns_rights[ns_id]) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_NAMESPACE,
                                       "namespace %u is not registered by this client", ns_id);
                return NULL;
        }
        if (ns->dropped) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_NAMESPACE,
                                       "namespace %u '%s' was dropped", ns_id, ns->name);
                return NULL;
        }
        if (!(ss->ns_rights[ns_id] & need)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_DENIED,
                                       "uid %u may not %s namespace '%s' of uid %u", (unsigned)ss->peer.uid,
                                       right_name(need), ns->name, ns->owner);
                return NULL;
        }
        return ns;
}

/* Requests that may stay in flight: within the client's limit. */
static bool check_inflight(struct kvd_session *ss, uint64_t id)
{
        if (ss->inflight >= ss->server->cfg->max_inflight_per_client) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT,
                                       "too many requests in flight (max-inflight-per-client %u)",
                                       ss->server->cfg->max_inflight_per_client);
                return false;
        }
        return true;
}

static bool check_items(struct kvd_session *ss, uint64_t id, size_t n)
{
        if (n > ss->server->cfg->max_items) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_LIMIT, "%zu items over max-items %u", n,
                                       ss->server->cfg->max_items);
                return false;
        }
        return true;
}

static void transfer_done(struct kvd_io *io, void *userdata)
{
        struct pending *p = userdata;
        struct kvd_session *ss = p->ss;
        Kvdrive__TransferReply tr = KVDRIVE__TRANSFER_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        tr.status.data = (uint8_t *)kvd_io_status(io);
        tr.status.len = kvd_io_count(io);
        tr.done = kvd_io_done(io);
        tr.prefetch_depth = p->prefetch_depth;
        switch (p->kind) {
        case KVD_IO_PUT:
                resp.body_case = KVDRIVE__RESPONSE__BODY_PUT;
                resp.put = &tr;
                break;
        case KVD_IO_GET:
                resp.body_case = KVDRIVE__RESPONSE__BODY_GET;
                resp.get = &tr;
                break;
        case KVD_IO_PREFETCH:
                resp.body_case = KVDRIVE__RESPONSE__BODY_PREFETCH;
                resp.prefetch = &tr;
                break;
        }
        reply(ss, p->id, &resp);
        ss->inflight--;
        kvd_session_unref(ss);
        kvd_io_free(io);
        free(p);
}

/* The items of a Put, Get or Prefetch beyond its first slice, started a
 * slice per turn (the request is in flight already: not counted again). */
struct io_task {
        struct kvd_task task;
        struct kvd_io *io;
};

static bool io_task_step(struct kvd_task *t, uint32_t budget)
{
        struct io_task *it = container_of(t, struct io_task, task);

        /* An item costs about as much as a few index probes. */
        return kvd_io_continue(it->io, budget / (KVD_TASK_SLICE / KVD_IO_SLICE));
}

static void io_task_free(struct kvd_task *t)
{
        free(container_of(t, struct io_task, task));
}

static void io_task_queue(struct kvd_session *ss, struct kvd_io *io)
{
        struct io_task *it = calloc(1, sizeof(*it));

        /* Out of memory: start the rest now rather than never. */
        if (!it) {
                while (!kvd_io_continue(io, UINT32_MAX))
                        ;
                return;
        }
        it->io = io;
        it->task = (struct kvd_task){ .step = io_task_step, .free = io_task_free, .uncounted = true };
        kvd_task_queue(ss, &it->task);
}

/* Checks items against ns (and pool when given), then starts the request.
 * Every check comes before any state changes. */
static void start_io(struct kvd_session *ss, uint64_t id, enum kvd_io_kind kind, unsigned flags,
                     const struct kvd_ns *ns, struct kvd_peer_pool *pool, Kvdrive__BlockRef *const *refs,
                     size_t n, uint32_t prefetch_depth)
{
        struct kvd_counters *counters = NULL;
        struct kvd_io *more;
        struct kvd_item *items;
        struct pending *p;
        int r;

        if (!check_items(ss, id, n))
                return;
        for (size_t i = 0; i < n; i++) {
                const Kvdrive__BlockRef *b = refs[i];

                if ((pool && b->slot >= pool->slot_count) || b->layer >= ns->geometry.layers) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_OUT_OF_RANGE,
                                               "item %zu: slot %u of %u, layer %u of %u", i, b->slot,
                                               pool ? pool->slot_count : 0, b->layer, ns->geometry.layers);
                        return;
                }
                if (b->counter == 0)
                        continue;
                if (!ss->counters) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                               "item %zu: counter %u, but no counter page is registered "
                                               "(RegisterCounters)", i, b->counter);
                        return;
                }
                if (b->counter > ss->counters->count) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_OUT_OF_RANGE,
                                               "item %zu: counter %u of %u (0: none, 1-%u: counter index + 1)",
                                               i, b->counter, ss->counters->count, ss->counters->count);
                        return;
                }
                counters = ss->counters;
        }
        if (!check_inflight(ss, id))
                return;
        items = malloc(sizeof(*items) * (n ? n : 1));
        p = malloc(sizeof(*p));
        if (!items || !p) {
                free(items);
                free(p);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return;
        }
        for (size_t i = 0; i < n; i++)
                items[i] = (struct kvd_item){ refs[i]->key_hi, refs[i]->key_lo, refs[i]->layer, refs[i]->slot,
                                              refs[i]->counter };
        *p = (struct pending){ .ss = kvd_session_ref(ss), .id = id, .kind = kind, .prefetch_depth = prefetch_depth };
        ss->inflight++;
        r = kvd_io_submit(ss->server->cache, ss->server->xfer, kind, flags, ns, pool, counters, items,
                          (uint32_t)n, transfer_done, p, &more);     /* items taken */
        if (r < 0) {
                ss->inflight--;
                kvd_session_unref(ss);
                free(p);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return;
        }
        if (more)
                io_task_queue(ss, more);
}

static void handle_transfer(struct kvd_session *ss, uint64_t id, const Kvdrive__Transfer *m, bool put)
{
        const struct kvd_ns *ns;
        struct kvd_peer_pool *pool;

        ns = session_ns(ss, id, m->ns_id, put ? KVD_RIGHT_WRITE : KVD_RIGHT_READ);
        if (!ns)
                return;
        if (m->pool_id >= ss->n_pools) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_POOL,
                                       "pool %u is not registered by this client", m->pool_id);
                return;
        }
        pool = ss->pools[m->pool_id];
        if (pool->slot_bytes < ns->block_bytes) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_GEOMETRY,
                                       "pool %u slots of %llu bytes cannot hold blocks of %llu bytes",
                                       m->pool_id, (unsigned long long)pool->slot_bytes,
                                       (unsigned long long)ns->block_bytes);
                return;
        }
        if (m->durable && (!put || !kvd_cache_has_ssd(ss->server->cache))) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_BAD_ARG,
                                       put ? "a durable Put needs the SSD tier (ssd-dir, ssd-bytes)"
                                           : "durable applies to Put only");
                return;
        }
        start_io(ss, id, put ? KVD_IO_PUT : KVD_IO_GET,
                 (m->durable ? KVD_IO_DURABLE : 0) | (m->shared ? KVD_IO_SHARED : 0), ns, pool, m->items, m->n_items,
                 !put && m->compute_us ? kvd_prefetch_depth(&ss->server->prefetch, ss->id, m->compute_us,
                                                             ns->block_bytes) : 0);
}

static void handle_prefetch(struct kvd_session *ss, uint64_t id, const Kvdrive__Prefetch *m)
{
        const struct kvd_ns *ns = session_ns(ss, id, m->ns_id, KVD_RIGHT_READ);

        if (ns)
                start_io(ss, id, KVD_IO_PREFETCH, m->shared ? KVD_IO_SHARED : 0, ns, NULL, m->items, m->n_items, 0);
}

static void handle_scores(struct kvd_session *ss, uint64_t id, const Kvdrive__Scores *m)
{
        Kvdrive__ScoresReply sr = KVDRIVE__SCORES_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        const struct kvd_ns *ns = session_ns(ss, id, m->ns_id, KVD_RIGHT_READ);

        if (!ns || !check_items(ss, id, m->n_items))
                return;
        for (size_t i = 0; i < m->n_items; i++) {
                const Kvdrive__BlockScore *b = m->items[i];

                if (b->layer >= ns->geometry.layers || !(b->mass >= 0.0f && b->mass <= 1.0f)) {
                        kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_OUT_OF_RANGE,
                                               "item %zu: layer %u of %u, mass %g (must be in [0, 1])", i, b->layer,
                                               ns->geometry.layers, (double)b->mass);
                        return;
                }
        }
        for (size_t i = 0; i < m->n_items; i++) {
                struct kvd_bkey k = { m->items[i]->key_hi, m->items[i]->key_lo, ns->id, m->items[i]->layer };

                sr.applied += (uint32_t)kvd_cache_score(ss->server->cache, &k, m->items[i]->mass);
        }
        resp.body_case = KVDRIVE__RESPONSE__BODY_SCORES;
        resp.scores = &sr;
        reply(ss, id, &resp);
}

/* ---- Lookup, Delete, DropNamespace: done in slices ---------------------- */

unsigned kvd_peer_rights(const struct kvd_session *ss, const struct kvd_ns *ns)
{
        return kvd_access_rights(kvd_access_share(ss->server->cfg->access, ns->name), ns->owner, &ss->peer);
}

struct key_task {
        struct kvd_task task;
        uint64_t id;            /* the request's */
        uint32_t ns;            /* held for the task's life */
        uint32_t layers;
        uint32_t n_keys;
        uint64_t (*keys)[2];    /* hi, lo */
        uint32_t first, last;   /* Delete: the layers */
        uint32_t layer, k;      /* where the next slice starts */
        uint32_t *prefix;       /* Lookup: the answer, per layer */
        /* Lookup, the remote tier's round: the (key, layer) pairs asked
         * (past each layer's local prefix), its answers; while asked, the
         * task is the probe's, freed when it ends. */
        uint64_t (*rkeys)[2];
        uint32_t *rlayers;
        uint8_t *rfound;
        uint32_t n_remote;
        bool probing;
        uint64_t deleted;       /* Delete, DropNamespace */
        uint64_t cursor;        /* DropNamespace: the next index record */
        uint32_t units;         /* probes done so far */
};

static void key_task_free(struct kvd_task *t)
{
        struct key_task *kt = container_of(t, struct key_task, task);

        if (kt->probing)
                return; /* the remote tier's answer frees it */
        kvd_cache_ns_release(t->ss->server->cache, kt->ns);
        free(kt->rkeys);
        free(kt->rlayers);
        free(kt->rfound);
        free(kt->keys);
        free(kt->prefix);
        free(kt);
}

/* A task for request id on ns with a copy of its n keys (the request's
 * buffers are freed when the handler returns). NULL after replying. */
static struct key_task *key_task_new(struct kvd_session *ss, uint64_t id, const struct kvd_ns *ns,
                                     Kvdrive__Key *const *keys, size_t n, bool (*step)(struct kvd_task *, uint32_t))
{
        struct key_task *kt = calloc(1, sizeof(*kt));

        if (kt)
                kt->keys = malloc(sizeof(*kt->keys) * (n ? n : 1));
        if (!kt || !kt->keys) {
                free(kt);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return NULL;
        }
        for (size_t i = 0; i < n; i++) {
                kt->keys[i][0] = keys[i]->hi;
                kt->keys[i][1] = keys[i]->lo;
        }
        kt->task = (struct kvd_task){ .ss = ss, .step = step, .free = key_task_free };
        kt->id = id;
        kt->ns = ns->id;
        kt->layers = ns->geometry.layers;
        kt->n_keys = (uint32_t)n;
        kvd_cache_ns_hold(ss->server->cache, ns->id);
        return kt;
}

/* Runs kt's first slice now; queues the rest. Returns the units done now. */
static uint32_t key_task_start(struct kvd_session *ss, struct key_task *kt)
{
        bool done = kt->task.step(&kt->task, KVD_TASK_SLICE);
        uint32_t units = kt->units;

        if (done)
                kt->task.free(&kt->task);
        else
                kvd_task_queue(ss, &kt->task);
        return units;
}

static void lookup_reply(struct key_task *kt)
{
        Kvdrive__LookupReply lr = KVDRIVE__LOOKUP_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        lr.prefix = kt->prefix;
        lr.n_prefix = kt->layers;
        resp.body_case = KVDRIVE__RESPONSE__BODY_LOOKUP;
        resp.lookup = &lr;
        reply(kt->task.ss, kt->id, &resp);
}

/* The remote tier answered: each layer's prefix goes on while it (or,
 * again, this daemon) has the next key. */
static void lookup_probed(void *ctx, int result)
{
        struct key_task *kt = ctx;
        struct kvd_session *ss = kt->task.ss;
        uint32_t i = 0;

        (void)result; /* a key it could not answer for is not there */
        for (uint32_t l = 0; l < kt->layers && i < kt->n_remote; l++) {
                bool run = true;

                for (; i < kt->n_remote && kt->rlayers[i] == l; i++) {
                        struct kvd_bkey key = { kt->rkeys[i][0], kt->rkeys[i][1], kt->ns, l };

                        /* Past the first local miss, a key may be here again. */
                        if (run && (kt->rfound[i] || kvd_cache_contains(ss->server->cache, &key)))
                                kt->prefix[l]++;
                        else
                                run = false;
                }
        }
        lookup_reply(kt);
        kt->probing = false;
        ss->inflight--;
        key_task_free(&kt->task);
        kvd_session_unref(ss);
}

/* Lookups ask the remote tier about this many (key, layer) pairs at most:
 * the answer is a prefix, so a lower bound stays true. */
#define LOOKUP_REMOTE_MAX 16384u

/* After the local pass: asks the remote tier about the keys past each
 * layer's prefix, in one round. true if asked (it replies). */
static bool lookup_remote(struct key_task *kt)
{
        struct kvd_cache *cache = kt->task.ss->server->cache;
        uint64_t want = 0;
        uint32_t n = 0;

        if (!kvd_cache_has_remote(cache))
                return false;
        for (uint32_t l = 0; l < kt->layers; l++)
                want += kt->n_keys - kt->prefix[l];
        if (want == 0)
                return false;
        want = want < LOOKUP_REMOTE_MAX ? want : LOOKUP_REMOTE_MAX;
        kt->rkeys = malloc(sizeof(*kt->rkeys) * want);
        kt->rlayers = malloc(sizeof(*kt->rlayers) * want);
        kt->rfound = malloc(want);
        if (!kt->rkeys || !kt->rlayers || !kt->rfound)
                return false; /* the local answer stands */
        for (uint32_t l = 0; l < kt->layers && n < want; l++)
                for (uint32_t k = kt->prefix[l]; k < kt->n_keys && n < want; k++, n++) {
                        kt->rkeys[n][0] = kt->keys[k][0];
                        kt->rkeys[n][1] = kt->keys[k][1];
                        kt->rlayers[n] = l;
                }
        kt->n_remote = n;
        if (kvd_cache_remote_probe(cache, kt->ns, (const uint64_t (*)[2])kt->rkeys, kt->rlayers, n, kt->rfound,
                                   lookup_probed, kt) < 0)
                return false;
        /* The session stays, and counts the Lookup in flight, until it ends. */
        kt->probing = true;
        kvd_session_ref(kt->task.ss);
        kt->task.ss->inflight++;
        return true;
}

static bool lookup_step(struct kvd_task *t, uint32_t budget)
{
        struct key_task *kt = container_of(t, struct key_task, task);
        struct kvd_cache *cache = t->ss->server->cache;

        while (kt->layer < kt->layers && budget-- > 0) {
                kt->units++;
                if (kt->k < kt->n_keys) {
                        struct kvd_bkey key = { kt->keys[kt->k][0], kt->keys[kt->k][1], kt->ns, kt->layer };

                        if (kvd_cache_contains(cache, &key) && ++kt->k < kt->n_keys)
                                continue;
                }
                kt->prefix[kt->layer++] = kt->k; /* keys[0..k) are cached at this layer */
                kt->k = 0;
        }
        if (kt->layer < kt->layers)
                return false;
        if (!lookup_remote(kt))
                lookup_reply(kt);
        return true;
}

static bool delete_step(struct kvd_task *t, uint32_t budget)
{
        struct key_task *kt = container_of(t, struct key_task, task);
        struct kvd_cache *cache = t->ss->server->cache;
        Kvdrive__DeleteReply dr = KVDRIVE__DELETE_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        if (kt->layer < kt->first)
                kt->layer = kt->first;
        while (kt->k < kt->n_keys && budget-- > 0) {
                struct kvd_bkey key = { kt->keys[kt->k][0], kt->keys[kt->k][1], kt->ns, kt->layer };

                kt->units++;
                kt->deleted += (uint32_t)kvd_cache_delete(cache, &key);
                if (kt->layer++ == kt->last) {
                        kt->layer = kt->first;
                        kt->k++;
                }
        }
        if (kt->k < kt->n_keys)
                return false;
        dr.deleted = (uint32_t)kt->deleted;
        resp.body_case = KVDRIVE__RESPONSE__BODY_DELETE;
        resp.delete_ = &dr;
        reply(t->ss, kt->id, &resp);
        return true;
}

/* Work beyond one slice stays in flight: within the client's limit. */
static bool check_work(struct kvd_session *ss, uint64_t id, uint64_t units)
{
        return units <= KVD_TASK_SLICE || check_inflight(ss, id);
}

static uint32_t handle_lookup(struct kvd_session *ss, uint64_t id, const Kvdrive__Lookup *m)
{
        const struct kvd_ns *ns;
        struct key_task *kt;

        ns = session_ns(ss, id, m->ns_id, KVD_RIGHT_READ);
        if (!ns || !check_items(ss, id, m->n_keys) ||
            !check_work(ss, id, (uint64_t)m->n_keys * ns->geometry.layers))
                return 0;
        kt = key_task_new(ss, id, ns, m->keys, m->n_keys, lookup_step);
        if (!kt)
                return 0;
        kt->prefix = calloc(kt->layers, sizeof(*kt->prefix));
        if (!kt->prefix) {
                kt->task.free(&kt->task);
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_INTERNAL, "out of memory");
                return 0;
        }
        return key_task_start(ss, kt);
}

static uint32_t handle_delete(struct kvd_session *ss, uint64_t id, const Kvdrive__Delete *m)
{
        const struct kvd_ns *ns;
        struct key_task *kt;

        ns = session_ns(ss, id, m->ns_id, KVD_RIGHT_WRITE);
        if (!ns || !check_items(ss, id, m->n_keys))
                return 0;
        if (!m->all_layers && m->layer >= ns->geometry.layers) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_OUT_OF_RANGE, "layer %u of %u", m->layer,
                                       ns->geometry.layers);
                return 0;
        }
        if (!check_work(ss, id, (uint64_t)m->n_keys * (m->all_layers ? ns->geometry.layers : 1)))
                return 0;
        kt = key_task_new(ss, id, ns, m->keys, m->n_keys, delete_step);
        if (!kt)
                return 0;
        kt->first = m->all_layers ? 0 : m->layer;
        kt->last = m->all_layers ? ns->geometry.layers - 1 : m->layer;
        return key_task_start(ss, kt);
}

static bool drop_step(struct kvd_task *t, uint32_t budget)
{
        struct key_task *kt = container_of(t, struct key_task, task);
        Kvdrive__DropNamespaceReply dr = KVDRIVE__DROP_NAMESPACE_REPLY__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;

        /* Index records are cheaper to look at than probes: more a slice. */
        kt->units += budget;
        if (!kvd_cache_ns_purge(t->ss->server->cache, kt->ns, &kt->cursor, budget * 8, &kt->deleted))
                return false;
        dr.deleted = kt->deleted;
        resp.body_case = KVDRIVE__RESPONSE__BODY_DROP_NAMESPACE;
        resp.drop_namespace = &dr;
        reply(t->ss, kt->id, &resp);
        return true;
}

static uint32_t handle_drop_ns(struct kvd_session *ss, uint64_t id, const Kvdrive__DropNamespace *m)
{
        const struct kvd_ns *ns = kvd_cache_ns(ss->server->cache, m->ns_id);
        unsigned rights = ns ? kvd_peer_rights(ss, ns) : 0;
        struct key_task *kt;

        if (!ns || (!rights && !ss->peer.admin)) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_NO_NAMESPACE, "no namespace %u", m->ns_id);
                return 0;
        }
        if (!(rights & KVD_RIGHT_OWNER) && !ss->peer.admin) {
                kvd_session_send_error(ss, id, KVDRIVE__ERROR_CODE__E_DENIED,
                                       "uid %u may not drop namespace '%s' of uid %u (its owner or an admin may)",
                                       (unsigned)ss->peer.uid, ns->name, ns->owner);
                return 0;
        }
        if (!check_inflight(ss, id))
                return 0;
        kt = key_task_new(ss, id, ns, NULL, 0, drop_step);
        if (!kt)
                return 0;
        log_notice("session %llu (uid %u): dropping namespace %u '%s' of uid %u", (unsigned long long)ss->id,
                   (unsigned)ss->peer.uid, ns->id, ns->name, ns->owner);
        kvd_cache_ns_drop(ss->server->cache, ns->id);
        return key_task_start(ss, kt);
}

uint32_t kvd_dispatch(struct kvd_session *ss, const uint8_t *buf, size_t n, int *fds, unsigned nfds)
{
        const struct kvd_config *cfg = ss->server->cfg;
        const uint8_t *payload;
        Kvdrive__Request *req;
        uint32_t work = 1;
        size_t len;
        int r;

        ss->server->requests++;
        r = kvd_frame_parse(buf, n, cfg->max_frame, &payload, &len);
        if (r < 0) {
                close_fds(fds, nfds);
                if (r == -EMSGSIZE)
                        kvd_session_send_error(ss, 0, KVDRIVE__ERROR_CODE__E_TOO_LARGE,
                                               "frame of %zu bytes over max-frame %u", n, cfg->max_frame);
                else if (r == -EPROTO)
                        kvd_session_send_error(ss, 0, KVDRIVE__ERROR_CODE__E_TRUNCATED,
                                               "frame of %zu bytes does not match its header", n);
                else
                        kvd_session_send_error(ss, 0, KVDRIVE__ERROR_CODE__E_MALFORMED,
                                               "not a KVDrive frame (bad magic or short header)");
                return work;
        }
        req = kvdrive__request__unpack(NULL, len, payload);
        if (!req) {
                close_fds(fds, nfds);
                kvd_session_send_error(ss, 0, KVDRIVE__ERROR_CODE__E_MALFORMED, "cannot decode the request");
                return work;
        }
        ss->server->requests_by_type[(unsigned)req->body_case < KVD_REQ_TYPES ? req->body_case : 0]++;
        if (!ss->hello && req->body_case != KVDRIVE__REQUEST__BODY_HELLO) {
                kvd_session_send_error(ss, req->id, KVDRIVE__ERROR_CODE__E_NO_HELLO, "send Hello first");
                goto out;
        }
        switch (req->body_case) {
        case KVDRIVE__REQUEST__BODY_HELLO:
                handle_hello(ss, req->id, req->hello);
                break;
        case KVDRIVE__REQUEST__BODY_REGISTER_NAMESPACE:
                handle_register_ns(ss, req->id, req->register_namespace);
                break;
        case KVDRIVE__REQUEST__BODY_REGISTER_POOL:
                handle_register_pool(ss, req->id, req->register_pool, fds, nfds);
                break;
        case KVDRIVE__REQUEST__BODY_PUT:
                handle_transfer(ss, req->id, req->put, true);
                work += (uint32_t)MIN(req->put->n_items, KVD_IO_SLICE) * (KVD_TASK_SLICE / KVD_IO_SLICE);
                break;
        case KVDRIVE__REQUEST__BODY_GET:
                handle_transfer(ss, req->id, req->get, false);
                work += (uint32_t)MIN(req->get->n_items, KVD_IO_SLICE) * (KVD_TASK_SLICE / KVD_IO_SLICE);
                break;
        case KVDRIVE__REQUEST__BODY_LOOKUP:
                work += handle_lookup(ss, req->id, req->lookup);
                break;
        case KVDRIVE__REQUEST__BODY_DELETE:
                work += handle_delete(ss, req->id, req->delete_);
                break;
        case KVDRIVE__REQUEST__BODY_DROP_NAMESPACE:
                work += handle_drop_ns(ss, req->id, req->drop_namespace);
                break;
        case KVDRIVE__REQUEST__BODY_STATS:
                kvd_handle_stats(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_LIST_CLIENTS:
                kvd_handle_list_clients(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_LIST_NAMESPACES:
                kvd_handle_list_namespaces(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_EVICT:
                work += kvd_handle_evict(ss, req->id, req->evict);
                break;
        case KVDRIVE__REQUEST__BODY_FLUSH:
                kvd_handle_flush(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_GET_CONFIG:
                kvd_handle_get_config(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_SHUTDOWN:
                kvd_handle_shutdown(ss, req->id);
                break;
        case KVDRIVE__REQUEST__BODY_PREFETCH:
                handle_prefetch(ss, req->id, req->prefetch);
                work += (uint32_t)MIN(req->prefetch->n_items, KVD_IO_SLICE) * (KVD_TASK_SLICE / KVD_IO_SLICE);
                break;
        case KVDRIVE__REQUEST__BODY_SCORES:
                handle_scores(ss, req->id, req->scores);
                work += (uint32_t)req->scores->n_items;
                break;
        case KVDRIVE__REQUEST__BODY_REGISTER_COUNTERS:
                handle_register_counters(ss, req->id, req->register_counters, fds, nfds);
                break;
        default:
                kvd_session_send_error(ss, req->id, KVDRIVE__ERROR_CODE__E_UNKNOWN_TYPE,
                                       "unknown request type");
                break;
        }
out:
        close_fds(fds, nfds);
        kvdrive__request__free_unpacked(req, NULL);
        return work;
}

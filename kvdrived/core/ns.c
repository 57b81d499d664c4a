/* SPDX-License-Identifier: MIT */
/*
 * Namespaces and their owners: the namespace table (found by owner and
 * name, freed when nothing holds a namespace and no block of it is left),
 * dropping a namespace in slices, and the tenants — one per uid that owns
 * namespaces or pools — with their usage and quotas.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cache-internal.h"
#include "log.h"
#include "macro.h"

/* A block record holds these in bitfields (core/index.h): every namespace id
 * and layer that registration lets through fits, so none is truncated. */
static_assert(KVD_CONFIG_NAMESPACES_MAX <= 1u << KVD_BLOCK_NS_BITS, "namespace ids fit the record");
static_assert(KVD_NS_MAX_LAYERS <= 1u << KVD_BLOCK_LAYER_BITS, "layers fit the record");

/* ---- tenants ------------------------------------------------------------ */

static struct kvd_tenant *tenant_find(const struct kvd_cache *c, uint32_t uid)
{
        for (uint32_t i = 0; i < c->n_tenants; i++)
                if (c->tenants[i]->st.uid == uid)
                        return c->tenants[i];
        return NULL;
}

struct kvd_tenant *kvd_tenant_get(struct kvd_cache *c, uint32_t uid)
{
        struct kvd_tenant *t = tenant_find(c, uid);

        if (t)
                return t;
        if (c->n_tenants == c->cap_tenants) {
                uint32_t cap = c->cap_tenants ? c->cap_tenants * 2 : 16;
                struct kvd_tenant **v = realloc(c->tenants, sizeof(*v) * cap);

                if (!v)
                        return NULL;
                c->tenants = v;
                c->cap_tenants = cap;
        }
        t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        t->st.uid = uid;
        kvd_config_quota(c->cfg, (uid_t)uid, &t->st.quota);
        for (int k = 0; k < KVD_SLAB_MAX_CLASSES; k++)
                t->lru[k] = t->ssd_lru[k] = (struct lru){ KVD_ID_NONE, KVD_ID_NONE };
        t->index = c->n_tenants;
        c->tenants[c->n_tenants++] = t;
        return t;
}

void kvd_tenant_put(struct kvd_cache *c, struct kvd_tenant *t)
{
        if (!t || t->st.namespaces || t->st.pool_bytes || t->st.host_bytes || t->st.ssd_bytes)
                return;
        c->tenants[t->index] = c->tenants[--c->n_tenants];
        c->tenants[t->index]->index = t->index;
        free(t);
}

int kvd_cache_pool_charge(struct kvd_cache *c, uint32_t uid, uint64_t bytes)
{
        struct kvd_tenant *t = kvd_tenant_get(c, uid);

        if (!t)
                return -ENOMEM;
        if (t->st.pool_bytes + bytes < t->st.pool_bytes || t->st.pool_bytes + bytes > t->st.quota.pool_bytes) {
                t->st.quota_refusals++;
                kvd_tenant_put(c, t);
                return -EDQUOT;
        }
        t->st.pool_bytes += bytes;
        return 0;
}

void kvd_cache_pool_uncharge(struct kvd_cache *c, uint32_t uid, uint64_t bytes)
{
        struct kvd_tenant *t = tenant_find(c, uid);

        assert(t && t->st.pool_bytes >= bytes);
        t->st.pool_bytes -= bytes;
        kvd_tenant_put(c, t);
}

void kvd_cache_tenant(const struct kvd_cache *c, uint32_t uid, struct kvd_tenant_stats *ret)
{
        const struct kvd_tenant *t = tenant_find(c, uid);

        if (t) {
                *ret = t->st;
                return;
        }
        *ret = (struct kvd_tenant_stats){ .uid = uid };
        kvd_config_quota(c->cfg, (uid_t)uid, &ret->quota);
}

uint32_t kvd_cache_tenants(const struct kvd_cache *c, struct kvd_tenant_stats *ret, uint32_t max)
{
        for (uint32_t i = 0; i < c->n_tenants && i < max; i++)
                ret[i] = c->tenants[i]->st;
        return c->n_tenants;
}

void kvd_cache_quotas_refresh(struct kvd_cache *c)
{
        for (uint32_t i = 0; i < c->n_tenants; i++)
                kvd_config_quota(c->cfg, (uid_t)c->tenants[i]->st.uid, &c->tenants[i]->st.quota);
}

/* ---- the namespace table ------------------------------------------------- */

int kvd_geometry_block_bytes(const struct kvd_geometry *g, uint64_t *ret)
{
        static const uint32_t dtype_size[] = { [1] = 2, [2] = 2, [3] = 4, [4] = 1 };
        uint64_t b;

        if (!g->layers || !g->kv_heads || !g->head_dim || !g->block_tokens ||
            g->dtype >= ARRAY_SIZE(dtype_size) || !dtype_size[g->dtype])
                return -EINVAL;
        b = 2ull * g->kv_heads * g->head_dim;
        if (b > UINT32_MAX || b * g->block_tokens > UINT32_MAX ||
            b * g->block_tokens * dtype_size[g->dtype] > UINT32_MAX)
                return -EOVERFLOW;
        *ret = b * g->block_tokens * dtype_size[g->dtype];
        return 0;
}

bool kvd_ns_name_valid(const char *name, size_t len)
{
        if (len == 0 || len >= KVD_NS_NAME_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if (name[i] < 0x20 || name[i] > 0x7e)
                        return false;
        return true;
}

static struct kvd_ns *ns_find(struct kvd_cache *c, const char *name, uint32_t owner)
{
        for (uint32_t i = 0; i < c->cfg->max_namespaces; i++) {
                struct kvd_ns *ns = &c->ns[i];

                if (ns->in_use && !ns->dropped && ns->owner == owner && strcmp(ns->name, name) == 0)
                        return ns;
        }
        return NULL;
}

int kvd_cache_ns_register(struct kvd_cache *c, const char *name, const struct kvd_geometry *g, uint32_t owner,
                          bool create, uint32_t *ret_id, bool *ret_created)
{
        const struct kvd_ns_ident id = { .name = name, .geometry = g, .owner = owner };

        return kvd_cache_ns_register_ident(c, &id, create, ret_id, ret_created);
}

/* The payload bytes a block of the namespace takes on SSD: its codec's. */
static uint64_t ssd_stored_len(const struct kvd_cache *c, const struct kvd_geometry *g, uint64_t bytes)
{
        struct kvd_slot_header id = { .ns_layers = g->layers, .ns_kv_heads = g->kv_heads, .ns_head_dim = g->head_dim,
                                      .ns_dtype = g->dtype, .ns_block_tokens = g->block_tokens };

        if (!c->ssd_tier || !c->ssd_tier->ops->stored_len || bytes > UINT32_MAX)
                return bytes;
        return c->ssd_tier->ops->stored_len(c->ssd_tier, &id, (uint32_t)bytes);
}

int kvd_cache_ns_register_ident(struct kvd_cache *c, const struct kvd_ns_ident *ident, bool create,
                                uint32_t *ret_id, bool *ret_created)
{
        const struct kvd_geometry *g = ident->geometry;
        const char *name = ident->name;
        uint32_t owner = ident->owner;
        int klass, ssd_klass = -1;
        struct kvd_tenant *t;
        struct kvd_ns *ns;
        uint64_t bytes, ssd_bytes;
        uint32_t id;

        if (!name || !kvd_ns_name_valid(name, strlen(name)))
                return -EINVAL;
        if (kvd_geometry_block_bytes(g, &bytes) < 0 || g->layers > KVD_NS_MAX_LAYERS)
                return -EINVAL;
        ns = ns_find(c, name, owner);
        if (ident->fingerprint_len > KVD_FINGERPRINT_MAX)
                return -EINVAL;
        if (ns) {
                if (memcmp(&ns->geometry, g, sizeof(*g)) != 0 || ns->fingerprint_len != ident->fingerprint_len ||
                    (ident->fingerprint_len && memcmp(ns->fingerprint, ident->fingerprint, ident->fingerprint_len)))
                        return -EEXIST;
                *ret_id = ns->id;
                *ret_created = false;
                return 0;
        }
        if (!create)
                return -ENOENT;
        klass = c->host_tier->ops->class_for(c->host_tier, bytes + c->hdr);
        ssd_bytes = ssd_stored_len(c, g, bytes);
        if (klass >= 0 && c->ssd_tier)
                ssd_klass = c->ssd_tier->ops->class_for(c->ssd_tier, ssd_bytes);
        if (klass < 0 || ssd_klass < -1)
                return (klass == -E2BIG || ssd_klass == -E2BIG) ? -E2BIG : -ENOSPC;
        if (c->n_ns == c->cfg->max_namespaces)
                return -ENOSPC;
        t = kvd_tenant_get(c, owner);
        if (!t)
                return -ENOMEM;
        if (t->st.namespaces >= t->st.quota.namespaces) {
                t->st.quota_refusals++;
                kvd_tenant_put(c, t);
                return -EDQUOT;
        }
        for (id = 0; c->ns[id].in_use; id++)
                ;
        ns = &c->ns[id];
        *ns = (struct kvd_ns){ .id = id, .geometry = *g, .block_bytes = bytes, .klass = klass,
                               .ssd_klass = ssd_klass, .owner = owner, .in_use = true, .tenant = t,
                               .host_charge = c->host_tier->ops->class_bytes(c->host_tier, klass),
                               .ssd_charge = (uint32_t)(KVD_SLOT_HDR_BYTES + ALIGN_UP(ssd_bytes, KVD_PAGE)) };
        memcpy(ns->name, name, strlen(name) + 1);
        if (ident->fingerprint_len)
                memcpy(ns->fingerprint, ident->fingerprint, ident->fingerprint_len);
        ns->fingerprint_len = (uint8_t)ident->fingerprint_len;
        t->st.namespaces++;
        c->n_ns++;
        log_info("namespace %u '%s' of uid %u: %u layers, %u kv heads, head dim %u, dtype %u, %u tokens/block, "
                 "%" PRIu64 " bytes/block", ns->id, ns->name, owner, g->layers, g->kv_heads, g->head_dim,
                 g->dtype, g->block_tokens, bytes);
        *ret_id = ns->id;
        *ret_created = true;
        return 0;
}

const struct kvd_ns *kvd_cache_ns(const struct kvd_cache *c, uint32_t id)
{
        return id < c->cfg->max_namespaces && c->ns[id].in_use ? &c->ns[id] : NULL;
}

uint32_t kvd_cache_ns_slots(const struct kvd_cache *c)
{
        return c->cfg->max_namespaces;
}

uint32_t kvd_cache_ns_count(const struct kvd_cache *c)
{
        return c->n_ns;
}

/* Nothing holds it and no block of it is left: it goes. */
static void ns_maybe_free(struct kvd_cache *c, struct kvd_ns *ns)
{
        struct kvd_tenant *t = ns->tenant;

        if (!ns->in_use || ns->refs || ns->records)
                return;
        log_info("namespace %u '%s' of uid %u: gone (%s)", ns->id, ns->name, ns->owner,
                 ns->dropped ? "dropped" : "no blocks, no clients");
        ns->in_use = false;
        c->n_ns--;
        t->st.namespaces--;
        kvd_tenant_put(c, t);
}

void kvd_ns_settle(struct kvd_cache *c, uint32_t id)
{
        ns_maybe_free(c, &c->ns[id]);
}

void kvd_cache_ns_hold(struct kvd_cache *c, uint32_t id)
{
        assert(c->ns[id].in_use);
        c->ns[id].refs++;
}

void kvd_cache_ns_release(struct kvd_cache *c, uint32_t id)
{
        struct kvd_ns *ns = &c->ns[id];

        assert(ns->in_use && ns->refs > 0);
        ns->refs--;
        ns_maybe_free(c, ns);
}

void kvd_ns_record_added(struct kvd_cache *c, uint32_t id)
{
        c->ns[id].records++;
}

void kvd_ns_record_removed(struct kvd_cache *c, uint32_t id)
{
        struct kvd_ns *ns = &c->ns[id];

        assert(ns->records > 0);
        ns->records--;
        ns_maybe_free(c, ns);
}

void kvd_cache_ns_drop(struct kvd_cache *c, uint32_t id)
{
        struct kvd_ns *ns = &c->ns[id];

        if (ns->dropped)
                return;
        ns->dropped = true;
        log_notice("namespace %u '%s' of uid %u: dropped, %" PRIu64 " blocks to delete", ns->id, ns->name,
                   ns->owner, ns->blocks);
}

bool kvd_cache_ns_purge(struct kvd_cache *c, uint32_t id, uint64_t *cursor, uint32_t budget, uint64_t *deleted)
{
        uint64_t end = kvd_index_id_end(c->index);
        uint64_t i = *cursor ? *cursor : 1;

        for (; i < end && budget > 0; i++, budget--) {
                const struct kvd_block *b = kvd_index_block(c->index, (uint32_t)i);

                if (b->state == KVD_BLOCK_READY && b->ns == id)
                        *deleted += (uint64_t)kvd_cache_delete_id(c, (uint32_t)i);
        }
        *cursor = i;
        return i >= end;
}

/* SPDX-License-Identifier: MIT */
/*
 * The remote tier's policy (docs/remote.md): which blocks leave the
 * machine, and how a block found in no local tier comes back from it.
 *
 * Only shared blocks go: those a client stored as prefix-chain keys
 * (Transfer.shared), once the remote tier admits them (remote-admit-reads:
 * read this often here; 0: when stored). A private block never leaves.
 * The write holds a pin on the host copy (the tier sends from it), so
 * writes in flight are capped (remote-max-inflight-bytes): beyond the cap a
 * write is skipped and counted, never waited for.
 *
 * A Get of a shared key in no local tier creates the block PENDING, as a
 * Put would, with its host page as the fetch's destination; requests for
 * it wait on it; the remote tier checks what came is the block (header
 * and crc) before it is READY, so nothing else is ever served. A miss, an
 * error, a timeout: the block goes and its waiters hear a miss (a Put
 * waiting on it stores its own bytes).
 */
#include <errno.h>
#include <stdlib.h>

#include "cache-internal.h"
#include "log.h"

struct fetch {
        struct kvd_cache *c;
        uint32_t id;
};

static bool admitted(const struct kvd_cache *c, const struct kvd_block *b)
{
        return b->reads >= c->cfg->remote_admit_reads;
}

static void put_done(void *ctx, int r)
{
        struct fetch *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);

        b->rflags &= (uint8_t)~KVD_BLOCK_RPUT;
        if (r == 0)
                b->rflags |= KVD_BLOCK_REMOTE;
        b->pins--;
        kvd_block_settle(c, x->id);
        free(x);
        if (b->pins == 0)
                kvd_wake_space(c);
}

void kvd_share_offer(struct kvd_cache *c, uint32_t id)
{
        struct kvd_block *b = blk(c, id);
        const struct kvd_ns *ns = &c->ns[b->ns];
        struct kvd_slot_header h;
        struct fetch *x;

        if (!c->remote_tier || !(b->rflags & KVD_BLOCK_SHARED) ||
            (b->rflags & (KVD_BLOCK_REMOTE | KVD_BLOCK_RPUT)) || b->loc == KVD_LOC_NONE ||
            (b->flags & KVD_BLOCK_DOOMED) || b->pins == KVD_BLOCK_PINS_MAX || !admitted(c, b))
                return;
        x = malloc(sizeof(*x));
        if (!x)
                return;
        *x = (struct fetch){ c, id };
        kvd_block_header(c, b, &h);
        if (c->remote_tier->ops->put(c->remote_tier, &h, (uint8_t *)kvd_cache_host_ptr(c, b->loc) + c->hdr,
                                     (uint32_t)ns->block_bytes, put_done, x) < 0) {
                free(x);
                return; /* skipped: counted by the tier */
        }
        b->rflags |= KVD_BLOCK_RPUT;
        b->pins++;
        kvd_lru_update(c, id, false);
}

static void fetch_done(void *ctx, int r)
{
        struct fetch *x = ctx;
        struct kvd_cache *c = x->c;
        struct kvd_block *b = blk(c, x->id);

        b->rflags &= (uint8_t)~KVD_BLOCK_RGET;
        if (r < 0) {
                if (r == -EBADMSG)
                        log_warning("remote tier: a value was not the block it was stored as: not served");
                kvd_cache_put_abort(c, x->id);
                free(x);
                return;
        }
        /* The waiters' retry takes it from host memory: not a host hit. */
        b->flags |= KVD_BLOCK_STAGED;
        b->rflags |= KVD_BLOCK_SHARED | KVD_BLOCK_REMOTE;
        c->remote_promotions++;
        kvd_block_commit(c, x->id, false, NULL, NULL, 0);
        free(x);
}

int kvd_share_fetch(struct kvd_cache *c, const struct kvd_bkey *k, kvd_wait_fn fn, void *ctx, uint32_t item)
{
        struct kvd_slot_header h;
        struct kvd_block *b;
        struct fetch *x;
        uint32_t id;
        void *host;
        int r;

        if (!c->remote_tier || c->ns[k->ns].dropped || c->stopping)
                return -ENOENT;
        x = malloc(sizeof(*x));
        if (!x)
                return -ENOENT;
        r = kvd_cache_put_reserve(c, k, &id, &host);
        if (r < 0) {
                free(x);
                /* Room is being made: wait for it, then ask again. Else
                 * the block cannot come here now: a miss. */
                return r == -EAGAIN || r == -EXFULL ? r : -ENOENT;
        }
        b = blk(c, id);
        *x = (struct fetch){ c, id };
        kvd_block_header(c, b, &h);
        /* The fetch first: its end comes through the loop, never now, so
         * no waiter can be called back before this returns. */
        r = c->remote_tier->ops->get(c->remote_tier, &h, host, (uint32_t)c->ns[k->ns].block_bytes,
                                     KVD_PRIO_DEMAND, fetch_done, x);
        if (r < 0) {
                free(x);
                kvd_cache_put_abort(c, id);
                return -ENOENT;
        }
        b->rflags |= KVD_BLOCK_RGET;
        c->remote_fetches++;
        /* Without a waiter the block still comes, for the next Get. */
        return kvd_wait_on_block(c, id, fn, ctx, item) == 0 ? -EINPROGRESS : -ENOMEM;
}

bool kvd_cache_has_remote(const struct kvd_cache *c)
{
        return c->remote_tier != NULL;
}

int kvd_cache_remote_probe(struct kvd_cache *c, uint32_t ns, const uint64_t (*keys)[2], const uint32_t *layers,
                           uint32_t n, uint8_t *ret, kvd_tier_cb cb, void *ctx)
{
        struct kvd_block b = { .ns = ns };
        struct kvd_slot_header h;

        if (!c->remote_tier)
                return -ENODEV;
        kvd_block_header(c, &b, &h);
        return c->remote_tier->ops->exists(c->remote_tier, &h, keys, layers, n, ret, cb, ctx);
}

int kvd_cache_remote_stats(const struct kvd_cache *c, struct kvd_tier_stats *ret,
                           struct kvd_tier_node_stats *nodes, unsigned max)
{
        if (!c->remote_tier)
                return -ENODEV;
        c->remote_tier->ops->stats(c->remote_tier, ret);
        return (int)c->remote_tier->ops->nodes(c->remote_tier, nodes, max);
}

/* SPDX-License-Identifier: MIT */
/*
 * Recovery at start-up: the blocks a storage tier still holds go back into
 * the index, in the namespaces of their owners.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cache-internal.h"
#include "clock.h"
#include "log.h"

/*
 * A valid slot found at start-up: its block goes back into the index, in
 * the namespace of its owner (created as it would be by a client, so that
 * recovery never takes the table or an owner past a limit: a block that
 * would is left out, and its slot is reused).
 */
static bool recover_slot(void *ctx, const struct kvd_slot_header *h, uint32_t loc, int klass)
{
        struct kvd_cache *c = ctx;
        struct kvd_geometry g = { h->ns_layers, h->ns_kv_heads, h->ns_head_dim, h->ns_dtype, h->ns_block_tokens };
        char name[KVD_NS_NAME_MAX];
        struct kvd_ns_ident ident;
        struct kvd_bkey k;
        struct kvd_block *b;
        struct kvd_ns *ns;
        bool created;
        uint32_t ns_id, id;
        int r;

        memcpy(name, h->ns_name, sizeof(name));
        name[sizeof(name) - 1] = '\0';
        ident = (struct kvd_ns_ident){ .name = name, .geometry = &g, .owner = h->ns_owner,
                                       .fingerprint = h->ns_fingerprint, .fingerprint_len = h->ns_fingerprint_len };
        r = kvd_cache_ns_register_ident(c, &ident, true, &ns_id, &created);
        if (r == -EDQUOT || r == -ENOSPC) {
                c->recover_skipped_ns++;
                return false;
        }
        if (r < 0)
                return false;
        ns = &c->ns[ns_id];
        if (ns->ssd_klass != klass || !kvd_slot_payload_len_ok(h, (uint32_t)ns->block_bytes) || h->layer >= g.layers)
                goto skip;
        if (ns->tenant->st.ssd_bytes + ns->ssd_charge > ns->tenant->st.quota.ssd_bytes) {
                c->recover_skipped_quota++;
                goto skip;
        }
        k = (struct kvd_bkey){ h->key_hi, h->key_lo, ns_id, h->layer };
        /* A second copy of a key (left by a crash between writing a new copy
         * and freeing an old one) holds the same bytes: keep the first. */
        if (kvd_index_insert(c->index, &k, &id) < 0)
                goto skip;
        kvd_ns_record_added(c, ns_id);
        ns->tenant->st.ssd_bytes += ns->ssd_charge;
        b = blk(c, id);
        b->state = KVD_BLOCK_READY;
        b->ssd_loc = loc;
        if (h->flags & KVD_SLOT_SHARED)
                b->rflags |= KVD_BLOCK_SHARED;
        ns->blocks++;
        kvd_lru_update(c, id, false);
        return true;
skip:
        kvd_ns_settle(c, ns_id); /* one just created for this block goes again */
        return false;
}

static void report_skipped(const struct kvd_cache *c)
{
        if (c->recover_skipped_ns)
                log_warning("SSD tier: %" PRIu64 " blocks left out: their namespaces would pass max-namespaces (%u) "
                            "or their owner's quota-namespaces", c->recover_skipped_ns, c->cfg->max_namespaces);
        if (c->recover_skipped_quota)
                log_warning("SSD tier: %" PRIu64 " blocks left out: their owners' SSD quota is full",
                            c->recover_skipped_quota);
}

int kvd_cache_recover(struct kvd_cache *c)
{
        uint64_t t0 = kvd_now_ns();
        struct kvd_tier_stats st;
        int64_t kept;

        if (!c->ssd_tier) {
                c->recovered = true;
                return 0;
        }
        kept = c->ssd_tier->ops->recover(c->ssd_tier, recover_slot, c);
        if (kept < 0) {
                log_error("SSD tier: recovery failed: %s", strerror((int)-kept));
                return (int)kept;
        }
        c->ssd_tier->ops->stats(c->ssd_tier, &st);
        log_info("SSD tier: recovered %" PRId64 " blocks in %u namespaces in %.3f s (%s, %" PRIu64
                 " slot headers read)", kept, c->n_ns, (double)(kvd_now_ns() - t0) / 1e9,
                 st.recovered_from_checkpoint ? "from the index checkpoint" : "by scanning", st.recover_headers_read);
        report_skipped(c);
        c->recovered = true;
        c->ckpt_last_ns = kvd_now_ns();
        return 0;
}

/* The blocks with an SSD copy, in id order. After the tier's drain none is
 * being written; a doomed one is left out (its slot is wiped or free).
 * While serving, the walk takes several loop turns: a block that changes
 * meanwhile changes an extent the tier journals, whose records recovery
 * does not use (docs/decisions.md, "Interval checkpoints ..."). */
static bool ckpt_next(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns)
{
        struct kvd_ckpt_walk *w = ctx;
        uint32_t end = kvd_index_id_end(w->c->index);

        while (++w->id < end) {
                const struct kvd_block *b = blk(w->c, w->id);

                if (b->state == KVD_BLOCK_FREE || b->ssd_loc == KVD_LOC_NONE ||
                    (b->flags & (KVD_BLOCK_DOOMED | KVD_BLOCK_WRITING)))
                        continue;
                kvd_block_header(w->c, b, ret_h);
                *ret_loc = b->ssd_loc;
                *ret_ns = b->ns;
                return true;
        }
        return false;
}

void kvd_cache_checkpoint(struct kvd_cache *c)
{
        struct kvd_ckpt_walk w = { c, 0 };
        uint64_t t0 = kvd_now_ns();

        if (!c->recovered || !c->ssd_tier || !c->ssd_tier->ops->checkpoint)
                return;
        if (c->ssd_tier->ops->checkpoint(c->ssd_tier, ckpt_next, &w) == 0)
                log_info("SSD tier: index checkpoint written in %.3f s", (double)(kvd_now_ns() - t0) / 1e9);
        else if (!kvd_cache_ssd_ok(c))
                log_notice("SSD tier: damaged, so no index checkpoint: the next start scans the slot headers");
}

void kvd_cache_interval_checkpoint(struct kvd_cache *c)
{
        uint64_t now = kvd_now_ns(), every = (uint64_t)c->cfg->ssd_checkpoint_interval * 1000000000u;
        struct kvd_ckpt_walk *w = &c->ckpt_walk[c->ckpt_walk_cur ^ 1];
        int r;

        if (!every || !c->recovered || !c->ssd_tier || !c->ssd_tier->ops->checkpoint_start ||
            now - c->ckpt_last_ns < every)
                return;
        *w = (struct kvd_ckpt_walk){ c, 0 };
        r = c->ssd_tier->ops->checkpoint_start(c->ssd_tier, ckpt_next, w);
        if (r == 0)
                c->ckpt_walk_cur ^= 1;
        /* Still gathering or writing the last one: try again at the next tick. */
        if (r != -EBUSY)
                c->ckpt_last_ns = now;
}

/* SPDX-License-Identifier: MIT */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"

/* A copy started after the request's first pass (its item had to wait):
 * one batch of its own, so it goes as soon as the block is ready. */
struct late_copy {
        struct kvd_xfer_batch batch;
        struct kvd_copy copy;
        struct kvd_io *io;
        uint32_t item;
        uint32_t id;
};

struct kvd_io {
        struct kvd_xfer_batch batch;    /* items ready on the first pass */
        struct kvd_cache *cache;
        struct kvd_xfer *xfer;
        enum kvd_io_kind kind;
        bool durable;
        bool shared;            /* prefix-chain keys (KVD_IO_SHARED) */
        bool first_pass;
        const struct kvd_ns *ns;
        struct kvd_peer_pool *pool;
        struct kvd_counters *counters;  /* NULL when no item counts */
        struct kvd_item *items;
        uint32_t n_items;
        uint32_t next;          /* items before it are started */
        uint8_t *status;
        uint32_t done;
        uint32_t outstanding;   /* the submitter, batches, waits */
        uint32_t *item_of;      /* first-pass copy -> item */
        uint32_t *block_of;     /* first-pass copy -> block id */
        kvd_io_done_fn done_fn;
        void *userdata;
};

static void item_run(struct kvd_io *io, uint32_t i);

static void io_put(struct kvd_io *io)
{
        if (--io->outstanding == 0)
                io->done_fn(io, io->userdata);
}

static void set_status(struct kvd_io *io, uint32_t i, enum kvd_item_status st)
{
        io->status[i] = (uint8_t)st;
        if (st == KVD_ITEM_OK)
                io->done++;
}

/* Item i has its final status: record it and count it on its counter. Every
 * outcome goes through here once, except a Get's successful copy, which the
 * transfer worker counted (add_copy). */
static void finish(struct kvd_io *io, uint32_t i, enum kvd_item_status st)
{
        uint32_t ctr = io->items[i].counter;

        set_status(io, i, st);
        if (ctr)
                kvd_counters_bump(io->counters, ctr, st == KVD_ITEM_OK || st == KVD_ITEM_EXISTS);
}

/* A durable (or write-through) Put's SSD write ended. */
static void durable_done(void *ctx, uint32_t i, bool ok)
{
        struct kvd_io *io = ctx;

        finish(io, i, ok ? KVD_ITEM_OK : KVD_ITEM_ERROR);
        io_put(io);
}

/* Another Put of the same key (or a fetch of it from the remote tier)
 * ended: acknowledge ours only now, so a Get sent after our reply finds the
 * block. If it did not store the block, ours stores its own bytes. */
static void pending_done(void *ctx, uint32_t i, bool ok)
{
        struct kvd_io *io = ctx;

        if (ok)
                finish(io, i, KVD_ITEM_EXISTS);
        else
                item_run(io, i);
        io_put(io);
}

/* The block was loaded from SSD, or host room was made: try again. */
static void retry(void *ctx, uint32_t i, bool ok)
{
        struct kvd_io *io = ctx;

        if (ok)
                item_run(io, i);
        else
                finish(io, i, io->kind == KVD_IO_PUT ? KVD_ITEM_ERROR : KVD_ITEM_MISS);
        io_put(io);
}

/* One copy ended (or none was made): commit or release its block. */
static void copy_done(struct kvd_io *io, uint32_t i, uint32_t id, int result)
{
        int r;

        if (io->kind == KVD_IO_GET) {
                kvd_cache_unpin(io->cache, id);
                if (result == 0)
                        set_status(io, i, KVD_ITEM_OK); /* the worker counted it */
                else
                        finish(io, i, KVD_ITEM_ERROR);
                return;
        }
        /* Put. Committed even if the client has gone: the bytes were whole
         * in its pool when it submitted, and a concurrent Put of this key was
         * promised them. */
        if (result < 0) {
                kvd_cache_put_abort(io->cache, id);
                finish(io, i, KVD_ITEM_ERROR);
                return;
        }
        r = kvd_cache_put_commit(io->cache, id, (io->durable ? KVD_PUT_DURABLE : 0) | (io->shared ? KVD_PUT_SHARED : 0),
                                 durable_done, io, i);
        if (r == 1)
                io->outstanding++;
        else if (r == 0 || !io->durable)
                finish(io, i, KVD_ITEM_OK); /* write-through that could not start: stored in host all the same */
        else
                finish(io, i, KVD_ITEM_ERROR); /* durable asked, cannot be had */
}

static void first_pass_done(struct kvd_xfer_batch *b)
{
        struct kvd_io *io = container_of(b, struct kvd_io, batch);

        for (uint32_t k = 0; k < b->n; k++)
                copy_done(io, io->item_of[k], io->block_of[k], b->copies[k].result);
        io_put(io);
}

static void late_done(struct kvd_xfer_batch *b)
{
        struct late_copy *l = container_of(b, struct late_copy, batch);
        struct kvd_io *io = l->io;

        copy_done(io, l->item, l->id, l->copy.result);
        free(l);
        io_put(io);
}

static void add_copy(struct kvd_io *io, uint32_t i, uint32_t id, void *host)
{
        struct kvd_copy c = { .host = host, .slot = io->items[i].slot, .len = (uint32_t)io->ns->block_bytes };
        struct late_copy *l;

        /* A Get's item is finished by its copy: the worker counts it at
         * once, so a waiting client need not wait for the event loop. */
        if (io->kind == KVD_IO_GET && io->items[i].counter)
                c.done_ctr = kvd_counters_done_word(io->counters, io->items[i].counter);

        if (io->first_pass) {
                io->batch.copies[io->batch.n] = c;
                io->item_of[io->batch.n] = i;
                io->block_of[io->batch.n] = id;
                io->batch.n++;
                return;
        }
        l = calloc(1, sizeof(*l));
        if (!l) {
                copy_done(io, i, id, -ENOMEM);
                return;
        }
        l->copy = c;
        l->io = io;
        l->item = i;
        l->id = id;
        l->batch = (struct kvd_xfer_batch){
                .pool = io->pool, .dir = io->kind == KVD_IO_PUT ? KVD_XFER_IN : KVD_XFER_OUT,
                .prio = KVD_PRIO_DEMAND, .copies = &l->copy, .n = 1, .done = late_done,
        };
        io->outstanding++;
        kvd_xfer_submit(io->xfer, &l->batch);
}

/* Makes what progress item i can; registers a wait when it must. */
static void item_run(struct kvd_io *io, uint32_t i)
{
        const struct kvd_item *it = &io->items[i];
        struct kvd_bkey k = { it->key_hi, it->key_lo, io->ns->id, it->layer };
        uint32_t id;
        void *host;
        int r;

        if (io->kind == KVD_IO_PUT) {
                /* Nothing can be made durable now: not even "exists" (the
                 * block may be in host memory only) is true of a durable Put. */
                if (io->durable && kvd_cache_ssd_damaged(io->cache)) {
                        finish(io, i, KVD_ITEM_ERROR);
                        return;
                }
                r = kvd_cache_put_reserve(io->cache, &k, &id, &host);
                /* A durable Put of a key another Put is storing retries once
                 * that one ends: the block must then be made durable too. */
                if (r == -EINPROGRESS)
                        r = kvd_cache_wait_pending(io->cache, id, io->durable ? retry : pending_done, io, i) == 0
                                    ? -EINPROGRESS : -ENOMEM;
                /* Stored already, perhaps not durably: EXISTS only once it is. */
                if (r == -EEXIST && io->durable) {
                        r = kvd_cache_put_durable(io->cache, id, retry, io, i);
                        r = r == 0 ? -EEXIST : r == 1 ? -EINPROGRESS : r == -EDQUOT ? r : -EIO;
                }
        } else {
                r = kvd_cache_get_pin(io->cache, &k,
                                      (io->kind == KVD_IO_PREFETCH ? KVD_GET_PREFETCH : 0) |
                                              (io->shared ? KVD_GET_SHARED : 0),
                                      retry, io, i, &id, &host);
        }
        if (r == -EAGAIN || r == -EXFULL)
                r = kvd_cache_wait_space(io->cache, r, retry, io, i) == 0 ? -EINPROGRESS : -ENOMEM;

        switch (r) {
        case 0:
                if (io->kind == KVD_IO_PREFETCH) {
                        kvd_cache_unpin(io->cache, id);
                        finish(io, i, KVD_ITEM_OK);
                } else {
                        add_copy(io, i, id, host);
                }
                break;
        case -EINPROGRESS:
                io->outstanding++;
                break;
        case -EEXIST:
                finish(io, i, KVD_ITEM_EXISTS);
                break;
        case -ENOENT:
                finish(io, i, KVD_ITEM_MISS);
                break;
        case -EDQUOT:
                finish(io, i, KVD_ITEM_QUOTA);
                break;
        case -EIO:
                finish(io, i, KVD_ITEM_ERROR);
                break;
        default:
                finish(io, i, KVD_ITEM_NO_SPACE);
                break;
        }
}

/* Starts items [io->next, end). */
static void run_items(struct kvd_io *io, uint32_t end)
{
        for (; io->next < end; io->next++)
                item_run(io, io->next);
}

int kvd_io_submit(struct kvd_cache *cache, struct kvd_xfer *xfer, enum kvd_io_kind kind, unsigned flags,
                  const struct kvd_ns *ns, struct kvd_peer_pool *pool, struct kvd_counters *counters,
                  struct kvd_item *items, uint32_t n, kvd_io_done_fn done, void *userdata,
                  struct kvd_io **ret_more)
{
        size_t m = n ? n : 1;
        struct kvd_io *io;

        io = calloc(1, sizeof(*io));
        if (!io) {
                free(items);
                return -ENOMEM;
        }
        io->status = malloc(m);
        io->items = items;
        io->item_of = malloc(sizeof(uint32_t) * m);
        io->block_of = malloc(sizeof(uint32_t) * m);
        io->batch.copies = malloc(sizeof(struct kvd_copy) * m);
        if (!io->status || !io->items || !io->item_of || !io->block_of || !io->batch.copies) {
                kvd_io_free(io);
                return -ENOMEM;
        }
        io->cache = cache;
        io->xfer = xfer;
        io->kind = kind;
        io->durable = flags & KVD_IO_DURABLE;
        io->shared = flags & KVD_IO_SHARED;
        io->ns = ns;
        kvd_cache_ns_hold(cache, ns->id);
        io->pool = pool ? kvd_peer_pool_ref(pool) : NULL;
        io->counters = counters ? kvd_counters_ref(counters) : NULL;
        io->n_items = n;
        io->done_fn = done;
        io->userdata = userdata;
        io->outstanding = 1;    /* the submitter's, until every item is started */
        io->first_pass = true;
        run_items(io, MIN(n, KVD_IO_SLICE));
        io->first_pass = false;
        if (io->batch.n > 0) {
                io->batch.pool = io->pool;
                io->batch.dir = kind == KVD_IO_PUT ? KVD_XFER_IN : KVD_XFER_OUT;
                io->batch.prio = KVD_PRIO_DEMAND;
                io->batch.done = first_pass_done;
                io->outstanding++;
                kvd_xfer_submit(xfer, &io->batch);
        }
        if (io->next < n) {
                *ret_more = io;
                return 0;
        }
        *ret_more = NULL;
        io_put(io);
        return 0;
}

bool kvd_io_continue(struct kvd_io *io, uint32_t budget)
{
        run_items(io, io->n_items - io->next > budget ? io->next + budget : io->n_items);
        if (io->next < io->n_items)
                return false;
        io_put(io);
        return true;
}

const uint8_t *kvd_io_status(const struct kvd_io *io)
{
        return io->status;
}

uint32_t kvd_io_count(const struct kvd_io *io)
{
        return io->n_items;
}

uint32_t kvd_io_done(const struct kvd_io *io)
{
        return io->done;
}

struct kvd_io *kvd_io_free(struct kvd_io *io)
{
        if (!io)
                return NULL;
        if (io->ns)
                kvd_cache_ns_release(io->cache, io->ns->id);
        kvd_peer_pool_unref(io->pool);
        kvd_counters_unref(io->counters);
        free(io->status);
        free(io->items);
        free(io->item_of);
        free(io->block_of);
        free(io->batch.copies);
        free(io);
        return NULL;
}

/* SPDX-License-Identifier: MIT */
#include "io.h"

#include <errno.h>
#include <stdlib.h>

#include "macro.h"

struct kvd_io {
        struct kvd_xfer_batch batch;
        struct kvd_cache *cache;
        kvd_io_done_fn done_fn;
        void *userdata;
        uint32_t n_items;
        uint32_t done;
        uint32_t outstanding;   /* the submitter, the batch, each wait */
        uint8_t *status;        /* n_items */
        uint32_t *item_of;      /* copy -> item */
        uint32_t *block_of;     /* copy -> block id */
};

static void io_put(struct kvd_io *io)
{
        if (--io->outstanding == 0)
                io->done_fn(io, io->userdata);
}

/* Another Put of the same key resolved: acknowledge ours only now, so a Get
 * after our reply finds the block. */
static void pending_resolved(void *ctx, uint32_t item, bool committed)
{
        struct kvd_io *io = ctx;

        io->status[item] = committed ? KVD_ITEM_EXISTS : KVD_ITEM_ERROR;
        io_put(io);
}

static void io_complete(struct kvd_xfer_batch *b)
{
        struct kvd_io *io = container_of(b, struct kvd_io, batch);

        for (uint32_t i = 0; i < b->n; i++) {
                const struct kvd_copy *c = &b->copies[i];
                uint32_t id = io->block_of[i], item = io->item_of[i];

                if (b->dir == KVD_XFER_IN) {
                        /* Committed even if the client has gone: the bytes
                         * were complete in its pool when it submitted, and a
                         * concurrent Put of this key was told it exists. */
                        if (c->result == 0)
                                kvd_cache_put_commit(io->cache, id);
                        else
                                kvd_cache_put_abort(io->cache, id);
                } else {
                        kvd_cache_unpin(io->cache, id);
                }
                io->status[item] = c->result == 0 ? KVD_ITEM_OK : KVD_ITEM_ERROR;
                io->done += c->result == 0;
        }
        b->pool = kvd_peer_pool_unref(b->pool);
        io_put(io);
}

int kvd_io_submit(struct kvd_cache *cache, struct kvd_xfer *xfer, enum kvd_xfer_dir dir,
                  const struct kvd_ns *ns, struct kvd_peer_pool *pool,
                  const struct kvd_item *items, uint32_t n, kvd_io_done_fn done, void *userdata)
{
        struct kvd_io *io;
        uint32_t n_copies = 0;

        io = calloc(1, sizeof(*io));
        if (!io)
                return -ENOMEM;
        io->status = malloc(n ? n : 1);
        io->item_of = malloc(sizeof(uint32_t) * (n ? n : 1));
        io->block_of = malloc(sizeof(uint32_t) * (n ? n : 1));
        io->batch.copies = malloc(sizeof(struct kvd_copy) * (n ? n : 1));
        if (!io->status || !io->item_of || !io->block_of || !io->batch.copies) {
                kvd_io_free(io);
                return -ENOMEM;
        }
        io->cache = cache;
        io->done_fn = done;
        io->userdata = userdata;
        io->n_items = n;
        io->outstanding = 1;

        for (uint32_t i = 0; i < n; i++) {
                struct kvd_bkey k = { items[i].key_hi, items[i].key_lo, ns->id, items[i].layer };
                uint32_t id;
                void *host;
                int r;

                if (dir == KVD_XFER_IN) {
                        r = kvd_cache_put_reserve(cache, &k, &id, &host);
                        if (r == -EINPROGRESS) {
                                r = kvd_cache_wait_pending(cache, id, pending_resolved, io, i);
                                if (r == 0)
                                        io->outstanding++;
                                io->status[i] = r == 0 ? KVD_ITEM_EXISTS : KVD_ITEM_ERROR;
                                continue;
                        }
                        if (r < 0) {
                                io->status[i] = r == -EEXIST ? KVD_ITEM_EXISTS : KVD_ITEM_NO_SPACE;
                                continue;
                        }
                } else {
                        r = kvd_cache_get_pin(cache, &k, &id, &host);
                        if (r < 0) {
                                io->status[i] = KVD_ITEM_MISS;
                                continue;
                        }
                }
                io->batch.copies[n_copies] = (struct kvd_copy){
                        .host = host, .slot = items[i].slot, .len = (uint32_t)ns->block_bytes,
                };
                io->item_of[n_copies] = i;
                io->block_of[n_copies] = id;
                n_copies++;
        }

        if (n_copies > 0) {
                io->batch.dir = dir;
                io->batch.prio = KVD_PRIO_DEMAND;
                io->batch.n = n_copies;
                io->batch.done = io_complete;
                io->batch.pool = kvd_peer_pool_ref(pool);
                io->outstanding++;
                kvd_xfer_submit(xfer, &io->batch);
        }
        io_put(io);     /* the submitter's: done now if nothing is left */
        return 0;
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
        free(io->status);
        free(io->item_of);
        free(io->block_of);
        free(io->batch.copies);
        free(io);
        return NULL;
}

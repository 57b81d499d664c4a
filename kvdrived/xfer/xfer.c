/* SPDX-License-Identifier: MIT */
#include "xfer.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "counters.h"
#include "clock.h"
#include "log.h"
#include "loop.h"
#include "macro.h"

struct queue {
        struct kvd_xfer_batch *head, *tail;
};

struct kvd_xfer {
        pthread_mutex_t lock;
        pthread_cond_t wake;
        struct queue pending[KVD_PRIO_COUNT];
        struct kvd_xfer_batch *completed;   /* LIFO, reversed on reap */
        bool stopping;
        int efd;
        struct kvd_loop_watch efd_w;    /* efd in the event loop */
        unsigned n_workers;     /* started */
        unsigned share;         /* workers a batch is spread over (set before any starts) */
        pthread_t *workers;
        atomic_uint_fast64_t bytes[2];
        atomic_uint_fast64_t busy_ns[2];        /* summed over workers, successful copies */
        atomic_uint_fast64_t lat_hist[2][KVD_XFER_LAT_BUCKETS]; /* copies by duration, per direction */
        uint64_t inline_batches;        /* copied by the submitter (loop thread only) */
};

static void queue_push(struct queue *q, struct kvd_xfer_batch *b)
{
        b->link = NULL;
        if (q->tail)
                q->tail->link = b;
        else
                q->head = b;
        q->tail = b;
}

static void queue_pop(struct queue *q)
{
        q->head = q->head->link;
        if (!q->head)
                q->tail = NULL;
}

/* Bytes of small copies a worker claims at once: one lock round per run of
 * copies instead of per copy (a 4 KiB copy takes about as long as taking
 * the lock and waking a waiter). */
#define CLAIM_BYTES (256u << 10)

/* Under lock: claims the next copies [*ret_i, *ret_i + *ret_n) of the most
 * urgent batch: as many as make CLAIM_BYTES, but no more than a worker's
 * share of what is left, so that a batch still spreads over every worker.
 * A batch leaves its queue when its last copy is claimed, so no queue ever
 * points at a batch that may complete (and be freed by its owner). */
static struct kvd_xfer_batch *claim_locked(struct kvd_xfer *x, unsigned *ret_i, unsigned *ret_n)
{
        for (int p = 0; p < KVD_PRIO_COUNT; p++) {
                struct queue *q = &x->pending[p];
                struct kvd_xfer_batch *b = q->head;
                unsigned i, left, n;

                if (!b)
                        continue;
                i = atomic_load(&b->next);
                left = b->n - i;
                n = CLAIM_BYTES / MAX(b->copies[i].len, 1u);
                n = MIN(n, (left + x->share - 1) / x->share);
                n = MAX(n, 1u);
                atomic_store(&b->next, i + n);
                if (i + n == b->n)
                        queue_pop(q);
                *ret_i = i;
                *ret_n = n;
                return b;
        }
        return NULL;
}

static void complete(struct kvd_xfer *x, struct kvd_xfer_batch *b)
{
        uint64_t one = 1;
        ssize_t n;

        pthread_mutex_lock(&x->lock);
        b->link = x->completed;
        x->completed = b;
        pthread_mutex_unlock(&x->lock);
        n = write(x->efd, &one, sizeof(one));
        (void)n; /* eventfd write only fails on counter overflow */
}

/* Copy c of batch b; its figures and its client counter. */
static void copy_one(struct kvd_xfer *x, struct kvd_xfer_batch *b, struct kvd_copy *c)
{
        const struct kvd_device_ops *ops = b->pool->ops;
        uint64_t t0 = kvd_now_ns();

        c->result = b->dir == KVD_XFER_IN ? ops->copy_in(b->pool, c->slot, c->host, c->len)
                                          : ops->copy_out(b->pool, c->slot, c->host, c->len);
        if (c->result == 0) {
                uint64_t us = (kvd_now_ns() - t0) / 1000u;
                unsigned bucket = us ? 64u - (unsigned)__builtin_clzll(us) : 0;

                atomic_fetch_add(&x->bytes[b->dir], c->len);
                atomic_fetch_add(&x->busy_ns[b->dir], kvd_now_ns() - t0);
                atomic_fetch_add_explicit(&x->lat_hist[b->dir][MIN(bucket, KVD_XFER_LAT_BUCKETS - 1u)], 1,
                                          memory_order_relaxed);
                /* The release orders the copy before the count the
                 * client acquires: its bytes are there once seen. */
                if (c->done_ctr) {
                        atomic_fetch_add_explicit(c->done_ctr, 1, memory_order_release);
                        kvd_counter_signal(c->done_ctr);
                }
        }
}

static void *worker_main(void *arg)
{
        struct kvd_xfer *x = arg;

        pthread_mutex_lock(&x->lock);
        for (;;) {
                unsigned i, n;
                struct kvd_xfer_batch *b = claim_locked(x, &i, &n);

                if (!b) {
                        if (x->stopping)
                                break;
                        pthread_cond_wait(&x->wake, &x->lock);
                        continue;
                }
                pthread_mutex_unlock(&x->lock);
                for (unsigned k = 0; k < n; k++)
                        copy_one(x, b, &b->copies[i + k]);
                if (atomic_fetch_sub(&b->remaining, n) == n)
                        complete(x, b);
                pthread_mutex_lock(&x->lock);
        }
        pthread_mutex_unlock(&x->lock);
        return NULL;
}

int kvd_xfer_new(unsigned workers, struct kvd_xfer **ret)
{
        struct kvd_xfer *x;
        int r;

        x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->workers = calloc(workers, sizeof(pthread_t));
        if (!x->workers) {
                free(x);
                return -ENOMEM;
        }
        pthread_mutex_init(&x->lock, NULL);
        pthread_cond_init(&x->wake, NULL);
        x->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (x->efd < 0) {
                r = -errno;
                goto err_free;
        }
        x->share = MAX(workers, 1u);
        for (unsigned i = 0; i < workers; i++) {
                r = -pthread_create(&x->workers[i], NULL, worker_main, x);
                if (r < 0)
                        goto err_stop;
                x->n_workers++;
        }
        *ret = x;
        return 0;

err_stop:
        kvd_xfer_free(x);
        return r;
err_free:
        free(x->workers);
        free(x);
        return r;
}

struct kvd_xfer *kvd_xfer_free(struct kvd_xfer *x)
{
        if (!x)
                return NULL;
        pthread_mutex_lock(&x->lock);
        x->stopping = true;
        pthread_cond_broadcast(&x->wake);
        pthread_mutex_unlock(&x->lock);
        for (unsigned i = 0; i < x->n_workers; i++)
                pthread_join(x->workers[i], NULL);
        kvd_xfer_reap(x);
        close(x->efd);
        pthread_cond_destroy(&x->wake);
        pthread_mutex_destroy(&x->lock);
        free(x->workers);
        free(x);
        return NULL;
}

int kvd_xfer_fd(const struct kvd_xfer *x)
{
        return x->efd;
}

static void xfer_ready(struct kvd_loop_watch *w, uint32_t events)
{
        (void)events;
        kvd_xfer_reap(container_of(w, struct kvd_xfer, efd_w));
}

int kvd_xfer_watch(struct kvd_xfer *x, struct kvd_loop *l)
{
        x->efd_w = (struct kvd_loop_watch){ x->efd, xfer_ready };
        return kvd_loop_add(l, &x->efd_w, KVD_LOOP_IN);
}

/* A batch of host-memory copies this small is copied by the submitting
 * thread: waking a worker and being woken back costs two scheduler
 * wake-ups, several times a 32 KiB memcpy on a busy machine
 * (docs/decisions.md, "Small copies on the loop"). Device copies always go
 * to a worker: a CUDA copy may wait on the device. */
#define INLINE_BYTES (32u << 10)

static bool copy_inline(const struct kvd_xfer_batch *b)
{
        uint64_t bytes = 0;

        if (b->pool->backend == KVD_BACKEND_CUDA)
                return false;
        for (uint32_t i = 0; i < b->n && bytes <= INLINE_BYTES; i++)
                bytes += b->copies[i].len;
        return bytes <= INLINE_BYTES;
}

void kvd_xfer_submit(struct kvd_xfer *x, struct kvd_xfer_batch *b)
{
        assert(b->n > 0 && b->prio < KVD_PRIO_COUNT);
        atomic_init(&b->next, 0);
        atomic_init(&b->remaining, b->n);
        if (copy_inline(b)) {
                /* Done at once; its callback still runs from kvd_xfer_reap(),
                 * as the contract says, on the loop's next turn. */
                atomic_store(&b->next, b->n);
                for (uint32_t i = 0; i < b->n; i++)
                        copy_one(x, b, &b->copies[i]);
                atomic_store(&b->remaining, 0);
                x->inline_batches++;
                complete(x, b);
                return;
        }
        pthread_mutex_lock(&x->lock);
        queue_push(&x->pending[b->prio], b);
        if (b->n > 1)
                pthread_cond_broadcast(&x->wake);
        else
                pthread_cond_signal(&x->wake);
        pthread_mutex_unlock(&x->lock);
}

unsigned kvd_xfer_reap(struct kvd_xfer *x)
{
        struct kvd_xfer_batch *list, *rev = NULL;
        unsigned n = 0;
        uint64_t v;

        if (read(x->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                log_warning("xfer eventfd read: %m");
        pthread_mutex_lock(&x->lock);
        list = x->completed;
        x->completed = NULL;
        pthread_mutex_unlock(&x->lock);
        while (list) {          /* oldest first */
                struct kvd_xfer_batch *next = list->link;

                list->link = rev;
                rev = list;
                list = next;
        }
        while (rev) {
                struct kvd_xfer_batch *next = rev->link;

                rev->done(rev);
                rev = next;
                n++;
        }
        return n;
}

uint64_t kvd_xfer_bytes(const struct kvd_xfer *x, enum kvd_xfer_dir dir)
{
        return atomic_load(&((struct kvd_xfer *)x)->bytes[dir]);
}

uint64_t kvd_xfer_busy_ns(const struct kvd_xfer *x, enum kvd_xfer_dir dir)
{
        return atomic_load(&((struct kvd_xfer *)x)->busy_ns[dir]);
}

void kvd_xfer_latency(const struct kvd_xfer *x, enum kvd_xfer_dir dir, uint64_t ret[KVD_XFER_LAT_BUCKETS])
{
        for (unsigned b = 0; b < KVD_XFER_LAT_BUCKETS; b++)
                ret[b] = atomic_load_explicit(&((struct kvd_xfer *)x)->lat_hist[dir][b], memory_order_relaxed);
}

uint64_t kvd_xfer_inline_batches(const struct kvd_xfer *x)
{
        return x->inline_batches;
}

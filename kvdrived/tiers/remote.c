/* SPDX-License-Identifier: MIT */
#include "remote.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <xxhash.h>

#include "clock.h"
#include "codec.h"
#include "log.h"
#include "loop.h"
#include "macro.h"
#include "rcluster.h"
#include "slot.h"

#define VALUE_HDR ((uint32_t)sizeof(struct kvd_slot_header))
/* Nodes whose figures Stats reports, at most. */
#define MAX_NODES 64
/* How often the thread copies the nodes' figures out for Stats. */
#define SNAPSHOT_NS (20u * 1000u * 1000u)

enum op_kind { OP_GET, OP_PUT, OP_EXISTS };

/*
 * One tier operation: queued by the loop, run by the thread (one cluster
 * request, or n for a probe), handed back when its last request ends.
 */
struct op {
        struct op *next;
        struct kvd_remote *r;
        enum op_kind kind;
        kvd_tier_cb cb;
        void *ctx;
        int result;
        uint32_t len;           /* payload bytes (get, put) */
        void *payload;          /* get: where it goes; put: what is sent */
        struct kvd_slot_header hdr;     /* get: what is expected; put: what is sent */
        struct kvd_slot_header got;     /* get: what came */
        uint8_t *ret;           /* exists: one byte per key */
        uint32_t n, pending;    /* requests, and those not ended */
        uint32_t found;         /* exists: keys there */
        uint64_t t0_ns;
        /* remote-codec: put: the codec to encode with (on the thread); get:
         * the value's payload lands in enc (cap bytes), decoded from there. */
        enum kvd_codec codec;
        uint8_t *enc;
        uint32_t enc_cap;
        struct kvd_rc_req req[]; /* n */
};

struct kvd_remote {
        struct kvd_tier tier;
        const struct kvd_config *cfg;
        char seeds[sizeof(((struct kvd_config *)0)->remote)];
        struct kvd_loop_watch w;        /* done_fd */
        int wake_fd;            /* loop -> thread: ops queued, or stop */
        int done_fd;            /* thread -> loop: ops ended */
        pthread_t thread;
        bool started;

        /* The loop's own (no lock): ops queued since the last flush, and
         * what is in flight. */
        struct op *q_head, *q_tail;
        uint32_t inflight;
        uint64_t inflight_put_bytes;
        struct kvd_tier_stats st;
        enum kvd_codec codec;   /* remote-codec */

        /* Shared with the thread, under lock. */
        pthread_mutex_t lock;
        struct op *sub_head, *sub_tail;         /* to the thread */
        struct op *done_head, *done_tail;       /* back to the loop */
        bool stop;
        struct kvd_tier_node_stats nodes[MAX_NODES];
        unsigned n_nodes;
        uint64_t refreshes;

        /* The thread's own. */
        struct kvd_rc *rc;
        uint64_t snap_ns;
        bool stale;             /* woken since the last snapshot */
};

static struct kvd_remote *remote_of(const struct kvd_tier *t)
{
        return container_of(t, struct kvd_remote, tier);
}

static void op_push(struct op **head, struct op **tail, struct op *o)
{
        o->next = NULL;
        if (*tail)
                (*tail)->next = o;
        else
                *head = o;
        *tail = o;
}

static void signal_fd(int fd)
{
        uint64_t one = 1;

        /* Only EAGAIN (the counter is full: a wake-up is pending) can fail. */
        (void)!write(fd, &one, sizeof(one));
}

static void drain_fd(int fd)
{
        uint64_t v;

        (void)!read(fd, &v, sizeof(v));
}

/* ---- keys ---------------------------------------------------------------- */

/* XXH3-64 of the namespace's identity as a header names it. */
static uint64_t ns_tag(const struct kvd_slot_header *h)
{
        struct {
                uint32_t owner, layers, kv_heads, head_dim, dtype, block_tokens, fp_len;
                char name[sizeof(h->ns_name)]; /* NUL-padded, as namespaces keep it */
                uint8_t fp[KVD_FINGERPRINT_MAX];
        } id;

        memset(&id, 0, sizeof(id));
        id.owner = h->ns_owner;
        id.layers = h->ns_layers;
        id.kv_heads = h->ns_kv_heads;
        id.head_dim = h->ns_head_dim;
        id.dtype = h->ns_dtype;
        id.block_tokens = h->ns_block_tokens;
        id.fp_len = MIN(h->ns_fingerprint_len, KVD_FINGERPRINT_MAX);
        memcpy(id.name, h->ns_name, sizeof(id.name));
        memcpy(id.fp, h->ns_fingerprint, id.fp_len);
        return XXH3_64bits(&id, sizeof(id));
}

static void make_key(struct kvd_rc_req *q, uint64_t tag, uint64_t hi, uint64_t lo, uint32_t layer)
{
        int n = snprintf(q->key, sizeof(q->key), "kvd:1:%016" PRIx64 ":%016" PRIx64 "%016" PRIx64 ":%" PRIu32, tag,
                         hi, lo, layer);

        q->keylen = (uint32_t)n;
}

/* ---- the thread ---------------------------------------------------------- */

/* A value's header names the block asked for (any codec, any length). */
static bool value_names_block(const struct op *o)
{
        const struct kvd_slot_header *g = &o->got, *e = &o->hdr;

        return kvd_slot_header_valid(g, 0) && g->key_hi == e->key_hi &&
               g->key_lo == e->key_lo && g->layer == e->layer &&
               g->ns_owner == e->ns_owner && g->ns_layers == e->ns_layers && g->ns_kv_heads == e->ns_kv_heads &&
               g->ns_head_dim == e->ns_head_dim && g->ns_dtype == e->ns_dtype &&
               g->ns_block_tokens == e->ns_block_tokens && strncmp(g->ns_name, e->ns_name, sizeof(g->ns_name)) == 0 &&
               g->ns_fingerprint_len == e->ns_fingerprint_len &&
               memcmp(g->ns_fingerprint, e->ns_fingerprint, MIN(g->ns_fingerprint_len, KVD_FINGERPRINT_MAX)) == 0;
}

/* A raw value (straight into the payload) is the block asked for, intact. */
static bool value_ok(const struct op *o)
{
        const struct kvd_slot_header *g = &o->got;

        return value_names_block(o) && g->codec == KVD_CODEC_NONE && g->payload_len == o->len &&
               g->payload_crc == kvd_slot_crc(o->payload, o->len);
}

/* A value read into enc (value_len bytes in all): the block asked for,
 * intact, encoded by a codec we know; decoded into the payload. 0 or
 * -EBADMSG. */
static int value_decode(const struct op *o, uint32_t value_len)
{
        const struct kvd_slot_header *g = &o->got;
        struct kvd_codec_shape shape;
        size_t n;

        if (!value_names_block(o) || value_len < VALUE_HDR || g->payload_len != value_len - VALUE_HDR ||
            !kvd_slot_payload_len_ok(g, o->len) || g->payload_crc != kvd_slot_crc(o->enc, g->payload_len))
                return -EBADMSG;
        kvd_slot_codec_shape(g, &shape);
        if (kvd_codec_decode((enum kvd_codec)g->codec, &shape, o->enc, g->payload_len, o->payload, o->len, &n) < 0 ||
            n != o->len)
                return -EBADMSG;
        return 0;
}

/* A put's payload encoded into enc, and its header saying so (the
 * thread). Stays raw if it cannot be. */
static void put_encode(struct op *o)
{
        struct kvd_codec_shape shape;
        size_t n;

        kvd_slot_codec_shape(&o->hdr, &shape);
        o->enc = malloc(o->enc_cap);
        if (!o->enc || kvd_codec_encode(o->codec, &shape, o->payload, o->len, o->enc, o->enc_cap, &n) < 0)
                return;
        o->hdr.codec = (uint16_t)o->codec;
        o->hdr.payload_len = (uint32_t)n;
        o->req[0].iov[1] = (struct iovec){ o->enc, n };
}

/* A cluster request ended (the thread). */
static void req_done(struct kvd_rc_req *q)
{
        struct op *o = q->ctx;
        struct kvd_remote *r = o->r;
        bool wake;

        switch (o->kind) {
        case OP_GET:
                if (q->result == -EMSGSIZE)
                        o->result = -EBADMSG; /* a value of another size: not the block */
                else if (q->result == 0 && o->enc)
                        o->result = value_decode(o, q->value_len);
                else if (q->result == 0 && !value_ok(o))
                        o->result = -EBADMSG;
                else
                        o->result = q->result;
                break;
        case OP_PUT:
                o->result = q->result;
                break;
        case OP_EXISTS:
                o->ret[q - o->req] = q->result == 0;
                o->found += q->result == 0;
                if (q->result < 0 && q->result != -ENOENT && o->result == 0)
                        o->result = q->result; /* the answer is partial: counted */
                break;
        }
        if (--o->pending > 0)
                return;
        pthread_mutex_lock(&r->lock);
        wake = !r->done_head;
        op_push(&r->done_head, &r->done_tail, o);
        pthread_mutex_unlock(&r->lock);
        if (wake)
                signal_fd(r->done_fd);
}

static void op_start(struct kvd_remote *r, struct op *o)
{
        uint64_t deadline = kvd_now_ns() + (uint64_t)r->cfg->remote_timeout_ms * 1000000u;

        o->pending = o->n;
        if (o->kind == OP_PUT) {
                /* Encoding and the payload's crc here, off the event loop. */
                if (o->codec != KVD_CODEC_ID_NONE)
                        put_encode(o);
                o->hdr.payload_crc = kvd_slot_crc(o->req[0].iov[1].iov_base, o->hdr.payload_len);
                kvd_slot_header_seal(&o->hdr);
        }
        for (uint32_t i = 0; i < o->n; i++) {
                struct kvd_rc_req *q = &o->req[i];

                q->deadline_ns = deadline;
                q->done = req_done;
                q->ctx = o;
                kvd_rc_submit(r->rc, q);
        }
}

static void snapshot(struct kvd_remote *r, bool force)
{
        uint64_t now = kvd_now_ns();
        unsigned n;

        if (!force && now - r->snap_ns < SNAPSHOT_NS)
                return;
        r->snap_ns = now;
        r->stale = false;
        n = MIN(kvd_rc_node_count(r->rc), MAX_NODES);
        pthread_mutex_lock(&r->lock);
        for (unsigned i = 0; i < n; i++) {
                struct kvd_rc_node_stats s;
                struct kvd_tier_node_stats *d = &r->nodes[i];

                kvd_rc_node_stats(r->rc, i, &s);
                _Static_assert(sizeof(d->addr) == sizeof(s.addr), "node addresses");
                _Static_assert(KVD_TIER_LAT_BUCKETS == KVD_RC_LAT_BUCKETS, "latency buckets");
                memcpy(d->addr, s.addr, sizeof(d->addr));
                d->up = s.up;
                d->slots = s.slots;
                d->requests = s.requests;
                d->hits = s.hits;
                d->misses = s.misses;
                d->read_bytes = s.read_bytes;
                d->write_bytes = s.write_bytes;
                d->errors = s.errors;
                d->timeouts = s.timeouts;
                d->moved = s.moved;
                d->ask = s.ask;
                d->latency_us_sum = s.latency_us_sum;
                d->latency_us_max = s.latency_us_max;
                memcpy(d->latency_hist, s.latency_hist, sizeof(d->latency_hist));
        }
        r->n_nodes = n;
        r->refreshes = kvd_rc_slot_map_refreshes(r->rc);
        pthread_mutex_unlock(&r->lock);
}

static void *remote_thread(void *arg)
{
        struct kvd_remote *r = arg;
        struct pollfd p[2] = { { .fd = kvd_rc_fd(r->rc), .events = POLLIN }, { .fd = r->wake_fd, .events = POLLIN } };
        bool stop = false;

        while (!stop) {
                struct op *o, *next;

                int timeout = kvd_rc_timeout_ms(r->rc);

                /* A snapshot owed: taken soon even if nothing else happens. */
                if (r->stale && (timeout < 0 || timeout > (int)(SNAPSHOT_NS / 1000000u)))
                        timeout = SNAPSHOT_NS / 1000000u;
                if (poll(p, 2, timeout) < 0 && errno != EINTR)
                        break;
                if (p[1].revents & POLLIN)
                        drain_fd(r->wake_fd);
                pthread_mutex_lock(&r->lock);
                o = r->sub_head;
                r->sub_head = r->sub_tail = NULL;
                stop = r->stop;
                pthread_mutex_unlock(&r->lock);
                for (; o; o = next) {
                        next = o->next;
                        op_start(r, o);
                }
                kvd_rc_run(r->rc);
                /* Whatever woke it may have changed the figures. */
                r->stale = true;
                snapshot(r, false);
        }
        snapshot(r, true);
        /* What is still in flight ends now (-ECANCELED), callbacks and all. */
        r->rc = kvd_rc_free(r->rc);
        return NULL;
}

/* ---- the loop's side ------------------------------------------------------ */

static struct op *op_new(struct kvd_remote *r, enum op_kind kind, uint32_t n, kvd_tier_cb cb, void *ctx)
{
        struct op *o = calloc(1, sizeof(*o) + sizeof(o->req[0]) * n);

        if (!o)
                return NULL;
        o->r = r;
        o->kind = kind;
        o->n = n;
        o->cb = cb;
        o->ctx = ctx;
        o->t0_ns = kvd_now_ns();
        return o;
}

static void queue(struct kvd_remote *r, struct op *o)
{
        op_push(&r->q_head, &r->q_tail, o);
        r->inflight++;
}

/* Ends o on the loop: its figures, its callback. */
static void op_end(struct kvd_remote *r, struct op *o)
{
        struct kvd_tier_stats *st = &r->st;

        switch (o->kind) {
        case OP_GET:
                st->reads++;
                if (o->result == 0) {
                        st->hits++;
                        st->read_bytes += o->len;
                } else {
                        st->misses++;
                        if (o->result == -EBADMSG)
                                st->crc_failures++;
                        else if (o->result != -ENOENT)
                                st->read_errors++;
                }
                break;
        case OP_PUT:
                r->inflight_put_bytes -= o->len;
                if (o->result == 0) {
                        st->writes++;
                        st->write_bytes += o->len;
                } else {
                        st->write_errors++;
                }
                break;
        case OP_EXISTS:
                st->probes += o->n;
                st->probe_hits += o->found;
                if (o->result < 0)
                        st->read_errors++;
                break;
        }
        r->inflight--;
        o->cb(o->ctx, o->kind == OP_EXISTS ? 0 : o->result);
        free(o->enc);
        free(o);
}

static void remote_done(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_remote *r = container_of(w, struct kvd_remote, w);
        struct op *o, *next;

        (void)events;
        drain_fd(r->done_fd);
        pthread_mutex_lock(&r->lock);
        o = r->done_head;
        r->done_head = r->done_tail = NULL;
        pthread_mutex_unlock(&r->lock);
        for (; o; o = next) {
                next = o->next;
                op_end(r, o);
        }
}

static int remote_put(struct kvd_tier *t, const struct kvd_slot_header *id, const void *payload, uint32_t len,
                      kvd_tier_cb cb, void *ctx)
{
        struct kvd_remote *r = remote_of(t);
        struct op *o;

        if ((uint64_t)len + VALUE_HDR > r->cfg->remote_max_value_bytes) {
                r->st.write_skips++;
                return -EMSGSIZE;
        }
        if (r->inflight_put_bytes + len > r->cfg->remote_max_inflight_bytes) {
                r->st.write_skips++;
                return -EBUSY;
        }
        o = op_new(r, OP_PUT, 1, cb, ctx);
        if (!o)
                return -ENOMEM;
        o->hdr = *id;
        o->hdr.magic = KVD_SLOT_MAGIC;
        o->hdr.version = KVD_SLOT_VERSION;
        o->hdr.codec = KVD_CODEC_NONE;
        o->hdr.generation = 0;
        o->hdr.extent_generation = 0;
        o->hdr.payload_len = len;
        o->payload = (void *)payload;
        o->len = len;
        o->enc_cap = r->codec == KVD_CODEC_ID_NONE ? 0 : kvd_slot_stored_len(r->codec, id, len);
        o->codec = o->enc_cap ? r->codec : KVD_CODEC_ID_NONE;
        make_key(&o->req[0], ns_tag(id), id->key_hi, id->key_lo, id->layer);
        o->req[0].op = KVD_RC_SET;
        o->req[0].iov[0] = (struct iovec){ &o->hdr, VALUE_HDR };
        o->req[0].iov[1] = (struct iovec){ (void *)payload, len };
        o->req[0].n_iov = 2;
        o->req[0].ttl_ms = (uint64_t)r->cfg->remote_ttl_s * 1000u;
        r->inflight_put_bytes += len;
        queue(r, o);
        return 0;
}

static int remote_get(struct kvd_tier *t, const struct kvd_slot_header *id, void *payload, uint32_t len,
                      enum kvd_prio prio, kvd_tier_cb cb, void *ctx)
{
        struct kvd_remote *r = remote_of(t);
        struct op *o = op_new(r, OP_GET, 1, cb, ctx);

        (void)prio; /* the cluster is not shared with local I/O: one queue */
        if (!o)
                return -ENOMEM;
        o->hdr = *id;
        o->payload = payload;
        o->len = len;
        make_key(&o->req[0], ns_tag(id), id->key_hi, id->key_lo, id->layer);
        o->req[0].op = KVD_RC_GET;
        o->req[0].iov[0] = (struct iovec){ &o->got, VALUE_HDR };
        o->req[0].iov[1] = (struct iovec){ payload, len };
        o->req[0].n_iov = 2;
        /* With a codec, a value of any codec and length (up to the largest
         * any writes) is taken, into enc, and decoded. */
        if (r->codec != KVD_CODEC_ID_NONE) {
                o->enc_cap = (uint32_t)MIN(kvd_codec_bound(KVD_CODEC_ID_INT4, len), (size_t)UINT32_MAX);
                o->enc = malloc(o->enc_cap);
                if (!o->enc) {
                        free(o);
                        return -ENOMEM;
                }
                o->req[0].iov[1] = (struct iovec){ o->enc, o->enc_cap };
                o->req[0].up_to = true;
        }
        queue(r, o);
        return 0;
}

static int remote_exists(struct kvd_tier *t, const struct kvd_slot_header *ns, const uint64_t (*keys)[2],
                         const uint32_t *layers, uint32_t n, uint8_t *ret, kvd_tier_cb cb, void *ctx)
{
        struct kvd_remote *r = remote_of(t);
        uint64_t tag = ns_tag(ns);
        struct op *o;

        if (n == 0)
                return -EINVAL;
        o = op_new(r, OP_EXISTS, n, cb, ctx);
        if (!o)
                return -ENOMEM;
        o->ret = ret;
        for (uint32_t i = 0; i < n; i++) {
                make_key(&o->req[i], tag, keys[i][0], keys[i][1], layers[i]);
                o->req[i].op = KVD_RC_EXISTS;
                ret[i] = 0;
        }
        queue(r, o);
        return 0;
}

/* Hands what was queued this loop turn to the thread: one wake-up. */
static void remote_flush(struct kvd_tier *t)
{
        struct kvd_remote *r = remote_of(t);
        bool wake;

        if (!r->q_head)
                return;
        pthread_mutex_lock(&r->lock);
        wake = !r->sub_head;
        if (r->sub_tail)
                r->sub_tail->next = r->q_head;
        else
                r->sub_head = r->q_head;
        r->sub_tail = r->q_tail;
        pthread_mutex_unlock(&r->lock);
        r->q_head = r->q_tail = NULL;
        if (wake)
                signal_fd(r->wake_fd);
}

/* Waits for everything in flight: each request ends by its deadline. */
static void remote_drain(struct kvd_tier *t)
{
        struct kvd_remote *r = remote_of(t);

        remote_flush(t);
        while (r->inflight > 0) {
                struct pollfd p = { .fd = r->done_fd, .events = POLLIN };

                if (poll(&p, 1, 1000) > 0)
                        remote_done(&r->w, KVD_LOOP_IN);
        }
}

static int remote_watch(struct kvd_tier *t, struct kvd_loop *l)
{
        struct kvd_remote *r = remote_of(t);

        return kvd_loop_add(l, &r->w, KVD_LOOP_IN);
}

static void remote_stats(const struct kvd_tier *t, struct kvd_tier_stats *ret)
{
        struct kvd_remote *r = remote_of(t);
        unsigned up = 0, n;

        *ret = r->st;
        ret->inflight = r->inflight;
        pthread_mutex_lock(&r->lock);
        n = r->n_nodes;
        for (unsigned i = 0; i < n; i++)
                up += r->nodes[i].up;
        ret->map_refreshes = r->refreshes;
        pthread_mutex_unlock(&r->lock);
        if (n == 0)
                snprintf(ret->condition, sizeof(ret->condition), "no slot map yet (seeds %.60s)", r->seeds);
        else if (up < n)
                snprintf(ret->condition, sizeof(ret->condition), "%u of %u nodes down", n - up, n);
        else
                snprintf(ret->condition, sizeof(ret->condition), "ok");
}

static unsigned remote_nodes(const struct kvd_tier *t, struct kvd_tier_node_stats *ret, unsigned max)
{
        struct kvd_remote *r = remote_of(t);
        unsigned n;

        pthread_mutex_lock(&r->lock);
        n = r->n_nodes;
        memcpy(ret, r->nodes, sizeof(*ret) * MIN(n, max));
        pthread_mutex_unlock(&r->lock);
        return n;
}

static void remote_usage(const struct kvd_tier *t, struct kvd_tier_usage *ret)
{
        (void)t;
        *ret = (struct kvd_tier_usage){ 0 }; /* the cluster's, not ours to know */
}

static bool remote_damaged(const struct kvd_tier *t)
{
        (void)t;
        return false; /* a node down is counted, never fatal */
}

static struct kvd_tier *remote_destroy(struct kvd_tier *t)
{
        struct kvd_remote *r;

        if (!t)
                return NULL;
        r = remote_of(t);
        if (r->started) {
                remote_flush(t);
                pthread_mutex_lock(&r->lock);
                r->stop = true;
                pthread_mutex_unlock(&r->lock);
                signal_fd(r->wake_fd);
                pthread_join(r->thread, NULL);
                /* The thread ended every op it took; what it never took ends here. */
                remote_done(&r->w, KVD_LOOP_IN);
                for (struct op *o = r->sub_head, *next; o; o = next) {
                        next = o->next;
                        o->result = -ECANCELED;
                        op_end(r, o);
                }
        }
        kvd_rc_free(r->rc);
        if (r->wake_fd >= 0)
                close(r->wake_fd);
        if (r->done_fd >= 0)
                close(r->done_fd);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return NULL;
}

static const struct kvd_tier_ops remote_ops = {
        .name = "remote",
        .usage = remote_usage,
        .destroy = remote_destroy,
        .stats = remote_stats,
        .watch = remote_watch,
        .flush = remote_flush,
        .drain = remote_drain,
        .damaged = remote_damaged,
        .put = remote_put,
        .get = remote_get,
        .exists = remote_exists,
        .nodes = remote_nodes,
};

int kvd_remote_new(const struct kvd_config *cfg, struct kvd_remote **ret)
{
        static const char scheme[] = "redis-cluster://";
        struct kvd_rc_config rcc;
        struct kvd_remote *r;
        int e;

        if (strncmp(cfg->remote, scheme, strlen(scheme)) != 0)
                return -EINVAL; /* the config checked it */
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->tier.ops = &remote_ops;
        r->cfg = cfg;
        r->codec = (enum kvd_codec)cfg->remote_codec;
        snprintf(r->seeds, sizeof(r->seeds), "%s", cfg->remote + strlen(scheme));
        pthread_mutex_init(&r->lock, NULL);
        r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        r->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r->wake_fd < 0 || r->done_fd < 0) {
                e = -errno;
                goto err;
        }
        r->w = (struct kvd_loop_watch){ .fd = r->done_fd, .fn = remote_done };
        rcc = (struct kvd_rc_config){ .seeds = r->seeds, .connect_timeout_ms = cfg->remote_connect_timeout_ms,
                                      .timeout_ms = cfg->remote_timeout_ms, .max_redirects = 5 };
        e = kvd_rc_new(&rcc, &r->rc);
        if (e < 0) {
                log_error("remote tier: %s: %s", cfg->remote, strerror(-e));
                goto err;
        }
        e = -pthread_create(&r->thread, NULL, remote_thread, r);
        if (e < 0) {
                log_error("remote tier: cannot start its thread: %s", strerror(-e));
                goto err;
        }
        r->started = true;
        log_info("remote tier: Redis Cluster at %s (timeout %u ms, TTL %u s, values up to %" PRIu64 " bytes, codec %s)",
                 r->seeds, cfg->remote_timeout_ms, cfg->remote_ttl_s, cfg->remote_max_value_bytes,
                 kvd_codec_name(r->codec));
        *ret = r;
        return 0;
err:
        remote_destroy(&r->tier);
        return e;
}

struct kvd_tier *kvd_remote_tier(struct kvd_remote *r)
{
        return &r->tier;
}

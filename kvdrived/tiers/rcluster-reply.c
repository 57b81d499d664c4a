/* SPDX-License-Identifier: MIT */
/*
 * The Redis Cluster client's reply side: hiredis's reader builds replies
 * with our object functions (a GET's value is copied straight into its
 * request's destination), and each whole reply is matched with the oldest
 * request sent on its connection: a user reply (or a MOVED/ASK redirection),
 * a PING, or CLUSTER SLOTS (a new slot map).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "clock.h"
#include "log.h"
#include "macro.h"
#include "rcluster-internal.h"


/* The bulk string answering the head request: a GET's value goes straight
 * into its iovs (the only copy after the reader's buffer). */
static void deliver(struct node *n, const char *str, size_t len)
{
        struct kvd_rc_req *r = n->q.head;
        size_t off = 0;

        if (!r || r == n->unsent || r->kind != RQ_USER || r->op != KVD_RC_GET || (r->flags & F_ASKING_PENDING))
                return;
        r->value_len = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
        if (r->up_to ? len > rc_value_bytes(r) || (r->n_iov && len < r->iov[0].iov_len) : rc_value_bytes(r) != len) {
                r->result = -EMSGSIZE;
                return;
        }
        for (unsigned i = 0; i < r->n_iov && off < len; i++) {
                size_t k = MIN(r->iov[i].iov_len, len - off);

                if (k)
                        memcpy(r->iov[i].iov_base, str + off, k);
                off += k;
        }
        r->result = 0;
}

static void obj_free(void *p)
{
        struct obj *o = p;

        if (!o || !o->heap)
                return;
        for (size_t i = 0; i < o->n; i++)
                obj_free(o->elem[i]);
        free(o->elem);
        free(o->str);
        free(o);
}

/* A reply's top, or a new element of the array being read. */
static struct obj *obj_new(const redisReadTask *t, int type, bool heap)
{
        struct node *n = t->privdata;
        struct obj *o, *parent;

        if (!t->parent && !heap) {
                o = &n->top;
                *o = (struct obj){ .type = type, .str = n->text };
                n->text[0] = '\0';
                return o;
        }
        o = calloc(1, sizeof(*o));
        if (!o)
                return NULL;
        o->type = type;
        o->heap = true;
        if (t->parent) {
                parent = t->parent->obj;
                if (t->idx < 0 || (size_t)t->idx >= parent->n) {
                        free(o);
                        return NULL;
                }
                parent->elem[t->idx] = o;
        }
        return o;
}

static void *rd_string(const redisReadTask *t, char *str, size_t len)
{
        struct node *n = t->privdata;
        struct obj *o = obj_new(t, t->type, false);
        size_t k;

        if (!o)
                return NULL;
        o->len = len;
        if (o->heap) {
                o->str = malloc(len + 1);
                if (!o->str)
                        return NULL;    /* o is in its parent's tree, freed with it */
                memcpy(o->str, str, len);
                o->str[len] = '\0';
                return o;
        }
        k = MIN(len, (size_t)TEXT_MAX - 1);
        memcpy(n->text, str, k);
        n->text[k] = '\0';
        if (t->type == REDIS_REPLY_STRING)
                deliver(n, str, len);
        return o;
}

static void *rd_array(const redisReadTask *t, int elements)
{
        struct obj **elem;
        struct obj *o;

        if (elements < 0 || elements > ARRAY_MAX)
                return NULL;
        elem = calloc(elements ? (size_t)elements : 1, sizeof(*elem));
        if (!elem)
                return NULL;
        o = obj_new(t, REDIS_REPLY_ARRAY, true);
        if (!o) {
                free(elem);
                return NULL;
        }
        o->elem = elem;
        o->n = (size_t)elements;
        return o;
}

static void *rd_integer(const redisReadTask *t, long long v)
{
        struct obj *o = obj_new(t, REDIS_REPLY_INTEGER, false);

        if (o)
                o->integer = v;
        return o;
}

static void *rd_nil(const redisReadTask *t)
{
        return obj_new(t, REDIS_REPLY_NIL, false);
}

static void latency(struct kvd_rc_node_stats *st, uint64_t us)
{
        unsigned b = us ? 64u - (unsigned)__builtin_clzll(us) : 0;

        st->latency_us_sum += us;
        st->latency_us_max = MAX(st->latency_us_max, us);
        st->latency_hist[MIN(b, KVD_RC_LAT_BUCKETS - 1u)]++;
}

/* -MOVED slot host:port or -ASK slot host:port: resends r there. False if
 * the error is another one. */
static bool redirect(struct node *n, struct kvd_rc_req *r, const struct obj *o, uint64_t now)
{
        struct kvd_rc *rc = n->rc;
        const char *p = o->str;
        char host[HOST_MAX + 1];
        unsigned long slot = 0;
        struct node *t;
        uint16_t port;
        bool ask;
        size_t len;

        if (strncmp(p, "MOVED ", 6) == 0) {
                ask = false;
                p += 6;
                n->st.moved++;
        } else if (strncmp(p, "ASK ", 4) == 0) {
                ask = true;
                p += 4;
                n->st.ask++;
        } else {
                return false;
        }
        if (!isdigit((unsigned char)*p))
                goto bad;
        while (isdigit((unsigned char)*p) && slot < KVD_RC_SLOTS)
                slot = slot * 10 + (unsigned long)(*p++ - '0');
        if (slot >= KVD_RC_SLOTS || *p++ != ' ')
                goto bad;
        len = strlen(p);
        if (rc_split_addr(p, len, host, &port) < 0)
                goto bad;
        if (!host[0])
                snprintf(host, sizeof(host), "%s", n->host);
        if (r->redirects >= rc->max_redirects)
                goto bad;
        if (rc_node_get(rc, host, port, &t) < 0)
                goto bad;
        r->redirects++;
        if (ask) {
                r->flags |= F_ASK;
        } else {
                rc_map_set(rc, (unsigned)slot, t);
                rc_schedule_refresh(rc, now, false);
        }
        rc_send_to(t, r, now);
        return true;
bad:
        n->st.errors++;
        rc_complete(rc, r, -EIO);
        return true;
}

static void user_reply(struct node *n, struct kvd_rc_req *r, const struct obj *o, uint64_t now)
{
        int res = -EIO;

        r->node = (int)n->idx;
        latency(&n->st, now > r->sent_ns ? (now - r->sent_ns) / 1000 : 0);
        if (o->type == REDIS_REPLY_ERROR) {
                if (redirect(n, r, o, now))
                        return;
                n->st.errors++;
                rc_complete(n->rc, r, -EIO);
                return;
        }
        switch (r->op) {
        case KVD_RC_GET:
                if (o->type == REDIS_REPLY_STRING) {
                        res = r->result;        /* deliver()'s */
                        n->st.hits++;
                        n->st.read_bytes += o->len;
                } else if (o->type == REDIS_REPLY_NIL) {
                        res = -ENOENT;
                        n->st.misses++;
                }
                break;
        case KVD_RC_SET:
                if (o->type == REDIS_REPLY_STATUS && strcmp(o->str, "OK") == 0)
                        res = 0;
                break;
        case KVD_RC_EXISTS:
                if (o->type == REDIS_REPLY_INTEGER) {
                        res = o->integer > 0 ? 0 : -ENOENT;
                        if (res == 0)
                                n->st.hits++;
                        else
                                n->st.misses++;
                }
                break;
        }
        if (res == -EIO)
                n->st.errors++;
        rc_complete(n->rc, r, res);
}

static const struct obj *elem(const struct obj *o, size_t i, int type)
{
        const struct obj *e = o && o->type == REDIS_REPLY_ARRAY && i < o->n ? o->elem[i] : NULL;

        return e && e->type == type ? e : NULL;
}

/* CLUSTER SLOTS: [[start, end, [ip, port, id, ...], replicas...], ...] into
 * rc->scratch. Returns the slots covered, or -EIO with why. */
static int parse_slots(struct kvd_rc *rc, const struct node *from, const struct obj *o, char *why, size_t why_size)
{
        int covered = 0, r;

        if (o->type == REDIS_REPLY_ERROR) {
                rc_why_set(why, why_size, "%s", o->str);
                return -EIO;
        }
        if (o->type != REDIS_REPLY_ARRAY) {
                rc_why_set(why, why_size, "not an array");
                return -EIO;
        }
        for (unsigned i = 0; i < KVD_RC_SLOTS; i++)
                rc->scratch[i] = NO_NODE;
        for (size_t i = 0; i < o->n; i++) {
                const struct obj *e = elem(o, i, REDIS_REPLY_ARRAY);
                const struct obj *lo = elem(e, 0, REDIS_REPLY_INTEGER), *hi = elem(e, 1, REDIS_REPLY_INTEGER);
                const struct obj *m = elem(e, 2, REDIS_REPLY_ARRAY);
                const struct obj *ip = elem(m, 0, REDIS_REPLY_STRING), *port = elem(m, 1, REDIS_REPLY_INTEGER);
                char host[HOST_MAX + 1];
                struct node *t;

                if (!lo || !hi || !ip || !port || lo->integer < 0 || hi->integer < lo->integer ||
                    hi->integer >= KVD_RC_SLOTS || port->integer <= 0 || port->integer > 65535 || ip->len > HOST_MAX) {
                        rc_why_set(why, why_size, "entry %zu is not [start, end, [ip, port, ...], ...]", i);
                        return -EIO;
                }
                if (strcmp(ip->str, "?") == 0)
                        continue;       /* the master's endpoint is unknown to that node */
                snprintf(host, sizeof(host), "%s", ip->len ? ip->str : from->host);
                r = rc_node_get(rc, host, (uint16_t)port->integer, &t);
                if (r < 0) {
                        rc_why_set(why, why_size, "more than %d nodes", MAX_NODES);
                        return -EIO;
                }
                for (long long s = lo->integer; s <= hi->integer; s++) {
                        if (rc->scratch[s] == NO_NODE)
                                covered++;
                        rc->scratch[s] = (uint16_t)t->idx;
                }
        }
        if (covered == 0) {
                rc_why_set(why, why_size, "no slot is assigned");
                return -EIO;
        }
        return covered;
}

static void slots_reply(struct node *n, const struct obj *o, uint64_t now)
{
        struct kvd_rc *rc = n->rc;
        char why[TEXT_MAX + 64];
        bool changed;
        int covered;

        rc->refresh_inflight = false;
        covered = parse_slots(rc, n, o, why, sizeof(why));
        if (covered < 0) {
                if (!rc->refresh_failing)
                        log_warning("remote tier: no slot map from %s (%s); asking again every %u ms", n->st.addr,
                                    why, REFRESH_INTERVAL_MS);
                rc->refresh_failing = true;
                rc_schedule_refresh(rc, now, false);
                return;
        }
        changed = !rc->have_map || memcmp(rc->owner, rc->scratch, sizeof(rc->owner)) != 0;
        memcpy(rc->owner, rc->scratch, sizeof(rc->owner));
        for (unsigned i = 0; i < rc->n_nodes; i++)
                rc->nodes[i]->slots = 0;
        for (unsigned s = 0; s < KVD_RC_SLOTS; s++)
                if (rc->owner[s] != NO_NODE)
                        rc->nodes[rc->owner[s]]->slots++;
        rc->refreshes++;
        rc->refresh_failing = false;
        if (changed) {
                unsigned masters = 0;

                for (unsigned i = 0; i < rc->n_nodes; i++)
                        masters += rc->nodes[i]->slots > 0;
                log_notice("remote tier: slot map from %s: %d of %u slots on %u masters", n->st.addr, covered,
                           KVD_RC_SLOTS, masters);
        }
        /* What waited for the first map goes before what came since. */
        if (rc->wait_map.head) {
                rc->wait_map.tail->next = rc->incoming.head;
                if (!rc->incoming.tail)
                        rc->incoming.tail = rc->wait_map.tail;
                rc->incoming.head = rc->wait_map.head;
                rc->wait_map = (struct fifo){ 0 };
        }
        rc->have_map = true;
}

/* One whole reply, for the head of n's queue. False if n failed. */
static bool on_reply(struct node *n, const struct obj *o, uint64_t now)
{
        struct kvd_rc_req *r = n->q.head;

        if (!r || r == n->unsent) {
                rc_node_fail(n, -EIO, "a reply to no request");
                return false;
        }
        if (r->flags & F_ASKING_PENDING) {
                r->flags &= (uint8_t)~F_ASKING_PENDING;
                return true;
        }
        rc_fifo_pop(&n->q);
        if (n->last_sent == r)
                n->last_sent = NULL;
        switch (r->kind) {
        case RQ_PING:
                rc_node_up(n);
                break;
        case RQ_SLOTS:
                slots_reply(n, o, now);
                break;
        default:
                user_reply(n, r, o, now);
                break;
        }
        return true;
}

/* Feeds len bytes to n's reader and handles the replies they complete.
 * False if n failed. */
static bool node_feed(struct node *n, const char *buf, size_t len, uint64_t now)
{
        void *reply;

        if (redisReaderFeed(n->reader, buf, len) != REDIS_OK) {
                rc_node_fail(n, -EIO, "protocol error: %s", n->reader->errstr);
                return false;
        }
        for (;;) {
                bool ok;

                if (redisReaderGetReply(n->reader, &reply) != REDIS_OK) {
                        rc_node_fail(n, -EIO, "protocol error: %s", n->reader->errstr);
                        return false;
                }
                if (!reply)
                        return true;
                ok = on_reply(n, reply, now);
                obj_free(reply);
                if (!ok)
                        return false;
        }
}

void rc_node_read(struct node *n)
{
        struct kvd_rc *rc = n->rc;
        size_t budget = READ_BUDGET;

        while (budget > 0) {
                ssize_t got = recv(n->fd, rc->rbuf, RBUF_SIZE, MSG_DONTWAIT);
                uint64_t now = kvd_now_ns();

                if (got == 0) {
                        rc_node_fail(n, -ECONNRESET, "it closed the connection");
                        return;
                }
                if (got < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN && errno != EWOULDBLOCK)
                                rc_node_fail(n, -ECONNRESET, "%s", strerror(errno));
                        return;
                }
                budget -= MIN(budget, (size_t)got);
                for (size_t off = 0; off < (size_t)got; off += FEED_SLICE)
                        if (!node_feed(n, rc->rbuf + off, MIN((size_t)got - off, (size_t)FEED_SLICE), now))
                                return;
        }
}

const redisReplyObjectFunctions rc_reply_fns = { rd_string, rd_array, rd_integer, rd_nil, obj_free };

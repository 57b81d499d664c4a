/* SPDX-License-Identifier: MIT */
#include "rcluster.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/read.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "macro.h"
#include "rcluster-internal.h"


/* ---- key slots -------------------------------------------------------- */

/* CRC16-XMODEM (CCITT polynomial 0x1021, initial 0), the cluster spec's. */
static const uint16_t crc16_tab[256] = {
        0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
        0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
        0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
        0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
        0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
        0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
        0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
        0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
        0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
        0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
        0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
        0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
        0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
        0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
        0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
        0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
        0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
        0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
        0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
        0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
        0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
        0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
        0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
        0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
        0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
        0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
        0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
        0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
        0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
        0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
        0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
        0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static uint16_t crc16(const char *p, size_t n)
{
        uint16_t c = 0;

        for (size_t i = 0; i < n; i++)
                c = (uint16_t)(c << 8) ^ crc16_tab[((c >> 8) ^ (uint8_t)p[i]) & 0xff];
        return c;
}

unsigned kvd_rc_key_slot(const char *key, size_t len)
{
        const char *lb = len ? memchr(key, '{', len) : NULL;

        /* A hash tag: from the first '{' to the first '}' after it, if not empty. */
        if (lb) {
                size_t from = (size_t)(lb - key) + 1;
                const char *rb = from < len ? memchr(key + from, '}', len - from) : NULL;

                if (rb && rb > key + from) {
                        len = (size_t)(rb - (key + from));
                        key += from;
                }
        }
        return crc16(key, len) & (KVD_RC_SLOTS - 1);
}

/* ---- small helpers ---------------------------------------------------- */

static void fifo_push(struct fifo *f, struct kvd_rc_req *r)
{
        r->next = NULL;
        if (f->tail)
                f->tail->next = r;
        else
                f->head = r;
        f->tail = r;
}

struct kvd_rc_req *rc_fifo_pop(struct fifo *f)
{
        struct kvd_rc_req *r = f->head;

        if (r) {
                f->head = r->next;
                if (!f->head)
                        f->tail = NULL;
                r->next = NULL;
        }
        return r;
}

/* Ends r: its callback runs at the end of this kvd_rc_run(). */
void rc_complete(struct kvd_rc *rc, struct kvd_rc_req *r, int result)
{
        r->result = result;
        fifo_push(&rc->done, r);
}

static void run_done(struct kvd_rc *rc)
{
        struct kvd_rc_req *r;

        /* Callbacks may submit: those go to incoming, not to this list. */
        while ((r = rc_fifo_pop(&rc->done)))
                if (r->done)
                        r->done(r);
}

uint64_t rc_value_bytes(const struct kvd_rc_req *r)
{
        uint64_t sum = 0;

        for (unsigned i = 0; i < r->n_iov && i < 2; i++)
                sum += r->iov[i].iov_len;
        return sum;
}

void rc_why_set(char *why, size_t why_size, const char *fmt, ...)
{
        va_list ap;

        if (!why || why_size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
}

static bool host_ok(const char *h)
{
        if (!*h)
                return false;
        for (; *h; h++)
                if (!isgraph((unsigned char)*h) || *h == ',' || *h == '[' || *h == ']' || *h == '/')
                        return false;
        return true;
}

/* "host:port" (split at the last ':'; "[v6]:port" too) into host (maybe
 * empty: the cluster's way of saying "the address you used") and port. */
int rc_split_addr(const char *s, size_t len, char host[HOST_MAX + 1], uint16_t *ret_port)
{
        const char *colon = len ? memrchr(s, ':', len) : NULL;
        size_t hl, pl;
        unsigned long port = 0;

        if (!colon)
                return -EINVAL;
        hl = (size_t)(colon - s);
        pl = len - hl - 1;
        if (pl == 0 || pl > 5)
                return -EINVAL;
        for (size_t i = 0; i < pl; i++) {
                if (!isdigit((unsigned char)colon[1 + i]))
                        return -EINVAL;
                port = port * 10 + (unsigned long)(colon[1 + i] - '0');
        }
        if (port == 0 || port > 65535)
                return -EINVAL;
        if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
                s++;
                hl -= 2;
        }
        if (hl > HOST_MAX)
                return -EINVAL;
        memcpy(host, s, hl);
        host[hl] = '\0';
        *ret_port = (uint16_t)port;
        return 0;
}

static void node_watch(struct node *n, uint32_t events)
{
        struct epoll_event ev = { .events = events, .data.ptr = n };

        if (n->events == events)
                return;
        /* It only fails for a bad fd or no memory; then the node stops
         * answering and its deadlines close it. */
        if (epoll_ctl(n->rc->epfd, n->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, n->fd, &ev) == 0)
                n->events = events;
}

/* ---- nodes ------------------------------------------------------------ */

static struct node *node_find(const struct kvd_rc *rc, const char *host, uint16_t port)
{
        for (unsigned i = 0; i < rc->n_nodes; i++)
                if (rc->nodes[i]->port == port && strcmp(rc->nodes[i]->host, host) == 0)
                        return rc->nodes[i];
        return NULL;
}

int rc_node_get(struct kvd_rc *rc, const char *host, uint16_t port, struct node **ret_node)
{
        struct node *n = node_find(rc, host, port);

        if (!n) {
                if (rc->n_nodes >= MAX_NODES)
                        return -ENOSPC;
                n = calloc(1, sizeof(*n));
                if (!n)
                        return -ENOMEM;
                n->rc = rc;
                n->idx = rc->n_nodes;
                snprintf(n->host, sizeof(n->host), "%s", host);
                n->port = port;
                n->fd = -1;
                snprintf(n->st.addr, sizeof(n->st.addr), "%s:%u", host, port);
                rc->nodes[rc->n_nodes++] = n;
        }
        *ret_node = n;
        return 0;
}

void rc_map_set(struct kvd_rc *rc, unsigned slot, struct node *n)
{
        uint16_t old = rc->owner[slot];

        if (old != NO_NODE)
                rc->nodes[old]->slots--;
        rc->owner[slot] = (uint16_t)n->idx;
        n->slots++;
}

void rc_schedule_refresh(struct kvd_rc *rc, uint64_t now, bool soon)
{
        uint64_t at = soon ? now : MAX(now, rc->refresh_start_ns + REFRESH_INTERVAL_MS * MS);

        if (!rc->refresh_due || at < rc->refresh_at_ns)
                rc->refresh_at_ns = at;
        rc->refresh_due = true;
}

/* The command's bytes up to the value (the whole command but for SET). */
static void build_wire(struct kvd_rc_req *r)
{
        static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
        char *h = r->hdr;
        size_t len = 0, cap = sizeof(r->hdr);
        uint64_t vlen = 0;

        r->flags &= (uint8_t)~F_ASKING_PENDING;
        r->result = -EIO;       /* unless the reply says otherwise */
        r->tail_len = 0;
        if (r->flags & F_ASK) {
                memcpy(h, asking, sizeof(asking) - 1);
                len = sizeof(asking) - 1;
                r->flags = (uint8_t)((r->flags & ~F_ASK) | F_ASKING_PENDING);
        }
        if (r->kind == RQ_PING) {
                len += (size_t)snprintf(h + len, cap - len, "*1\r\n$4\r\nPING\r\n");
        } else if (r->kind == RQ_SLOTS) {
                len += (size_t)snprintf(h + len, cap - len, "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n");
        } else {
                static const char *const cmd[] = {
                        [KVD_RC_GET] = "*2\r\n$3\r\nGET", [KVD_RC_SET] = "$3\r\nSET", [KVD_RC_EXISTS] = "*2\r\n$6\r\nEXISTS",
                };

                if (r->op == KVD_RC_SET)
                        len += (size_t)snprintf(h + len, cap - len, "*%d\r\n", r->ttl_ms ? 5 : 3);
                len += (size_t)snprintf(h + len, cap - len, "%s\r\n$%u\r\n", cmd[r->op], r->keylen);
                memcpy(h + len, r->key, r->keylen);
                len += r->keylen;
                memcpy(h + len, "\r\n", 2);
                len += 2;
                if (r->op == KVD_RC_SET) {
                        vlen = rc_value_bytes(r);
                        len += (size_t)snprintf(h + len, cap - len, "$%llu\r\n", (unsigned long long)vlen);
                        if (r->ttl_ms)
                                r->tail_len = (uint8_t)snprintf(r->tail, sizeof(r->tail), "\r\n$2\r\nPX\r\n$%d\r\n%llu\r\n",
                                                                snprintf(NULL, 0, "%llu", (unsigned long long)r->ttl_ms),
                                                                (unsigned long long)r->ttl_ms);
                        else
                                r->tail_len = (uint8_t)snprintf(r->tail, sizeof(r->tail), "\r\n");
                }
        }
        r->hdr_len = (uint8_t)len;
        r->wire_len = len + vlen + r->tail_len;
}

/* The pieces of r's command, in order, empty ones left out. */
static unsigned wire_pieces(const struct kvd_rc_req *r, struct iovec out[4])
{
        unsigned k = 0;

        out[k++] = (struct iovec){ (void *)r->hdr, r->hdr_len };
        if (r->kind == RQ_USER && r->op == KVD_RC_SET) {
                for (unsigned i = 0; i < r->n_iov; i++)
                        if (r->iov[i].iov_len)
                                out[k++] = r->iov[i];
                out[k++] = (struct iovec){ (void *)r->tail, r->tail_len };
        }
        return k;
}

/* Counts w bytes written from n's unsent requests. */
static void advance(struct node *n, uint64_t w, uint64_t now)
{
        while (n->unsent && w > 0) {
                struct kvd_rc_req *r = n->unsent;
                uint64_t left = r->wire_len - n->out_off;

                if (n->out_off == 0)
                        r->sent_ns = now;
                if (w < left) {
                        n->out_off += w;
                        break;
                }
                w -= left;
                n->out_off = 0;
                n->unsent = r->next;
                n->last_sent = r;
                if (r->kind == RQ_USER) {
                        n->st.requests++;
                        if (r->op == KVD_RC_SET)
                                n->st.write_bytes += rc_value_bytes(r);
                }
        }
}

/* Writes what n has unsent, as far as the socket takes it. */
static void node_flush(struct node *n)
{
        struct iovec iov[WRITE_IOVS];

        for (;;) {
                struct msghdr msg = { .msg_iov = iov };
                uint64_t skip = n->out_off;
                unsigned k = 0;
                ssize_t w;

                for (struct kvd_rc_req *r = n->unsent; r && k + 4 <= WRITE_IOVS; r = r->next) {
                        struct iovec p[4];
                        unsigned np = wire_pieces(r, p);

                        for (unsigned i = 0; i < np; i++) {
                                if (skip >= p[i].iov_len) {
                                        skip -= p[i].iov_len;
                                        continue;
                                }
                                iov[k++] = (struct iovec){ (char *)p[i].iov_base + skip, p[i].iov_len - skip };
                                skip = 0;
                        }
                }
                if (k == 0)
                        break;
                msg.msg_iovlen = k;
                w = sendmsg(n->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        rc_node_fail(n, -ECONNRESET, "cannot send: %s", strerror(errno));
                        return;
                }
                advance(n, (uint64_t)w, kvd_now_ns());
        }
        node_watch(n, n->unsent ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static void ping_push(struct node *n, uint64_t now)
{
        struct kvd_rc_req *p = &n->ping;

        *p = (struct kvd_rc_req){ .kind = RQ_PING, .node = -1, .deadline_ns = now + n->rc->timeout_ns };
        build_wire(p);
        fifo_push(&n->q, p);
        if (!n->unsent)
                n->unsent = p;
}

static int resolve(const struct node *n, struct sockaddr_storage *ret_sa, socklen_t *ret_len)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
        struct addrinfo *res = NULL;
        char port[8];
        int r;

        snprintf(port, sizeof(port), "%u", n->port);
        r = getaddrinfo(n->host, port, &hints, &res);
        if (r == EAI_NONAME) {
                hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
                r = getaddrinfo(n->host, port, &hints, &res);
        }
        if (r != 0 || !res || res->ai_addrlen > sizeof(*ret_sa)) {
                r = r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
                goto out;
        }
        memcpy(ret_sa, res->ai_addr, res->ai_addrlen);
        *ret_len = res->ai_addrlen;
        r = 0;
out:
        if (res)
                freeaddrinfo(res);
        return r;
}

/* Starts connecting n (closed); a node that is down gets a PING first,
 * whose answer says it is up. Failing here fails the node. */
static void node_connect(struct node *n, uint64_t now)
{
        struct kvd_rc *rc = n->rc;
        struct sockaddr_storage sa;
        socklen_t salen = 0;
        int one = 1, r;

        r = resolve(n, &sa, &salen);
        if (r < 0) {
                rc_node_fail(n, -ECONNREFUSED, "cannot resolve %s", n->host);
                return;
        }
        n->fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (n->fd < 0) {
                rc_node_fail(n, -ECONNREFUSED, "socket: %s", strerror(errno));
                return;
        }
        (void)setsockopt(n->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        n->reader = redisReaderCreateWithFunctions(&rc->fns);
        if (!n->reader) {
                rc_node_fail(n, -ECONNREFUSED, "out of memory");
                return;
        }
        n->reader->privdata = n;
        n->reader->maxbuf = READER_KEEP;
        if (connect(n->fd, (struct sockaddr *)&sa, salen) == 0) {
                n->conn = CONN_OPEN;
        } else if (errno == EINPROGRESS) {
                n->conn = CONN_CONNECTING;
                n->connect_deadline_ns = now + rc->connect_timeout_ns;
        } else {
                rc_node_fail(n, -ECONNREFUSED, "cannot connect: %s", strerror(errno));
                return;
        }
        node_watch(n, EPOLLIN | EPOLLOUT);
        if (n->down)
                ping_push(n, now);
}

/* Puts r at the tail of n's queue (built already); connects n if closed. */
static void node_push(struct node *n, struct kvd_rc_req *r, uint64_t now)
{
        fifo_push(&n->q, r);
        if (!n->unsent) {
                n->unsent = r;
                n->out_off = 0;
        }
        if (n->conn == CONN_CLOSED)
                node_connect(n, now);
}

void rc_send_to(struct node *n, struct kvd_rc_req *r, uint64_t now)
{
        if (n->down) {
                rc_complete(n->rc, r, -EHOSTDOWN);
                return;
        }
        build_wire(r);
        node_push(n, r, now);
}

/* The connection failed, or its oldest request is past its deadline: close
 * it, fail what it held (-ETIMEDOUT for the requests past their deadlines,
 * res for the others), mark the node down (logged once), and schedule a
 * reconnection with backoff and a map refresh from another node. */
void rc_node_fail(struct node *n, int res, const char *fmt, ...)
{
        struct kvd_rc *rc = n->rc;
        uint64_t now = kvd_now_ns();
        struct kvd_rc_req *r;
        unsigned failed = 0;
        char why[160];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        if (n->fd >= 0)
                close(n->fd);
        n->fd = -1;
        n->events = 0;
        n->conn = CONN_CLOSED;
        if (n->reader)
                redisReaderFree(n->reader);
        n->reader = NULL;
        n->unsent = NULL;
        n->last_sent = NULL;
        n->out_off = 0;
        while ((r = rc_fifo_pop(&n->q))) {
                if (r->kind == RQ_SLOTS) {
                        rc->refresh_inflight = false;
                        rc_schedule_refresh(rc, now, true);
                } else if (r->kind == RQ_USER) {
                        failed++;
                        if (r->deadline_ns <= now) {
                                n->st.timeouts++;
                                rc_complete(rc, r, -ETIMEDOUT);
                        } else {
                                rc_complete(rc, r, res);
                        }
                }
        }
        if (!n->down) {
                n->backoff_ms = BACKOFF_MIN_MS;
                log_warning("remote tier: node %s down (%s; %u requests failed): requests for its %u slots fail "
                            "until it answers again (retrying every %u..%u ms)",
                            n->st.addr, why, failed, n->slots, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        } else {
                n->backoff_ms = MIN(n->backoff_ms * 2, BACKOFF_MAX_MS);
        }
        n->down = true;
        n->retry_ns = now + n->backoff_ms * MS;
        rc_schedule_refresh(rc, now, false);
}

void rc_node_up(struct node *n)
{
        if (!n->down)
                return;
        n->down = false;
        n->backoff_ms = 0;
        log_notice("remote tier: node %s up again", n->st.addr);
}

static void node_event(struct node *n, uint32_t ev)
{
        int err = 0;
        socklen_t len = sizeof(err);

        if (n->fd < 0)
                return;         /* closed in this batch */
        if (n->conn == CONN_CONNECTING) {
                if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                        return;
                if (getsockopt(n->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                if (err) {
                        rc_node_fail(n, -ECONNREFUSED, "cannot connect: %s", strerror(err));
                        return;
                }
                n->conn = CONN_OPEN;
                node_flush(n);
                return;
        }
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
                rc_node_read(n);
        if (n->fd >= 0 && (ev & EPOLLOUT))
                node_flush(n);
}

/* ---- timers ----------------------------------------------------------- */

static bool head_sent(const struct node *n)
{
        return n->q.head && (n->q.head != n->unsent || n->out_off > 0);
}

/* The first request of n that nothing of is written yet. */
static struct kvd_rc_req *first_unwritten(const struct node *n)
{
        return n->unsent && n->out_off > 0 ? n->unsent->next : n->unsent;
}

static bool reconnect_wanted(const struct node *n)
{
        return n->down && n->conn == CONN_CLOSED && (n->slots > 0 || !n->rc->have_map);
}

/* Fails n's unwritten requests past their deadlines. False if n failed. */
static bool expire_queued(struct node *n, uint64_t now)
{
        struct kvd_rc_req *prev = n->last_sent, *r = n->unsent;

        if (r && n->out_off > 0) {
                prev = r;
                r = r->next;
        }
        while (r) {
                struct kvd_rc_req *next = r->next;

                if (r->deadline_ns > now) {
                        prev = r;
                        r = next;
                        continue;
                }
                if (r->kind == RQ_PING) {
                        rc_node_fail(n, -ETIMEDOUT, "nothing sent within %u ms", n->rc->timeout_ms);
                        return false;
                }
                if (prev)
                        prev->next = next;
                else
                        n->q.head = next;
                if (n->q.tail == r)
                        n->q.tail = prev;
                if (n->unsent == r)
                        n->unsent = next;
                if (r->kind == RQ_SLOTS) {
                        /* Stuck behind large writes: ask another node. */
                        n->rc->refresh_inflight = false;
                        rc_schedule_refresh(n->rc, now, true);
                } else {
                        n->st.timeouts++;
                        rc_complete(n->rc, r, -ETIMEDOUT);
                }
                r = next;
        }
        return true;
}

static void node_timers(struct node *n, uint64_t now)
{
        struct kvd_rc *rc = n->rc;

        if (n->conn == CONN_CONNECTING && now >= n->connect_deadline_ns) {
                rc_node_fail(n, -ETIMEDOUT, "no connection within %u ms", rc->connect_timeout_ms);
                return;
        }
        if (head_sent(n) && n->q.head->deadline_ns <= now) {
                rc_node_fail(n, -ECONNRESET, "no reply in %llu ms", (unsigned long long)((now - n->q.head->sent_ns) / MS));
                return;
        }
        if (!expire_queued(n, now))
                return;
        if (reconnect_wanted(n) && now >= n->retry_ns)
                node_connect(n, now);
}

static uint64_t node_next_ns(const struct node *n)
{
        uint64_t t = UINT64_MAX;

        if (n->conn == CONN_CONNECTING)
                t = n->connect_deadline_ns;
        if (head_sent(n))
                t = MIN(t, n->q.head->deadline_ns);
        for (const struct kvd_rc_req *r = first_unwritten(n); r; r = r->next)
                t = MIN(t, r->deadline_ns);
        if (reconnect_wanted(n))
                t = MIN(t, n->retry_ns);
        return t;
}

/* A node to ask for the map: one that is up, connected ones first. */
static struct node *refresh_node(struct kvd_rc *rc)
{
        for (int pass = 0; pass < 2; pass++)
                for (unsigned k = 0; k < rc->n_nodes; k++) {
                        unsigned i = (rc->refresh_next + k) % rc->n_nodes;
                        struct node *n = rc->nodes[i];

                        if (n->down || (pass == 0 && n->conn != CONN_OPEN))
                                continue;
                        rc->refresh_next = i + 1;
                        return n;
                }
        return NULL;
}

static void start_refresh(struct kvd_rc *rc, uint64_t now)
{
        struct kvd_rc_req *q = &rc->slots_req;
        struct node *n;

        if (!rc->refresh_due || rc->refresh_inflight || now < rc->refresh_at_ns)
                return;
        n = refresh_node(rc);
        if (!n) {
                rc->refresh_at_ns = now + REFRESH_RECHECK_MS * MS;
                return;
        }
        rc->refresh_due = false;
        rc->refresh_inflight = true;
        rc->refresh_start_ns = now;
        *q = (struct kvd_rc_req){ .kind = RQ_SLOTS, .node = -1, .deadline_ns = now + rc->timeout_ns };
        build_wire(q);
        node_push(n, q, now);
}

static void route(struct kvd_rc *rc, struct kvd_rc_req *r, uint64_t now)
{
        uint16_t o;

        if (r->deadline_ns <= now) {
                rc_complete(rc, r, -ETIMEDOUT);
                return;
        }
        if (!rc->have_map) {
                fifo_push(&rc->wait_map, r);
                return;
        }
        o = rc->owner[r->slot];
        if (o == NO_NODE) {
                rc_complete(rc, r, -EHOSTDOWN);
                return;
        }
        rc_send_to(rc->nodes[o], r, now);
}

static void expire_wait_map(struct kvd_rc *rc, uint64_t now)
{
        struct fifo keep = { 0 };
        struct kvd_rc_req *r;

        while ((r = rc_fifo_pop(&rc->wait_map))) {
                if (r->deadline_ns <= now)
                        rc_complete(rc, r, -ETIMEDOUT);
                else
                        fifo_push(&keep, r);
        }
        rc->wait_map = keep;
}

/* ---- the API ---------------------------------------------------------- */

/* Parses seeds; with rc, adds a node for each. */
static int seeds_each(const char *seeds, struct kvd_rc *rc, char *why, size_t why_size)
{
        static const char scheme[] = "redis-cluster://";
        const char *p;
        int n = 0, r;

        if (!seeds) {
                rc_why_set(why, why_size, "no seed nodes given");
                return -EINVAL;
        }
        if (strncmp(seeds, scheme, sizeof(scheme) - 1) == 0)
                seeds += sizeof(scheme) - 1;
        p = seeds;
        for (;;) {
                size_t len = strcspn(p, ","), l = len;
                const char *s = p;
                char host[HOST_MAX + 1];
                struct node *node;
                uint16_t port;

                while (l && isspace((unsigned char)*s)) {
                        s++;
                        l--;
                }
                while (l && isspace((unsigned char)s[l - 1]))
                        l--;
                if (l == 0) {
                        rc_why_set(why, why_size, "an empty entry in the seed list \"%s\"", seeds);
                        return -EINVAL;
                }
                if (rc_split_addr(s, l, host, &port) < 0 || !host_ok(host)) {
                        rc_why_set(why, why_size, "\"%.*s\" is not host:port (port 1-65535, host at most %d characters, "
                                "IPv6 as [addr]:port)", (int)l, s, HOST_MAX);
                        return -EINVAL;
                }
                if (++n > MAX_SEEDS) {
                        rc_why_set(why, why_size, "more than %d seed nodes", MAX_SEEDS);
                        return -EINVAL;
                }
                if (rc) {
                        r = rc_node_get(rc, host, port, &node);
                        if (r < 0)
                                return r;
                }
                if (!p[len])
                        break;
                p += len + 1;
        }
        return n;
}

int kvd_rc_parse_seeds(const char *seeds, char *why, size_t why_size)
{
        return seeds_each(seeds, NULL, why, why_size);
}

int kvd_rc_new(const struct kvd_rc_config *cfg, struct kvd_rc **ret_rc)
{
        struct kvd_rc *rc;
        int r;

        r = kvd_rc_parse_seeds(cfg->seeds, NULL, 0);
        if (r < 0)
                return r;
        rc = calloc(1, sizeof(*rc));
        if (!rc)
                return -ENOMEM;
        rc->epfd = -1;
        rc->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
        rc->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
        rc->connect_timeout_ns = rc->connect_timeout_ms * MS;
        rc->timeout_ns = rc->timeout_ms * MS;
        rc->max_redirects = cfg->max_redirects ? cfg->max_redirects : DEFAULT_MAX_REDIRECTS;
        rc->fns = rc_reply_fns;
        for (unsigned i = 0; i < KVD_RC_SLOTS; i++)
                rc->owner[i] = NO_NODE;
        rc->refresh_due = true; /* at the first kvd_rc_run() */
        rc->rbuf = malloc(RBUF_SIZE);
        if (!rc->rbuf) {
                r = -ENOMEM;
                goto err;
        }
        rc->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (rc->epfd < 0) {
                r = -errno;
                goto err;
        }
        r = seeds_each(cfg->seeds, rc, NULL, 0);
        if (r < 0)
                goto err;
        *ret_rc = rc;
        return 0;
err:
        kvd_rc_free(rc);
        return r;
}

struct kvd_rc *kvd_rc_free(struct kvd_rc *rc)
{
        struct kvd_rc_req *r;

        if (!rc)
                return NULL;
        rc->freeing = true;
        do {
                while ((r = rc_fifo_pop(&rc->incoming)))
                        rc_complete(rc, r, -ECANCELED);
                while ((r = rc_fifo_pop(&rc->wait_map)))
                        rc_complete(rc, r, -ECANCELED);
                for (unsigned i = 0; i < rc->n_nodes; i++) {
                        struct node *n = rc->nodes[i];

                        while ((r = rc_fifo_pop(&n->q)))
                                if (r->kind == RQ_USER)
                                        rc_complete(rc, r, -ECANCELED);
                        n->unsent = n->last_sent = NULL;
                }
                run_done(rc);
        } while (rc->incoming.head);
        for (unsigned i = 0; i < rc->n_nodes; i++) {
                struct node *n = rc->nodes[i];

                if (n->fd >= 0)
                        close(n->fd);
                if (n->reader)
                        redisReaderFree(n->reader);
                free(n);
        }
        if (rc->epfd >= 0)
                close(rc->epfd);
        free(rc->rbuf);
        free(rc);
        return NULL;
}

void kvd_rc_submit(struct kvd_rc *rc, struct kvd_rc_req *r)
{
        r->result = 0;
        r->value_len = 0;
        r->node = -1;
        r->redirects = 0;
        r->kind = RQ_USER;
        r->flags = 0;
        r->sent_ns = 0;
        if (!r->deadline_ns)
                r->deadline_ns = kvd_now_ns() + rc->timeout_ns;
        if ((unsigned)r->op > KVD_RC_EXISTS || r->keylen > KVD_RC_KEY_MAX ||
            (r->op != KVD_RC_EXISTS && r->n_iov > 2)) {
                rc_complete(rc, r, -EINVAL);
                return;
        }
        if (r->op == KVD_RC_SET && rc_value_bytes(r) > KVD_RC_VALUE_MAX) {
                rc_complete(rc, r, -EMSGSIZE);
                return;
        }
        if (rc->freeing) {
                rc_complete(rc, r, -ECANCELED);
                return;
        }
        r->slot = (uint16_t)kvd_rc_key_slot(r->key, r->keylen);
        fifo_push(&rc->incoming, r);
}

int kvd_rc_fd(const struct kvd_rc *rc)
{
        return rc->epfd;
}

int kvd_rc_timeout_ms(const struct kvd_rc *rc)
{
        uint64_t t = UINT64_MAX, now;

        if (rc->incoming.head || rc->done.head)
                return 0;
        for (const struct kvd_rc_req *r = rc->wait_map.head; r; r = r->next)
                t = MIN(t, r->deadline_ns);
        for (unsigned i = 0; i < rc->n_nodes; i++)
                t = MIN(t, node_next_ns(rc->nodes[i]));
        if (rc->refresh_due && !rc->refresh_inflight)
                t = MIN(t, rc->refresh_at_ns);
        if (t == UINT64_MAX)
                return -1;
        now = kvd_now_ns();
        if (t <= now)
                return 0;
        return (int)MIN((t - now + MS - 1) / MS, (uint64_t)INT_MAX);
}

void kvd_rc_run(struct kvd_rc *rc)
{
        struct epoll_event evs[EVENTS_BATCH];
        struct kvd_rc_req *r;
        uint64_t now;
        int n;

        n = epoll_wait(rc->epfd, evs, EVENTS_BATCH, 0);
        for (int i = 0; i < n; i++)
                node_event(evs[i].data.ptr, evs[i].events);
        now = kvd_now_ns();
        while ((r = rc_fifo_pop(&rc->incoming)))
                route(rc, r, now);
        expire_wait_map(rc, now);
        for (unsigned i = 0; i < rc->n_nodes; i++)
                node_timers(rc->nodes[i], now);
        start_refresh(rc, now);
        for (unsigned i = 0; i < rc->n_nodes; i++)
                if (rc->nodes[i]->conn == CONN_OPEN && rc->nodes[i]->unsent)
                        node_flush(rc->nodes[i]);
        run_done(rc);
}

unsigned kvd_rc_node_count(const struct kvd_rc *rc)
{
        return rc->n_nodes;
}

void kvd_rc_node_stats(const struct kvd_rc *rc, unsigned i, struct kvd_rc_node_stats *ret)
{
        const struct node *n;

        if (i >= rc->n_nodes) {
                *ret = (struct kvd_rc_node_stats){ 0 };
                return;
        }
        n = rc->nodes[i];
        *ret = n->st;
        ret->up = !n->down;
        ret->slots = n->slots;
}

uint64_t kvd_rc_slot_map_refreshes(const struct kvd_rc *rc)
{
        return rc->refreshes;
}

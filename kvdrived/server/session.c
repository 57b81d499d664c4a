/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "frame.h"
#include "log.h"
#include "macro.h"
#include "server-internal.h"

/* Messages, and units of work (items, index probes) they did, handled per
 * wakeup before other clients get their turn. */
#define READ_BUDGET 64
#define READ_WORK_BUDGET 2048

uint64_t kvd_now_ms(void)
{
        return kvd_now_ns() / 1000000;
}

static void session_free(struct kvd_session *ss)
{
        struct outmsg *m = ss->outq_head;

        while (m) {
                struct outmsg *next = m->next;

                free(m);
                m = next;
        }
        for (uint32_t i = 0; i < ss->n_pools; i++)
                kvd_peer_pool_unref(ss->pools[i]);
        kvd_counters_unref(ss->counters);
        free(ss->pools);
        free(ss->ns_rights);
        free((void *)ss->peer.groups);
        free(ss);
}

struct kvd_session *kvd_session_ref(struct kvd_session *ss)
{
        ss->refs++;
        return ss;
}

struct kvd_session *kvd_session_unref(struct kvd_session *ss)
{
        if (ss && --ss->refs == 0)
                session_free(ss);
        return NULL;
}

static void update_events(struct kvd_session *ss)
{
        bool want = ss->outq_head != NULL;
        int r;

        if (want == ss->want_write)
                return;
        ss->want_write = want;
        r = kvd_loop_mod(&ss->server->loop, &ss->w, KVD_LOOP_IN | (want ? KVD_LOOP_OUT : 0));
        if (r < 0)
                log_warning("session %llu: epoll_ctl: %s", (unsigned long long)ss->id, strerror(-r));
}

void kvd_session_event(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_session *ss = container_of(w, struct kvd_session, w);

        /* A session closed earlier in this batch of events is still
         * referenced by it (it is buried after the batch): skip. */
        if (ss->closed)
                return;
        kvd_session_ref(ss);
        if (events & KVD_LOOP_OUT)
                kvd_session_writable(ss);
        if (!ss->closed && (events & (KVD_LOOP_IN | KVD_LOOP_HUP | KVD_LOOP_ERR)))
                kvd_session_readable(ss);
        kvd_session_unref(ss);
}

/* Who the peer is: its uid and groups as the kernel saw them at connect
 * (SO_PEERCRED, SO_PEERGROUPS), and whether it administers the daemon. */
static int peer_init(struct kvd_peer *p, int fd, const struct ucred *cred, const struct kvd_config *cfg)
{
        socklen_t len = 64 * sizeof(gid_t);
        gid_t *groups = NULL;

        *p = (struct kvd_peer){ .uid = cred->uid, .gid = cred->gid };
        for (;;) {
                gid_t *g = realloc(groups, len ? len : sizeof(gid_t));

                if (!g) {
                        free(groups);
                        return -ENOMEM;
                }
                groups = g;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
                        break;
                if (errno != ERANGE) {
                        len = 0; /* none known: primary group only */
                        break;
                }
        }
        p->groups = groups;
        p->n_groups = (uint32_t)(len / sizeof(gid_t));
        p->admin = cred->uid == 0 || (cred->uid != (uid_t)-1 && kvd_peer_in_group(p, cfg->admin_gid));
        return 0;
}

/* Tells a connection it is not served, and closes it. */
static void refuse(int fd, const char *msg)
{
        Kvdrive__Error err = KVDRIVE__ERROR__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        uint8_t buf[256];

        err.code = KVDRIVE__ERROR_CODE__E_LIMIT;
        err.message = (char *)msg;
        resp.body_case = KVDRIVE__RESPONSE__BODY_ERROR;
        resp.error = &err;
        if (kvdrive__response__get_packed_size(&resp) <= sizeof(buf))
                kvd_frame_send(fd, buf, kvdrive__response__pack(&resp, buf), -1, MSG_DONTWAIT);
        close(fd);
}

/* Connections of uid now. */
static uint32_t sessions_of(const struct kvd_server *s, uid_t uid)
{
        uint32_t n = 0;

        for (const struct kvd_session *x = s->sessions; x; x = x->next)
                n += x->cred.uid == uid;
        return n;
}

int kvd_session_accept(struct kvd_server *s, int listen_fd)
{
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
                return errno == EAGAIN || errno == ECONNABORTED ? 0 : -errno;
        return kvd_session_add(s, fd);
}

int kvd_session_add(struct kvd_server *s, int fd)
{
        struct kvd_session *ss;
        socklen_t len = sizeof(struct ucred);

        if (s->n_sessions >= s->cfg->max_clients) {
                log_warning("refusing a client: max-clients (%u) reached", s->cfg->max_clients);
                refuse(fd, "too many clients (max-clients)");
                return 0;
        }
        ss = calloc(1, sizeof(*ss));
        if (!ss)
                goto err_close;
        ss->ns_rights = calloc(s->cfg->max_namespaces, 1);
        if (!ss->ns_rights)
                goto err_free;
        ss->w = (struct kvd_loop_watch){ fd, kvd_session_event };
        ss->server = s;
        ss->refs = 1;
        ss->id = ++s->next_session_id;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &ss->cred, &len) < 0)
                ss->cred = (struct ucred){ .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
        if (peer_init(&ss->peer, fd, &ss->cred, s->cfg) < 0)
                goto err_free;
        /* One uid cannot take every connection (root is trusted anyway). */
        if (ss->cred.uid != 0 && sessions_of(s, ss->cred.uid) >= s->cfg->max_clients_per_uid) {
                char msg[96];

                snprintf(msg, sizeof(msg), "too many clients of uid %u (max-clients-per-uid %u)",
                         (unsigned)ss->cred.uid, s->cfg->max_clients_per_uid);
                log_warning("refusing a client: %s", msg);
                free(ss->ns_rights);
                free((void *)ss->peer.groups);
                free(ss);
                refuse(fd, msg);
                return 0;
        }
        if (kvd_loop_add(&s->loop, &ss->w, KVD_LOOP_IN) < 0)
                goto err_free;
        ss->next = s->sessions;
        if (s->sessions)
                s->sessions->prev = ss;
        s->sessions = ss;
        s->n_sessions++;
        s->sessions_total++;
        log_info("session %llu: connected (pid %d, uid %u, gid %u)", (unsigned long long)ss->id,
                 (int)ss->cred.pid, (unsigned)ss->cred.uid, (unsigned)ss->cred.gid);
        return 1;

err_free:
        free(ss->ns_rights);
        free((void *)ss->peer.groups);
        free(ss);
err_close:
        close(fd);
        return -ENOMEM;
}

void kvd_session_close(struct kvd_session *ss, const char *why)
{
        struct kvd_server *s = ss->server;

        if (ss->closed)
                return;
        ss->closed = true;
        log_info("session %llu (%s): closed: %s; %u requests still in flight", (unsigned long long)ss->id,
                 ss->name[0] ? ss->name : "unnamed", why, ss->inflight);
        (void)kvd_loop_del(&s->loop, &ss->w);
        kvd_prefetch_forget(&s->prefetch, ss->id);
        close(ss->w.fd);
        ss->w.fd = -1;
        if (ss->prev)
                ss->prev->next = ss->next;
        else
                s->sessions = ss->next;
        if (ss->next)
                ss->next->prev = ss->prev;
        s->n_sessions--;
        /* Pools stay mapped while transfers in flight hold them; the last
         * reference closes them (for CUDA: cudaIpcCloseMemHandle). */
        for (uint32_t i = 0; i < ss->n_pools; i++) {
                s->pools[ss->pools[i]->backend]--;
                ss->pools[i] = kvd_peer_pool_unref(ss->pools[i]);
        }
        ss->n_pools = 0;
        /* Likewise the counter page: unmapped once no request counts on it. */
        ss->counters = kvd_counters_unref(ss->counters);
        /* Its namespaces may go now (requests in flight hold their own). */
        for (uint32_t i = 0; i < s->cfg->max_namespaces; i++)
                if (ss->ns_rights[i]) {
                        ss->ns_rights[i] = 0;
                        kvd_cache_ns_release(s->cache, i);
                }
        if (ss->pool_bytes) {
                kvd_cache_pool_uncharge(s->cache, ss->peer.uid, ss->pool_bytes);
                ss->pool_bytes = 0;
        }
        /* Events already returned by epoll may still point at ss: the
         * server's reference is dropped after this loop turn. */
        ss->prev = NULL;
        ss->next = s->graveyard;
        s->graveyard = ss;
}

void kvd_session_bury(struct kvd_server *s)
{
        while (s->graveyard) {
                struct kvd_session *ss = s->graveyard;

                s->graveyard = ss->next;
                kvd_session_unref(ss);
        }
}

/*
 * recvmsg() returns 0 both for an empty SEQPACKET message and at EOF. EOF
 * is only possible once the peer has shut down its side, and that state
 * never reverts: if the socket does not say so after the 0, the 0 was an
 * empty message. If it does, the 0 may still have been an empty message
 * the client sent just before it went; nobody is left to answer then.
 */
static bool peer_gone(int fd)
{
        struct pollfd p = { .fd = fd, .events = POLLRDHUP };

        return poll(&p, 1, 0) != 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

void kvd_session_readable(struct kvd_session *ss)
{
        struct kvd_server *s = ss->server;

        uint32_t work = 0;

        kvd_session_ref(ss);
        for (int budget = READ_BUDGET; budget > 0 && !ss->closed; budget--) {
                int fds[KVD_FRAME_MAX_FDS];
                unsigned nfds;
                ssize_t n;

                n = kvd_frame_recv(ss->w.fd, s->rxbuf, s->rxcap, fds, &nfds, MSG_DONTWAIT);
                if (n == -EAGAIN)
                        break;
                if (n < 0) {
                        kvd_session_close(ss, strerror((int)-n));
                        break;
                }
                if (n == 0) {
                        for (unsigned i = 0; i < nfds; i++)
                                close(fds[i]);
                        if (peer_gone(ss->w.fd)) {
                                kvd_session_close(ss, "client disconnected");
                                break;
                        }
                        s->requests++;
                        kvd_session_send_error(ss, 0, KVDRIVE__ERROR_CODE__E_MALFORMED,
                                               "empty message: a frame has at least its %u-byte header",
                                               KVD_FRAME_HDR);
                        continue;
                }
                /* A message's work counts against the turn's budget too:
                 * 64 requests of max-items each would hold the loop. */
                work += kvd_dispatch(ss, s->rxbuf, (size_t)n, fds, nfds);
                if (work >= READ_WORK_BUDGET)
                        break;
        }
        kvd_session_unref(ss);
}

static int send_now(struct kvd_session *ss, const uint8_t *payload, size_t len)
{
        return kvd_frame_send(ss->w.fd, payload, len, -1, MSG_DONTWAIT);
}

void kvd_session_writable(struct kvd_session *ss)
{
        while (ss->outq_head) {
                struct outmsg *m = ss->outq_head;
                int r = send_now(ss, m->data, m->len);

                if (r == -EAGAIN)
                        break;
                if (r < 0) {
                        kvd_session_close(ss, strerror(-r));
                        return;
                }
                ss->outq_head = m->next;
                if (!ss->outq_head)
                        ss->outq_tail = NULL;
                ss->outq_bytes -= m->len;
                free(m);
        }
        update_events(ss);
}

void kvd_session_send(struct kvd_session *ss, const Kvdrive__Response *resp)
{
        size_t len;
        struct outmsg *m;
        uint8_t stackbuf[512];
        uint8_t *buf = stackbuf;
        int r;

        if (ss->closed)
                return;
        len = kvdrive__response__get_packed_size(resp);
        if (len > sizeof(stackbuf) || ss->outq_head) {
                m = malloc(sizeof(*m) + len);
                if (!m) {
                        kvd_session_close(ss, "out of memory queueing a reply");
                        return;
                }
                m->next = NULL;
                m->len = kvdrive__response__pack(resp, m->data);
                buf = m->data;
        } else {
                m = NULL;
                kvdrive__response__pack(resp, stackbuf);
        }
        if (!ss->outq_head) {
                r = send_now(ss, buf, len);
                if (r == 0) {
                        free(m);
                        return;
                }
                if (r != -EAGAIN) {
                        free(m);
                        kvd_session_close(ss, strerror(-r));
                        return;
                }
                if (!m) {
                        m = malloc(sizeof(*m) + len);
                        if (!m) {
                                kvd_session_close(ss, "out of memory queueing a reply");
                                return;
                        }
                        m->next = NULL;
                        m->len = len;
                        memcpy(m->data, stackbuf, len);
                }
        }
        if (ss->outq_bytes + len > ss->server->cfg->max_outq_bytes) {
                free(m);
                kvd_session_close(ss, "client does not read its replies");
                return;
        }
        if (ss->outq_tail)
                ss->outq_tail->next = m;
        else
                ss->outq_head = m;
        ss->outq_tail = m;
        ss->outq_bytes += len;
        update_events(ss);
}

void kvd_session_send_error(struct kvd_session *ss, uint64_t id, Kvdrive__ErrorCode code,
                            const char *fmt, ...)
{
        Kvdrive__Error err = KVDRIVE__ERROR__INIT;
        Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        ss->server->errors++;
        ss->server->errors_by_code[(unsigned)code < KVD_ERR_CODES ? code : 0]++;
        log_debug("session %llu: request %llu: error %d: %s", (unsigned long long)ss->id,
                  (unsigned long long)id, (int)code, msg);
        err.code = code;
        err.message = msg;
        resp.id = id;
        resp.body_case = KVDRIVE__RESPONSE__BODY_ERROR;
        resp.error = &err;
        kvd_session_send(ss, &resp);
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "frame.h"
#include "log.h"
#include "macro.h"
#include "server-internal.h"

/* Messages handled per wakeup before other clients get their turn. */
#define READ_BUDGET 64

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
        free(ss->ns_joined);
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
        struct epoll_event ev = {
                .events = EPOLLIN | (ss->outq_head ? EPOLLOUT : 0),
                .data.ptr = &ss->w,
        };
        bool want = ss->outq_head != NULL;

        if (want == ss->want_write)
                return;
        ss->want_write = want;
        if (epoll_ctl(ss->server->epfd, EPOLL_CTL_MOD, ss->w.fd, &ev) < 0)
                log_warning("session %llu: epoll_ctl: %m", (unsigned long long)ss->id);
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
        struct epoll_event ev;

        if (s->n_sessions >= s->cfg->max_clients) {
                static const char msg[] = "too many clients";
                Kvdrive__Error err = KVDRIVE__ERROR__INIT;
                Kvdrive__Response resp = KVDRIVE__RESPONSE__INIT;
                uint8_t buf[128];

                err.code = KVDRIVE__ERROR_CODE__E_LIMIT;
                err.message = (char *)msg;
                resp.body_case = KVDRIVE__RESPONSE__BODY_ERROR;
                resp.error = &err;
                kvd_frame_send(fd, buf, kvdrive__response__pack(&resp, buf), -1, MSG_DONTWAIT);
                log_warning("refusing a client: max-clients (%u) reached", s->cfg->max_clients);
                close(fd);
                return 0;
        }
        ss = calloc(1, sizeof(*ss));
        if (!ss)
                goto err_close;
        ss->ns_joined = calloc(s->cfg->max_namespaces, 1);
        if (!ss->ns_joined)
                goto err_free;
        ss->w = (struct watch){ WATCH_SESSION, fd };
        ss->server = s;
        ss->refs = 1;
        ss->id = ++s->next_session_id;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &ss->cred, &len) < 0)
                ss->cred = (struct ucred){ .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
        ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &ss->w };
        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
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
        free(ss->ns_joined);
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
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, ss->w.fd, NULL);
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

void kvd_session_readable(struct kvd_session *ss)
{
        struct kvd_server *s = ss->server;

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
                        kvd_session_close(ss, "client disconnected");
                        break;
                }
                kvd_dispatch(ss, s->rxbuf, (size_t)n, fds, nfds);
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
        log_debug("session %llu: request %llu: error %d: %s", (unsigned long long)ss->id,
                  (unsigned long long)id, (int)code, msg);
        err.code = code;
        err.message = msg;
        resp.id = id;
        resp.body_case = KVDRIVE__RESPONSE__BODY_ERROR;
        resp.error = &err;
        kvd_session_send(ss, &resp);
}

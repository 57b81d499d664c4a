/* SPDX-License-Identifier: MIT */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "clock.h"
#include "frame.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "server-internal.h"

static void on_signal(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_server *s = container_of(w, struct kvd_server, sig_w);
        struct signalfd_siginfo si;

        (void)events;
        if (read(w->fd, &si, sizeof(si)) != sizeof(si))
                return;
        if (si.ssi_signo == SIGHUP) {
                log_info("received SIGHUP: reloading the configuration");
                if (s->reload)
                        s->reload(s->reload_data);
                return;
        }
        log_info("received %s, stopping", strsignal((int)si.ssi_signo));
        kvd_loop_stop(&s->loop);
}

static void notify_status(struct kvd_server *s);

void kvd_server_on_reload(struct kvd_server *s, void (*fn)(void *userdata), void *userdata)
{
        s->reload = fn;
        s->reload_data = userdata;
}

/* A tick a second (kvd_server_attach()). */
static void on_timer(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_server *s = container_of(w, struct kvd_server, timer_w);
        uint64_t ticks;

        (void)events;
        if (read(w->fd, &ticks, sizeof(ticks)) != sizeof(ticks))
                return;
        if (getenv("NOTIFY_SOCKET"))
                notify_status(s);
        kvd_cache_tick(s->cache);
}

static void on_listen(struct kvd_loop_watch *w, uint32_t events);

int kvd_server_new(const struct kvd_config *cfg, struct kvd_server **ret)
{
        struct kvd_server *s;
        sigset_t mask;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->cfg = cfg;
        s->sig_w.fd = -1;
        s->timer_w.fd = -1;
        s->loop.epfd = -1;
        s->started_ms = kvd_now_ms();
        /* One byte more than the largest legal frame: MSG_TRUNC reports the
         * real size of anything longer. */
        s->rxcap = cfg->max_frame + KVD_FRAME_HDR + 1;
        s->rxbuf = malloc(s->rxcap);
        if (!s->rxbuf) {
                r = -ENOMEM;
                goto err;
        }
        r = kvd_loop_init(&s->loop);
        if (r < 0)
                goto err;
        s->loop.poll_ns = (uint64_t)cfg->loop_poll_us * 1000u;
        /* The signals main() blocked: SIGHUP asks for a reload
         * (kvd_server_on_reload()). */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        s->sig_w = (struct kvd_loop_watch){ signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC), on_signal };
        if (s->sig_w.fd < 0) {
                r = -errno;
                goto err;
        }
        r = kvd_loop_add(&s->loop, &s->sig_w, KVD_LOOP_IN);
        if (r < 0)
                goto err;
        *ret = s;
        return 0;
err:
        kvd_server_free(s);
        return r;
}

int kvd_server_attach(struct kvd_server *s, struct kvd_cache *cache, struct kvd_xfer *xfer,
                      struct kvd_cuda *cuda)
{
        int r;

        s->cache = cache;
        s->xfer = xfer;
        s->cuda = cuda;
        kvd_prefetch_init(&s->prefetch, cache, xfer, s->cfg->workers);
        /* The transfer engine and the tiers register their own fds. */
        r = kvd_xfer_watch(xfer, &s->loop);
        if (r == 0)
                r = kvd_cache_watch(cache, &s->loop);
        if (r < 0)
                return r;
        /* A tick a second: STATUS= for the service manager, at most once a
         * second and only when it changed (sd_notify blocks if the manager
         * is slow to read, and per-event updates would hand it a datagram
         * per connection); and the SSD tier's damage check. */
        if (getenv("NOTIFY_SOCKET") || kvd_cache_has_ssd(cache)) {
                struct itimerspec its = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };

                s->timer_w = (struct kvd_loop_watch){ timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC),
                                                      on_timer };
                if (s->timer_w.fd < 0 || timerfd_settime(s->timer_w.fd, 0, &its, NULL) < 0)
                        return -errno;
                r = kvd_loop_add(&s->loop, &s->timer_w, KVD_LOOP_IN);
        }
        return r;
}

/* -EADDRINUSE if a daemon answers on path; removes a stale socket file. */
static int claim_path(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        int fd, r;

        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode)) {
                log_error("%s exists and is not a socket; refusing to replace it", path);
                return -EEXIST;
        }
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (r == 0) {
                log_error("another kvdrived is serving %s", path);
                return -EADDRINUSE;
        }
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        log_info("removed stale socket %s", path);
        return 0;
}

static int bind_socket(struct kvd_server *s)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *path = s->cfg->socket;
        char dir[sizeof(sa.sun_path)];
        int fd, r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        memcpy(dir, path, strlen(path) + 1);
        if (mkdir(dirname(dir), 0755) < 0 && errno != EEXIST) {
                r = -errno;
                log_error("cannot create the socket directory of %s: %s", path, strerror(-r));
                return r;
        }
        /* A directory someone else made (say /tmp/kvdrive-$UID) could let
         * them swap our socket for theirs. */
        {
                struct stat st;

                if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) ||
                    (st.st_uid != geteuid() && st.st_uid != 0) ||
                    ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))) {
                        log_error("socket directory %s must be ours (or root's) and not writable by others "
                                  "unless sticky", dir);
                        return -EPERM;
                }
        }
        r = claim_path(path);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, s->cfg->socket_mode) < 0 ||
            listen(fd, 128) < 0) {
                r = -errno;
                log_error("cannot listen on %s: %s", path, strerror(-r));
                close(fd);
                return r;
        }
        s->bound_path = true;
        s->listeners[s->n_listeners++] = (struct kvd_listener){ { fd, on_listen }, s };
        log_info("listening on %s", path);
        return 0;
}

int kvd_server_listen(struct kvd_server *s)
{
        int n = sd_listen_fds(1), r;

        if (n < 0) {
                log_error("sd_listen_fds: %s", strerror(-n));
                return n;
        }
        for (int i = 0; i < n && s->n_listeners < ARRAY_SIZE(s->listeners); i++) {
                int fd = SD_LISTEN_FDS_START + i;

                if (sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 1) <= 0) {
                        log_error("socket-activated fd %d is not a listening AF_UNIX SOCK_SEQPACKET socket "
                                  "(use ListenSequentialPacket=)", fd);
                        return -EINVAL;
                }
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
                s->listeners[s->n_listeners++] = (struct kvd_listener){ { fd, on_listen }, s };
                log_info("listening on socket-activated fd %d", fd);
        }
        if (n == 0) {
                r = bind_socket(s);
                if (r < 0)
                        return r;
        }
        /* The metrics endpoint with the socket: a daemon that cannot bind it
         * stops before it builds the cache. */
        if (!kvd_metrics_off(s->cfg->metrics_listen)) {
                r = kvd_metrics_new(s, &s->loop, s->cfg->metrics_listen, &s->metrics);
                if (r < 0)
                        return r;
        }
        for (unsigned i = 0; i < s->n_listeners; i++) {
                r = kvd_loop_add(&s->loop, &s->listeners[i].w, KVD_LOOP_IN);
                if (r < 0)
                        return r;
        }
        return 0;
}

void kvd_server_status_line(const struct kvd_server *s, char *buf, size_t size)
{
        struct kvd_cache_stats cs;

        kvd_cache_stats(s->cache, &cs);
        snprintf(buf, size, "%u clients; host tier %llu/%llu MiB, %llu blocks", s->n_sessions,
                 (unsigned long long)(cs.host.used_bytes >> 20), (unsigned long long)(cs.host.capacity_bytes >> 20),
                 (unsigned long long)cs.host.blocks);
}

static void notify_status(struct kvd_server *s)
{
        char line[sizeof(s->last_status)];

        kvd_server_status_line(s, line, sizeof(line));
        if (strcmp(line, s->last_status) == 0)
                return;
        memcpy(s->last_status, line, sizeof(line));
        sd_notifyf(0, "STATUS=%s", line);
}

/* ---- tasks: requests done in slices ------------------------------------- */

static void session_queue_push(struct kvd_server *s, struct kvd_session *ss)
{
        ss->task_next = NULL;
        ss->task_queued = true;
        if (s->task_last)
                s->task_last->task_next = ss;
        else
                s->task_first = ss;
        s->task_last = ss;
}

void kvd_task_queue(struct kvd_session *ss, struct kvd_task *t)
{
        t->next = NULL;
        t->ss = kvd_session_ref(ss);
        if (!t->uncounted)
                ss->inflight++;
        if (ss->tasks_tail)
                ss->tasks_tail->next = t;
        else
                ss->tasks_head = t;
        ss->tasks_tail = t;
        if (!ss->task_queued)
                session_queue_push(ss->server, kvd_session_ref(ss));
}

bool kvd_tasks_run(struct kvd_server *s)
{
        struct kvd_session *last = s->task_last;

        /* One slice per session that had tasks when the turn began. */
        while (s->task_first) {
                struct kvd_session *ss = s->task_first;
                struct kvd_task *t = ss->tasks_head;
                bool end = ss == last;

                s->task_first = ss->task_next;
                if (!s->task_first)
                        s->task_last = NULL;
                ss->task_queued = false;
                if (t->step(t, KVD_TASK_SLICE)) {
                        ss->tasks_head = t->next;
                        if (!ss->tasks_head)
                                ss->tasks_tail = NULL;
                        if (!t->uncounted)
                                ss->inflight--;
                        t->free(t);
                        kvd_session_unref(ss); /* the task's */
                }
                if (ss->tasks_head)
                        session_queue_push(s, ss); /* keeps the queue's reference */
                else
                        kvd_session_unref(ss);
                if (end)
                        break;
        }
        return s->task_first != NULL;
}

/* CPU time of the calling thread: a turn's work, whatever the scheduler
 * did to the thread meanwhile (on a busy machine its wall time says more
 * about the other processes than about the requests it served). */
static uint64_t thread_cpu_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A turn of the loop worked ns: how long any client's request could wait
 * for it to come round, on a free CPU (Stats: loop_turn_*). */
static void turn_record(struct kvd_server *s, uint64_t ns)
{
        uint64_t us = ns / 1000;
        unsigned b = us ? 64 - (unsigned)__builtin_clzll(us) : 0; /* us in [2^(b-1), 2^b) */

        s->turns++;
        s->turn_ns_sum += ns;
        s->turn_hist[MIN(b, KVD_TURN_BUCKETS - 1)]++;
        s->turn_max_ns = MAX(s->turn_max_ns, ns);
}

static void on_listen(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_server *s = container_of(w, struct kvd_listener, w)->server;

        (void)events;
        for (int k = 0; k < 16; k++) {
                int r = kvd_session_accept(s, w->fd);

                if (r <= 0) {
                        if (r < 0)
                                log_warning("accept: %s", strerror(-r));
                        break;
                }
        }
}

int kvd_server_run_once(struct kvd_server *s, int timeout_ms)
{
        uint64_t t0 = thread_cpu_ns(), held;
        bool busy;
        int n;

        /* Requests done in slices get a slice each; the wait does not
         * sleep while any remain. */
        busy = kvd_tasks_run(s);
        kvd_cache_flush(s->cache);
        held = thread_cpu_ns() - t0;
        n = kvd_loop_run_once(&s->loop, busy ? 0 : timeout_ms);
        if (n < 0 && n != -ECANCELED)
                log_error("epoll_wait: %s", strerror(-n));
        kvd_session_bury(s);
        if (n > 0 || busy)
                turn_record(s, held + thread_cpu_ns() - t0);
        return n;
}

int kvd_server_run(struct kvd_server *s)
{
        for (;;) {
                int r = kvd_server_run_once(s, -1);

                if (r == -ECANCELED)
                        return 0;
                if (r < 0)
                        return r;
        }
}

int kvd_server_adopt(struct kvd_server *s, int fd)
{
        int fl = fcntl(fd, F_GETFL), r;

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        r = kvd_session_add(s, fd);
        return r < 0 ? r : r == 0 ? -EUSERS : 0;
}

bool kvd_server_idle(const struct kvd_server *s)
{
        for (const struct kvd_session *x = s->sessions; x; x = x->next)
                if (x->inflight > 0 || x->outq_head)
                        return false;
        return true;
}

struct kvd_server *kvd_server_free(struct kvd_server *s)
{
        if (!s)
                return NULL;
        while (s->sessions)
                kvd_session_close(s->sessions, "daemon stopping");
        /* Tasks left (a drop still deleting) run to their end: the cache
         * must not be left with a half-dropped namespace. */
        while (kvd_tasks_run(s))
                ;
        kvd_session_bury(s);
        s->metrics = kvd_metrics_free(s->metrics);
        for (unsigned i = 0; i < s->n_listeners; i++)
                close(s->listeners[i].w.fd);
        if (s->bound_path)
                unlink(s->cfg->socket);
        if (s->sig_w.fd >= 0)
                close(s->sig_w.fd);
        if (s->timer_w.fd >= 0)
                close(s->timer_w.fd);
        kvd_loop_close(&s->loop);
        kvd_prefetch_free(&s->prefetch);
        free(s->rxbuf);
        free(s);
        return NULL;
}

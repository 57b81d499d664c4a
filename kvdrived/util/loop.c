/* SPDX-License-Identifier: MIT */
#include "loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "clock.h"
#include "macro.h"

_Static_assert(KVD_LOOP_IN == EPOLLIN && KVD_LOOP_OUT == EPOLLOUT && KVD_LOOP_ERR == EPOLLERR &&
                       KVD_LOOP_HUP == EPOLLHUP,
               "the loop's events are epoll's");

/* Events a batch handles at most; the rest wait for the next turn. */
#define LOOP_BATCH 64

int kvd_loop_init(struct kvd_loop *l)
{
        l->stopping = false;
        l->poll_ns = 0;
        l->last_event_ns = 0;
        l->poll_off_until_ns = 0;
        l->preemptions = 0;
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        return l->epfd < 0 ? -errno : 0;
}

void kvd_loop_close(struct kvd_loop *l)
{
        if (l->epfd >= 0)
                close(l->epfd);
        l->epfd = -1;
}

static int ctl(struct kvd_loop *l, int op, struct kvd_loop_watch *w, uint32_t events)
{
        struct epoll_event ev = { .events = events, .data.ptr = w };

        if (!w || w->fd < 0 || !w->fn)
                return -EINVAL;
        return epoll_ctl(l->epfd, op, w->fd, &ev) < 0 ? -errno : 0;
}

int kvd_loop_add(struct kvd_loop *l, struct kvd_loop_watch *w, uint32_t events)
{
        return ctl(l, EPOLL_CTL_ADD, w, events);
}

int kvd_loop_mod(struct kvd_loop *l, struct kvd_loop_watch *w, uint32_t events)
{
        return ctl(l, EPOLL_CTL_MOD, w, events);
}

int kvd_loop_del(struct kvd_loop *l, struct kvd_loop_watch *w)
{
        return ctl(l, EPOLL_CTL_DEL, w, 0);
}

void kvd_loop_stop(struct kvd_loop *l)
{
        l->stopping = true;
}

/* Involuntary context switches of the calling thread so far. */
static long preemptions(void)
{
        struct rusage ru;

        return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nivcsw : 0;
}

/* Whether to poll now: not while the CPU is contended. A thread that polls
 * on a CPU other threads want becomes one of them, is preempted, and waits a
 * scheduler slice (milliseconds) for its turn; so a preemption since the
 * last window turns polling off for POLL_BACKOFF_NS. */
#define POLL_BACKOFF_NS (100u * 1000000u)

static bool poll_now(struct kvd_loop *l, uint64_t now)
{
        long p;

        if (now < l->poll_off_until_ns)
                return false;
        p = preemptions();
        if (p != l->preemptions) {
                l->preemptions = p;
                l->poll_off_until_ns = now + POLL_BACKOFF_NS;
                return false;
        }
        return now < l->last_event_ns + l->poll_ns;
}

/* Polls without sleeping until an event, the poll window since the last
 * event ends, or the timeout: 0 (nothing came) or what epoll_wait() said. */
static int poll_window(struct kvd_loop *l, struct epoll_event *evs, int timeout_ms)
{
        uint64_t now = kvd_now_ns(), end = l->last_event_ns + l->poll_ns;

        if (!poll_now(l, now))
                return 0;
        if (timeout_ms >= 0)
                end = MIN(end, now + (uint64_t)timeout_ms * 1000000u);
        while (now < end) {
                int n = epoll_wait(l->epfd, evs, LOOP_BATCH, 0);

                if (n != 0)
                        return n;
                now = kvd_now_ns();
        }
        return 0;
}

int kvd_loop_run_once(struct kvd_loop *l, int timeout_ms)
{
        struct epoll_event evs[LOOP_BATCH];
        int n = 0;

        if (l->poll_ns && timeout_ms != 0) {
                uint64_t t0 = kvd_now_ns();

                n = poll_window(l, evs, timeout_ms);
                if (n == 0 && timeout_ms > 0) /* the poll spent part of the timeout */
                        timeout_ms -= (int)MIN((kvd_now_ns() - t0) / 1000000u, (uint64_t)timeout_ms);
        }
        if (n == 0)
                n = epoll_wait(l->epfd, evs, LOOP_BATCH, timeout_ms);
        if (n > 0 && l->poll_ns)
                l->last_event_ns = kvd_now_ns();
        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        for (int i = 0; i < n; i++) {
                struct kvd_loop_watch *w = evs[i].data.ptr;

                w->fn(w, evs[i].events);
                if (l->stopping) {
                        l->stopping = false;
                        return -ECANCELED;
                }
        }
        return n;
}

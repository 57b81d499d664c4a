/* SPDX-License-Identifier: MIT */
/*
 * The daemon's event loop (in the spirit of Redis's ae.c): an epoll set
 * whose every watch carries the function that handles it, so that each
 * part registers its own file descriptors (the listening and session
 * sockets, the transfer engine's eventfd, a tier's completion fd, timers)
 * and the loop calls nobody by name.
 *
 * A watch is owned by its part, embedded in the part's struct (reach the
 * struct back with container_of()), and must stay where it is while it is
 * registered. Callbacks run on the loop's thread, one after the other, in
 * the order the kernel returned the events of a batch; a callback may add,
 * change or delete any watch, its own included, but must not free a watch
 * of the current batch before kvd_loop_run_once() returns (sessions are
 * buried after the batch for this reason). Not thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Events (epoll's bits, so that they pass through unchanged). */
#define KVD_LOOP_IN  0x001u
#define KVD_LOOP_OUT 0x004u
#define KVD_LOOP_ERR 0x008u     /* always reported */
#define KVD_LOOP_HUP 0x010u     /* always reported */

struct kvd_loop_watch;

/* Called with the events that fired. */
typedef void (*kvd_loop_fn)(struct kvd_loop_watch *w, uint32_t events);

struct kvd_loop_watch {
        int fd;
        kvd_loop_fn fn;
};

struct kvd_loop {
        int epfd;
        bool stopping;
        /* After an event, kvd_loop_run_once() polls this long before it
         * sleeps (0: never polls): a request that follows within the window
         * finds the thread awake; not while the thread is being preempted (the CPU
 * is contended: docs/decisions.md, "Small copies on the loop, and polling
 * before sleeping"). */
        uint64_t poll_ns;
        uint64_t last_event_ns;
        uint64_t poll_off_until_ns;     /* no polling before: the CPU was contended */
        long preemptions;               /* the thread's involuntary switches at the last look */
};

/* Creates the epoll set. 0 or -errno. */
int kvd_loop_init(struct kvd_loop *l);

/* Closes it (every watch is gone with it; their fds stay open). */
void kvd_loop_close(struct kvd_loop *l);

/* Registers w (w->fd, w->fn set) for events; changes them; removes it.
 * 0 or -errno (-EINVAL for a watch without a function or fd). */
int kvd_loop_add(struct kvd_loop *l, struct kvd_loop_watch *w, uint32_t events);
int kvd_loop_mod(struct kvd_loop *l, struct kvd_loop_watch *w, uint32_t events);
int kvd_loop_del(struct kvd_loop *l, struct kvd_loop_watch *w);

/* From a callback: kvd_loop_run_once() returns -ECANCELED once the batch's
 * callback returns (the events after it in the batch are not handled). */
void kvd_loop_stop(struct kvd_loop *l);

/* Waits up to timeout_ms (-1: forever, 0: not at all) and runs the ready
 * watches' callbacks. Returns how many fired (0 on a timeout or a signal),
 * -ECANCELED after kvd_loop_stop(), or -errno of epoll_wait(). */
int kvd_loop_run_once(struct kvd_loop *l, int timeout_ms);

/* SPDX-License-Identifier: MIT */
/*
 * The event loop (util/loop.h): each watch's callback runs with the events
 * that fired; mod and del change what is reported; a callback may stop the
 * turn; bad watches are refused.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "loop.h"
#include "macro.h"

#include "check-main.h"

struct probe {
        struct kvd_loop_watch w;
        struct kvd_loop *loop;
        unsigned calls;
        uint32_t last;
        bool stop, drain;
};

static void on_event(struct kvd_loop_watch *w, uint32_t events)
{
        struct probe *p = container_of(w, struct probe, w);
        uint64_t v;

        p->calls++;
        p->last = events;
        if (p->drain && (events & KVD_LOOP_IN))
                ck_assert_int_eq(read(w->fd, &v, sizeof(v)), (int)sizeof(v));
        if (p->stop)
                kvd_loop_stop(p->loop);
}

static void probe_init(struct probe *p, struct kvd_loop *l)
{
        *p = (struct probe){ { eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), on_event }, l, 0, 0, false, true };
        ck_assert_int_ge(p->w.fd, 0);
}

static void poke(const struct probe *p)
{
        uint64_t one = 1;

        ck_assert_int_eq(write(p->w.fd, &one, sizeof(one)), (int)sizeof(one));
}

START_TEST(callbacks_get_their_events)
{
        struct kvd_loop l;
        struct probe a, b;

        ck_assert_int_eq(kvd_loop_init(&l), 0);
        probe_init(&a, &l);
        probe_init(&b, &l);
        ck_assert_int_eq(kvd_loop_add(&l, &a.w, KVD_LOOP_IN), 0);
        ck_assert_int_eq(kvd_loop_add(&l, &b.w, KVD_LOOP_IN), 0);
        ck_assert_int_eq(kvd_loop_add(&l, &b.w, KVD_LOOP_IN), -EEXIST);
        ck_assert_int_eq(kvd_loop_run_once(&l, 0), 0);          /* nothing ready: a timeout */
        poke(&b);
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), 1);
        ck_assert_uint_eq(a.calls, 0);
        ck_assert_uint_eq(b.calls, 1);
        ck_assert(b.last & KVD_LOOP_IN);
        poke(&a);
        poke(&b);
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), 2);
        ck_assert_uint_eq(a.calls, 1);
        ck_assert_uint_eq(b.calls, 2);
        /* OUT: an eventfd is always writable. */
        ck_assert_int_eq(kvd_loop_mod(&l, &a.w, KVD_LOOP_IN | KVD_LOOP_OUT), 0);
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), 1);
        ck_assert(a.last & KVD_LOOP_OUT);
        ck_assert(!(a.last & KVD_LOOP_IN));
        ck_assert_int_eq(kvd_loop_mod(&l, &a.w, KVD_LOOP_IN), 0);
        /* Deleted: no more calls. */
        ck_assert_int_eq(kvd_loop_del(&l, &b.w), 0);
        ck_assert_int_eq(kvd_loop_del(&l, &b.w), -ENOENT);
        poke(&b);
        ck_assert_int_eq(kvd_loop_run_once(&l, 0), 0);
        ck_assert_uint_eq(b.calls, 2);
        close(a.w.fd);
        close(b.w.fd);
        kvd_loop_close(&l);
}
END_TEST

START_TEST(stop_ends_the_turn)
{
        struct kvd_loop l;
        struct probe a, b;

        ck_assert_int_eq(kvd_loop_init(&l), 0);
        probe_init(&a, &l);
        probe_init(&b, &l);
        a.stop = b.stop = true;
        a.drain = b.drain = false;      /* stay ready */
        ck_assert_int_eq(kvd_loop_add(&l, &a.w, KVD_LOOP_IN), 0);
        ck_assert_int_eq(kvd_loop_add(&l, &b.w, KVD_LOOP_IN), 0);
        poke(&a);
        poke(&b);
        /* The first callback stops the turn: the other is not called. */
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), -ECANCELED);
        ck_assert_uint_eq(a.calls + b.calls, 1);
        /* The next turn runs again (the stop was consumed). */
        a.stop = b.stop = false;
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), 2);
        close(a.w.fd);
        close(b.w.fd);
        kvd_loop_close(&l);
}
END_TEST

START_TEST(bad_watches_refused)
{
        struct kvd_loop l;
        struct kvd_loop_watch none = { -1, on_event }, nofn = { 0, NULL }, notfd = { 1000000, on_event };

        ck_assert_int_eq(kvd_loop_init(&l), 0);
        ck_assert_int_eq(kvd_loop_add(&l, NULL, KVD_LOOP_IN), -EINVAL);
        ck_assert_int_eq(kvd_loop_add(&l, &none, KVD_LOOP_IN), -EINVAL);
        ck_assert_int_eq(kvd_loop_add(&l, &nofn, KVD_LOOP_IN), -EINVAL);
        ck_assert_int_eq(kvd_loop_add(&l, &notfd, KVD_LOOP_IN), -EBADF);
        ck_assert_int_eq(kvd_loop_mod(&l, &notfd, KVD_LOOP_IN), -EBADF);
        kvd_loop_close(&l);
        kvd_loop_close(&l);     /* twice: nothing */
}
END_TEST

/* With a poll window, a turn still ends at its timeout when nothing comes,
 * returns at once with a zero timeout, and reports an event that was
 * already there. */
START_TEST(poll_window_keeps_the_timeout)
{
        struct kvd_loop l;
        struct probe a;

        ck_assert_int_eq(kvd_loop_init(&l), 0);
        l.poll_ns = 3600ull * 1000000000u;       /* an hour: only the timeout can end a turn */
        probe_init(&a, &l);
        ck_assert_int_eq(kvd_loop_add(&l, &a.w, KVD_LOOP_IN), 0);
        poke(&a);
        ck_assert_int_eq(kvd_loop_run_once(&l, 1000), 1);       /* an event: the window opens */
        ck_assert_uint_eq(a.calls, 1);
        ck_assert_int_eq(kvd_loop_run_once(&l, 0), 0);
        ck_assert_int_eq(kvd_loop_run_once(&l, 20), 0);         /* the timeout ends it, not the window */
        poke(&a);
        ck_assert_int_eq(kvd_loop_run_once(&l, -1), 1);         /* found while polling */
        ck_assert_uint_eq(a.calls, 2);
        close(a.w.fd);
        kvd_loop_close(&l);
}
END_TEST

static Suite *loop_suite(void)
{
        Suite *s = suite_create("loop");
        TCase *tc = tcase_create("loop");

        tcase_add_test(tc, callbacks_get_their_events);
        tcase_add_test(tc, stop_ends_the_turn);
        tcase_add_test(tc, bad_watches_refused);
        tcase_add_test(tc, poll_window_keeps_the_timeout);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(loop_suite)

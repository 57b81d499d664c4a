/* SPDX-License-Identifier: MIT */
/* The adaptive prefetch scheduler: rates from counters, depth from rates. */
#include <check.h>
#include <errno.h>
#include <math.h>

#include "check-main.h"
#include "scheduler.h"

#define MS 1000000ull
#define KIB64 65536ull

static struct kvd_sched_sample at(uint64_t ms, uint64_t dev_b, uint64_t dev_ms, uint64_t ssd_b, uint64_t ssd_ms,
                                  uint64_t hits, uint64_t misses)
{
        return (struct kvd_sched_sample){ .now_ns = ms * MS, .dev_bytes = dev_b, .dev_busy_ns = dev_ms * MS,
                                          .dev_lanes = 1, .ssd_bytes = ssd_b, .ssd_busy_ns = ssd_ms * MS,
                                          .host_hits = hits, .host_misses = misses };
}

START_TEST(rates_while_busy)
{
        struct kvd_sched s;
        struct kvd_sched_sample a = at(0, 0, 0, 0, 0, 0, 0);
        struct kvd_sched_sample b = at(1000, 4000000000ull, 500, 1000000000ull, 1000, 30, 10);

        kvd_sched_init(&s);
        ck_assert_int_eq(kvd_sched_update(&s, &a), 0);  /* primes */
        ck_assert_int_eq(kvd_sched_update(&s, &b), 1);
        /* 4 GB in 0.5 s of copying: 8 GB/s, whatever the wall time. */
        ck_assert_double_eq_tol(s.dev_rate, 8e9, 1);
        ck_assert_double_eq_tol(s.ssd_rate, 1e9, 1);
        ck_assert_double_eq_tol(s.host_hit, 0.75, 1e-9);
        /* busy 0.5 s and 1 s of a 1 s window: one time constant, the
         * average moves by 1 - 1/e */
        ck_assert_double_eq_tol(s.dev_util, (1 - exp(-1)) * 0.5, 1e-9);
        ck_assert_double_eq_tol(s.ssd_util, (1 - exp(-1)) * 1.0, 1e-9);
}
END_TEST

/* The busy shares decay with the time the links were idle, not with the
 * number of samples: one sample after 10 s idle finds them near 0, and one
 * long window equals many short ones over the same time. */
START_TEST(busy_decays_with_time)
{
        struct kvd_sched one, many;
        struct kvd_sched_sample a = at(0, 0, 0, 0, 0, 0, 0);
        struct kvd_sched_sample busy = at(2000, 1000000, 2000, 1000000, 2000, 0, 0);
        double dev0;

        kvd_sched_init(&one);
        kvd_sched_update(&one, &a);
        ck_assert_int_eq(kvd_sched_update(&one, &busy), 1);     /* 2 s all busy */
        dev0 = one.dev_util;
        ck_assert_double_eq_tol(dev0, 1 - exp(-2), 1e-9);
        ck_assert_double_eq_tol(one.ssd_util, 1 - exp(-2), 1e-9);
        many = one;
        /* 10 s idle in one window (nothing polled meanwhile) ... */
        {
                struct kvd_sched_sample idle = busy;

                idle.now_ns += 10000 * MS;
                ck_assert_int_eq(kvd_sched_update(&one, &idle), 1);
        }
        ck_assert_double_eq_tol(one.dev_util, dev0 * exp(-10), 1e-12);
        ck_assert_double_lt(one.dev_util, 1e-4);
        ck_assert_double_lt(one.ssd_util, 1e-4);
        /* ... reads as 100 windows of 100 ms. */
        for (int i = 1; i <= 100; i++) {
                struct kvd_sched_sample idle = busy;

                idle.now_ns += (uint64_t)i * 100 * MS;
                ck_assert_int_eq(kvd_sched_update(&many, &idle), 1);
        }
        ck_assert_double_eq_tol(many.dev_util, one.dev_util, 1e-12);
        ck_assert_double_eq_tol(many.ssd_util, one.ssd_util, 1e-12);
        /* Rates measured while busy stay. */
        ck_assert_double_eq(many.dev_rate, one.dev_rate);
}
END_TEST

START_TEST(busy_links_leave_less_room)
{
        struct kvd_sched s;
        uint32_t idle, busy, full;

        kvd_sched_init(&s);
        s.dev_rate = 6.5536e9;
        s.ssd_rate = 1.31072e9;
        s.host_hit = 0.6;
        idle = kvd_sched_depth(&s, 3000, KIB64, 1);
        s.ssd_util = 0.5;               /* SSD part of a block: 20 us -> 40 us */
        busy = kvd_sched_depth(&s, 3000, KIB64, 1);
        ck_assert_uint_eq(idle, 100);
        ck_assert_uint_eq(busy, 60);    /* 3000 / (10 + 40) */
        s.ssd_util = 1.0;               /* saturated: only the floor of spare room */
        full = kvd_sched_depth(&s, 3000, KIB64, 1);
        ck_assert_uint_lt(full, 5);
        s.ssd_util = 0;
        s.dev_util = 0.75;              /* device part: 10 us -> 40 us */
        ck_assert_uint_eq(kvd_sched_depth(&s, 3000, KIB64, 1), 50);
}
END_TEST

START_TEST(idle_links_keep_their_rate)
{
        struct kvd_sched s;
        struct kvd_sched_sample a = at(0, 0, 0, 0, 0, 0, 0), b = at(1000, 8000, 1, 2000, 2, 1, 1);
        struct kvd_sched_sample c = at(2000, 8000, 1, 2000, 2, 1, 1);
        double dev, ssd;

        kvd_sched_init(&s);
        kvd_sched_update(&s, &a);
        kvd_sched_update(&s, &b);
        dev = s.dev_rate;
        ssd = s.ssd_rate;
        ck_assert_int_eq(kvd_sched_update(&s, &c), 1);
        ck_assert_double_eq(s.dev_rate, dev);
        ck_assert_double_eq(s.ssd_rate, ssd);
        ck_assert_double_eq_tol(s.host_hit, 0.5, 1e-9);
}
END_TEST

START_TEST(short_window_and_backwards_counters)
{
        struct kvd_sched s;
        struct kvd_sched_sample a = at(0, 0, 0, 0, 0, 0, 0), b = at(50, 1000, 1, 0, 0, 0, 0);
        struct kvd_sched_sample c = at(500, 2000, 2, 0, 0, 0, 0), back = at(900, 10, 2, 0, 0, 0, 0);

        kvd_sched_init(&s);
        kvd_sched_update(&s, &a);
        ck_assert_int_eq(kvd_sched_update(&s, &b), 0);          /* 50 ms: merged into the next */
        ck_assert_double_eq(s.dev_rate, 0);
        ck_assert_int_eq(kvd_sched_update(&s, &c), 1);
        ck_assert_double_eq_tol(s.dev_rate, 1e6, 1e-3);         /* 2000 B over 2 ms of copying */
        ck_assert_int_eq(kvd_sched_update(&s, &back), -EINVAL);
        ck_assert_double_eq_tol(s.dev_rate, 1e6, 1e-3);
}
END_TEST

START_TEST(depth_from_rates)
{
        struct kvd_sched s;

        kvd_sched_init(&s);
        s.dev_rate = 6.5536e9;          /* 10 us per 64 KiB block */
        s.ssd_rate = 1.31072e9;         /* 50 us per block */
        s.host_hit = 0.6;               /* 10 + 0.4 * 50 = 30 us per block */
        ck_assert_uint_eq(kvd_sched_depth(&s, 3000, KIB64, 1), 100);
        ck_assert_uint_eq(kvd_sched_depth(&s, 3000, KIB64, 2), 50);  /* two clients share the links */
        ck_assert_uint_eq(s.last_depth, 50);
        ck_assert_uint_eq(s.decisions, 2);
        ck_assert_uint_eq(kvd_sched_depth(&s, 20, KIB64, 1), 0);     /* compute shorter than one block */
        ck_assert_uint_eq(kvd_sched_depth(&s, 0, KIB64, 1), 0);
        ck_assert_uint_eq(kvd_sched_depth(&s, 1000000000u, KIB64, 1), KVD_SCHED_MAX_DEPTH);
        s.host_hit = 1.0;               /* all from host: only the device link counts */
        ck_assert_uint_eq(kvd_sched_depth(&s, 3000, KIB64, 1), 300);
}
END_TEST

START_TEST(depth_before_measuring)
{
        struct kvd_sched s;
        double per_block = KIB64 / KVD_SCHED_DEFAULT_DEV_RATE +
                           (1 - KVD_SCHED_DEFAULT_HOST_HIT) * KIB64 / KVD_SCHED_DEFAULT_SSD_RATE;

        kvd_sched_init(&s);
        ck_assert_uint_eq(kvd_sched_depth(&s, 10000, KIB64, 1), (uint32_t)(10000e-6 / per_block));
}
END_TEST

static Suite *scheduler_suite(void)
{
        Suite *s = suite_create("scheduler");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, rates_while_busy);
        tcase_add_test(tc, idle_links_keep_their_rate);
        tcase_add_test(tc, short_window_and_backwards_counters);
        tcase_add_test(tc, depth_from_rates);
        tcase_add_test(tc, busy_links_leave_less_room);
        tcase_add_test(tc, busy_decays_with_time);
        tcase_add_test(tc, depth_before_measuring);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(scheduler_suite)

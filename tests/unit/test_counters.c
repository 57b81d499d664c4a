/* SPDX-License-Identifier: MIT */
/*
 * The client's counter helpers without a daemon: the modulo-2^32
 * comparison, and kvc_counter_wait() on a page this test builds itself,
 * woken by a plain non-private FUTEX_WAKE as the daemon sends it.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "check-main.h"
#include "../../libkvclient/counters-internal.h"

#define N 4u

static kvc_counters *page_new(void)
{
        kvc_counters *k = calloc(1, sizeof(*k));
        void *base;

        ck_assert_ptr_nonnull(k);
        base = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(base, MAP_FAILED);
        k->done = base;
        k->failed = k->done + N;
        k->map_bytes = 4096;
        k->n = N;
        return k;
}

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

START_TEST(test_reached_wraps)
{
        ck_assert(kvc__counter_reached(5, 5));
        ck_assert(kvc__counter_reached(6, 5));
        ck_assert(!kvc__counter_reached(4, 5));
        ck_assert(kvc__counter_reached(0, 0));
        /* Past the wrap. */
        ck_assert(kvc__counter_reached(0, UINT32_MAX));
        ck_assert(kvc__counter_reached(3, UINT32_MAX - 2));
        ck_assert(!kvc__counter_reached(UINT32_MAX, 0));
        ck_assert(!kvc__counter_reached(UINT32_MAX - 2, 3));
        /* Up to 2^31 - 1 ahead counts as reached; 2^31 ahead does not. */
        ck_assert(kvc__counter_reached(5 + (uint32_t)INT32_MAX, 5));
        ck_assert(!kvc__counter_reached(5 + (uint32_t)INT32_MAX + 1, 5));
}
END_TEST

START_TEST(test_wait_now_and_timeout)
{
        kvc_counters *k = page_new();
        uint64_t t0;

        ck_assert_int_eq(kvc_counter_wait(NULL, 0, 0, 0), -EINVAL);
        ck_assert_int_eq(kvc_counter_wait(k, N, 0, 0), -EINVAL);
        ck_assert_uint_eq(kvc_counter_done(k, N), 0);
        ck_assert_uint_eq(kvc_counter_failed(NULL, 0), 0);

        atomic_store(&k->done[2], UINT32_MAX - 1);
        ck_assert_int_eq(kvc_counter_wait(k, 2, UINT32_MAX - 1, 0), 0);
        ck_assert_int_eq(kvc_counter_wait(k, 2, 1, 0), -ETIMEDOUT);
        t0 = now_ms();
        ck_assert_int_eq(kvc_counter_wait(k, 2, 1, 100), -ETIMEDOUT);
        ck_assert_uint_ge(now_ms() - t0, 99);
        atomic_store(&k->done[2], 1);  /* wrapped: 1 is past UINT32_MAX - 1 */
        ck_assert_int_eq(kvc_counter_wait(k, 2, 1, 0), 0);
        ck_assert_int_eq(kvc_counter_wait(k, 2, UINT32_MAX, 0), 0);
        ck_assert_uint_eq(kvc_counter_done(k, 2), 1);
        ck_assert_ptr_null(kvc_counters_free(k));
        ck_assert_ptr_null(kvc_counters_free(NULL));
}
END_TEST

struct bumper {
        kvc_counters *k;
        uint32_t i, times;
};

/* What the daemon does for each finished item. */
static void *bump_main(void *arg)
{
        struct bumper *b = arg;
        struct timespec nap = { 0, 20 * 1000 * 1000 };

        for (uint32_t t = 0; t < b->times; t++) {
                nanosleep(&nap, NULL);
                atomic_fetch_add_explicit(&b->k->failed[b->i], t % 2, memory_order_release);
                atomic_fetch_add_explicit(&b->k->done[b->i], 1, memory_order_release);
                syscall(SYS_futex, (uint32_t *)&b->k->done[b->i], FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        }
        return NULL;
}

START_TEST(test_wait_woken)
{
        struct bumper b = { page_new(), 1, 5 };
        pthread_t th;
        uint64_t t0;

        ck_assert_int_eq(pthread_create(&th, NULL, bump_main, &b), 0);
        t0 = now_ms();
        ck_assert_int_eq(kvc_counter_wait(b.k, 1, 3, 10000), 0);
        ck_assert_uint_ge(kvc_counter_done(b.k, 1), 3);
        ck_assert_int_eq(kvc_counter_wait(b.k, 1, 5, -1), 0);
        ck_assert_uint_lt(now_ms() - t0, 5000);
        ck_assert_int_eq(pthread_join(th, NULL), 0);
        ck_assert_uint_eq(kvc_counter_done(b.k, 1), 5);
        ck_assert_uint_eq(kvc_counter_failed(b.k, 1), 2);
        ck_assert_uint_eq(kvc_counter_done(b.k, 0), 0);
        kvc_counters_free(b.k);
}
END_TEST

static Suite *counters_suite(void)
{
        Suite *s = suite_create("counters");
        TCase *tc = tcase_create("counters");

        tcase_add_test(tc, test_reached_wraps);
        tcase_add_test(tc, test_wait_now_and_timeout);
        tcase_add_test(tc, test_wait_woken);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(counters_suite)

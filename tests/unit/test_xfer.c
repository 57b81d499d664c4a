/* SPDX-License-Identifier: MIT */
/* Transfer engine: real memfd pools, completion on the loop side, priorities. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check-main.h"
#include "device.h"
#include "xfer.h"

static int sealed_memfd(size_t len)
{
        int fd = memfd_create("pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
        ck_assert_int_eq(fallocate(fd, 0, 0, (off_t)len), 0);
        ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        return fd;
}

static int n_done;

static void count_done(struct kvd_xfer_batch *b)
{
        n_done++;
}

static void wait_reap(struct kvd_xfer *x, int want)
{
        while (n_done < want) {
                struct pollfd p = { .fd = kvd_xfer_fd(x), .events = POLLIN };

                ck_assert_int_eq(poll(&p, 1, 10000), 1);
                kvd_xfer_reap(x);
        }
}

START_TEST(memfd_pool_rules)
{
        struct kvd_peer_pool *p;
        const char *why;
        int fd;

        fd = memfd_create("unsealed", MFD_CLOEXEC);
        ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 16, 4096, &p, &why), -EINVAL);
        close(fd);
        fd = sealed_memfd(4096);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 16, 4096, &p, &why), -EMSGSIZE);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 0, 4096, &p, &why), -EINVAL);
        close(fd);
        fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 1, 4096, &p, &why), -EINVAL);
        close(fd);
        /* Sealed and big enough, but sparse: its pages are the client's to
         * allocate, not ours (the daemon maps it without populating). */
        fd = memfd_create("sparse", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ck_assert_int_eq(ftruncate(fd, 16 * 4096), 0);
        ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        why = NULL;
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 16, 4096, &p, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not all allocated"));
        /* Half of it allocated is not enough either. */
        ck_assert_int_eq(fallocate(fd, 0, 0, 8 * 4096), 0);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 16, 4096, &p, &why), -EINVAL);
        ck_assert_int_eq(fallocate(fd, 0, 8 * 4096, 8 * 4096), 0);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 16, 4096, &p, &why), 0);
        kvd_peer_pool_unref(p);
        close(fd);
}
END_TEST

/* Copy in and back out through a real memfd, split over 2 workers. */
START_TEST(round_trip)
{
        enum { SLOTS = 64, BYTES = 64 << 10 };
        struct kvd_xfer *x;
        struct kvd_peer_pool *pool;
        struct kvd_xfer_batch in = { 0 }, out = { 0 };
        struct kvd_copy cin[SLOTS], cout[SLOTS];
        uint8_t *client, *host = malloc((size_t)SLOTS * BYTES);
        const char *why;
        int fd = sealed_memfd((size_t)SLOTS * BYTES);

        client = mmap(NULL, (size_t)SLOTS * BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(client, MAP_FAILED);
        for (size_t i = 0; i < (size_t)SLOTS * BYTES; i++)
                client[i] = (uint8_t)(i * 7 + i / BYTES);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, SLOTS, BYTES, &pool, &why), 0);
        close(fd); /* the daemon's mapping outlives the fd */
        ck_assert_int_eq(kvd_xfer_new(2, &x), 0);
        n_done = 0;
        for (int i = 0; i < SLOTS; i++) {
                /* reversed: slot i lands at host block SLOTS-1-i */
                cin[i] = (struct kvd_copy){ host + (size_t)(SLOTS - 1 - i) * BYTES, (uint32_t)i, BYTES, -1, NULL };
                cout[i] = (struct kvd_copy){ host + (size_t)(SLOTS - 1 - i) * BYTES, (uint32_t)i, BYTES, -1, NULL };
        }
        in = (struct kvd_xfer_batch){ .pool = pool, .dir = KVD_XFER_IN, .copies = cin, .n = SLOTS,
                                      .done = count_done };
        kvd_xfer_submit(x, &in);
        wait_reap(x, 1);
        for (int i = 0; i < SLOTS; i++) {
                ck_assert_int_eq(cin[i].result, 0);
                ck_assert_mem_eq(host + (size_t)(SLOTS - 1 - i) * BYTES, client + (size_t)i * BYTES, BYTES);
        }
        memset(client, 0, (size_t)SLOTS * BYTES);
        out = (struct kvd_xfer_batch){ .pool = pool, .dir = KVD_XFER_OUT, .copies = cout, .n = SLOTS,
                                       .done = count_done };
        kvd_xfer_submit(x, &out);
        wait_reap(x, 2);
        /* each host block went back to the slot it came from */
        for (size_t i = 0; i < (size_t)SLOTS * BYTES; i += 4093)
                ck_assert_uint_eq(client[i], (uint8_t)(i * 7 + i / BYTES));
        ck_assert_uint_eq(kvd_xfer_bytes(x, KVD_XFER_IN), (uint64_t)SLOTS * BYTES);
        ck_assert_uint_eq(kvd_xfer_bytes(x, KVD_XFER_OUT), (uint64_t)SLOTS * BYTES);
        kvd_xfer_free(x);
        kvd_peer_pool_unref(pool);
        munmap(client, (size_t)SLOTS * BYTES);
        free(host);
}
END_TEST

/* A device whose copies record their order; the first one blocks until
 * released, so the later batches queue up behind it. */
static sem_t gate;
static int order[16], n_order;
static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;

static int rec_copy(struct kvd_peer_pool *p, uint32_t slot, void *host, size_t len)
{
        if (slot == 99)
                sem_wait(&gate);
        pthread_mutex_lock(&order_lock);
        order[n_order++] = (int)slot;
        pthread_mutex_unlock(&order_lock);
        return 0;
}

static int rec_copy_out(struct kvd_peer_pool *p, uint32_t slot, const void *host, size_t len)
{
        return rec_copy(p, slot, (void *)host, len);
}

static void rec_close(struct kvd_peer_pool *p)
{
}

START_TEST(priorities)
{
        static const struct kvd_device_ops rec_ops = { "rec", rec_copy, rec_copy_out, rec_close };
        /* A device pool: its copies always go to the workers, small or not. */
        struct kvd_peer_pool pool = { .ops = &rec_ops, .refs = 1, .slot_count = 128, .slot_bytes = 1,
                                      .backend = KVD_BACKEND_CUDA };
        struct kvd_copy blocker = { .slot = 99 }, c[3][2];
        struct kvd_xfer_batch b0 = { 0 }, b[3];
        struct kvd_xfer *x;

        sem_init(&gate, 0, 0);
        n_order = 0;
        n_done = 0;
        ck_assert_int_eq(kvd_xfer_new(1, &x), 0);
        b0 = (struct kvd_xfer_batch){ .pool = &pool, .prio = KVD_PRIO_SPECULATIVE, .copies = &blocker, .n = 1,
                                      .done = count_done };
        kvd_xfer_submit(x, &b0);
        while (1) { /* wait until the only worker is stuck in the blocker */
                usleep(1000);
                pthread_mutex_lock(&order_lock);
                pthread_mutex_unlock(&order_lock);
                if (atomic_load(&b0.next) == 1)
                        break;
        }
        /* Submitted worst first; must run demand, prefetch, speculative. */
        for (int p = 2; p >= 0; p--) {
                c[p][0] = (struct kvd_copy){ .slot = (uint32_t)(p * 10) };
                c[p][1] = (struct kvd_copy){ .slot = (uint32_t)(p * 10 + 1) };
                b[p] = (struct kvd_xfer_batch){ .pool = &pool, .prio = (enum kvd_prio)p, .copies = c[p],
                                                .n = 2, .done = count_done };
                kvd_xfer_submit(x, &b[p]);
        }
        sem_post(&gate);
        wait_reap(x, 4);
        ck_assert_int_eq(n_order, 7);
        ck_assert_int_eq(order[0], 99);
        ck_assert_int_eq(order[1], 0);
        ck_assert_int_eq(order[2], 1);
        ck_assert_int_eq(order[3], 10);
        ck_assert_int_eq(order[4], 11);
        ck_assert_int_eq(order[5], 20);
        ck_assert_int_eq(order[6], 21);
        kvd_xfer_free(x);
        sem_destroy(&gate);
}
END_TEST

/* A small batch of host-memory copies is copied before kvd_xfer_submit()
 * returns (no worker wakes for it); its callback still runs from reap. A
 * large one, or a device pool's, goes to the workers. */
START_TEST(small_batches_inline)
{
        enum { BYTES = 8 << 10, BIG = 64 << 10 };
        static const struct kvd_device_ops rec_ops = { "rec", rec_copy, rec_copy_out, rec_close };
        struct kvd_peer_pool dev = { .ops = &rec_ops, .refs = 1, .slot_count = 128, .slot_bytes = 1,
                                     .backend = KVD_BACKEND_CUDA };
        struct kvd_copy small, big, onto_dev = { .slot = 5 };
        struct kvd_xfer_batch bs, bb, bd;
        struct kvd_peer_pool *pool;
        uint8_t *client, *host = calloc(1, BIG);
        const char *why;
        int fd = sealed_memfd(BIG);
        struct kvd_xfer *x;

        client = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(client, MAP_FAILED);
        memset(client, 0xa5, BIG);
        ck_assert_int_eq(kvd_memfd_pool_open(fd, 1, BIG, &pool, &why), 0);
        close(fd);
        ck_assert_int_eq(kvd_xfer_new(1, &x), 0);
        n_done = 0;
        n_order = 0;
        small = (struct kvd_copy){ host, 0, BYTES, -1, NULL };
        bs = (struct kvd_xfer_batch){ .pool = pool, .dir = KVD_XFER_IN, .copies = &small, .n = 1,
                                      .done = count_done };
        kvd_xfer_submit(x, &bs);
        /* Copied already, reported on reap only. */
        ck_assert_int_eq(small.result, 0);
        ck_assert_mem_eq(host, client, BYTES);
        ck_assert_int_eq(n_done, 0);
        ck_assert_uint_eq(kvd_xfer_inline_batches(x), 1);
        wait_reap(x, 1);
        ck_assert_uint_eq(kvd_xfer_bytes(x, KVD_XFER_IN), BYTES);

        big = (struct kvd_copy){ host, 0, BIG, -1, NULL };
        bb = (struct kvd_xfer_batch){ .pool = pool, .dir = KVD_XFER_OUT, .copies = &big, .n = 1,
                                      .done = count_done };
        kvd_xfer_submit(x, &bb);
        wait_reap(x, 2);
        ck_assert_int_eq(big.result, 0);
        bd = (struct kvd_xfer_batch){ .pool = &dev, .dir = KVD_XFER_OUT, .copies = &onto_dev, .n = 1,
                                      .done = count_done };
        kvd_xfer_submit(x, &bd);
        wait_reap(x, 3);
        ck_assert_int_eq(n_order, 1);
        ck_assert_uint_eq(kvd_xfer_inline_batches(x), 1);
        kvd_xfer_free(x);
        kvd_peer_pool_unref(pool);
        munmap(client, BIG);
        free(host);
}
END_TEST

static Suite *xfer_suite(void)
{
        Suite *s = suite_create("xfer");
        TCase *tc = tcase_create("xfer");

        tcase_add_test(tc, memfd_pool_rules);
        tcase_add_test(tc, round_trip);
        tcase_add_test(tc, priorities);
        tcase_add_test(tc, small_batches_inline);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(xfer_suite)

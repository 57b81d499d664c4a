/* SPDX-License-Identifier: MIT */
/* The no-GPU device backend: the client's pool is a sealed memfd. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "device.h"
#include "log.h"

struct memfd_pool {
        struct kvd_peer_pool pool;
        uint8_t *base;
        size_t len;
        struct memfd_pool *next_free;   /* queued for the janitor */
};

static int memfd_copy_in(struct kvd_peer_pool *p, uint32_t slot, void *host, size_t len)
{
        struct memfd_pool *m = (struct memfd_pool *)p;

        memcpy(host, m->base + (uint64_t)slot * p->slot_bytes, len);
        return 0;
}

static int memfd_copy_out(struct kvd_peer_pool *p, uint32_t slot, const void *host, size_t len)
{
        struct memfd_pool *m = (struct memfd_pool *)p;

        memcpy(m->base + (uint64_t)slot * p->slot_bytes, host, len);
        return 0;
}

/*
 * Unmapping a pool frees its pages when the client has let go of them
 * already (it exited, or closed its memfd first): the kernel then returns
 * the whole pool, ~15 ms of CPU for 64 MiB, in whoever unmaps last. That
 * must not be the event loop, which every client waits for: a janitor
 * thread does the unmapping, one pool after another.
 */
static struct {
        pthread_once_t once;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        struct memfd_pool *head;        /* linked through pool.next_free */
        bool running;
} janitor = { PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false };

static void *janitor_main(void *arg)
{
        (void)arg;
        pthread_mutex_lock(&janitor.lock);
        for (;;) {
                struct memfd_pool *m;

                while (!janitor.head)
                        pthread_cond_wait(&janitor.cond, &janitor.lock);
                m = janitor.head;
                janitor.head = m->next_free;
                pthread_mutex_unlock(&janitor.lock);
                munmap(m->base, m->len);
                free(m);
                pthread_mutex_lock(&janitor.lock);
        }
        return NULL;
}

static void janitor_start(void)
{
        pthread_attr_t a;
        pthread_t t;
        sigset_t all, old;

        /* Signals stay with the loop's signalfd: the thread blocks them all. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        if (pthread_attr_init(&a) == 0 && pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED) == 0 &&
            pthread_create(&t, &a, janitor_main, NULL) == 0)
                janitor.running = true;
        else
                log_warning("cannot start the memfd janitor thread: pools are unmapped on the event loop");
        pthread_attr_destroy(&a);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void memfd_close(struct kvd_peer_pool *p)
{
        struct memfd_pool *m = (struct memfd_pool *)p;

        pthread_once(&janitor.once, janitor_start);
        if (!janitor.running) {
                munmap(m->base, m->len);
                free(m);
                return;
        }
        pthread_mutex_lock(&janitor.lock);
        m->next_free = janitor.head;
        janitor.head = m;
        pthread_cond_signal(&janitor.cond);
        pthread_mutex_unlock(&janitor.lock);
}

static const struct kvd_device_ops memfd_ops = {
        .name = "memfd",
        .copy_in = memfd_copy_in,
        .copy_out = memfd_copy_out,
        .close = memfd_close,
};

int kvd_memfd_map(int fd, uint64_t need, void **ret_base, const char **ret_why)
{
        struct stat st;
        int seals = fcntl(fd, F_GET_SEALS);
        void *base;

        if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
                *ret_why = "the fd must be a memfd sealed with F_SEAL_SHRINK";
                return -EINVAL;
        }
        if (fstat(fd, &st) < 0) {
                *ret_why = "cannot stat the memfd";
                return -errno;
        }
        if ((uint64_t)st.st_size < need || need > SIZE_MAX) {
                *ret_why = "the memfd is smaller than what it must hold";
                return -EMSGSIZE;
        }
        /* The client pays for its pages: a sparse memfd would have the
         * daemon allocate them as it copies (and MAP_POPULATE would do it
         * all here, on the event loop). st_blocks is O(1); what a client
         * can still do (punch holes later) costs us at most need bytes,
         * which max-pool-bytes-per-client bounds (docs/decisions.md). */
        if ((uint64_t)st.st_blocks < (need + 511) / 512) {
                *ret_why = "the memfd's pages are not all allocated (fallocate() it before registering: "
                           "its memory is the client's to pay for)";
                return -EINVAL;
        }
        base = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                *ret_why = "cannot map the memfd (sealed against writes?)";
                return -errno;
        }
        *ret_base = base;
        return 0;
}

int kvd_memfd_pool_open(int fd, uint32_t slot_count, uint64_t slot_bytes,
                        struct kvd_peer_pool **ret, const char **ret_why)
{
        struct memfd_pool *m;
        uint64_t need;
        void *base;
        int r;

        if (slot_count == 0 || slot_bytes == 0 || slot_bytes > (UINT64_MAX / slot_count)) {
                *ret_why = "slot count and slot size must be non-zero";
                return -EINVAL;
        }
        need = (uint64_t)slot_count * slot_bytes;
        r = kvd_memfd_map(fd, need, &base, ret_why);
        if (r < 0)
                return r;
        m = calloc(1, sizeof(*m));
        if (!m) {
                munmap(base, need);
                *ret_why = "out of memory";
                return -ENOMEM;
        }
        m->pool = (struct kvd_peer_pool){ .ops = &memfd_ops, .refs = 1,
                                          .slot_count = slot_count, .slot_bytes = slot_bytes,
                                          .backend = KVD_BACKEND_MEMFD };
        m->base = base;
        m->len = need;
        *ret = &m->pool;
        return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * Per-layer completion counters in a memfd page shared with the daemon: the
 * daemon adds to them as items finish, and wakes futex waiters; the client
 * reads them and sleeps on them without any message.
 */
#include "client-internal.h"
#include "counters-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Loads of the word before sleeping on it: a layer's copy usually lands
 * within microseconds, well under a futex round trip. */
#define SPIN_LOADS 2000

#if defined(__x86_64__) || defined(__i386__)
static inline void cpu_relax(void)
{
        __builtin_ia32_pause();
}
#else
static inline void cpu_relax(void)
{
}
#endif

_public_ int kvc_counters_create(kvc_client *c, uint32_t n, kvc_counters **ret)
{
        Kvdrive__RegisterCounters rc = KVDRIVE__REGISTER_COUNTERS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        kvc_counters *k;
        size_t page, bytes;
        void *base;
        int fd, err;

        if (!c || !ret || n == 0 || n > KVC_COUNTERS_MAX)
                return -EINVAL;
        page = (size_t)sysconf(_SC_PAGESIZE);
        bytes = ((size_t)n * 2 * sizeof(uint32_t) + page - 1) / page * page;

        k = calloc(1, sizeof(*k));
        if (!k)
                return -ENOMEM;
        fd = memfd_create("kvdrive-counters", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) {
                err = -errno;
                goto err_free;
        }
        /* Sealed and allocated like a pool: a page that could shrink under
         * the daemon's mapping would SIGBUS it, and its memory is ours. */
        if (ftruncate(fd, (off_t)bytes) < 0 || fallocate(fd, 0, 0, (off_t)bytes) < 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
                err = -errno;
                goto err_close_fd;
        }
        base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                err = -errno;
                goto err_close_fd;
        }
        k->done = base;
        k->failed = k->done + n;
        k->map_bytes = bytes;
        k->n = n;

        rc.count = n;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_COUNTERS;
        req.register_counters = &rc;
        err = kvc__call(c, &req, fd, KVDRIVE__RESPONSE__BODY_REGISTER_COUNTERS, &resp);
        if (err < 0)
                goto err_close_fd;
        if (!resp->register_counters || resp->register_counters->count != n)
                err = -EBADMSG;
        kvdrive__response__free_unpacked(resp, NULL);
        if (err < 0)
                goto err_close_fd;
        /* The daemon holds its own mapping now. */
        close(fd);
        *ret = k;
        return 0;

err_close_fd:
        close(fd);
err_free:
        kvc_counters_free(k);
        return err;
}

_public_ kvc_counters *kvc_counters_free(kvc_counters *k)
{
        if (!k)
                return NULL;
        if (k->done)
                munmap((void *)k->done, k->map_bytes);
        free(k);
        return NULL;
}

_public_ uint32_t kvc_counter_done(const kvc_counters *k, uint32_t i)
{
        if (!k || i >= k->n)
                return 0;
        return atomic_load_explicit(&k->done[i], memory_order_acquire);
}

_public_ uint32_t kvc_counter_failed(const kvc_counters *k, uint32_t i)
{
        if (!k || i >= k->n)
                return 0;
        return atomic_load_explicit(&k->failed[i], memory_order_acquire);
}

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

_public_ int kvc_counter_wait(const kvc_counters *k, uint32_t i, uint32_t target, int timeout_ms)
{
        _Atomic uint32_t *word;
        uint64_t deadline = 0;
        uint32_t v;

        if (!k || i >= k->n)
                return -EINVAL;
        word = &k->done[i];
        for (int spin = 0; spin < SPIN_LOADS; spin++) {
                v = atomic_load_explicit(word, memory_order_acquire);
                if (kvc__counter_reached(v, target))
                        return 0;
                if (timeout_ms == 0)
                        return -ETIMEDOUT;
                cpu_relax();
        }
        if (timeout_ms > 0)
                deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        for (;;) {
                struct timespec rel, *relp = NULL;

                v = atomic_load_explicit(word, memory_order_acquire);
                if (kvc__counter_reached(v, target))
                        return 0;
                if (timeout_ms > 0) {
                        uint64_t now = now_ns();

                        if (now >= deadline)
                                return -ETIMEDOUT;
                        rel.tv_sec = (time_t)((deadline - now) / 1000000000u);
                        rel.tv_nsec = (long)((deadline - now) % 1000000000u);
                        relp = &rel;
                }
                /* Sleeps only while the word still holds v: an add (and
                 * its wake) after our load makes the wait return at once.
                 * Not FUTEX_PRIVATE_FLAG: the daemon's wake comes from
                 * another process. EAGAIN / EINTR / ETIMEDOUT: look again. */
                syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, v, relp, NULL, 0);
        }
}

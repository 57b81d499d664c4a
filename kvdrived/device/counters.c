/* SPDX-License-Identifier: MIT */
#include "counters.h"
#include "device.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int kvd_counters_open(int fd, uint32_t count, struct kvd_counters **ret, const char **ret_why)
{
        struct kvd_counters *k;
        size_t need;
        void *base;
        int r;

        if (count == 0 || count > KVD_COUNTERS_MAX) {
                *ret_why = "counter count must be 1-4096";
                return -EINVAL;
        }
        need = (size_t)count * 2 * sizeof(uint32_t);   /* done[count], failed[count] */
        r = kvd_memfd_map(fd, need, &base, ret_why);
        if (r < 0)
                return r;
        k = calloc(1, sizeof(*k));
        if (!k) {
                munmap(base, need);
                *ret_why = "out of memory";
                return -ENOMEM;
        }
        k->refs = 1;
        k->count = count;
        k->done = base;
        k->failed = k->done + count;
        k->map_bytes = need;
        *ret = k;
        return 0;
}

struct kvd_counters *kvd_counters_unref(struct kvd_counters *k)
{
        if (k && --k->refs == 0) {
                munmap((void *)k->done, k->map_bytes);
                free(k);
        }
        return NULL;
}

void kvd_counter_signal(_Atomic uint32_t *word)
{
        /* Not FUTEX_PRIVATE_FLAG: waiters are other processes, which map
         * the page at other addresses. */
        syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void kvd_counters_bump(struct kvd_counters *k, uint32_t counter, bool ok)
{
        _Atomic uint32_t *done = kvd_counters_done_word(k, counter);

        if (!ok)
                atomic_fetch_add_explicit(&k->failed[counter - 1], 1, memory_order_release);
        atomic_fetch_add_explicit(done, 1, memory_order_release);
        kvd_counter_signal(done);
}

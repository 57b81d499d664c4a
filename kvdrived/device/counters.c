/* SPDX-License-Identifier: MIT */
#include "counters.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int kvd_counters_open(int fd, uint32_t count, struct kvd_counters **ret, const char **ret_why)
{
        struct kvd_counters *k;
        struct stat st;
        size_t need;
        int seals;
        void *base;

        if (count == 0 || count > KVD_COUNTERS_MAX) {
                *ret_why = "counter count must be 1-4096";
                return -EINVAL;
        }
        need = (size_t)count * 2 * sizeof(uint32_t);
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
                *ret_why = "counter page fd must be a memfd sealed with F_SEAL_SHRINK";
                return -EINVAL;
        }
        if (fstat(fd, &st) < 0) {
                *ret_why = "cannot stat counter page fd";
                return -errno;
        }
        if ((uint64_t)st.st_size < need) {
                *ret_why = "counter page memfd is smaller than 2 * count * 4 bytes";
                return -EMSGSIZE;
        }
        base = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (base == MAP_FAILED) {
                *ret_why = "cannot map counter page memfd (sealed against writes?)";
                return -errno;
        }
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

/* SPDX-License-Identifier: MIT */
/*
 * Back-end choice: once per process, from CPUID, before the first kernel
 * runs (pthread_once). KVK_FORCE_SCALAR=1 forces the scalar back end;
 * kvk_set_backend() overrides the choice for tests and benchmarks.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kernels-internal.h"

static pthread_once_t ops_once = PTHREAD_ONCE_INIT;
static _Atomic(const struct kvk_ops *) ops_cur;

static bool cpu_has_avx2(void)
{
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static bool cpu_has_f16c(void)
{
        /* Not every compiler knows "f16c" for __builtin_cpu_supports: read
         * CPUID leaf 1, ECX bit 29. */
        unsigned int eax, ebx, ecx, edx;

        __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
        return (ecx >> 29) & 1u;
}

static bool force_scalar(void)
{
        const char *e = secure_getenv("KVK_FORCE_SCALAR");

        return e && e[0] && strcmp(e, "0") != 0;
}

static const struct kvk_ops *ops_avx2(void)
{
        return cpu_has_f16c() ? &kvk__ops_avx2 : &kvk__ops_avx2_nof16c;
}

static const struct kvk_ops *ops_auto(void)
{
        if (!force_scalar() && cpu_has_avx2())
                return ops_avx2();
        return &kvk__ops_scalar;
}

static void ops_init(void)
{
        atomic_store_explicit(&ops_cur, ops_auto(), memory_order_release);
}

const struct kvk_ops *kvk__ops(void)
{
        pthread_once(&ops_once, ops_init);
        return atomic_load_explicit(&ops_cur, memory_order_acquire);
}

const char *kvk_backend_name(void)
{
        return kvk__ops()->name;
}

int kvk_set_backend(const char *name)
{
        const struct kvk_ops *o;

        if (!name)
                return -EINVAL;
        pthread_once(&ops_once, ops_init);
        if (strcmp(name, "auto") == 0) {
                o = ops_auto();
        } else if (strcmp(name, "scalar") == 0) {
                o = &kvk__ops_scalar;
        } else if (strcmp(name, "avx2") == 0 || strcmp(name, "avx2-nof16c") == 0) {
                if (!cpu_has_avx2())
                        return -ENOTSUP;
                o = name[4] ? &kvk__ops_avx2_nof16c : ops_avx2();
        } else {
                return -EINVAL;
        }
        atomic_store_explicit(&ops_cur, o, memory_order_release);
        return 0;
}

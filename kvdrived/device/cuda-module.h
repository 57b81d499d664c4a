/* SPDX-License-Identifier: MIT */
/*
 * The contract between kvdrived and its CUDA module (kvdrive-cuda.so, built
 * from cuda.c only where nvcc exists, linked with the static CUDA runtime).
 * kvdrived links no CUDA library: cuda-loader.c dlopen()s the module and
 * calls its one exported symbol, KVD_CUDA_MODULE_SYMBOL.
 *
 * The module never calls back into the daemon except through the ctx
 * callbacks, so it needs no symbol of the executable. The daemon never
 * dlclose()s it: CUDA's runtime does not survive being unloaded.
 *
 * Threading: init, pool_open, describe and shutdown run on the event-loop
 * thread; the pools' copy_in/copy_out on transfer workers; a pool's close
 * on whichever thread drops its last reference (the event loop).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "device.h"

/* Bumped whenever a struct below or the meaning of a call changes. */
#define KVD_CUDA_MODULE_VERSION 1
#define KVD_CUDA_MODULE_SYMBOL  "kvd_cuda_module_init"

/* Host memory cudaHostRegister() pins is cut in pieces of at most this. */
#define KVD_CUDA_PIN_PIECE_MAX (UINT64_C(64) << 30)

struct kvd_cuda_host_ctx {
        uint32_t version;               /* KVD_CUDA_MODULE_VERSION */
        uint32_t size;                  /* sizeof(struct kvd_cuda_host_ctx) */
        /* The host tier, to page-lock: [base, base + len), in pieces that
         * are multiples of align (a host page never spans two pieces). */
        void *host_base;
        uint64_t host_len;
        uint64_t host_align;
        int host_numa_node;             /* configured binding, -1 for none */
        /* Logging (syslog priorities), formatted by the module. */
        void (*log)(int priority, const char *msg);
};

struct kvd_cuda_module_ops {
        uint32_t version;               /* KVD_CUDA_MODULE_VERSION */
        /* Opens (cudaIpcOpenMemHandle) a pool; 0 or -errno with why set. */
        int (*pool_open)(const struct kvd_cuda_pool_spec *spec, struct kvd_peer_pool **ret,
                         char *why, size_t why_size);
        /* What the module runs on, for stats ("2 GPUs, host pool pinned..."). */
        void (*describe)(char *buf, size_t size);
        /* Unpins the host pool and drops the streams. Every pool is closed. */
        void (*shutdown)(void);
};

/*
 * The module's entry point. Checks ctx->version, finds the devices and pins
 * the host pool. Returns 0 with *ret set, -ENOTSUP (version mismatch),
 * -ENODEV (no CUDA device or driver), or -errno; why says which.
 */
typedef int (*kvd_cuda_module_init_fn)(const struct kvd_cuda_host_ctx *ctx,
                                       const struct kvd_cuda_module_ops **ret, char *why,
                                       size_t why_size);
int kvd_cuda_module_init(const struct kvd_cuda_host_ctx *ctx, const struct kvd_cuda_module_ops **ret,
                         char *why, size_t why_size);

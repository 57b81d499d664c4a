/* SPDX-License-Identifier: MIT */
/*
 * Shared by the GPU suites (header-only: each suite is one program).
 *
 * CUDA does not survive fork(): a process that initialised it must not use
 * it in a child. So the test process itself never calls CUDA: the device
 * probe runs in a forked child, and every client that touches the GPU is a
 * forked child (e2e_fork) that initialises CUDA for itself.
 */
#pragma once

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client-cuda.h>

#include "common.h"

#define GPU_SKIP 77

/* CHILD_ASSERT for a CUDA call. */
#define CHILD_CUDA(call)                                                                \
        do {                                                                            \
                cudaError_t gpu_e_ = (call);                                            \
                CHILD_ASSERT(gpu_e_ == cudaSuccess, "%s", cudaGetErrorString(gpu_e_));  \
        } while (0)

/*
 * Exits 77 with a clear message when no CUDA device is usable (probed in a
 * child, see above). With KVD_GPU_REQUIRED=1 (tests/gpu/device-check.sh) a
 * missing GPU is a failure instead of a skip.
 */
static inline void gpu_require(const char *suite)
{
        int status = 0, n;
        pid_t pid = fork();

        if (pid == 0) {
                cudaError_t e = cudaGetDeviceCount(&n);

                if (e != cudaSuccess || n <= 0) {
                        fprintf(stderr, "SKIP %s: no CUDA device (%s)\n", suite,
                                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
                        _exit(GPU_SKIP);
                }
                _exit(0);
        }
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                const char *req = getenv("KVD_GPU_REQUIRED");

                if (req && *req == '1') {
                        fprintf(stderr, "%s: KVD_GPU_REQUIRED=1 but no usable CUDA device\n", suite);
                        exit(EXIT_FAILURE);
                }
                exit(GPU_SKIP);
        }
}

/* A main() for a GPU suite: skip (77) without a GPU, else as KVD_CHECK_MAIN.
 * meson runs these with protocol 'exitcode' (a TAP plan cannot say 77). */
#define KVD_GPU_MAIN(name, suite_fn)                                    \
        int main(void)                                                  \
        {                                                               \
                SRunner *sr;                                            \
                int failed;                                             \
                gpu_require(name);                                      \
                sr = srunner_create(suite_fn());                        \
                srunner_set_tap(sr, "-");                               \
                srunner_run_all(sr, CK_SILENT);                         \
                failed = srunner_ntests_failed(sr);                     \
                srunner_free(sr);                                       \
                return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;       \
        }

/*
 * In a child: cudaMalloc n_allocs allocations of slots_each slots, register
 * them as one CUDA pool. *ret_bases gets the allocations (free them with
 * cudaFree after the pool is freed). Returns 0 or a CHILD_ASSERT failure.
 */
static inline int gpu_pool(kvc_client *c, uint32_t n_allocs, uint32_t slots_each, uint64_t slot_bytes,
                           void **ret_bases, kvc_pool **ret)
{
        struct kvc_cuda_alloc a[8];
        struct kvc_cuda_pool_opts o;
        int rc;

        CHILD_ASSERT(n_allocs <= 8, "at most 8 allocations");
        for (uint32_t i = 0; i < n_allocs; i++) {
                CHILD_CUDA(cudaMalloc(&ret_bases[i], slots_each * slot_bytes));
                CHILD_ASSERT(kvc_cuda_alloc_fill(&a[i], ret_bases[i], slots_each) == 0, "IPC handle: %s",
                             cudaGetErrorString(cudaGetLastError()));
        }
        CHILD_ASSERT(kvc_cuda_pool_opts_fill(&o) == 0, "device: %s", cudaGetErrorString(cudaGetLastError()));
        rc = kvc_pool_register_cuda(c, a, n_allocs, slot_bytes, &o, ret);
        CHILD_ASSERT(rc == 0, "kvc_pool_register_cuda: %s (%s)", kvc_strerror(rc), kvc_last_error(c));
        return 0;
}

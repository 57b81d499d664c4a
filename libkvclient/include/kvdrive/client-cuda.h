/* SPDX-License-Identifier: MIT */
/*
 * Header-only CUDA helpers for kvc_pool_register_cuda(), for code that
 * already includes the CUDA runtime headers and links the CUDA runtime.
 * libkvclient itself never calls CUDA: these functions run in the caller and
 * hand it the IPC handles as bytes.
 *
 *     void *d;
 *     struct kvc_cuda_alloc a;
 *     struct kvc_cuda_pool_opts o;
 *     cudaMalloc(&d, slots * slot_bytes);
 *     kvc_cuda_alloc_fill(&a, d, slots);
 *     kvc_cuda_pool_opts_fill(&o);
 *     kvc_pool_register_cuda(c, &a, 1, slot_bytes, &o, &pool);
 */
#pragma once

#include <cuda_runtime_api.h>
#include <errno.h>
#include <string.h>

#include "kvdrive/client.h"

#ifdef __cplusplus
extern "C" {
#endif

_Static_assert(sizeof(cudaIpcMemHandle_t) == KVC_CUDA_IPC_HANDLE_BYTES, "cudaIpcMemHandle_t size");
_Static_assert(sizeof(cudaIpcEventHandle_t) == KVC_CUDA_IPC_HANDLE_BYTES, "cudaIpcEventHandle_t size");

/*
 * Describes the allocation d_base (as cudaMalloc returned it: IPC handles
 * name whole allocations) holding slot_count slots from its start. Returns
 * 0, or -EIO when cudaIpcGetMemHandle fails (cudaGetLastError() says why).
 */
static inline int kvc_cuda_alloc_fill(struct kvc_cuda_alloc *a, void *d_base, uint32_t slot_count)
{
        cudaIpcMemHandle_t h;

        if (cudaIpcGetMemHandle(&h, d_base) != cudaSuccess)
                return -EIO;
        memset(a, 0, sizeof(*a));
        memcpy(a->ipc_handle, &h, sizeof(h));
        a->dev_ptr = d_base;
        a->slot_count = slot_count;
        return 0;
}

/* Fills opts for the current device (ordinal and PCI bus id), no events.
 * Returns 0 or -EIO. */
static inline int kvc_cuda_pool_opts_fill(struct kvc_cuda_pool_opts *o)
{
        memset(o, 0, sizeof(*o));
        o->size = sizeof(*o);
        if (cudaGetDevice(&o->device) != cudaSuccess ||
            cudaDeviceGetPCIBusId(o->pci_bus_id, (int)sizeof(o->pci_bus_id), o->device) != cudaSuccess)
                return -EIO;
        return 0;
}

/* The IPC handle of an event created with cudaEventInterprocess |
 * cudaEventDisableTiming, into h. Returns 0 or -EIO. */
static inline int kvc_cuda_event_handle(cudaEvent_t ev, unsigned char h[KVC_CUDA_IPC_HANDLE_BYTES])
{
        cudaIpcEventHandle_t eh;

        if (cudaIpcGetEventHandle(&eh, ev) != cudaSuccess)
                return -EIO;
        memcpy(h, &eh, sizeof(eh));
        return 0;
}

#ifdef __cplusplus
}
#endif

/* SPDX-License-Identifier: MIT */
/* Device pools: a memfd (the no-GPU backend), or GPU memory the caller
 * allocated and shares with CUDA IPC handles (passed through as bytes). */
#include "client-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

_public_ int kvc_pool_create(kvc_client *c, uint32_t slot_count, uint64_t slot_bytes,
                             kvc_pool **ret)
{
        Kvdrive__RegisterPool rp = KVDRIVE__REGISTER_POOL__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        uint64_t bytes, page;
        kvc_pool *p;
        int fd, err;

        if (!c || !ret || slot_count == 0 || slot_bytes == 0)
                return -EINVAL;
        page = (uint64_t)sysconf(_SC_PAGESIZE);
        if (__builtin_mul_overflow((uint64_t)slot_count, slot_bytes, &bytes) ||
            bytes > (uint64_t)INT64_MAX - page || bytes > SIZE_MAX - page)
                return -EOVERFLOW;
        bytes = (bytes + page - 1) / page * page;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->base = MAP_FAILED;
        p->slot_count = slot_count;
        p->slot_bytes = slot_bytes;

        fd = memfd_create("kvdrive-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) {
                err = -errno;
                goto err_free_pool;
        }
        /* The daemon requires the size sealed (a pool that can shrink under
         * its mapping would SIGBUS it) and the pages allocated: they are
         * ours to pay for, not the daemon's (fallocate charges them to us
         * now, and fails here, not in the data path, when memory is short). */
        if (ftruncate(fd, (off_t)bytes) < 0 || fallocate(fd, 0, 0, (off_t)bytes) < 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
                err = -errno;
                goto err_close_fd;
        }
        p->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p->base == MAP_FAILED) {
                err = -errno;
                goto err_close_fd;
        }
        p->map_bytes = bytes;

        rp.backend = KVDRIVE__BACKEND__BACKEND_MEMFD;
        rp.slot_count = slot_count;
        rp.slot_bytes = slot_bytes;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_POOL;
        req.register_pool = &rp;
        err = kvc__call(c, &req, fd, KVDRIVE__RESPONSE__BODY_REGISTER_POOL, &resp);
        if (err < 0)
                goto err_close_fd;
        if (!resp->register_pool) {
                err = -EBADMSG;
                goto err_free_resp;
        }
        p->id = resp->register_pool->pool_id;
        kvdrive__response__free_unpacked(resp, NULL);
        /* The daemon holds its own fd now; the mapping keeps ours alive. */
        close(fd);
        *ret = p;
        return 0;

err_free_resp:
        kvdrive__response__free_unpacked(resp, NULL);
err_close_fd:
        close(fd);
err_free_pool:
        kvc_pool_free(p);
        return err;
}

/* Builds the RegisterPool of a CUDA pool; frees nothing of the caller's.
 * The message points into allocs and opts; *ret_mem holds what it owns. */
static int cuda_register_msg(const struct kvc_cuda_alloc *allocs, uint32_t n_allocs, uint32_t slot_count,
                             uint64_t slot_bytes, const struct kvc_cuda_pool_opts *opts,
                             Kvdrive__RegisterPool *rp, void **ret_mem)
{
        Kvdrive__CudaAllocation *ca, **cap;
        ProtobufCBinaryData *ev;
        size_t n_ev = opts->n_event_handles;
        uint8_t *mem;

        mem = calloc(1, n_allocs * (sizeof(*ca) + sizeof(*cap)) + n_ev * sizeof(*ev));
        if (!mem)
                return -ENOMEM;
        ca = (Kvdrive__CudaAllocation *)mem;
        cap = (Kvdrive__CudaAllocation **)(ca + n_allocs);
        ev = (ProtobufCBinaryData *)(cap + n_allocs);
        for (uint32_t i = 0; i < n_allocs; i++) {
                kvdrive__cuda_allocation__init(&ca[i]);
                ca[i].ipc_mem_handle.data = (uint8_t *)allocs[i].ipc_handle;
                ca[i].ipc_mem_handle.len = KVC_CUDA_IPC_HANDLE_BYTES;
                ca[i].slot_count = allocs[i].slot_count;
                ca[i].offset = allocs[i].offset;
                cap[i] = &ca[i];
        }
        for (size_t i = 0; i < n_ev; i++)
                ev[i] = (ProtobufCBinaryData){ KVC_CUDA_IPC_HANDLE_BYTES, (uint8_t *)opts->event_handles[i] };
        rp->backend = KVDRIVE__BACKEND__BACKEND_CUDA;
        rp->slot_count = slot_count;
        rp->slot_bytes = slot_bytes;
        rp->n_cuda_allocations = n_allocs;
        rp->cuda_allocations = cap;
        rp->cuda_device = opts->device;
        rp->cuda_pci_bus_id = (char *)opts->pci_bus_id;
        rp->n_cuda_event_handles = n_ev;
        rp->cuda_event_handles = ev;
        *ret_mem = mem;
        return 0;
}

_public_ int kvc_pool_register_cuda(kvc_client *c, const struct kvc_cuda_alloc *allocs, uint32_t n_allocs,
                                    uint64_t slot_bytes, const struct kvc_cuda_pool_opts *opts, kvc_pool **ret)
{
        Kvdrive__RegisterPool rp = KVDRIVE__REGISTER_POOL__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        uint64_t slots = 0, span;
        void *mem = NULL;
        kvc_pool *p;
        int err;

        if (!c || !allocs || n_allocs == 0 || slot_bytes == 0 || !opts || !ret ||
            opts->size < sizeof(*opts) || (opts->n_event_handles && !opts->event_handles) ||
            !memchr(opts->pci_bus_id, 0, sizeof(opts->pci_bus_id)))
                return -EINVAL;
        for (uint32_t i = 0; i < n_allocs; i++) {
                if (!allocs[i].dev_ptr || allocs[i].slot_count == 0 ||
                    __builtin_mul_overflow((uint64_t)allocs[i].slot_count, slot_bytes, &span) ||
                    span > UINTPTR_MAX - allocs[i].offset - (uintptr_t)allocs[i].dev_ptr)
                        return -EINVAL;
                slots += allocs[i].slot_count;
        }
        if (slots > UINT32_MAX)
                return -EOVERFLOW;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->base = MAP_FAILED;
        p->slot_count = (uint32_t)slots;
        p->slot_bytes = slot_bytes;
        p->dev = calloc(n_allocs, sizeof(*p->dev));
        if (!p->dev) {
                err = -ENOMEM;
                goto err_free_pool;
        }
        p->n_dev = n_allocs;
        for (uint32_t i = 0, first = 0; i < n_allocs; first += allocs[i].slot_count, i++)
                p->dev[i] = (struct kvc_pool_dev){ (uint8_t *)allocs[i].dev_ptr + allocs[i].offset, first };

        err = cuda_register_msg(allocs, n_allocs, (uint32_t)slots, slot_bytes, opts, &rp, &mem);
        if (err < 0)
                goto err_free_pool;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_POOL;
        req.register_pool = &rp;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_REGISTER_POOL, &resp);
        free(mem);
        if (err < 0)
                goto err_free_pool;
        if (!resp->register_pool) {
                err = -EBADMSG;
                kvdrive__response__free_unpacked(resp, NULL);
                goto err_free_pool;
        }
        p->id = resp->register_pool->pool_id;
        kvdrive__response__free_unpacked(resp, NULL);
        *ret = p;
        return 0;

err_free_pool:
        kvc_pool_free(p);
        return err;
}

_public_ kvc_pool *kvc_pool_free(kvc_pool *p)
{
        if (!p)
                return NULL;
        if (p->base != MAP_FAILED)
                munmap(p->base, p->map_bytes);
        free(p->dev);
        free(p);
        return NULL;
}

_public_ void *kvc_pool_slot(const kvc_pool *p, uint32_t slot)
{
        uint32_t lo = 0, hi;

        if (!p || slot >= p->slot_count)
                return NULL;
        if (!p->dev)
                return (uint8_t *)p->base + (size_t)slot * p->slot_bytes;
        /* The last allocation whose first slot is <= slot. */
        hi = p->n_dev;
        while (hi - lo > 1) {
                uint32_t mid = lo + (hi - lo) / 2;

                if (p->dev[mid].first_slot <= slot)
                        lo = mid;
                else
                        hi = mid;
        }
        return p->dev[lo].slot0 + (size_t)(slot - p->dev[lo].first_slot) * p->slot_bytes;
}

_public_ uint32_t kvc_pool_id(const kvc_pool *p)
{
        return p ? p->id : 0;
}

_public_ uint32_t kvc_pool_slot_count(const kvc_pool *p)
{
        return p ? p->slot_count : 0;
}

_public_ uint64_t kvc_pool_slot_bytes(const kvc_pool *p)
{
        return p ? p->slot_bytes : 0;
}

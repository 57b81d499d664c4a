/* SPDX-License-Identifier: MIT */
/* The memfd "device pool": the no-GPU backend of a client's slots. */
#include "client-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
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
        /* The daemon requires the size sealed: a pool that can shrink under
         * its mapping would SIGBUS it. */
        if (ftruncate(fd, (off_t)bytes) < 0 ||
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

_public_ kvc_pool *kvc_pool_free(kvc_pool *p)
{
        if (!p)
                return NULL;
        if (p->base != MAP_FAILED)
                munmap(p->base, p->map_bytes);
        free(p);
        return NULL;
}

_public_ void *kvc_pool_slot(const kvc_pool *p, uint32_t slot)
{
        if (!p || slot >= p->slot_count)
                return NULL;
        return (uint8_t *)p->base + (size_t)slot * p->slot_bytes;
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

/* SPDX-License-Identifier: MIT */
/*
 * A client's "device pool" as the daemon sees it: slot_count slots of
 * slot_bytes each, in memory the client shares once at registration. Each
 * backend (memfd, CUDA) fills kvd_device_ops; nothing above this header
 * knows which one runs.
 *
 * Threading: open/ref/unref run on the event-loop thread; copy_in/copy_out
 * run on transfer workers, concurrently, on distinct slots. A pool stays
 * mapped while any reference (its session, a transfer batch) is held.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kvd_backend {
        KVD_BACKEND_MEMFD = 0,
        KVD_BACKEND_CUDA = 1,
};

struct kvd_peer_pool;

struct kvd_device_ops {
        const char *name;
        /* Copies len bytes of slot into host memory (device -> host). */
        int (*copy_in)(struct kvd_peer_pool *p, uint32_t slot, void *host, size_t len);
        /* Copies len bytes of host memory into slot (host -> device). */
        int (*copy_out)(struct kvd_peer_pool *p, uint32_t slot, const void *host, size_t len);
        void (*close)(struct kvd_peer_pool *p);
};

struct kvd_peer_pool {
        const struct kvd_device_ops *ops;
        unsigned refs;
        uint32_t slot_count;
        uint64_t slot_bytes;
        enum kvd_backend backend;
};

/*
 * Maps need bytes of the client's memfd fd shared and read-write (the caller
 * keeps and closes fd; munmap() undoes it). The fd must be sealed against
 * shrinking (F_SEAL_SHRINK) and hold at least need bytes, so that the client
 * can never make the daemon fault on the mapping, with at least need bytes
 * of pages allocated (st_blocks), so that the client pays for them. O(1):
 * nothing is populated. Returns 0, -EINVAL (not a sealed memfd, or pages
 * not allocated), -EMSGSIZE (too small) or -errno, with *ret_why
 * (static) naming the problem. Shared by memfd pools and counter pages.
 */
int kvd_memfd_map(int fd, uint64_t need, void **ret_base, const char **ret_why);

/*
 * Opens a memfd pool from fd (the daemon takes its own mapping; the caller
 * keeps and closes fd). The fd must be a memfd sealed against shrinking
 * (F_SEAL_SHRINK) and hold slot_count * slot_bytes bytes, allocated
 * (kvd_memfd_map()), so that the client can never make the daemon fault on
 * its mapping nor pay for its pages.
 * Returns 0 or -EINVAL (not a sealed memfd, pages not allocated), -EMSGSIZE
 * (too small), -errno.
 * On error *ret_why names the problem (static string).
 */
int kvd_memfd_pool_open(int fd, uint32_t slot_count, uint64_t slot_bytes,
                        struct kvd_peer_pool **ret, const char **ret_why);

/* ---- CUDA ------------------------------------------------------------
 * The CUDA backend is a module (kvdrive-cuda.so) loaded with dlopen() the
 * first time a client registers a CUDA pool, so that the daemon starts and
 * serves memfd pools on hosts without CUDA libraries (cuda-loader.c; the
 * module's side of the contract is cuda-module.h).
 */
#define KVD_CUDA_HANDLE_BYTES 64        /* cudaIpcMemHandle_t, cudaIpcEventHandle_t */
#define KVD_CUDA_BUS_ID_MAX   32        /* "0000:17:00.0" and then some */

/* One allocation of a CUDA pool: its slots follow those of the previous. */
struct kvd_cuda_alloc {
        uint8_t handle[KVD_CUDA_HANDLE_BYTES];
        uint32_t slot_count;
        uint64_t offset;                /* of slot 0 from the allocation base */
};

/* A CUDA pool as the client described it, already checked for shape by the
 * dispatcher (counts add up, sizes do not overflow). */
struct kvd_cuda_pool_spec {
        int device;                     /* ordinal, used when pci_bus_id is "" */
        const char *pci_bus_id;         /* never NULL */
        const struct kvd_cuda_alloc *allocs;
        uint32_t n_allocs;
        uint32_t slot_count;            /* sum of the allocations' */
        uint64_t slot_bytes;
        const uint8_t (*events)[KVD_CUDA_HANDLE_BYTES]; /* per layer, may be NULL */
        uint32_t n_events;
};

struct kvd_cuda;

/* Remembers where the module is and which host memory it must page-lock;
 * loads nothing yet. module_path is copied. */
int kvd_cuda_new(const char *module_path, void *host_base, uint64_t host_len, uint64_t host_align,
                 int host_numa_node, struct kvd_cuda **ret);

/* Shuts the module down (unpins the host pool). Call once no pool is open
 * and no copy runs: after the transfer engine is freed. Accepts NULL. */
struct kvd_cuda *kvd_cuda_free(struct kvd_cuda *c);

/*
 * Opens a CUDA pool, loading the module (and pinning the host pool) first
 * if this is the first. Returns 0, -ENOENT (module missing or unloadable),
 * -ENODEV (no usable CUDA device), -EINVAL / -EMSGSIZE (a bad handle, an
 * allocation smaller than its slots), or -errno; why (why_size bytes) then
 * says what went wrong. A failure to load is remembered: later calls fail
 * the same way without trying again.
 */
int kvd_cuda_pool_open(struct kvd_cuda *c, const struct kvd_cuda_pool_spec *spec,
                       struct kvd_peer_pool **ret, char *why, size_t why_size);

/* Whether the module is loaded and has a device. */
bool kvd_cuda_ready(const struct kvd_cuda *c);

/* One line for stats: "not loaded ...", "unavailable: ...", "ready: ...". */
const char *kvd_cuda_status(const struct kvd_cuda *c);

static inline struct kvd_peer_pool *kvd_peer_pool_ref(struct kvd_peer_pool *p)
{
        p->refs++;
        return p;
}

/* Drops a reference; the last one closes the pool. Accepts NULL. */
static inline struct kvd_peer_pool *kvd_peer_pool_unref(struct kvd_peer_pool *p)
{
        if (p && --p->refs == 0)
                p->ops->close(p);
        return NULL;
}

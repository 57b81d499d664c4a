/* SPDX-License-Identifier: MIT */
/*
 * A client's "device pool" as the daemon sees it: slot_count slots of
 * slot_bytes each, in memory the client shares once at registration. Each
 * backend (memfd now, CUDA later) fills kvd_device_ops; nothing above this
 * header knows which one runs.
 *
 * Threading: open/ref/unref run on the event-loop thread; copy_in/copy_out
 * run on transfer workers, concurrently, on distinct slots. A pool stays
 * mapped while any reference (its session, a transfer batch) is held.
 */
#pragma once

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
};

/*
 * Opens a memfd pool from fd (the daemon takes its own mapping; the caller
 * keeps and closes fd). The fd must be a memfd sealed against shrinking
 * (F_SEAL_SHRINK) and hold slot_count * slot_bytes bytes, so that the client
 * can never make the daemon fault on its mapping.
 * Returns 0 or -EINVAL (not a sealed memfd), -EMSGSIZE (too small), -errno.
 * On error *ret_why names the problem (static string).
 */
int kvd_memfd_pool_open(int fd, uint32_t slot_count, uint64_t slot_bytes,
                        struct kvd_peer_pool **ret, const char **ret_why);

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

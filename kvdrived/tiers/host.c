/* SPDX-License-Identifier: MIT */
#include "host.h"

#include <errno.h>
#include <inttypes.h>
#include <numa.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "macro.h"
#include "slab.h"

#define HUGE_2M (2u << 20)

struct kvd_host {
        struct kvd_tier tier;
        struct kvd_slab *slab;
        uint8_t *base;
        uint64_t len;
        void *map;              /* what to munmap */
        uint64_t map_len;
        bool locked, huge;
};

static struct kvd_host *to_host(struct kvd_tier *t)
{
        return container_of(t, struct kvd_host, tier);
}

static const struct kvd_host *to_host_const(const struct kvd_tier *t)
{
        return container_of(t, const struct kvd_host, tier);
}

static int host_class_for(struct kvd_tier *t, uint64_t bytes)
{
        return kvd_slab_class_for(to_host(t)->slab, bytes);
}

static int host_alloc(struct kvd_tier *t, int klass, uint32_t *ret_loc)
{
        return kvd_slab_alloc(to_host(t)->slab, klass, ret_loc, NULL);
}

static void host_free(struct kvd_tier *t, uint32_t loc)
{
        kvd_slab_release(to_host(t)->slab, loc);
}

static void host_usage(const struct kvd_tier *t, struct kvd_tier_usage *ret)
{
        kvd_slab_usage(to_host_const(t)->slab, &ret->capacity_bytes, &ret->used_bytes, &ret->blocks);
}

static struct kvd_tier *host_destroy(struct kvd_tier *t)
{
        struct kvd_host *h;

        if (!t)
                return NULL;
        h = to_host(t);
        if (h->map)
                munmap(h->map, h->map_len);
        kvd_slab_free(h->slab);
        free(h);
        return NULL;
}

static const struct kvd_tier_ops host_ops = {
        .name = "host",
        .class_for = host_class_for,
        .alloc = host_alloc,
        .free = host_free,
        .usage = host_usage,
        .destroy = host_destroy,
};

/* Maps len bytes aligned to 2 MiB: MAP_HUGETLB if the system has reserved
 * huge pages, else ordinary pages with transparent huge pages advised. */
static int map_pool(struct kvd_host *h, uint64_t len, bool want_huge)
{
        uint8_t *p;
        uintptr_t a;

        if (want_huge) {
                p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
                if (p != MAP_FAILED) {
                        h->map = h->base = p;
                        h->map_len = len;
                        h->huge = true;
                        return 0;
                }
                log_debug("no hugetlb pages for the host pool (%m); using transparent huge pages");
        }
        p = mmap(NULL, len + HUGE_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return -errno;
        h->map = p;
        h->map_len = len + HUGE_2M;
        a = ALIGN_UP((uintptr_t)p, HUGE_2M);
        h->base = (uint8_t *)a;
        if (want_huge)
                (void)madvise(h->base, len, MADV_HUGEPAGE);
        return 0;
}

int kvd_host_new(const struct kvd_config *cfg, struct kvd_host **ret)
{
        struct kvd_host *h;
        uint64_t len;
        int r;

        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->tier.ops = &host_ops;
        len = cfg->host_bytes / cfg->host_extent_bytes * cfg->host_extent_bytes;
        h->len = len;
        r = kvd_slab_new((uint32_t)(len / cfg->host_extent_bytes), cfg->host_extent_bytes, 0, &h->slab);
        if (r < 0) {
                log_error("cannot index a host pool of %" PRIu64 " bytes: %s", len, strerror(-r));
                goto err_free;
        }
        r = map_pool(h, len, cfg->host_hugepages);
        if (r < 0) {
                log_error("cannot map a host pool of %" PRIu64 " bytes: %s", len, strerror(-r));
                goto err_free;
        }
        if (cfg->host_numa_node >= 0) {
                if (numa_available() < 0 || cfg->host_numa_node > numa_max_node()) {
                        log_error("NUMA node %d is not available", cfg->host_numa_node);
                        r = -ENODEV;
                        goto err_free;
                }
                numa_tonode_memory(h->base, len, cfg->host_numa_node);
        }
        if (cfg->host_lock != KVD_LOCK_OFF) {
                if (mlock(h->base, len) == 0) {
                        h->locked = true;
                } else if (cfg->host_lock == KVD_LOCK_REQUIRED) {
                        r = -errno;
                        log_error("cannot mlock %" PRIu64 " bytes of host pool: %s (raise LimitMEMLOCK / ulimit -l)",
                                  len, strerror(-r));
                        goto err_free;
                } else {
                        log_warning("cannot mlock the host pool (%m): running unpinned; raise ulimit -l "
                                    "or LimitMEMLOCK= for pinned memory");
                }
        }
        if (!h->locked && madvise(h->base, len, MADV_POPULATE_WRITE) < 0)
                memset(h->base, 0, len); /* kernels before 5.14: fault it in now, not in the data path */
        log_info("host tier: %" PRIu64 " MiB in %u extents of %" PRIu64 " KiB, %s, %s%s", len >> 20,
                 kvd_slab_extent_count(h->slab), cfg->host_extent_bytes >> 10, h->huge ? "hugetlb pages" : "4K/THP pages",
                 h->locked ? "locked" : "NOT locked",
                 cfg->host_numa_node >= 0 ? ", NUMA-bound" : "");
        *ret = h;
        return 0;

err_free:
        host_destroy(&h->tier);
        return r;
}

struct kvd_tier *kvd_host_tier(struct kvd_host *h)
{
        return &h->tier;
}

void *kvd_host_ptr(const struct kvd_host *h, uint32_t loc)
{
        return h->base + (uint64_t)loc * KVD_PAGE;
}

uint32_t kvd_host_class_bytes(const struct kvd_host *h, int klass)
{
        return kvd_slab_class_bytes(h->slab, klass);
}

bool kvd_host_can_alloc(const struct kvd_host *h, int klass)
{
        return kvd_slab_can_alloc(h->slab, klass);
}

void kvd_host_region(const struct kvd_host *h, void **ret_base, uint64_t *ret_len)
{
        *ret_base = h->base;
        *ret_len = h->len;
}


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

#define MAX_CLASSES 64
#define NONE UINT32_MAX
#define HUGE_2M (2u << 20)

struct extent {
        int32_t klass;          /* -1: free */
        uint32_t used;
        uint32_t prev, next;    /* partial list of the class, or free stack */
};

struct size_class {
        uint32_t bytes;
        uint32_t pages;         /* bytes / 4 KiB */
        uint32_t slots;         /* per extent */
        uint32_t partial;       /* extents with a free slot */
        uint64_t used;          /* blocks allocated */
};

struct kvd_host {
        struct kvd_tier tier;
        uint8_t *base;
        uint64_t len;
        void *map;              /* what to munmap */
        uint64_t map_len;
        uint64_t extent_bytes;
        uint32_t pages_per_extent;
        uint32_t words_per_extent;
        uint32_t n_extents;
        uint32_t free_extents;  /* stack head */
        uint32_t n_free_extents;
        struct extent *extents;
        uint64_t *bits;         /* free-slot bitmaps, words_per_extent each */
        struct size_class classes[MAX_CLASSES];
        int n_classes;
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

static void partial_push(struct kvd_host *h, struct size_class *c, uint32_t e)
{
        h->extents[e].prev = NONE;
        h->extents[e].next = c->partial;
        if (c->partial != NONE)
                h->extents[c->partial].prev = e;
        c->partial = e;
}

static void partial_remove(struct kvd_host *h, struct size_class *c, uint32_t e)
{
        struct extent *x = &h->extents[e];

        if (x->prev != NONE)
                h->extents[x->prev].next = x->next;
        else
                c->partial = x->next;
        if (x->next != NONE)
                h->extents[x->next].prev = x->prev;
        x->prev = x->next = NONE;
}

static int host_class_for(struct kvd_tier *t, uint64_t bytes)
{
        struct kvd_host *h = to_host(t);
        uint64_t rounded = ALIGN_UP(bytes, KVD_PAGE);

        if (bytes == 0 || rounded > h->extent_bytes)
                return -E2BIG;
        for (int i = 0; i < h->n_classes; i++)
                if (h->classes[i].bytes == rounded)
                        return i;
        if (h->n_classes == MAX_CLASSES)
                return -ENOSPC;
        h->classes[h->n_classes] = (struct size_class){
                .bytes = (uint32_t)rounded,
                .pages = (uint32_t)(rounded / KVD_PAGE),
                .slots = (uint32_t)(h->extent_bytes / rounded),
                .partial = NONE,
        };
        return h->n_classes++;
}

static int host_alloc(struct kvd_tier *t, int klass, uint32_t *ret_loc)
{
        struct kvd_host *h = to_host(t);
        struct size_class *c = &h->classes[klass];
        uint64_t *bits;
        uint32_t e, slot;

        e = c->partial;
        if (e == NONE) {
                if (h->free_extents == NONE)
                        return -ENOSPC;
                e = h->free_extents;
                h->free_extents = h->extents[e].next;
                h->n_free_extents--;
                h->extents[e].klass = klass;
                h->extents[e].used = 0;
                bits = h->bits + (uint64_t)e * h->words_per_extent;
                memset(bits, 0, h->words_per_extent * sizeof(uint64_t));
                for (uint32_t s = 0; s < c->slots; s++)
                        bits[s / 64] |= UINT64_C(1) << (s % 64);
                partial_push(h, c, e);
        }
        bits = h->bits + (uint64_t)e * h->words_per_extent;
        for (uint32_t w = 0;; w++) {
                assert(w < h->words_per_extent);
                if (bits[w]) {
                        slot = w * 64 + (uint32_t)__builtin_ctzll(bits[w]);
                        bits[w] &= bits[w] - 1;
                        break;
                }
        }
        if (++h->extents[e].used == c->slots)
                partial_remove(h, c, e);
        c->used++;
        *ret_loc = e * h->pages_per_extent + slot * c->pages;
        return 0;
}

static void host_free(struct kvd_tier *t, uint32_t loc)
{
        struct kvd_host *h = to_host(t);
        uint32_t e = loc / h->pages_per_extent;
        struct extent *x = &h->extents[e];
        struct size_class *c;
        uint32_t slot;
        uint64_t *bits;

        assert(e < h->n_extents && x->klass >= 0);
        c = &h->classes[x->klass];
        slot = (loc % h->pages_per_extent) / c->pages;
        bits = h->bits + (uint64_t)e * h->words_per_extent;
        assert(!(bits[slot / 64] & (UINT64_C(1) << (slot % 64))));
        bits[slot / 64] |= UINT64_C(1) << (slot % 64);
        if (x->used == c->slots)
                partial_push(h, c, e);
        c->used--;
        if (--x->used == 0) {
                partial_remove(h, c, e);
                x->klass = -1;
                x->next = h->free_extents;
                h->free_extents = e;
                h->n_free_extents++;
        }
}

static void host_usage(const struct kvd_tier *t, struct kvd_tier_usage *ret)
{
        const struct kvd_host *h = to_host_const(t);

        *ret = (struct kvd_tier_usage){ .capacity_bytes = h->len };
        for (int i = 0; i < h->n_classes; i++) {
                ret->used_bytes += h->classes[i].used * h->classes[i].bytes;
                ret->blocks += h->classes[i].used;
        }
}

static struct kvd_tier *host_destroy(struct kvd_tier *t)
{
        struct kvd_host *h;

        if (!t)
                return NULL;
        h = to_host(t);
        if (h->map)
                munmap(h->map, h->map_len);
        free(h->extents);
        free(h->bits);
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
        h->extent_bytes = cfg->host_extent_bytes;
        len = cfg->host_bytes / h->extent_bytes * h->extent_bytes;
        h->len = len;
        h->n_extents = (uint32_t)(len / h->extent_bytes);
        h->pages_per_extent = (uint32_t)(h->extent_bytes / KVD_PAGE);
        h->words_per_extent = (h->pages_per_extent + 63) / 64;
        h->extents = calloc(h->n_extents, sizeof(*h->extents));
        h->bits = calloc((size_t)h->n_extents * h->words_per_extent, sizeof(uint64_t));
        if (!h->extents || !h->bits) {
                r = -ENOMEM;
                goto err_free;
        }
        if ((uint64_t)h->n_extents * h->pages_per_extent > UINT32_MAX) {
                log_error("host pool of %" PRIu64 " bytes is too large for 32-bit locations", len);
                r = -E2BIG;
                goto err_free;
        }
        for (uint32_t e = 0; e < h->n_extents; e++) {
                h->extents[e] = (struct extent){ .klass = -1, .prev = NONE,
                                                 .next = e + 1 < h->n_extents ? e + 1 : NONE };
        }
        h->free_extents = 0;
        h->n_free_extents = h->n_extents;

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
                 h->n_extents, h->extent_bytes >> 10, h->huge ? "hugetlb pages" : "4K/THP pages",
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
        return h->classes[klass].bytes;
}

int kvd_host_class_count(const struct kvd_host *h)
{
        return h->n_classes;
}

bool kvd_host_has_free_extent(const struct kvd_host *h)
{
        return h->n_free_extents > 0;
}

bool kvd_host_can_alloc(const struct kvd_host *h, int klass)
{
        return h->classes[klass].partial != NONE || h->n_free_extents > 0;
}

void kvd_host_region(const struct kvd_host *h, void **ret_base, uint64_t *ret_len)
{
        *ret_base = h->base;
        *ret_len = h->len;
}

bool kvd_host_locked(const struct kvd_host *h)
{
        return h->locked;
}

bool kvd_host_hugepages(const struct kvd_host *h)
{
        return h->huge;
}

/* SPDX-License-Identifier: MIT */
#include "host.h"

#include <errno.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

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

static void *host_ptr(const struct kvd_tier *t, uint32_t loc)
{
        return kvd_host_ptr(to_host_const(t), loc);
}

static uint32_t host_class_bytes(const struct kvd_tier *t, int klass)
{
        return kvd_host_class_bytes(to_host_const(t), klass);
}

static bool host_can_alloc(const struct kvd_tier *t, int klass)
{
        return kvd_host_can_alloc(to_host_const(t), klass);
}

static void host_region(const struct kvd_tier *t, void **ret_base, uint64_t *ret_len)
{
        kvd_host_region(to_host_const(t), ret_base, ret_len);
}

static const struct kvd_tier_ops host_ops = {
        .name = "host",
        .class_for = host_class_for,
        .alloc = host_alloc,
        .free = host_free,
        .usage = host_usage,
        .destroy = host_destroy,
        .ptr = host_ptr,
        .class_bytes = host_class_bytes,
        .can_alloc = host_can_alloc,
        .region = host_region,
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

/* ---- the budget: what the pool may take ------------------------------- */

/* A v1 "no limit" is LONG_MAX rounded down to a page: anything this big. */
#define LIMIT_NONE (UINT64_C(1) << 62)

static void read_meminfo(struct kvd_host_budget *b)
{
        uint64_t huge_free = 0, huge_rsvd = 0, huge_size = 0;
        bool have_huge = false;
        char line[256];
        FILE *f = fopen("/proc/meminfo", "re");

        if (!f)
                return;
        while (fgets(line, sizeof(line), f)) {
                unsigned long long v;

                if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
                        b->mem_available = (uint64_t)v << 10;
                else if (sscanf(line, "HugePages_Free: %llu", &v) == 1)
                        huge_free = v, have_huge = true;
                else if (sscanf(line, "HugePages_Rsvd: %llu", &v) == 1)
                        huge_rsvd = v;
                else if (sscanf(line, "Hugepagesize: %llu kB", &v) == 1)
                        huge_size = (uint64_t)v << 10;
        }
        fclose(f);
        if (have_huge)
                b->hugetlb_free = huge_free > huge_rsvd ? (huge_free - huge_rsvd) * huge_size : 0;
}

/* Reads one number (or "max") from dir/name. */
static bool read_limit(const char *dir, const char *name, uint64_t *ret)
{
        char path[512], buf[64];
        unsigned long long v;
        bool ok = false;
        FILE *f;

        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
                return false;
        f = fopen(path, "re");
        if (!f)
                return false;
        if (fgets(buf, sizeof(buf), f)) {
                if (strncmp(buf, "max", 3) == 0) {
                        *ret = UINT64_MAX;
                        ok = true;
                } else if (sscanf(buf, "%llu", &v) == 1) {
                        *ret = v >= LIMIT_NONE ? UINT64_MAX : (uint64_t)v;
                        ok = true;
                }
        }
        fclose(f);
        return ok;
}

/* The lowest limit in file name of the cgroup at mount + path and its
 * parents up to the mount (the effective one). */
static void walk_cgroup(struct kvd_host_budget *b, const char *mount, const char *path, const char *name)
{
        char dir[sizeof(b->cgroup)];
        size_t root = strlen(mount);

        if ((size_t)snprintf(dir, sizeof(dir), "%s%s", mount, path) >= sizeof(dir))
                return;
        for (;;) {
                uint64_t v;
                char *slash;

                if (read_limit(dir, name, &v) && v < b->cgroup_max) {
                        b->cgroup_max = v;
                        snprintf(b->cgroup, sizeof(b->cgroup), "%s", dir);
                }
                slash = strrchr(dir, '/');
                if (!slash || (size_t)(slash - dir) < root)
                        break;
                *slash = '\0';
        }
}

/* Our cgroup in a hierarchy (v2: "0::/path"; v1: "N:...memory...:/path"). */
static bool own_cgroup(bool v2, char *buf, size_t size)
{
        char line[512];
        bool found = false;
        FILE *f = fopen("/proc/self/cgroup", "re");

        if (!f)
                return false;
        while (!found && fgets(line, sizeof(line), f)) {
                char *ctl = strchr(line, ':'), *path = ctl ? strchr(ctl + 1, ':') : NULL;

                if (!path)
                        continue;
                *path++ = '\0';
                ctl++;
                path[strcspn(path, "\n")] = '\0';
                if (v2 ? strcmp(line, "0") == 0 && *ctl == '\0'
                       : strcmp(line, "0") != 0 && strstr(ctl, "memory") != NULL) {
                        snprintf(buf, size, "%s", path);
                        found = true;
                }
        }
        fclose(f);
        return found;
}

/* The memory limits of our cgroups: v2 (memory.max) and, on hybrid and
 * legacy hosts, the v1 memory controller (memory.limit_in_bytes). */
static void read_cgroups(struct kvd_host_budget *b)
{
        char line[1024];
        FILE *f = fopen("/proc/self/mountinfo", "re");

        if (!f)
                return;
        while (fgets(line, sizeof(line), f)) {
                /* id parent dev root mountpoint opts [optional...] - fstype source superopts */
                char *field[6] = { 0 }, *sep = strstr(line, " - "), *save = NULL, *tok;
                char fstype[32], source[128], super[256], cg[256];
                const char *rel;
                bool v2;
                int n = 0;

                if (!sep || sscanf(sep + 3, "%31s %127s %255s", fstype, source, super) != 3)
                        continue;
                v2 = strcmp(fstype, "cgroup2") == 0;
                if (!v2 && !(strcmp(fstype, "cgroup") == 0 && strstr(super, "memory")))
                        continue;
                *sep = '\0';
                for (tok = strtok_r(line, " ", &save); tok && n < 6; tok = strtok_r(NULL, " ", &save))
                        field[n++] = tok;
                if (n < 5 || !own_cgroup(v2, cg, sizeof(cg)))
                        continue;
                /* The mount shows the hierarchy from field[3]: our path
                 * must lie under it (else this mount does not show us). */
                if (strcmp(field[3], "/") == 0)
                        rel = cg;
                else if (strncmp(cg, field[3], strlen(field[3])) == 0)
                        rel = cg + strlen(field[3]);
                else
                        continue;
                if (strcmp(rel, "/") == 0)
                        rel = "";
                walk_cgroup(b, field[4], rel, v2 ? "memory.max" : "memory.limit_in_bytes");
        }
        fclose(f);
}

static bool have_cap_ipc_lock(void)
{
        char line[256];
        unsigned long long caps;
        bool yes = false;
        FILE *f = fopen("/proc/self/status", "re");

        if (!f)
                return false;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "CapEff: %llx", &caps) == 1)
                        yes = caps & (1ull << CAP_IPC_LOCK);
        fclose(f);
        return yes;
}

void kvd_host_budget_read(struct kvd_host_budget *b)
{
        struct rlimit rl;

        *b = (struct kvd_host_budget){ .mem_available = UINT64_MAX, .hugetlb_free = 0,
                                       .cgroup_max = UINT64_MAX, .memlock = UINT64_MAX };
        read_meminfo(b);
        read_cgroups(b);
        if (!have_cap_ipc_lock() && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
                b->memlock = (uint64_t)rl.rlim_cur;
}

int kvd_host_budget_check(const struct kvd_host_budget *b, uint64_t len, bool want_huge, int lock_mode,
                          char *why, size_t size)
{
        /* Reserved hugetlb pages are not in MemAvailable nor charged to a
         * memory cgroup: a pool that gets them (map_pool()) needs no more. */
        bool hugetlb = want_huge && b->hugetlb_free >= len;

        if (lock_mode == KVD_LOCK_REQUIRED && len > b->memlock) {
                snprintf(why, size,
                         "host-bytes %" PRIu64 " MiB cannot be locked: RLIMIT_MEMLOCK is %" PRIu64
                         " KiB (host-lock = required; raise LimitMEMLOCK= / ulimit -l, or use host-lock = try)",
                         len >> 20, b->memlock >> 10);
                return -ENOMEM;
        }
        if (!hugetlb && len > b->mem_available) {
                snprintf(why, size,
                         "host-bytes %" PRIu64 " MiB is more than this machine can give: MemAvailable is %" PRIu64
                         " MiB (lower host-bytes)", len >> 20, b->mem_available >> 20);
                return -ENOMEM;
        }
        if (!hugetlb && len > b->cgroup_max) {
                snprintf(why, size,
                         "host-bytes %" PRIu64 " MiB is more than the daemon's cgroup allows: %s sets %" PRIu64
                         " MiB (lower host-bytes, or raise MemoryMax=)", len >> 20, b->cgroup, b->cgroup_max >> 20);
                return -ENOMEM;
        }
        return 0;
}

int kvd_host_new(const struct kvd_config *cfg, struct kvd_host **ret)
{
        struct kvd_host_budget budget;
        struct kvd_host *h;
        char why[512];
        uint64_t len;
        int r;

        len = cfg->host_bytes / cfg->host_extent_bytes * cfg->host_extent_bytes;
        /* Before anything is mapped: a pool the machine cannot give would
         * be OOM-killed while we lock it, with no word said. */
        kvd_host_budget_read(&budget);
        r = kvd_host_budget_check(&budget, len, cfg->host_hugepages, cfg->host_lock, why, sizeof(why));
        if (r < 0) {
                log_error("cannot create the host tier: %s", why);
                return r;
        }
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->tier.ops = &host_ops;
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


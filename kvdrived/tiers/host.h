/* SPDX-License-Identifier: MIT */
/*
 * Host DRAM tier: one mmap'd pool, mlock'd, on huge pages when the system
 * has them, bound to a NUMA node with libnuma. The pool is carved into
 * extents (slabs, 4 MiB by default); an extent serves one size class and is
 * cut into equal block pages, so namespaces of different block sizes share
 * one pool without fragmenting it below an extent. A page's address is
 * stable for its whole life: transfer workers copy straight into it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "tier.h"

struct kvd_host;

/* Creates the pool from cfg (host-bytes, extent, numa node, lock mode,
 * huge pages). Logs what it got (huge pages or not, locked or not). Refuses
 * (-ENOMEM, with a message naming the sizes) a pool larger than the budget
 * (kvd_host_budget_read()) allows, before it maps anything. */
int kvd_host_new(const struct kvd_config *cfg, struct kvd_host **ret);

/* What the machine, the daemon's cgroups and its mlock limit can give a
 * host pool. UINT64_MAX: no limit (or none known). */
struct kvd_host_budget {
        uint64_t mem_available;         /* /proc/meminfo MemAvailable */
        uint64_t hugetlb_free;          /* free, unreserved hugetlb pages, in bytes */
        uint64_t cgroup_max;            /* the lowest memory limit of our cgroup and its parents */
        char cgroup[192];               /* the directory that sets it ("" if none) */
        uint64_t memlock;               /* RLIMIT_MEMLOCK (UINT64_MAX with CAP_IPC_LOCK) */
};

/* Reads /proc/meminfo, /proc/self/{cgroup,mountinfo,status} and the cgroup
 * files (cgroup v2 memory.max, v1 memory.limit_in_bytes), getrlimit. What
 * cannot be read stays UINT64_MAX. */
void kvd_host_budget_read(struct kvd_host_budget *ret);

/* Whether a pool of len bytes fits b, mapped on hugetlb pages if want_huge
 * and enough are free, and mlocked as lock_mode (enum kvd_lock_mode) says.
 * 0, or -ENOMEM with the reason (naming the sizes) in why. Pure. */
int kvd_host_budget_check(const struct kvd_host_budget *b, uint64_t len, bool want_huge, int lock_mode,
                          char *why, size_t size);

/* The host tier as a generic tier. */
struct kvd_tier *kvd_host_tier(struct kvd_host *h);

/* Address of the page at loc. */
void *kvd_host_ptr(const struct kvd_host *h, uint32_t loc);

/* Page size of a class. */
uint32_t kvd_host_class_bytes(const struct kvd_host *h, int klass);

/* True if a block of klass can be allocated without eviction. */
bool kvd_host_can_alloc(const struct kvd_host *h, int klass);

/* Base and length of the whole pool (for io_uring buffer registration). */
void kvd_host_region(const struct kvd_host *h, void **ret_base, uint64_t *ret_len);

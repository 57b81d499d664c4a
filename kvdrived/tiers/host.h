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
 * huge pages). Logs what it got (huge pages or not, locked or not). */
int kvd_host_new(const struct kvd_config *cfg, struct kvd_host **ret);

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

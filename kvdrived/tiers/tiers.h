/* SPDX-License-Identifier: MIT */
/*
 * The tiers a configuration asks for, made in the order that fails
 * cheapest, and handed to the cache fastest first (tier.h: the only way the
 * cache reaches them).
 */
#pragma once

#include "config.h"
#include "tier.h"

/* Tiers a daemon has at most: host DRAM, SSD, a remote store. */
#define KVD_MAX_TIERS 3

/*
 * Makes cfg's tiers into ret (KVD_MAX_TIERS entries): ret[0] the host tier
 * (a memory tier), then the SSD tier when cfg has ssd-bytes (a storage
 * tier), then the remote tier when cfg has remote (a shared tier). The SSD
 * directories are claimed before the host pool is mapped and locked, so a
 * daemon that may not have them stops before it takes the memory; the SSD
 * tier then registers the host pool as its I/O buffers. Returns the number
 * made, or -errno (logged; nothing is left made).
 */
int kvd_tiers_new(const struct kvd_config *cfg, struct kvd_tier **ret);

/* SPDX-License-Identifier: MIT */
/*
 * The one priority model of the daemon's work: the transfer engine's
 * copies and every tier's I/O queue by it, lower first.
 */
#pragma once

enum kvd_prio {
        KVD_PRIO_DEMAND = 0,            /* a client waits for it */
        KVD_PRIO_PREFETCH = 1,          /* a promotion or copy a client asked for ahead */
        KVD_PRIO_SPECULATIVE = 2,       /* a promotion the daemon guessed (next layer) */
        KVD_PRIO_BACKGROUND = 3,        /* write-back, invalidation */
        KVD_PRIO_COUNT,
};

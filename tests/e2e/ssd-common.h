/* SPDX-License-Identifier: MIT */
/* Shared by the SSD-tier suites: a directory for the tier, putting and
 * checking blocks, finding a block's slot in the tier's file. */
#pragma once

#include "common.h"

#define SSD_NS "e2e-ssd-model"

struct ssd_dir {
        char path[128];
        char file[160];         /* the tier's file in it */
};

/* mkdtemp under /tmp (or $TMPDIR); removed by ssd_dir_remove(). */
void ssd_dir_make(struct ssd_dir *d);
void ssd_dir_remove(struct ssd_dir *d);

/* A fresh key sequence (the test fails if none can be had). */
struct kvc_key ssd_new_seq(void);

/* A connected client with the e2e namespace and a pool of `slots`. */
struct ssd_client {
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        uint32_t slots;
};

void ssd_client_open(struct ssd_client *sc, const char *sock, uint32_t slots);
void ssd_client_close(struct ssd_client *sc);

/* Block i: private key i of sequence seq at layer i % E2E_LAYERS, bytes from
 * e2e_fill_block(salt). */
void ssd_ref(const struct kvc_key *seq, uint32_t i, uint32_t slot, struct kvc_block_ref *ret);

/* Puts blocks [first, first+n) (flags: KVC_PUT_*); returns how many were
 * stored (OK) — EXISTS does not count. */
int ssd_put(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n, unsigned flags,
            uint64_t salt);

/* The same, counting the items' statuses (a request that fails as a whole
 * fails the test). */
struct ssd_put_st {
        uint32_t ok, exists, error, other;
};
struct ssd_put_st ssd_put_st(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n,
                             unsigned flags, uint64_t salt);

/* Gets blocks [first, first+n): counts of byte-exact hits, misses, and
 * blocks that came back with other bytes (must stay 0). */
struct ssd_got {
        uint32_t ok, miss, wrong, other;
};
struct ssd_got ssd_get(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n,
                       uint64_t salt);

/* A copy of one tier's stats (zeroed if the daemon has no such tier). */
struct kvc_tier_stats ssd_tier_stats(struct ssd_client *sc, const char *name);

/* File offset of the slot header of block (key, layer) in the tier's file,
 * or -1. */
long long ssd_find_slot(const char *file, const struct kvc_key *k, uint32_t layer);

/* XORs 0xff into the byte at off of file. */
void ssd_flip_byte(const char *file, long long off);

/* Every slot header (by its magic) in file, in one pass: *ret (free it)
 * gets them, the count is returned. */
struct ssd_slot {
        uint64_t key_hi, key_lo;
        uint32_t layer;
        long long off;
};
size_t ssd_scan_slots(const char *file, struct ssd_slot **ret);

/* The log of a daemon started with kvd_test_opts.log_file, NUL-terminated
 * (free it; "" if none); and how many of its lines hold both a and b. */
char *ssd_daemon_log(const struct kvd_test_daemon *d);
int ssd_log_count(const char *log, const char *a, const char *b);

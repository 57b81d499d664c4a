/* SPDX-License-Identifier: MIT */
#include "ssd-common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "slot.h"

#define BATCH 64u

void ssd_dir_make(struct ssd_dir *d)
{
        const char *tmp = getenv("TMPDIR");

        snprintf(d->path, sizeof(d->path), "%s/kvd-ssd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        ck_assert_ptr_nonnull(mkdtemp(d->path));
        snprintf(d->file, sizeof(d->file), "%s/kvdrive.ssd", d->path);
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return remove(path);
}

void ssd_dir_remove(struct ssd_dir *d)
{
        nftw(d->path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void ssd_client_open(struct ssd_client *sc, const char *sock, uint32_t slots)
{
        memset(sc, 0, sizeof(*sc));
        ck_assert_int_eq(e2e_open(sock, "ssd-test", SSD_NS, &sc->c, &sc->ns), 0);
        E2E_ASSERT_RC(sc->c, kvc_pool_create(sc->c, slots, E2E_BLOCK_BYTES, &sc->p), 0);
        sc->slots = slots;
}

void ssd_client_close(struct ssd_client *sc)
{
        sc->p = kvc_pool_free(sc->p);
        sc->c = kvc_disconnect(sc->c);
}

void ssd_ref(const struct kvc_key *seq, uint32_t i, uint32_t slot, struct kvc_block_ref *ret)
{
        *ret = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = slot };
        kvc_key_private(seq, i, &ret->key);
}

int ssd_put(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n, unsigned flags,
            uint64_t salt)
{
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH];
        int stored = 0;

        ck_assert_uint_ge(sc->slots, BATCH);
        for (uint32_t at = 0; at < n; at += BATCH) {
                uint32_t k = n - at < BATCH ? n - at : BATCH;
                uint64_t id;
                int r;

                for (uint32_t j = 0; j < k; j++) {
                        ssd_ref(seq, first + at + j, j, &refs[j]);
                        e2e_fill_block(kvc_pool_slot(sc->p, j), E2E_BLOCK_BYTES, &refs[j].key, refs[j].layer,
                                       salt);
                }
                r = kvc_put_submit_flags(sc->c, sc->ns, sc->p, refs, k, flags, st, &id);
                if (r >= 0)
                        r = kvc_wait(sc->c, id, -1);
                if (r < 0)
                        return r;
                stored += r;
        }
        return stored;
}

struct ssd_got ssd_get(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n,
                       uint64_t salt)
{
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH], want[E2E_BLOCK_BYTES];
        struct ssd_got got = { 0 };

        for (uint32_t at = 0; at < n; at += BATCH) {
                uint32_t k = n - at < BATCH ? n - at : BATCH;

                for (uint32_t j = 0; j < k; j++)
                        ssd_ref(seq, first + at + j, j, &refs[j]);
                E2E_ASSERT_RC(sc->c, kvc_get(sc->c, sc->ns, sc->p, refs, k, st) >= 0 ? 0 : -1, 0);
                for (uint32_t j = 0; j < k; j++) {
                        if (st[j] == KVC_ITEM_MISS) {
                                got.miss++;
                                continue;
                        }
                        if (st[j] != KVC_ITEM_OK) {
                                got.other++;
                                continue;
                        }
                        e2e_fill_block(want, sizeof(want), &refs[j].key, refs[j].layer, salt);
                        if (memcmp(want, kvc_pool_slot(sc->p, j), sizeof(want)) == 0)
                                got.ok++;
                        else
                                got.wrong++;
                }
        }
        return got;
}

struct kvc_tier_stats ssd_tier_stats(struct ssd_client *sc, const char *name)
{
        struct kvc_tier_stats t = { 0 };
        struct kvc_stats *s = NULL;
        const struct kvc_tier_stats *p;

        E2E_ASSERT_RC(sc->c, kvc_stats_get(sc->c, &s), 0);
        p = e2e_tier(s, name);
        if (p)
                t = *p;
        kvc_stats_free(s);
        return t;
}

long long ssd_find_slot(const char *file, const struct kvc_key *k, uint32_t layer)
{
        struct kvd_slot_header h;
        long long found = -1;
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        off_t end;

        ck_assert_int_ge(fd, 0);
        end = lseek(fd, 0, SEEK_END);
        for (off_t off = 0; off + (off_t)sizeof(h) <= end; off += KVD_SLOT_HDR_BYTES) {
                ck_assert_int_eq(pread(fd, &h, sizeof(h), off), (ssize_t)sizeof(h));
                if (h.magic == KVD_SLOT_MAGIC && h.key_hi == k->hi && h.key_lo == k->lo && h.layer == layer) {
                        found = off;
                        break;
                }
        }
        close(fd);
        return found;
}

void ssd_flip_byte(const char *file, long long off)
{
        int fd = open(file, O_RDWR | O_CLOEXEC);
        uint8_t b;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, &b, 1, off), 1);
        b ^= 0xff;
        ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
        ck_assert_int_eq(fsync(fd), 0);
        close(fd);
}

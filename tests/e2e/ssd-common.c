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

struct kvc_key ssd_new_seq(void)
{
        struct kvc_key seq;

        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        return seq;
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

struct ssd_put_st ssd_put_st(struct ssd_client *sc, const struct kvc_key *seq, uint32_t first, uint32_t n,
                             unsigned flags, uint64_t salt)
{
        struct kvc_block_ref refs[BATCH];
        uint8_t st[BATCH];
        struct ssd_put_st got = { 0 };

        ck_assert_uint_ge(sc->slots, BATCH);
        for (uint32_t at = 0; at < n; at += BATCH) {
                uint32_t k = n - at < BATCH ? n - at : BATCH;
                uint64_t id;

                for (uint32_t j = 0; j < k; j++) {
                        ssd_ref(seq, first + at + j, j, &refs[j]);
                        e2e_fill_block(kvc_pool_slot(sc->p, j), E2E_BLOCK_BYTES, &refs[j].key, refs[j].layer,
                                       salt);
                }
                memset(st, 0xff, sizeof(st));
                E2E_ASSERT_RC(sc->c, kvc_put_submit_flags(sc->c, sc->ns, sc->p, refs, k, flags, st, &id), 0);
                E2E_ASSERT_RC(sc->c, kvc_wait(sc->c, id, -1) >= 0 ? 0 : -1, 0);
                for (uint32_t j = 0; j < k; j++) {
                        if (st[j] == KVC_ITEM_OK)
                                got.ok++;
                        else if (st[j] == KVC_ITEM_EXISTS)
                                got.exists++;
                        else if (st[j] == KVC_ITEM_ERROR)
                                got.error++;
                        else
                                got.other++;
                }
        }
        return got;
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

size_t ssd_scan_slots(const char *file, struct ssd_slot **ret)
{
        static uint8_t page[KVD_SLOT_HDR_BYTES];
        const struct kvd_slot_header *h = (const void *)page;
        struct ssd_slot *v = NULL;
        size_t n = 0, cap = 0;
        int fd = open(file, O_RDONLY | O_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        for (off_t off = 0; pread(fd, page, sizeof(page), off) == (ssize_t)sizeof(page); off += sizeof(page)) {
                if (h->magic != KVD_SLOT_MAGIC)
                        continue;
                if (n == cap) {
                        cap = cap ? cap * 2 : 256;
                        v = realloc(v, cap * sizeof(*v));
                        ck_assert_ptr_nonnull(v);
                }
                v[n++] = (struct ssd_slot){ h->key_hi, h->key_lo, h->layer, (long long)off };
        }
        close(fd);
        *ret = v;
        return n;
}

char *ssd_daemon_log(const struct kvd_test_daemon *d)
{
        char path[256], *buf = NULL;
        size_t n = 0, cap = 0;
        FILE *f;

        ck_assert_int_eq(kvd_test_daemon_path(d, "kvdrived.log", path, sizeof(path)), 0);
        f = fopen(path, "re");
        for (;;) {
                if (cap - n < 4096) {
                        cap = cap ? cap * 2 : 65536;
                        buf = realloc(buf, cap);
                        ck_assert_ptr_nonnull(buf);
                }
                if (!f)
                        break;
                size_t got = fread(buf + n, 1, cap - n - 1, f);

                if (got == 0)
                        break;
                n += got;
        }
        if (f)
                fclose(f);
        buf[n] = '\0';
        return buf;
}

int ssd_log_count(const char *log, const char *a, const char *b)
{
        int count = 0;

        for (const char *line = log; *line;) {
                const char *end = strchr(line, '\n');
                size_t len = end ? (size_t)(end - line) : strlen(line);
                char *copy = strndup(line, len);

                ck_assert_ptr_nonnull(copy);
                count += strstr(copy, a) && strstr(copy, b);
                free(copy);
                line += len + (end ? 1 : 0);
        }
        return count;
}

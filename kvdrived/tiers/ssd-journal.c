/* SPDX-License-Identifier: MIT */
#include "ssd-journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "slot.h"
#include "ssd-checkpoint.h"

#define JOURNAL_NAME "kvdrive.dirty"
#define JOURNAL_TMP  "kvdrive.dirty.tmp"
#define JOURNAL_MAGIC 0x4a44564bu /* "KVDJ" */
#define JOURNAL_VERSION 1u

struct journal_head {
        uint32_t magic, version;
        uint64_t lineage, base;
        uint32_t n_extents, crc;        /* crc: of the bytes before it */
};

struct journal_entry {
        uint64_t epoch;
        uint32_t extent, crc;           /* crc: of the bytes before it */
};

_Static_assert(sizeof(struct journal_head) == 32, "the journal's header is 32 bytes");
_Static_assert(sizeof(struct journal_entry) == 16, "a journal entry is 16 bytes");

static int path_in(char *buf, size_t n, const char *dir, const char *name)
{
        return (size_t)snprintf(buf, n, "%s/%s", dir, name) >= n ? -ENAMETOOLONG : 0;
}

int kvd_journal_parse(const uint8_t *buf, size_t len, uint32_t n_extents, uint64_t lineage, uint64_t epoch,
                      uint8_t *dirty, uint32_t *ret_n)
{
        struct journal_head h;
        uint32_t n = 0;

        memset(dirty, 0, n_extents);
        *ret_n = 0;
        if (len < sizeof(h))
                return -EBADMSG;
        memcpy(&h, buf, sizeof(h));
        if (h.magic != JOURNAL_MAGIC || h.version != JOURNAL_VERSION ||
            h.crc != kvd_slot_crc(&h, offsetof(struct journal_head, crc)))
                return -EBADMSG;
        if (h.lineage != lineage || h.n_extents != n_extents || h.base > epoch)
                return -ESTALE;
        /* A shorter tail is an append cut by the crash: never acted on. */
        for (size_t at = sizeof(h); at + sizeof(struct journal_entry) <= len; at += sizeof(struct journal_entry)) {
                struct journal_entry j;

                memcpy(&j, buf + at, sizeof(j));
                if (j.crc != kvd_slot_crc(&j, offsetof(struct journal_entry, crc)) || j.extent >= n_extents ||
                    j.epoch < h.base) {
                        memset(dirty, 0, n_extents);
                        return -EBADMSG;
                }
                if (j.epoch >= epoch && !dirty[j.extent]) {
                        dirty[j.extent] = 1;
                        n++;
                }
        }
        *ret_n = n;
        return 0;
}

int kvd_journal_load(const char *dir, uint32_t n_extents, uint64_t lineage, uint64_t epoch, uint8_t *dirty,
                     uint32_t *ret_n)
{
        char path[PATH_MAX];
        uint8_t *buf = NULL;
        size_t len = 0;
        int r;

        memset(dirty, 0, n_extents);
        *ret_n = 0;
        r = path_in(path, sizeof(path), dir, JOURNAL_NAME);
        if (r == 0)
                r = kvd_ckpt_read_whole(path, &buf, &len);
        if (r == 0)
                r = kvd_journal_parse(buf, len, n_extents, lineage, epoch, dirty, ret_n);
        free(buf);
        return r;
}

/* n entries of epoch into a malloc()ed buffer, after room for `lead` bytes. */
static uint8_t *entries(size_t lead, uint64_t epoch, const uint32_t *extents, uint32_t n, size_t *ret_len)
{
        uint8_t *p = malloc(lead + (size_t)n * sizeof(struct journal_entry) + 1);

        if (!p)
                return NULL;
        for (uint32_t i = 0; i < n; i++) {
                struct journal_entry j = { .epoch = epoch, .extent = extents[i] };

                j.crc = kvd_slot_crc(&j, offsetof(struct journal_entry, crc));
                memcpy(p + lead + (size_t)i * sizeof(j), &j, sizeof(j));
        }
        *ret_len = lead + (size_t)n * sizeof(struct journal_entry);
        return p;
}

int kvd_journal_create(const char *dir, uint64_t lineage, uint64_t base, uint32_t n_extents,
                       const uint32_t *extents, uint32_t n, int *ret_fd)
{
        struct journal_head h = { JOURNAL_MAGIC, JOURNAL_VERSION, lineage, base, n_extents, 0 };
        char tmp[PATH_MAX], path[PATH_MAX];
        uint8_t *buf = NULL;
        size_t len = 0;
        int fd = -1, r;

        r = path_in(tmp, sizeof(tmp), dir, JOURNAL_TMP);
        if (r == 0)
                r = path_in(path, sizeof(path), dir, JOURNAL_NAME);
        if (r < 0)
                return r;
        buf = entries(sizeof(h), base, extents, n, &len);
        if (!buf)
                return -ENOMEM;
        h.crc = kvd_slot_crc(&h, offsetof(struct journal_head, crc));
        memcpy(buf, &h, sizeof(h));
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        r = kvd_ckpt_write_all(fd, buf, len);
        if (r == 0 && fdatasync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r == 0)
                r = kvd_ckpt_fsync_dir(dir);
        if (r == 0) {
                *ret_fd = fd;
                fd = -1;
        } else {
                unlink(tmp);
        }
out:
        if (fd >= 0)
                close(fd);
        free(buf);
        return r;
}

int kvd_journal_append(int fd, uint64_t epoch, const uint32_t *extents, uint32_t n)
{
        uint8_t *buf;
        size_t len = 0;
        int r;

        if (n == 0)
                return 0;
        buf = entries(0, epoch, extents, n, &len);
        if (!buf)
                return -ENOMEM;
        r = kvd_ckpt_write_all(fd, buf, len);
        if (r == 0 && fdatasync(fd) < 0)
                r = -errno;
        free(buf);
        return r;
}

int kvd_journal_remove(const char *dir)
{
        return kvd_ckpt_remove_files(dir, JOURNAL_NAME, JOURNAL_TMP);
}

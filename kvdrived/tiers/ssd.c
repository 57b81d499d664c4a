/* SPDX-License-Identifier: MIT */
#include "ssd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <isa-l/crc.h>
#include <liburing.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "loop.h"
#include "macro.h"
#include "slab.h"
#include "ssd-checkpoint.h"
#include "ssd-internal.h"

static uint32_t crc32c(const void *p, size_t n, uint32_t seed)
{
        return crc32_iscsi((unsigned char *)p, (int)n, seed);
}

static const struct kvd_ssd *to_ssd_const(const struct kvd_tier *t)
{
        return container_of(t, const struct kvd_ssd, tier);
}

struct kvd_ssd *ssd_of(struct kvd_tier *t)
{
        return container_of(t, struct kvd_ssd, tier);
}

/* Where location loc lives: extents are striped across the files. */
void ssd_locate(const struct kvd_ssd *s, uint32_t loc, int *ret_fd, uint64_t *ret_off)
{
        uint32_t ppe = kvd_slab_pages_per_extent(s->slab);
        uint32_t e = loc / ppe;

        *ret_fd = s->files[e % s->n_files].fd;
        *ret_off = (uint64_t)(e / s->n_files) * s->extent_bytes + (uint64_t)(loc % ppe) * PAGE;
}

void ssd_extent_locate(const struct kvd_ssd *s, uint32_t e, int *ret_fd, uint64_t *ret_off)
{
        ssd_locate(s, e * kvd_slab_pages_per_extent(s->slab), ret_fd, ret_off);
}

struct ssd_file *ssd_file_of_extent(struct kvd_ssd *s, uint32_t e)
{
        return &s->files[e % s->n_files];
}

/* ---- damage ---------------------------------------------------------- */

/* Errors that say the file, or the drive under it, is gone or failing (not
 * that it is full: ENOSPC and EDQUOT only cap the tier). EFBIG: a write past
 * the file size limit (ulimit -f), where the tier holds space already. */
static bool damage_error(int r)
{
        switch (r) {
        case -EIO: case -EFBIG: case -EROFS: case -ENXIO: case -ENODEV: case -ESTALE: case -EUCLEAN: case -EBADF:
                return true;
        default:
                return false;
        }
}

/* The first damage found: logged once, in the stats for good. */
static void __attribute__((format(printf, 2, 3))) set_damaged(struct kvd_ssd *s, const char *fmt, ...)
{
        uint64_t cap, used, blocks;
        char why[PATH_MAX + 160];
        va_list ap;

        if (s->st.damaged)
                return;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        s->st.damaged = true;
        /* Cut to fit (the log has it whole). */
        snprintf(s->st.condition, sizeof(s->st.condition), "damaged: %.*s",
                 (int)(sizeof(s->st.condition) - sizeof("damaged: ")), why);
        kvd_slab_usage(s->slab, &cap, &used, &blocks);
        log_error("SSD tier damaged: %s. It takes no more writes (durable Puts fail, host evictions drop "
                  "blocks); of its %" PRIu64 " blocks, those that still read back intact are served until "
                  "the daemon stops", why, blocks);
}

/* Whether file f is still what the tier writes to: linked at its path, the
 * same inode, no shorter than provisioned. Marks the tier damaged if not;
 * an error that tells nothing (EACCES, ENOMEM...) is not damage. */
static void check_file(struct kvd_ssd *s, const struct ssd_file *f)
{
        struct stat fst, pst;
        int r;

        if (fstat(f->fd, &fst) < 0) {
                r = -errno;
                if (damage_error(r))
                        set_damaged(s, "cannot stat %s: %s", f->path, strerror(-r));
                return;
        }
        if (stat(f->path, &pst) < 0) {
                r = -errno;
                if (r == -ENOENT || r == -ENOTDIR)
                        set_damaged(s, "%s was %s", f->path, fst.st_nlink == 0 ? "unlinked" : "moved away");
                else if (damage_error(r))
                        set_damaged(s, "cannot stat %s: %s", f->path, strerror(-r));
        } else if (pst.st_dev != f->dev || pst.st_ino != f->ino) {
                set_damaged(s, "%s was replaced by another file", f->path);
        } else if ((uint64_t)fst.st_size < f->size) {
                set_damaged(s, "%s truncated to %" PRIu64 " of %" PRIu64 " bytes", f->path, (uint64_t)fst.st_size,
                            f->size);
        }
}

static bool check_files(struct kvd_ssd *s)
{
        for (unsigned i = 0; i < s->n_files && !s->st.damaged; i++)
                check_file(s, &s->files[i]);
        return !s->st.damaged;
}

/* Whether the header of extent e (in use: written or recovered by us) is
 * still on disk as the tier knows it: a file cut and grown back (a write
 * or fallocate past the cut) has its length again, but not its headers. */
static bool extent_read_ok(struct kvd_ssd *s, uint32_t e, const void *buf, ssize_t n)
{
        const struct kvd_extent_header *h = buf;
        const struct ssd_file *f = ssd_file_of_extent(s, e);
        int klass = kvd_slab_extent_class(s->slab, e);

        if (n < 0) {
                if (damage_error((int)n))
                        set_damaged(s, "reading %s failed: %s", f->path, strerror((int)-n));
                return !s->st.damaged;
        }
        if (n != PAGE || h->magic != KVD_EXTENT_MAGIC || h->version != KVD_FORMAT_VERSION ||
            h->crc != crc32c(h, offsetof(struct kvd_extent_header, crc), ~0u) || h->generation != s->extent_gen[e] ||
            (klass >= 0 && h->slot_bytes != kvd_slab_class_bytes(s->slab, klass)))
                set_damaged(s, "%s lost the header of extent %u", f->path, e);
        return !s->st.damaged;
}

static bool check_extent(struct kvd_ssd *s, uint32_t e)
{
        uint64_t off;
        ssize_t n;
        int fd;

        ssd_extent_locate(s, e, &fd, &off);
        n = pread(fd, s->sync_buf, PAGE, (off_t)off);
        return extent_read_ok(s, e, s->sync_buf, n < 0 ? -errno : n);
}

static void scrub_extent(struct kvd_ssd *s, uint32_t e);

static bool ssd_check(struct kvd_tier *t)
{
        struct kvd_ssd *s = ssd_of(t);
        uint32_t seen = 0, checked = 0;

        ssd_ckpt_reap(s, false);
        if (!check_files(s))
                return false;
        /* Through the ring (finish_scrub()): the loop does not wait for
         * the drive, a few ms a second here. */
        while (checked < SCRUB_PER_CHECK && seen < s->n_extents && !s->st.damaged &&
               s->scrub_inflight < SCRUB_PER_CHECK) {
                uint32_t e = s->scrub_next;

                s->scrub_next = (e + 1) % s->n_extents;
                seen++;
                if (kvd_slab_extent_class(s->slab, e) < 0) /* free or retired: nothing of ours */
                        continue;
                scrub_extent(s, e);
                checked++;
        }
        return !s->st.damaged;
}

static bool ssd_damaged(const struct kvd_tier *t)
{
        const struct kvd_ssd *s = to_ssd_const(t);
        return s->st.damaged;
}

/* ---- extents -------------------------------------------------------- */

static int write_extent_header(struct kvd_ssd *s, uint32_t e, uint32_t slot_bytes)
{
        struct kvd_extent_header *h = s->sync_buf;
        uint64_t off;
        int fd;

        memset(s->sync_buf, 0, PAGE);
        *h = (struct kvd_extent_header){ .magic = KVD_EXTENT_MAGIC, .version = KVD_FORMAT_VERSION,
                                         .slot_bytes = slot_bytes, .generation = ++s->next_extent_gen };
        kvd_extent_header_seal(h);
        ssd_extent_locate(s, e, &fd, &off);
        if (pwrite(fd, s->sync_buf, PAGE, (off_t)off) != PAGE)
                return errno ? -errno : -EIO;
        s->extent_gen[e] = h->generation;
        return 0;
}

/* No more space can be had: take every never-provisioned free extent out
 * of use, so the allocator evicts instead of asking the file system. */
static void mark_full(struct kvd_ssd *s, uint32_t e, int err)
{
        uint32_t retired = 0;

        for (uint32_t i = 0; i < s->n_extents; i++)
                if (!s->provisioned[i] && kvd_slab_extent_free(s->slab, i)) {
                        kvd_slab_retire(s->slab, i);
                        retired++;
                }
        s->st.full = true;
        if (!s->st.damaged)
                snprintf(s->st.condition, sizeof(s->st.condition), "full: %s at %s", strerror(-err),
                         s->files[e % s->n_files].path);
        log_warning("SSD tier: cannot allocate extent %u in %s (%s): capacity capped, %u extents unusable; "
                    "evicting instead", e, s->files[e % s->n_files].path, strerror(-err), retired);
}

static int ssd_class_for(struct kvd_tier *t, uint64_t bytes)
{
        return kvd_slab_class_for(ssd_of(t)->slab, KVD_SLOT_HDR_BYTES + ALIGN_UP(bytes, PAGE));
}

/* A damaged tier hands out no slot: nothing more is written to it. */
static int ssd_alloc(struct kvd_tier *t, int klass, uint32_t *ret_loc)
{
        struct kvd_ssd *s = ssd_of(t);

        for (;;) {
                struct ssd_file *f;
                uint32_t loc, e;
                bool fresh;
                uint64_t off;
                int fd, r;

                if (s->st.damaged)
                        return -EIO;
                r = kvd_slab_alloc(s->slab, klass, &loc, &fresh);
                if (r < 0)
                        return r;
                if (!fresh) {
                        *ret_loc = loc;
                        return 0;
                }
                e = kvd_slab_extent_of(s->slab, loc);
                f = ssd_file_of_extent(s, e);
                ssd_extent_locate(s, e, &fd, &off);
                r = 0;
                /* Growing the file (fallocate, or a header past its end)
                 * would hide a truncation: look first. */
                if (!check_files(s)) {
                        r = -EIO;
                } else if (!s->provisioned[e]) {
                        if (fallocate(fd, 0, (off_t)off, (off_t)s->extent_bytes) < 0) {
                                r = -errno;
                        } else {
                                s->provisioned[e] = 1;
                                f->size = MAX(f->size, off + s->extent_bytes);
                        }
                }
                if (r == 0)
                        r = write_extent_header(s, e, kvd_slab_class_bytes(s->slab, klass));
                if (r == 0) {
                        ssd_dirty_queue(s, e);
                        *ret_loc = loc;
                        return 0;
                }
                kvd_slab_release(s->slab, loc);
                if (s->st.damaged)
                        return -EIO;
                /* fallocate's EFBIG: the file may not grow past ulimit -f. */
                if (r == -ENOSPC || r == -EDQUOT || r == -EFBIG) {
                        mark_full(s, e, r);
                        if (kvd_slab_extent_free(s->slab, e))
                                kvd_slab_retire(s->slab, e);
                        continue; /* a provisioned free extent may remain */
                }
                s->st.write_errors++;
                if (damage_error(r) && check_files(s))
                        set_damaged(s, "writing %s failed: %s", f->path, strerror(-r));
                if (!s->st.damaged) {
                        snprintf(s->st.condition, sizeof(s->st.condition), "extent write failed: %s", strerror(-r));
                        log_error("SSD tier: cannot prepare extent %u: %s", e, strerror(-r));
                }
                return r;
        }
}

static void ssd_free_loc(struct kvd_tier *t, uint32_t loc)
{
        kvd_slab_release(ssd_of(t)->slab, loc);
}

static void ssd_usage(const struct kvd_tier *t, struct kvd_tier_usage *ret)
{
        const struct kvd_ssd *s = container_of(t, const struct kvd_ssd, tier);

        kvd_slab_usage(s->slab, &ret->capacity_bytes, &ret->used_bytes, &ret->blocks);
}

static struct kvd_tier *ssd_destroy(struct kvd_tier *t)
{
        return t ? (kvd_ssd_free(ssd_of(t)), NULL) : NULL;
}

static const struct kvd_tier_ops ssd_ops;

/* ---- I/O ------------------------------------------------------------ */

static int host_buf_index(const struct kvd_ssd *s, const void *p)
{
        return 1 + (int)(((const uint8_t *)p - s->host_base) / s->host_chunk);
}

/* buf_index < 0: a buffer not registered (a bounce buffer). */
static void prep(struct kvd_ssd *s, struct io_uring_sqe *sqe, bool write, int fd, void *buf, unsigned len,
                 uint64_t off, int buf_index)
{
        if (!s->fixed || buf_index < 0) {
                if (write)
                        io_uring_prep_write(sqe, fd, buf, len, off);
                else
                        io_uring_prep_read(sqe, fd, buf, len, off);
        } else if (write)
                io_uring_prep_write_fixed(sqe, fd, buf, len, off, buf_index);
        else
                io_uring_prep_read_fixed(sqe, fd, buf, len, off, buf_index);
}

/* A completed I/O's time from submission in its histogram. */
static void count_latency(struct kvd_tier_latency *l, uint64_t t0_ns)
{
        uint64_t ns = kvd_now_ns() - t0_ns, us = ns / 1000u;
        unsigned b = us ? 64u - (unsigned)__builtin_clzll(us) : 0;

        l->hist[b < KVD_TIER_LAT_BUCKETS ? b : KVD_TIER_LAT_BUCKETS - 1]++;
        l->sum_ns += ns;
}

/* One SQE per operation (a large read: a few): a block's host page carries
 * its slot header in its first 4 KiB, so header and payload move in one
 * I/O, straight between the page and the slot; an encoded block's slot is
 * its bounce buffer (ssd-cpu.c). Invalidation writes a zeroed header from
 * the arena. */
static void submit_op(struct kvd_ssd *s, struct op *o)
{
        struct io_uring_sqe *sqe;
        uint64_t off;
        void *buf;
        unsigned len;
        int fd, index;

        if (o->kind == OP_SCRUB)
                ssd_extent_locate(s, o->loc, &fd, &off);
        else
                ssd_locate(s, o->loc, &fd, &off);
        o->result = 0;
        o->t0_ns = kvd_now_ns();
        o->moved = 0;
        o->pending = o->pieces;
        if (o->kind == OP_SYNC) {
                o->want = 0;
                sqe = io_uring_get_sqe(&s->ring);
                io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
                io_uring_sqe_set_data(sqe, o);
                if (s->inflight++ == 0)
                        s->busy_since_ns = kvd_now_ns();
                return;
        }
        if (o->kind == OP_INVALIDATE || o->kind == OP_SCRUB) {
                o->arena = s->arena_free[--s->arena_top];
                buf = s->arena + (size_t)o->arena * PAGE;
                memset(buf, 0, PAGE);
                len = PAGE;
                index = 0;
        } else {
                buf = o->bounce ? o->bounce : o->page;
                len = o->io_len;
                index = o->bounce ? -1 : host_buf_index(s, o->page);
        }
        if (o->kind == OP_WRITE) {
                struct kvd_slot_header *h = buf;

                memset(h, 0, KVD_SLOT_HDR_BYTES);
                *h = o->hdr;
                h->magic = KVD_SLOT_MAGIC;
                h->version = KVD_SLOT_VERSION;
                h->codec = (uint16_t)o->codec;
                h->generation = ++s->next_gen;
                h->extent_generation = s->extent_gen[kvd_slab_extent_of(s->slab, o->loc)];
                h->payload_len = o->stored_len;
                h->payload_crc = o->crc_ready ? o->crc : crc32c((uint8_t *)buf + KVD_SLOT_HDR_BYTES, o->stored_len, ~0u);
                kvd_slot_header_seal(h);
        }
        o->want = len;
        if (s->inflight == 0)
                s->busy_since_ns = kvd_now_ns();
        s->inflight += o->pieces;
        for (unsigned k = 0, at = 0; k < o->pieces; k++) {
                unsigned n = k + 1 < o->pieces ? ALIGN_UP(len / o->pieces, PAGE) : len - at;

                sqe = io_uring_get_sqe(&s->ring);
                prep(s, sqe, o->kind == OP_WRITE || o->kind == OP_INVALIDATE, fd, (uint8_t *)buf + at, n, off + at,
                     index);
                if (o->dsync)
                        sqe->rw_flags = RWF_DSYNC;
                io_uring_sqe_set_data(sqe, o);
                at += n;
        }
}

/* How many SQEs o is to take: a read of a large slot as many pieces as the
 * queue can spare, the rest one. */
static unsigned pieces_of(const struct kvd_ssd *s, const struct op *o)
{
        unsigned spare = s->qd - s->inflight, want;

        if (o->kind != OP_READ || s->queued > 0)
                return 1;
        want = o->io_len / SPLIT_BYTES;
        want = want > SPLIT_MAX ? SPLIT_MAX : want;
        return want < 2 ? 1 : want < spare ? want : spare;
}

/* Starts queued operations, most urgent first, while there is room. */
static void pump(struct kvd_ssd *s)
{
        bool any = false;

        for (int p = 0; p < KVD_PRIO_COUNT; p++) {
                while (s->queue[p].head && s->inflight < s->qd) {
                        struct op *o = s->queue[p].head;

                        s->queue[p].head = o->next;
                        if (!s->queue[p].head)
                                s->queue[p].tail = NULL;
                        s->queued--;
                        o->pieces = pieces_of(s, o);
                        submit_op(s, o);
                        any = true;
                }
        }
        s->unsubmitted |= any;
}

static void ssd_flush(struct kvd_tier *t)
{
        struct kvd_ssd *s = ssd_of(t);
        int r;

        if (!s->unsubmitted)
                return;
        s->unsubmitted = false;
        r = io_uring_submit(&s->ring);
        if (r < 0)
                log_error("SSD tier: io_uring_submit: %s", strerror(-r));
}

void ssd_enqueue(struct kvd_ssd *s, struct op *o)
{
        if (ssd_journal_park(s, o))
                return;
        o->next = NULL;
        if (s->queue[o->prio].tail)
                s->queue[o->prio].tail->next = o;
        else
                s->queue[o->prio].head = o;
        s->queue[o->prio].tail = o;
        s->queued++;
        pump(s);
}

static struct op *new_op(struct kvd_ssd *s, enum op_kind kind, uint32_t loc, void *page, uint32_t len,
                         enum kvd_prio prio, kvd_tier_cb cb, void *ctx)
{
        struct op *o = calloc(1, sizeof(*o));

        if (!o)
                return NULL;
        o->s = s;
        o->kind = kind;
        o->loc = loc;
        o->page = page;
        o->len = len;
        o->prio = prio;
        o->cb = cb;
        o->ctx = ctx;
        o->arena = -1;
        return o;
}

static void ssd_write(struct kvd_tier *t, uint32_t loc, const struct kvd_slot_header *tmpl, void *page,
                      uint32_t len, bool dsync, enum kvd_prio prio, kvd_tier_cb cb, void *ctx)
{
        struct kvd_ssd *s = ssd_of(t);
        struct op *o = new_op(s, OP_WRITE, loc, page, len, prio, cb, ctx);

        if (!o) {
                cb(ctx, -ENOMEM);
                return;
        }
        o->hdr = *tmpl;
        o->dsync = dsync;
        ssd_dirty_begin(s, kvd_slab_extent_of(s->slab, loc));
        if (!ssd_cpu_write(s, o))
                ssd_enqueue(s, o);
}

static void ssd_read(struct kvd_tier *t, uint32_t loc, void *page, uint32_t len, uint64_t key_hi,
                     uint64_t key_lo, uint32_t layer, enum kvd_prio prio, kvd_tier_cb cb, void *ctx)
{
        struct kvd_ssd *s = ssd_of(t);
        struct op *o = new_op(s, OP_READ, loc, page, len, prio, cb, ctx);

        if (!o) {
                cb(ctx, -ENOMEM);
                return;
        }
        o->hdr.key_hi = key_hi;
        o->hdr.key_lo = key_lo;
        o->hdr.layer = layer;
        if (!ssd_read_bounce(s, o)) {
                free(o);
                cb(ctx, -ENOMEM);
                return;
        }
        ssd_enqueue(s, o);
}

static void ssd_sync(struct kvd_tier *t, uint32_t loc, enum kvd_prio prio, kvd_tier_cb cb, void *ctx)
{
        struct kvd_ssd *s = ssd_of(t);
        struct op *o = new_op(s, OP_SYNC, loc, NULL, 0, prio, cb, ctx);

        if (!o) {
                cb(ctx, -ENOMEM);
                return;
        }
        ssd_enqueue(s, o);
}

static void ssd_discard(struct kvd_tier *t, uint32_t loc)
{
        struct kvd_ssd *s = ssd_of(t);
        struct op *o = new_op(s, OP_INVALIDATE, loc, NULL, 0, KVD_PRIO_BACKGROUND, NULL, NULL);

        if (o) {
                ssd_dirty_begin(s, kvd_slab_extent_of(s->slab, loc));
                ssd_enqueue(s, o);
                return;
        }
        kvd_slab_release(s->slab, loc); /* the header stays: a resurrected block is still a right one */
}

static int verify_read(struct kvd_ssd *s, const struct op *o, const struct kvd_slot_header *h)
{
        if (!kvd_slot_matches(h, s->extent_gen[kvd_slab_extent_of(s->slab, o->loc)], o->hdr.key_hi, o->hdr.key_lo,
                              o->hdr.layer, (const uint8_t *)o->page + KVD_SLOT_HDR_BYTES, o->len)) {
                log_debug("SSD slot %u: magic %x gen %llu/%llu key %llx/%llx want %llx/%llx layer %u/%u len %u/%u",
                          o->loc, h->magic, (unsigned long long)h->extent_generation,
                          (unsigned long long)s->extent_gen[kvd_slab_extent_of(s->slab, o->loc)],
                          (unsigned long long)h->key_lo, (unsigned long long)h->key_hi,
                          (unsigned long long)o->hdr.key_lo, (unsigned long long)o->hdr.key_hi, h->layer,
                          o->hdr.layer, h->payload_len, o->len);
                s->st.crc_failures++;
                return -EBADMSG;
        }
        return 0;
}

/* A durable write (or sync) ended well: before it is reported done, make
 * sure it went where a restart will find it. Files once per pass over the
 * completions, the extent once per pass too (writes come in runs). The
 * extent's header is read through the ring, into an invalidation buffer
 * (one is free: o's own I/O was one of qd in flight), so that the loop
 * does not wait for the drive: scattered durable writes cost one such
 * read each. 0, -EIO, or 1: the read is in flight and ends o
 * (finish_verify()). */
static int verify_durable(struct kvd_ssd *s, struct op *o)
{
        uint32_t e = kvd_slab_extent_of(s->slab, o->loc);
        struct io_uring_sqe *sqe;
        uint64_t off;
        int fd;

        if (s->st.damaged)
                return -EIO;
        if (s->files_checked_pass != s->pass) {
                if (!check_files(s))
                        return -EIO;
                s->files_checked_pass = s->pass;
        }
        if (s->extent_checked == e && s->extent_checked_pass == s->pass)
                return 0;
        if (s->inflight < s->qd && s->arena_top > 0) {
                ssd_extent_locate(s, e, &fd, &off);
                o->verifying = true;
                o->arena = s->arena_free[--s->arena_top];
                o->result = 0;
                o->moved = 0;
                o->want = PAGE;
                o->pieces = o->pending = 1;
                s->inflight++;
                sqe = io_uring_get_sqe(&s->ring);
                prep(s, sqe, false, fd, s->arena + (size_t)o->arena * PAGE, PAGE, off, 0);
                io_uring_sqe_set_data(sqe, o);
                s->unsubmitted = true;
                return 1;
        }
        if (!check_extent(s, e))
                return -EIO;
        s->extent_checked = e;
        s->extent_checked_pass = s->pass;
        return 0;
}

/* The scrub's read of extent o->loc's header: as check_extent(), unless
 * the extent was freed or given a new header meanwhile (then what was read
 * is no longer what must be there). */
static void scrub_extent(struct kvd_ssd *s, uint32_t e)
{
        struct op *o = new_op(s, OP_SCRUB, e, NULL, 0, KVD_PRIO_BACKGROUND, NULL, NULL);

        if (!o)
                return;
        o->hdr.extent_generation = s->extent_gen[e];
        s->scrub_inflight++;
        ssd_enqueue(s, o);
}

static void finish_scrub(struct kvd_ssd *s, struct op *o)
{
        uint32_t e = o->loc;

        s->scrub_inflight--;
        if (kvd_slab_extent_class(s->slab, e) >= 0 && s->extent_gen[e] == o->hdr.extent_generation)
                extent_read_ok(s, e, s->arena + (size_t)o->arena * PAGE,
                               o->short_io || o->result >= 0 ? (int)o->moved : o->result);
        ssd_op_end(s, o, 0);
}

static void finish_verify(struct kvd_ssd *s, struct op *o)
{
        uint32_t e = kvd_slab_extent_of(s->slab, o->loc);
        /* Short: the file was cut there (a header lost, not a failed drive). */
        int r = o->short_io || o->result >= 0 ? (int)o->moved : o->result;

        if (extent_read_ok(s, e, s->arena + (size_t)o->arena * PAGE, r)) {
                s->extent_checked = e;
                s->extent_checked_pass = s->pass;
                ssd_op_end(s, o, 0);
        } else {
                ssd_op_end(s, o, -EIO);
        }
}

/* An I/O failed: is its file still whole? If so, was it the drive? */
static void io_failed(struct kvd_ssd *s, const struct op *o)
{
        const struct ssd_file *f = ssd_file_of_extent(s, kvd_slab_extent_of(s->slab, o->loc));
        const char *what = o->kind == OP_READ ? "reading" : o->kind == OP_SYNC ? "syncing" : "writing";

        if (!check_files(s) || !damage_error(o->result))
                return;
        if (o->short_io)
                set_damaged(s, "%s %s came up short", what, f->path);
        else
                set_damaged(s, "%s %s failed: %s", what, f->path, strerror(-o->result));
}

/* An operation's I/O is done: its check (a read's may go to the threads,
 * which end it), then its end. */
static void finish_op(struct kvd_ssd *s, struct op *o)
{
        int r = o->result;

        s->inflight -= o->pieces;
        if (s->inflight == 0)
                s->st.busy_ns += kvd_now_ns() - s->busy_since_ns;
        if (o->verifying) {
                finish_verify(s, o);
                return;
        }
        if (o->kind == OP_SCRUB) {
                finish_scrub(s, o);
                return;
        }
        if (r < 0)
                io_failed(s, o);
        if (r == 0 && o->kind == OP_READ) {
                if (ssd_cpu_read(s, o))
                        return;
                r = verify_read(s, o, o->page);
        }
        /* A write into a damaged tier is not one a restart would find. */
        if (r == 0 && o->kind == OP_WRITE)
                r = o->dsync ? verify_durable(s, o) : s->st.damaged ? -EIO : 0;
        if (r == 0 && o->kind == OP_SYNC)
                r = verify_durable(s, o);
        if (r > 0)
                return;
        ssd_op_end(s, o, r);
}

void ssd_op_end(struct kvd_ssd *s, struct op *o, int r)
{
        switch (o->kind) {
        case OP_READ:
                if (o->result < 0)
                        s->st.read_errors++;
                else if (r == 0) {
                        s->st.reads++;
                        s->st.read_bytes += o->len;
                        count_latency(&s->st.read_lat, o->t0_ns);
                }
                break;
        case OP_WRITE:
                if (r < 0)
                        s->st.write_errors++;
                else {
                        s->st.writes++;
                        s->st.write_bytes += o->len;
                        count_latency(&s->st.write_lat, o->t0_ns);
                }
                break;
        case OP_INVALIDATE:
        case OP_SYNC:
        case OP_SCRUB:
                break;
        }
        if (r < 0 && r != -EBADMSG && o->kind != OP_INVALIDATE && !s->st.damaged)
                snprintf(s->st.condition, sizeof(s->st.condition), "%s error: %s",
                         o->kind == OP_READ ? "read" : "write", strerror(-r));
        if (o->arena >= 0)
                s->arena_free[s->arena_top++] = o->arena;
        /* Only now may the slot be reused: a late wipe would hit its new block. */
        if (o->kind == OP_INVALIDATE)
                kvd_slab_release(s->slab, o->loc);
        if (o->kind == OP_WRITE || o->kind == OP_INVALIDATE)
                ssd_dirty_end(s, kvd_slab_extent_of(s->slab, o->loc));
        if (o->cb)
                o->cb(o->ctx, r);
        free(o->bounce);
        free(o);
}

static void process_cqe(struct kvd_ssd *s, const struct io_uring_cqe *cqe)
{
        struct op *o = io_uring_cqe_get_data(cqe);

        /* A piece that fails fails the whole: the read is then a miss. */
        if (cqe->res < 0 && o->result == 0)
                o->result = cqe->res;
        else if (cqe->res > 0)
                o->moved += (unsigned)cqe->res;
        if (--o->pending > 0)
                return;
        if (o->result == 0 && o->moved != o->want) {
                o->result = -EIO; /* short: the file was truncated under us */
                o->short_io = true;
        }
        finish_op(s, o);
}

static void ssd_reap(struct kvd_ssd *s)
{
        struct io_uring_cqe *cqe;
        uint64_t v;

        if (read(s->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                log_warning("SSD eventfd: %m");
        s->pass++;
        while (io_uring_peek_cqe(&s->ring, &cqe) == 0) {
                process_cqe(s, cqe);
                io_uring_cqe_seen(&s->ring, cqe);
        }
        pump(s);
}

static void ssd_ready(struct kvd_loop_watch *w, uint32_t events)
{
        (void)events;
        ssd_reap(container_of(w, struct kvd_ssd, efd_w));
}

static int ssd_watch(struct kvd_tier *t, struct kvd_loop *l)
{
        struct kvd_ssd *s = ssd_of(t);
        int r;

        s->efd_w = (struct kvd_loop_watch){ s->efd, ssd_ready };
        r = kvd_loop_add(l, &s->efd_w, KVD_LOOP_IN);
        if (r == 0)
                r = kvd_jobs_watch(s->jobs, l);
        return r < 0 ? r : ssd_ckpt_watch(s, l);
}

struct kvd_tier *kvd_ssd_tier(struct kvd_ssd *s)
{
        return &s->tier;
}

static void ssd_stats(const struct kvd_tier *t, struct kvd_tier_stats *ret)
{
        const struct kvd_ssd *s = to_ssd_const(t);
        *ret = s->st;
        kvd_slab_usage(s->slab, &ret->capacity_bytes, &ret->used_bytes, &ret->blocks);
        ret->inflight = s->inflight;
        ret->queued = s->queued;
        /* The busy period still open counts too: under sustained load the
         * SSD may never go idle, and the scheduler would see no busy time. */
        if (s->inflight > 0)
                ret->busy_ns += kvd_now_ns() - s->busy_since_ns;
}

/* ---- set-up and recovery -------------------------------------------- */

/* Claims dir for this daemon: an exclusive OFD lock on dir/kvdrive.lock,
 * held (the fd open) for the daemon's life, with our pid in the file for
 * whoever finds it locked. The lock, not the file, is what counts: a file
 * left by a dead daemon is no obstacle. */
static int lock_dir(struct ssd_file *f, const char *dir)
{
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        char path[PATH_MAX], holder[24];
        ssize_t n;
        int r;

        if ((size_t)snprintf(path, sizeof(path), "%s/" LOCK_NAME, dir) >= sizeof(path))
                return -ENAMETOOLONG;
        f->lock_fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (f->lock_fd < 0) {
                r = -errno;
                log_error("SSD tier: cannot open the lock file %s: %s", path, strerror(-r));
                return r;
        }
        if (fcntl(f->lock_fd, F_OFD_SETLK, &fl) == 0) {
                n = snprintf(holder, sizeof(holder), "%ld\n", (long)getpid());
                if (ftruncate(f->lock_fd, 0) < 0 || pwrite(f->lock_fd, holder, (size_t)n, 0) != n)
                        log_warning("SSD tier: cannot write our pid into %s: %m", path);
                return 0;
        }
        r = -errno;
        if (r != -EAGAIN && r != -EACCES) {
                log_error("SSD tier: cannot lock %s: %s", path, strerror(-r));
                return r;
        }
        n = pread(f->lock_fd, holder, sizeof(holder) - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strspn(holder, "0123456789")] = '\0';
        if (holder[0] && strtol(holder, NULL, 10) == (long)getpid())
                /* OFD locks conflict within a process too. */
                log_error("SSD tier: %s is named twice in ssd-dir (perhaps by another path)", dir);
        else
                log_error("SSD tier: %s is in use by another kvdrived (pid %s, holding %s); "
                          "two daemons must not share an SSD directory", dir, holder[0] ? holder : "unknown", path);
        return -EBUSY;
}

/* A directory we may not write, under systemd: most likely the unit's
 * ProtectSystem=strict, which only a drop-in lifts (systemd/kvdrived.service). */
static void hint_unwritable(const char *dir, int r)
{
        if (!getenv("INVOCATION_ID") || (r != -EROFS && r != -EACCES && r != -EPERM))
                return;
        log_error("SSD tier: %s is not writable under this service: kvdrived.service makes everything but "
                  "/var/lib/kvdrive read-only (ProtectSystem=strict); allow it with a drop-in, `systemctl edit "
                  "kvdrived`: [Service] ReadWritePaths=%s, then restart (README.md, \"SSD directories under "
                  "systemd\")", dir, dir);
}

static int open_dir(struct kvd_ssd *s, const char *dir, uint64_t bytes)
{
        struct ssd_file *f = &s->files[s->n_files];
        struct stat st;
        int r;

        /* Never created here: a mistyped mount point would fill another disk. */
        if (stat(dir, &st) < 0) {
                r = -errno;
                log_error("SSD tier: directory %s: %s (ssd-dir names existing directories; kvdrived does not "
                          "create them)", dir, strerror(-r));
                return r;
        }
        if (!S_ISDIR(st.st_mode)) {
                log_error("SSD tier: %s is not a directory", dir);
                return -ENOTDIR;
        }
        r = lock_dir(f, dir);
        if (r < 0) {
                hint_unwritable(dir, r);
                return r;
        }
        if ((size_t)snprintf(f->path, sizeof(f->path), "%s/" FILE_NAME, dir) >= sizeof(f->path))
                return -ENAMETOOLONG;
        f->fd = open(f->path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
        if (f->fd < 0) {
                struct statfs sfs;

                r = -errno;
                if (r == -EINVAL) {
                        long type = statfs(dir, &sfs) == 0 ? (long)sfs.f_type : 0;

                        log_error("SSD tier: the file system of %s (type 0x%lx) does not support O_DIRECT; "
                                  "refusing to run the SSD tier through the page cache", dir, type);
                } else {
                        log_error("SSD tier: cannot open %s: %s", f->path, strerror(-r));
                        hint_unwritable(dir, r);
                }
                return r;
        }
        if (fstat(f->fd, &st) < 0) {
                r = -errno;
                log_error("SSD tier: cannot stat %s: %s", f->path, strerror(-r));
                return r;
        }
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        if ((uint64_t)st.st_size > bytes)
                log_notice("SSD tier: %s is larger (%" PRIu64 " MiB) than its share of ssd-bytes; the rest is "
                           "ignored", f->path, (uint64_t)st.st_size >> 20);
        s->n_files++;
        return 0;
}

int kvd_ssd_new(const struct kvd_config *cfg, struct kvd_ssd **ret)
{
        struct io_uring_params p = { 0 };
        char dirs[sizeof(cfg->ssd_dirs)], *save = NULL;
        struct kvd_ssd *s;
        struct rlimit rl;
        uint64_t per_file;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->tier.ops = &ssd_ops;
        s->cfg = cfg;
        s->efd = -1;
        s->ck.fd = s->ck.step_fd = -1;
        s->qd = cfg->ssd_queue_depth;
        s->extent_bytes = cfg->ssd_extent_bytes;
        s->codec = (enum kvd_codec)cfg->ssd_codec;
        s->pass = 1;
        snprintf(s->st.condition, sizeof(s->st.condition), "ok");
        for (unsigned i = 0; i < MAX_DIRS; i++)
                s->files[i].fd = s->files[i].lock_fd = -1;
        /* Slots have one size per namespace: a block whose encoded length
         * varies (zstd) would need a slot class per length (docs/decisions.md). */
        if (s->codec == KVD_CODEC_ID_ZSTD) {
                log_error("SSD tier: ssd-codec=zstd is not supported (its output length varies, an SSD slot's does "
                          "not): use fp8, int8 or int4 on SSD, and zstd as remote-codec");
                r = -EINVAL;
                goto err;
        }
        r = kvd_jobs_new(cfg->ssd_threads, "kvd-ssd-cpu", &s->jobs);
        if (r < 0) {
                log_error("SSD tier: cannot start its threads: %s", strerror(-r));
                goto err;
        }
        memcpy(dirs, cfg->ssd_dirs, sizeof(dirs));
        for (char *d = strtok_r(dirs, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
                if (s->n_files == MAX_DIRS) {
                        log_error("SSD tier: at most %d directories", MAX_DIRS);
                        r = -E2BIG;
                        goto err;
                }
                r = open_dir(s, d, cfg->ssd_bytes);
                if (r < 0)
                        goto err;
        }
        if (s->n_files == 0) {
                log_error("SSD tier: ssd-bytes is set but ssd-dir names no directory");
                r = -EINVAL;
                goto err;
        }
        per_file = cfg->ssd_bytes / s->n_files / s->extent_bytes;
        s->n_extents = (uint32_t)(per_file * s->n_files);
        if (s->n_extents == 0) {
                log_error("SSD tier: ssd-bytes must hold at least one %" PRIu64 "-byte extent per directory",
                          s->extent_bytes);
                r = -EINVAL;
                goto err;
        }
        /* Writes past it fail with EFBIG (SIGXFSZ is ignored): the tier
         * caps itself where its files may not grow. */
        if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            (uint64_t)rl.rlim_cur < per_file * s->extent_bytes)
                log_warning("SSD tier: the file size limit (ulimit -f, LimitFSIZE=) is %" PRIu64 " MiB, below the "
                            "%" PRIu64 " MiB of each SSD file: the tier will be capped there", (uint64_t)rl.rlim_cur >> 20,
                            per_file * s->extent_bytes >> 20);
        r = kvd_slab_new(s->n_extents, s->extent_bytes, KVD_EXTENT_HDR_BYTES, &s->slab);
        if (r < 0)
                goto err;
        s->provisioned = calloc(s->n_extents, 1);
        s->extent_gen = calloc(s->n_extents, sizeof(uint64_t));
        s->arena_free = calloc(s->qd, sizeof(int));
        if (!s->provisioned || !s->extent_gen || !s->arena_free ||
            posix_memalign((void **)&s->arena, PAGE, (size_t)s->qd * PAGE) ||
            posix_memalign(&s->sync_buf, PAGE, PAGE)) {
                r = -ENOMEM;
                goto err;
        }
        for (unsigned i = 0; i < s->qd; i++)
                s->arena_free[s->arena_top++] = (int)i;
        r = ssd_ckpt_init(s);
        if (r < 0)
                goto err;

        r = io_uring_queue_init_params(s->qd, &s->ring, &p);
        if (r < 0) {
                log_error("SSD tier: io_uring_queue_init: %s", strerror(-r));
                goto err;
        }
        s->ring_ok = true;
        s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->efd < 0 || io_uring_register_eventfd(&s->ring, s->efd) < 0) {
                r = -errno;
                goto err;
        }
        *ret = s;
        return 0;
err:
        kvd_ssd_free(s);
        return r;
}

void kvd_ssd_attach_host(struct kvd_ssd *s, struct kvd_host *host)
{
        const struct kvd_config *cfg = s->cfg;
        void *base;
        unsigned n;
        int r = -ENOMEM;

        /* Fixed buffers: the header arena, then the host pool in chunks of
         * whole extents up to 1 GiB (a registered buffer's limit). */
        kvd_host_region(host, &base, &s->host_len);
        s->host_base = base;
        s->host_chunk = (UINT64_C(1) << 30) / cfg->host_extent_bytes * cfg->host_extent_bytes;
        if (s->host_chunk == 0)
                s->host_chunk = cfg->host_extent_bytes;
        n = 1 + (unsigned)((s->host_len + s->host_chunk - 1) / s->host_chunk);
        {
                struct iovec *iov = calloc(n, sizeof(*iov));

                if (iov) {
                        iov[0] = (struct iovec){ s->arena, (size_t)s->qd * PAGE };
                        for (unsigned i = 1; i < n; i++) {
                                uint64_t o = (uint64_t)(i - 1) * s->host_chunk;

                                iov[i] = (struct iovec){ s->host_base + o, MIN(s->host_chunk, s->host_len - o) };
                        }
                        r = io_uring_register_buffers(&s->ring, iov, n);
                        free(iov);
                }
        }
        s->fixed = r == 0;
        if (r < 0)
                log_warning("SSD tier: cannot register the host pool as io_uring fixed buffers (%s); "
                            "using plain O_DIRECT reads and writes", strerror(-r));
        log_info("SSD tier: %" PRIu64 " MiB in %u extents of %" PRIu64 " MiB over %u director%s, queue depth %u%s, "
                 "codec %s",
                 (uint64_t)s->n_extents * s->extent_bytes >> 20, s->n_extents, s->extent_bytes >> 20, s->n_files,
                 s->n_files == 1 ? "y" : "ies", s->qd, s->fixed ? ", fixed buffers" : "", kvd_codec_name(s->codec));
}

void ssd_drain(struct kvd_tier *t)
{
        struct kvd_ssd *s = ssd_of(t);

        while (s->ring_ok && (s->inflight > 0 || s->queued > 0 || (s->jobs && kvd_jobs_outstanding(s->jobs)) ||
                              ssd_journal_busy(s))) {
                struct io_uring_cqe *cqe;
                int r;

                /* Work at the threads (the journal's holds back writes):
                 * what it queues is drained next. */
                if (s->inflight == 0 && s->queued == 0) {
                        if (kvd_jobs_outstanding(s->jobs))
                                kvd_jobs_wait(s->jobs);
                        else
                                ssd_journal_wait(s);
                        continue;
                }
                pump(s);
                ssd_flush(&s->tier);
                /* A signal is no reason to leave I/O in flight. */
                while ((r = io_uring_wait_cqe(&s->ring, &cqe)) == -EINTR)
                        ;
                if (r < 0)
                        break;
                s->pass++;
                process_cqe(s, cqe);
                io_uring_cqe_seen(&s->ring, cqe);
        }
}

struct kvd_ssd *kvd_ssd_free(struct kvd_ssd *s)
{
        if (!s)
                return NULL;
        ssd_drain(&s->tier);
        s->jobs = kvd_jobs_free(s->jobs);
        for (int p = 0; p < KVD_PRIO_COUNT; p++)
                while (s->queue[p].head) { /* only if the ring failed */
                        struct op *o = s->queue[p].head;

                        s->queue[p].head = o->next;
                        if (o->cb)
                                o->cb(o->ctx, -ECANCELED);
                        free(o->bounce);
                        free(o);
                }
        ssd_ckpt_fini(s);
        if (s->ring_ok)
                io_uring_queue_exit(&s->ring);
        if (s->efd >= 0)
                close(s->efd);
        /* The locks go with their fds: only now may another daemon come. */
        for (unsigned i = 0; i < MAX_DIRS; i++) {
                if (s->files[i].fd >= 0)
                        close(s->files[i].fd);
                if (s->files[i].lock_fd >= 0)
                        close(s->files[i].lock_fd);
        }
        kvd_slab_free(s->slab);
        free(s->provisioned);
        free(s->extent_gen);
        free(s->arena_free);
        free(s->arena);
        free(s->sync_buf);
        free(s);
        return NULL;
}

static const struct kvd_tier_ops ssd_ops = {
        .name = "ssd",
        .class_for = ssd_class_for,
        .alloc = ssd_alloc,
        .free = ssd_free_loc,
        .usage = ssd_usage,
        .destroy = ssd_destroy,
        .write = ssd_write,
        .read = ssd_read,
        .stored_len = ssd_stored_len,
        .sync = ssd_sync,
        .discard = ssd_discard,
        .recover = ssd_recover,
        .checkpoint = ssd_checkpoint,
        .checkpoint_start = ssd_checkpoint_start,
        .stats = ssd_stats,
        .watch = ssd_watch,
        .flush = ssd_flush,
        .drain = ssd_drain,
        .check = ssd_check,
        .damaged = ssd_damaged,
};

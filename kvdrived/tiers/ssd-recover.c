/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier at start and at a clean stop: the extents' headers, then the
 * index from the newest checkpoint (when it still describes the files) and
 * the slot headers of the extents its journal says were written since, or
 * by reading every slot's header; and the checkpoint a clean stop writes
 * last (docs/decisions.md, "A restart after a clean stop loads an index
 * checkpoint" and "Interval checkpoints and the dirty-extent journal").
 */
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
#include "ssd-journal.h"

/* Reads n slot headers of extent e into the arena, in one batch. */
static int read_headers(struct kvd_ssd *s, const uint32_t *locs, unsigned n)
{
        struct io_uring_cqe *cqe;

        for (unsigned i = 0; i < n; i++) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
                uint64_t off;
                int fd;

                ssd_locate(s, locs[i], &fd, &off);
                io_uring_prep_read(sqe, fd, s->arena + (size_t)i * PAGE, PAGE, off);
                io_uring_sqe_set_data64(sqe, i);
        }
        io_uring_submit(&s->ring);
        for (unsigned i = 0; i < n; i++) {
                int r;

                while ((r = io_uring_wait_cqe(&s->ring, &cqe)) == -EINTR)
                        ; /* a signal: recovery goes on */
                if (r < 0)
                        return r;
                if (cqe->res != PAGE) /* short or failed: that header is unreadable */
                        memset(s->arena + io_uring_cqe_get_data64(cqe) * PAGE, 0, PAGE);
                io_uring_cqe_seen(&s->ring, cqe);
        }
        return 0;
}

/* How long each file must be, from the extents recovery found in it. A
 * file cut short while no daemon ran gets its length back (what was cut
 * reads as zeros: a miss, counted, when read), so that from now on any
 * shortening is damage. */
static void settle_sizes(struct kvd_ssd *s)
{
        for (uint32_t e = 0; e < s->n_extents; e++) {
                struct ssd_file *f = ssd_file_of_extent(s, e);
                uint64_t off;
                int fd;

                if (!s->provisioned[e])
                        continue;
                ssd_extent_locate(s, e, &fd, &off);
                f->size = MAX(f->size, off + s->extent_bytes);
        }
        for (unsigned i = 0; i < s->n_files; i++) {
                struct ssd_file *f = &s->files[i];
                struct stat st;

                if (fstat(f->fd, &st) < 0 || (uint64_t)st.st_size >= f->size)
                        continue;
                log_warning("SSD tier: %s is %" PRIu64 " bytes, shorter than the extents in it (cut short while "
                            "no daemon ran?): extending it to %" PRIu64 " bytes; what was cut is lost", f->path,
                            (uint64_t)st.st_size, f->size);
                if (fallocate(f->fd, 0, st.st_size, (off_t)(f->size - (uint64_t)st.st_size)) < 0) {
                        log_warning("SSD tier: cannot extend %s: %m", f->path);
                        f->size = (uint64_t)st.st_size;
                }
        }
}

_Static_assert(MAX_DIRS <= KVD_CKPT_MAX_FILES, "a checkpoint names every SSD file");

/* The directory holding the checkpoint: the first SSD directory. */
void ssd_ckpt_dir(const struct kvd_ssd *s, char *buf, size_t n)
{
        const char *slash = strrchr(s->files[0].path, '/');
        size_t len = slash ? (size_t)(slash - s->files[0].path) : 0;

        snprintf(buf, n, "%.*s", (int)len, s->files[0].path);
}

/* What a checkpoint must match: the files as they are now. */
int ssd_ckpt_layout(const struct kvd_ssd *s, struct kvd_ckpt_layout *ret)
{
        *ret = (struct kvd_ckpt_layout){ .n_files = s->n_files, .n_extents = s->n_extents,
                                         .extent_bytes = s->extent_bytes };
        for (unsigned i = 0; i < s->n_files; i++) {
                int r = kvd_ckpt_file_of(s->files[i].fd, &ret->files[i]);

                if (r < 0)
                        return r;
        }
        return 0;
}

/* Pass one of recovery: every extent header (one read each), into
 * slot_bytes[e] (0: no valid header, or a slot size we do not have). */
static void recover_extents(struct kvd_ssd *s, uint32_t *slot_bytes)
{
        const struct kvd_extent_header *eh = s->sync_buf;

        for (uint32_t e = 0; e < s->n_extents; e++) {
                uint64_t off;
                ssize_t n;
                int fd, klass;

                slot_bytes[e] = 0;
                ssd_extent_locate(s, e, &fd, &off);
                n = pread(fd, s->sync_buf, PAGE, (off_t)off);
                if (n != PAGE)
                        continue; /* beyond the end of the file: never provisioned */
                s->provisioned[e] = 1; /* fallocate again later is harmless either way */
                if (!kvd_extent_header_valid(eh))
                        continue;
                s->next_extent_gen = MAX(s->next_extent_gen, eh->generation);
                s->extent_gen[e] = eh->generation;
                klass = kvd_slab_class_for(s->slab, eh->slot_bytes);
                if (klass < 0 || kvd_slab_class_bytes(s->slab, klass) != eh->slot_bytes)
                        continue;
                slot_bytes[e] = eh->slot_bytes;
        }
}

/* Pass two without a checkpoint: every slot header of extent e. */
static int scan_extent(struct kvd_ssd *s, uint32_t e, uint32_t slot_bytes, uint32_t *locs, kvd_tier_recover_fn fn,
                       void *ctx, int64_t *kept)
{
        uint32_t ppe = kvd_slab_pages_per_extent(s->slab), slot_pages = slot_bytes / PAGE;
        uint32_t n_slots = (ppe - KVD_EXTENT_HDR_BYTES / PAGE) / slot_pages;
        int klass = kvd_slab_class_for(s->slab, slot_bytes);

        for (uint32_t first = 0; first < n_slots; first += s->qd) {
                unsigned batch = MIN(s->qd, n_slots - first);
                int r;

                for (unsigned i = 0; i < batch; i++)
                        locs[i] = e * ppe + KVD_EXTENT_HDR_BYTES / PAGE + (first + i) * slot_pages;
                r = read_headers(s, locs, batch);
                if (r < 0)
                        return r;
                s->st.recover_headers_read += batch;
                for (unsigned i = 0; i < batch; i++) {
                        const struct kvd_slot_header *h = (const void *)(s->arena + (size_t)i * PAGE);

                        if (!kvd_slot_header_recoverable(h, s->extent_gen[e], slot_bytes)) {
                                /* A slot header with its magic but a bad crc was torn or
                                 * damaged; a good one of another extent generation is
                                 * just the extent's earlier life. */
                                if (kvd_slot_header_torn(h))
                                        s->st.crc_failures++;
                                continue;
                        }
                        s->next_gen = MAX(s->next_gen, h->generation);
                        if (kvd_slab_claim(s->slab, klass, locs[i]) < 0)
                                continue;
                        if (fn(ctx, h, locs[i], klass))
                                (*kept)++;
                        else
                                kvd_slab_release(s->slab, locs[i]);
                }
        }
        return 0;
}

/* Whether checkpoint k describes the extents not written since (dirty)
 * as pass one found them. */
static bool ckpt_matches(const struct kvd_ssd *s, const struct kvd_ckpt *k, const uint32_t *slot_bytes,
                         const uint8_t *dirty)
{
        const struct kvd_ckpt_extent *ext = kvd_ckpt_extents(k);

        for (uint32_t e = 0; e < s->n_extents; e++)
                if (dirty[e])
                        continue;
                else if (ext[e].generation != s->extent_gen[e] ||
                    (ext[e].slot_bytes && ext[e].slot_bytes != slot_bytes[e]))
                        return false;
        return true;
}

/* The index from checkpoint k, no slot header read, but for the extents
 * written since (dirty), whose records are left for their scan: each
 * record's slot is checked to lie in an extent of its slot size; its bytes
 * are checked when read, as always. */
static int64_t recover_from_ckpt(struct kvd_ssd *s, const struct kvd_ckpt *k, const uint8_t *dirty,
                                 kvd_tier_recover_fn fn, void *ctx)
{
        const struct kvd_ckpt_extent *ext = kvd_ckpt_extents(k);
        uint64_t n = kvd_ckpt_blocks(k);
        int64_t kept = 0;

        struct kvd_ckpt_meta meta;

        kvd_ckpt_meta_of(k, &meta);
        s->next_gen = MAX(s->next_gen, meta.next_gen);
        for (uint64_t i = 0; i < n; i++) {
                struct kvd_slot_header h;
                uint32_t loc, e;
                int klass;

                kvd_ckpt_record(k, i, &h, &loc);
                e = kvd_slab_extent_of(s->slab, loc);
                if (e >= s->n_extents || dirty[e] || !ext[e].slot_bytes)
                        continue;
                klass = kvd_slab_class_for(s->slab, ext[e].slot_bytes);
                if (klass < 0 || KVD_SLOT_HDR_BYTES + (uint64_t)h.payload_len > ext[e].slot_bytes ||
                    kvd_slab_claim(s->slab, klass, loc) < 0)
                        continue;
                if (fn(ctx, &h, loc, klass))
                        kept++;
                else
                        kvd_slab_release(s->slab, loc);
        }
        return kept;
}

/* Why checkpoint k (meta) may not be used with the journal's answer jr,
 * or NULL if it may: with its journal; or, written at a clean stop, with
 * the files exactly as it describes them. */
static const char *unusable(const struct kvd_ckpt *k, const struct kvd_ckpt_meta *meta,
                            const struct kvd_ckpt_layout *lay, int jr)
{
        if (jr == 0)
                return NULL;
        if (meta->clean && kvd_ckpt_check_layout(k, lay) == 0)
                return NULL;
        if (jr == -EBADMSG)
                return "the journal of the extents written since it is damaged";
        if (!meta->clean)
                return "no journal of the extents written since it goes with it";
        return "the SSD files changed since it was written";
}

/* The newest checkpoint, if it still describes the disk but for the
 * extents it sets in dirty (*ret_n of them: written since); NULL (the
 * reason logged) if there is none such. */
static struct kvd_ckpt *load_ckpt(struct kvd_ssd *s, const char *dir, const uint32_t *slot_bytes, uint8_t *dirty,
                                  uint32_t *ret_n)
{
        struct kvd_ckpt_layout lay;
        struct kvd_ckpt_meta meta;
        struct kvd_ckpt *k = NULL;
        const char *why = NULL;
        int r, jr = -ENOENT;

        memset(dirty, 0, s->n_extents);
        *ret_n = 0;
        r = ssd_ckpt_layout(s, &lay);
        if (r == 0)
                r = kvd_ckpt_load(dir, &k);
        if (r == 0)
                r = kvd_ckpt_check_shape(k, &lay);
        if (r == 0) {
                kvd_ckpt_meta_of(k, &meta);
                jr = kvd_journal_load(dir, s->n_extents, meta.lineage, meta.epoch, dirty, ret_n);
                why = unusable(k, &meta, &lay, jr);
                if (!why && !ckpt_matches(s, k, slot_bytes, dirty))
                        why = "the SSD files changed since it was written";
        }
        if (r == -ENOENT)
                log_info("SSD tier: no index checkpoint (the first start, or the last stop was not clean and "
                         "no checkpoint was taken while serving): scanning the slot headers");
        else if (r < 0)
                log_warning("SSD tier: ignoring the index checkpoint in %s (%s): scanning the slot headers", dir,
                            r == -ESTALE ? "the SSD files changed since it was written" :
                            r == -EBADMSG ? "it is damaged" : strerror(-r));
        else if (why)
                log_warning("SSD tier: ignoring the index checkpoint in %s (%s): scanning the slot headers", dir,
                            why);
        if (r < 0 || why) {
                memset(dirty, 0, s->n_extents);
                *ret_n = 0;
                return kvd_ckpt_free(k);
        }
        if (jr < 0) { /* a clean stop's, the files as it left them: nothing written since */
                memset(dirty, 0, s->n_extents);
                *ret_n = 0;
        }
        return k;
}

int64_t ssd_recover(struct kvd_tier *t, kvd_tier_recover_fn fn, void *ctx)
{
        struct kvd_ssd *s = ssd_of(t);
        uint32_t *locs = calloc(s->qd, sizeof(uint32_t));
        uint32_t *slot_bytes = calloc(s->n_extents, sizeof(uint32_t));
        uint8_t *dirty = calloc(s->n_extents, 1);
        struct kvd_ckpt_meta meta = { 0 };
        struct kvd_ckpt *k = NULL;
        char dir[PATH_MAX];
        bool keep = false;
        uint32_t n_dirty = 0;
        int64_t kept = 0;
        int r = 0;

        if (!locs || !slot_bytes || !dirty) {
                r = -ENOMEM;
                goto out;
        }
        recover_extents(s, slot_bytes);
        ssd_ckpt_dir(s, dir, sizeof(dir));
        k = load_ckpt(s, dir, slot_bytes, dirty, &n_dirty);
        if (k)
                kvd_ckpt_meta_of(k, &meta);
        /* With checkpoints while serving, the one found stays: a new
         * journal for it, before anything is written, is what keeps it true
         * (and a crash from now on reads only the extents written since). */
        if (k && s->cfg->ssd_checkpoint_interval > 0) {
                r = ssd_ckpt_resume(s, dir, &meta, dirty);
                if (r < 0)
                        log_warning("SSD tier: cannot write the journal in %s (%s): not keeping the index "
                                    "checkpoint", dir, strerror(-r));
                keep = r == 0;
                r = 0;
        }
        if (!keep) {
                /* Read once: from now on the disk changes, and a crash must
                 * find no checkpoint that no longer describes it. */
                r = kvd_ckpt_remove(dir);
                if (r < 0) {
                        log_warning("SSD tier: cannot remove the index checkpoint in %s (%s): not using it", dir,
                                    strerror(-r));
                        k = kvd_ckpt_free(k);
                        memset(dirty, 0, s->n_extents);
                        n_dirty = 0;
                        r = 0;
                }
                kvd_journal_remove(dir); /* of no use without its checkpoint */
        }
        if (k) {
                kept = recover_from_ckpt(s, k, dirty, fn, ctx);
                for (uint32_t e = 0; e < s->n_extents && r == 0; e++)
                        if (dirty[e] && slot_bytes[e])
                                r = scan_extent(s, e, slot_bytes[e], locs, fn, ctx, &kept);
                if (r < 0)
                        goto out;
                s->st.recovered_from_checkpoint = true;
                s->st.recover_dirty_extents = n_dirty;
                if (!meta.clean || n_dirty)
                        log_info("SSD tier: index checkpoint %" PRIu64 " (%s) and %u extents written since it "
                                 "(their slot headers read)", meta.epoch,
                                 meta.clean ? "of a clean stop" : "taken while serving", n_dirty);
        } else {
                for (uint32_t e = 0; e < s->n_extents && r == 0; e++)
                        if (slot_bytes[e])
                                r = scan_extent(s, e, slot_bytes[e], locs, fn, ctx, &kept);
                if (r < 0)
                        goto out;
        }
        settle_sizes(s);
out:
        kvd_ckpt_free(k);
        free(dirty);
        free(slot_bytes);
        free(locs);
        return r < 0 ? r : kept;
}

/* The cache names its blocks raw; a checkpoint records them as stored. */
bool ssd_next_stored(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns)
{
        struct ssd_stored_next *a = ctx;
        uint32_t n;

        if (!a->next(a->ctx, ret_h, ret_loc, ret_ns))
                return false;
        n = ssd_stored_len(&a->s->tier, ret_h, ret_h->payload_len);
        if (n != ret_h->payload_len) {
                ret_h->codec = (uint16_t)a->s->codec;
                ret_h->payload_len = n;
        }
        return true;
}

int ssd_ckpt_extents(const struct kvd_ssd *s, struct kvd_ckpt_extent **ret_ext)
{
        struct kvd_ckpt_extent *ext = calloc(s->n_extents, sizeof(*ext));

        if (!ext)
                return -ENOMEM;
        for (uint32_t e = 0; e < s->n_extents; e++) {
                int klass = kvd_slab_extent_class(s->slab, e);

                ext[e].generation = s->extent_gen[e];
                ext[e].slot_bytes = klass >= 0 ? kvd_slab_class_bytes(s->slab, klass) : 0;
        }
        *ret_ext = ext;
        return 0;
}

/* At a clean stop: everything to its end and on stable storage, then the
 * index as next() gives it. Nothing may be written to the files after it. */
int ssd_checkpoint(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx)
{
        struct ssd_stored_next a = { ssd_of(t), next, ctx };
        struct kvd_ssd *s = ssd_of(t);
        struct kvd_ckpt_extent *ext = NULL;
        struct kvd_ckpt_layout lay;
        struct kvd_ckpt_meta meta;
        char dir[PATH_MAX];
        int r = 0;

        ssd_ckpt_cancel(s); /* this one covers everything */
        ssd_ckpt_reap(s, true);
        ssd_drain(t);
        if (s->st.damaged || s->inflight || s->queued)
                return -EIO;
        for (unsigned i = 0; i < s->n_files && r == 0; i++)
                if (fdatasync(s->files[i].fd) < 0)
                        r = -errno;
        if (r == 0)
                r = ssd_ckpt_layout(s, &lay);
        if (r == 0)
                r = ssd_ckpt_extents(s, &ext);
        if (r < 0)
                return r;
        /* Of the journal's lineage, a later epoch: were the journal's removal
         * below cut short, it names nothing written since, rightly. */
        meta = (struct kvd_ckpt_meta){ .next_gen = s->next_gen, .epoch = s->ck.on ? s->ck.epoch + 1 : 1,
                                       .lineage = s->ck.on ? s->ck.lineage : ssd_new_lineage(), .clean = true };
        ssd_ckpt_dir(s, dir, sizeof(dir));
        r = kvd_ckpt_write(dir, &lay, ext, &meta, ssd_next_stored, &a);
        free(ext);
        if (r == 0)
                ssd_ckpt_closed(s, dir);
        return r;
}

/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's checkpoints while it serves, and the journal that makes
 * them good after a crash (docs/decisions.md, "Interval checkpoints and the
 * dirty-extent journal"; tiers/ssd-journal.h for the file).
 *
 * A checkpoint of epoch E is gathered on the event loop at one instant T:
 * before the gathering, every extent with a write or wipe not yet completed
 * is journaled under E (that I/O may land after T), and from then on every
 * extent is journaled under E before its first write or wipe is submitted.
 * So every extent the checkpoint may describe wrongly is in the journal
 * under E or later, and recovery reads the slot headers of those only.
 * The file is then written by a thread, off the loop; until it is renamed
 * into place the previous checkpoint (E - 1) stays, and the journal still
 * holds its entries too. Once it is, the journal is rewritten with the
 * entries of E only.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "loop.h"
#include "macro.h"
#include "ssd-checkpoint.h"
#include "ssd-internal.h"
#include "ssd-journal.h"

static void append_run(struct kvd_job *j);
static void append_done(struct kvd_job *j);
static void step_ready(struct kvd_loop_watch *w, uint32_t events);

int ssd_ckpt_init(struct kvd_ssd *s)
{
        struct ssd_ckpt *ck = &s->ck;

        ck->fd = -1;
        ck->marked = calloc(s->n_extents, 1);
        ck->mutating = calloc(s->n_extents, sizeof(uint32_t));
        ck->queue = malloc((size_t)s->n_extents * sizeof(uint32_t));
        ck->sending = malloc((size_t)s->n_extents * sizeof(uint32_t));
        ck->job = (struct kvd_job){ .run = append_run, .done = append_done };
        ck->step_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (!ck->marked || !ck->mutating || !ck->queue || !ck->sending)
                return -ENOMEM;
        if (ck->step_fd < 0)
                return -errno;
        return kvd_jobs_new(1, "kvd-ssd-journal", &ck->jobs);
}

int ssd_ckpt_watch(struct kvd_ssd *s, struct kvd_loop *l)
{
        int r;

        s->ck.step_w = (struct kvd_loop_watch){ s->ck.step_fd, step_ready };
        r = kvd_loop_add(l, &s->ck.step_w, KVD_LOOP_IN);
        return r < 0 ? r : kvd_jobs_watch(s->ck.jobs, l);
}

void ssd_ckpt_fini(struct kvd_ssd *s)
{
        struct ssd_ckpt *ck = &s->ck;

        /* After the drain: no append is running, no operation waits. */
        ssd_ckpt_cancel(s);
        if (ck->step_fd >= 0)
                close(ck->step_fd);
        ck->step_fd = -1;
        ck->hold++;
        ck->jobs = kvd_jobs_free(ck->jobs);
        ck->on = false; /* no journal to rewrite: it stays as it is */
        ssd_ckpt_reap(s, true);
        if (ck->fd >= 0)
                close(ck->fd);
        ck->fd = -1;
        free(ck->marked);
        free(ck->mutating);
        free(ck->queue);
        free(ck->sending);
        ck->marked = NULL;
        ck->mutating = NULL;
        ck->queue = ck->sending = NULL;
}

/* Tells one lineage of checkpoints and journals from another (a journal
 * left by an earlier life of the directory is no journal of ours). */
uint64_t ssd_new_lineage(void)
{
        uint64_t x;

        if (getrandom(&x, sizeof(x), GRND_NONBLOCK) != (ssize_t)sizeof(x))
                x = kvd_now_ns() ^ ((uint64_t)getpid() << 40);
        return x | 1;
}

/* The extents with i/o of theirs set (n_extents entries of which), as a
 * list; *ret_n of them. */
static uint32_t *list_of(const struct kvd_ssd *s, const uint8_t *set, const uint32_t *count, uint32_t *ret_n)
{
        uint32_t *l = malloc((size_t)s->n_extents * sizeof(*l) + 1), n = 0;

        if (!l)
                return NULL;
        for (uint32_t e = 0; e < s->n_extents; e++)
                if (set ? set[e] == SSD_MARKED : count[e] != 0)
                        l[n++] = e;
        *ret_n = n;
        return l;
}

/* The journal cannot be written: no checkpoint may be relied on any more.
 * 0 if none is left on disk (the I/O may go), else err. From a job's end
 * only: none is running then (it would use the fd). */
static int abandon(struct kvd_ssd *s, int err)
{
        char dir[PATH_MAX];
        int r;

        ssd_ckpt_dir(s, dir, sizeof(dir));
        s->ck.on = false; /* a checkpoint being written is not followed by a journal */
        ssd_ckpt_cancel(s);
        ssd_ckpt_reap(s, true);
        r = kvd_ckpt_remove(dir);
        if (r < 0) {
                s->ck.on = true; /* it is still there: every write must still be journaled */
                log_error("SSD tier: cannot record an extent in the journal in %s (%s) nor remove the index "
                          "checkpoint it goes with (%s): refusing the write", dir, strerror(-err), strerror(-r));
                return err;
        }
        log_warning("SSD tier: cannot record an extent in the journal in %s (%s): index checkpoints are off "
                    "until the next start, and a crash before it reads every slot header", dir, strerror(-err));
        if (s->ck.fd >= 0)
                close(s->ck.fd);
        s->ck.fd = -1;
        s->ck.off = true;
        kvd_journal_remove(dir);
        return 0;
}

/* ---- the journal's appends ------------------------------------------------
 *
 * A write or wipe of an extent not yet in the journal for this epoch waits
 * (parked, counted in mutating) while one thread appends every extent
 * queued so far and makes them durable with one fdatasync; when it is
 * done, the loop marks them and lets their operations go. The loop never
 * waits for the disk, and a burst of writes to many extents costs one
 * fdatasync per append, not one per extent. The journal's rewrite once a
 * checkpoint is on disk is a job of the same thread, so the two never use
 * the fd at once; the loop closes it (abandon) only when a job has ended.
 * A new epoch only queues the extents with I/O in flight; an append of the
 * epoch before that ends after it marks nothing (commit), and the
 * checkpoint's file is written only once the new epoch's first append is
 * durable (synced_epoch).
 */

static uint32_t extent_of(const struct kvd_ssd *s, const struct op *o)
{
        return kvd_slab_extent_of(s->slab, o->loc);
}

/* The queued extents become the next append's. */
static void take_queue(struct ssd_ckpt *ck)
{
        uint32_t *l = ck->sending;

        ck->sending = ck->queue;
        ck->n_sending = ck->n_queue;
        ck->queue = l;
        ck->n_queue = 0;
}

static void kick(struct kvd_ssd *s)
{
        struct ssd_ckpt *ck = &s->ck;

        if (ck->busy || ck->hold || !ck->on)
                return;
        ck->job_rewrite = false;
        if (ck->rewrite_wanted) {
                /* Entries of earlier epochs are of no use now: a shorter
                 * journal, of the extents on stable storage in this one's
                 * (the queued ones are appended to it after). */
                ck->rewrite_wanted = false;
                /* A newer epoch began since its checkpoint was written: the
                 * journal must keep that checkpoint's entries. */
                ck->rw_list = ck->epoch == ck->rw_epoch ? list_of(s, ck->marked, NULL, &ck->rw_n) : NULL;
                if (ck->epoch != ck->rw_epoch) {
                        log_info("%s; the journal keeps its entries (checkpoint %" PRIu64 " has begun)",
                                 ck->rw_note, ck->epoch);
                } else if (!ck->rw_list) {
                        log_warning("SSD tier: cannot rewrite the journal: %s; it keeps its older entries",
                                    strerror(ENOMEM));
                        log_info("%s; %u extents written since", ck->rw_note, 0u);
                } else {
                        ck->job_rewrite = true;
                        snprintf(ck->job_dir, sizeof(ck->job_dir), "%s", ck->dir);
                        snprintf(ck->job_note, sizeof(ck->job_note), "%s", ck->rw_note);
                }
        }
        if (!ck->job_rewrite && ck->n_queue == 0)
                return;
        if (!ck->job_rewrite)
                take_queue(ck);
        ck->job_fd = ck->fd;
        ck->job_epoch = ck->epoch;
        ck->job_lineage = ck->lineage;
        ck->busy = true;
        kvd_jobs_submit(ck->jobs, &ck->job);
}

static void unhold(struct kvd_ssd *s)
{
        s->ck.hold--;
        kick(s);
}

static void queue_extent(struct kvd_ssd *s, uint32_t e)
{
        if (s->ck.marked[e] != SSD_UNMARKED)
                return;
        s->ck.marked[e] = SSD_QUEUED;
        s->ck.queue[s->ck.n_queue++] = e;
}

/* The parked operations that may go now go; those of an extent whose
 * append failed (SSD_UNMARKED again) end with err; the rest wait on. */
static void release(struct kvd_ssd *s, int err)
{
        struct ssd_ckpt *ck = &s->ck;
        struct op *o = ck->parked, *keep = NULL, *keep_tail = NULL;

        /* Ending an operation calls back into the cache, which may write
         * (and park) again: the list is taken off first. */
        ck->parked = ck->parked_tail = NULL;
        while (o) {
                struct op *next = o->next;
                uint8_t m = ck->marked[extent_of(s, o)];

                o->next = NULL;
                if (!ck->on || m == SSD_MARKED) {
                        ssd_enqueue(s, o);
                } else if (m == SSD_UNMARKED) {
                        if (err < 0) {
                                ssd_op_end(s, o, err);
                        } else { /* a new epoch: to be appended again */
                                queue_extent(s, extent_of(s, o));
                                goto keep;
                        }
                } else {
keep:
                        if (keep_tail)
                                keep_tail->next = o;
                        else
                                keep = o;
                        keep_tail = o;
                }
                o = next;
        }
        if (keep) { /* before any parked meanwhile: they are older */
                keep_tail->next = ck->parked;
                if (!ck->parked)
                        ck->parked_tail = keep_tail;
                ck->parked = keep;
        }
}

static void finish_gather(struct kvd_ssd *s);

/* An append of l (n extents, SSD_QUEUED) under epoch ended with r: they
 * are in the journal, or it is abandoned (0: the operations go without),
 * or their operations fail. Returns what they get. An append of an epoch
 * before this one marks nothing: the new epoch queued its extents anew. */
static int commit(struct kvd_ssd *s, uint64_t epoch, const uint32_t *l, uint32_t n, int r)
{
        bool now = epoch == s->ck.epoch;

        if (r == 0) {
                for (uint32_t i = 0; now && i < n; i++)
                        s->ck.marked[l[i]] = SSD_MARKED;
                s->st.journal_appends += n;
                if (now && s->ck.synced_epoch != epoch) {
                        s->ck.synced_epoch = epoch;
                        if (s->ck.builder && s->ck.gathered)
                                finish_gather(s);
                }
        } else {
                r = abandon(s, r);
                for (uint32_t i = 0; r < 0 && now && i < n; i++)
                        s->ck.marked[l[i]] = SSD_UNMARKED;
                /* Those may be the epoch's start: its checkpoint cannot rely on them. */
                if (r < 0)
                        ssd_ckpt_cancel(s);
        }
        release(s, r);
        return r;
}

static void append_run(struct kvd_job *j)
{
        struct ssd_ckpt *ck = container_of(j, struct ssd_ckpt, job);
        struct kvd_ssd *s = container_of(ck, struct kvd_ssd, ck);

        if (ck->job_rewrite)
                ck->job_result = kvd_journal_create(ck->job_dir, ck->job_lineage, ck->job_epoch, s->n_extents,
                                                    ck->rw_list, ck->rw_n, &ck->job_new_fd);
        else
                ck->job_result = kvd_journal_append(ck->job_fd, ck->job_epoch, ck->sending, ck->n_sending);
}

static void rewrite_done(struct kvd_ssd *s)
{
        struct ssd_ckpt *ck = &s->ck;

        free(ck->rw_list);
        ck->rw_list = NULL;
        if (ck->job_result < 0) {
                log_warning("SSD tier: cannot rewrite the journal in %s: %s; it keeps its older entries",
                            ck->job_dir, strerror(-ck->job_result));
        } else if (ck->on) {
                close(ck->fd);
                ck->fd = ck->job_new_fd;
        } else {
                close(ck->job_new_fd);
        }
        log_info("%s; %u extents written since", ck->job_note, ck->rw_n);
}

static void append_done(struct kvd_job *j)
{
        struct ssd_ckpt *ck = container_of(j, struct ssd_ckpt, job);
        struct kvd_ssd *s = container_of(ck, struct kvd_ssd, ck);

        ck->busy = false;
        ck->hold++;
        if (ck->job_rewrite)
                rewrite_done(s);
        else
                commit(s, ck->job_epoch, ck->sending, ck->n_sending, ck->job_result);
        unhold(s);
}

bool ssd_journal_park(struct kvd_ssd *s, struct op *o)
{
        struct ssd_ckpt *ck = &s->ck;
        uint32_t e;

        if (!ck->on || (o->kind != OP_WRITE && o->kind != OP_INVALIDATE))
                return false;
        e = extent_of(s, o);
        if (ck->marked[e] == SSD_MARKED)
                return false;
        queue_extent(s, e);
        o->next = NULL;
        if (ck->parked_tail)
                ck->parked_tail->next = o;
        else
                ck->parked = o;
        ck->parked_tail = o;
        kick(s);
        return true;
}

bool ssd_journal_busy(const struct kvd_ssd *s)
{
        return s->ck.busy;
}

void ssd_journal_wait(struct kvd_ssd *s)
{
        if (s->ck.busy)
                kvd_jobs_wait(s->ck.jobs);
}

void ssd_dirty_queue(struct kvd_ssd *s, uint32_t e)
{
        if (!s->ck.on)
                return;
        queue_extent(s, e);
        kick(s);
}

void ssd_dirty_begin(struct kvd_ssd *s, uint32_t e)
{
        s->ck.mutating[e]++;
}

void ssd_dirty_end(struct kvd_ssd *s, uint32_t e)
{
        if (s->ck.mutating[e] > 0)
                s->ck.mutating[e]--;
}

static void *writer(void *arg)
{
        struct kvd_ssd *s = arg;

        uint64_t t0 = kvd_now_ns();
        uint8_t *buf = NULL;
        size_t len = 0;

        /* The file's bytes are put together here too: a copy of every
         * record and their crc, tens of ms a million blocks. */
        s->ck.result = kvd_ckpt_builder_finish(s->ck.wbuilder, &buf, &len);
        s->ck.wbuilder = NULL;
        if (s->ck.result == 0)
                s->ck.result = kvd_ckpt_write_buf(s->ck.dir, buf, len);
        free(buf);
        s->ck.write_ns = kvd_now_ns() - t0;
        atomic_store(&s->ck.done, true);
        return NULL;
}

/* Epoch E begins: the journal is to learn of the extents with I/O in
 * flight (queued for the thread: the checkpoint's file waits for them,
 * and so do new writes and wipes of theirs). */
static int begin_epoch(struct kvd_ssd *s, const char *dir, uint64_t *ret_epoch)
{
        uint32_t *pend, n = 0;
        int r = 0, fd;

        pend = list_of(s, NULL, s->ck.mutating, &n);
        if (!pend)
                return -ENOMEM;
        if (s->ck.on) {
                s->ck.epoch++;
                memset(s->ck.marked, SSD_UNMARKED, s->n_extents);
                s->ck.n_queue = 0;
                for (uint32_t i = 0; i < n; i++)
                        queue_extent(s, pend[i]);
                if (n == 0)
                        s->ck.synced_epoch = s->ck.epoch;
        } else {
                uint64_t lineage = ssd_new_lineage();

                /* The first: on the loop, once in the daemon's life. */
                r = kvd_journal_create(dir, lineage, 1, s->n_extents, pend, n, &fd);
                if (r < 0) {
                        log_warning("SSD tier: cannot create the journal in %s: %s; no index checkpoint while "
                                    "serving", dir, strerror(-r));
                        free(pend);
                        return r;
                }
                s->ck.fd = fd;
                s->ck.lineage = lineage;
                s->ck.on = true;
                s->ck.epoch = s->ck.synced_epoch = 1;
                memset(s->ck.marked, SSD_UNMARKED, s->n_extents);
                for (uint32_t i = 0; i < n; i++)
                        s->ck.marked[pend[i]] = SSD_MARKED;
        }
        *ret_epoch = s->ck.epoch;
        /* Parked operations count in mutating, so their extents are queued
         * (or marked, the first time: they go). */
        release(s, 0);
        kick(s);
        free(pend);
        return 0;
}

/* The gathering goes on in the next loop turn: step_fd is left readable
 * (the loop's epoll is level-triggered) until it is done. */
static void arm_step(struct kvd_ssd *s, bool on)
{
        uint64_t v = 1;

        if (on == s->ck.step_armed)
                return;
        if ((on ? write(s->ck.step_fd, &v, sizeof(v)) : read(s->ck.step_fd, &v, sizeof(v))) != sizeof(v))
                log_warning("SSD tier: checkpoint step eventfd: %m");
        s->ck.step_armed = on;
}

void ssd_ckpt_cancel(struct kvd_ssd *s)
{
        if (!s->ck.builder)
                return;
        s->ck.builder = kvd_ckpt_builder_free(s->ck.builder);
        s->ck.gathered = false;
        arm_step(s, false);
        log_info("SSD tier: index checkpoint %" PRIu64 " given up while being gathered", s->ck.epoch);
}

/* ssd-checkpoint-step more records (16384 by default: ~1.3 ms of the
 * loop's at 80 ns a block, docs/bench/restart.md); the last step hands the
 * file to a thread. */
static void gather_step(struct kvd_ssd *s)
{
        struct ssd_stored_next a = { s, s->ck.gnext, s->ck.gctx };
        uint64_t t0 = kvd_now_ns();
        int r;

        r = kvd_ckpt_builder_add(s->ck.builder, ssd_next_stored, &a, s->cfg->ssd_checkpoint_step);
        s->ck.gather_ns += kvd_now_ns() - t0;
        s->ck.steps++;
        if (r > 0) {
                arm_step(s, true);
                return;
        }
        arm_step(s, false);
        if (r < 0) {
                s->ck.builder = kvd_ckpt_builder_free(s->ck.builder);
                log_warning("SSD tier: cannot gather an index checkpoint: %s", strerror(-r));
                return;
        }
        s->ck.gathered = true;
        if (s->ck.synced_epoch == s->ck.epoch)
                finish_gather(s);
}

/* Every record is in and the epoch's start is durable in the journal: the
 * records go to a thread, which makes the file of them. */
static void finish_gather(struct kvd_ssd *s)
{
        int r;

        s->ck.blocks = kvd_ckpt_builder_records(s->ck.builder);
        s->ck.wbuilder = s->ck.builder;
        s->ck.builder = NULL;
        s->ck.gathered = false;
        atomic_store(&s->ck.done, false);
        r = -pthread_create(&s->ck.thread, NULL, writer, s);
        if (r < 0) {
                log_warning("SSD tier: cannot start the index checkpoint's writer: %s", strerror(-r));
                s->ck.wbuilder = kvd_ckpt_builder_free(s->ck.wbuilder);
                return;
        }
        s->ck.running = true;
}

static void step_ready(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_ssd *s = container_of(w, struct kvd_ssd, ck.step_w);

        (void)events;
        if (s->ck.builder)
                gather_step(s);
        else
                arm_step(s, false);
}

int ssd_checkpoint_start(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx)
{
        struct kvd_ssd *s = ssd_of(t);
        struct kvd_ckpt_extent *ext = NULL;
        struct kvd_ckpt_layout lay;
        uint64_t t0 = kvd_now_ns(), epoch = 0;
        char dir[PATH_MAX];
        int r;

        ssd_ckpt_reap(s, false);
        if (s->ck.running || s->ck.builder)
                return -EBUSY;
        if (s->ck.off || s->st.damaged)
                return -EIO;
        ssd_ckpt_dir(s, dir, sizeof(dir));
        r = begin_epoch(s, dir, &epoch);
        if (r == 0)
                r = ssd_ckpt_layout(s, &lay);
        if (r == 0)
                r = ssd_ckpt_extents(s, &ext);
        /* A failure from here on leaves the journal a superset: harmless. */
        if (r == 0) {
                uint64_t cap, used, slots;

                kvd_slab_usage(s->slab, &cap, &used, &slots);
                r = kvd_ckpt_builder_new(&lay, ext, &(struct kvd_ckpt_meta){ s->next_gen, epoch, s->ck.lineage, false },
                                         slots, &s->ck.builder);
        }
        free(ext);
        if (r < 0) {
                log_warning("SSD tier: cannot gather an index checkpoint: %s", strerror(-r));
                return r;
        }
        snprintf(s->ck.dir, sizeof(s->ck.dir), "%s", dir);
        s->ck.gnext = next;
        s->ck.gctx = ctx;
        s->ck.gather_t0_ns = t0;
        s->ck.steps = 0;
        s->ck.gathered = false;
        s->ck.gather_ns = kvd_now_ns() - t0;
        gather_step(s);
        return 0;
}

void ssd_ckpt_reap(struct kvd_ssd *s, bool wait)
{

        if (!s->ck.running || (!wait && !atomic_load(&s->ck.done)))
                return;
        pthread_join(s->ck.thread, NULL);
        s->ck.running = false;
        if (s->ck.result < 0) {
                log_warning("SSD tier: cannot write the index checkpoint in %s: %s; the one before it (if any) "
                            "stays in use", s->ck.dir, strerror(-s->ck.result));
                return;
        }
        s->st.checkpoints++;
        s->st.checkpoint_gather_ns = s->ck.gather_ns;
        snprintf(s->ck.rw_note, sizeof(s->ck.rw_note),
                 "SSD tier: index checkpoint %" PRIu64 " written: %zu blocks, gathered in %.1f ms on the event "
                 "loop (%u turns), written in %.3f s off it", s->ck.epoch, s->ck.blocks,
                 (double)s->ck.gather_ns / 1e6, s->ck.steps, (double)s->ck.write_ns / 1e9);
        if (!s->ck.on) {
                log_info("%s", s->ck.rw_note);
                return;
        }
        /* The thread rewrites the journal (kick()), which logs the line. */
        s->ck.rewrite_wanted = true;
        s->ck.rw_epoch = s->ck.epoch;
        kick(s);
}

int ssd_ckpt_resume(struct kvd_ssd *s, const char *dir, const struct kvd_ckpt_meta *meta, const uint8_t *dirty)
{
        uint32_t *l, n = 0;
        int r, fd;

        l = list_of(s, dirty, NULL, &n);
        if (!l)
                return -ENOMEM;
        r = kvd_journal_create(dir, meta->lineage, meta->epoch, s->n_extents, l, n, &fd);
        free(l);
        if (r < 0)
                return r;
        s->ck.fd = fd;
        s->ck.on = true;
        s->ck.lineage = meta->lineage;
        s->ck.epoch = meta->epoch;
        memcpy(s->ck.marked, dirty, s->n_extents);
        return 0;
}

void ssd_ckpt_closed(struct kvd_ssd *s, const char *dir)
{
        if (s->ck.fd >= 0)
                close(s->ck.fd);
        s->ck.fd = -1;
        if (s->ck.on && kvd_journal_remove(dir) < 0)
                log_notice("SSD tier: cannot remove the journal in %s: %m", dir);
        s->ck.on = false;
}

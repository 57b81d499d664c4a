/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's insides, shared by ssd.c (files, slots, the ring, reads
 * and writes) and ssd-recover.c (rebuilding the index at start, from the
 * checkpoint or by reading slot headers, and writing the checkpoint at a
 * clean stop). Not for use outside tiers/ssd*.
 */
#pragma once

#include <limits.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "codec.h"
#include "jobs.h"
#include "loop.h"
#include "slab.h"
#include "slot.h"
#include "ssd-checkpoint.h"
#include "ssd.h"
#include "tier.h"

#define MAX_DIRS 8
#define FILE_NAME "kvdrive.ssd"
#define LOCK_NAME "kvdrive.lock"
#define PAGE KVD_SLAB_PAGE
/* Extent headers ssd_check() reads back per call. */
#define SCRUB_PER_CHECK 8
/* A read of a large slot, when the queue has room to spare, goes as pieces
 * of this size submitted together, so one block keeps the drive busy. */
#define SPLIT_BYTES (256u << 10)
#define SPLIT_MAX 8u
/* Payloads of at least this many bytes are checksummed by the tier's
 * threads (ssd-cpu.c), smaller ones on the loop: below it, handing the
 * work over costs about what the checksum does. Encoding always goes to
 * the threads. */
#define CPU_OFFLOAD_BYTES (128u << 10)

/* OP_SCRUB: a read of extent loc's header (ssd_check()). */
enum op_kind { OP_READ, OP_WRITE, OP_INVALIDATE, OP_SYNC, OP_SCRUB };

struct op {
        struct op *next;
        struct kvd_ssd *s;
        enum op_kind kind;
        enum kvd_prio prio;
        bool dsync;
        uint32_t loc;
        uint32_t len;           /* payload bytes */
        void *page;             /* host page: slot header, then payload */
        unsigned want;          /* bytes the I/O moves */
        unsigned moved;         /* bytes its pieces moved so far */
        unsigned pieces;        /* SQEs it takes (a read may be split) */
        unsigned pending;       /* of them, not completed */
        int arena;              /* invalidation's header buffer, else -1 */
        int result;
        uint64_t t0_ns;         /* submitted */
        bool short_io;          /* moved fewer bytes than asked */
        bool verifying;         /* durable: its extent's header being read (arena) */
        kvd_tier_cb cb;
        void *ctx;
        struct kvd_slot_header hdr; /* write: header to write; read: expected key in it */
        /* Encoded slots and the CPU stage (ssd-cpu.c). */
        struct kvd_job job;
        enum kvd_codec codec;   /* write: how the payload is stored */
        uint8_t *bounce;        /* the slot as on disk, when it is not the page's bytes */
        uint32_t io_len;        /* bytes the I/O moves: slot header + padded payload */
        uint32_t stored_len;    /* write: payload bytes as stored */
        uint32_t crc;           /* write: payload_crc, when crc_ready */
        bool crc_ready;
        int cpu_result;         /* what the CPU stage found: 0 or -errno */
};

struct ssd_file {
        int fd;
        int lock_fd;            /* kvdrive.lock, locked (OFD) for our life */
        dev_t dev;              /* the file we opened, to tell a replacement */
        ino_t ino;
        uint64_t size;          /* bytes provisioned: it must not be shorter */
        char path[PATH_MAX];
};

/* Interval checkpoints and the journal of extents written since one
 * (ssd-interval.c; tiers/ssd-journal.h). */
enum ssd_mark {
        SSD_UNMARKED,           /* not in the journal for this epoch */
        SSD_MARKED,             /* in it, on stable storage */
        SSD_QUEUED,             /* to be appended: its writes and wipes wait */
};

struct ssd_ckpt {
        bool on;                /* a checkpoint on disk (or being written) relies on the journal */
        bool off;               /* the journal failed: no more checkpoints while serving */
        int fd;                 /* kvdrive.dirty, open for appending; -1 */
        uint64_t lineage, epoch;
        uint8_t *marked;        /* per extent: enum ssd_mark, for this epoch */
        uint32_t *mutating;     /* per extent: writes and wipes not yet completed */
        /* Appends, one at a time, by a thread of their own (an fdatasync
         * is a wait of milliseconds: not the loop's, nor the CPU stage's). */
        struct kvd_jobs *jobs;
        struct kvd_job job;
        bool busy;              /* an append (or the rewrite) is at the thread */
        unsigned hold;          /* no new append: the journal is being changed */
        int job_fd, job_result;
        uint64_t job_epoch, job_lineage;
        uint64_t synced_epoch;  /* whose start's extents (in flight then) are on stable storage */
        /* The journal's rewrite (once a checkpoint is on disk), a job too. */
        bool rewrite_wanted, job_rewrite;
        uint64_t rw_epoch;      /* the checkpoint's: rewritten only while it is the epoch */
        uint32_t *rw_list, rw_n;
        int job_new_fd;
        char job_dir[PATH_MAX];
        char rw_note[200], job_note[200];       /* its checkpoint's log line, logged once done */
        uint32_t *queue, n_queue;       /* SSD_QUEUED extents, for the next append */
        uint32_t *sending, n_sending;   /* the running append's (SSD_QUEUED too) */
        struct op *parked, *parked_tail;        /* writes and wipes waiting for theirs */
        /* The records being gathered, ssd-checkpoint-step blocks a loop
         * turn (step_fd is kept readable meanwhile), from gnext(gctx). */
        struct kvd_ckpt_builder *builder;
        kvd_tier_ckpt_fn gnext;
        void *gctx;
        int step_fd;
        bool step_armed;
        struct kvd_loop_watch step_w;
        uint64_t gather_t0_ns;
        unsigned steps;
        bool gathered;          /* every record is in: the file waits for synced_epoch */
        /* The checkpoint being written off the loop. */
        bool running;
        pthread_t thread;
        atomic_bool done;
        int result;
        struct kvd_ckpt_builder *wbuilder;      /* the writer's */
        size_t blocks;
        uint64_t gather_ns, write_ns;   /* on the loop (all steps); the writer's own */
        char dir[PATH_MAX];
};

struct kvd_ssd {
        struct kvd_tier tier;
        const struct kvd_config *cfg;
        struct io_uring ring;
        bool ring_ok;
        int efd;
        struct kvd_loop_watch efd_w;    /* efd in the event loop */
        struct ssd_file files[MAX_DIRS];
        unsigned n_files;
        struct kvd_slab *slab;
        uint64_t extent_bytes;
        uint32_t n_extents;
        uint8_t *provisioned;           /* per extent: space allocated in its file */
        uint64_t *extent_gen;           /* per extent: generation in its header */
        uint64_t next_gen, next_extent_gen;
        uint8_t *arena;                 /* qd header buffers of 4 KiB */
        int *arena_free;
        unsigned arena_top;
        void *sync_buf;                 /* 4 KiB, for extent headers */
        uint8_t *host_base;
        uint64_t host_len, host_chunk;
        bool fixed;                     /* buffers registered */
        struct {
                struct op *head, *tail;
        } queue[KVD_PRIO_COUNT];
        unsigned qd, inflight, queued;
        uint64_t busy_since_ns;         /* inflight went above 0 */
        bool unsubmitted;               /* SQEs prepared, not yet submitted */
        /* Damage checks before a durable write is reported done: once per
         * pass over the completions for the files, and for the extent. */
        uint64_t pass, files_checked_pass, extent_checked_pass;
        uint32_t extent_checked;
        uint32_t scrub_next;            /* next extent header ssd_check() reads */
        unsigned scrub_inflight;        /* of its reads, not completed */
        struct kvd_tier_stats st;        /* st.damaged: see ssd.h */
        enum kvd_codec codec;           /* ssd-codec */
        struct kvd_jobs *jobs;          /* ssd-threads: checksums and codecs */
        struct ssd_ckpt ck;
};

struct kvd_ssd *ssd_of(struct kvd_tier *t);
void ssd_locate(const struct kvd_ssd *s, uint32_t loc, int *ret_fd, uint64_t *ret_off);
void ssd_extent_locate(const struct kvd_ssd *s, uint32_t e, int *ret_fd, uint64_t *ret_off);
struct ssd_file *ssd_file_of_extent(struct kvd_ssd *s, uint32_t e);
void ssd_drain(struct kvd_tier *t);
int64_t ssd_recover(struct kvd_tier *t, kvd_tier_recover_fn fn, void *ctx);
int ssd_checkpoint(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx);

/* ssd.c: queues o for its I/O; ends o (figures, callback, free) with r. */
void ssd_enqueue(struct kvd_ssd *s, struct op *o);
void ssd_op_end(struct kvd_ssd *s, struct op *o, int r);

/* ssd-cpu.c: the CPU stage of an operation, off the loop where it pays. */
uint32_t ssd_stored_len(const struct kvd_tier *t, const struct kvd_slot_header *id, uint32_t raw);
/* A write about to be queued: picks its codec (and bounce buffer); true if
 * the threads took it (they queue it, or end it on an error). */
bool ssd_cpu_write(struct kvd_ssd *s, struct op *o);
/* A read about to be queued: the bytes its I/O moves (its slot's), and a
 * bounce buffer for a slot not of the raw block's size. false: no memory. */
bool ssd_read_bounce(struct kvd_ssd *s, struct op *o);
/* A read whose I/O is done: true if the threads took its check (and its
 * decoding); they end it. */
bool ssd_cpu_read(struct kvd_ssd *s, struct op *o);

/* The directory holding the checkpoint and the journal (the first SSD one);
 * what a checkpoint taken now records of the files and extents (*ret_ext:
 * n_extents, the caller frees it). */
void ssd_ckpt_dir(const struct kvd_ssd *s, char *buf, size_t n);
int ssd_ckpt_layout(const struct kvd_ssd *s, struct kvd_ckpt_layout *ret);
int ssd_ckpt_extents(const struct kvd_ssd *s, struct kvd_ckpt_extent **ret_ext);

/* A checkpoint's source: next() (the cache's blocks, raw) as stored here. */
struct ssd_stored_next {
        struct kvd_ssd *s;
        kvd_tier_ckpt_fn next;
        void *ctx;
};
bool ssd_next_stored(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns);

/* ssd-interval.c. Allocates the per-extent state (kvd_ssd_new); frees it,
 * waiting for a checkpoint being written (kvd_ssd_free). */
int ssd_ckpt_init(struct kvd_ssd *s);
void ssd_ckpt_fini(struct kvd_ssd *s);
/* The journal's thread's completions in the loop. */
int ssd_ckpt_watch(struct kvd_ssd *s, struct kvd_loop *l);
/* A write or wipe of extent e is begun (ssd_write, ssd_discard) / has ended
 * (ssd_op_end): counted as in flight, for the next epoch's journal. */
void ssd_dirty_begin(struct kvd_ssd *s, uint32_t e);
void ssd_dirty_end(struct kvd_ssd *s, uint32_t e);
/* An operation about to be queued for I/O (ssd_enqueue): true if it is a
 * write or wipe of an extent a checkpoint relies on that is not in the
 * journal yet. It is then held until the journal's thread has made the
 * extent durable there, and queued (ssd_enqueue) or ended with the error
 * (ssd_op_end) after. */
bool ssd_journal_park(struct kvd_ssd *s, struct op *o);
/* An append is at the journal's thread; wait for it (a drain's). */
bool ssd_journal_busy(const struct kvd_ssd *s);
void ssd_journal_wait(struct kvd_ssd *s);
/* A fresh extent's header was written (on the loop, at allocation): e is
 * queued for the journal, and its slots' writes wait for it as any. A
 * crash before the append makes the header differ from what the
 * checkpoint says of e: the next start scans every slot header, never
 * trusts a wrong record. */
void ssd_dirty_queue(struct kvd_ssd *s, uint32_t e);
/* The checkpoint op taken while serving (tier.h): the epoch begins and the
 * first step of the gathering runs now, the others in the next loop turns;
 * -EBUSY while one is gathered or written. */
int ssd_checkpoint_start(struct kvd_tier *t, kvd_tier_ckpt_fn next, void *ctx);
/* Drops a gathering under way (a clean stop's checkpoint replaces it; the
 * journal is gone; the tier goes). */
void ssd_ckpt_cancel(struct kvd_ssd *s);
/* Finishes a checkpoint written off the loop, if it is (ssd_check: about
 * once a second); wait: until it is. */
void ssd_ckpt_reap(struct kvd_ssd *s, bool wait);
/* Recovery kept checkpoint k (its dirty extents: dirty) to go on from:
 * a new journal for it. 0 or -errno (then neither may be relied on). */
int ssd_ckpt_resume(struct kvd_ssd *s, const char *dir, const struct kvd_ckpt_meta *meta, const uint8_t *dirty);
/* A lineage for checkpoints and journals not yet of one (random). */
uint64_t ssd_new_lineage(void);
/* The clean stop's checkpoint is written: no journal needed any more. */
void ssd_ckpt_closed(struct kvd_ssd *s, const char *dir);

/* SPDX-License-Identifier: MIT */
/*
 * A small pool of threads for CPU work that must not hold up the event
 * loop: the SSD tier's payload checksums and codecs (tiers/ssd.c). A job's
 * run() happens on a pool thread; its done() then runs on the event-loop
 * thread, from kvd_jobs_reap() (the pool's eventfd in the loop), in the
 * order jobs finished. FIFO; no priorities (a job is tens of microseconds
 * to a millisecond of work, never a wait).
 *
 * The job struct is the caller's (embed it, reach back with container_of())
 * and belongs to the pool from submit until done() is called.
 */
#pragma once

#include <stdint.h>

struct kvd_loop;
struct kvd_jobs;

struct kvd_job {
        void (*run)(struct kvd_job *j);         /* a pool thread */
        void (*done)(struct kvd_job *j);        /* the loop thread, after run */
        struct kvd_job *next;                   /* the pool's */
};

/* Starts threads (>= 1) named name (at most 15 characters). 0 or -errno. */
int kvd_jobs_new(unsigned threads, const char *name, struct kvd_jobs **ret);
/* Runs every job submitted to its end (done() included), stops the threads
 * and frees the pool. Loop thread. Accepts NULL. */
struct kvd_jobs *kvd_jobs_free(struct kvd_jobs *p);

/* Registers the completion eventfd with the loop. 0 or -errno. */
int kvd_jobs_watch(struct kvd_jobs *p, struct kvd_loop *l);

/* Queues j (run and done set). Never fails. Loop thread. */
void kvd_jobs_submit(struct kvd_jobs *p, struct kvd_job *j);

/* Calls done() of every finished job; how many. Loop thread. */
unsigned kvd_jobs_reap(struct kvd_jobs *p);

/* Waits until at least one submitted job has finished, then reaps (for a
 * drain). Returns at once with 0 if none is outstanding. Loop thread. */
unsigned kvd_jobs_wait(struct kvd_jobs *p);

/* Jobs submitted whose done() has not run yet. */
unsigned kvd_jobs_outstanding(const struct kvd_jobs *p);

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: the device a client's pool and per-layer work live
 * on (--device), as an ops table like struct decode_policy. The policies,
 * decode-step.c and the prefill call these ops, never a kernel, so that each
 * policy runs unchanged on the CPU (decode-dev-cpu.c: a memfd pool and the
 * kernels of kernels.h, the bench as it always was) or on a GPU
 * (decode-dev-cuda.c: a cudaMalloc'd pool registered with
 * kvc_pool_register_cuda() and the kernels of kernels-cuda.h), which meson
 * compiles only where it found nvcc; decode-dev-nocuda.c stands in for it
 * otherwise and says so.
 *
 * Where the data lives: the pool's slots (kvc_pool_slot(): host or device
 * pointers) and the block summaries on the device; queries, scores and
 * selections on the host (the policies and kvc_sparse run there). Attention
 * results stay on the device in three buffers: OUT (an attention and its
 * log-sum-exp, or ACC once finished), PART (a partial attention and its
 * log-sum-exp) and ACC (the partials merged so far); record() copies OUT
 * back for the accuracy measurement, which runs on the host from the trace.
 *
 * Unless said otherwise an op returns 0, or -1 once it has printed why
 * (child_fail()). An op that reads slots has finished reading them when it
 * returns, as the CPU kernels have: the daemon may write a slot as soon as
 * the client asks it to.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct client;

/* Exit status of `decode --device X` where X cannot run (docs/gpu.md). */
#define BENCH_EXIT_NODEV 77

struct decode_device {
        const char *name;
        /* In the parent, before the trace or the daemon is touched: 0 when a
         * client can run on this device here, else prints why and returns
         * -1. Leaves nothing a forked client inherits (CUDA does not
         * survive fork()). */
        int (*probe)(void);
        /* The client's pool of run->pool_slots slots (cl->pool; cl->c is
         * connected) and the device's own state (cl->dev). */
        int (*client_init)(struct client *cl);
        /* Frees cl->dev; called once the pool and the connection are gone.
         * Accepts a client whose client_init failed half way. */
        void (*client_free)(struct client *cl);
        /* Tokens [from, to) of block b of layer l, from the trace into the
         * slot (copy_tokens()). May be queued: sync() before the daemon
         * reads the slot. */
        int (*write_tokens)(struct client *cl, uint32_t slot, uint32_t l, uint32_t b, uint32_t from, uint32_t to);
        /* The summary of the slot's first valid tokens becomes block b of
         * layer l's. May be queued like write_tokens(). */
        int (*summarise)(struct client *cl, uint32_t slot, uint32_t valid, uint32_t l, uint32_t b);
        /* Waits until the writes and summaries queued so far are done. */
        int (*sync)(struct client *cl);
        /* cl->q (host) is the query of the attend() calls that follow. */
        int (*set_query)(struct client *cl);
        /* Scores of the first n (> 0) blocks of layer l against the query q
         * (host, fp32) into ret (host, n floats), as kvk_block_scores(). */
        int (*scores)(struct client *cl, uint32_t l, const float *q, uint32_t n, float *ret);
        /* Those scores' top-k as kvk_topk() chooses it (the run's sink and
         * local blocks) into ret (host): the number written, or -1. */
        int (*select)(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t k, uint32_t *ret);
        /* Attention with set_query()'s query over the blocks of cl->ptrs and
         * cl->valid [0, n) (slot pointers), into OUT, or with part into PART,
         * each with its log-sum-exp. */
        int (*attend)(struct client *cl, uint32_t n, bool part);
        /* OUT += PART, as kvk_lse_merge() merges them (fp32, in place): a
         * few partials of one layer. */
        int (*merge_out)(struct client *cl);
        /* ACC = nothing; ACC += PART (exact, through the log-sum-exp; in
         * double on the CPU, for thousands of partials); OUT = ACC (its
         * log-sum-exp undefined). */
        int (*acc_reset)(struct client *cl);
        int (*acc_merge)(struct client *cl);
        int (*acc_out)(struct client *cl);
        /* Copies OUT into cl->out (host). */
        int (*out_to_host)(struct client *cl);
};

extern const struct decode_device decode_device_cpu, decode_device_cuda;

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode --device cuda: the client's device pool is one
 * cudaMalloc'd allocation registered with kvc_pool_register_cuda() (the
 * daemon copies blocks into and out of it with the GPU's copy engines), and
 * the per-layer work runs on the GPU with the kernels of kernels-cuda.h:
 * block summaries and scores of the --method (kvk_cuda_method_*: back to the
 * host for kvc_sparse, or top-k on the device for the policies that pick
 * themselves), decode attention, and the merge of partial results
 * (kvk_cuda_lse_merge(): fp32 on the device, for full's batches too).
 * Compiled only where meson found nvcc.
 *
 * One stream per client. Host data goes up through a pinned arena that is
 * reused only once the stream has drained (any wait empties it); device
 * scratch (block pointers, valid counts, the query being scored) is reused
 * in stream order. Every op that reads slots, or brings results back,
 * waits for the stream before it returns: the daemon may write a slot as
 * soon as the client asks it to, and the bench times each op as a whole
 * (docs/decisions.md). CUDA does not survive fork(): the parent only probes
 * in a child of its own, and each client initialises CUDA for itself.
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client-cuda.h>
#include <kvdrive/client.h>

#include "decode.h"
#include "kernels-cuda.h"

#define STAGE_BLOCKS 64u        /* blocks of tokens the arena stages between two waits */
#define ARENA_ALIGN 256u
#define MIN_CC_MAJOR 9          /* the kernels are built for sm_90 (kernels/meson.build) */

struct cuda_dev {
        cudaStream_t st;
        bool st_made;
        void *d_pool;                   /* the pool's slots, one allocation */
        float *d_summ;                  /* [layers][max_blocks][sum_floats] */
        float *d_q;                     /* the layer's query (set_query) */
        float *d_qs;                    /* a query being scored */
        float *d_scores;                /* [max_blocks + 1] */
        void *d_mwork;                  /* kvk_cuda_method_scores()'s scratch */
        uint32_t *d_idx;                /* [kmax] */
        void **d_ptrs;                  /* [cap] the blocks of one launch */
        uint32_t *d_valid;              /* [cap] */
        uint32_t cap;                   /* blocks of the largest attention */
        void *d_ws;                     /* attention workspace */
        size_t ws_bytes;
        float *d_out, *d_out_lse, *d_part, *d_plse, *d_acc, *d_acc_lse;
        bool acc_empty;
        uint8_t *arena;                 /* pinned host memory the uploads go through */
        size_t arena_bytes, arena_used;
};

static int cu(const struct client *cl, const char *what, cudaError_t e)
{
        return e == cudaSuccess ? 0 : child_fail(cl, "%s: %s", what, cudaGetErrorString(e));
}

static int kfail(const struct client *cl, const char *what, int r)
{
        return child_fail(cl, "CUDA %s: %s (%s)", what, strerror(-r), cudaGetErrorString(cudaGetLastError()));
}

static float *summary_of(const struct client *cl, uint32_t l, uint32_t b)
{
        const struct cuda_dev *x = cl->dev;

        return x->d_summ + ((size_t)l * cl->run->max_blocks + b) * cl->run->sum_floats;
}

/* ---- probe (in a child: CUDA does not survive fork()) ----------------- */

static int probe_child(void)
{
        int n = 0, dev = 0, major = 0, minor = 0;
        cudaError_t e = cudaGetDeviceCount(&n);

        if (e != cudaSuccess || n <= 0) {
                fprintf(stderr, "kvdrive-bench decode: --device cuda: no usable CUDA device (cudaGetDeviceCount: %s)\n",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
                return 1;
        }
        e = cudaGetDevice(&dev);
        if (e == cudaSuccess)
                e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        if (e == cudaSuccess)
                e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
        if (e != cudaSuccess) {
                fprintf(stderr, "kvdrive-bench decode: --device cuda: CUDA device %d: %s\n", dev, cudaGetErrorString(e));
                return 1;
        }
        if (major < MIN_CC_MAJOR) {
                fprintf(stderr, "kvdrive-bench decode: --device cuda: CUDA device %d has compute capability %d.%d; "
                        "the kernels are built for %d.0 and up (H100, H200)\n", dev, major, minor, MIN_CC_MAJOR);
                return 1;
        }
        return 0;
}

static int cuda_probe(void)
{
        int st = 0;
        pid_t pid;

        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                fprintf(stderr, "kvdrive-bench decode: --device cuda: fork: %s\n", strerror(errno));
                return -1;
        }
        if (pid == 0)
                _exit(probe_child());
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (WIFSIGNALED(st))
                fprintf(stderr, "kvdrive-bench decode: --device cuda: the CUDA probe died of signal %d\n",
                        WTERMSIG(st));
        return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* ---- the stream, and uploads through the arena ------------------------ */

static int cuda_sync(struct client *cl)
{
        struct cuda_dev *x = cl->dev;

        if (cu(cl, "cudaStreamSynchronize", cudaStreamSynchronize(x->st)) < 0)
                return -1;
        x->arena_used = 0;
        return 0;
}

/* len bytes of the arena, waiting for the stream first when it is full
 * (the copies queued from it must be done before it is reused). */
static void *arena_take(struct client *cl, size_t len)
{
        struct cuda_dev *x = cl->dev;
        size_t need = (len + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
        void *p;

        if (need > x->arena_bytes) {
                child_fail(cl, "internal: an upload of %zu bytes, the arena holds %zu", len, x->arena_bytes);
                return NULL;
        }
        if (x->arena_used + need > x->arena_bytes && cuda_sync(cl) < 0)
                return NULL;
        p = x->arena + x->arena_used;
        x->arena_used += need;
        return p;
}

static int upload(struct client *cl, void *d_dst, const void *src, size_t len)
{
        struct cuda_dev *x = cl->dev;
        void *h = arena_take(cl, len);

        if (!h)
                return -1;
        memcpy(h, src, len);
        return cu(cl, "upload", cudaMemcpyAsync(d_dst, h, len, cudaMemcpyHostToDevice, x->st));
}

/* ---- set-up ------------------------------------------------------------ */

static int dalloc(struct client *cl, void **ret, size_t bytes)
{
        return cu(cl, "cudaMalloc", cudaMalloc(ret, bytes ? bytes : 1));
}

static int cuda_client_init(struct client *cl)
{
        const struct run *run = cl->run;
        size_t bb = run->block_bytes, qd = run->qd, heads = run->m->q_heads, mb = run->max_blocks;
        size_t pool_bytes = (size_t)run->pool_slots * bb;
        struct kvc_cuda_alloc a;
        struct kvc_cuda_pool_opts po;
        struct cuda_dev *x = calloc(1, sizeof(*x));
        int r;

        if (!x)
                return child_fail(cl, "out of memory");
        cl->dev = x;
        x->cap = (run->kmax > run->o.batch ? run->kmax : run->o.batch) + 1;
        x->ws_bytes = kvk_cuda_attention_workspace(&run->shape, x->cap);
        /* Room for STAGE_BLOCKS blocks of tokens, and for any one upload. */
        x->arena_bytes = STAGE_BLOCKS * bb + 2 * (x->cap * (sizeof(void *) + sizeof(uint32_t)) + qd * sizeof(float)) +
                         8 * ARENA_ALIGN;
        if (cu(cl, "cudaStreamCreate", cudaStreamCreateWithFlags(&x->st, cudaStreamNonBlocking)) < 0)
                return -1;
        x->st_made = true;
        if (dalloc(cl, &x->d_pool, pool_bytes) < 0 ||
            dalloc(cl, (void **)&x->d_summ, (size_t)run->layers * mb * run->sum_floats * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_q, qd * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_qs, qd * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_scores, (mb + 1) * sizeof(float)) < 0 ||
            dalloc(cl, &x->d_mwork, kvk_cuda_method_work_bytes(&run->shape, run->o.method, mb + 1)) < 0 ||
            dalloc(cl, (void **)&x->d_idx, (run->kmax ? run->kmax : 1) * sizeof(uint32_t)) < 0 ||
            dalloc(cl, (void **)&x->d_ptrs, x->cap * sizeof(void *)) < 0 ||
            dalloc(cl, (void **)&x->d_valid, x->cap * sizeof(uint32_t)) < 0 ||
            dalloc(cl, &x->d_ws, x->ws_bytes) < 0 ||
            dalloc(cl, (void **)&x->d_out, qd * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_part, qd * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_acc, qd * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_out_lse, heads * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_plse, heads * sizeof(float)) < 0 ||
            dalloc(cl, (void **)&x->d_acc_lse, heads * sizeof(float)) < 0)
                return -1;
        if (cu(cl, "cudaMallocHost", cudaMallocHost((void **)&x->arena, x->arena_bytes)) < 0)
                return -1;
        /* As a memfd pool starts: zeroed. */
        if (cu(cl, "cudaMemsetAsync", cudaMemsetAsync(x->d_pool, 0, pool_bytes, x->st)) < 0 || cuda_sync(cl) < 0)
                return -1;
        if (kvc_cuda_alloc_fill(&a, x->d_pool, run->pool_slots) < 0 || kvc_cuda_pool_opts_fill(&po) < 0)
                return child_fail(cl, "the pool's CUDA IPC handle: %s", cudaGetErrorString(cudaGetLastError()));
        r = kvc_pool_register_cuda(cl->c, &a, 1, bb, &po, &cl->pool);
        if (r == -KVC_E_UNSUPPORTED)
                return child_fail(cl, "register the CUDA pool: %s: %s (the daemon needs its CUDA module and a GPU: "
                                  "the cuda-module option or $KVDRIVE_CUDA_MODULE, docs/gpu.md)", kvc_strerror(r),
                                  kvc_last_error(cl->c));
        return r < 0 ? daemon_fail(cl, "register the CUDA pool", r) : 0;
}

static void cuda_client_free(struct client *cl)
{
        struct cuda_dev *x = cl->dev;
        void *bufs[16];
        size_t n = 0;

        if (!x)
                return;
        if (x->st_made) {
                cudaStreamSynchronize(x->st);
                cudaStreamDestroy(x->st);
        }
        bufs[n++] = x->d_pool;
        bufs[n++] = x->d_summ;
        bufs[n++] = x->d_q;
        bufs[n++] = x->d_qs;
        bufs[n++] = x->d_scores;
        bufs[n++] = x->d_mwork;
        bufs[n++] = x->d_idx;
        bufs[n++] = x->d_ptrs;
        bufs[n++] = x->d_valid;
        bufs[n++] = x->d_ws;
        bufs[n++] = x->d_out;
        bufs[n++] = x->d_out_lse;
        bufs[n++] = x->d_part;
        bufs[n++] = x->d_acc;
        bufs[n++] = x->d_plse;
        bufs[n++] = x->d_acc_lse;
        for (size_t i = 0; i < n; i++)
                if (bufs[i])
                        cudaFree(bufs[i]);
        if (x->arena)
                cudaFreeHost(x->arena);
        free(x);
        cl->dev = NULL;
}

/* ---- the ops ------------------------------------------------------------ */

/* The tokens go up as one strided copy: rows of the block are the K, then
 * the V, of each kv head ([2 * kv_heads][block_tokens][head_dim]), and the
 * tokens [from, to) are the same columns of every row. */
static int cuda_write_tokens(struct client *cl, uint32_t slot, uint32_t l, uint32_t b, uint32_t from, uint32_t to)
{
        const struct run *run = cl->run;
        struct cuda_dev *x = cl->dev;
        size_t tok = (size_t)run->m->head_dim * sizeof(uint16_t), row = (size_t)run->T * tok;
        size_t off = (size_t)(from - b * run->T) * tok;
        uint8_t *h = arena_take(cl, run->block_bytes);

        if (!h)
                return -1;
        copy_tokens(run, l, b, from, to, h);
        return cu(cl, "tokens to the device",
                  cudaMemcpy2DAsync((uint8_t *)slot_ptr(cl, slot) + off, row, h + off, row, (size_t)(to - from) * tok,
                                    2 * (size_t)run->m->kv_heads, cudaMemcpyHostToDevice, x->st));
}

static int cuda_summarise(struct client *cl, uint32_t slot, uint32_t valid, uint32_t l, uint32_t b)
{
        struct cuda_dev *x = cl->dev;
        void *p = slot_ptr(cl, slot);
        int r;

        if (upload(cl, x->d_ptrs, &p, sizeof(p)) < 0 || upload(cl, x->d_valid, &valid, sizeof(valid)) < 0)
                return -1;
        r = kvk_cuda_method_summaries(&cl->run->shape, cl->run->o.method, (const void *const *)x->d_ptrs,
                                      x->d_valid, 1, summary_of(cl, l, b), x->st);
        return r < 0 ? kfail(cl, "block summary", r) : 0;
}

static int cuda_set_query(struct client *cl)
{
        struct cuda_dev *x = cl->dev;

        return upload(cl, x->d_q, cl->q, cl->run->qd * sizeof(float));
}

/* Scores of layer l's first n blocks into d_scores. */
static int score_on_device(struct client *cl, uint32_t l, const float *q, uint32_t n)
{
        struct cuda_dev *x = cl->dev;
        int r;

        if (upload(cl, x->d_qs, q, cl->run->qd * sizeof(float)) < 0)
                return -1;
        r = kvk_cuda_method_scores(&cl->run->shape, cl->run->o.method, x->d_qs, summary_of(cl, l, 0), n, x->d_mwork,
                                   x->d_scores, x->st);
        return r < 0 ? kfail(cl, "block scores", r) : 0;
}

static int cuda_scores(struct client *cl, uint32_t l, const float *q, uint32_t n, float *ret)
{
        struct cuda_dev *x = cl->dev;

        if (score_on_device(cl, l, q, n) < 0 ||
            cu(cl, "scores to the host",
               cudaMemcpyAsync(ret, x->d_scores, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost, x->st)) < 0)
                return -1;
        return cuda_sync(cl);
}

static int cuda_select(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t k, uint32_t *ret)
{
        const struct run *run = cl->run;
        struct cuda_dev *x = cl->dev;
        int r;

        if (score_on_device(cl, l, q, n) < 0)
                return -1;
        r = kvk_cuda_topk(x->d_scores, n, k, run->o.sink, run->o.local, x->d_idx, x->st);
        if (r < 0)
                return kfail(cl, "top-k", r);
        if (cu(cl, "top-k to the host",
               cudaMemcpyAsync(ret, x->d_idx, (size_t)r * sizeof(uint32_t), cudaMemcpyDeviceToHost, x->st)) < 0 ||
            cuda_sync(cl) < 0)
                return -1;
        return r;
}

static int cuda_attend(struct client *cl, uint32_t n, bool part)
{
        struct cuda_dev *x = cl->dev;
        int r;

        if (n > x->cap)
                return child_fail(cl, "internal: attention over %u blocks, room for %u", n, x->cap);
        if (upload(cl, x->d_ptrs, cl->ptrs, n * sizeof(*cl->ptrs)) < 0 ||
            upload(cl, x->d_valid, cl->valid, n * sizeof(*cl->valid)) < 0)
                return -1;
        r = kvk_cuda_decode_attention(&cl->run->shape, x->d_q, (const void *const *)x->d_ptrs, x->d_valid, n, x->d_ws,
                                      x->ws_bytes, part ? x->d_part : x->d_out, part ? x->d_plse : x->d_out_lse, NULL,
                                      x->st);
        if (r < 0)
                return kfail(cl, "attention", r);
        /* The daemon may write these slots once this returns. */
        return cuda_sync(cl);
}

static int cuda_merge_out(struct client *cl)
{
        struct cuda_dev *x = cl->dev;
        int r = kvk_cuda_lse_merge(&cl->run->shape, x->d_out, x->d_out_lse, x->d_part, x->d_plse, x->st);

        return r < 0 ? kfail(cl, "merge", r) : 0;
}

static int cuda_acc_reset(struct client *cl)
{
        struct cuda_dev *x = cl->dev;

        x->acc_empty = true;
        return 0;
}

/* Into an empty ACC, PART is copied: what the merge gives there. */
static int cuda_acc_merge(struct client *cl)
{
        const struct run *run = cl->run;
        struct cuda_dev *x = cl->dev;
        int r;

        if (x->acc_empty) {
                x->acc_empty = false;
                if (cu(cl, "cudaMemcpyAsync",
                       cudaMemcpyAsync(x->d_acc, x->d_part, run->qd * sizeof(float), cudaMemcpyDeviceToDevice, x->st)) < 0)
                        return -1;
                return cu(cl, "cudaMemcpyAsync",
                          cudaMemcpyAsync(x->d_acc_lse, x->d_plse, run->m->q_heads * sizeof(float),
                                          cudaMemcpyDeviceToDevice, x->st));
        }
        r = kvk_cuda_lse_merge(&run->shape, x->d_acc, x->d_acc_lse, x->d_part, x->d_plse, x->st);
        return r < 0 ? kfail(cl, "merge", r) : 0;
}

static int cuda_acc_out(struct client *cl)
{
        struct cuda_dev *x = cl->dev;
        size_t bytes = cl->run->qd * sizeof(float);

        if (x->acc_empty)
                return cu(cl, "cudaMemsetAsync", cudaMemsetAsync(x->d_out, 0, bytes, x->st));
        return cu(cl, "cudaMemcpyAsync", cudaMemcpyAsync(x->d_out, x->d_acc, bytes, cudaMemcpyDeviceToDevice, x->st));
}

static int cuda_out_to_host(struct client *cl)
{
        struct cuda_dev *x = cl->dev;

        if (cu(cl, "attention output to the host",
               cudaMemcpyAsync(cl->out, x->d_out, cl->run->qd * sizeof(float), cudaMemcpyDeviceToHost, x->st)) < 0)
                return -1;
        return cuda_sync(cl);
}

const struct decode_device decode_device_cuda = {
        .name = "cuda",
        .probe = cuda_probe,
        .client_init = cuda_client_init,
        .client_free = cuda_client_free,
        .write_tokens = cuda_write_tokens,
        .summarise = cuda_summarise,
        .sync = cuda_sync,
        .set_query = cuda_set_query,
        .scores = cuda_scores,
        .select = cuda_select,
        .attend = cuda_attend,
        .merge_out = cuda_merge_out,
        .acc_reset = cuda_acc_reset,
        .acc_merge = cuda_acc_merge,
        .acc_out = cuda_acc_out,
        .out_to_host = cuda_out_to_host,
};

/* SPDX-License-Identifier: MIT */
/*
 * bench-gpu-transfer: daemon-driven copies between a GPU pool and the host
 * tier against plain cudaMemcpyAsync of the same bytes, in the same run.
 *
 *   bench-gpu-transfer [--bytes N] [--block N] [--workers N]
 *
 * Starts its own kvdrived ($KVDRIVED, tests/helpers/daemon.h) with a host
 * tier big enough for every block, registers a CUDA pool of bytes / block
 * slots, and times: D2H = Put of every slot (GPU -> daemon host tier), H2D =
 * Get of every slot (host tier -> GPU), each as batches of max-items with
 * many in flight; then the same bytes with cudaMemcpyAsync between pinned
 * host memory and the device, as one copy and as one copy per block. Prints
 * a Markdown table. Exits 77 without a GPU.
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kvdrive/client-cuda.h>

#include "daemon.h"

#define DIE(...)                                                        \
        do {                                                            \
                fprintf(stderr, "bench-gpu-transfer: " __VA_ARGS__);    \
                fputc('\n', stderr);                                    \
                exit(1);                                                \
        } while (0)

#define CUDA(call)                                                      \
        do {                                                            \
                cudaError_t e_ = (call);                                \
                if (e_ != cudaSuccess)                                  \
                        DIE("%s: %s", #call, cudaGetErrorString(e_));   \
        } while (0)

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t parse_size(const char *s)
{
        char *end;
        uint64_t v = strtoull(s, &end, 0);

        switch (*end) {
        case 'G': case 'g': v <<= 10; /* fall through */
        case 'M': case 'm': v <<= 10; /* fall through */
        case 'K': case 'k': v <<= 10; break;
        default: break;
        }
        return v;
}

/* Puts (d2h) or Gets every slot, max_items per request, up to 32 in flight. */
static double daemon_pass(kvc_client *c, uint32_t ns, kvc_pool *p, struct kvc_block_ref *refs, uint32_t n,
                          bool d2h)
{
        uint32_t batch = kvc_max_items(c), inflight = 0;
        uint8_t *st = calloc(n, 1);
        uint64_t ids[32];
        uint32_t counts[32];
        uint32_t head = 0;
        double t0 = now_s();

        if (!st)
                DIE("out of memory");
        for (uint32_t i = 0; i < n || inflight; ) {
                if (i < n && inflight < 32) {
                        uint32_t k = n - i < batch ? n - i : batch, slot = (head + inflight) % 32;
                        int rc = d2h ? kvc_put_submit(c, ns, p, refs + i, k, st + i, &ids[slot])
                                     : kvc_get_submit(c, ns, p, refs + i, k, st + i, &ids[slot]);

                        if (rc < 0)
                                DIE("submit: %s (%s)", kvc_strerror(rc), kvc_last_error(c));
                        counts[slot] = k;
                        inflight++;
                        i += k;
                        continue;
                }
                {
                        int rc = kvc_wait(c, ids[head], 60000);

                        if (rc != (int)counts[head])
                                DIE("%s: %d of %u (%s)", d2h ? "put" : "get", rc, counts[head],
                                    rc < 0 ? kvc_strerror(rc) : kvc_last_error(c));
                        head = (head + 1) % 32;
                        inflight--;
                }
        }
        free(st);
        return now_s() - t0;
}

/* Plain copies of the same bytes: one call, or one per block. */
static double plain_pass(void *dev, void *host, uint64_t bytes, uint64_t block, bool d2h, bool per_block,
                         cudaStream_t s)
{
        double t0 = now_s();

        if (per_block) {
                for (uint64_t off = 0; off < bytes; off += block)
                        CUDA(d2h ? cudaMemcpyAsync((char *)host + off, (char *)dev + off, block,
                                                   cudaMemcpyDeviceToHost, s)
                                 : cudaMemcpyAsync((char *)dev + off, (char *)host + off, block,
                                                   cudaMemcpyHostToDevice, s));
        } else {
                CUDA(d2h ? cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s)
                         : cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s));
        }
        CUDA(cudaStreamSynchronize(s));
        return now_s() - t0;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "bytes", required_argument, NULL, 'b' },
                { "block", required_argument, NULL, 'k' },
                { "workers", required_argument, NULL, 'w' },
                { 0 },
        };
        uint64_t bytes = UINT64_C(1) << 30, block = UINT64_C(1) << 20;
        const char *workers = "4";
        struct kvd_test_daemon d;
        struct kvc_cuda_alloc a;
        struct kvc_cuda_pool_opts po;
        struct kvc_block_ref *refs;
        struct kvc_geometry g;
        struct kvc_key seq;
        char host_arg[32];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        cudaStream_t s;
        void *dev, *pinned;
        double t[2][3];
        uint32_t n, ns;
        int o, ndev = 0, rc;

        while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                if (o == 'b')
                        bytes = parse_size(optarg);
                else if (o == 'k')
                        block = parse_size(optarg);
                else if (o == 'w')
                        workers = optarg;
                else
                        return 2;
        }
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                fprintf(stderr, "bench-gpu-transfer: no CUDA device: skipped\n");
                return 77;
        }
        /* block = 2 * kv_heads * head_dim * tokens * 2 (f16), kv_heads 8, head_dim 128. */
        if (block < 8192 || block % 8192 || bytes < block)
                DIE("--block must be a multiple of 8K, --bytes at least one block");
        n = (uint32_t)(bytes / block);
        bytes = (uint64_t)n * block;
        g = (struct kvc_geometry){ .layers = 1, .kv_heads = 8, .head_dim = 128, .dtype = KVC_DTYPE_F16,
                                   .block_tokens = (uint32_t)(block / 4096) };
        snprintf(host_arg, sizeof(host_arg), "%" PRIu64 "M", (bytes + bytes / 4 + (64u << 20)) >> 20);
        {
                const char *args[] = { "--host-bytes", host_arg, "--workers", workers, "--host-extent-bytes",
                                       block > (16u << 20) ? "1G" : "16M", "--max-inflight-per-client", "256",
                                       NULL };

                if (kvd_test_daemon_start(&d, args) < 0)
                        DIE("daemon: %s", d.error);
        }
        rc = kvc_connect(d.socket_path, "bench-gpu-transfer", &c);
        if (rc == 0)
                rc = kvc_register_namespace(c, "bench-gpu", &g, &ns, NULL);
        if (rc < 0)
                DIE("connect: %s (%s)", kvc_strerror(rc), c ? kvc_last_error(c) : "");
        CUDA(cudaMalloc(&dev, bytes));
        CUDA(cudaMallocHost(&pinned, bytes));
        CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        memset(pinned, 0x5a, bytes);
        CUDA(cudaMemcpy(dev, pinned, bytes, cudaMemcpyHostToDevice));
        if (kvc_cuda_alloc_fill(&a, dev, n) < 0 || kvc_cuda_pool_opts_fill(&po) < 0)
                DIE("IPC handle: %s", cudaGetErrorString(cudaGetLastError()));
        rc = kvc_pool_register_cuda(c, &a, 1, block, &po, &p);
        if (rc < 0)
                DIE("register: %s (%s)", kvc_strerror(rc), kvc_last_error(c));
        refs = calloc(n, sizeof(*refs));
        if (!refs || kvc_key_sequence_new(&seq) < 0)
                DIE("setup");
        for (uint32_t i = 0; i < n; i++) {
                kvc_key_private(&seq, i, &refs[i].key);
                refs[i].slot = i;
        }

        /* Warm-up of the plain path (the daemon's first Put warms its own). */
        plain_pass(dev, pinned, bytes, block, false, false, s);
        t[1][0] = daemon_pass(c, ns, p, refs, n, true);
        t[0][0] = daemon_pass(c, ns, p, refs, n, false);
        t[1][1] = plain_pass(dev, pinned, bytes, block, true, false, s);
        t[0][1] = plain_pass(dev, pinned, bytes, block, false, false, s);
        t[1][2] = plain_pass(dev, pinned, bytes, block, true, true, s);
        t[0][2] = plain_pass(dev, pinned, bytes, block, false, true, s);

        printf("\n%" PRIu64 " MiB in %u blocks of %" PRIu64 " KiB, daemon with %s workers\n\n", bytes >> 20, n,
               block >> 10, workers);
        printf("| direction | kvdrived (GB/s) | cudaMemcpyAsync, one copy (GB/s) | cudaMemcpyAsync, per block (GB/s) | kvdrived / per block |\n");
        printf("|---|---|---|---|---|\n");
        for (int dir = 0; dir < 2; dir++)
                printf("| %s | %.2f | %.2f | %.2f | %.0f%% |\n", dir ? "D2H (Put)" : "H2D (Get)",
                       (double)bytes / t[dir][0] / 1e9, (double)bytes / t[dir][1] / 1e9,
                       (double)bytes / t[dir][2] / 1e9, 100.0 * t[dir][2] / t[dir][0]);

        kvc_pool_free(p);
        kvc_disconnect(c);
        free(refs);
        cudaFree(dev);
        cudaFreeHost(pinned);
        if (kvd_test_daemon_stop(&d) < 0)
                DIE("daemon stop: %s", d.error);
        return 0;
}

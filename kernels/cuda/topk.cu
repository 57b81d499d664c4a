/* SPDX-License-Identifier: MIT */
/*
 * Top-k on the device: one thread block finds the cap-th best candidate by
 * radix select over 64-bit keys (score in the high half, mapped so that
 * integer order is score order, the complemented index in the low half, so
 * that every key is distinct and equal scores prefer the lower index), then
 * writes the chosen indices in index order with a block-wide prefix sum: the
 * output comes out sorted without a sort.
 */
#include "common.cuh"

#define TOPK_THREADS 1024

__device__ __forceinline__ unsigned long long topk_key(const float *scores, uint32_t i)
{
        float f = scores[i];
        uint32_t u;

        if (isnan(f))
                f = -INFINITY;          /* NaN ranks as -inf, as in kvk_topk() */
        if (f == 0.0f)
                f = 0.0f;               /* -0 ties with +0 */
        u = __float_as_uint(f);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        return ((unsigned long long)u << 32) | (0xffffffffu - i);
}

/* Candidates are [lo, hi); cap of them are chosen; [0, lo) and [hi, n) are
 * always chosen. */
__global__ void topk_kernel(const float *scores, uint32_t n, uint32_t lo, uint32_t hi,
                            uint32_t cap, uint32_t *out)
{
        __shared__ uint32_t hist[256];
        __shared__ uint32_t counts[TOPK_THREADS];
        __shared__ unsigned long long prefix, mask;
        __shared__ uint32_t remaining;
        const uint32_t tid = threadIdx.x;

        if (tid == 0) {
                prefix = 0;
                mask = 0;
                remaining = cap;
        }
        __syncthreads();

        /* After the eight passes, prefix is the key of the cap-th best candidate. */
        for (int shift = 56; cap > 0 && shift >= 0; shift -= 8) {
                for (uint32_t i = tid; i < 256; i += blockDim.x)
                        hist[i] = 0;
                __syncthreads();
                for (uint32_t i = lo + tid; i < hi; i += blockDim.x) {
                        unsigned long long key = topk_key(scores, i);

                        if ((key & mask) == prefix)
                                atomicAdd(&hist[(key >> shift) & 0xff], 1u);
                }
                __syncthreads();
                if (tid == 0) {
                        uint32_t above = 0;

                        for (int digit = 255; digit >= 0; digit--) {
                                if (above + hist[digit] >= remaining) {
                                        prefix |= (unsigned long long)digit << shift;
                                        mask |= 0xffull << shift;
                                        remaining -= above;
                                        break;
                                }
                                above += hist[digit];
                        }
                }
                __syncthreads();
        }

        /* Each thread owns a contiguous run of indices; a prefix sum over the
         * runs' counts gives each run its place in the output. */
        const uint32_t per = (n + blockDim.x - 1) / blockDim.x;
        const uint32_t begin = min(n, tid * per), end = min(n, begin + per);
        const unsigned long long thr = prefix;
        uint32_t c = 0;

        for (uint32_t i = begin; i < end; i++)
                c += i < lo || i >= hi || (cap > 0 && topk_key(scores, i) >= thr);
        counts[tid] = c;
        __syncthreads();
        for (uint32_t off = 1; off < blockDim.x; off *= 2) {
                uint32_t v = tid >= off ? counts[tid - off] : 0;

                __syncthreads();
                counts[tid] += v;
                __syncthreads();
        }
        uint32_t at = counts[tid] - c;
        for (uint32_t i = begin; i < end; i++)
                if (i < lo || i >= hi || (cap > 0 && topk_key(scores, i) >= thr))
                        out[at++] = i;
}

extern "C" int kvk_cuda_topk(const float *d_scores, uint32_t n, uint32_t k, uint32_t sink_blocks,
                             uint32_t local_blocks, uint32_t *d_ret_idx, void *stream)
{
        uint32_t sink, local, cap;
        int r;

        if (!d_scores || !d_ret_idx || n > (uint32_t)INT32_MAX)
                return -EINVAL;
        if (k > n)
                k = n;
        if (k == 0)
                return 0;
        sink = sink_blocks < k ? sink_blocks : k;
        local = local_blocks < k - sink ? local_blocks : k - sink;
        cap = k - sink - local;

        topk_kernel<<<1, TOPK_THREADS, 0, kvk_stream(stream)>>>(d_scores, n, sink, n - local, cap,
                                                                d_ret_idx);
        r = kvk_launch_result();
        return r < 0 ? r : (int)k;
}

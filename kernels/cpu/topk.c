/* SPDX-License-Identifier: MIT */
/*
 * Top-k block selection: a bounded min-heap of the best candidates kept in
 * the caller's output array (O(n log k), no allocation), then an in-place
 * heapsort of the survivors by index.
 */
#include <math.h>

#include "kernels-internal.h"

static float key(const float *scores, uint32_t i)
{
        float f = scores[i];

        return isnan(f) ? -INFINITY : f;
}

/* True when block a ranks below block b: lower score, or equal score and
 * higher index. A total order, so the selection is unique. */
static bool worse(const float *scores, uint32_t a, uint32_t b)
{
        float ka = key(scores, a), kb = key(scores, b);

        return ka < kb || (ka == kb && a > b);
}

/* Restores the heap below slot i; the root is the worst element. */
static void sift_down(const float *scores, uint32_t *heap, uint32_t n, uint32_t i)
{
        for (;;) {
                uint32_t c = 2 * i + 1, w = i;

                if (c < n && worse(scores, heap[c], heap[w]))
                        w = c;
                if (c + 1 < n && worse(scores, heap[c + 1], heap[w]))
                        w = c + 1;
                if (w == i)
                        return;
                uint32_t tmp = heap[i];
                heap[i] = heap[w];
                heap[w] = tmp;
                i = w;
        }
}

static void sift_up(const float *scores, uint32_t *heap, uint32_t i)
{
        while (i > 0) {
                uint32_t p = (i - 1) / 2;

                if (!worse(scores, heap[i], heap[p]))
                        return;
                uint32_t tmp = heap[i];
                heap[i] = heap[p];
                heap[p] = tmp;
                i = p;
        }
}

/* Restores the max-heap a[0, n) below slot j. */
static void sift_max(uint32_t *a, uint32_t n, uint32_t j)
{
        for (;;) {
                uint32_t c = 2 * j + 1, w = j;

                if (c < n && a[c] > a[w])
                        w = c;
                if (c + 1 < n && a[c + 1] > a[w])
                        w = c + 1;
                if (w == j)
                        return;
                uint32_t tmp = a[j];
                a[j] = a[w];
                a[w] = tmp;
                j = w;
        }
}

/* Ascending in-place heapsort of indices. */
static void sort_idx(uint32_t *a, uint32_t n)
{
        for (uint32_t i = n / 2; i-- > 0;)
                sift_max(a, n, i);
        for (uint32_t end = n; end > 1; end--) {
                uint32_t top = a[0];

                a[0] = a[end - 1];
                a[end - 1] = top;
                sift_max(a, end - 1, 0);
        }
}

uint32_t kvk_topk(const float *scores, uint32_t n, uint32_t k, uint32_t sink_blocks,
                  uint32_t local_blocks, uint32_t *ret_idx)
{
        uint32_t sink, local, cap, lo, hi, size = 0, out;

        if (!scores || !ret_idx)
                return 0;
        if (k > n)
                k = n;
        sink = sink_blocks < k ? sink_blocks : k;
        local = local_blocks < k - sink ? local_blocks : k - sink;
        cap = k - sink - local;          /* places left for scored blocks */
        lo = sink;                       /* candidates: [lo, hi) */
        hi = n - local;

        /* Heap of the best cap candidates in ret_idx[sink ...]. */
        uint32_t *heap = ret_idx + sink;
        for (uint32_t i = lo; i < hi && cap > 0; i++) {
                if (size < cap) {
                        heap[size] = i;
                        sift_up(scores, heap, size++);
                } else if (worse(scores, heap[0], i)) {
                        heap[0] = i;
                        sift_down(scores, heap, size, 0);
                }
        }
        sort_idx(heap, size);

        for (uint32_t i = 0; i < sink; i++)
                ret_idx[i] = i;
        out = sink + size;
        for (uint32_t i = hi; i < n; i++)
                ret_idx[out++] = i;
        return out;
}

uint32_t kvk_select_mass(const float *mass, uint32_t n, float target, uint32_t k_min, uint32_t k_max,
                         uint32_t sink_blocks, uint32_t local_blocks, uint32_t *ret_idx)
{
        uint32_t k, sink, local, out, scored, take = 0;
        uint32_t *cand;
        double sum = 0;

        if (!mass || !ret_idx)
                return 0;
        k = k_max < n ? k_max : n;
        out = kvk_topk(mass, n, k, sink_blocks, local_blocks, ret_idx);
        sink = sink_blocks < k ? sink_blocks : k;
        local = local_blocks < k - sink ? local_blocks : k - sink;
        scored = out - sink - local;
        cand = ret_idx + sink;

        /* The scored candidates, best first: a heapsort on the worst-at-root
         * heap moves each worst survivor to the end. */
        for (uint32_t i = scored / 2; i-- > 0;)
                sift_down(mass, cand, scored, i);
        for (uint32_t end = scored; end > 1; end--) {
                uint32_t w = cand[0];

                cand[0] = cand[end - 1];
                cand[end - 1] = w;
                sift_down(mass, cand, end - 1, 0);
        }

        for (uint32_t i = 0; i < sink; i++)
                sum += key(mass, i) > 0 ? key(mass, i) : 0;
        for (uint32_t i = n - local; i < n; i++)
                sum += key(mass, i) > 0 ? key(mass, i) : 0;
        while (take < scored && (sum < target || sink + local + take < k_min)) {
                float m = key(mass, cand[take++]);

                sum += m > 0 ? m : 0;
        }
        sort_idx(cand, take);
        for (uint32_t i = 0; i < local; i++)
                cand[take + i] = n - local + i;
        return sink + take + local;
}

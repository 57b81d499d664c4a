/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* 0 when sel holds n_sel distinct indices below n, else -EINVAL (-ENOMEM). */
static int check_sel(uint32_t n, const uint32_t *sel, uint32_t n_sel)
{
        uint8_t *seen;

        if (n_sel && !sel)
                return -EINVAL;
        seen = calloc((n + 7) / 8, 1);
        if (!seen)
                return -ENOMEM;
        for (uint32_t i = 0; i < n_sel; i++) {
                uint32_t b = sel[i];

                if (b >= n || (seen[b / 8] & (1u << (b % 8)))) {
                        free(seen);
                        return -EINVAL;
                }
                seen[b / 8] |= (uint8_t)(1u << (b % 8));
        }
        free(seen);
        return 0;
}

double kvb_mass_recall(const float *mass, uint32_t n, const uint32_t *sel, uint32_t n_sel)
{
        double total = 0, got = 0;
        int r;

        if (!mass || n == 0)
                return -EINVAL;
        r = check_sel(n, sel, n_sel);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < n; i++)
                total += mass[i];
        for (uint32_t i = 0; i < n_sel; i++)
                got += mass[sel[i]];
        if (total <= 0)
                return 0;
        got /= total;
        return got > 1 ? 1 : got;
}

/* Ranking of kvk_topk(): higher mass first, then lower index; NaN last. */
static int cmp_rank(const void *a, const void *b, void *ctx)
{
        const float *mass = ctx;
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        float mx = mass[x], my = mass[y];

        if (isnan(mx))
                mx = -INFINITY;
        if (isnan(my))
                my = -INFINITY;
        if (mx != my)
                return mx > my ? -1 : 1;
        return (x > y) - (x < y);
}

static bool ranks_before(const float *mass, uint32_t x, uint32_t y)
{
        float mx = isnan(mass[x]) ? -INFINITY : mass[x], my = isnan(mass[y]) ? -INFINITY : mass[y];

        return mx > my || (mx == my && x < y);
}

double kvb_topk_recall(const float *mass, uint32_t n, const uint32_t *sel, uint32_t n_sel, uint32_t k)
{
        uint32_t hits = 0, kth;
        uint32_t *order;
        int r;

        if (!mass || n == 0 || k == 0)
                return -EINVAL;
        r = check_sel(n, sel, n_sel);
        if (r < 0)
                return r;
        if (k > n)
                k = n;
        order = malloc(sizeof(*order) * n);
        if (!order)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++)
                order[i] = i;
        qsort_r(order, n, sizeof(*order), cmp_rank, (void *)mass);
        kth = order[k - 1];
        free(order);
        /* A block is in the exact top-k when it ranks at or before the k-th. */
        for (uint32_t i = 0; i < n_sel; i++)
                if (sel[i] == kth || ranks_before(mass, sel[i], kth))
                        hits++;
        return (double)hits / k;
}

double kvb_rel_l2_error(const float *out, const float *ref, size_t n)
{
        double diff = 0, norm = 0;

        for (size_t i = 0; i < n; i++) {
                double d = (double)out[i] - (double)ref[i];

                diff += d * d;
                norm += (double)ref[i] * ref[i];
        }
        if (isnan(diff) || isnan(norm))
                return NAN;
        if (norm == 0)
                return diff == 0 ? 0 : INFINITY;
        return sqrt(diff) / sqrt(norm);
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return (x > y) - (x < y);
}

double kvb_percentile(double *v, size_t n, double p)
{
        double rank;
        size_t i;

        if (n == 0 || !v)
                return 0;
        if (p < 0)
                p = 0;
        if (p > 100)
                p = 100;
        qsort(v, n, sizeof(*v), cmp_double);
        /* p * n first: 99 * 100 / 100 is exactly 99, 0.99 * 100 is not. */
        rank = ceil(p * (double)n / 100.0 - 1e-9);
        i = rank < 1 ? 0 : (size_t)rank - 1;
        return v[i < n ? i : n - 1];
}

double kvb_mean(const double *v, size_t n)
{
        double s = 0;

        if (n == 0 || !v)
                return 0;
        for (size_t i = 0; i < n; i++)
                s += v[i];
        return s / (double)n;
}

double kvb_hit_rate(uint64_t hits, uint64_t misses)
{
        if (hits + misses == 0)
                return NAN;
        return (double)hits / (double)(hits + misses);
}

double kvb_rate(uint64_t count, uint64_t ns)
{
        return ns ? (double)count * 1e9 / (double)ns : 0;
}

void kvb_merge_double(double *acc, double *lse, const float *part, const float *plse, uint32_t heads, uint32_t dim)
{
        for (uint32_t h = 0; h < heads; h++) {
                double a = lse[h], b = plse[h], m, wa, wb, sum;

                if (plse[h] == -INFINITY)
                        continue;
                m = a > b ? a : b;
                wa = a == -INFINITY ? 0.0 : exp(a - m);
                wb = exp(b - m);
                sum = wa + wb;
                for (uint32_t d = 0; d < dim; d++)
                        acc[h * dim + d] = (wa * acc[h * dim + d] + wb * part[h * dim + d]) / sum;
                lse[h] = m + log(sum);
        }
}

int kvb_reference_attention(const struct kvk_shape *s, const float *q, const void *const *blocks,
                            const uint32_t *valid, uint32_t n, float *part, float *plse, double *acc,
                            double *acc_lse, float *ret_ref)
{
        size_t qd = (size_t)s->q_heads * s->head_dim;

        for (uint32_t h = 0; h < s->q_heads; h++)
                acc_lse[h] = -INFINITY;
        memset(acc, 0, sizeof(double) * qd);
        for (uint32_t first = 0; first < n; first += KVB_REF_CHUNK) {
                uint32_t cnt = n - first < KVB_REF_CHUNK ? n - first : KVB_REF_CHUNK;
                int r = kvk_full_attention(s, q, blocks + first, valid + first, cnt, part, plse);

                if (r < 0)
                        return r;
                kvb_merge_double(acc, acc_lse, part, plse, s->q_heads, s->head_dim);
        }
        for (size_t i = 0; i < qd; i++)
                ret_ref[i] = (float)acc[i];
        return 0;
}

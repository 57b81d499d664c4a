/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: predicting layer l+1's query at layer l, for the
 * policies that fetch or stage the next layer's blocks ahead (sparse,
 * kvdrive --stage-layer).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "kernels.h"
#include "trace.h"

#define CAL_TOKENS 4096u        /* prompt tokens sampled to fit the layer-to-layer maps */

/*
 * InfiniGen predicts layer l+1's attention at layer l from layer l's input
 * through layer l+1's (partial) query weights, so the speculative query is in
 * layer l+1's space. A trace has no weights, and each layer's keys and
 * queries may live in coordinates of their own (they do in `gen`'s traces:
 * a random signed permutation per layer), so layer l's raw query is a poor
 * guess (--predict raw, for comparison). In their place, once before decode
 * (as InfiniGen's offline step), a linear map per kv head from layer l's key
 * space to layer l+1's is fitted by ridge least squares over up to
 * CAL_TOKENS prompt tokens: M = argmin sum_j |k_{l+1,j} - M k_{l,j}|^2, and
 * the speculative query of layer l+1 is M q_l.
 */
static int cholesky(double *a, uint32_t n)
{
        for (uint32_t j = 0; j < n; j++) {
                double d = a[(size_t)j * n + j];

                for (uint32_t k = 0; k < j; k++)
                        d -= a[(size_t)j * n + k] * a[(size_t)j * n + k];
                if (!(d > 0))
                        return -EDOM;
                d = sqrt(d);
                a[(size_t)j * n + j] = d;
                for (uint32_t i = j + 1; i < n; i++) {
                        double v = a[(size_t)i * n + j];

                        for (uint32_t k = 0; k < j; k++)
                                v -= a[(size_t)i * n + k] * a[(size_t)j * n + k];
                        a[(size_t)i * n + j] = v / d;
                }
        }
        return 0;
}

/* Solves L L^T x = b in place (L from cholesky()). */
static void chol_solve(const double *l, uint32_t n, double *b)
{
        for (uint32_t i = 0; i < n; i++) {
                for (uint32_t k = 0; k < i; k++)
                        b[i] -= l[(size_t)i * n + k] * b[k];
                b[i] /= l[(size_t)i * n + i];
        }
        for (uint32_t i = n; i-- > 0;) {
                for (uint32_t k = i + 1; k < n; k++)
                        b[i] -= l[(size_t)k * n + i] * b[k];
                b[i] /= l[(size_t)i * n + i];
        }
}

int calibrate(struct run *run)
{
        const struct kvb_trace_meta *m = run->m;
        uint32_t d = m->head_dim, n = run->prompt < CAL_TOKENS ? run->prompt : CAL_TOKENS;
        uint32_t stride = run->prompt / n;
        double *a = malloc(sizeof(double) * d * d), *b = malloc(sizeof(double) * d * d);
        double *x = malloc(sizeof(double) * d), *y = malloc(sizeof(double) * d);
        int ret = -ENOMEM;

        run->xmap = calloc((size_t)(run->layers - 1) * m->kv_heads * d * d, sizeof(float));
        if (!a || !b || !x || !y || (run->layers > 1 && !run->xmap))
                goto out;
        for (uint32_t l = 0; l + 1 < run->layers; l++) {
                for (uint32_t g = 0; g < m->kv_heads; g++) {
                        float *mp = run->xmap + ((size_t)l * m->kv_heads + g) * d * d;
                        double tr = 0;

                        memset(a, 0, sizeof(double) * d * d);
                        memset(b, 0, sizeof(double) * d * d);
                        for (uint32_t i = 0; i < n; i++) {
                                const uint16_t *kx = run->tr->k + kvb_kv_index(m, l, g, i * stride);
                                const uint16_t *ky = run->tr->k + kvb_kv_index(m, l + 1, g, i * stride);

                                for (uint32_t e = 0; e < d; e++) {
                                        x[e] = kvk_f16_to_f32(kx[e]);
                                        y[e] = kvk_f16_to_f32(ky[e]);
                                }
                                for (uint32_t r = 0; r < d; r++) {
                                        double *ar = a + (size_t)r * d, *br = b + (size_t)r * d, xr = x[r], yr = y[r];

                                        for (uint32_t c = 0; c <= r; c++)
                                                ar[c] += xr * x[c];
                                        for (uint32_t c = 0; c < d; c++)
                                                br[c] += yr * x[c];
                                }
                        }
                        for (uint32_t r = 0; r < d; r++)
                                tr += a[(size_t)r * d + r];
                        for (uint32_t r = 0; r < d; r++)
                                a[(size_t)r * d + r] += 1e-3 * tr / d + 1e-12;
                        if (cholesky(a, d) < 0) {
                                ret = -EDOM;
                                goto out;
                        }
                        /* M A = B, A symmetric: row r of M solves A m = row r of B. */
                        for (uint32_t r = 0; r < d; r++) {
                                chol_solve(a, d, b + (size_t)r * d);
                                for (uint32_t c = 0; c < d; c++)
                                        mp[(size_t)r * d + c] = (float)b[(size_t)r * d + c];
                        }
                }
        }
        ret = 0;
out:
        free(a);
        free(b);
        free(x);
        free(y);
        return ret;
}

/* dst = the speculative query of layer l+1 from layer l's query q. */
void map_query(const struct run *run, uint32_t l, const float *q, float *dst)
{
        const struct kvb_trace_meta *m = run->m;
        uint32_t d = m->head_dim, group = m->q_heads / m->kv_heads;

        for (uint32_t h = 0; h < m->q_heads; h++) {
                const float *mp = run->xmap + ((size_t)l * m->kv_heads + h / group) * d * d;

                for (uint32_t r = 0; r < d; r++) {
                        float v = 0;

                        for (uint32_t c = 0; c < d; c++)
                                v += mp[(size_t)r * d + c] * q[(size_t)h * d + c];
                        dst[(size_t)h * d + r] = v;
                }
        }
}

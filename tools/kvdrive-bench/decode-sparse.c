/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy sparse (InfiniGen-style): the real top-k of
 * each layer is attended; the next layer's top-k, predicted from this
 * layer's query, is prefetched while this layer computes, and what the
 * prediction missed is fetched on demand (decode.c's header comment).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <kvdrive/client.h>

#include "bench.h"
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

/* ---- sparse ---------------------------------------------------------- */

/*
 * Layer l of step t (global layer number gl): takes the prefetch issued at
 * the previous layer, selects the real top-k, fetches what the prediction
 * missed, and issues the prefetch of the next layer's predicted top-k into
 * the other bank. The caller then attends (attend_selected).
 */
int sparse_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint64_t gl, uint32_t n)
{
        const struct run *run = cl->run;
        uint32_t bank = (uint32_t)(gl & 1), kmax = run->kmax, base = sq->slot0 + bank * kmax, *blk = sq->bank[bank];
        uint32_t nfree = 0, m = 0, *freel = cl->sel2;

        if (sq->pref_live[bank]) {
                if (group_wait(cl, &sq->pref[bank], false) < 0)
                        return -1;
                sq->pref_live[bank] = false;
        } else {
                for (uint32_t j = 0; j < kmax; j++)
                        blk[j] = NONE;
        }
        sq->nsel = select_blocks(cl, l, cl->q, n, sq->sel);
        sq->epoch++;
        for (uint32_t i = 0; i < sq->nsel; i++) {
                sq->stamp[sq->sel[i]] = sq->epoch;
                sq->where[sq->sel[i]] = NONE;
        }
        for (uint32_t j = 0; j < kmax; j++) {
                if (blk[j] != NONE && sq->stamp[blk[j]] == sq->epoch)
                        sq->where[blk[j]] = j;
                else
                        freel[nfree++] = j;
        }
        for (uint32_t i = 0, f = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i];

                if (sq->where[b] == NONE) {     /* not predicted: fetch it now */
                        uint32_t j = freel[f++];

                        blk[j] = b;
                        sq->where[b] = j;
                        cl->refs[m] = (struct kvc_block_ref){ .layer = l, .slot = base + j };
                        kvc_key_private(&sq->id, b, &cl->refs[m].key);
                        cl->blkid[m++] = b;
                }
                sq->sel_slot[i] = base + sq->where[b];
        }
        cl->res.dev_hits += sq->nsel - m;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        if (group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs) < 0)
                return -1;

        /* Predict the next layer (of this step, or layer 0 of the next) and
         * fetch it while this layer computes. */
        if (l + 1 < run->layers || t + 1 < run->steps) {
                uint32_t nl = (l + 1) % run->layers, other = bank ^ 1, obase = sq->slot0 + other * kmax;
                uint32_t n2 = (run->prompt + (l + 1 < run->layers ? t : t + 1)) / run->T, np;
                const float *q = cl->q;

                if (l + 1 == run->layers) {
                        load_query(run, t, 0, cl->q0);
                        q = cl->q0;
                } else if (run->xmap) {
                        uint64_t t0 = bench_now_ns();

                        map_query(run, l, cl->q, cl->q0);
                        q = cl->q0;
                        cl->res.select_ns += bench_now_ns() - t0;
                }
                np = select_blocks(cl, nl, q, n2, sq->pred);
                for (uint32_t j = 0; j < kmax; j++) {
                        sq->bank[other][j] = j < np ? sq->pred[j] : NONE;
                        if (j < np) {
                                cl->refs[j] = (struct kvc_block_ref){ .layer = nl, .slot = obase + j };
                                kvc_key_private(&sq->id, sq->pred[j], &cl->refs[j].key);
                        }
                }
                if (group_submit(cl, &sq->pref[other], false, cl->refs, sq->pred, np, run->group_reqs) < 0)
                        return -1;
                sq->pref_live[other] = np > 0;
                cl->res.got_blocks += np;
        }
        return 0;
}

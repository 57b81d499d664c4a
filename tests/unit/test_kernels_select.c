/* SPDX-License-Identifier: MIT */
/*
 * The selection methods of the CPU kernels (kernels.h, "Selection
 * methods"): summaries and estimated masses against double-precision
 * references written here from the definitions, on every back end this CPU
 * runs; the bounds against every token's true logit; the dynamic budget
 * (kvk_select_mass()); and the argument checks.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels-ref.h"

/* Uniform in [0, 1). */
static double unit(void)
{
        return (urand() + 1.0) / 2;
}

static double normal(void)
{
        double u = unit() + 1e-12, v = unit();

        return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static uint16_t to_dt(float f, enum kvk_dtype dt)
{
        return dt == KVK_F16 ? kvk_f32_to_f16(f) : kvk_f32_to_bf16(f);
}

static float from_dt(uint16_t h, enum kvk_dtype dt)
{
        return dt == KVK_F16 ? kvk_f16_to_f32(h) : kvk_bf16_to_f32(h);
}

/* n blocks of s (even head_dim) with keys that have what the methods look
 * at: an offset on some dimensions (outlier channels), RoPE-like rotation
 * of the pairs (j, j + head_dim/2) by an angle that grows with the token,
 * and a per-token norm. */
static uint16_t *rope_blocks(const struct kvk_shape *s, uint32_t n)
{
        size_t bb = kvk_block_bytes(s), he = (size_t)s->block_tokens * s->head_dim;
        uint16_t *b = malloc(bb * n);
        uint32_t d = s->head_dim, h = d / 2;

        ck_assert_ptr_nonnull(b);
        ck_assert_uint_eq(d % 2, 0);
        for (uint32_t i = 0; i < n; i++) {
                uint16_t *blk = b + bb / 2 * i;

                for (uint32_t g = 0; g < 2 * s->kv_heads; g++) {        /* K heads, then V heads */
                        for (uint32_t t = 0; t < s->block_tokens; t++) {
                                double norm = exp(0.5 * normal()), pos = i * s->block_tokens + t;
                                uint16_t *row = blk + g * he + (size_t)t * d;

                                for (uint32_t j = 0; j < h; j++) {
                                        double x = normal() * norm + (j % 17 == 3 ? 6.0 : 0.0);
                                        double y = normal() * norm, a = pos * pow(100.0, -(double)j / h);

                                        row[j] = to_dt((float)(x * cos(a) - y * sin(a)), s->dtype);
                                        row[j + h] = to_dt((float)(x * sin(a) + y * cos(a)), s->dtype);
                                }
                        }
                }
        }
        return b;
}

static float *rand_query(const struct kvk_shape *s)
{
        float *q = malloc(sizeof(float) * s->q_heads * s->head_dim);

        ck_assert_ptr_nonnull(q);
        for (uint32_t i = 0; i < s->q_heads * s->head_dim; i++)
                q[i] = (float)(normal() * 1.5);
        return q;
}

/* ---- references ---------------------------------------------------------- */

/* Element (token t, dim j) of the K of kv head g of block blk. */
static double key(const struct kvk_shape *s, const uint16_t *blk, uint32_t g, uint32_t t, uint32_t j)
{
        return from_dt(blk[((size_t)g * s->block_tokens + t) * s->head_dim + j], s->dtype);
}

/* KVK_HYBRID's estimate: the key farthest from the mean as the spike, a
 * Gaussian over the others. */
static double ref_hybrid(const struct kvk_shape *s, const uint16_t *blk, uint32_t nt, const float *qh, uint32_t g)
{
        uint32_t d = s->head_dim, spike = 0, T = s->block_tokens;
        double mean[512], far = -1, mu = 0, sg = 0, p = 0, sd = sqrt(d), e;

        for (uint32_t j = 0; j < d; j++) {
                mean[j] = 0;
                for (uint32_t t = 0; t < nt; t++)
                        mean[j] += key(s, blk, g, t, j) / nt;
        }
        for (uint32_t t = 0; t < nt; t++) {
                double r = 0;

                for (uint32_t j = 0; j < d; j++)
                        r += (key(s, blk, g, t, j) - mean[j]) * (key(s, blk, g, t, j) - mean[j]);
                if (r > far) {
                        far = r;
                        spike = t;
                }
        }
        for (uint32_t j = 0; j < d; j++) {
                double m = 0, v = 0;
                uint32_t n = 0;

                for (uint32_t t = 0; t < nt; t++)
                        if (t != spike || nt == 1) {
                                m += key(s, blk, g, t, j);
                                n++;
                        }
                m /= n;
                for (uint32_t t = 0; t < nt; t++)
                        if (t != spike || nt == 1)
                                v += (key(s, blk, g, t, j) - m) * (key(s, blk, g, t, j) - m) / n;
                mu += qh[j] * m;
                sg += (double)qh[j] * qh[j] * v;
                p += qh[j] * key(s, blk, g, spike, j);
        }
        e = log(((T - 1) * exp((mu + sg / (2 * sd)) / sd) + exp(p / sd)) / T);
        return sd * e;
}

/* The per-head logit estimate of method m for query head h (unscaled). */
static double ref_estimate(const struct kvk_shape *s, enum kvk_method m, const uint16_t *blk, uint32_t nt,
                           const float *q, uint32_t h)
{
        uint32_t d = s->head_dim, g = h / (s->q_heads / s->kv_heads), hh = d / 2;
        const float *qh = q + (size_t)h * d;
        double mn[512], mx[512], mean[512], var[512], rmax[256], box = 0, rope = 0, mu = 0, sg = 0;

        for (uint32_t j = 0; j < d; j++) {
                double sum = 0, ss = 0;

                mn[j] = INFINITY;
                mx[j] = -INFINITY;
                for (uint32_t t = 0; t < nt; t++) {
                        double x = key(s, blk, g, t, j);

                        mn[j] = fmin(mn[j], x);
                        mx[j] = fmax(mx[j], x);
                        sum += x;
                }
                mean[j] = sum / nt;
                for (uint32_t t = 0; t < nt; t++)
                        ss += (key(s, blk, g, t, j) - mean[j]) * (key(s, blk, g, t, j) - mean[j]);
                var[j] = ss / nt;
                box += fmax(qh[j] * mn[j], qh[j] * mx[j]);
                mu += qh[j] * mean[j];
                sg += (double)qh[j] * qh[j] * var[j];
        }
        for (uint32_t j = 0; d % 2 == 0 && j < hh; j++) {
                rmax[j] = 0;
                for (uint32_t t = 0; t < nt; t++)
                        rmax[j] = fmax(rmax[j], hypot(key(s, blk, g, t, j), key(s, blk, g, t, j + hh)));
                double pair = fmax(qh[j] * mn[j], qh[j] * mx[j]);

                pair += fmax(qh[j + hh] * mn[j + hh], qh[j + hh] * mx[j + hh]);
                rope += fmin(pair, hypot(qh[j], qh[j + hh]) * rmax[j]);
        }
        switch (m) {
        case KVK_QUEST_HEADS:
                return box;
        case KVK_ROPE_BOUND:
                return rope;
        case KVK_MEAN:
                return mu;
        case KVK_GAUSS:
                return mu + sg / (2 * sqrt(d));
        case KVK_HYBRID:
                return ref_hybrid(s, blk, nt, qh, g);
        default:
                return NAN;
        }
}

/* Estimated masses of method m: per-head softmax over the blocks, averaged. */
static void ref_scores(const struct kvk_shape *s, enum kvk_method m, const uint16_t *blocks, const uint32_t *valid,
                       uint32_t n, const float *q, double *ret)
{
        size_t bb2 = kvk_block_bytes(s) / 2;
        double *e = malloc(sizeof(double) * n);

        for (uint32_t b = 0; b < n; b++)
                ret[b] = 0;
        for (uint32_t h = 0; h < s->q_heads; h++) {
                double top = -INFINITY, z = 0;

                for (uint32_t b = 0; b < n; b++) {
                        e[b] = ref_estimate(s, m, blocks + bb2 * b, valid[b], q, h) / sqrt(s->head_dim);
                        top = fmax(top, e[b]);
                }
                for (uint32_t b = 0; b < n; b++)
                        z += exp(e[b] - top);
                for (uint32_t b = 0; b < n; b++)
                        ret[b] += exp(e[b] - top) / z / s->q_heads;
        }
        free(e);
}

static const struct kvk_shape sel_shapes[] = {
        { 2, 8, 64, 16, KVK_F16 },      /* GQA 4 */
        { 1, 3, 24, 5, KVK_BF16 },      /* head_dim not a multiple of 8, pairs of 12 */
        { 3, 3, 38, 7, KVK_F16 },       /* MHA, pairs of 19 (a masked tail of 3) */
        { 1, 12, 128, 16, KVK_F16 },    /* GQA 12: heads cut in tiles */
};
#define N_SEL_SHAPES (sizeof(sel_shapes) / sizeof(sel_shapes[0]))

/* ---- tests --------------------------------------------------------------- */

START_TEST(names_and_sizes)
{
        struct kvk_shape s = { 2, 4, 64, 16, KVK_F16 }, odd = { 2, 4, 33, 16, KVK_F16 };
        static const uint32_t rows[KVK_N_METHODS] = { 2, 2, 3, 1, 2, 3 };

        for (int m = 0; m < KVK_N_METHODS; m++) {
                ck_assert_ptr_nonnull(kvk_method_name((enum kvk_method)m));
                ck_assert_int_eq(kvk_method_from_name(kvk_method_name((enum kvk_method)m)), m);
                ck_assert_uint_eq(kvk_method_summary_floats(&s, (enum kvk_method)m), rows[m] * 2 * 64);
                ck_assert_uint_eq(kvk_method_work_floats(&s, (enum kvk_method)m, 10),
                                  m == KVK_QUEST ? 0 : m == KVK_HYBRID ? 104 : 52);
                ck_assert_uint_eq(kvk_method_summary_floats(&odd, (enum kvk_method)m),
                                  m == KVK_ROPE_BOUND ? 0 : rows[m] * 2 * 33);
        }
        ck_assert_uint_eq(kvk_method_summary_floats(&s, KVK_QUEST), kvk_summary_floats(&s));
        ck_assert_ptr_null(kvk_method_name(KVK_N_METHODS));
        ck_assert_ptr_null(kvk_method_name((enum kvk_method)-1));
        ck_assert_int_eq(kvk_method_from_name("Quest"), -EINVAL);
        ck_assert_int_eq(kvk_method_from_name(""), -EINVAL);
        ck_assert_int_eq(kvk_method_from_name(NULL), -EINVAL);
        ck_assert_uint_eq(kvk_method_summary_floats(NULL, KVK_GAUSS), 0);
}
END_TEST

/* Every method's masses against the reference, on every shape and back end;
 * QUEST is kvk_block_scores() bit for bit. */
START_TEST(scores_match_reference)
{
        if (!use_backend(_i))
                return;
        for (size_t si = 0; si < N_SEL_SHAPES; si++) {
                const struct kvk_shape *s = &sel_shapes[si];
                const uint32_t n = 23;
                uint16_t *blocks;
                float *q;
                uint32_t valid[23];

                rng_seed(100 + si);
                blocks = rope_blocks(s, n);
                q = rand_query(s);
                for (uint32_t b = 0; b < n; b++)
                        valid[b] = b == n - 1 ? 1 + (uint32_t)(unit() * s->block_tokens) % s->block_tokens
                                              : s->block_tokens;
                for (int mi = 0; mi < KVK_N_METHODS; mi++) {
                        enum kvk_method m = (enum kvk_method)mi;
                        size_t sf = kvk_method_summary_floats(s, m), bb2 = kvk_block_bytes(s) / 2;
                        float *sum, *work, sc[23], qs[23];
                        double ref[23], total = 0, err = 0, norm = 0;

                        if (sf == 0)
                                continue;
                        sum = malloc(sizeof(float) * sf * n);
                        work = malloc(sizeof(float) * (kvk_method_work_floats(s, m, n) + 1));
                        for (uint32_t b = 0; b < n; b++)
                                ck_assert_int_eq(kvk_method_summary(s, m, blocks + bb2 * b, valid[b], sum + sf * b), 0);
                        ck_assert_int_eq(kvk_method_scores(s, m, q, sum, n, work, sc), 0);
                        if (m == KVK_QUEST) {
                                ck_assert_int_eq(kvk_block_scores(s, q, sum, n, qs), 0);
                                ck_assert_mem_eq(sc, qs, sizeof(sc));
                        } else {
                                ref_scores(s, m, blocks, valid, n, q, ref);
                                for (uint32_t b = 0; b < n; b++) {
                                        EXPECT_MSG(sc[b] >= 0 && sc[b] <= 1, "%s: score %g", kvk_method_name(m),
                                                   sc[b]);
                                        total += sc[b];
                                        err += (sc[b] - ref[b]) * (sc[b] - ref[b]);
                                        norm += ref[b] * ref[b];
                                }
                                EXPECT_MSG(fabs(total - 1) < 1e-5, "%s: masses sum to %.9f", kvk_method_name(m),
                                           total);
                                EXPECT_MSG(sqrt(err / norm) < 2e-4, "%s on shape %zu (%s): rel err %g",
                                           kvk_method_name(m), si, backends[_i], sqrt(err / norm));
                        }
                        free(sum);
                        free(work);
                }
                free(blocks);
                free(q);
        }
}
END_TEST

/* The two bounds bound every valid token's logit, per head; RoPE's is no
 * looser than Quest's, and tighter on rotating pairs. */
START_TEST(bounds_hold_per_head)
{
        const struct kvk_shape s = { 2, 8, 64, 16, KVK_F16 };
        const uint32_t n = 40;
        size_t bb2 = kvk_block_bytes(&s) / 2;
        uint16_t *blocks;
        float *q;
        double tighter = 0;

        if (!use_backend(_i))
                return;
        rng_seed(7);
        blocks = rope_blocks(&s, n);
        q = rand_query(&s);
        for (uint32_t b = 0; b < n; b++) {
                float sq[2 * 2 * 64], sr[3 * 2 * 64];

                ck_assert_int_eq(kvk_method_summary(&s, KVK_QUEST_HEADS, blocks + bb2 * b, 16, sq), 0);
                ck_assert_int_eq(kvk_method_summary(&s, KVK_ROPE_BOUND, blocks + bb2 * b, 16, sr), 0);
                for (uint32_t h = 0; h < s.q_heads; h++) {
                        double best = -INFINITY, bq = ref_estimate(&s, KVK_QUEST_HEADS, blocks + bb2 * b, 16, q, h);
                        double br = ref_estimate(&s, KVK_ROPE_BOUND, blocks + bb2 * b, 16, q, h);

                        for (uint32_t t = 0; t < 16; t++) {
                                double dot = 0;

                                for (uint32_t j = 0; j < 64; j++)
                                        dot += q[h * 64 + j] * key(&s, blocks + bb2 * b, h / 4, t, j);
                                best = fmax(best, dot);
                        }
                        EXPECT_MSG(br >= best - 1e-3 && bq >= best - 1e-3, "bound below a logit: %g %g < %g", br,
                                   bq, best);
                        EXPECT_MSG(br <= bq + 1e-3, "rope bound %g looser than the box's %g", br, bq);
                        tighter += bq - br;
                }
        }
        EXPECT_MSG(tighter / (n * s.q_heads) > 1.0, "rope bound only %g tighter on average",
                   tighter / (n * s.q_heads));
        free(blocks);
        free(q);
}
END_TEST

START_TEST(bad_arguments)
{
        struct kvk_shape s = { 2, 4, 16, 4, KVK_F16 }, bad = s;
        uint16_t block[2 * 2 * 4 * 16] = { 0 };
        float sum[2 * 2 * 2 * 16], q[4 * 16] = { 0 }, work[(2 + 3) * 4], out[2] = { 42, 42 };

        bad.q_heads = 3;
        ck_assert_int_eq(kvk_method_summary(&s, KVK_N_METHODS, block, 4, sum), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&bad, KVK_GAUSS, block, 4, sum), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&s, KVK_GAUSS, NULL, 4, sum), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&s, KVK_GAUSS, block, 0, sum), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&s, KVK_GAUSS, block, 5, sum), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&s, KVK_GAUSS, block, 4, NULL), -EINVAL);
        ck_assert_int_eq(kvk_method_summary(&s, KVK_GAUSS, block, 4, sum), 0);
        ck_assert_uint_eq(kvk_method_work_floats(&s, KVK_GAUSS, 2), sizeof(work) / sizeof(work[0]));
        memcpy(sum + 2 * 2 * 16, sum, sizeof(float) * 2 * 2 * 16);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_GAUSS, q, sum, 2, NULL, out), -EINVAL);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_N_METHODS, q, sum, 2, work, out), -EINVAL);
        ck_assert_int_eq(kvk_method_scores(&bad, KVK_GAUSS, q, sum, 2, work, out), -EINVAL);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_GAUSS, NULL, sum, 2, work, out), -EINVAL);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_GAUSS, q, NULL, 2, work, out), -EINVAL);
        ck_assert(out[0] == 42 && out[1] == 42);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_GAUSS, q, sum, 0, NULL, out), 0);
        ck_assert(out[0] == 42 && out[1] == 42);
        ck_assert_int_eq(kvk_method_scores(&s, KVK_QUEST, q, sum, 2, NULL, out), 0);     /* no work needed */
        ck_assert_int_eq(kvk_method_scores(&s, KVK_GAUSS, q, sum, 2, work, out), 0);
        ck_assert(fabsf(out[0] - 0.5f) < 1e-6f && fabsf(out[1] - 0.5f) < 1e-6f);       /* equal blocks */
}
END_TEST

/* The dynamic budget against a brute-force reference on random masses. */
START_TEST(select_mass_matches_reference)
{
        rng_seed(11);
        for (int iter = 0; iter < 3000; iter++) {
                uint32_t n = 1 + (uint32_t)(unit() * 60), sink = (uint32_t)(unit() * 4), local = (uint32_t)(unit() * 4);
                uint32_t kmax = 1 + (uint32_t)(unit() * (n + 3)), kmin = (uint32_t)(unit() * 5), idx[64], cnt;
                float mass[64], target = (float)(unit() * 1.1);
                bool chosen[64] = { false }, forced[64] = { false };
                uint32_t k = kmax < n ? kmax : n, fs = sink < k ? sink : k, fl = local < k - fs ? local : k - fs;
                double sum = 0, z = 0, best_out = -INFINITY, worst_in = INFINITY;
                uint32_t scored = 0;

                for (uint32_t i = 0; i < n; i++) {
                        mass[i] = unit() < 0.2 ? (float)(unit() < 0.5 ? 0.25 : 0.0) : (float)(unit() * unit());
                        if (unit() < 0.03)
                                mass[i] = NAN;
                        z += isnan(mass[i]) ? 0 : mass[i];
                }
                for (uint32_t i = 0; i < n && z > 0; i++)
                        mass[i] = (float)(mass[i] / z);
                cnt = kvk_select_mass(mass, n, target, kmin, kmax, sink, local, idx);
                ck_assert_uint_le(cnt, k);
                for (uint32_t i = 0; i < cnt; i++) {
                        ck_assert_uint_lt(idx[i], n);
                        if (i)
                                ck_assert_uint_lt(idx[i - 1], idx[i]);
                        chosen[idx[i]] = true;
                }
                for (uint32_t i = 0; i < fs; i++)
                        forced[i] = true;
                for (uint32_t i = n - fl; i < n; i++)
                        forced[i] = true;
                for (uint32_t i = 0; i < n; i++) {
                        float mi = isnan(mass[i]) ? -INFINITY : mass[i];

                        EXPECT_MSG(!forced[i] || chosen[i], "forced block %u left out", i);
                        if (chosen[i])
                                sum += mi > 0 ? mi : 0;
                        if (forced[i])
                                continue;
                        if (chosen[i]) {
                                scored++;
                                worst_in = fmin(worst_in, mi);
                        } else {
                                best_out = fmax(best_out, mi);
                        }
                }
                /* The best blocks were taken, and no more than needed. */
                EXPECT_MSG(scored == 0 || best_out <= worst_in, "a better block was left out");
                if (cnt < k)
                        EXPECT_MSG(sum >= target - 1e-6 && cnt >= kmin, "stopped early: %g < %g", sum, target);
                if (scored > 0 && cnt > kmin) {
                        double without = sum - (worst_in > 0 ? worst_in : 0);

                        EXPECT_MSG(without < target || worst_in <= 0, "one block too many: %g >= %g", without, target);
                }
        }
        ck_assert_uint_eq(kvk_select_mass(NULL, 4, 0.5f, 0, 4, 0, 0, (uint32_t[4]){ 0 }), 0);
        ck_assert_uint_eq(kvk_select_mass((float[1]){ 1 }, 1, 0.5f, 0, 4, 0, 0, NULL), 0);
        ck_assert_uint_eq(kvk_select_mass((float[1]){ 1 }, 0, 0.5f, 0, 4, 0, 0, (uint32_t[4]){ 0 }), 0);
}
END_TEST

/* A dynamic budget takes few blocks where attention is concentrated and
 * many where it is flat. */
START_TEST(select_mass_adapts)
{
        float peaked[100], flat[100];
        uint32_t idx[100];

        for (int i = 0; i < 100; i++) {
                peaked[i] = i == 37 ? 0.9f : 0.1f / 99;
                flat[i] = 0.01f;
        }
        ck_assert_uint_eq(kvk_select_mass(peaked, 100, 0.9f, 1, 100, 0, 0, idx), 1);
        ck_assert_uint_eq(idx[0], 37);
        ck_assert_uint_eq(kvk_select_mass(peaked, 100, 0.9f, 3, 100, 1, 1, idx), 3);    /* sink, 37, local */
        ck_assert(idx[0] == 0 && idx[1] == 37 && idx[2] == 99);
        ck_assert_uint_eq(kvk_select_mass(flat, 100, 0.495f, 1, 100, 0, 0, idx), 50);
        ck_assert_uint_eq(kvk_select_mass(flat, 100, 0.495f, 1, 20, 0, 0, idx), 20);       /* k_max caps it */
}
END_TEST

static Suite *select_suite(void)
{
        Suite *s = suite_create("kernels-select");
        TCase *tc = tcase_create("methods");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, names_and_sizes);
        tcase_add_loop_test(tc, scores_match_reference, 0, N_BACKENDS);
        tcase_add_loop_test(tc, bounds_hold_per_head, 0, N_BACKENDS);
        tcase_add_test(tc, bad_arguments);
        suite_add_tcase(s, tc);
        tc = tcase_create("dynamic");
        tcase_add_test(tc, select_mass_matches_reference);
        tcase_add_test(tc, select_mass_adapts);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(select_suite)

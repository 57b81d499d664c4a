/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench select: selection methods against the oracle on one trace
 * (select.h says what is measured). kvb_select_run() is the core, used by
 * `kvdrive-bench selection` too; bench_select() parses and prints.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "metrics.h"
#include "select.h"
#include "trace.h"

struct kvb_sel_opts kvb_sel_opts_default(void)
{
        struct kvb_sel_opts o = {
                .block_tokens = 16,
                .sink = 1,
                .local = 2,
                .samples = 8,
                .methods = (1u << KVK_N_METHODS) - 1,
                .n_budgets = 8,
                .budgets = { 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5 },
                .n_targets = 4,
                .targets = { 0.8, 0.9, 0.95, 0.98 },
        };
        return o;
}

/* Everything one run allocates. */
struct sel {
        const struct kvb_trace *tr;
        const struct kvb_sel_opts *o;
        struct kvk_shape shape;
        uint32_t T, max_blocks, prompt;
        size_t qd, bb;
        uint8_t *blocks;                /* one layer, block layout */
        float *summ[KVK_N_METHODS];     /* one layer's summaries of full blocks */
        const void **ptrs;
        uint32_t *valid, *sel, *sel2;
        float *q, *mass, *mass2, *scores, *work, *out, *ref, *part, *plse;
        double *acc, *acc_lse;
        double *us[KVK_N_METHODS];
        uint64_t n_us;
};

static void sel_free(struct sel *x)
{
        free(x->blocks);
        for (int m = 0; m < KVK_N_METHODS; m++) {
                free(x->summ[m]);
                free(x->us[m]);
        }
        free(x->ptrs);
        free(x->valid);
        free(x->sel);
        free(x->sel2);
        free(x->q);
        free(x->mass);
        free(x->mass2);
        free(x->scores);
        free(x->work);
        free(x->out);
        free(x->ref);
        free(x->part);
        free(x->plse);
        free(x->acc);
        free(x->acc_lse);
}

static uint32_t k_for(double budget, uint32_t n)
{
        uint32_t k = (uint32_t)ceil(budget * n - 1e-9);

        return k < 1 ? 1 : k > n ? n : k;
}

/* Block b of layer l, tokens [b T, min((b + 1) T, tokens)). */
static void build_layer(struct sel *x, uint32_t l)
{
        const struct kvb_trace_meta *m = &x->tr->meta;

        for (uint32_t b = 0; b < x->max_blocks; b++) {
                uint16_t *k = (uint16_t *)(x->blocks + (size_t)b * x->bb);
                uint16_t *v = k + (size_t)m->kv_heads * x->T * m->head_dim;
                uint32_t from = b * x->T, to = from + x->T < m->tokens ? from + x->T : m->tokens;

                for (uint32_t h = 0; h < m->kv_heads; h++) {
                        size_t d = (size_t)h * x->T * m->head_dim, s = kvb_kv_index(m, l, h, from);

                        memcpy(k + d, x->tr->k + s, (size_t)(to - from) * m->head_dim * 2);
                        memcpy(v + d, x->tr->v + s, (size_t)(to - from) * m->head_dim * 2);
                }
        }
}

static void load_q(struct sel *x, uint32_t step, uint32_t l)
{
        const uint16_t *src = x->tr->q + kvb_q_index(&x->tr->meta, step, l, 0);

        for (size_t i = 0; i < x->qd; i++)
                x->q[i] = kvk_f16_to_f32(src[i]);
}

/* Visible blocks at step t: n stored (full) blocks and the tail, pointers
 * and valid counts set; returns n. */
static uint32_t visible(struct sel *x, uint32_t t)
{
        uint32_t pos = x->prompt + t, n = pos / x->T;

        for (uint32_t b = 0; b <= n; b++) {
                x->ptrs[b] = x->blocks + (size_t)b * x->bb;
                x->valid[b] = b < n ? x->T : pos % x->T + 1;
        }
        return n;
}

static void add(struct kvb_sel_stat *s, double recall, double err, double topk, double frac)
{
        if (s->n == 0 || recall < s->recall_min)
                s->recall_min = recall;
        if (s->n == 0 || !(err <= s->err_max))
                s->err_max = err;
        s->recall += recall;
        s->err += err;
        s->topk += topk;
        s->frac += frac;
        s->n++;
}

/* Scores sel[0, nsel) plus the tail n: recall, error, top-k recall (k). */
static int judge(struct sel *x, uint32_t n, uint32_t nsel, uint32_t k, struct kvb_sel_stat *st)
{
        double recall, err, topk = 0;
        int r;

        if (k > 0) {
                topk = kvb_topk_recall(x->mass, n, x->sel, nsel, k);
                if (topk < 0)
                        return (int)topk;
        }
        for (uint32_t i = 0; i < nsel; i++) {
                x->sel2[i] = x->sel[i];
                x->ptrs[n + 1 + i] = x->ptrs[x->sel[i]];
                x->valid[n + 1 + i] = x->valid[x->sel[i]];
        }
        x->sel2[nsel] = n;
        x->ptrs[n + 1 + nsel] = x->ptrs[n];
        x->valid[n + 1 + nsel] = x->valid[n];
        recall = kvb_mass_recall(x->mass, n + 1, x->sel2, nsel + 1);
        if (recall < 0)
                return (int)recall;
        r = kvk_decode_attention(&x->shape, x->q, x->ptrs + n + 1, x->valid + n + 1, nsel + 1, x->out, NULL);
        if (r < 0)
                return r;
        err = kvb_rel_l2_error(x->out, x->ref, x->qd);
        add(st, recall, err, topk, (double)nsel / n);
        return 0;
}

/* The best 10% of n + 1 blocks by true mass (nothing forced) into sel; count. */
static uint32_t best10(const float *mass, uint32_t n1, uint32_t *sel)
{
        return kvk_topk(mass, n1, k_for(0.1, n1), 0, 0, sel);
}

static int sample(struct sel *x, struct kvb_sel_result *r, uint32_t t, uint32_t l, char *err, size_t errlen)
{
        const struct kvb_sel_opts *o = x->o;
        uint32_t n = visible(x, t), c10, keep = 0;
        int rc;

        if (n == 0)
                return 0;
        load_q(x, t, l);
        rc = kvk_block_attention_mass(&x->shape, x->q, x->ptrs, x->valid, n + 1, x->mass);
        if (rc == 0)
                rc = kvb_reference_attention(&x->shape, x->q, x->ptrs, x->valid, n + 1, x->part, x->plse, x->acc,
                                             x->acc_lse, x->ref);
        if (rc < 0)
                return kvb_fail(err, errlen, rc, "reference attention at step %" PRIu32 ", layer %" PRIu32, t, l);

        /* Concentration; stability against step t + 1 (the same blocks, and
         * maybe one more). */
        c10 = best10(x->mass, n + 1, x->sel);
        for (uint32_t i = 0; i < c10; i++)
                r->concentration += x->mass[x->sel[i]];
        {       /* the caller samples t + 1 < steps */
                uint32_t n2 = visible(x, t + 1), c2;
                float *q = x->q;

                x->q = x->mass2 + n2 + 1;       /* the next query, beside its masses */
                load_q(x, t + 1, l);
                rc = kvk_block_attention_mass(&x->shape, x->q, x->ptrs, x->valid, n2 + 1, x->mass2);
                x->q = q;
                if (rc < 0)
                        return kvb_fail(err, errlen, rc, "attention mass at step %" PRIu32, t + 1);
                c2 = best10(x->mass2, n2 + 1, x->sel2);
                for (uint32_t i = 0, j = 0; i < c10 && j < c2;) {
                        if (x->sel[i] == x->sel2[j]) {
                                keep++;
                                i++;
                                j++;
                        } else if (x->sel[i] < x->sel2[j]) {
                                i++;
                        } else {
                                j++;
                        }
                }
                r->stability += (double)keep / c10;
                visible(x, t);
        }

        for (uint32_t bi = 0; bi < o->n_budgets; bi++) {
                uint32_t k = k_for(o->budgets[bi], n), nsel = kvk_topk(x->mass, n, k, o->sink, o->local, x->sel);

                rc = judge(x, n, nsel, k, &r->oracle[bi]);
                if (rc < 0)
                        return kvb_fail(err, errlen, rc, "judging the oracle");
        }
        for (uint32_t ti = 0; ti < o->n_targets; ti++) {
                /* The tail's true mass counts: it is always attended. */
                uint32_t nsel = kvk_select_mass(x->mass, n, (float)o->targets[ti] - x->mass[n], 1, n, o->sink,
                                                o->local, x->sel);

                rc = judge(x, n, nsel, 0, &r->oracle_dynamic[ti]);
                if (rc < 0)
                        return kvb_fail(err, errlen, rc, "judging the oracle");
        }
        for (int m = 0; m < KVK_N_METHODS; m++) {
                uint64_t t0;

                if (!(o->methods & (1u << m)))
                        continue;
                t0 = bench_now_ns();
                rc = kvk_method_scores(&x->shape, (enum kvk_method)m, x->q, x->summ[m], n, x->work, x->scores);
                x->us[m][x->n_us] = (double)(bench_now_ns() - t0) / 1e3;
                if (rc < 0)
                        return kvb_fail(err, errlen, rc, "scores of %s", kvk_method_name((enum kvk_method)m));
                for (uint32_t bi = 0; bi < o->n_budgets; bi++) {
                        uint32_t k = k_for(o->budgets[bi], n), nsel = kvk_topk(x->scores, n, k, o->sink, o->local,
                                                                               x->sel);

                        rc = judge(x, n, nsel, k, &r->fixed[m][bi]);
                        if (rc < 0)
                                return kvb_fail(err, errlen, rc, "judging %s", kvk_method_name((enum kvk_method)m));
                }
                if (m == KVK_QUEST)     /* bounds, not masses: no dynamic budget */
                        continue;
                for (uint32_t ti = 0; ti < o->n_targets; ti++) {
                        uint32_t nsel = kvk_select_mass(x->scores, n, (float)o->targets[ti], 1, n, o->sink, o->local,
                                                        x->sel);

                        rc = judge(x, n, nsel, 0, &r->dynamic[m][ti]);
                        if (rc < 0)
                                return kvb_fail(err, errlen, rc, "judging %s", kvk_method_name((enum kvk_method)m));
                }
        }
        x->n_us++;
        r->samples++;
        r->blocks = n;
        return 0;
}

static int alloc_all(struct sel *x, uint64_t max_samples)
{
        size_t mb = x->max_blocks, q = x->qd;

        x->blocks = malloc(x->bb * mb);
        x->ptrs = malloc(sizeof(*x->ptrs) * (2 * mb + 2));
        x->valid = malloc(sizeof(uint32_t) * (2 * mb + 2));
        x->sel = malloc(sizeof(uint32_t) * (mb + 1));
        x->sel2 = malloc(sizeof(uint32_t) * (mb + 1));
        x->q = malloc(sizeof(float) * q);
        x->mass = malloc(sizeof(float) * (mb + 1));
        x->mass2 = malloc(sizeof(float) * (mb + 1 + q));
        x->scores = malloc(sizeof(float) * mb);
        x->work = malloc(sizeof(float) * kvk_method_work_floats(&x->shape, KVK_HYBRID, x->max_blocks));
        x->out = malloc(sizeof(float) * q);
        x->ref = malloc(sizeof(float) * q);
        x->part = malloc(sizeof(float) * q);
        x->plse = malloc(sizeof(float) * x->shape.q_heads);
        x->acc = malloc(sizeof(double) * q);
        x->acc_lse = malloc(sizeof(double) * x->shape.q_heads);
        if (!x->blocks || !x->ptrs || !x->valid || !x->sel || !x->sel2 || !x->q || !x->mass || !x->mass2 ||
            !x->scores || !x->work || !x->out || !x->ref || !x->part || !x->plse || !x->acc || !x->acc_lse)
                return -ENOMEM;
        for (int m = 0; m < KVK_N_METHODS; m++) {
                if (!(x->o->methods & (1u << m)))
                        continue;
                x->summ[m] = malloc(sizeof(float) * kvk_method_summary_floats(&x->shape, (enum kvk_method)m) * mb);
                x->us[m] = malloc(sizeof(double) * max_samples);
                if (!x->summ[m] || !x->us[m])
                        return -ENOMEM;
        }
        return 0;
}

static void finish(struct kvb_sel_stat *s)
{
        if (s->n == 0) {
                *s = (struct kvb_sel_stat){ NAN, NAN, NAN, NAN, NAN, NAN, 0 };
                return;
        }
        s->recall /= (double)s->n;
        s->err /= (double)s->n;
        s->topk /= (double)s->n;
        s->frac /= (double)s->n;
}

int kvb_select_run(const struct kvb_trace *tr, const struct kvb_sel_opts *o, struct kvb_sel_result *r, char *err,
                   size_t errlen)
{
        const struct kvb_trace_meta *m = &tr->meta;
        struct sel x = { .tr = tr, .o = o };
        uint32_t steps[KVB_SEL_MAX_POINTS * 8], n_steps = 0, last = m->steps >= 2 ? m->steps - 2 : 0;
        int rc;

        memset(r, 0, sizeof(*r));
        if (o->block_tokens == 0 || o->samples == 0 || o->samples > KVB_SEL_MAX_POINTS * 8 || !o->methods ||
            o->methods >> KVK_N_METHODS || o->n_budgets == 0 || o->n_budgets > KVB_SEL_MAX_POINTS ||
            o->n_targets > KVB_SEL_MAX_POINTS)
                return kvb_fail(err, errlen, -EINVAL, "bad selection options");
        if (m->steps < 2)
                return kvb_fail(err, errlen, -EINVAL, "the trace has %" PRIu32 " decode step; at least 2 are needed "
                                "(stability compares a step with the next)", m->steps);
        x.shape = (struct kvk_shape){ m->kv_heads, m->q_heads, m->head_dim, o->block_tokens, KVK_F16 };
        if (!kvk_shape_valid(&x.shape))
                return kvb_fail(err, errlen, -EINVAL, "the trace's geometry is outside the kernels' limits");
        for (int k = 0; k < KVK_N_METHODS; k++)
                if ((o->methods & (1u << k)) && kvk_method_summary_floats(&x.shape, (enum kvk_method)k) == 0)
                        return kvb_fail(err, errlen, -EINVAL, "method %s needs an even head_dim (RoPE pairs); the "
                                        "trace's is %" PRIu32, kvk_method_name((enum kvk_method)k), m->head_dim);
        x.T = o->block_tokens;
        x.prompt = m->tokens - m->steps;
        x.max_blocks = (m->tokens + x.T - 1) / x.T;
        x.qd = (size_t)m->q_heads * m->head_dim;
        x.bb = kvk_block_bytes(&x.shape);
        /* Steps spread over [0, steps - 2], so that each has a next one. */
        for (uint32_t i = 0; i < o->samples && i <= last; i++) {
                uint32_t t = o->samples == 1 ? last : (uint32_t)((uint64_t)i * last / (o->samples - 1));

                if (n_steps == 0 || t != steps[n_steps - 1])
                        steps[n_steps++] = t;
        }
        rc = alloc_all(&x, (uint64_t)n_steps * m->layers);
        if (rc < 0) {
                kvb_fail(err, errlen, rc, "out of memory for %" PRIu32 " blocks", x.max_blocks);
                goto out;
        }
        for (uint32_t l = 0; l < m->layers; l++) {
                build_layer(&x, l);
                for (int k = 0; k < KVK_N_METHODS; k++) {
                        size_t sf = kvk_method_summary_floats(&x.shape, (enum kvk_method)k);

                        if (!x.summ[k])
                                continue;
                        for (uint32_t b = 0; b < x.max_blocks && (b + 1) * x.T <= m->tokens; b++)
                                kvk_method_summary(&x.shape, (enum kvk_method)k, x.blocks + (size_t)b * x.bb, x.T,
                                                   x.summ[k] + sf * b);
                }
                for (uint32_t i = 0; i < n_steps; i++) {
                        rc = sample(&x, r, steps[i], l, err, errlen);
                        if (rc < 0)
                                goto out;
                }
        }
        if (r->samples == 0) {
                rc = kvb_fail(err, errlen, -EINVAL, "no step has a stored block at %" PRIu32 " tokens per block",
                              x.T);
                goto out;
        }
        r->concentration /= (double)r->samples;
        r->stability /= (double)r->samples;
        for (uint32_t i = 0; i < o->n_budgets; i++)
                finish(&r->oracle[i]);
        for (uint32_t i = 0; i < o->n_targets; i++)
                finish(&r->oracle_dynamic[i]);
        for (int k = 0; k < KVK_N_METHODS; k++) {
                for (uint32_t i = 0; i < KVB_SEL_MAX_POINTS; i++) {
                        finish(&r->fixed[k][i]);
                        finish(&r->dynamic[k][i]);
                }
                r->summary_bytes[k] = (double)kvk_method_summary_floats(&x.shape, (enum kvk_method)k) * sizeof(float);
                r->score_us[k] = x.us[k] ? kvb_percentile(x.us[k], x.n_us, 50) : NAN;
        }
        r->block_bytes = (double)x.bb;
        rc = 0;
out:
        sel_free(&x);
        return rc;
}

int kvb_sel_parse_points(const char *s, double *v, bool ascending)
{
        int n = 0;

        while (s && *s) {
                char *end;
                double x;

                errno = 0;
                x = strtod(s, &end);
                if (errno || end == s || !(x > 0 && x <= 1) || n == (int)KVB_SEL_MAX_POINTS ||
                    (ascending && n > 0 && x <= v[n - 1]))
                        return -EINVAL;
                v[n++] = x;
                if (*end == ',')
                        end++;
                else if (*end)
                        return -EINVAL;
                s = end;
        }
        return n > 0 ? n : -EINVAL;
}

int kvb_sel_parse_methods(const char *s, uint32_t *ret_mask)
{
        char buf[256], *save = NULL;
        uint32_t mask = 0;

        if (strcmp(s, "all") == 0) {
                *ret_mask = (1u << KVK_N_METHODS) - 1;
                return 0;
        }
        if (strlen(s) >= sizeof(buf))
                return -EINVAL;
        strcpy(buf, s);
        for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int m = kvk_method_from_name(tok);

                if (m < 0)
                        return -EINVAL;
                mask |= 1u << m;
        }
        if (!mask)
                return -EINVAL;
        *ret_mask = mask;
        return 0;
}

double kvb_sel_budget_needed(const struct kvb_sel_opts *o, const struct kvb_sel_result *r, enum kvk_method m,
                             double recall, double err)
{
        for (uint32_t i = 0; i < o->n_budgets; i++)
                if (r->fixed[m][i].n && r->fixed[m][i].recall >= recall && r->fixed[m][i].err <= err)
                        return o->budgets[i];
        return NAN;
}

/* ---- the command ------------------------------------------------------------ */

static json_t *jnum(double v)
{
        return isfinite(v) ? json_real(v) : json_null();        /* jansson refuses NaN: a missing figure is null */
}

static json_t *stat_json(const struct kvb_sel_stat *s)
{
        json_t *j = json_object();

        json_object_set_new(j, "mass_recall", jnum(s->recall));
        json_object_set_new(j, "mass_recall_min", jnum(s->recall_min));
        json_object_set_new(j, "rel_l2_error", jnum(s->err));
        json_object_set_new(j, "rel_l2_error_max", jnum(s->err_max));
        json_object_set_new(j, "topk_recall", jnum(s->topk));
        json_object_set_new(j, "blocks_fraction", jnum(s->frac));
        return j;
}

json_t *kvb_sel_json(const struct kvb_sel_opts *o, const struct kvb_sel_result *r)
{
        json_t *root = json_object(), *oracle = json_array(), *methods = json_object();

        json_object_set_new(root, "samples", json_integer((json_int_t)r->samples));
        json_object_set_new(root, "blocks", json_integer(r->blocks));
        json_object_set_new(root, "block_bytes", json_integer((json_int_t)r->block_bytes));
        json_object_set_new(root, "concentration_top10", jnum(r->concentration));
        json_object_set_new(root, "stability_top10", jnum(r->stability));
        for (uint32_t i = 0; i < o->n_budgets; i++) {
                json_t *p = stat_json(&r->oracle[i]);

                json_object_set_new(p, "budget", json_real(o->budgets[i]));
                json_array_append_new(oracle, p);
        }
        json_object_set_new(root, "oracle", oracle);
        oracle = json_array();
        for (uint32_t i = 0; i < o->n_targets; i++) {
                json_t *p = stat_json(&r->oracle_dynamic[i]);

                json_object_set_new(p, "target", json_real(o->targets[i]));
                json_array_append_new(oracle, p);
        }
        json_object_set_new(root, "oracle_dynamic", oracle);
        for (int m = 0; m < KVK_N_METHODS; m++) {
                json_t *mj, *fixed = json_array(), *dyn = json_array();

                if (!(o->methods & (1u << m)))
                        continue;
                for (uint32_t i = 0; i < o->n_budgets; i++) {
                        json_t *p = stat_json(&r->fixed[m][i]);

                        json_object_set_new(p, "budget", json_real(o->budgets[i]));
                        json_array_append_new(fixed, p);
                }
                for (uint32_t i = 0; m != KVK_QUEST && i < o->n_targets; i++) {
                        json_t *p = stat_json(&r->dynamic[m][i]);

                        json_object_set_new(p, "target", json_real(o->targets[i]));
                        json_array_append_new(dyn, p);
                }
                mj = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "fixed", fixed, "dynamic", dyn, "score_us",
                               jnum(r->score_us[m]), "summary_bytes_per_block", jnum(r->summary_bytes[m]),
                               "budget_for_recall95_err02",
                               jnum(kvb_sel_budget_needed(o, r, (enum kvk_method)m, 0.95, 0.02)),
                               "budget_for_recall95", jnum(kvb_sel_budget_needed(o, r, (enum kvk_method)m, 0.95, 1e9)));
                json_object_set_new(methods, kvk_method_name((enum kvk_method)m), mj);
        }
        json_object_set_new(root, "methods", methods);
        return root;
}

static void usage(FILE *f)
{
        struct kvb_sel_opts d = kvb_sel_opts_default();

        fprintf(f, "Usage: kvdrive-bench select --trace DIR [options]\n\n"
                   "Block selection methods against the best possible selection of the same size, on\n"
                   "one trace, with no daemon: mass recall, relative L2 error of the output, top-k\n"
                   "recall, blocks taken and scoring time, per method and budget, and the dynamic\n"
                   "budget per estimated-mass target (docs/bench/decode/README.md).\n\n"
                   "  --trace DIR          the trace (docs/trace-format.md; required)\n"
                   "  --methods LIST       all, or some of quest,quest-heads,rope-bound,mean,gauss,hybrid\n"
                   "  --budgets LIST       fixed budgets, ascending (default 0.02,0.05,0.1,...,0.5)\n"
                   "  --targets LIST       dynamic budget targets (default 0.8,0.9,0.95,0.98)\n"
                   "  --block-tokens N     tokens per block (default %" PRIu32 ")\n"
                   "  --sink N             forced first blocks (default %" PRIu32 ")\n"
                   "  --local N            forced last blocks (default %" PRIu32 ")\n"
                   "  --samples N          decode steps sampled, every layer each (default %" PRIu32 ")\n"
                   "  --json               one JSON object instead of the table\n"
                   "  --help               this text\n",
                d.block_tokens, d.sink, d.local, d.samples);
}

void kvb_sel_print(FILE *f, const char *name, const struct kvb_sel_opts *o, const struct kvb_sel_result *r)
{
        fprintf(f, "select: %s: %" PRIu64 " samples, %" PRIu32 " blocks per layer at the last; concentration "
                   "(top 10%% mass) %.3f, stability %.3f\n", name, r->samples, r->blocks, r->concentration,
                r->stability);
        fprintf(f, "%-12s %7s %8s %8s %8s %8s %8s %8s %9s\n", "method", "budget", "recall", "oracle", "min",
                "l2err", "l2max", "topk", "score_us");
        for (uint32_t i = 0; i < o->n_targets; i++) {
                const struct kvb_sel_stat *s = &r->oracle_dynamic[i];

                fprintf(f, "%-12s  t=%.2f %8.4f %8s %8.4f %8.4f %8.4f  blocks %.3f\n", "oracle", o->targets[i],
                        s->recall, "", s->recall_min, s->err, s->err_max, s->frac);
        }
        for (int m = 0; m < KVK_N_METHODS; m++) {
                if (!(o->methods & (1u << m)))
                        continue;
                for (uint32_t i = 0; i < o->n_budgets; i++) {
                        const struct kvb_sel_stat *s = &r->fixed[m][i];

                        fprintf(f, "%-12s %7.3f %8.4f %8.4f %8.4f %8.4f %8.4f %8.3f %9.1f\n",
                                kvk_method_name((enum kvk_method)m), o->budgets[i], s->recall, r->oracle[i].recall,
                                s->recall_min, s->err, s->err_max, s->topk, r->score_us[m]);
                }
                for (uint32_t i = 0; m != KVK_QUEST && i < o->n_targets; i++) {
                        const struct kvb_sel_stat *s = &r->dynamic[m][i];

                        fprintf(f, "%-12s  t=%.2f %8.4f %8s %8.4f %8.4f %8.4f  blocks %.3f\n",
                                kvk_method_name((enum kvk_method)m), o->targets[i], s->recall, "", s->recall_min,
                                s->err, s->err_max, s->frac);
                }
        }
}

/* The options select and selection share, in the order of enum sel_opt. */
static const char *const sel_names[] = { "methods", "budgets", "targets", "block-tokens", "sink", "local", "samples" };
#define N_SEL_OPTS (sizeof(sel_names) / sizeof(sel_names[0]))

size_t kvb_sel_longopts(struct option *lo)
{
        for (size_t i = 0; i < N_SEL_OPTS; i++)
                lo[i] = (struct option){ sel_names[i], required_argument, NULL, KVB_SEL_OPT0 + (int)i };
        return N_SEL_OPTS;
}

int kvb_sel_parse_option(const char *cmd, int c, const char *arg, struct kvb_sel_opts *o)
{
        uint32_t *u[] = { NULL, NULL, NULL, &o->block_tokens, &o->sink, &o->local, &o->samples };
        static const uint64_t lo[] = { 0, 0, 0, 1, 0, 0, 1 };
        static const uint64_t hi[] = { 0, 0, 0, KVK_MAX_BLOCK_TOKENS, 1u << 20, 1u << 20, KVB_SEL_MAX_POINTS * 8 };
        int i = c - KVB_SEL_OPT0, n;
        uint64_t v;

        if (i < 0 || i >= (int)N_SEL_OPTS)
                return 0;
        if (i == 0) {
                if (kvb_sel_parse_methods(arg, &o->methods) == 0)
                        return 1;
                fprintf(stderr, "kvdrive-bench %s: bad --methods '%s': expected all or a list of quest,quest-heads,"
                                "rope-bound,mean,gauss,hybrid\n", cmd, arg);
                return -EINVAL;
        }
        if (i <= 2) {
                n = kvb_sel_parse_points(arg, i == 1 ? o->budgets : o->targets, i == 1);
                if (n > 0) {
                        *(i == 1 ? &o->n_budgets : &o->n_targets) = (uint32_t)n;
                        return 1;
                }
                fprintf(stderr, "kvdrive-bench %s: bad --%s '%s': expected up to %u numbers in (0, 1]%s, "
                                "comma-separated\n", cmd, sel_names[i], arg, KVB_SEL_MAX_POINTS,
                        i == 1 ? ", ascending" : "");
                return -EINVAL;
        }
        if (bench_parse_uint(arg, lo[i], hi[i], &v) < 0) {
                fprintf(stderr, "kvdrive-bench %s: bad --%s '%s': an integer in [%" PRIu64 ", %" PRIu64 "]\n", cmd,
                        sel_names[i], arg, lo[i], hi[i]);
                return -EINVAL;
        }
        *u[i] = (uint32_t)v;
        return 1;
}

int bench_select(int argc, char **argv)
{
        enum { O_TRACE = 256, O_JSON, O_HELP };
        struct option lo[N_SEL_OPTS + 4] = {
                { "trace", required_argument, NULL, O_TRACE },
                { "json", no_argument, NULL, O_JSON },
                { "help", no_argument, NULL, O_HELP },
        };
        struct kvb_sel_opts o = kvb_sel_opts_default();
        struct kvb_sel_result *r = NULL;
        struct kvb_trace *tr = NULL;
        const char *dir = NULL;
        bool json = false;
        char err[512];
        int c, ret = BENCH_EXIT_USAGE;

        kvb_sel_longopts(lo + 3);
        while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
                int p = kvb_sel_parse_option("select", c, optarg, &o);

                if (p < 0)
                        return BENCH_EXIT_USAGE;
                if (p > 0)
                        continue;
                switch (c) {
                case O_TRACE:
                        dir = optarg;
                        break;
                case O_JSON:
                        json = true;
                        break;
                case O_HELP:
                        usage(stdout);
                        return EXIT_SUCCESS;
                default:
                        usage(stderr);
                        return BENCH_EXIT_USAGE;
                }
        }
        if (optind < argc || !dir) {
                fprintf(stderr, optind < argc ? "kvdrive-bench select: unexpected argument '%s'\n"
                                              : "kvdrive-bench select: --trace DIR is required\n%s",
                        optind < argc ? argv[optind] : "");
                return BENCH_EXIT_USAGE;
        }
        if (kvb_trace_open(dir, &tr, err, sizeof(err)) < 0) {
                fprintf(stderr, "kvdrive-bench select: %s\n", err);
                return EXIT_FAILURE;
        }
        r = malloc(sizeof(*r));
        if (!r) {
                fprintf(stderr, "kvdrive-bench select: out of memory\n");
                ret = EXIT_FAILURE;
                goto out;
        }
        if (kvb_select_run(tr, &o, r, err, sizeof(err)) < 0) {
                fprintf(stderr, "kvdrive-bench select: %s\n", err);
                ret = EXIT_FAILURE;
                goto out;
        }
        if (json) {
                json_t *j = kvb_sel_json(&o, r);

                json_object_set_new(j, "trace", json_string(dir));
                json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
                fputc('\n', stdout);
                json_decref(j);
        } else {
                kvb_sel_print(stdout, dir, &o, r);
        }
        ret = EXIT_SUCCESS;
out:
        free(r);
        kvb_trace_close(tr);
        return ret;
}

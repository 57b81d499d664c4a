/* SPDX-License-Identifier: MIT */
/*
 * The synthetic generator (tools/kvdrive-bench/gen.h): deterministic, bad
 * options refused, and with the attention structure it promises (sinks,
 * local window, needles, drift, layer correlation; RoPE, outlier channels,
 * key norms, switching targets, diverging heads, the presets), measured
 * with softmaxes computed here in double.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "tools/kvdrive-bench/gen.h"
#include "tools/kvdrive-bench/trace.h"

#include "check-main.h"
#include "trace-test.h"

/* ---- the generator ---------------------------------------------------------- */

static struct kvb_gen_opts small_gen(void)
{
        struct kvb_gen_opts o = kvb_gen_opts_default();

        o.shape = (struct kvb_trace_meta){
                .layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 64, .tokens = 2048, .steps = 32,
        };
        o.sinks = 4;
        o.window = 32;
        o.topics = 4;
        o.topic_span = 128;
        o.needles = 2;
        o.needle_len = 8;
        return o;
}

static bool same_file(const char *a, const char *b, const char *name)
{
        char pa[512], pb[512];
        size_t la, lb;
        void *x, *y;
        bool same;

        path_in(pa, sizeof(pa), a, name);
        path_in(pb, sizeof(pb), b, name);
        x = read_file(pa, &la);
        y = read_file(pb, &lb);
        same = la == lb && memcmp(x, y, la) == 0;
        free(x);
        free(y);
        return same;
}

START_TEST(test_gen_deterministic)
{
        static const char *const names[] = { "k.bin", "v.bin", "q.bin", "meta.json" };
        struct kvb_gen_opts o = small_gen();
        char a[256], b[256], c[256], err[ERRLEN] = "";

        o.shape.tokens = 512;
        o.topic_span = 64;
        make_tmpdir(a, sizeof(a));
        make_tmpdir(b, sizeof(b));
        make_tmpdir(c, sizeof(c));
        ck_assert_msg(kvb_gen(&o, a, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_gen(&o, b, err, sizeof(err)) == 0, "%s", err);
        o.seed = 2;
        ck_assert_msg(kvb_gen(&o, c, err, sizeof(err)) == 0, "%s", err);
        for (size_t i = 0; i < 4; i++) {
                ck_assert_msg(same_file(a, b, names[i]), "%s differs for the same seed", names[i]);
                ck_assert_msg(!same_file(a, c, names[i]), "%s is the same for another seed", names[i]);
        }
        /* What it writes opens. */
        {
                struct kvb_trace *t = NULL;

                ck_assert_msg(kvb_trace_open(a, &t, err, sizeof(err)) == 0, "%s", err);
                ck_assert_uint_eq(t->meta.tokens, 512);
                kvb_trace_close(t);
        }
        rm_dir(a);
        rm_dir(b);
        rm_dir(c);
}
END_TEST

START_TEST(test_gen_bad_options)
{
        struct kvb_gen_opts o;
        char err[ERRLEN] = "", dir[256];

        make_tmpdir(dir, sizeof(dir));
#define BAD(stmt, word)                                                                         \
        do {                                                                                    \
                o = small_gen();                                                                \
                stmt;                                                                           \
                err[0] = '\0';                                                                  \
                ck_assert_msg(kvb_gen_check(&o, err, sizeof(err)) == -EINVAL, "accepted: %s", #stmt); \
                ck_assert_msg(strstr(err, word), "\"%s\" does not mention %s", err, word);     \
                ck_assert_int_eq(kvb_gen(&o, dir, err, sizeof(err)), -EINVAL);                  \
        } while (0)
        BAD(o.shape.q_heads = 5, "multiple");
        BAD(o.shape.steps = 2048, "steps");
        BAD(o.shape.head_dim = 0, "head_dim");
        BAD(o.shape.head_dim = 1024, "head_dim");
        BAD(o.sinks = 5000, "--sinks");
        BAD(o.topic_span = 0, "--topic-span");
        BAD(o.needle_len = 0, "--needle-len");
        BAD(o.needle_len = 1000, "needles");
        BAD(o.needle_steps = 17, "steps");
        BAD(o.drift = -1, "--drift");
        BAD(o.drift = NAN, "--drift");
        BAD(o.layer_corr = 1.5, "--layer-corr");
        BAD(o.scale = 0, "--scale");
        BAD(o.scale = INFINITY, "--scale");
        BAD(o.seed = UINT64_MAX, "--seed");
        BAD(o.rope_theta = 1, "--rope-theta");
        BAD(o.rope_theta = -10000, "--rope-theta");
        BAD(o.rope_theta = NAN, "--rope-theta");
        BAD(o.rope_theta = 2e9, "--rope-theta");
        BAD((o.rope_theta = 10000, o.shape.head_dim = 6), "even --head-dim");
        BAD((o.rope_theta = 10000, o.shape.head_dim = 63), "even --head-dim");
        BAD(o.outlier_channels = 9, "--outlier-channels");
        BAD(o.outlier_scale = 0, "--outlier-scale");
        BAD(o.outlier_scale = INFINITY, "--outlier-scale");
        BAD(o.norm_tail = -0.1, "--norm-tail");
        BAD(o.norm_tail = 3.5, "--norm-tail");
        BAD(o.sink_norm = 0.5, "--sink-norm");
        BAD(o.sink_norm = NAN, "--sink-norm");
        BAD(o.needle_targets = 0, "--needle-targets");
        BAD(o.needle_targets = 3, "--needle-targets");
        BAD((o.needles = 0, o.needle_targets = KVB_GEN_MAX_TARGETS + 1), "--needle-targets");
        BAD(o.switch_every = 33, "--switch-every");
        BAD(o.head_divergence = -0.5, "--head-divergence");
        BAD(o.head_divergence = 1.01, "--head-divergence");
        BAD(o.head_divergence = NAN, "--head-divergence");
#undef BAD
        /* Nothing was written. */
        {
                char path[512];

                path_in(path, sizeof(path), dir, "k.bin");
                ck_assert_int_eq(access(path, F_OK), -1);
        }
        rm_dir(dir);

        /* Switching targets need no room for stretches. */
        o = small_gen();
        o.needle_steps = 17;
        o.switch_every = 4;
        ck_assert_msg(kvb_gen_check(&o, err, sizeof(err)) == 0, "%s", err);

        /* Presets: the names, and nothing else. */
        ck_assert_int_eq(kvb_gen_preset("nope", &o, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "no preset 'nope'"));
        ck_assert_ptr_nonnull(strstr(err, "llama"));
        ck_assert_int_eq(kvb_gen_preset(NULL, &o, err, sizeof(err)), -EINVAL);
        ck_assert_int_eq(kvb_gen_preset("list", &o, err, sizeof(err)), -EINVAL);

        /* The parts can be switched off. */
        o = small_gen();
        o.sinks = o.window = o.topics = o.needles = 0;
        o.drift = 0;
        o.layer_corr = 1;
        o.shape.tokens = 256;
        make_tmpdir(dir, sizeof(dir));
        ck_assert_msg(kvb_gen(&o, dir, err, sizeof(err)) == 0, "%s", err);
        rm_dir(dir);
}
END_TEST

/* Attention of query (step, l, qh) over the tokens it sees, in double. */
static size_t attention(const struct kvb_trace *t, const float *kf, uint32_t step, uint32_t l, uint32_t qh,
                        double *p)
{
        const struct kvb_trace_meta *m = &t->meta;
        uint32_t d = m->head_dim, g = qh / (m->q_heads / m->kv_heads);
        size_t n = (size_t)m->tokens - m->steps + step + 1;
        const uint16_t *q = t->q + kvb_q_index(m, step, l, qh);
        double qv[512], mx = -INFINITY, sum = 0;

        for (uint32_t i = 0; i < d; i++)
                qv[i] = kvk_f16_to_f32(q[i]);
        for (size_t j = 0; j < n; j++) {
                const float *k = kf + kvb_kv_index(m, l, g, (uint32_t)j);
                double s = 0;

                for (uint32_t i = 0; i < d; i++)
                        s += qv[i] * k[i];
                p[j] = s / sqrt(d);
                if (p[j] > mx)
                        mx = p[j];
        }
        for (size_t j = 0; j < n; j++) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
        }
        for (size_t j = 0; j < n; j++)
                p[j] /= sum;
        return n;
}

static double mass(const double *p, size_t from, size_t to)
{
        double s = 0;

        for (size_t j = from; j < to; j++)
                s += p[j];
        return s;
}

static float *keys_f32(const struct kvb_trace *t)
{
        size_t n = (size_t)t->meta.layers * t->meta.kv_heads * t->meta.tokens * t->meta.head_dim;
        float *kf = malloc(n * sizeof(*kf));

        ck_assert_ptr_nonnull(kf);
        for (size_t i = 0; i < n; i++)
                kf[i] = kvk_f16_to_f32(t->k[i]);
        return kf;
}

START_TEST(test_gen_structure)
{
        struct kvb_gen_opts o = small_gen();
        struct kvb_gen_needle nd[2];
        const struct kvb_trace_meta *m = &o.shape;
        uint32_t prompt = m->tokens - m->steps;
        double sink = 0, local = 0, in_stretch[2] = { 0 }, out_stretch[2] = { 0 }, *p;
        unsigned n_all = 0, n_in[2] = { 0 }, n_out[2] = { 0 };
        struct kvb_trace *t = NULL;
        char dir[256], err[ERRLEN] = "";
        float *kf;

        ck_assert_int_eq(kvb_gen_needles(&o, nd, err, sizeof(err)), 0);
        for (int i = 0; i < 2; i++) {
                ck_assert_uint_ge(nd[i].token, o.sinks);
                ck_assert_uint_le(nd[i].token + nd[i].len, prompt - o.window);
                ck_assert_uint_eq(nd[i].steps, 8);      /* steps / needles / 2 */
        }
        ck_assert_uint_le(nd[0].token + nd[0].len, nd[1].token);
        ck_assert_uint_le(nd[0].step + nd[0].steps, nd[1].step);

        make_tmpdir(dir, sizeof(dir));
        ck_assert_msg(kvb_gen(&o, dir, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        kf = keys_f32(t);
        p = malloc(m->tokens * sizeof(*p));
        ck_assert_ptr_nonnull(p);
        for (uint32_t s = 0; s < m->steps; s++)
                for (uint32_t l = 0; l < m->layers; l++)
                        for (uint32_t qh = 0; qh < m->q_heads; qh++) {
                                size_t n = attention(t, kf, s, l, qh, p);
                                bool retrieving = false;

                                for (int i = 0; i < 2; i++) {
                                        double nm = mass(p, nd[i].token, nd[i].token + nd[i].len);

                                        if (s >= nd[i].step && s < nd[i].step + nd[i].steps) {
                                                in_stretch[i] += nm;
                                                n_in[i]++;
                                                retrieving = true;
                                        } else {
                                                out_stretch[i] += nm;
                                                n_out[i]++;
                                        }
                                }
                                /* Outside the needles' stretches (the needle takes most then). */
                                if (!retrieving) {
                                        sink += mass(p, 0, o.sinks);
                                        local += mass(p, n - o.window, n);
                                        n_all++;
                                }
                        }
        sink /= n_all;
        local /= n_all;
        /* 4 of ~2000 tokens (0.2 %) and 32 (1.6 %) if attention were uniform. */
        ck_assert_msg(sink > 0.2, "sinks get %.3f of the attention", sink);
        ck_assert_msg(local > 0.15, "the local window gets %.3f of the attention", local);
        for (int i = 0; i < 2; i++) {
                in_stretch[i] /= n_in[i];
                out_stretch[i] /= n_out[i];
                ck_assert_msg(in_stretch[i] > 0.5, "needle %d gets %.3f during its stretch", i, in_stretch[i]);
                ck_assert_msg(out_stretch[i] < 0.02, "needle %d gets %.3f outside its stretch", i, out_stretch[i]);
        }
        free(p);
        free(kf);
        kvb_trace_close(t);
        rm_dir(dir);
}
END_TEST

/* Cosine of two fp16 vectors. */
static double cos16(const uint16_t *a, const uint16_t *b, uint32_t d)
{
        double ab = 0, aa = 0, bb = 0;

        for (uint32_t i = 0; i < d; i++) {
                double x = kvk_f16_to_f32(a[i]), y = kvk_f16_to_f32(b[i]);

                ab += x * y;
                aa += x * x;
                bb += y * y;
        }
        return ab / sqrt(aa * bb);
}

/* Mean cosine of the attention of layers 0 and 1 per 16-token block, over
 * the topic text (not the sinks' block nor the last 4 windows), for every
 * fourth step and every head. Blocks, not tokens: each layer's keys carry
 * their own noise, and blocks are what a sparse selection picks. */
static double layer_similarity(double corr)
{
        struct kvb_gen_opts o = small_gen();
        struct kvb_trace *t = NULL;
        char dir[256], err[ERRLEN] = "";
        double *p0, *p1, sum = 0;
        unsigned count = 0;
        float *kf;

        o.needles = 0;
        o.layer_corr = corr;
        make_tmpdir(dir, sizeof(dir));
        ck_assert_msg(kvb_gen(&o, dir, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        kf = keys_f32(t);
        p0 = malloc(o.shape.tokens * sizeof(*p0));
        p1 = malloc(o.shape.tokens * sizeof(*p1));
        ck_assert(p0 && p1);
        for (uint32_t s = 0; s < o.shape.steps; s += 4)
                for (uint32_t qh = 0; qh < o.shape.q_heads; qh++) {
                        size_t n = attention(t, kf, s, 0, qh, p0);
                        double ab = 0, aa = 0, bb = 0;

                        attention(t, kf, s, 1, qh, p1);
                        for (size_t b = 1; b < (n - 4 * o.window) / 16; b++) {
                                double x = mass(p0, b * 16, b * 16 + 16), y = mass(p1, b * 16, b * 16 + 16);

                                ab += x * y;
                                aa += x * x;
                                bb += y * y;
                        }
                        sum += ab / sqrt(aa * bb);
                        count++;
                }
        free(p0);
        free(p1);
        free(kf);
        kvb_trace_close(t);
        rm_dir(dir);
        return sum / count;
}

START_TEST(test_gen_drift_and_layers)
{
        struct kvb_gen_opts o = small_gen();
        struct kvb_trace *t = NULL;
        char dir[256], err[ERRLEN] = "";
        double worst = 1, hi, lo;

        /* Consecutive queries stay close (no needles: no jumps). */
        o.needles = 0;
        make_tmpdir(dir, sizeof(dir));
        ck_assert_msg(kvb_gen(&o, dir, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        for (uint32_t s = 0; s + 1 < o.shape.steps; s++)
                for (uint32_t l = 0; l < o.shape.layers; l++)
                        for (uint32_t qh = 0; qh < o.shape.q_heads; qh++) {
                                double c = cos16(t->q + kvb_q_index(&t->meta, s, l, qh),
                                                 t->q + kvb_q_index(&t->meta, s + 1, l, qh), o.shape.head_dim);

                                if (c < worst)
                                        worst = c;
                        }
        ck_assert_msg(worst > 0.9, "consecutive queries have a cosine of %.3f", worst);
        kvb_trace_close(t);
        rm_dir(dir);

        /* Correlated layers attend to the same topic blocks. */
        hi = layer_similarity(0.95);
        lo = layer_similarity(0.0);
        ck_assert_msg(hi > 0.45 && hi > lo + 0.15, "layer similarity %.3f (corr 0.95) vs %.3f (corr 0)", hi, lo);
}
END_TEST

/* ---- the generator's realistic extras (issue 13) ------------------------------ */

static json_t *load_meta(const char *dir)
{
        char path[512];
        json_error_t je;
        json_t *m;

        path_in(path, sizeof(path), dir, "meta.json");
        m = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        ck_assert_msg(m, "meta.json: %s", je.text);
        return m;
}

static struct kvb_trace *gen_open(const struct kvb_gen_opts *o, char *dir, size_t size)
{
        struct kvb_trace *t = NULL;
        char err[ERRLEN] = "";

        make_tmpdir(dir, size);
        ck_assert_msg(kvb_gen(o, dir, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        return t;
}

/* Mean attention masses over every step, layer and query head: of the sinks
 * and of the last window tokens where the head retrieves nothing (or
 * everywhere, with switching targets), of a needle while the head retrieves
 * it (in, and its worst: in_min) and while it does not (out). */
struct masses {
        double sink, local, in, in_min, out;
};

static struct masses gen_masses(const struct kvb_gen_opts *o, const struct kvb_trace *t, const float *kf)
{
        const struct kvb_trace_meta *m = &t->meta;
        struct kvb_gen_needle nd[KVB_GEN_MAX_TARGETS];
        struct masses r = { .in_min = 1 };
        unsigned n_free = 0, n_in = 0, n_out = 0;
        char err[ERRLEN] = "";
        double *p = malloc(m->tokens * sizeof(*p));

        ck_assert_ptr_nonnull(p);
        ck_assert_uint_le(o->needles, KVB_GEN_MAX_TARGETS);
        ck_assert_int_eq(kvb_gen_needles(o, nd, err, sizeof(err)), 0);
        for (uint32_t s = 0; s < m->steps; s++)
                for (uint32_t qh = 0; qh < m->q_heads; qh++) {
                        uint32_t set[KVB_GEN_MAX_TARGETS], k = kvb_gen_targets(o, qh, s, set);

                        for (uint32_t l = 0; l < m->layers; l++) {
                                size_t n = attention(t, kf, s, l, qh, p);

                                for (uint32_t i = 0; i < o->needles; i++) {
                                        double nm = mass(p, nd[i].token, nd[i].token + nd[i].len);
                                        bool on = false;

                                        for (uint32_t j = 0; j < k; j++)
                                                on |= set[j] == i;
                                        if (on) {
                                                r.in += nm;
                                                r.in_min = nm < r.in_min ? nm : r.in_min;
                                                n_in++;
                                        } else {
                                                r.out += nm;
                                                n_out++;
                                        }
                                }
                                if (k == 0 || o->switch_every > 0) {
                                        r.sink += mass(p, 0, o->sinks);
                                        r.local += mass(p, n - o->window, n);
                                        n_free++;
                                }
                        }
                }
        r.sink /= n_free ? n_free : 1;
        r.local /= n_free ? n_free : 1;
        r.in /= n_in ? n_in : 1;
        r.out /= n_out ? n_out : 1;
        free(p);
        return r;
}

START_TEST(test_gen_extras_deterministic)
{
        static const char *const names[] = { "k.bin", "v.bin", "q.bin", "meta.json" };
        static const char *const keys[] = { "rope_theta", "outlier_channels", "outlier_scale", "norm_tail",
                                            "sink_norm", "needle_targets", "switch_every", "head_divergence" };
        struct kvb_gen_opts o = small_gen();
        char a[256], b[256], c[256], err[ERRLEN] = "";
        json_t *meta, *gj;

        o.shape.tokens = 1024;
        o.rope_theta = 500000;
        o.outlier_channels = 2;
        o.norm_tail = 0.25;
        o.sink_norm = 4;
        o.needles = 3;
        o.needle_targets = 2;
        o.switch_every = 4;
        o.head_divergence = 0.5;
        make_tmpdir(a, sizeof(a));
        make_tmpdir(b, sizeof(b));
        make_tmpdir(c, sizeof(c));
        ck_assert_msg(kvb_gen(&o, a, err, sizeof(err)) == 0, "%s", err);
        ck_assert_msg(kvb_gen(&o, b, err, sizeof(err)) == 0, "%s", err);
        o.seed = 2;
        ck_assert_msg(kvb_gen(&o, c, err, sizeof(err)) == 0, "%s", err);
        for (size_t i = 0; i < 4; i++) {
                ck_assert_msg(same_file(a, b, names[i]), "%s differs for the same seed", names[i]);
                ck_assert_msg(!same_file(a, c, names[i]), "%s is the same for another seed", names[i]);
        }
        /* Every option is in meta.json. */
        meta = load_meta(a);
        gj = json_object_get(meta, "generator");
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                ck_assert_msg(json_object_get(gj, keys[i]), "meta.json has no generator.%s", keys[i]);
        ck_assert_int_eq(json_integer_value(json_object_get(gj, "needle_targets")), 2);
        ck_assert(json_is_null(json_object_get(gj, "preset")));
        json_decref(meta);
        rm_dir(a);
        rm_dir(b);
        rm_dir(c);
}
END_TEST

START_TEST(test_gen_presets)
{
        static const char *const names[] = { "basic", "llama", "rope10k", "outliers", "retrieval", "diverge",
                                             "diffuse" };
        struct kvb_gen_opts o, d = kvb_gen_opts_default();
        char err[ERRLEN] = "";

        /* basic is the defaults. */
        ck_assert_int_eq(kvb_gen_preset("basic", &o, err, sizeof(err)), 0);
        ck_assert_str_eq(o.preset, "basic");
        ck_assert_int_eq(memcmp(&o.shape, &d.shape, sizeof(o.shape)), 0);
        ck_assert(o.seed == d.seed && o.sinks == d.sinks && o.window == d.window && o.topics == d.topics &&
                  o.topic_span == d.topic_span && o.needles == d.needles && o.needle_len == d.needle_len &&
                  o.needle_steps == d.needle_steps && o.drift == d.drift && o.layer_corr == d.layer_corr &&
                  o.scale == d.scale && o.rope_theta == 0 && o.outlier_channels == 0 && o.norm_tail == 0 &&
                  o.outlier_scale == d.outlier_scale && o.sink_norm == 1 && o.needle_targets == 1 &&
                  o.switch_every == 0 && o.head_divergence == 0);
        ck_assert_int_eq(kvb_gen_preset("llama", &o, err, sizeof(err)), 0);
        ck_assert(o.rope_theta == 500000 && o.sink_norm == 4 && o.needle_targets == 2 && o.switch_every == 8);
        ck_assert(o.outlier_channels == 2 && o.head_divergence == 0.5 && o.norm_tail > 0);
        ck_assert_int_eq(kvb_gen_preset("diverge", &o, err, sizeof(err)), 0);
        ck_assert_uint_eq(o.shape.q_heads / o.shape.kv_heads, 8);

        /* Each passes its checks, and writes a trace that says which it is. */
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                struct kvb_trace *t;
                char dir[256];
                json_t *meta;

                ck_assert_msg(kvb_gen_preset(names[i], &o, err, sizeof(err)) == 0, "%s", err);
                ck_assert_msg(kvb_gen_check(&o, err, sizeof(err)) == 0, "%s: %s", names[i], err);
                o.shape.layers = 1;
                o.shape.kv_heads = 1;
                o.shape.q_heads = 8;
                o.shape.head_dim = 64;
                o.shape.tokens = 2048;
                o.shape.steps = 16;
                t = gen_open(&o, dir, sizeof(dir));
                kvb_trace_close(t);
                meta = load_meta(dir);
                ck_assert_str_eq(json_string_value(json_object_get(json_object_get(meta, "generator"), "preset")),
                                 names[i]);
                json_decref(meta);
                rm_dir(dir);
        }
}
END_TEST

/* RoPE as Hugging Face applies it (rotate_half: dim i pairs with i + d/2,
 * angle pos * theta^(-2i/d)), by angle sign * pos; or, interleaved, dim 2i
 * with 2i + 1 (what the generator must not do). */
static void rope_turn(const float *k, float *out, uint32_t d, double theta, double pos, bool interleaved)
{
        for (uint32_t i = 0; i < d / 2; i++) {
                uint32_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + d / 2;
                double w = pos * pow(theta, -2.0 * i / d), c = cos(w), s = sin(w);

                out[a] = (float)(k[a] * c - k[b] * s);
                out[b] = (float)(k[a] * s + k[b] * c);
        }
}

static bool in_needle(const struct kvb_gen_needle *nd, uint32_t n, uint32_t j)
{
        for (uint32_t i = 0; i < n; i++)
                if (j >= nd[i].token && j < nd[i].token + nd[i].len)
                        return true;
        return false;
}

static double cosf_n(const float *a, const float *b, uint32_t d)
{
        double ab = 0, aa = 0, bb = 0;

        for (uint32_t i = 0; i < d; i++) {
                ab += (double)a[i] * b[i];
                aa += (double)a[i] * a[i];
                bb += (double)b[i] * b[i];
        }
        return ab / sqrt(aa * bb);
}

START_TEST(test_gen_rope)
{
        struct kvb_gen_opts o = small_gen();
        const struct kvb_trace_meta *m = &o.shape;
        struct kvb_gen_needle nd[2];
        double rot = 0, hf = 0, inter = 0, other_theta = 0, *p;
        uint32_t d = 64, prompt, lag = 1000, count = 0;
        struct kvb_trace *t;
        struct masses ms;
        char dir[256], err[ERRLEN] = "";
        float *kf;

        o.rope_theta = 500000;
        o.shape.tokens = 8192;
        o.shape.steps = 16;
        prompt = m->tokens - m->steps;
        ck_assert_int_eq(kvb_gen_needles(&o, nd, err, sizeof(err)), 0);
        t = gen_open(&o, dir, sizeof(dir));
        kf = keys_f32(t);

        /* Undoing RoPE the Hugging Face way keeps every pair's norm and finds
         * the fixed local part of the keys again: far apart keys are alike
         * once unturned, not as written, nor unturned with the wrong pairing
         * or theta. */
        for (uint32_t l = 0; l < m->layers; l++)
                for (uint32_t g = 0; g < m->kv_heads; g++)
                        for (uint32_t j = o.sinks; j + lag < prompt; j += 61) {
                                const float *k0 = kf + kvb_kv_index(m, l, g, j);
                                const float *k1 = kf + kvb_kv_index(m, l, g, j + lag);
                                float u0[64], u1[64], w0[64], w1[64];

                                if (in_needle(nd, 2, j) || in_needle(nd, 2, j + lag))
                                        continue;
                                rope_turn(k0, u0, d, o.rope_theta, -(double)j, false);
                                rope_turn(k1, u1, d, o.rope_theta, -(double)(j + lag), false);
                                for (uint32_t i = 0; i < d / 2; i++) {
                                        double a = hypot(k0[i], k0[i + d / 2]), b = hypot(u0[i], u0[i + d / 2]);

                                        ck_assert_msg(fabs(a - b) <= 1e-4 * (1 + a), "pair %u: %g turned, %g not", i,
                                                      a, b);
                                }
                                rot += cosf_n(k0, k1, d);
                                hf += cosf_n(u0, u1, d);
                                rope_turn(k0, w0, d, o.rope_theta, -(double)j, true);
                                rope_turn(k1, w1, d, o.rope_theta, -(double)(j + lag), true);
                                inter += cosf_n(w0, w1, d);
                                rope_turn(k0, w0, d, 10000, -(double)j, false);
                                rope_turn(k1, w1, d, 10000, -(double)(j + lag), false);
                                other_theta += cosf_n(w0, w1, d);
                                count++;
                        }
        rot /= count;
        hf /= count;
        inter /= count;
        other_theta /= count;
        ck_assert_msg(hf > 0.45 && rot < 0.25 && inter < 0.25 && other_theta < 0.25,
                      "cos of keys %u apart: %.3f unturned, %.3f as written, %.3f interleaved, %.3f theta 10000", lag,
                      hf, rot, inter, other_theta);

        /* A needle 4000 tokens back is still the top logit of its queries. */
        ck_assert_uint_ge(prompt + nd[0].step - nd[0].token, 4000);
        p = malloc(m->tokens * sizeof(*p));
        ck_assert_ptr_nonnull(p);
        for (uint32_t s = nd[0].step; s < nd[0].step + nd[0].steps; s++)
                for (uint32_t l = 0; l < m->layers; l++)
                        for (uint32_t qh = 0; qh < m->q_heads; qh++) {
                                size_t n = attention(t, kf, s, l, qh, p), top = 0;

                                for (size_t j = 1; j < n; j++)
                                        top = p[j] > p[top] ? j : top;
                                ck_assert_msg(top >= nd[0].token && top < nd[0].token + nd[0].len,
                                              "step %u, layer %u, head %u: top token %zu, the needle is at %u", s, l,
                                              qh, top, nd[0].token);
                        }
        free(p);

        /* The sinks and the local window (now from RoPE) as without it. */
        ms = gen_masses(&o, t, kf);
        ck_assert_msg(ms.sink > 0.2 && ms.local > 0.15, "sinks get %.3f, the local window %.3f", ms.sink,
                      ms.local);
        ck_assert_msg(ms.in > 0.5 && ms.out < 0.02, "needles get %.3f retrieved, %.3f not", ms.in, ms.out);
        free(kf);
        kvb_trace_close(t);
        rm_dir(dir);
}
END_TEST

/* Channels of layer l, kv head g where every key is beyond 2 with one sign:
 * their count, the first 8 into ch[], their mean magnitude. */
static uint32_t outlier_channels(const struct kvb_trace *t, const float *kf, uint32_t l, uint32_t g, uint32_t *ch,
                                 double *ret_mean)
{
        const struct kvb_trace_meta *m = &t->meta;
        uint32_t n = 0;
        double sum = 0;

        for (uint32_t i = 0; i < m->head_dim; i++) {
                double first = kf[kvb_kv_index(m, l, g, 0) + i], s = 0;
                bool all = true;

                for (uint32_t j = 0; j < m->tokens && all; j++) {
                        double x = kf[kvb_kv_index(m, l, g, j) + i];

                        all = fabs(x) > 2 && (x > 0) == (first > 0);
                        s += fabs(x);
                }
                if (all) {
                        if (n < 8)
                                ch[n] = i;
                        n++;
                        sum += s / m->tokens;
                }
        }
        *ret_mean = n ? sum / n : 0;
        return n;
}

START_TEST(test_gen_outliers)
{
        for (int rope = 0; rope < 2; rope++) {
                struct kvb_gen_opts o = small_gen();
                const struct kvb_trace_meta *m = &o.shape;
                struct kvb_trace *t;
                char dir[256];
                float *kf;

                o.outlier_channels = 2;
                o.outlier_scale = 8;
                o.rope_theta = rope ? 500000 : 0;
                t = gen_open(&o, dir, sizeof(dir));
                kf = keys_f32(t);
                for (uint32_t l = 0; l < m->layers; l++)
                        for (uint32_t g = 0; g < m->kv_heads; g++) {
                                uint32_t ch[8], n;
                                double mean;

                                n = outlier_channels(t, kf, l, g, ch, &mean);
                                ck_assert_msg(n == 2, "rope %d, layer %u, kv head %u: %u outlier channels", rope, l, g,
                                              n);
                                ck_assert_msg(mean > 7 && mean < 9, "outliers of mean magnitude %.2f", mean);
                                /* With RoPE, in the first dims of low-frequency pairs. */
                                for (int c = 0; rope && c < 2; c++)
                                        ck_assert_msg(ch[c] >= 24 && ch[c] < 32, "outlier channel %u", ch[c]);
                                /* The queries lean the same way, by a normal query element. */
                                for (uint32_t s = 0; s < m->steps; s++)
                                        for (uint32_t h = g * 2; h < g * 2 + 2; h++)
                                                for (int c = 0; c < 2; c++) {
                                                        size_t qi = kvb_q_index(m, s, l, h) + ch[c];
                                                        double x = kvk_f16_to_f32(t->q[qi]);
                                                        double k = kf[kvb_kv_index(m, l, g, 0) + ch[c]];

                                                        ck_assert_msg(x * k > 0 && fabs(x) > 2 && fabs(x) < 3,
                                                                      "query %.2f on an outlier channel (key %.2f)",
                                                                      x, k);
                                                }
                        }
                free(kf);
                kvb_trace_close(t);
                rm_dir(dir);
        }
}
END_TEST

START_TEST(test_gen_norms)
{
        struct kvb_gen_opts o = small_gen();
        const struct kvb_trace_meta *m = &o.shape;
        double sink = 0, lsum = 0, lsq = 0, nsum = 0;
        unsigned ns = 0, nt = 0;
        struct kvb_trace *t;
        struct masses ms;
        char dir[256];
        float *kf;

        o.norm_tail = 0.5;
        o.sink_norm = 4;
        t = gen_open(&o, dir, sizeof(dir));
        kf = keys_f32(t);
        for (uint32_t l = 0; l < m->layers; l++)
                for (uint32_t g = 0; g < m->kv_heads; g++)
                        for (uint32_t j = 0; j < m->tokens; j++) {
                                const float *k = kf + kvb_kv_index(m, l, g, j);
                                double n = 0;

                                for (uint32_t i = 0; i < m->head_dim; i++)
                                        n += (double)k[i] * k[i];
                                n = sqrt(n);
                                if (j < o.sinks) {
                                        sink += n;
                                        ns++;
                                } else {
                                        nsum += n;
                                        lsum += log(n);
                                        lsq += log(n) * log(n);
                                        nt++;
                                }
                        }
        sink /= ns;
        nsum /= nt;
        lsum /= nt;
        lsq = sqrt(lsq / nt - lsum * lsum);
        /* sqrt(head_dim) = 8 on average; the sinks 4 times longer; log norms spread by 0.5. */
        ck_assert_msg(nsum > 7.5 && nsum < 8.5, "mean key norm %.2f", nsum);
        ck_assert_msg(sink > 30 && sink < 34, "mean sink norm %.2f", sink);
        ck_assert_msg(lsq > 0.45 && lsq < 0.55, "log key norms spread by %.3f", lsq);
        /* The needles still work. */
        ms = gen_masses(&o, t, kf);
        ck_assert_msg(ms.in > 0.5 && ms.out < 0.02, "needles get %.3f retrieved, %.3f not", ms.in, ms.out);
        free(kf);
        kvb_trace_close(t);
        rm_dir(dir);

        /* Without the tail, sinks made by their norm draw what the basic ones do. */
        o.norm_tail = 0;
        t = gen_open(&o, dir, sizeof(dir));
        kf = keys_f32(t);
        ms = gen_masses(&o, t, kf);
        ck_assert_msg(ms.sink > 0.2 && ms.local > 0.15, "sinks get %.3f, the local window %.3f", ms.sink, ms.local);
        free(kf);
        kvb_trace_close(t);
        rm_dir(dir);
}
END_TEST

/* The sets of a run list of meta.json ("from", "to", "needles") at step s:
 * writes them into set and returns their count. */
static uint32_t runs_at(json_t *runs, uint32_t s, uint32_t *set)
{
        size_t i;
        json_t *r;

        json_array_foreach(runs, i, r) {
                json_t *nj = json_object_get(r, "needles"), *x;
                size_t k;

                if (s < json_integer_value(json_object_get(r, "from")) ||
                    s >= json_integer_value(json_object_get(r, "to")))
                        continue;
                json_array_foreach(nj, k, x)
                        set[k] = (uint32_t)json_integer_value(x);
                return (uint32_t)json_array_size(nj);
        }
        return 0;
}

START_TEST(test_gen_switching)
{
        struct kvb_gen_opts o = small_gen();
        const struct kvb_trace_meta *m = &o.shape;
        uint32_t prev[KVB_GEN_MAX_TARGETS] = { 0 }, set[KVB_GEN_MAX_TARGETS], js[KVB_GEN_MAX_TARGETS];
        struct kvb_gen_needle nd[4];
        json_t *meta, *shared, *needles;
        struct kvb_trace *t;
        char dir[256], err[ERRLEN] = "";
        double *p;
        float *kf;

        o.needles = 4;
        o.needle_targets = 2;
        o.switch_every = 4;
        ck_assert_int_eq(kvb_gen_needles(&o, nd, err, sizeof(err)), 0);
        t = gen_open(&o, dir, sizeof(dir));
        meta = load_meta(dir);
        shared = json_object_get(json_object_get(meta, "retrieval"), "shared");
        needles = json_object_get(meta, "needles");
        ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(meta, "retrieval"), "heads")), 0);

        /* Two targets every step; another pair at every switch, the same
         * between; meta.json says the same, per run and per needle. */
        ck_assert_uint_eq(json_array_size(shared), m->steps / 4);
        for (uint32_t s = 0; s < m->steps; s++) {
                uint32_t n = kvb_gen_targets(&o, KVB_GEN_SHARED, s, set);

                ck_assert_uint_eq(n, 2);
                ck_assert_uint_lt(set[0], set[1]);
                ck_assert_uint_lt(set[1], 4);
                if (s > 0)
                        ck_assert_msg((memcmp(set, prev, 2 * sizeof(*set)) != 0) == (s % 4 == 0),
                                      "step %u: targets %u %u after %u %u", s, set[0], set[1], prev[0], prev[1]);
                memcpy(prev, set, sizeof(prev));
                ck_assert_uint_eq(runs_at(shared, s, js), 2);
                ck_assert_int_eq(memcmp(js, set, 2 * sizeof(*set)), 0);
                for (uint32_t i = 0; i < 4; i++) {
                        json_t *runs = json_object_get(json_array_get(needles, i), "retrieved"), *r;
                        bool in_json = false;
                        size_t k;

                        json_array_foreach(runs, k, r)
                                in_json |= s >= json_integer_value(json_array_get(r, 0)) &&
                                           s < json_integer_value(json_array_get(r, 1));
                        ck_assert_msg(in_json == (i == set[0] || i == set[1]), "needle %u at step %u", i, s);
                }
                for (uint32_t qh = 0; qh < m->q_heads; qh++) {
                        ck_assert_uint_eq(kvb_gen_targets(&o, qh, s, js), 2);
                        ck_assert_int_eq(memcmp(js, set, 2 * sizeof(*set)), 0);
                }
        }
        /* A needle's step and steps: its first run. */
        for (uint32_t i = 0; i < 4; i++)
                if (nd[i].steps > 0) {
                        ck_assert_uint_eq(kvb_gen_targets(&o, KVB_GEN_SHARED, nd[i].step, set), 2);
                        ck_assert(set[0] == i || set[1] == i);
                }

        /* The attention follows: the two needles with the most mass are the targets. */
        kf = keys_f32(t);
        p = malloc(m->tokens * sizeof(*p));
        ck_assert_ptr_nonnull(p);
        for (uint32_t s = 0; s < m->steps; s++) {
                kvb_gen_targets(&o, KVB_GEN_SHARED, s, set);
                for (uint32_t l = 0; l < m->layers; l++)
                        for (uint32_t qh = 0; qh < m->q_heads; qh++) {
                                double nm[4], tg;

                                attention(t, kf, s, l, qh, p);
                                for (uint32_t i = 0; i < 4; i++)
                                        nm[i] = mass(p, nd[i].token, nd[i].token + nd[i].len);
                                tg = nm[set[0]] + nm[set[1]];
                                ck_assert_msg(tg > 0.5, "step %u: the targets get %.3f", s, tg);
                                for (uint32_t i = 0; i < 4; i++)
                                        if (i != set[0] && i != set[1])
                                                ck_assert_msg(nm[i] < 0.02 && nm[i] < nm[set[0]] && nm[i] < nm[set[1]],
                                                              "step %u: needle %u gets %.3f, not a target", s, i,
                                                              nm[i]);
                        }
        }
        free(p);
        free(kf);
        json_decref(meta);
        kvb_trace_close(t);
        rm_dir(dir);
}
END_TEST

START_TEST(test_gen_divergence)
{
        struct kvb_gen_opts o = small_gen();
        const struct kvb_trace_meta *m = &o.shape;
        uint32_t set[KVB_GEN_MAX_TARGETS], first[KVB_GEN_MAX_TARGETS], own = 0;
        struct kvb_trace *t;
        struct masses ms;
        bool differ = false;
        char dir[256];
        json_t *meta;
        float *kf;

        o.shape.kv_heads = 1;
        o.shape.q_heads = 8;
        o.needles = 4;

        /* 0: every head shares; 0.5: some; 1: all. */
        for (uint32_t qh = 0; qh < 8; qh++)
                ck_assert(!kvb_gen_own_targets(&o, qh));
        o.head_divergence = 0.5;
        for (uint32_t qh = 0; qh < 8; qh++)
                own += kvb_gen_own_targets(&o, qh);
        ck_assert_msg(own > 0 && own < 8, "%u of 8 heads have their own targets", own);
        o.head_divergence = 1;
        ck_assert(!kvb_gen_own_targets(&o, KVB_GEN_SHARED));

        /* With stretches and with switching, the heads of the group want
         * different needles; each gets its own, as meta.json says. */
        for (int sw = 0; sw < 2; sw++) {
                o.switch_every = sw ? 4 : 0;
                o.needle_targets = sw ? 2 : 1;
                for (uint32_t s = 0; s < m->steps; s++) {
                        uint32_t n0 = kvb_gen_targets(&o, 0, s, first);

                        for (uint32_t qh = 1; qh < 8; qh++) {
                                uint32_t n = kvb_gen_targets(&o, qh, s, set);

                                differ |= n != n0 || memcmp(set, first, n * sizeof(*set)) != 0;
                        }
                }
                ck_assert_msg(differ, "the 8 heads of a group want the same needles (switch_every %u)",
                              o.switch_every);
                t = gen_open(&o, dir, sizeof(dir));
                meta = load_meta(dir);
                {
                        json_t *heads = json_object_get(json_object_get(meta, "retrieval"), "heads");
                        uint32_t js[KVB_GEN_MAX_TARGETS];

                        ck_assert_uint_eq(json_array_size(heads), 8);
                        for (uint32_t qh = 0; qh < 8; qh++) {
                                json_t *e = json_array_get(heads, qh);

                                ck_assert_int_eq(json_integer_value(json_object_get(e, "q_head")), qh);
                                for (uint32_t s = 0; s < m->steps; s++) {
                                        uint32_t n = kvb_gen_targets(&o, qh, s, set);

                                        ck_assert_uint_eq(runs_at(json_object_get(e, "schedule"), s, js), n);
                                        ck_assert_int_eq(memcmp(js, set, n * sizeof(*set)), 0);
                                }
                        }
                }
                kf = keys_f32(t);
                ms = gen_masses(&o, t, kf);
                ck_assert_msg(ms.in > (sw ? 0.25 : 0.5) && ms.out < 0.02,
                              "switch_every %u: needles get %.3f retrieved, %.3f not", o.switch_every, ms.in, ms.out);
                free(kf);
                json_decref(meta);
                kvb_trace_close(t);
                rm_dir(dir);
        }
}
END_TEST

static Suite *gen_suite(void)
{
        Suite *s = suite_create("gen");
        TCase *tc = tcase_create("gen");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_gen_deterministic);
        tcase_add_test(tc, test_gen_bad_options);
        tcase_add_test(tc, test_gen_structure);
        tcase_add_test(tc, test_gen_drift_and_layers);
        tcase_add_test(tc, test_gen_extras_deterministic);
        tcase_add_test(tc, test_gen_presets);
        tcase_add_test(tc, test_gen_rope);
        tcase_add_test(tc, test_gen_outliers);
        tcase_add_test(tc, test_gen_norms);
        tcase_add_test(tc, test_gen_switching);
        tcase_add_test(tc, test_gen_divergence);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(gen_suite)

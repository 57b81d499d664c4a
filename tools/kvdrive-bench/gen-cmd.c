/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench gen, the command: every option in one table (the --help text
 * and the parser), the presets (named sets of those options, applied first),
 * and bench_gen(). The generator itself is gen.c.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "gen.h"
#include "trace.h"

enum opt_type {
        OPT_U32,
        OPT_U64,
        OPT_DOUBLE,
};

/* Every knob of `kvdrive-bench gen`: the --help text and the parser. */
static const struct gen_option {
        const char *name, *arg;
        enum opt_type type;
        size_t offset;
        const char *help;
} gen_options[] = {
        { "layers", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.layers), "layers" },
        { "kv-heads", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.kv_heads), "kv heads" },
        { "q-heads", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.q_heads),
          "query heads, a multiple of kv-heads (GQA)" },
        { "head-dim", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.head_dim), "dimensions of a head" },
        { "tokens", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.tokens), "tokens: prompt + decode steps" },
        { "steps", "N", OPT_U32, offsetof(struct kvb_gen_opts, shape.steps), "decode steps (< tokens)" },
        { "seed", "N", OPT_U64, offsetof(struct kvb_gen_opts, seed),
          "random seed (same options and seed: same bytes)" },
        { "sinks", "N", OPT_U32, offsetof(struct kvb_gen_opts, sinks),
          "attention sinks: first tokens, attended by every query" },
        { "window", "N", OPT_U32, offsetof(struct kvb_gen_opts, window),
          "local window: logits fall by ~2 over the last N tokens (0: off)" },
        { "topics", "N", OPT_U32, offsetof(struct kvb_gen_opts, topics),
          "topics per kv head; key = its segment's topic + noise (0: off)" },
        { "topic-span", "N", OPT_U32, offsetof(struct kvb_gen_opts, topic_span),
          "topic segment length, uniform in [N/2, 3N/2] tokens" },
        { "needles", "N", OPT_U32, offsetof(struct kvb_gen_opts, needles),
          "needle spans in the prompt, each retrieved by a stretch of steps" },
        { "needle-len", "N", OPT_U32, offsetof(struct kvb_gen_opts, needle_len), "tokens of a needle" },
        { "needle-steps", "N", OPT_U32, offsetof(struct kvb_gen_opts, needle_steps),
          "steps retrieving one needle (0: steps / needles / 2)" },
        { "drift", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, drift),
          "query drift: c[t] = normalize(c[t-1] + X N(0, I/head_dim))" },
        { "layer-corr", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, layer_corr),
          "layer correlation: q[l+1] = X q[l] + sqrt(1-X^2) fresh" },
        { "scale", "S", OPT_DOUBLE, offsetof(struct kvb_gen_opts, scale),
          "query norm: logit = S cos(q, k); sinks ~0.5 S, needles ~0.7 S" },
        { "rope-theta", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, rope_theta),
          "RoPE base as in Llama (2: 10000, 3: 500000; 0: off)" },
        { "outlier-channels", "N", OPT_U32, offsetof(struct kvb_gen_opts, outlier_channels),
          "channels of large one-signed keys per layer, kv head" },
        { "outlier-scale", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, outlier_scale),
          "their size, in normal key elements (jitter 15 %)" },
        { "norm-tail", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, norm_tail),
          "key norms times exp(X N(0, 1) - X^2/2) (0: off)" },
        { "sink-norm", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, sink_norm),
          "sink keys X times longer, queries' sink part / X" },
        { "needle-targets", "K", OPT_U32, offsetof(struct kvb_gen_opts, needle_targets),
          "needles retrieved at once (at most --needles)" },
        { "switch-every", "S", OPT_U32, offsetof(struct kvb_gen_opts, switch_every),
          "all steps retrieve, new targets every S (0: stretches)" },
        { "head-divergence", "X", OPT_DOUBLE, offsetof(struct kvb_gen_opts, head_divergence),
          "chance that a query head has its own targets" },
};

#define N_GEN_OPTIONS (sizeof(gen_options) / sizeof(gen_options[0]))

/* The trace zoo: option, value pairs over the defaults (docs/trace-format.md). */
static const struct gen_preset {
        const char *name, *what;
        const char *const *set;
} gen_presets[] = {
        { "basic", "the defaults: sinks, local window, topics, needle stretches; no RoPE",
          (const char *const[]){ NULL } },
        { "llama", "Llama 3-like, all of it: RoPE 500000, outliers, norm tail, sink norm, 2 switching targets",
          (const char *const[]){ "rope-theta", "500000", "outlier-channels", "2", "norm-tail", "0.25", "sink-norm", "4",
                                 "needles", "4", "needle-targets", "2", "switch-every", "8", "head-divergence", "0.5",
                                 NULL } },
        { "rope10k", "Llama 2-like RoPE (theta 10000) over Llama 2's 4096 tokens; the rest basic",
          (const char *const[]){ "rope-theta", "10000", "tokens", "4096", NULL } },
        { "outliers", "4 strong outlier channels (scale 8) and a heavy key-norm tail (0.4); no RoPE",
          (const char *const[]){ "outlier-channels", "4", "outlier-scale", "8", "norm-tail", "0.4", NULL } },
        { "retrieval", "RoPE 500000, 8 needles, 3 retrieved at once, switching every 4 steps",
          (const char *const[]){ "rope-theta", "500000", "needles", "8", "needle-targets", "3", "switch-every", "4",
                                 NULL } },
        { "diverge", "GQA of 8 query heads per kv head (4/32), each with its own needle targets",
          (const char *const[]){ "kv-heads", "4", "q-heads", "32", "head-divergence", "1", NULL } },
        { "diffuse", "weakly concentrated: scale 10, 32 topics of 256 tokens (hard for any fixed budget)",
          (const char *const[]){ "scale", "10", "topics", "32", "topic-span", "256", NULL } },
};

#define N_GEN_PRESETS (sizeof(gen_presets) / sizeof(gen_presets[0]))

static int parse_value(const struct gen_option *op, const char *s, struct kvb_gen_opts *o);

static const struct gen_option *find_option(const char *name)
{
        for (size_t i = 0; i < N_GEN_OPTIONS; i++)
                if (strcmp(gen_options[i].name, name) == 0)
                        return &gen_options[i];
        return NULL;
}

int kvb_gen_preset(const char *name, struct kvb_gen_opts *o, char *err, size_t errlen)
{
        const struct gen_preset *p = NULL;
        struct kvb_gen_opts n = kvb_gen_opts_default();
        char names[256] = "";

        for (size_t i = 0; i < N_GEN_PRESETS; i++) {
                if (name && strcmp(name, gen_presets[i].name) == 0)
                        p = &gen_presets[i];
                snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
                         gen_presets[i].name);
        }
        if (!p)
                return kvb_fail(err, errlen, -EINVAL, "gen: no preset '%s' (there are %s)", name ? name : "",
                                names);
        for (const char *const *s = p->set; *s; s += 2) {
                const struct gen_option *op = find_option(s[0]);

                if (!op || parse_value(op, s[1], &n) < 0)
                        return kvb_fail(err, errlen, -EINVAL, "gen: preset %s: bad --%s %s", p->name, s[0], s[1]);
        }
        n.preset = p->name;
        *o = n;
        return 0;
}

const char *kvb_gen_preset_name(size_t i, const char **ret_what)
{
        if (i >= N_GEN_PRESETS)
                return NULL;
        if (ret_what)
                *ret_what = gen_presets[i].what;
        return gen_presets[i].name;
}

void kvb_gen_presets_print(FILE *f)
{
        for (size_t i = 0; i < N_GEN_PRESETS; i++)
                fprintf(f, "  %-10s %s\n", gen_presets[i].name, gen_presets[i].what);
}

static void gen_usage(FILE *f)
{
        struct kvb_gen_opts d = kvb_gen_opts_default();

        fprintf(f, "Usage: kvdrive-bench gen --out DIR [options]\n\n"
                   "Writes a synthetic decode trace (docs/trace-format.md) into DIR: attention\n"
                   "sinks, a local window, topic segments, needles, drifting and layer-correlated\n"
                   "queries; optionally RoPE, outlier channels, heavy-tailed key norms, several\n"
                   "switching targets and diverging GQA heads. Deterministic: the same options and\n"
                   "seed give the same bytes.\n\n"
                   "  --out DIR            the trace directory (created if missing; required)\n"
                   "  --preset NAME        a named set of the options below, applied before them\n"
                   "                       (--preset list: the presets)\n");
        for (size_t i = 0; i < N_GEN_OPTIONS; i++) {
                const struct gen_option *op = &gen_options[i];
                const char *p = (const char *)&d + op->offset;
                char name[40], def[40];

                snprintf(name, sizeof(name), "--%s %s", op->name, op->arg);
                if (op->type == OPT_U32)
                        snprintf(def, sizeof(def), "%" PRIu32, *(const uint32_t *)(const void *)p);
                else if (op->type == OPT_U64)
                        snprintf(def, sizeof(def), "%" PRIu64, *(const uint64_t *)(const void *)p);
                else
                        snprintf(def, sizeof(def), "%g", *(const double *)(const void *)p);
                fprintf(f, "  %-20s %s (default %s)\n", name, op->help, def);
        }
        fprintf(f, "  %-20s this text\n\nPresets:\n", "--help");
        kvb_gen_presets_print(f);
}

static int parse_value(const struct gen_option *op, const char *s, struct kvb_gen_opts *o)
{
        char *p = (char *)o + op->offset, *end;

        errno = 0;
        if (op->type == OPT_DOUBLE) {
                double v = strtod(s, &end);

                if (errno || end == s || *end || !isfinite(v))
                        return -EINVAL;
                *(double *)(void *)p = v;
                return 0;
        }
        if (*s < '0' || *s > '9')
                return -EINVAL;
        {
                unsigned long long v = strtoull(s, &end, 10);

                if (errno || *end)
                        return -EINVAL;
                if (op->type == OPT_U32) {
                        if (v > UINT32_MAX)
                                return -ERANGE;
                        *(uint32_t *)(void *)p = (uint32_t)v;
                } else {
                        *(uint64_t *)(void *)p = v;
                }
        }
        return 0;
}

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int bench_gen(int argc, char **argv)
{
        enum { OPT_OUT = 'o', OPT_HELP = 'h', OPT_PRESET = 255, OPT_TABLE = 256 };
        struct option longopts[N_GEN_OPTIONS + 4];
        struct kvb_gen_opts o = kvb_gen_opts_default();
        const char *out = NULL, *preset = NULL;
        char err[512], kv[32], q[32];
        double t0, secs, kv_mib, q_mib;
        size_t kv_elems, q_elems;
        int c, r;

        for (size_t i = 0; i < N_GEN_OPTIONS; i++)
                longopts[i] = (struct option){ gen_options[i].name, required_argument, NULL, OPT_TABLE + (int)i };
        longopts[N_GEN_OPTIONS] = (struct option){ "out", required_argument, NULL, OPT_OUT };
        longopts[N_GEN_OPTIONS + 1] = (struct option){ "help", no_argument, NULL, OPT_HELP };
        longopts[N_GEN_OPTIONS + 2] = (struct option){ "preset", required_argument, NULL, OPT_PRESET };
        longopts[N_GEN_OPTIONS + 3] = (struct option){ 0 };

        /* First the preset, wherever it is, so that the other options
         * override it: --preset llama --seed 7. */
        opterr = 0;
        while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
                if (c != OPT_PRESET)
                        continue;
                if (preset) {
                        fprintf(stderr, "kvdrive-bench gen: one --preset at most\n");
                        return BENCH_EXIT_USAGE;
                }
                preset = optarg;
        }
        opterr = 1;
        optind = 0;
        if (preset && strcmp(preset, "list") == 0) {
                kvb_gen_presets_print(stdout);
                return EXIT_SUCCESS;
        }
        if (preset && kvb_gen_preset(preset, &o, err, sizeof(err)) < 0) {
                fprintf(stderr, "kvdrive-bench gen: %s\n", err);
                return BENCH_EXIT_USAGE;
        }

        while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
                if (c == OPT_OUT) {
                        out = optarg;
                } else if (c == OPT_PRESET) {
                        continue;
                } else if (c == OPT_HELP) {
                        gen_usage(stdout);
                        return EXIT_SUCCESS;
                } else if (c >= OPT_TABLE && c < OPT_TABLE + (int)N_GEN_OPTIONS) {
                        const struct gen_option *op = &gen_options[c - OPT_TABLE];

                        if (parse_value(op, optarg, &o) < 0) {
                                fprintf(stderr, "kvdrive-bench gen: bad --%s '%s': expected %s\n", op->name, optarg,
                                        op->type == OPT_DOUBLE ? "a number" : "an unsigned integer");
                                return BENCH_EXIT_USAGE;
                        }
                } else {
                        gen_usage(stderr);
                        return BENCH_EXIT_USAGE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kvdrive-bench gen: unexpected argument '%s'\n", argv[optind]);
                return BENCH_EXIT_USAGE;
        }
        if (!out) {
                fprintf(stderr, "kvdrive-bench gen: --out DIR is required\n");
                gen_usage(stderr);
                return BENCH_EXIT_USAGE;
        }
        r = kvb_gen_check(&o, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench gen: %s\n", err);
                return BENCH_EXIT_USAGE;
        }
        t0 = now_s();
        r = kvb_gen(&o, out, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench gen: %s\n", err);
                return EXIT_FAILURE;
        }
        secs = now_s() - t0;
        kvb_trace_meta_check(&o.shape, &kv_elems, &q_elems, NULL, 0);
        kv_mib = (double)kv_elems * 2 / (1 << 20);
        q_mib = (double)q_elems * 2 / (1 << 20);
        snprintf(kv, sizeof(kv), "%.1f MiB", kv_mib);
        snprintf(q, sizeof(q), "%.2f MiB", q_mib);
        printf("gen: %s: %" PRIu32 " layers, %" PRIu32 "/%" PRIu32 " kv/q heads, head_dim %" PRIu32 ", %" PRIu32
               " tokens (%" PRIu32 " prompt + %" PRIu32 " steps); k.bin %s, v.bin %s, q.bin %s; %.2f s\n",
               out, o.shape.layers, o.shape.kv_heads, o.shape.q_heads, o.shape.head_dim, o.shape.tokens,
               o.shape.tokens - o.shape.steps, o.shape.steps, kv, kv, q, secs);
        return EXIT_SUCCESS;
}

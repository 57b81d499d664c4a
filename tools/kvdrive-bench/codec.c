/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench codec: the cold tiers' codecs (kvdrived/util/codec.h) on the
 * blocks of a generated trace (the zoo's presets: RoPE, outlier channels,
 * heavy-tailed norms). For each codec: the ratio, single-thread encode and
 * decode GB/s (median and range of --runs runs, each over >= --mib MiB of
 * raw blocks), for the lossy ones the relative L2 error of K and V and the
 * effect on attention (decoded blocks against exact ones: block mass recall
 * of the top-k blocks, top-k overlap, output error of full attention), and
 * the SSD bandwidth a codec adds (derived: --ssd-gbps times the ratio,
 * capped by decode GB/s).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "codec.h"
#include "gen.h"
#include "kernels.h"
#include "metrics.h"
#include "trace.h"

struct copts {
        const char *preset;
        uint32_t tokens, block_tokens, runs, mib, steps, topk;
        double ssd_gbps;
};

struct blocks {
        struct kvb_trace_meta m;
        uint32_t bt, per_layer;         /* blocks per layer */
        size_t bytes, n;                /* bytes of a block, blocks */
        uint8_t *raw;                   /* n blocks, layer-major */
};

/* The trace's K and V as blocks (K then V, each [kv_heads][bt][head_dim]). */
static int make_blocks(const struct kvb_trace *tr, uint32_t bt, struct blocks *b)
{
        const struct kvb_trace_meta *m = &tr->meta;
        size_t row = (size_t)bt * m->head_dim;

        b->m = *m;
        b->bt = bt;
        b->per_layer = m->tokens / bt;
        b->bytes = 2 * (size_t)m->kv_heads * row * 2;
        b->n = (size_t)m->layers * b->per_layer;
        b->raw = malloc(b->n * b->bytes);
        if (!b->raw)
                return -ENOMEM;
        for (uint32_t l = 0; l < m->layers; l++) {
                for (uint32_t i = 0; i < b->per_layer; i++) {
                        uint16_t *dst = (uint16_t *)(b->raw + ((size_t)l * b->per_layer + i) * b->bytes);
                        for (uint32_t h = 0; h < m->kv_heads; h++) {
                                size_t at = kvb_kv_index(m, l, h, i * bt);
                                memcpy(dst + h * row, tr->k + at, row * 2);
                                memcpy(dst + ((size_t)m->kv_heads + h) * row, tr->v + at, row * 2);
                        }
                }
        }
        return 0;
}

struct result {
        double ratio, enc[3], dec[3];   /* median, min, max GB/s */
        double k_err, v_err, mass, topk, out_err;
        int lossy;
};

static void med_range(double *v, uint32_t n, double *ret)
{
        double lo = v[0], hi = v[0];

        for (uint32_t i = 1; i < n; i++) {
                lo = fmin(lo, v[i]);
                hi = fmax(hi, v[i]);
        }
        ret[0] = bench_median(v, n);
        ret[1] = lo;
        ret[2] = hi;
}

/* One timed pass set: encode (or decode) every block until >= min_bytes. */
static double timed(enum kvd_codec c, const struct kvd_codec_shape *sh, const struct blocks *b, bool enc,
                    uint8_t *encbuf, size_t stride, const size_t *elen, uint8_t *out, size_t min_bytes)
{
        uint64_t t0 = bench_now_ns();
        size_t done = 0, n;

        while (done < min_bytes) {
                for (size_t i = 0; i < b->n; i++) {
                        if (enc)
                                kvd_codec_encode(c, sh, b->raw + i * b->bytes, b->bytes, encbuf + i * stride,
                                                 stride, &n);
                        else
                                kvd_codec_decode(c, sh, encbuf + i * stride, elen[i], out + i * b->bytes,
                                                 b->bytes, &n);
                }
                done += b->n * b->bytes;
        }
        return (double)done / (double)(bench_now_ns() - t0);    /* bytes/ns = GB/s */
}

static double plane_err(const struct blocks *b, const uint8_t *dec, int v)
{
        size_t half = b->bytes / 4, n = b->n * half;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        double e;

        for (size_t i = 0; i < b->n; i++) {
                const uint16_t *p = (const uint16_t *)(b->raw + i * b->bytes) + v * half;
                const uint16_t *q = (const uint16_t *)(dec + i * b->bytes) + v * half;
                for (size_t j = 0; j < half; j++) {
                        x[i * half + j] = kvk_f16_to_f32(p[j]);
                        y[i * half + j] = kvk_f16_to_f32(q[j]);
                }
        }
        e = kvb_rel_l2_error(y, x, n);
        free(x);
        free(y);
        return e;
}

/* Attention with the decoded blocks against the exact ones, over the
 * prompt's blocks, for the first steps of the trace. */
static int attention_cost(const struct kvb_trace *tr, const struct blocks *b, const uint8_t *dec,
                          const struct copts *o, struct result *r)
{
        const struct kvb_trace_meta *m = &tr->meta;
        struct kvk_shape s = { m->kv_heads, m->q_heads, m->head_dim, b->bt, KVK_F16 };
        uint32_t n = b->per_layer, k = o->topk < n ? o->topk : n, steps = o->steps < m->steps ? o->steps : m->steps;
        const void **ex = calloc(n, sizeof(*ex)), **de = calloc(n, sizeof(*de));
        uint32_t *valid = calloc(n, sizeof(*valid)), *sel = calloc(k, sizeof(*sel)), *best = calloc(k, sizeof(*best));
        float *q = calloc((size_t)m->q_heads * m->head_dim, sizeof(float));
        float *mass = calloc(n, sizeof(float)), *mass2 = calloc(n, sizeof(float));
        float *o1 = calloc((size_t)m->q_heads * m->head_dim, sizeof(float)), *o2 = calloc((size_t)m->q_heads * m->head_dim, sizeof(float));
        double sm = 0, st = 0, so = 0;
        uint32_t cnt = 0;
        int rc = -ENOMEM;

        if (!ex || !de || !valid || !sel || !best || !q || !mass || !mass2 || !o1 || !o2)
                goto out;
        for (uint32_t i = 0; i < n; i++)
                valid[i] = b->bt;
        for (uint32_t t = 0; t < steps; t++) {
                for (uint32_t l = 0; l < m->layers; l++) {
                        const uint16_t *qs = tr->q + kvb_q_index(m, t, l, 0);
                        for (size_t j = 0; j < (size_t)m->q_heads * m->head_dim; j++)
                                q[j] = kvk_f16_to_f32(qs[j]);
                        for (uint32_t i = 0; i < n; i++) {
                                ex[i] = b->raw + ((size_t)l * n + i) * b->bytes;
                                de[i] = dec + ((size_t)l * n + i) * b->bytes;
                        }
                        rc = kvk_block_attention_mass(&s, q, ex, valid, n, mass);
                        if (rc == 0)
                                rc = kvk_block_attention_mass(&s, q, de, valid, n, mass2);
                        if (rc == 0)
                                rc = kvk_full_attention(&s, q, ex, valid, n, o1, NULL);
                        if (rc == 0)
                                rc = kvk_full_attention(&s, q, de, valid, n, o2, NULL);
                        if (rc < 0)
                                goto out;
                        kvk_topk(mass2, n, k, 0, 0, sel);
                        kvk_topk(mass, n, k, 0, 0, best);
                        /* Recall of the decoded top-k over the exact top-k's (the oracle). */
                        sm += kvb_mass_recall(mass, n, sel, k) / kvb_mass_recall(mass, n, best, k);
                        st += kvb_topk_recall(mass, n, sel, k, k);
                        so += kvb_rel_l2_error(o2, o1, (size_t)m->q_heads * m->head_dim);
                        cnt++;
                }
        }
        r->mass = sm / cnt;
        r->topk = st / cnt;
        r->out_err = so / cnt;
        rc = 0;
out:
        free(ex); free(de); free(valid); free(sel); free(best); free(q);
        free(mass); free(mass2); free(o1); free(o2);
        return rc;
}

static int run_codec(enum kvd_codec c, const struct kvb_trace *tr, const struct blocks *b,
                     const struct copts *o, struct result *r)
{
        struct kvd_codec_shape sh = { 1, b->m.kv_heads, b->m.head_dim, b->bt };
        size_t stride = kvd_codec_bound(c, b->bytes), total = 0;
        uint8_t *enc = malloc(b->n * stride), *dec = malloc(b->n * b->bytes);
        size_t *elen = calloc(b->n, sizeof(*elen));
        double *e = calloc(o->runs, sizeof(double)), *d = calloc(o->runs, sizeof(double));
        size_t min_bytes = (size_t)o->mib << 20;
        int rc = -ENOMEM;

        if (!enc || !dec || !elen || !e || !d)
                goto out;
        for (size_t i = 0; i < b->n; i++) {
                rc = kvd_codec_encode(c, &sh, b->raw + i * b->bytes, b->bytes, enc + i * stride, stride, &elen[i]);
                if (rc < 0)
                        goto out;
                total += elen[i];
        }
        for (uint32_t i = 0; i < o->runs; i++) {
                e[i] = timed(c, &sh, b, true, enc, stride, elen, dec, min_bytes);
                d[i] = timed(c, &sh, b, false, enc, stride, elen, dec, min_bytes);
        }
        med_range(e, o->runs, r->enc);
        med_range(d, o->runs, r->dec);
        r->ratio = (double)(b->n * b->bytes) / (double)total;
        r->lossy = !kvd_codec_lossless(c);
        if (!r->lossy) {
                rc = memcmp(dec, b->raw, b->n * b->bytes) ? -EIO : 0;
                goto out;
        }
        r->k_err = plane_err(b, dec, 0);
        r->v_err = plane_err(b, dec, 1);
        rc = attention_cost(tr, b, dec, o, r);
out:
        free(enc); free(dec); free(elen); free(e); free(d);
        return rc;
}

static void usage(FILE *f)
{
        fprintf(f, "usage: kvdrive-bench codec [--preset NAME] [--tokens N] [--block-tokens N] [--runs N]\n"
                   "                           [--mib N] [--steps N] [--top-k N] [--ssd-gbps X]\n"
                   "Ratio, single-thread encode/decode GB/s and accuracy cost of the cold tiers' codecs\n"
                   "on the blocks of a generated trace (defaults: llama, 8192, 16, 5, 256, 8, 32, 0).\n"
                   "--ssd-gbps: a measured raw SSD read GB/s, for the derived effective bandwidth.\n");
}

static int bench_codec_trace(const struct copts *o, const char *dir)
{
        struct kvb_gen_opts g;
        struct kvb_trace *tr = NULL;
        struct blocks b = { 0 };
        char err[512];
        int rc;

        rc = kvb_gen_preset(o->preset, &g, err, sizeof(err));
        if (rc == 0) {
                g.shape.tokens = o->tokens;
                rc = kvb_gen(&g, dir, err, sizeof(err));
        }
        if (rc == 0)
                rc = kvb_trace_open(dir, &tr, err, sizeof(err));
        if (rc < 0) {
                fprintf(stderr, "kvdrive-bench codec: %s\n", err);
                return rc;
        }
        rc = make_blocks(tr, o->block_tokens, &b);
        if (rc < 0)
                goto out;
        printf("# preset %s: %u layers, %u kv heads, %u q heads, head_dim %u, %u tokens; %zu blocks of %u tokens (%zu KiB)\n",
               o->preset, tr->meta.layers, tr->meta.kv_heads, tr->meta.q_heads, tr->meta.head_dim, tr->meta.tokens,
               b.n, b.bt, b.bytes >> 10);
        printf("| codec | ratio | encode GB/s (min-max) | decode GB/s (min-max) | K rel L2 | V rel L2 | mass recall | top-%u overlap | attn out rel L2 | eff. SSD GB/s (derived) |\n",
               o->topk);
        printf("|---|---|---|---|---|---|---|---|---|---|\n");
        for (int c = 0; c < KVD_CODEC_ID_MAX; c++) {
                struct result r = { 0 };
                char eff[32] = "-";

                rc = run_codec((enum kvd_codec)c, tr, &b, o, &r);
                if (rc < 0) {
                        fprintf(stderr, "kvdrive-bench codec: %s: %s\n", kvd_codec_name(c), strerror(-rc));
                        goto out;
                }
                if (o->ssd_gbps > 0)
                        snprintf(eff, sizeof(eff), "%.2f", c ? fmin(o->ssd_gbps * r.ratio, r.dec[0]) : o->ssd_gbps);
                printf("| %s | %.3f | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) |", kvd_codec_name(c), r.ratio,
                       r.enc[0], r.enc[1], r.enc[2], r.dec[0], r.dec[1], r.dec[2]);
                if (r.lossy)
                        printf(" %.4f | %.4f | %.4f | %.3f | %.4f |", r.k_err, r.v_err, r.mass, r.topk, r.out_err);
                else
                        printf(" 0 | 0 | 1 | 1 | 0 |");
                printf(" %s |\n", eff);
                fflush(stdout);
        }
out:
        free(b.raw);
        kvb_trace_close(tr);
        return rc;
}

int bench_codec(int argc, char **argv)
{
        static const struct option lo[] = {
                { "preset", required_argument, NULL, 'p' }, { "tokens", required_argument, NULL, 't' },
                { "block-tokens", required_argument, NULL, 'b' }, { "runs", required_argument, NULL, 'r' },
                { "mib", required_argument, NULL, 'm' }, { "steps", required_argument, NULL, 's' },
                { "top-k", required_argument, NULL, 'k' }, { "ssd-gbps", required_argument, NULL, 'g' },
                { "help", no_argument, NULL, 'h' }, { 0 },
        };
        struct copts o = { "llama", 8192, 16, 5, 256, 8, 32, 0 };
        char dir[] = "/tmp/kvdrive-bench-codec.XXXXXX", path[64];
        int c, rc;

        while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
                switch (c) {
                case 'p': o.preset = optarg; break;
                case 't': o.tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'b': o.block_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'r': o.runs = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'm': o.mib = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 's': o.steps = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'k': o.topk = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'g': o.ssd_gbps = strtod(optarg, NULL); break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        if (!o.runs || !o.block_tokens || !o.topk || o.tokens < o.block_tokens || o.tokens % o.block_tokens) {
                fprintf(stderr, "kvdrive-bench codec: --runs, --block-tokens, --top-k >= 1; --tokens a multiple of --block-tokens\n");
                return 2;
        }
        if (!mkdtemp(dir)) {
                fprintf(stderr, "kvdrive-bench codec: mkdtemp: %s\n", strerror(errno));
                return 1;
        }
        rc = bench_codec_trace(&o, dir);
        for (const char *const *f = (const char *const[]){ "meta.json", "k.bin", "v.bin", "q.bin", NULL }; *f; f++) {
                snprintf(path, sizeof(path), "%s/%s", dir, *f);
                unlink(path);
        }
        rmdir(dir);
        return rc < 0 ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench report: a sweep of `kvdrive-bench decode` (context length,
 * device budget, clients; the four policies; on the CPU or, --device cuda,
 * a GPU) against a running daemon with an SSD tier, written as results.md
 * (with the commands), results.csv and gnuplot PNGs into --out.
 *
 * Each trace is made by `kvdrive-bench gen` and each measurement by
 * `kvdrive-bench decode --json`, both run as child processes of this very
 * executable (/proc/self/exe), so that every row is one command anyone can
 * run again; their stderr passes through.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "report.h"

#define MAX_RUNS 96
#define MAX_CTX 8
#define MAX_TRACES 12
#define MAX_ARGS 40
#define MAX_REPEAT 9


/*
 * The KV geometries: [0] is the main one (gen's defaults); the others are
 * where bookkeeping per block weighs most against the bytes a block moves
 * and the attention it costs: few kv heads, and few tokens per block.
 */
struct geom {
        const char *name;
        uint32_t kv_heads, q_heads, block_tokens;
};

static const struct geom geoms[] = {
        { "8 kv heads, 32 query heads, 16-token blocks (64 KiB)", 8, 32, 16 },
        { "2 kv heads, 8 query heads, 16-token blocks (16 KiB)", 2, 8, 16 },
        { "8 kv heads, 32 query heads, 4-token blocks (16 KiB)", 8, 32, 4 },
};
#define N_GEOM 3

struct report_opts {
        const char *socket;
        const char *out;
        const char *traces;             /* NULL: a temporary directory */
        double scale;                   /* the traces' --scale, 0: gen's default */
        uint32_t repeat;                /* runs of each deciding row (median kept) */
        const char *device;             /* decode --device, NULL: its default (cpu) */
        uint64_t *ctx;                  /* --contexts (malloc'd), NULL: the sweep's */
        size_t n_ctx;
        bool main_geom;                 /* --main-geometry: no geometry sweep */
        bool quick, keep, plot_only;
};

/* One sweep: which contexts, budgets, clients, and how long each run is. */
struct sweep {
        uint32_t ctx[MAX_CTX];
        size_t n_ctx;
        uint32_t budget_ctx;            /* context of the budget sweep */
        double budgets[4];              /* [0] is the main one */
        size_t n_budgets;
        uint32_t clients_ctx;           /* contexts of the clients sweep: from this one */
        uint32_t clients_ctx_max;       /* to this one */
        uint32_t clients;               /* > 1 */
        uint32_t geom_ctx[2];           /* contexts of the geometry sweep */
        bool other_geoms;               /* whether it runs */
        uint32_t steps, acc_every, layers;
};

/* A trace: a context and the heads (the block size is decode's). */
struct trace_plan {
        uint32_t ctx, kv_heads, q_heads;
        char cmd[CMD_MAX];
};


static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench report [options]\n\n"
                "Runs a sweep of `kvdrive-bench decode` (context length, device budget, clients; the\n"
                "policies full, sparse, lru and kvdrive) and writes results.md (tables and the exact commands),\n"
                "results.csv and PNG plots (gnuplot) into --out.\n\n"
                "It needs a running kvdrived with an SSD tier and a host tier smaller than the KV, e.g.\n"
                "  kvdrived --foreground --socket S --host-bytes 128M --ssd-dir D --ssd-bytes 4G\n"
                "(the full sweep's largest run, 128K tokens x 4 layers, keeps 2 GiB of KV on SSD).\n\n"
                "  -s, --socket PATH   daemon socket (default: $KVDRIVE_SOCKET or the system one)\n"
                "  -o, --out DIR       output directory [docs/bench/decode]\n"
                "  -q, --quick         the quick sweep (about 5-10 minutes on 2 cores): contexts 16K-128K,\n"
                "                      32 steps; the default is the full sweep (64 steps, more points)\n"
                "  -t, --traces DIR    where the traces go (kept, and reused when present); default: a\n"
                "                      temporary directory, removed at the end\n"
                "  -p, --plot-only     redraw the plots from --out's results.csv (same --quick), run nothing\n"
                "  -S, --scale S       generate the traces with `gen --scale S` (attention sharpness)\n"
                "  -r, --repeat N      run each row of sparse, lru and kvdrive N times, round the policies,\n"
                "                      and keep the median [1]\n"
                "  -d, --device NAME   decode --device: cpu, or cuda (the device pool in GPU memory, the\n"
                "                      CUDA kernels) [cpu]\n"
                "  -C, --contexts LIST these contexts in place of the sweep's (e.g. 64K,128K; at most %d):\n"
                "                      the budget, clients and geometry sweeps keep the rows whose context\n"
                "                      is listed\n"
                "  -M, --main-geometry only the main geometry (8 kv heads, 16-token blocks): no geometry sweep\n"
                "  -h, --help          this help\n", MAX_CTX);
}

static void sweep_init(struct sweep *s, const struct report_opts *o)
{
        static const uint32_t ctx[] = { 16384, 32768, 65536, 131072 };
        bool quick = o->quick;

        memset(s, 0, sizeof(*s));
        memcpy(s->ctx, ctx, sizeof(ctx));
        s->n_ctx = 4;
        s->budgets[0] = 0.10;
        s->budgets[1] = 0.05;
        s->budgets[2] = 0.20;
        s->n_budgets = 3;
        s->budget_ctx = 32768;
        s->clients_ctx = 32768;
        s->clients_ctx_max = 32768;
        s->clients = 2;
        s->geom_ctx[0] = 65536;
        s->geom_ctx[1] = 131072;
        s->other_geoms = !o->main_geom;
        s->layers = 4;
        s->steps = quick ? 32 : 64;
        s->acc_every = quick ? 8 : 4;
        if (!quick) {
                s->budget_ctx = 65536;
                s->clients_ctx = 65536;
                s->clients_ctx_max = 131072;
        }
        if (o->n_ctx) {
                for (size_t i = 0; i < o->n_ctx; i++)
                        s->ctx[i] = (uint32_t)o->ctx[i];
                s->n_ctx = o->n_ctx;
        }
}

static bool is_geom_ctx(const struct sweep *s, uint32_t ctx)
{
        return ctx == s->geom_ctx[0] || ctx == s->geom_ctx[1];
}

static bool in_sweep(const struct sweep *s, uint32_t ctx)
{
        for (size_t i = 0; i < s->n_ctx; i++)
                if (s->ctx[i] == ctx)
                        return true;
        return false;
}

/*
 * The planned runs of s into rows: the main geometry's sweep (contexts,
 * budgets, clients), then the other geometries at geom_ctx (1 client, the
 * main budget, no full). Every row but full's is run `repeat` times: each
 * is a point where kvdrive is compared with lru.
 */
static size_t plan_rows(const struct sweep *s, uint32_t repeat, struct run_row *rows)
{
        size_t n = 0;

        for (size_t c = 0; c < s->n_ctx; c++) {
                for (int p = 0; p < N_POL; p++) {
                        for (size_t b = 0; b < s->n_budgets; b++) {
                                for (uint32_t cl = 1; cl <= s->clients; cl++) {
                                        bool in_ctx = b == 0 && cl == 1;
                                        bool in_budget = s->ctx[c] == s->budget_ctx && cl == 1 &&
                                                         (strcmp(policies[p], "full") != 0 || b == 0);
                                        bool in_clients = s->ctx[c] >= s->clients_ctx &&
                                                          s->ctx[c] <= s->clients_ctx_max && b == 0;
                                        bool full = strcmp(policies[p], "full") == 0;

                                        if (!in_ctx && !in_budget && !in_clients)
                                                continue;
                                        if (n == MAX_RUNS)
                                                return n;
                                        rows[n] = (struct run_row){
                                                .ctx = s->ctx[c], .clients = cl, .policy = policies[p],
                                                .budget = s->budgets[b], .in_ctx = in_ctx, .in_budget = in_budget,
                                                .in_clients = in_clients, .reps = full ? 1 : repeat,
                                                .in_geom = in_ctx && !full && is_geom_ctx(s, s->ctx[c]),
                                        };
                                        n++;
                                }
                        }
                }
        }
        for (uint32_t g = 1; s->other_geoms && g < N_GEOM; g++)
                for (size_t c = 0; c < 2; c++)
                        for (int p = 1; in_sweep(s, s->geom_ctx[c]) && p < N_POL; p++) {       /* not full */
                                if (n == MAX_RUNS)
                                        return n;
                                rows[n++] = (struct run_row){
                                        .ctx = s->geom_ctx[c], .clients = 1, .policy = policies[p],
                                        .budget = s->budgets[0], .geom = g, .in_geom = true, .reps = repeat,
                                };
                        }
        return n;
}

/* The distinct traces of rows into traces (rows[i].trace set); their count. */
static size_t plan_traces(struct run_row *rows, size_t n, struct trace_plan *traces)
{
        size_t nt = 0;

        for (size_t i = 0; i < n; i++) {
                const struct geom *g = &geoms[rows[i].geom];
                size_t t;

                for (t = 0; t < nt; t++)
                        if (traces[t].ctx == rows[i].ctx && traces[t].kv_heads == g->kv_heads &&
                            traces[t].q_heads == g->q_heads)
                                break;
                if (t == nt) {
                        if (nt == MAX_TRACES)
                                abort();        /* the sweeps are fixed: a bug */
                        traces[nt++] = (struct trace_plan){
                                .ctx = rows[i].ctx, .kv_heads = g->kv_heads, .q_heads = g->q_heads,
                        };
                }
                rows[i].trace = (uint32_t)t;
        }
        return nt;
}

/* Joins argv into one shell-safe enough line (our arguments hold no quotes
 * or spaces but paths, which are quoted when they need it). */
static void join_cmd(char *buf, size_t size, const char *const *argv)
{
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; argv[i] && len + 1 < size; i++) {
                bool quote = strpbrk(argv[i], " \t'\"$") != NULL;
                int w = snprintf(buf + len, size - len, "%s%s%s%s", i ? " " : "", quote ? "'" : "",
                                 i == 0 ? "kvdrive-bench" : argv[i], quote ? "'" : "");

                if (w < 0)
                        break;
                len += (size_t)w;
        }
}

/*
 * Runs this executable with argv (argv[0] is ignored: /proc/self/exe),
 * stdout captured into *ret_out (malloc'd) unless ret_out is NULL (then it
 * goes to our stderr). Returns the exit status, or -errno.
 */
static int run_self(const char *const *argv, char **ret_out)
{
        int fds[2] = { -1, -1 }, st = 0;
        char *out = NULL;
        size_t len = 0, cap = 0;
        pid_t pid;

        if (ret_out && pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                int e = -errno;

                if (ret_out) {
                        close(fds[0]);
                        close(fds[1]);
                }
                return e;
        }
        if (pid == 0) {
                if (dup2(ret_out ? fds[1] : STDERR_FILENO, STDOUT_FILENO) < 0)
                        _exit(127);
                execv("/proc/self/exe", (char *const *)argv);
                fprintf(stderr, "kvdrive-bench report: exec /proc/self/exe: %s\n", strerror(errno));
                _exit(127);
        }
        if (ret_out) {
                close(fds[1]);
                for (;;) {
                        ssize_t r;

                        if (len + 4096 > cap) {
                                char *n = realloc(out, cap = cap ? cap * 2 : 65536);

                                if (!n)
                                        break;
                                out = n;
                        }
                        r = read(fds[0], out + len, cap - len - 1);
                        if (r < 0 && errno == EINTR)
                                continue;
                        if (r <= 0)
                                break;
                        len += (size_t)r;
                }
                close(fds[0]);
                if (out)
                        out[len] = '\0';
        }
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (ret_out)
                *ret_out = out;
        else
                free(out);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* The number at a dotted path of root, NAN if absent or null. */
static double jnum(json_t *root, const char *path)
{
        char buf[128], *save = NULL;
        json_t *v = root;

        snprintf(buf, sizeof(buf), "%s", path);
        for (char *t = strtok_r(buf, ".", &save); t && v; t = strtok_r(NULL, ".", &save))
                v = json_object_get(v, t);
        return v && json_is_number(v) ? json_number_value(v) : NAN;
}

static int parse_row(struct run_row *r, const char *out)
{
        json_error_t jerr;
        json_t *root = json_loads(out, 0, &jerr);
        double tokens;

        if (!root) {
                fprintf(stderr, "kvdrive-bench report: decode printed no JSON (line %d: %s)\n", jerr.line, jerr.text);
                return -EINVAL;
        }
        tokens = jnum(root, "throughput.tokens");
        r->tps = jnum(root, "throughput.tokens_per_s");
        r->p50 = jnum(root, "throughput.step_ms_p50");
        r->p99 = jnum(root, "throughput.step_ms_p99");
        r->mass = jnum(root, "accuracy.mass_recall_mean");
        r->mass_min = jnum(root, "accuracy.mass_recall_min");
        r->topk = jnum(root, "accuracy.topk_recall_mean");
        r->err = jnum(root, "accuracy.rel_l2_error_mean");
        r->err_max = jnum(root, "accuracy.rel_l2_error_max");
        r->dev_hit = jnum(root, "hit_rates.device_cache");
        r->pref_hit = jnum(root, "hit_rates.prefetch");
        r->host_hit = jnum(root, "hit_rates.host_tier");
        r->h2d_per_tok = jnum(root, "bytes.host_to_device") / tokens / 1048576.0;
        r->ssd2h_per_tok = jnum(root, "bytes.ssd_to_host") / tokens / 1048576.0;
        r->io_wait = jnum(root, "time_ms_per_step.io_wait");
        r->attn = jnum(root, "time_ms_per_step.attention");
        r->select = jnum(root, "time_ms_per_step.select");
        r->compute = jnum(root, "time_ms_per_step.compute");
        r->mean = jnum(root, "throughput.step_ms_mean");
        r->slots = (uint32_t)jnum(root, "config.device_slots_per_seq");
        r->kmax = (uint32_t)jnum(root, "config.topk_blocks_max");
        r->staged = jnum(root, "pipeline.staged_blocks");
        r->oracle = jnum(root, "accuracy.mass_recall_oracle");
        r->miss_layers = jnum(root, "pipeline.miss_layers");
        r->hidden_layers = jnum(root, "pipeline.hidden_layers");
        r->two_pass = jnum(root, "pipeline.two_pass_layers");
        json_decref(root);
        r->ok = true;
        return 0;
}

/* rows[i] becomes its run of median tokens/s (the lower middle one of an
 * even count), with the spread of all its runs. */
static void keep_median(struct run_row *row, const struct run_row *runs, size_t n, size_t i)
{
        const struct run_row *by[MAX_REPEAT];
        uint32_t m = row->reps;

        for (uint32_t r = 0; r < m; r++)
                by[r] = &runs[(size_t)r * n + i];
        for (uint32_t a = 1; a < m; a++)        /* insertion sort: m <= MAX_REPEAT */
                for (uint32_t b = a; b > 0 && by[b]->tps < by[b - 1]->tps; b--) {
                        const struct run_row *t = by[b];

                        by[b] = by[b - 1];
                        by[b - 1] = t;
                }
        *row = *by[(m - 1) / 2];
        row->tps_min = by[0]->tps;
        row->tps_max = by[m - 1]->tps;
}

static int mkdir_p(const char *path)
{
        char buf[512];

        snprintf(buf, sizeof(buf), "%s", path);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return remove(path);
}

/* v with prec digits after the point (g: significant digits), "-" if not finite. */
static const char *fmt(char *buf, size_t size, int prec, bool g, double v)
{
        if (!isfinite(v))
                snprintf(buf, size, "-");
        else if (g)
                snprintf(buf, size, "%.*g", prec, v);
        else
                snprintf(buf, size, "%.*f", prec, v);
        return buf;
}

static const char *ctx_name(char *buf, size_t size, uint32_t ctx)
{
        snprintf(buf, size, "%uK", ctx / 1024);
        return buf;
}

static void write_csv(FILE *f, const struct run_row *rows, size_t n)
{
        fprintf(f, "context_tokens,kv_heads,q_heads,block_tokens,policy,budget,clients,device_slots_per_seq,topk_blocks_max,tokens_per_s,"
                   "step_ms_p50,step_ms_p99,host_to_device_mib_per_token,ssd_to_host_mib_per_token,"
                   "device_cache_hit_rate,prefetch_hit_rate,host_tier_hit_rate,mass_recall_mean,mass_recall_min,"
                   "topk_recall_mean,rel_l2_error_mean,rel_l2_error_max,io_wait_ms_per_step,attention_ms_per_step,"
                   "select_ms_per_step,compute_ms_per_step,step_ms_mean,runs,tokens_per_s_min,tokens_per_s_max\n");
        for (size_t i = 0; i < n; i++) {
                const struct run_row *r = &rows[i];

                if (!r->ok)
                        continue;
                fprintf(f, "%u,%u,%u,%u,%s,%.3f,%u,%u,%u,%.3f,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f,%.5f,%.5f,%.5f,%.3g,%.3g,%.3f,"
                           "%.3f,%.3f,%.3f,%.3f,%u,%.3f,%.3f\n",
                        r->ctx, geoms[r->geom].kv_heads, geoms[r->geom].q_heads, geoms[r->geom].block_tokens,
                        r->policy, r->budget, r->clients, r->slots, r->kmax, r->tps, r->p50, r->p99,
                        r->h2d_per_tok, r->ssd2h_per_tok, r->dev_hit, r->pref_hit, r->host_hit, r->mass, r->mass_min,
                        r->topk, r->err, r->err_max, r->io_wait, r->attn, r->select, r->compute, r->mean, r->reps,
                        r->reps > 1 ? r->tps_min : r->tps, r->reps > 1 ? r->tps_max : r->tps);
        }
}

static void md_header_row(FILE *f)
{
        fprintf(f, "| context | policy | budget | clients | slots/seq | tokens/s | step p50 ms | step p99 ms | "
                   "host→dev MiB/token | SSD→host MiB/token | dev-cache / prefetch hit | host-tier hit | mass recall "
                   "(min) | top-k recall | rel. L2 error (max) |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
}

static void md_row(FILE *f, const struct run_row *r)
{
        char tps[64], b[32], c[32], d[32], e[32], g[32], h[32], i[32], j[32], k[32], l[32], m[32], cn[16];
        double hit = isfinite(r->dev_hit) ? r->dev_hit : r->pref_hit;

        if (!r->ok) {
                fprintf(f, "| %s | %s | %.0f%% | %u | failed |||||||||||\n", ctx_name(cn, sizeof(cn), r->ctx), r->policy,
                        r->budget * 100, r->clients);
                return;
        }
        if (r->reps > 1)
                snprintf(tps, sizeof(tps), "%.1f (%u runs: %.1f-%.1f)", r->tps, r->reps, r->tps_min, r->tps_max);
        else
                fmt(tps, sizeof(tps), 1, false, r->tps);
        fprintf(f, "| %s | %s | %.0f%% | %u | %u | %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s | %s (%s) |\n",
                ctx_name(cn, sizeof(cn), r->ctx), r->policy, r->budget * 100, r->clients, r->slots, tps,
                fmt(b, sizeof(b), 1, false, r->p50), fmt(c, sizeof(c), 1, false, r->p99),
                fmt(d, sizeof(d), 2, false, r->h2d_per_tok), fmt(e, sizeof(e), 2, false, r->ssd2h_per_tok),
                fmt(g, sizeof(g), 3, false, hit), fmt(h, sizeof(h), 3, false, r->host_hit),
                fmt(i, sizeof(i), 4, false, r->mass), fmt(j, sizeof(j), 3, false, r->mass_min),
                fmt(k, sizeof(k), 3, false, r->topk), fmt(l, sizeof(l), 2, true, r->err),
                fmt(m, sizeof(m), 2, true, r->err_max));
}

static void loadavg(char *buf, size_t size)
{
        FILE *f = fopen("/proc/loadavg", "r");

        snprintf(buf, size, "?");
        if (f) {
                if (fscanf(f, "%15s", buf) != 1)
                        snprintf(buf, size, "?");
                fclose(f);
        }
}

struct daemon_info {
        struct kvc_tier_stats host, ssd;
        char eviction[16];
        char load_start[16], load_end[16];
};

static const struct run_row *find_row(const struct run_row *rows, size_t n, const struct run_row *like,
                                      const char *policy)
{
        for (size_t i = 0; i < n; i++)
                if (rows[i].ok && rows[i].ctx == like->ctx && rows[i].clients == like->clients && rows[i].geom == like->geom &&
                    fabs(rows[i].budget - like->budget) < 1e-9 && strcmp(rows[i].policy, policy) == 0)
                        return &rows[i];
        return NULL;
}

/* kvdrive against the better of sparse and lru at each point of 64K and
 * up, with the target: >= 2x the tokens/s at mass recall within
 * 0.01 of the baseline's and >= 0.95. */
static void write_target(FILE *f, const struct run_row *rows, size_t n)
{
        char cn[16];

        fprintf(f, "\n## kvdrive against the best baseline (64K and up)\n\n"
                   "The target (issue 5): kvdrive >= 2x the tokens/s of the better of sparse and lru, at mass "
                   "recall within 0.01 of that baseline's and >= 0.95. *misses hidden* is the share of kvdrive's "
                   "layers whose device-cache misses had landed when attention over the hits ended; *I/O wait* is "
                   "what was left to wait per step.\n\n"
                   "| context | budget | clients | best baseline | its tokens/s | kvdrive tokens/s | ratio | "
                   "recall baseline / kvdrive (best possible) | I/O wait ms/step baseline / kvdrive | misses hidden | host-tier hit "
                   "baseline / kvdrive | SSD→host MiB/token baseline / kvdrive | staged blocks | target |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (size_t i = 0; i < n; i++) {
                const struct run_row *k = &rows[i], *sp, *lr, *b;
                double ratio;
                bool met;

                if (!k->ok || strcmp(k->policy, "kvdrive") != 0 || k->ctx < 65536 || k->budget > 0.10 + 1e-9 ||
                    !(k->in_ctx || k->in_clients))
                        continue;
                sp = find_row(rows, n, k, "sparse");
                lr = find_row(rows, n, k, "lru");
                b = !sp ? lr : !lr ? sp : sp->tps > lr->tps ? sp : lr;
                if (!b)
                        continue;
                ratio = k->tps / b->tps;
                met = ratio >= 2.0 && fabs(k->mass - b->mass) <= 0.01 && k->mass >= 0.95;
                fprintf(f, "| %s | %.0f%% | %u | %s | %.1f%s | %.1f%s | %.2fx | %.4f / %.4f (%.4f) | %.1f / %.1f | %.0f%% | "
                           "%.3f / %.3f | %.2f / %.2f | %.0f | %s |\n",
                        ctx_name(cn, sizeof(cn), k->ctx), k->budget * 100, k->clients, b->policy, b->tps,
                        b->reps > 1 ? " (median)" : "", k->tps, k->reps > 1 ? " (median)" : "", ratio, b->mass,
                        k->mass, k->oracle, b->io_wait, k->io_wait,
                        k->miss_layers > 0 ? 100.0 * k->hidden_layers / k->miss_layers : 0.0, b->host_hit,
                        k->host_hit, b->ssd2h_per_tok, k->ssd2h_per_tok, k->staged, met ? "met" : "**missed**");
        }
}

/* Whether some row is in the budget sweep (budget) or the clients sweep. */
static bool any_row(const struct run_row *rows, size_t n, bool budget)
{
        for (size_t i = 0; i < n; i++)
                if (budget ? rows[i].in_budget : rows[i].in_clients)
                        return true;
        return false;
}

/* The geometries side by side at the geometry contexts. */
static void write_geoms(FILE *f, const struct sweep *s, const struct run_row *rows, size_t n)
{
        bool any = false;

        for (size_t i = 0; i < n; i++)
                any |= rows[i].geom > 0;
        if (!any)       /* --main-geometry, or --contexts without the geometry contexts */
                return;
        fprintf(f, "\n## Geometries: few heads and small blocks (budget %.0f%%, 1 client)\n\n"
                   "The same decode where a block is fewer bytes (16 KiB, not 64 KiB): with 2 kv heads (a trace made "
                   "with `gen --kv-heads 2 --q-heads 8`) and with 4-token blocks (`decode --block-tokens 4` on the "
                   "main traces, four times the blocks). Here the cost of each block's bookkeeping weighs most "
                   "against its bytes and its attention.\n",
                s->budgets[0] * 100);
        for (uint32_t g = 0; g < N_GEOM; g++) {
                fprintf(f, "\n%s:\n\n", geoms[g].name);
                md_header_row(f);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].in_geom && rows[i].geom == g)
                                md_row(f, &rows[i]);
        }
}

/*
 * kvdrive against lru wherever both ran (issue 11): kvdrive selects lru's
 * blocks and moves lru's bytes, so its tokens/s must be at least lru's, at
 * the same recall.
 */
static void write_lru(FILE *f, const struct run_row *rows, size_t n)
{
        char cn[16];
        size_t met = 0, all = 0;

        fprintf(f, "\n## kvdrive against lru, every row\n\n"
                   "kvdrive selects the blocks lru selects and moves the bytes lru moves; what it adds is "
                   "overlap (attention over the resident blocks while the misses land) and what that costs. "
                   "The rule (issue 11): its tokens/s at least lru's on every row, at equal mass recall (within "
                   "0.001).\n\n"
                   "| geometry | context | budget | clients | lru tokens/s | kvdrive tokens/s | ratio | mass recall lru / "
                   "kvdrive | select ms lru / kvdrive | attention ms lru / kvdrive | I/O wait ms lru / kvdrive | "
                   "kvdrive's layers with misses in two passes | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (size_t i = 0; i < n; i++) {
                const struct run_row *k = &rows[i], *l;
                bool ok;

                if (!k->ok || strcmp(k->policy, "kvdrive") != 0 || !(l = find_row(rows, n, k, "lru")))
                        continue;
                ok = k->tps >= l->tps && fabs(k->mass - l->mass) <= 0.001;
                all++;
                met += ok;
                fprintf(f, "| %s | %s | %.0f%% | %u | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | %.2fx | %.4f / %.4f | "
                           "%.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.0f%% | %s |\n",
                        geoms[k->geom].name, ctx_name(cn, sizeof(cn), k->ctx), k->budget * 100, k->clients, l->tps,
                        l->reps > 1 ? l->tps_min : l->tps, l->reps > 1 ? l->tps_max : l->tps, k->tps,
                        k->reps > 1 ? k->tps_min : k->tps, k->reps > 1 ? k->tps_max : k->tps, k->tps / l->tps, l->mass,
                        k->mass, l->select, k->select, l->attn, k->attn, l->io_wait, k->io_wait,
                        k->miss_layers > 0 ? 100.0 * k->two_pass / k->miss_layers : 0.0, ok ? "met" : k->tps < l->tps ? "**slower**" : "**recall differs**");
        }
        fprintf(f, "\n%zu of %zu rows met.\n", met, all);
}

static void write_md(FILE *f, const struct report_opts *o, const struct sweep *s, const struct run_row *rows, size_t n,
                     const char *report_cmd, const struct trace_plan *traces, size_t nt, const struct daemon_info *di,
                     double wall_s)
{
        const struct kvc_tier_stats *host = &di->host, *ssd = &di->ssd;
        struct utsname u;
        char date[32], cn[16], cn2[16];
        time_t now = time(NULL);
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        char scale_note[48] = "";

        if (o->scale > 0)
                snprintf(scale_note, sizeof(scale_note), " but `--scale %g`", o->scale);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M", localtime(&now));
        uname(&u);
        fprintf(f, "# Decode benchmark results (%s sweep%s%s)\n\n", o->quick ? "quick" : "full",
                o->device ? ", --device " : "", o->device ? o->device : "");
        fprintf(f, "Written by `kvdrive-bench report` on %s in %.0f s; what the workload is, what each policy does "
                   "and how to read these numbers: [README.md](README.md).\n\n",
                date, wall_s);
        fprintf(f, "Machine: %ld CPUs, Linux %s (%s); 1-minute load average %s at the start, %s at the end "
                   "(other work shares this machine). Daemon: host tier %" PRIu64 " MiB, SSD tier %" PRIu64
                   " MiB, eviction `%s`. Trace: `kvdrive-bench gen` defaults%s, %u layers, 8 kv heads x 128 dims, 32 "
                   "query heads, fp16, 16-token blocks (64 KiB), but where the geometry section says otherwise; "
                   "%u decode steps; accuracy sampled every %u steps; "
                   "`--compute-us 200`, sink 1 and local 2 blocks (the decode defaults). Rows marked with a run "
                   "count are the median of that many runs (round the policies), with the range.%s\n\n",
                cpus, u.release, u.machine, di->load_start, di->load_end, host->capacity_bytes >> 20,
                ssd->capacity_bytes >> 20, di->eviction[0] ? di->eviction : "?", scale_note, s->layers, s->steps,
                s->acc_every,
                o->device && strcmp(o->device, "cuda") == 0
                        ? " Device: `--device cuda`: each client's device pool is GPU memory the daemon copies into "
                          "and out of with the GPU's copy engines, and summaries, scores, top-k and attention run on "
                          "the GPU (docs/gpu.md)."
                        : "");
        fprintf(f, "## Commands\n\n```sh\n# the daemon (release build)\n"
                   "kvdrived --foreground --socket SOCK --host-bytes %" PRIu64 "M --ssd-dir /tmp/kvd-decode-ssd "
                   "--ssd-bytes %" PRIu64 "M\n# this report\n%s\n# the traces\n",
                host->capacity_bytes >> 20, ssd->capacity_bytes >> 20, report_cmd);
        for (size_t c = 0; c < nt; c++)
                fprintf(f, "%s\n", traces[c].cmd);
        fprintf(f, "# the runs, one per row below\n");
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s\n", rows[i].cmd);
        fprintf(f, "```\n\n");

        fprintf(f, "## Throughput and accuracy vs context (budget %.0f%%, 1 client)\n\n", s->budgets[0] * 100);
        md_header_row(f);
        for (size_t i = 0; i < n; i++)
                if (rows[i].in_ctx)
                        md_row(f, &rows[i]);
        fprintf(f, "\nWhere a step's time goes (ms per step, the same runs; each client's own time, so \"other\" is "
                   "appending, bookkeeping and time lost to the other processes on %ld cores):\n\n"
                   "| context | policy | step mean | select (score + top-k) | I/O wait | attention | compute | other |\n"
                   "|---|---|---|---|---|---|---|---|\n", cpus);
        for (size_t i = 0; i < n; i++) {
                const struct run_row *r = &rows[i];

                if (r->in_ctx && r->ok)
                        fprintf(f, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", ctx_name(cn, sizeof(cn), r->ctx),
                                r->policy, r->mean, r->select, r->io_wait, r->attn, r->compute,
                                r->mean - r->select - r->io_wait - r->attn - r->compute);
        }
        fprintf(f, "\n![tokens/s vs context](tokens_per_s_vs_context.png)\n\n"
                   "![bytes per token vs context](bytes_per_token_vs_context.png)\n\n");
        /* --contexts may leave the budget and clients sweeps without a row. */
        if (any_row(rows, n, true)) {
                fprintf(f, "## Accuracy vs device budget (context %s, 1 client; top-k fraction = budget)\n\n",
                        ctx_name(cn, sizeof(cn), s->budget_ctx));
                md_header_row(f);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].in_budget)
                                md_row(f, &rows[i]);
                fprintf(f, "\n![mass recall vs budget](mass_recall_vs_budget.png)\n\n");
        }
        if (any_row(rows, n, false)) {
                fprintf(f, "## Clients (context %s%s%s, budget %.0f%%): all clients' tokens together\n\n",
                        ctx_name(cn, sizeof(cn), s->clients_ctx),
                        s->clients_ctx_max > s->clients_ctx ? " and up to " : "",
                        s->clients_ctx_max > s->clients_ctx ? ctx_name(cn2, sizeof(cn2), s->clients_ctx_max) : "",
                        s->budgets[0] * 100);
                md_header_row(f);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].in_clients)
                                md_row(f, &rows[i]);
        }
        write_target(f, rows, n);
        write_geoms(f, s, rows, n);
        write_lru(f, rows, n);
        fprintf(f, "\nColumns: *slots/seq* is the device slots one sequence uses (full: the streaming ring plus "
                   "tails); *host→dev* counts every block Got into device slots (sparse: prefetched ones too), "
                   "*SSD→host* the daemon's SSD read bytes during decode; *dev-cache / prefetch hit* is lru's "
                   "device-cache hit rate or sparse's share of the real top-k that the prefetch brought; "
                   "*host-tier hit* the daemon's host hits / (hits + misses) during decode; accuracy is against full "
                   "attention over the trace (mass recall: share of the softmax weight on the attended blocks, tail "
                   "included; top-k recall: overlap with the exact top-k by mass; error: ||out - ref|| / ||ref||).\n");
}

static int parse(int argc, char **argv, struct report_opts *o)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' }, { "out", required_argument, NULL, 'o' },
                { "quick", no_argument, NULL, 'q' },        { "traces", required_argument, NULL, 't' },
                { "plot-only", no_argument, NULL, 'p' },    { "help", no_argument, NULL, 'h' },
                { "scale", required_argument, NULL, 'S' },  { "repeat", required_argument, NULL, 'r' },
                { "device", required_argument, NULL, 'd' }, { "contexts", required_argument, NULL, 'C' },
                { "main-geometry", no_argument, NULL, 'M' },
                {},
        };
        int c;

        o->out = "docs/bench/decode";
        o->repeat = 1;
        while ((c = getopt_long(argc, argv, "s:o:qt:phS:r:d:C:M", opts, NULL)) != -1) {
                uint64_t v;
                char *end;

                switch (c) {
                case 'S':
                        errno = 0;
                        o->scale = strtod(optarg, &end);
                        if (errno || end == optarg || *end || !(o->scale > 0 && o->scale <= 1000)) {
                                fprintf(stderr, "kvdrive-bench report: bad --scale '%s'\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'r':
                        if (bench_parse_uint(optarg, 1, MAX_REPEAT, &v) < 0) {
                                fprintf(stderr, "kvdrive-bench report: bad --repeat '%s' (1-%u)\n", optarg, MAX_REPEAT);
                                return -EINVAL;
                        }
                        o->repeat = (uint32_t)v;
                        break;
                case 'd':
                        if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "cuda") != 0) {
                                fprintf(stderr, "kvdrive-bench report: unknown --device '%s' (cpu, cuda)\n", optarg);
                                return -EINVAL;
                        }
                        o->device = optarg;
                        break;
                case 'C':
                        free(o->ctx);
                        o->ctx = NULL;
                        if (bench_parse_sizes(optarg, &o->ctx, &o->n_ctx) < 0 || o->n_ctx > MAX_CTX) {
                                fprintf(stderr, "kvdrive-bench report: bad --contexts '%s' (at most %d sizes, e.g. "
                                        "64K,128K)\n", optarg, MAX_CTX);
                                return -EINVAL;
                        }
                        for (size_t i = 0; i < o->n_ctx; i++)
                                if (o->ctx[i] < 1024 || o->ctx[i] > (1u << 24)) {
                                        fprintf(stderr, "kvdrive-bench report: --contexts: %" PRIu64 " tokens is "
                                                "outside 1K-16M\n", o->ctx[i]);
                                        return -EINVAL;
                                }
                        break;
                case 'M': o->main_geom = true; break;
                case 's': o->socket = optarg; break;
                case 'o': o->out = optarg; break;
                case 'q': o->quick = true; break;
                case 'p': o->plot_only = true; break;
                case 't': o->traces = optarg; o->keep = true; break;
                case 'h': usage(stdout); return 1;
                default: usage(stderr); return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kvdrive-bench report: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
}

/* --plot-only: fills the planned rows' numbers from results.csv. */
static int read_csv(const char *out, struct run_row *rows, size_t n)
{
        char path[600], line[1024], pol[16];
        FILE *f;
        int got = 0;

        snprintf(path, sizeof(path), "%s/results.csv", out);
        f = fopen(path, "r");
        if (!f) {
                fprintf(stderr, "kvdrive-bench report: %s: %s\n", path, strerror(errno));
                return -1;
        }
        while (fgets(line, sizeof(line), f)) {
                struct run_row r = { 0 };
                uint32_t kvh, qh, bt;

                if (sscanf(line, "%u,%u,%u,%u,%15[^,],%lf,%u,%u,%u,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf,%lf",
                           &r.ctx, &kvh, &qh, &bt, pol, &r.budget, &r.clients, &r.slots, &r.kmax, &r.tps, &r.p50, &r.p99, &r.h2d_per_tok,
                           &r.ssd2h_per_tok, &r.dev_hit, &r.pref_hit, &r.host_hit, &r.mass, &r.mass_min, &r.topk, &r.err,
                           &r.err_max) != 22)
                        continue;
                for (size_t i = 0; i < n; i++) {
                        struct run_row *w = &rows[i];

                        const struct geom *g = &geoms[w->geom];

                        if (w->ctx == r.ctx && strcmp(w->policy, pol) == 0 && fabs(w->budget - r.budget) < 1e-6 &&
                            w->clients == r.clients && g->kv_heads == kvh && g->q_heads == qh && g->block_tokens == bt) {
                                r.policy = w->policy;
                                r.in_ctx = w->in_ctx;
                                r.in_budget = w->in_budget;
                                r.in_clients = w->in_clients;
                                r.in_geom = w->in_geom;
                                r.geom = w->geom;
                                r.ok = true;
                                *w = r;
                                got++;
                        }
                }
        }
        fclose(f);
        return got ? 0 : -1;
}

/* Host and SSD tiers of the daemon; -ENOENT without an SSD tier. */
static int daemon_tiers(const char *socket, struct daemon_info *di)
{
        struct kvc_tier_stats *host = &di->host, *ssd = &di->ssd;
        kvc_client *c = NULL;
        struct kvc_stats *s = NULL;
        int r = kvc_connect(socket, "kvdrive-bench report", &c), found = 0;

        if (r < 0) {
                fprintf(stderr, "kvdrive-bench report: cannot reach kvdrived: %s\n", kvc_strerror(r));
                return r;
        }
        r = kvc_stats_get(c, &s);
        if (r == 0) {
                snprintf(di->eviction, sizeof(di->eviction), "%s", s->eviction);
                for (uint32_t i = 0; i < s->n_tiers; i++) {
                        if (strcmp(s->tiers[i].name, "host") == 0) {
                                *host = s->tiers[i];
                                found |= 1;
                        }
                        if (strcmp(s->tiers[i].name, "ssd") == 0) {
                                *ssd = s->tiers[i];
                                found |= 2;
                        }
                }
                r = found == 3 ? 0 : -ENOENT;
                if (r < 0)
                        fprintf(stderr, "kvdrive-bench report: the daemon runs no SSD tier: start it with --ssd-dir "
                                "and --ssd-bytes (see --help)\n");
        } else {
                fprintf(stderr, "kvdrive-bench report: stats: %s\n", kvc_strerror(r));
        }
        kvc_stats_free(s);
        kvc_disconnect(c);
        return r;
}

int bench_report(int argc, char **argv)
{
        struct report_opts o = { 0 };
        struct sweep s;
        struct run_row rows[MAX_RUNS], *runs = NULL;
        struct daemon_info di = { 0 };
        struct trace_plan traces[MAX_TRACES];
        char tdir[256] = "", report_cmd[CMD_MAX], path[600];
        const char *rargv[MAX_ARGS];
        uint64_t t0 = bench_now_ns();
        size_t n, nt, nargs = 0;
        int r, ret = EXIT_FAILURE;
        FILE *f;

        r = parse(argc, argv, &o);
        if (r != 0) {
                free(o.ctx);
                return r > 0 ? EXIT_SUCCESS : BENCH_EXIT_USAGE;
        }
        if (o.plot_only) {
                sweep_init(&s, &o);
                n = plan_rows(&s, o.repeat, rows);
                free(o.ctx);
                return read_csv(o.out, rows, n) == 0 && report_plots(o.out, rows, n, s.budgets[0], s.budget_ctx) == 0 ? EXIT_SUCCESS
                                                                                          : EXIT_FAILURE;
        }
        if (daemon_tiers(o.socket, &di) < 0)
                goto out;
        loadavg(di.load_start, sizeof(di.load_start));
        sweep_init(&s, &o);
        n = plan_rows(&s, o.repeat, rows);
        nt = plan_traces(rows, n, traces);
        runs = calloc((size_t)MAX_REPEAT * n, sizeof(*runs));
        if (!runs) {
                fprintf(stderr, "kvdrive-bench report: out of memory\n");
                goto out;
        }
        if (mkdir_p(o.out) < 0) {
                fprintf(stderr, "kvdrive-bench report: cannot create %s: %s\n", o.out, strerror(errno));
                goto out;
        }
        if (o.traces) {
                snprintf(tdir, sizeof(tdir), "%s", o.traces);
                if (mkdir_p(tdir) < 0) {
                        fprintf(stderr, "kvdrive-bench report: cannot create %s: %s\n", tdir, strerror(errno));
                        goto out;
                }
        } else {
                const char *tmp = getenv("TMPDIR");

                snprintf(tdir, sizeof(tdir), "%s/kvdrive-bench-report-XXXXXX", tmp && *tmp ? tmp : "/tmp");
                if (!mkdtemp(tdir)) {
                        fprintf(stderr, "kvdrive-bench report: mkdtemp: %s\n", strerror(errno));
                        goto out;
                }
        }
        /* This command as it was given, for the Markdown. */
        rargv[nargs++] = "kvdrive-bench";
        rargv[nargs++] = "report";
        for (int i = 1; i < argc && nargs + 1 < MAX_ARGS; i++)
                rargv[nargs++] = argv[i];
        rargv[nargs] = NULL;
        join_cmd(report_cmd, sizeof(report_cmd), rargv);

        for (size_t c = 0; c < nt; c++) {
                struct trace_plan *tp = &traces[c];
                char dir[300], tokens[16], steps[16], meta[320], scale[32], sfx[80] = "", kvh[16], qh[16];
                const char *gargv[16] = { "kvdrive-bench", "gen", "--out", dir, "--tokens", tokens, "--steps", steps };
                size_t ga = 8;
                struct stat st;
                uint32_t max_reps = 1;
                int w = 0;

                snprintf(scale, sizeof(scale), "%g", o.scale);
                snprintf(kvh, sizeof(kvh), "%u", tp->kv_heads);
                snprintf(qh, sizeof(qh), "%u", tp->q_heads);
                if (o.scale > 0) {
                        gargv[ga++] = "--scale";
                        gargv[ga++] = scale;
                        w = snprintf(sfx, sizeof(sfx), "-scale%g", o.scale);
                }
                if (tp->kv_heads != geoms[0].kv_heads || tp->q_heads != geoms[0].q_heads) {
                        gargv[ga++] = "--kv-heads";
                        gargv[ga++] = kvh;
                        gargv[ga++] = "--q-heads";
                        gargv[ga++] = qh;
                        snprintf(sfx + w, sizeof(sfx) - (size_t)w, "-kv%u-q%u", tp->kv_heads, tp->q_heads);
                }
                gargv[ga] = NULL;
                snprintf(dir, sizeof(dir), "%s/ctx%u-steps%u%s", tdir, tp->ctx, s.steps, sfx);
                snprintf(tokens, sizeof(tokens), "%u", tp->ctx + s.steps);
                snprintf(steps, sizeof(steps), "%u", s.steps);
                snprintf(meta, sizeof(meta), "%s/meta.json", dir);
                join_cmd(tp->cmd, sizeof(tp->cmd), gargv);
                if (stat(meta, &st) == 0) {
                        fprintf(stderr, "kvdrive-bench report: reusing the trace in %s\n", dir);
                } else {
                        fprintf(stderr, "kvdrive-bench report: generating %s\n", dir);
                        r = run_self(gargv, NULL);
                        if (r != 0) {
                                fprintf(stderr, "kvdrive-bench report: gen failed (status %d)\n", r);
                                goto out;
                        }
                }
                for (size_t i = 0; i < n; i++)
                        if (rows[i].trace == c && rows[i].reps > max_reps)
                                max_reps = rows[i].reps;
                /* Repeats go round the policies, so that a slow spell of this
                 * shared machine hits them alike. */
                for (uint32_t rep = 0; rep < max_reps; rep++) {
                        for (size_t i = 0; i < n; i++) {
                                struct run_row *row = &runs[(size_t)rep * n + i];
                                char budget[16], clients[16], acc[16], bt[16], *out = NULL;
                                const char *dargv[MAX_ARGS];
                                size_t k = 0;
                                uint64_t t1 = bench_now_ns();

                                if (rows[i].trace != c || rep >= rows[i].reps)
                                        continue;
                                *row = rows[i];
                                snprintf(budget, sizeof(budget), "%.2f", row->budget);
                                snprintf(clients, sizeof(clients), "%u", row->clients);
                                snprintf(acc, sizeof(acc), "%u", s.acc_every);
                                dargv[k++] = "kvdrive-bench";
                                dargv[k++] = "decode";
                                if (o.socket) {
                                        dargv[k++] = "--socket";
                                        dargv[k++] = o.socket;
                                }
                                dargv[k++] = "--policy";
                                dargv[k++] = row->policy;
                                if (o.device) {
                                        dargv[k++] = "--device";
                                        dargv[k++] = o.device;
                                }
                                dargv[k++] = "--trace";
                                dargv[k++] = dir;
                                dargv[k++] = "--budget";
                                dargv[k++] = budget;
                                dargv[k++] = "--clients";
                                dargv[k++] = clients;
                                dargv[k++] = "--accuracy-every";
                                dargv[k++] = acc;
                                if (geoms[row->geom].block_tokens != geoms[0].block_tokens) {
                                        snprintf(bt, sizeof(bt), "%u", geoms[row->geom].block_tokens);
                                        dargv[k++] = "--block-tokens";
                                        dargv[k++] = bt;
                                }
                                dargv[k++] = "--json";
                                dargv[k] = NULL;
                                join_cmd(row->cmd, sizeof(row->cmd), dargv);
                                fprintf(stderr, "kvdrive-bench report: [%zu/%zu, run %u/%u] %s\n", i + 1, n, rep + 1,
                                        rows[i].reps, row->cmd);
                                r = run_self(dargv, &out);
                                if (r != 0 || !out || parse_row(row, out) < 0) {
                                        fprintf(stderr, "kvdrive-bench report: that run failed (status %d)\n", r);
                                        free(out);
                                        goto out;
                                }
                                free(out);
                                fprintf(stderr, "kvdrive-bench report:   %.1f tokens/s, mass recall %.4f, error %.2g "
                                        "(%.0f s)\n", row->tps, row->mass, row->err,
                                        (double)(bench_now_ns() - t1) / 1e9);
                        }
                }
                for (size_t i = 0; i < n; i++)
                        if (rows[i].trace == c)
                                keep_median(&rows[i], runs, n, i);
                if (!o.keep)
                        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        }

        snprintf(path, sizeof(path), "%s/results.csv", o.out);
        f = fopen(path, "w");
        if (!f) {
                fprintf(stderr, "kvdrive-bench report: %s: %s\n", path, strerror(errno));
                goto out;
        }
        write_csv(f, rows, n);
        fclose(f);
        report_plots(o.out, rows, n, s.budgets[0], s.budget_ctx);
        snprintf(path, sizeof(path), "%s/results.md", o.out);
        f = fopen(path, "w");
        if (!f) {
                fprintf(stderr, "kvdrive-bench report: %s: %s\n", path, strerror(errno));
                goto out;
        }
        loadavg(di.load_end, sizeof(di.load_end));
        write_md(f, &o, &s, rows, n, report_cmd, traces, nt, &di, (double)(bench_now_ns() - t0) / 1e9);
        fclose(f);
        fprintf(stderr, "kvdrive-bench report: wrote %s/results.md, results.csv and the plots\n", o.out);
        ret = EXIT_SUCCESS;
out:
        if (!o.keep && tdir[0])
                nftw(tdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(runs);
        free(o.ctx);
        return ret;
}

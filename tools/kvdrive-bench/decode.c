/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: long-context decoding against a running kvdrived,
 * with the KV cache off the "device" and the baselines our own policy must
 * beat (docs/bench/decode/README.md).
 *
 * The parent opens (or generates) a decode trace (trace.h), checks the
 * daemon and the namespace, and forks --clients processes, each of which
 * connects by itself. A client:
 *  - registers the namespace of the trace's geometry and creates its
 *    "device pool" (a memfd of slots, one block each);
 *  - prefills --seqs sequences: Puts every full block of the prompt of
 *    every layer (private keys per sequence, so nothing is shared), many
 *    Puts in flight, token chunk by chunk as a chunked prefill writes them,
 *    and keeps each block's summary (min/max of its keys) in its memory;
 *  - decodes: per step and layer, appends the new token's K/V to the
 *    layer's tail block (which lives in a device slot until it is full, and
 *    is then Put), chooses the blocks to attend, makes them resident in
 *    device slots as the policy says (Gets from the daemon), computes
 *    attention over them plus the tail, and waits --compute-us, the part of
 *    a layer that is not attention (projections, MLP), during which a GPU
 *    would hide I/O. All sequences of a client go through a layer together,
 *    as a batch does, and share that wait.
 * Policies:
 *  - full (FlexGen-style, exact): every stored block of the layer is
 *    streamed through a ring of device slots each step, --depth requests of
 *    --batch blocks in flight; attention runs on each batch as it lands and
 *    the partial results merge exactly through their log-sum-exp. The ring
 *    replaces the "one layer of slots" of a non-streaming design: the same
 *    bytes move, with less device memory and with compute overlapping I/O.
 *  - sparse (InfiniGen-style): the real top-k of layer l (its own query
 *    against its blocks' summaries) is used for attention; layer l+1's
 *    top-k, predicted from layer l's query (mapped into layer l+1's key
 *    space, see calibrate()), is fetched while layer l computes
 *    (submitted before layer l's attention, waited at layer l+1),
 *    and any block of the real top-k that the prediction missed is fetched
 *    on demand (correction). The last layer predicts layer 0 of the next
 *    step from this step's layer-0 query (the closest query known then).
 *    Two banks of top-k slots (this layer, next layer); nothing is kept
 *    from one step to the next.
 *  - lru: the top-k blocks through a device block cache of --budget slots
 *    (all layers) with LRU replacement; misses are fetched on demand.
 * Every policy attends the sink and local blocks (kvk_topk's forcing) and
 * the tail; top-k counts the forced blocks.
 *
 * Accuracy is measured after the timed phase, from the trace itself: every
 * --accuracy-every steps each client records, per sequence and layer, the
 * selection and the attention output the policy produced (from the bytes
 * the daemon returned), and compares them with full attention over the
 * trace's K/V: attention-mass recall, top-k block recall, relative L2
 * error (metrics.h).
 *
 * The parent gathers the clients' results over pipes, reads the daemon's
 * statistics before the prefill, between prefill and decode, and after
 * decode, and prints one JSON object (--json) or a table.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "gen.h"
#include "kernels.h"
#include "metrics.h"
#include "trace.h"

#define JSON_SCHEMA 1
#define MAX_CLIENTS 64u
#define MAX_SEQS 16u
/* Requests a client keeps in flight, below the daemon's default
 * max-inflight-per-client (64). */
#define MAX_INFLIGHT 56u
#define MAX_GROUP 64u           /* requests of one group (a fetch of one layer) */
#define MAX_DEPTH 32u
#define WAIT_MS 300000
#define NONE UINT32_MAX
#define SPIN_NS 60000ull        /* the last part of --compute-us is spun, not slept */

enum policy { POL_FULL, POL_SPARSE, POL_LRU };
static const char *const policy_names[] = { "full", "sparse", "lru" };

/* How sparse predicts layer l+1's query at layer l. */
enum predict { PRED_MAPPED, PRED_RAW };
static const char *const predict_names[] = { "mapped", "raw" };
#define CAL_TOKENS 4096u        /* prompt tokens sampled to fit the layer-to-layer maps */

struct decode_opts {
        const char *socket;
        const char *trace_dir;          /* NULL: generate one */
        const char *ns_name;            /* NULL: from the geometry */
        enum policy policy;
        enum predict predict;
        uint32_t clients, seqs;
        double budget, topk;            /* topk 0: = budget */
        uint32_t sink, local, block_tokens, compute_us;
        uint32_t steps;                 /* 0: all of the trace's */
        uint32_t acc_every;             /* 0: no accuracy */
        uint32_t batch, depth;
        /* the generated trace */
        uint32_t gen_tokens, gen_layers, gen_steps;
        uint64_t seed;
        bool json;
};

/* Everything fixed before the fork. */
struct run {
        struct decode_opts o;
        struct kvb_trace *tr;
        const struct kvb_trace_meta *m;
        char gen_dir[256];              /* the generated trace, "" if none */
        char ns_name[128];
        struct kvc_geometry g;
        struct kvk_shape shape;
        uint32_t T, layers, prompt, steps;
        uint32_t max_blocks;            /* blocks of a layer at the end */
        uint32_t kmax;                  /* largest top-k of a layer */
        double topk;
        uint64_t block_bytes;
        size_t sum_floats, qd;          /* floats of a summary, of a query */
        uint32_t budget_slots;          /* --budget of a sequence */
        uint32_t policy_slots;          /* slots a sequence's policy uses */
        uint32_t ring_slots;            /* full: the shared ring */
        uint32_t pool_slots;            /* of a client */
        uint32_t group_reqs;            /* requests of one fetch of one sequence */
        uint32_t acc_records;           /* per client */
        float *xmap;                    /* sparse, mapped: [layers-1][kv_heads][D][D] */
};

/* ---- child -> parent messages --------------------------------------- */

enum { MSG_READY = 1, MSG_DONE = 2, MSG_RESULT = 3 };

struct child_result {
        uint32_t type;
        uint32_t n_lat;                 /* RESULT: step latencies that follow (uint64 ns) */
        uint64_t prefill_ns;
        uint64_t start_ns, end_ns;      /* decode phase */
        uint64_t tokens, steps;
        uint64_t got_blocks;            /* Gets into device slots during decode */
        uint64_t put_blocks;            /* decode appends */
        uint64_t prefill_blocks;
        uint64_t dev_hits, dev_misses;  /* lru: cache; sparse: prefetch */
        uint64_t select_ns, wait_ns, attn_ns, compute_ns;
        uint64_t acc_samples, topk_samples;
        double mass_sum, mass_min, topk_sum, err_sum, err_max;
};

/* ---- a client ----------------------------------------------------------- */

/* Requests of one fetch, waited together. */
struct group {
        uint64_t id[MAX_GROUP];
        uint32_t first[MAX_GROUP], count[MAX_GROUP];
        uint32_t n_req;
        uint32_t *blk;                  /* block of each item (for messages) */
        uint8_t *status;                /* cap items */
        uint32_t cap, layer;
};

struct lru_ent {
        uint32_t layer, block;          /* NONE: empty */
        uint32_t prev, next;
};

struct seqstate {
        struct kvc_key id;
        uint32_t slot0;                 /* its policy slots */
        uint32_t tail0;                 /* its tail slots, one per layer */
        uint64_t *put_id;               /* [layers]: the tail's Put in flight, 0 none */
        uint8_t *put_st;
        uint32_t *sel, nsel;            /* the layer's selection (stored blocks) */
        uint32_t *sel_slot;
        struct group demand;
        /* sparse */
        uint32_t *bank[2];              /* block held by each slot of a bank */
        struct group pref[2];
        bool pref_live[2];
        uint32_t *pred;
        /* lru */
        uint32_t *map;                  /* [layers][max_blocks] -> cache slot, NONE */
        struct lru_ent *ent;
        uint32_t head, tail;            /* most / least recently used */
        /* membership scratch */
        uint32_t *stamp, *where, epoch;
};

struct acc_rec {
        uint32_t step, layer, nsel;
        uint32_t *sel;
        float *out;
};

struct client {
        const struct run *run;
        unsigned idx;
        int up, down;
        kvc_client *c;
        uint32_t ns, max_items;
        kvc_pool *pool;
        float *summ;                    /* [layers][max_blocks][sum_floats] */
        float *scores, *q, *q0, *out, *part, *plse;
        double *acc, *acc_lse;          /* full: the merged result so far */
        const void **ptrs;
        uint32_t *valid;
        struct kvc_block_ref *refs;
        uint32_t *blkid, *sel2;         /* scratch */
        struct seqstate *seqs;
        struct group ring[MAX_DEPTH];   /* full */
        struct acc_rec *recs;
        uint32_t n_recs;
        uint32_t *rec_sel;
        float *rec_out;
        uint64_t *lat;
        struct child_result res;
};

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench decode [options]\n\n"
                "Long-context decoding with the KV cache in kvdrived (host DRAM, then SSD): per step\n"
                "and layer, choose blocks, make them resident in device slots, attend, append.\n"
                "Measures tokens/s, step latency, bytes per tier link, hit rates, and accuracy\n"
                "against full attention over the same trace. Run it against a daemon with an SSD\n"
                "tier and a host tier smaller than the KV (e.g. --host-bytes 128M --ssd-dir D\n"
                "--ssd-bytes 4G): the default workload's 512 MiB of KV then spills to SSD.\n\n"
                "  -s, --socket PATH        daemon socket (default: $KVDRIVE_SOCKET or the system one)\n"
                "  -p, --policy NAME        full (FlexGen-style, every block every step), sparse\n"
                "                           (InfiniGen-style, next layer's top-k prefetched), lru\n"
                "                           (top-k through an LRU device cache) [full]\n"
                "  -t, --trace DIR          decode trace (docs/trace-format.md); default: generate one\n"
                "                           with `kvdrive-bench gen`'s defaults into a temporary dir\n"
                "      --tokens N           generated trace: context (prompt) tokens [32768]\n"
                "      --layers N           generated trace: layers [4] (8 kv heads x 128, 32 q heads)\n"
                "      --gen-steps N        generated trace: decode steps [64]\n"
                "      --seed N             generated trace: seed [1]\n"
                "  -c, --clients N          client processes [1]\n"
                "  -n, --seqs N             sequences per client, decoded as one batch [1]\n"
                "  -b, --budget F           device slots per sequence as a fraction of its KV blocks\n"
                "                           (all layers) [0.1]: lru's cache size\n"
                "  -k, --topk F             fraction of a layer's blocks attended per step [= budget]\n"
                "      --predict HOW        sparse: layer l+1's speculative query is layer l's query\n"
                "                           mapped into layer l+1's key space by a least-squares fit\n"
                "                           over the prompt's keys (mapped), or as it is (raw) [mapped]\n"
                "      --sink-blocks N      first blocks always attended [1]\n"
                "      --local-blocks N     most recent stored blocks always attended [2]\n"
                "      --block-tokens T     tokens per block [16]\n"
                "      --compute-us U       per-layer compute that is not attention [200]: one layer of\n"
                "                           a Llama-3-8B-class model holds ~0.44 GB of fp16 projection\n"
                "                           and MLP weights, which batch-1 decoding reads in full: ~150 us\n"
                "                           at an H100's ~3 TB/s, plus kernel launches; 100-300 us\n"
                "      --steps N            decode at most N steps [all of the trace's]\n"
                "      --accuracy-every N   measure accuracy every N steps, 0: never [4]\n"
                "      --batch N            blocks per Get/Put request [32]\n"
                "      --depth N            full: requests in flight; prefill: Puts in flight [8]\n"
                "      --namespace NAME     namespace [kvdrive-bench-decode-<geometry>]\n"
                "  -j, --json               print one JSON object\n"
                "  -h, --help               this help\n\n"
                "Slots: full uses a ring of depth x batch slots, sparse 2 x top-k (this layer and\n"
                "the next), lru max(budget, top-k); each sequence also keeps its tail block (the one\n"
                "being filled) in one slot per layer.\n");
}

/* ---- trace geometry -------------------------------------------------- */

/* Copies the K and V of tokens [from, to) of block b of layer l from the
 * trace into dst, a block laid out as the kernels and the cache want it. */
static void copy_tokens(const struct run *run, uint32_t l, uint32_t b, uint32_t from, uint32_t to, void *dst)
{
        const struct kvb_trace_meta *m = run->m;
        uint16_t *k = dst, *v = k + (size_t)m->kv_heads * run->T * m->head_dim;
        uint32_t off = from - b * run->T;

        for (uint32_t h = 0; h < m->kv_heads; h++) {
                size_t d = ((size_t)h * run->T + off) * m->head_dim, s = kvb_kv_index(m, l, h, from);

                memcpy(k + d, run->tr->k + s, (size_t)(to - from) * m->head_dim * 2);
                memcpy(v + d, run->tr->v + s, (size_t)(to - from) * m->head_dim * 2);
        }
}

static void load_query(const struct run *run, uint32_t step, uint32_t l, float *dst)
{
        const uint16_t *src = run->tr->q + kvb_q_index(run->m, step, l, 0);

        for (size_t i = 0; i < run->qd; i++)
                dst[i] = kvk_f16_to_f32(src[i]);
}

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

static int calibrate(struct run *run)
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
static void map_query(const struct run *run, uint32_t l, const float *q, float *dst)
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

/* Top-k of a layer with n stored blocks. */
static uint32_t k_of(const struct run *run, uint32_t n)
{
        uint32_t k;

        if (n == 0)
                return 0;
        k = (uint32_t)ceil(run->topk * n - 1e-9);
        if (k < 1)
                k = 1;
        if (k > n)
                k = n;
        return k < run->kmax ? k : run->kmax;
}

/* ---- client helpers ------------------------------------------------- */

__attribute__((format(printf, 2, 3)))
static int child_fail(const struct client *cl, const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "kvdrive-bench decode: client %u: ", cl->idx);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return -1;
}

static int daemon_fail(const struct client *cl, const char *what, int err)
{
        const char *msg = cl->c ? kvc_last_error(cl->c) : "";

        return child_fail(cl, "%s: %s%s%s", what, kvc_strerror(err), *msg ? ": " : "", msg);
}

static int group_init(struct group *g, uint32_t cap)
{
        g->cap = cap ? cap : 1;
        g->status = calloc(g->cap, 1);
        g->blk = calloc(g->cap, sizeof(*g->blk));
        return g->status && g->blk ? 0 : -ENOMEM;
}

static void group_free(struct group *g)
{
        free(g->status);
        free(g->blk);
}

/*
 * Submits n Gets (put: Puts) of refs as at most max_req requests of at
 * least --batch items (the last may be smaller). refs' blocks are named in
 * blk for messages. The group must be idle.
 */
static int group_submit(struct client *cl, struct group *g, bool put, const struct kvc_block_ref *refs,
                        const uint32_t *blk, uint32_t n, uint32_t max_req)
{
        uint32_t per = (n + max_req - 1) / (max_req ? max_req : 1);

        g->n_req = 0;
        if (n == 0)
                return 0;
        if (n > g->cap)
                return child_fail(cl, "internal: %u items for a group of %u", n, g->cap);
        if (per < cl->run->o.batch)
                per = cl->run->o.batch;
        if (per > cl->max_items)
                per = cl->max_items;
        g->layer = refs[0].layer;
        memcpy(g->blk, blk, sizeof(*blk) * n);
        for (uint32_t first = 0; first < n; first += per) {
                uint32_t cnt = n - first < per ? n - first : per;
                int r;

                if (g->n_req == MAX_GROUP)
                        return child_fail(cl, "internal: a fetch of %u blocks needs too many requests", n);
                r = put ? kvc_put_submit(cl->c, cl->ns, cl->pool, refs + first, cnt, g->status + first,
                                         &g->id[g->n_req])
                        : kvc_get_submit(cl->c, cl->ns, cl->pool, refs + first, cnt, g->status + first,
                                         &g->id[g->n_req]);
                if (r < 0)
                        return daemon_fail(cl, put ? "put submit" : "get submit", r);
                g->first[g->n_req] = first;
                g->count[g->n_req] = cnt;
                g->n_req++;
        }
        return 0;
}

static int check_items(struct client *cl, const struct group *g, uint32_t first, uint32_t cnt, bool put)
{
        for (uint32_t i = first; i < first + cnt; i++) {
                switch (g->status[i]) {
                case KVC_ITEM_OK:
                        break;
                case KVC_ITEM_EXISTS:
                        if (put)
                                break;
                        /* fall through */
                default:
                        return child_fail(cl, "%s of block %u of layer %u: %s", put ? "put" : "get", g->blk[i],
                                          g->layer,
                                          g->status[i] == KVC_ITEM_MISS ? "miss (the daemon lost it: SSD tier too small?)"
                                          : g->status[i] == KVC_ITEM_NO_SPACE ? "no space in the daemon"
                                          : "copy failed");
                }
        }
        return 0;
}

/* Waits for request i of g (time counted as I/O wait) and checks its items. */
static int group_wait_one(struct client *cl, struct group *g, uint32_t i, bool put)
{
        uint64_t t0 = bench_now_ns();
        int r = kvc_wait(cl->c, g->id[i], WAIT_MS);

        cl->res.wait_ns += bench_now_ns() - t0;
        if (r < 0)
                return daemon_fail(cl, put ? "put" : "get", r);
        return check_items(cl, g, g->first[i], g->count[i], put);
}

static int group_wait(struct client *cl, struct group *g, bool put)
{
        for (uint32_t i = 0; i < g->n_req; i++)
                if (group_wait_one(cl, g, i, put) < 0)
                        return -1;
        g->n_req = 0;
        return 0;
}

/* Sleeps until deadline_ns less SPIN_NS, then spins: accurate to a few
 * microseconds, and leaves the CPU to the daemon, as a GPU computing would. */
static void compute_wait(uint64_t ns)
{
        uint64_t deadline = bench_now_ns() + ns;

        if (ns > SPIN_NS) {
                struct timespec ts = {
                        .tv_sec = (time_t)((deadline - SPIN_NS) / 1000000000ull),
                        .tv_nsec = (long)((deadline - SPIN_NS) % 1000000000ull),
                };

                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                        ;
        }
        while (bench_now_ns() < deadline)
                ;
}

static void *slot_ptr(const struct client *cl, uint32_t slot)
{
        return kvc_pool_slot(cl->pool, slot);
}

static float *summary_of(const struct client *cl, uint32_t l, uint32_t b)
{
        return cl->summ + ((size_t)l * cl->run->max_blocks + b) * cl->run->sum_floats;
}

/* Scores layer l's first n blocks with query q and writes its top-k. */
static uint32_t select_blocks(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t *ret)
{
        const struct run *run = cl->run;
        uint64_t t0 = bench_now_ns();
        uint32_t k;

        if (n == 0)
                return 0;
        kvk_block_scores(&run->shape, q, summary_of(cl, l, 0), n, cl->scores);
        k = kvk_topk(cl->scores, n, k_of(run, n), run->o.sink, run->o.local, ret);
        cl->res.select_ns += bench_now_ns() - t0;
        return k;
}


/* ---- prefill ---------------------------------------------------------- */

/*
 * Puts every full block of the prompt of every layer of every sequence,
 * chunk (block index) by chunk, layer by layer, as a chunked prefill writes
 * them: the newest blocks are the last written, and stay in host memory.
 * A ring of `depth` Puts of `batch` blocks goes through the first slots.
 */
static int prefill(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t seqs = run->o.seqs, layers = run->layers;
        uint32_t total = run->prompt / run->T * layers * seqs, depth = run->o.depth, batch = run->o.batch;
        uint32_t sub = 0, done = 0;
        uint64_t t0 = bench_now_ns();

        if (batch > run->pool_slots)
                batch = run->pool_slots;
        if (depth * batch > run->pool_slots)
                depth = run->pool_slots / batch;
        while (done < total) {
                while (sub < total && sub - done < depth * batch) {
                        uint32_t w = (sub / batch) % depth, cnt = total - sub < batch ? total - sub : batch;

                        for (uint32_t j = 0; j < cnt; j++) {
                                uint32_t i = sub + j, s = i % seqs, l = (i / seqs) % layers, b = i / (seqs * layers);
                                uint32_t slot = w * batch + j;
                                void *p = slot_ptr(cl, slot);

                                copy_tokens(run, l, b, b * run->T, (b + 1) * run->T, p);
                                /* The sequences replay one trace: one summary serves them all. */
                                if (s == 0)
                                        kvk_block_summary(&run->shape, p, run->T, summary_of(cl, l, b));
                                cl->refs[j] = (struct kvc_block_ref){ .layer = l, .slot = slot };
                                kvc_key_private(&cl->seqs[s].id, b, &cl->refs[j].key);
                                cl->blkid[j] = b;
                        }
                        if (group_submit(cl, &cl->ring[w], true, cl->refs, cl->blkid, cnt, 1) < 0)
                                return -1;
                        sub += cnt;
                }
                if (group_wait(cl, &cl->ring[(done / batch) % depth], true) < 0)
                        return -1;
                done += total - done < batch ? total - done : batch;
        }
        cl->res.prefill_blocks = total;
        cl->res.prefill_ns = bench_now_ns() - t0;
        cl->res.wait_ns = 0;
        return 0;
}

/* ---- decode: the tail, attention, accuracy records -------------------- */

/* Writes token pos into layer l's tail slot (the whole known part of the
 * block when a new block starts, or at the first step). */
static void append_token(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t pos, bool first)
{
        const struct run *run = cl->run;
        uint32_t b = pos / run->T;
        void *p = slot_ptr(cl, sq->tail0 + l);

        if (first || pos % run->T == 0)
                copy_tokens(run, l, b, b * run->T, pos + 1, p);
        else
                copy_tokens(run, l, b, pos, pos + 1, p);
}

/* The tail of layer l is full (block b): Put it and summarise it. */
static int put_tail(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t b, bool summarise)
{
        const struct run *run = cl->run;
        struct kvc_block_ref ref = { .layer = l, .slot = sq->tail0 + l };
        int r;

        kvc_key_private(&sq->id, b, &ref.key);
        r = kvc_put_submit(cl->c, cl->ns, cl->pool, &ref, 1, &sq->put_st[l], &sq->put_id[l]);
        if (r < 0)
                return daemon_fail(cl, "put submit (append)", r);
        if (summarise)
                kvk_block_summary(&run->shape, slot_ptr(cl, ref.slot), run->T, summary_of(cl, l, b));
        cl->res.put_blocks++;
        return 0;
}

/* Waits for the tail's Put: the block must be readable before a later
 * step selects it. */
static int wait_tail(struct client *cl, struct seqstate *sq, uint32_t l)
{
        uint64_t t0 = bench_now_ns();
        int r = kvc_wait(cl->c, sq->put_id[l], WAIT_MS);

        cl->res.wait_ns += bench_now_ns() - t0;
        sq->put_id[l] = 0;
        if (r < 0)
                return daemon_fail(cl, "put (append)", r);
        if (sq->put_st[l] != KVC_ITEM_OK && sq->put_st[l] != KVC_ITEM_EXISTS)
                return child_fail(cl, "put of a new block of layer %u: %s", l,
                                  sq->put_st[l] == KVC_ITEM_NO_SPACE ? "no space in the daemon" : "failed");
        return 0;
}

static void record(struct client *cl, uint32_t t, uint32_t l, const uint32_t *sel, uint32_t nsel, bool all,
                   const float *out)
{
        const struct run *run = cl->run;
        struct acc_rec *r;

        if (cl->n_recs == run->acc_records)
                return;
        r = &cl->recs[cl->n_recs];
        r->step = t;
        r->layer = l;
        r->nsel = nsel;
        r->sel = cl->rec_sel + (size_t)cl->n_recs * run->max_blocks;
        r->out = cl->rec_out + (size_t)cl->n_recs * run->qd;
        for (uint32_t i = 0; i < nsel; i++)
                r->sel[i] = all ? i : sel[i];
        memcpy(r->out, out, sizeof(float) * run->qd);
        cl->n_recs++;
}

/* acc/lse += part/plse: two softmax results over disjoint tokens merged
 * exactly through their log-sum-exp, in double so that thousands of merges
 * (one per batch of a long context) add no error of their own. */
static void merge(double *acc, double *lse, const float *part, const float *plse, uint32_t heads, uint32_t dim)
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

static int attend(struct client *cl, uint32_t n, float *out, float *lse)
{
        uint64_t t0 = bench_now_ns();
        int r = kvk_decode_attention(&cl->run->shape, cl->q, cl->ptrs, cl->valid, n, out, lse);

        cl->res.attn_ns += bench_now_ns() - t0;
        if (r < 0)
                return child_fail(cl, "attention: %s", strerror(-r));
        return 0;
}

/* Attention over the selected blocks (in their slots) and the tail. */
static int attend_selected(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t tail_valid, bool rec,
                           uint32_t t)
{
        const struct run *run = cl->run;

        if (group_wait(cl, &sq->demand, false) < 0)
                return -1;
        for (uint32_t i = 0; i < sq->nsel; i++) {
                cl->ptrs[i] = slot_ptr(cl, sq->sel_slot[i]);
                cl->valid[i] = run->T;
        }
        cl->ptrs[sq->nsel] = slot_ptr(cl, sq->tail0 + l);
        cl->valid[sq->nsel] = tail_valid;
        if (attend(cl, sq->nsel + 1, cl->out, NULL) < 0)
                return -1;
        if (rec)
                record(cl, t, l, sq->sel, sq->nsel, false, cl->out);
        return 0;
}

/* ---- full ------------------------------------------------------------ */

/* Streams the n stored blocks of layer l through the ring, attending each
 * batch as it lands, then the tail. */
static int full_layer(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid, bool rec,
                      uint32_t t)
{
        const struct run *run = cl->run;
        uint32_t batch = run->o.batch, depth = run->o.depth, chunks = (n + batch - 1) / batch, sub = 0, done = 0;

        for (uint32_t h = 0; h < run->m->q_heads; h++)
                cl->acc_lse[h] = -INFINITY;
        memset(cl->acc, 0, sizeof(double) * run->qd);
        while (done < chunks) {
                while (sub < chunks && sub - done < depth) {
                        uint32_t w = sub % depth, first = sub * batch, cnt = n - first < batch ? n - first : batch;

                        for (uint32_t j = 0; j < cnt; j++) {
                                cl->refs[j] = (struct kvc_block_ref){ .layer = l, .slot = w * batch + j };
                                kvc_key_private(&sq->id, first + j, &cl->refs[j].key);
                                cl->blkid[j] = first + j;
                        }
                        if (group_submit(cl, &cl->ring[w], false, cl->refs, cl->blkid, cnt, 1) < 0)
                                return -1;
                        cl->res.got_blocks += cnt;
                        sub++;
                }
                {
                        uint32_t w = done % depth, first = done * batch, cnt = n - first < batch ? n - first : batch;

                        if (group_wait(cl, &cl->ring[w], false) < 0)
                                return -1;
                        for (uint32_t j = 0; j < cnt; j++) {
                                cl->ptrs[j] = slot_ptr(cl, w * batch + j);
                                cl->valid[j] = run->T;
                        }
                        if (attend(cl, cnt, cl->part, cl->plse) < 0)
                                return -1;
                        merge(cl->acc, cl->acc_lse, cl->part, cl->plse, run->m->q_heads, run->m->head_dim);
                        done++;
                }
        }
        cl->ptrs[0] = slot_ptr(cl, sq->tail0 + l);
        cl->valid[0] = tail_valid;
        if (attend(cl, 1, cl->part, cl->plse) < 0)
                return -1;
        merge(cl->acc, cl->acc_lse, cl->part, cl->plse, run->m->q_heads, run->m->head_dim);
        for (size_t i = 0; i < run->qd; i++)
                cl->out[i] = (float)cl->acc[i];
        if (rec)
                record(cl, t, l, NULL, n, true, cl->out);
        return 0;
}

/* ---- sparse ---------------------------------------------------------- */

/*
 * Layer l of step t (global layer number gl): takes the prefetch issued at
 * the previous layer, selects the real top-k, fetches what the prediction
 * missed, and issues the prefetch of the next layer's predicted top-k into
 * the other bank. The caller then attends (attend_selected).
 */
static int sparse_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint64_t gl, uint32_t n)
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

/* ---- lru ------------------------------------------------------------- */

static void lru_unlink(struct seqstate *sq, uint32_t e)
{
        struct lru_ent *x = &sq->ent[e];

        if (x->prev != NONE)
                sq->ent[x->prev].next = x->next;
        else
                sq->head = x->next;
        if (x->next != NONE)
                sq->ent[x->next].prev = x->prev;
        else
                sq->tail = x->prev;
}

static void lru_touch(struct seqstate *sq, uint32_t e)
{
        if (sq->head == e)
                return;
        lru_unlink(sq, e);
        sq->ent[e].prev = NONE;
        sq->ent[e].next = sq->head;
        sq->ent[sq->head].prev = e;
        sq->head = e;
}

static int lru_prepare(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n)
{
        const struct run *run = cl->run;
        uint32_t *map = sq->map + (size_t)l * run->max_blocks, m = 0;

        sq->nsel = select_blocks(cl, l, cl->q, n, sq->sel);
        /* Hits first: they become most recent, so that no victim below is
         * one of this layer's blocks (the cache holds at least top-k). */
        for (uint32_t i = 0; i < sq->nsel; i++)
                if (map[sq->sel[i]] != NONE)
                        lru_touch(sq, map[sq->sel[i]]);
        for (uint32_t i = 0; i < sq->nsel; i++) {
                uint32_t b = sq->sel[i], e = map[b];

                if (e == NONE) {
                        struct lru_ent *x;

                        e = sq->tail;
                        x = &sq->ent[e];
                        if (x->block != NONE)
                                sq->map[(size_t)x->layer * run->max_blocks + x->block] = NONE;
                        x->layer = l;
                        x->block = b;
                        map[b] = e;
                        lru_touch(sq, e);
                        cl->refs[m] = (struct kvc_block_ref){ .layer = l, .slot = sq->slot0 + e };
                        kvc_key_private(&sq->id, b, &cl->refs[m].key);
                        cl->blkid[m++] = b;
                }
                sq->sel_slot[i] = sq->slot0 + e;
        }
        cl->res.dev_hits += sq->nsel - m;
        cl->res.dev_misses += m;
        cl->res.got_blocks += m;
        return group_submit(cl, &sq->demand, false, cl->refs, cl->blkid, m, run->group_reqs);
}

/* ---- one decode step -------------------------------------------------- */

static int decode_step(struct client *cl, uint32_t t)
{
        const struct run *run = cl->run;
        uint32_t pos = run->prompt + t, n = pos / run->T, tail_valid = pos % run->T + 1, seqs = run->o.seqs;
        bool filled = tail_valid == run->T, rec = run->o.acc_every && t % run->o.acc_every == 0;

        for (uint32_t l = 0; l < run->layers; l++) {
                uint64_t gl = (uint64_t)t * run->layers + l, t0;

                load_query(run, t, l, cl->q);
                for (uint32_t s = 0; s < seqs; s++)
                        append_token(cl, &cl->seqs[s], l, pos, t == 0);
                switch (run->o.policy) {
                case POL_FULL:
                        for (uint32_t s = 0; s < seqs; s++)
                                if (full_layer(cl, &cl->seqs[s], l, n, tail_valid, rec && s == 0, t) < 0)
                                        return -1;
                        break;
                case POL_SPARSE:
                case POL_LRU:
                        /* Every sequence's fetches go out before anyone waits. */
                        for (uint32_t s = 0; s < seqs; s++) {
                                int r = run->o.policy == POL_SPARSE ? sparse_prepare(cl, &cl->seqs[s], l, t, gl, n)
                                                                    : lru_prepare(cl, &cl->seqs[s], l, n);

                                if (r < 0)
                                        return -1;
                        }
                        for (uint32_t s = 0; s < seqs; s++)
                                if (attend_selected(cl, &cl->seqs[s], l, tail_valid, rec && s == 0, t) < 0)
                                        return -1;
                        break;
                }
                if (filled)
                        for (uint32_t s = 0; s < seqs; s++)
                                if (put_tail(cl, &cl->seqs[s], l, n, s == 0) < 0)
                                        return -1;
                t0 = bench_now_ns();
                compute_wait((uint64_t)run->o.compute_us * 1000);
                cl->res.compute_ns += bench_now_ns() - t0;
                if (filled)
                        for (uint32_t s = 0; s < seqs; s++)
                                if (wait_tail(cl, &cl->seqs[s], l) < 0)
                                        return -1;
        }
        return 0;
}

/* ---- accuracy, after the timed phase ----------------------------------- */

#define REF_CHUNK 64u   /* blocks per partial of the reference */

/*
 * Full attention over blocks 0..n (cl->ptrs, cl->valid) into ref: partials
 * of REF_CHUNK blocks merged in double, so that the reference's own fp32
 * rounding stays far below what is measured against it, even at 128K
 * tokens (one fp32 pass over them all is off by ~1e-4 there).
 */
static int reference(struct client *cl, uint32_t n, float *ref)
{
        const struct run *run = cl->run;

        for (uint32_t h = 0; h < run->m->q_heads; h++)
                cl->acc_lse[h] = -INFINITY;
        memset(cl->acc, 0, sizeof(double) * run->qd);
        for (uint32_t first = 0; first < n; first += REF_CHUNK) {
                uint32_t cnt = n - first < REF_CHUNK ? n - first : REF_CHUNK;

                if (kvk_full_attention(&run->shape, cl->q, cl->ptrs + first, cl->valid + first, cnt, cl->part,
                                       cl->plse) < 0)
                        return -1;
                merge(cl->acc, cl->acc_lse, cl->part, cl->plse, run->m->q_heads, run->m->head_dim);
        }
        for (size_t i = 0; i < run->qd; i++)
                ref[i] = (float)cl->acc[i];
        return 0;
}

static int accuracy(struct client *cl)
{
        const struct run *run = cl->run;
        size_t bb = run->block_bytes;
        float *ref = NULL, *mass = cl->scores;
        uint8_t *buf = NULL;
        int ret = -1;

        cl->res.mass_min = 1;
        if (cl->n_recs == 0)
                return 0;
        buf = malloc(bb * run->max_blocks);
        ref = malloc(sizeof(float) * run->qd);
        if (!buf || !ref) {
                child_fail(cl, "out of memory for the accuracy reference");
                goto out;
        }
        for (uint32_t l = 0; l < run->layers; l++) {
                bool built = false;

                for (uint32_t ri = 0; ri < cl->n_recs; ri++) {
                        const struct acc_rec *r = &cl->recs[ri];
                        uint32_t pos = run->prompt + r->step, n = pos / run->T;
                        double mr, tr, err;

                        if (r->layer != l)
                                continue;
                        if (!built) {   /* layer l in block layout, straight from the trace */
                                for (uint32_t b = 0; b < run->max_blocks; b++) {
                                        uint32_t end = (b + 1) * run->T;

                                        copy_tokens(run, l, b, b * run->T, end < run->m->tokens ? end : run->m->tokens,
                                                    buf + (size_t)b * bb);
                                }
                                built = true;
                        }
                        for (uint32_t b = 0; b <= n; b++) {
                                cl->ptrs[b] = buf + (size_t)b * bb;
                                cl->valid[b] = b < n ? run->T : pos % run->T + 1;
                        }
                        load_query(run, r->step, l, cl->q);
                        if (kvk_block_attention_mass(&run->shape, cl->q, cl->ptrs, cl->valid, n + 1, mass) < 0 ||
                            reference(cl, n + 1, ref) < 0) {
                                child_fail(cl, "reference attention failed");
                                goto out;
                        }
                        /* The tail is attended by every policy. */
                        memcpy(cl->sel2, r->sel, sizeof(uint32_t) * r->nsel);
                        cl->sel2[r->nsel] = n;
                        mr = kvb_mass_recall(mass, n + 1, cl->sel2, r->nsel + 1);
                        err = kvb_rel_l2_error(r->out, ref, run->qd);
                        if (mr < 0) {
                                child_fail(cl, "mass recall: %s", strerror((int)-mr));
                                goto out;
                        }
                        cl->res.acc_samples++;
                        cl->res.mass_sum += mr;
                        if (mr < cl->res.mass_min)
                                cl->res.mass_min = mr;
                        cl->res.err_sum += err;
                        if (!(err <= cl->res.err_max))  /* NaN sticks */
                                cl->res.err_max = err;
                        if (n > 0 && r->nsel > 0) {
                                tr = kvb_topk_recall(mass, n, r->sel, r->nsel, r->nsel);
                                if (tr < 0) {
                                        child_fail(cl, "top-k recall: %s", strerror((int)-tr));
                                        goto out;
                                }
                                cl->res.topk_sum += tr;
                                cl->res.topk_samples++;
                        }
                }
        }
        ret = 0;
out:
        free(buf);
        free(ref);
        return ret;
}

/* ---- client set-up ----------------------------------------------------- */

static int client_alloc(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t mb = run->max_blocks, scratch = mb > run->o.batch ? mb : run->o.batch, kmax = run->kmax ? run->kmax : 1;

        cl->summ = calloc((size_t)run->layers * mb * run->sum_floats, sizeof(float));
        cl->scores = calloc(mb + 1, sizeof(float));
        cl->q = calloc(run->qd, sizeof(float));
        cl->q0 = calloc(run->qd, sizeof(float));
        cl->out = calloc(run->qd, sizeof(float));
        cl->part = calloc(run->qd, sizeof(float));
        cl->acc = calloc(run->qd, sizeof(double));
        cl->acc_lse = calloc(run->m->q_heads, sizeof(double));
        cl->plse = calloc(run->m->q_heads, sizeof(float));
        cl->ptrs = calloc(scratch + 1, sizeof(*cl->ptrs));
        cl->valid = calloc(scratch + 1, sizeof(*cl->valid));
        cl->refs = calloc(scratch, sizeof(*cl->refs));
        cl->blkid = calloc(scratch, sizeof(*cl->blkid));
        cl->sel2 = calloc(scratch + 1, sizeof(*cl->sel2));
        cl->seqs = calloc(run->o.seqs, sizeof(*cl->seqs));
        cl->recs = calloc(run->acc_records ? run->acc_records : 1, sizeof(*cl->recs));
        cl->rec_sel = calloc((size_t)(run->acc_records ? run->acc_records : 1) * mb, sizeof(uint32_t));
        cl->rec_out = calloc((size_t)(run->acc_records ? run->acc_records : 1) * run->qd, sizeof(float));
        cl->lat = calloc(run->steps, sizeof(*cl->lat));
        if (!cl->summ || !cl->scores || !cl->q || !cl->q0 || !cl->out || !cl->part || !cl->acc || !cl->acc_lse || !cl->plse ||
            !cl->ptrs || !cl->valid || !cl->refs || !cl->blkid || !cl->sel2 || !cl->seqs || !cl->recs ||
            !cl->rec_sel || !cl->rec_out || !cl->lat)
                return -ENOMEM;
        for (uint32_t d = 0; d < MAX_DEPTH; d++)
                if (group_init(&cl->ring[d], run->o.batch) < 0)
                        return -ENOMEM;
        for (uint32_t s = 0; s < run->o.seqs; s++) {
                struct seqstate *sq = &cl->seqs[s];
                uint32_t per = run->policy_slots + run->layers;

                sq->slot0 = run->ring_slots + s * per;
                sq->tail0 = sq->slot0 + run->policy_slots;
                sq->put_id = calloc(run->layers, sizeof(*sq->put_id));
                sq->put_st = calloc(run->layers, 1);
                sq->sel = calloc(kmax, sizeof(uint32_t));
                sq->sel_slot = calloc(kmax, sizeof(uint32_t));
                sq->stamp = calloc(mb, sizeof(uint32_t));
                sq->where = calloc(mb, sizeof(uint32_t));
                if (!sq->put_id || !sq->put_st || !sq->sel || !sq->sel_slot || !sq->stamp || !sq->where ||
                    group_init(&sq->demand, kmax) < 0)
                        return -ENOMEM;
                if (run->o.policy == POL_SPARSE) {
                        sq->pred = calloc(kmax, sizeof(uint32_t));
                        for (int b = 0; b < 2; b++) {
                                sq->bank[b] = malloc(sizeof(uint32_t) * kmax);
                                if (!sq->bank[b] || group_init(&sq->pref[b], kmax) < 0)
                                        return -ENOMEM;
                                for (uint32_t j = 0; j < kmax; j++)
                                        sq->bank[b][j] = NONE;
                        }
                        if (!sq->pred)
                                return -ENOMEM;
                }
                if (run->o.policy == POL_LRU) {
                        uint32_t cap = run->policy_slots;

                        sq->map = malloc(sizeof(uint32_t) * run->layers * mb);
                        sq->ent = calloc(cap, sizeof(*sq->ent));
                        if (!sq->map || !sq->ent)
                                return -ENOMEM;
                        for (size_t i = 0; i < (size_t)run->layers * mb; i++)
                                sq->map[i] = NONE;
                        for (uint32_t e = 0; e < cap; e++)
                                sq->ent[e] = (struct lru_ent){ NONE, NONE, e ? e - 1 : NONE, e + 1 < cap ? e + 1 : NONE };
                        sq->head = 0;
                        sq->tail = cap - 1;
                }
        }
        return 0;
}

static void client_free(struct client *cl)
{
        const struct run *run = cl->run;

        for (uint32_t s = 0; cl->seqs && s < run->o.seqs; s++) {
                struct seqstate *sq = &cl->seqs[s];

                free(sq->put_id);
                free(sq->put_st);
                free(sq->sel);
                free(sq->sel_slot);
                free(sq->stamp);
                free(sq->where);
                group_free(&sq->demand);
                free(sq->pred);
                for (int b = 0; b < 2; b++) {
                        free(sq->bank[b]);
                        group_free(&sq->pref[b]);
                }
                free(sq->map);
                free(sq->ent);
        }
        for (uint32_t d = 0; d < MAX_DEPTH; d++)
                group_free(&cl->ring[d]);
        free(cl->seqs);
        free(cl->summ);
        free(cl->scores);
        free(cl->q);
        free(cl->q0);
        free(cl->out);
        free(cl->part);
        free(cl->acc);
        free(cl->acc_lse);
        free(cl->plse);
        free(cl->ptrs);
        free(cl->valid);
        free(cl->refs);
        free(cl->blkid);
        free(cl->sel2);
        free(cl->recs);
        free(cl->rec_sel);
        free(cl->rec_out);
        free(cl->lat);
        cl->pool = kvc_pool_free(cl->pool);
        cl->c = kvc_disconnect(cl->c);
}

static int client_setup(struct client *cl)
{
        const struct run *run = cl->run;
        uint64_t bb = 0;
        int r;

        if (client_alloc(cl) < 0)
                return child_fail(cl, "out of memory");
        r = kvc_connect(run->o.socket, "kvdrive-bench decode", &cl->c);
        if (r < 0)
                return child_fail(cl, "cannot reach kvdrived: %s", kvc_strerror(r));
        r = kvc_register_namespace(cl->c, run->ns_name, &run->g, &cl->ns, &bb);
        if (r < 0)
                return daemon_fail(cl, "register namespace", r);
        if (bb != run->block_bytes)
                return child_fail(cl, "namespace %s has %" PRIu64 "-byte blocks, not %" PRIu64, run->ns_name, bb,
                                  run->block_bytes);
        cl->max_items = kvc_max_items(cl->c);
        if (cl->max_items < run->o.batch)
                return child_fail(cl, "--batch %u is above the daemon's %u items per request", run->o.batch,
                                  cl->max_items);
        r = kvc_pool_create(cl->c, run->pool_slots, run->block_bytes, &cl->pool);
        if (r < 0)
                return daemon_fail(cl, "create the device pool", r);
        for (uint32_t s = 0; s < run->o.seqs; s++) {
                r = kvc_key_sequence_new(&cl->seqs[s].id);
                if (r < 0)
                        return child_fail(cl, "sequence id: %s", strerror(-r));
        }
        return 0;
}

static int send_all(int fd, const void *buf, size_t n)
{
        const uint8_t *p = buf;

        while (n) {
                ssize_t w = write(fd, p, n);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -1;
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

static int send_msg(struct client *cl, uint32_t type)
{
        cl->res.type = type;
        if (send_all(cl->up, &cl->res, sizeof(cl->res)) < 0)
                return child_fail(cl, "lost the parent: %s", strerror(errno));
        return 0;
}

static int wait_go(struct client *cl)
{
        char go;

        if (read(cl->down, &go, 1) != 1)
                return child_fail(cl, "lost the parent");
        return 0;
}

static void delete_all(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t stored = (run->prompt + run->steps) / run->T, max = cl->max_items ? cl->max_items : 1;
        struct kvc_key *keys = calloc(max, sizeof(*keys));

        for (uint32_t s = 0; keys && s < run->o.seqs; s++) {
                for (uint32_t first = 0; first < stored; first += max) {
                        uint32_t cnt = stored - first < max ? stored - first : max;

                        for (uint32_t i = 0; i < cnt; i++)
                                kvc_key_private(&cl->seqs[s].id, first + i, &keys[i]);
                        kvc_delete(cl->c, cl->ns, keys, cnt, -1);
                }
        }
        free(keys);
}

/* The body of one client process. Returns its exit status. */
static int client_main(struct client *cl)
{
        const struct run *run = cl->run;
        int ret = EXIT_FAILURE;

        if (client_setup(cl) < 0 || prefill(cl) < 0 || send_msg(cl, MSG_READY) < 0 || wait_go(cl) < 0)
                goto out;
        cl->res.start_ns = bench_now_ns();
        for (uint32_t t = 0; t < run->steps; t++) {
                uint64_t t0 = bench_now_ns();

                if (decode_step(cl, t) < 0)
                        goto out_delete;
                cl->lat[t] = bench_now_ns() - t0;
        }
        cl->res.end_ns = bench_now_ns();
        cl->res.steps = run->steps;
        cl->res.tokens = (uint64_t)run->steps * run->o.seqs;
        if (send_msg(cl, MSG_DONE) < 0 || wait_go(cl) < 0)
                goto out_delete;
        if (accuracy(cl) < 0)
                goto out_delete;
        cl->res.n_lat = run->steps;
        if (send_msg(cl, MSG_RESULT) < 0)
                goto out_delete;
        if (send_all(cl->up, cl->lat, sizeof(*cl->lat) * run->steps) < 0) {
                child_fail(cl, "lost the parent");
                goto out_delete;
        }
        ret = EXIT_SUCCESS;
out_delete:
        delete_all(cl);
out:
        client_free(cl);
        return ret;
}

/* ---- parent ----------------------------------------------------------- */

struct snap {
        bool ok, ssd;
        struct kvc_tier_stats host, ssd_t;
        uint64_t bytes_in, bytes_out, spec_promotions;
        char eviction[16];
};

static void take_snap(kvc_client *c, struct snap *ret)
{
        struct kvc_stats *s = NULL;

        memset(ret, 0, sizeof(*ret));
        if (!c || kvc_stats_get(c, &s) < 0)
                return;
        ret->ok = true;
        ret->bytes_in = s->bytes_in;
        ret->bytes_out = s->bytes_out;
        ret->spec_promotions = s->speculative_promotions;
        snprintf(ret->eviction, sizeof(ret->eviction), "%s", s->eviction);
        for (uint32_t i = 0; i < s->n_tiers; i++) {
                if (strcmp(s->tiers[i].name, "host") == 0)
                        ret->host = s->tiers[i];
                if (strcmp(s->tiers[i].name, "ssd") == 0) {
                        ret->ssd_t = s->tiers[i];
                        ret->ssd = true;
                }
        }
        kvc_stats_free(s);
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return remove(path);
}

static void run_free(struct run *run)
{
        run->tr = kvb_trace_close(run->tr);
        free(run->xmap);
        run->xmap = NULL;
}

static bool read_all(int fd, void *buf, size_t n)
{
        uint8_t *p = buf;

        while (n) {
                ssize_t r = read(fd, p, n);

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return false;
                p += r;
                n -= (size_t)r;
        }
        return true;
}

static bool read_msg(int fd, uint32_t type, struct child_result *m)
{
        return read_all(fd, m, sizeof(*m)) && m->type == type;
}

static json_t *jnum(double v)
{
        return isfinite(v) ? json_real(v) : json_null();
}

struct totals {
        uint64_t tokens, steps, got, put, prefill_blocks, hits, misses, sel_ns, wait_ns, attn_ns, compute_ns;
        uint64_t start, end, prefill_ns, acc, topk_n;
        double mass_sum, mass_min, topk_sum, err_sum, err_max;
        double *lat;
        size_t n_lat;
};

static void print_results(const struct run *run, const struct totals *tt, const struct snap *s0,
                          const struct snap *s1, const struct snap *s2)
{
        const struct decode_opts *o = &run->o;
        uint64_t bb = run->block_bytes, wall = tt->end - tt->start;
        double tps = kvb_rate(tt->tokens, wall), steps = tt->steps ? (double)tt->steps : 1;
        double p50 = kvb_percentile(tt->lat, tt->n_lat, 50) / 1e6, p99 = kvb_percentile(tt->lat, tt->n_lat, 99) / 1e6;
        double mean = kvb_mean(tt->lat, tt->n_lat) / 1e6;
        double dev = kvb_hit_rate(tt->hits, tt->misses);
        double host = s1->ok && s2->ok ? kvb_hit_rate(s2->host.hits - s1->host.hits, s2->host.misses - s1->host.misses)
                                       : NAN;
        double mass = tt->acc ? tt->mass_sum / (double)tt->acc : NAN;
        double topk = tt->topk_n ? tt->topk_sum / (double)tt->topk_n : NAN;
        double err = tt->acc ? tt->err_sum / (double)tt->acc : NAN;
        uint64_t ssd_read = s2->ssd_t.read_bytes - s1->ssd_t.read_bytes, ssd_write = s2->ssd_t.write_bytes - s1->ssd_t.write_bytes;
        uint64_t pre_ssd_write = s1->ssd_t.write_bytes - s0->ssd_t.write_bytes;
        uint32_t slots = run->policy_slots + run->layers + (o->policy == POL_FULL ? run->ring_slots : 0);

        if (o->json) {
                json_t *root = json_object();

                json_object_set_new(root, "bench", json_string("decode"));
                json_object_set_new(root, "schema", json_integer(JSON_SCHEMA));
                json_object_set_new(root, "config", json_pack(
                        "{s:s, s:s, s:s, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I,"
                        " s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                        "policy", policy_names[o->policy],
                        "predict", o->policy == POL_SPARSE ? predict_names[o->predict] : "none", "trace", run->gen_dir[0] ? "generated" : o->trace_dir,
                        "trace_generated", run->gen_dir[0] != 0, "namespace", run->ns_name,
                        "context_tokens", (json_int_t)run->prompt, "steps", (json_int_t)run->steps,
                        "layers", (json_int_t)run->layers, "kv_heads", (json_int_t)run->m->kv_heads,
                        "q_heads", (json_int_t)run->m->q_heads, "head_dim", (json_int_t)run->m->head_dim,
                        "block_tokens", (json_int_t)run->T, "block_bytes", (json_int_t)bb,
                        "clients", (json_int_t)o->clients, "seqs_per_client", (json_int_t)o->seqs,
                        "budget", o->budget, "topk", run->topk, "topk_blocks_max", (json_int_t)run->kmax,
                        "sink_blocks", (json_int_t)o->sink, "local_blocks", (json_int_t)o->local,
                        "compute_us", (json_int_t)o->compute_us, "accuracy_every", (json_int_t)o->acc_every,
                        "batch", (json_int_t)o->batch, "depth", (json_int_t)o->depth,
                        "kv_bytes_per_seq", (json_int_t)((uint64_t)run->prompt / run->T * run->layers * bb),
                        "budget_slots_per_seq", (json_int_t)run->budget_slots,
                        "device_slots_per_seq", (json_int_t)slots));
                json_object_set_new(root, "throughput", json_pack("{s:I, s:f, s:o, s:o, s:o, s:o, s:f}",
                        "tokens", (json_int_t)tt->tokens, "decode_seconds", (double)wall / 1e9,
                        "tokens_per_s", jnum(tps), "step_ms_p50", jnum(p50), "step_ms_p99", jnum(p99),
                        "step_ms_mean", jnum(mean), "prefill_seconds", (double)tt->prefill_ns / 1e9));
                json_object_set_new(root, "time_ms_per_step", json_pack("{s:f, s:f, s:f, s:f}",
                        "select", (double)tt->sel_ns / steps / 1e6, "io_wait", (double)tt->wait_ns / steps / 1e6,
                        "attention", (double)tt->attn_ns / steps / 1e6, "compute", (double)tt->compute_ns / steps / 1e6));
                json_object_set_new(root, "bytes", json_pack("{s:I, s:I, s:o, s:o, s:I, s:o, s:o}",
                        "host_to_device", (json_int_t)(tt->got * bb), "device_to_host", (json_int_t)(tt->put * bb),
                        "ssd_to_host", s2->ssd ? json_integer((json_int_t)ssd_read) : json_null(),
                        "host_to_ssd", s2->ssd ? json_integer((json_int_t)ssd_write) : json_null(),
                        "prefill_device_to_host", (json_int_t)(tt->prefill_blocks * bb),
                        "prefill_host_to_ssd", s1->ssd ? json_integer((json_int_t)pre_ssd_write) : json_null(),
                        "daemon_bytes_out", s1->ok && s2->ok ? json_integer((json_int_t)(s2->bytes_out - s1->bytes_out))
                                                             : json_null()));
                json_object_set_new(root, "hit_rates", json_pack("{s:o, s:o, s:o}",
                        "device_cache", jnum(o->policy == POL_LRU ? dev : NAN),
                        "prefetch", jnum(o->policy == POL_SPARSE ? dev : NAN), "host_tier", jnum(host)));
                json_object_set_new(root, "accuracy", json_pack("{s:I, s:o, s:o, s:o, s:o, s:o}",
                        "samples", (json_int_t)tt->acc, "mass_recall_mean", jnum(mass),
                        "mass_recall_min", jnum(tt->acc ? tt->mass_min : NAN), "topk_recall_mean", jnum(topk),
                        "rel_l2_error_mean", jnum(err), "rel_l2_error_max", jnum(tt->acc ? tt->err_max : NAN)));
                json_object_set_new(root, "daemon", json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:I}",
                        "ssd_tier", s2->ssd, "eviction", s2->eviction,
                        "host_capacity_bytes", (json_int_t)s2->host.capacity_bytes,
                        "ssd_capacity_bytes", (json_int_t)s2->ssd_t.capacity_bytes,
                        "ssd_promotions", (json_int_t)(s2->ssd_t.promotions - s1->ssd_t.promotions),
                        "speculative_promotions", (json_int_t)(s2->spec_promotions - s1->spec_promotions),
                        "ssd_demotions", (json_int_t)(s2->ssd_t.demotions - s1->ssd_t.demotions)));
                json_dumpf(root, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
                putchar('\n');
                json_decref(root);
                return;
        }
        printf("decode: policy %s, %u clients x %u seqs, context %u tokens, %u layers, %u kv heads x %u (q heads %u), "
               "%u-token blocks of %" PRIu64 " KiB\n",
               policy_names[o->policy], o->clients, o->seqs, run->prompt, run->layers, run->m->kv_heads,
               run->m->head_dim, run->m->q_heads, run->T, bb >> 10);
        printf("  budget %.3g (%u slots/seq), top-k %.3g (up to %u blocks/layer), sink %u, local %u, compute %u us/layer\n",
               o->budget, run->budget_slots, run->topk, run->kmax, o->sink, o->local, o->compute_us);
        printf("  %-26s %.1f (%" PRIu64 " tokens in %.2f s; prefill %.2f s)\n", "tokens/s", tps, tt->tokens,
               (double)wall / 1e9, (double)tt->prefill_ns / 1e9);
        printf("  %-26s p50 %.2f  p99 %.2f  mean %.2f\n", "step latency (ms)", p50, p99, mean);
        printf("  %-26s select %.2f  io wait %.2f  attention %.2f  compute %.2f\n", "time per step (ms)",
               (double)tt->sel_ns / steps / 1e6, (double)tt->wait_ns / steps / 1e6, (double)tt->attn_ns / steps / 1e6,
               (double)tt->compute_ns / steps / 1e6);
        printf("  %-26s host->device %.1f  device->host %.1f  ssd->host %.1f  host->ssd %.1f\n", "MiB moved (decode)",
               (double)(tt->got * bb) / 1048576.0, (double)(tt->put * bb) / 1048576.0, (double)ssd_read / 1048576.0,
               (double)ssd_write / 1048576.0);
        if (o->policy == POL_FULL)
                printf("  %-26s host tier %.3f\n", "hit rates", host);
        else
                printf("  %-26s %s %.3f  host tier %.3f\n", "hit rates",
                       o->policy == POL_SPARSE ? "prefetch" : "device cache", dev, host);
        printf("  %-26s mass recall %.4f (min %.4f)  top-k recall %.4f  rel L2 error %.3g (max %.3g)  [%" PRIu64
               " samples]\n", "accuracy", mass, tt->acc ? tt->mass_min : NAN, topk, err, tt->acc ? tt->err_max : NAN,
               tt->acc);
        if (!s2->ssd)
                printf("  note: the daemon has no SSD tier\n");
}

/*
 * Forks the clients and drives them: prefill, barrier, decode, barrier,
 * accuracy. Returns 0 with *tt filled, or -1 when a client failed (it
 * said why).
 */
static int run_clients(struct run *run, struct totals *tt, struct snap *s1, struct snap *s2)
{
        unsigned n = run->o.clients, started = 0;
        pid_t pids[MAX_CLIENTS];
        int up[MAX_CLIENTS], down[MAX_CLIENTS], ret = -1;
        kvc_client *c = NULL;
        struct child_result m;

        fflush(NULL);
        for (; started < n; started++) {
                int to_parent[2], to_child[2];

                if (pipe2(to_parent, O_CLOEXEC) < 0)
                        goto err;
                if (pipe2(to_child, O_CLOEXEC) < 0) {
                        close(to_parent[0]);
                        close(to_parent[1]);
                        goto err;
                }
                pids[started] = fork();
                if (pids[started] < 0) {
                        close(to_parent[0]);
                        close(to_parent[1]);
                        close(to_child[0]);
                        close(to_child[1]);
                        goto err;
                }
                if (pids[started] == 0) {
                        struct client cl = { .run = run, .idx = started, .up = to_parent[1], .down = to_child[0] };
                        int status;

                        prctl(PR_SET_PDEATHSIG, SIGKILL);
                        for (unsigned i = 0; i < started; i++) {
                                close(up[i]);
                                close(down[i]);
                        }
                        close(to_parent[0]);
                        close(to_child[1]);
                        status = client_main(&cl);
                        close(cl.up);
                        close(cl.down);
                        run_free(run);
                        exit(status);
                }
                close(to_parent[1]);
                close(to_child[0]);
                up[started] = to_parent[0];
                down[started] = to_child[1];
        }
        kvc_connect(run->o.socket, "kvdrive-bench decode (stats)", &c);
        memset(tt, 0, sizeof(*tt));
        tt->mass_min = 1;
        tt->start = UINT64_MAX;
        for (unsigned i = 0; i < n; i++) {
                if (!read_msg(up[i], MSG_READY, &m))
                        goto err_client;
                tt->prefill_ns = m.prefill_ns > tt->prefill_ns ? m.prefill_ns : tt->prefill_ns;
        }
        take_snap(c, s1);
        for (unsigned i = 0; i < n; i++)
                if (write(down[i], "g", 1) != 1)
                        goto err_client;
        for (unsigned i = 0; i < n; i++) {
                if (!read_msg(up[i], MSG_DONE, &m))
                        goto err_client;
                tt->start = m.start_ns < tt->start ? m.start_ns : tt->start;
                tt->end = m.end_ns > tt->end ? m.end_ns : tt->end;
        }
        take_snap(c, s2);
        for (unsigned i = 0; i < n; i++)
                if (write(down[i], "g", 1) != 1)
                        goto err_client;
        tt->lat = calloc((size_t)n * run->steps, sizeof(double));
        if (!tt->lat)
                goto err_client;
        for (unsigned i = 0; i < n; i++) {
                uint64_t *lat;

                if (!read_msg(up[i], MSG_RESULT, &m) || m.n_lat != run->steps)
                        goto err_client;
                lat = calloc(m.n_lat, sizeof(*lat));
                if (!lat || !read_all(up[i], lat, sizeof(*lat) * m.n_lat)) {
                        free(lat);
                        goto err_client;
                }
                for (uint32_t j = 0; j < m.n_lat; j++)
                        tt->lat[tt->n_lat++] = (double)lat[j];
                free(lat);
                tt->tokens += m.tokens;
                tt->steps += m.steps;
                tt->got += m.got_blocks;
                tt->put += m.put_blocks;
                tt->prefill_blocks += m.prefill_blocks;
                tt->hits += m.dev_hits;
                tt->misses += m.dev_misses;
                tt->sel_ns += m.select_ns;
                tt->wait_ns += m.wait_ns;
                tt->attn_ns += m.attn_ns;
                tt->compute_ns += m.compute_ns;
                tt->acc += m.acc_samples;
                tt->topk_n += m.topk_samples;
                tt->mass_sum += m.mass_sum;
                tt->topk_sum += m.topk_sum;
                tt->err_sum += m.err_sum;
                if (m.acc_samples && m.mass_min < tt->mass_min)
                        tt->mass_min = m.mass_min;
                if (m.acc_samples && !(m.err_max <= tt->err_max))
                        tt->err_max = m.err_max;
        }
        ret = 0;
        goto out;
err:
        fprintf(stderr, "kvdrive-bench decode: starting client %u: %s\n", started, strerror(errno));
        goto out;
err_client:
        fprintf(stderr, "kvdrive-bench decode: a client failed (see above); stopping the others\n");
        for (unsigned i = 0; i < started; i++)
                kill(pids[i], SIGTERM);
out:
        for (unsigned i = 0; i < started; i++) {
                int st;

                close(up[i]);
                close(down[i]);
                while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
                        ;
                if (ret == 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
                        fprintf(stderr, "kvdrive-bench decode: client %u ended badly (status 0x%x)\n", i, (unsigned)st);
                        ret = -1;
                }
        }
        kvc_disconnect(c);
        return ret;
}

/* ---- options and the run's shape --------------------------------------- */

static int parse_frac(const char *s, double *ret)
{
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end || !(v > 0 && v <= 1))
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse(int argc, char **argv, struct decode_opts *o)
{
        enum { O_SINK = 256, O_LOCAL, O_BT, O_CUS, O_STEPS, O_ACC, O_BATCH, O_DEPTH, O_TOKENS, O_LAYERS, O_GSTEPS,
               O_SEED, O_NS, O_PRED };
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },        { "policy", required_argument, NULL, 'p' },
                { "trace", required_argument, NULL, 't' },         { "clients", required_argument, NULL, 'c' },
                { "seqs", required_argument, NULL, 'n' },          { "budget", required_argument, NULL, 'b' },
                { "topk", required_argument, NULL, 'k' },          { "sink-blocks", required_argument, NULL, O_SINK },
                { "local-blocks", required_argument, NULL, O_LOCAL }, { "block-tokens", required_argument, NULL, O_BT },
                { "compute-us", required_argument, NULL, O_CUS },  { "steps", required_argument, NULL, O_STEPS },
                { "accuracy-every", required_argument, NULL, O_ACC }, { "batch", required_argument, NULL, O_BATCH },
                { "depth", required_argument, NULL, O_DEPTH },     { "tokens", required_argument, NULL, O_TOKENS },
                { "layers", required_argument, NULL, O_LAYERS },   { "gen-steps", required_argument, NULL, O_GSTEPS },
                { "seed", required_argument, NULL, O_SEED },       { "namespace", required_argument, NULL, O_NS },
                { "predict", required_argument, NULL, O_PRED },
                { "json", no_argument, NULL, 'j' },                { "help", no_argument, NULL, 'h' },
                {},
        };
        /* Integer options: where each goes and its range. */
        struct { int opt; const char *name; uint32_t *dst; uint64_t min, max; } ints[] = {
                { 'c', "clients", &o->clients, 1, MAX_CLIENTS },
                { 'n', "seqs", &o->seqs, 1, MAX_SEQS },
                { O_SINK, "sink-blocks", &o->sink, 0, 1u << 20 },
                { O_LOCAL, "local-blocks", &o->local, 0, 1u << 20 },
                { O_BT, "block-tokens", &o->block_tokens, 1, 4096 },
                { O_CUS, "compute-us", &o->compute_us, 0, 1000000 },
                { O_STEPS, "steps", &o->steps, 1, 1u << 24 },
                { O_ACC, "accuracy-every", &o->acc_every, 0, 1u << 24 },
                { O_BATCH, "batch", &o->batch, 1, 2048 },
                { O_DEPTH, "depth", &o->depth, 1, MAX_DEPTH },
                { O_TOKENS, "tokens", &o->gen_tokens, 1, 1u << 24 },
                { O_LAYERS, "layers", &o->gen_layers, 1, 256 },
                { O_GSTEPS, "gen-steps", &o->gen_steps, 1, 1u << 20 },
        };
        int c;

        *o = (struct decode_opts){
                .policy = POL_FULL, .clients = 1, .seqs = 1, .budget = 0.1, .sink = 1, .local = 2,
                .block_tokens = 16, .compute_us = 200, .acc_every = 4, .batch = 32, .depth = 8,
                .gen_tokens = 32768, .gen_layers = 4, .gen_steps = 64, .seed = 1,
        };
        while ((c = getopt_long(argc, argv, "s:p:t:c:n:b:k:jh", opts, NULL)) != -1) {
                bool done = false;

                for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
                        uint64_t v;

                        if (ints[i].opt != c)
                                continue;
                        if (bench_parse_uint(optarg, ints[i].min, ints[i].max, &v) < 0) {
                                fprintf(stderr, "kvdrive-bench decode: bad --%s '%s' (%" PRIu64 "-%" PRIu64 ")\n",
                                        ints[i].name, optarg, ints[i].min, ints[i].max);
                                return -EINVAL;
                        }
                        *ints[i].dst = (uint32_t)v;
                        done = true;
                }
                if (done)
                        continue;
                switch (c) {
                case 's': o->socket = optarg; break;
                case 't': o->trace_dir = optarg; break;
                case O_NS: o->ns_name = optarg; break;
                case 'j': o->json = true; break;
                case 'p':
                        for (c = 0; c < 3 && strcmp(optarg, policy_names[c]) != 0; c++)
                                ;
                        if (c == 3) {
                                fprintf(stderr, "kvdrive-bench decode: unknown --policy '%s' (full, sparse, lru)\n", optarg);
                                return -EINVAL;
                        }
                        o->policy = (enum policy)c;
                        break;
                case O_PRED:
                        if (strcmp(optarg, "mapped") == 0)
                                o->predict = PRED_MAPPED;
                        else if (strcmp(optarg, "raw") == 0)
                                o->predict = PRED_RAW;
                        else {
                                fprintf(stderr, "kvdrive-bench decode: unknown --predict '%s' (mapped, raw)\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'b':
                case 'k':
                        if (parse_frac(optarg, c == 'b' ? &o->budget : &o->topk) < 0) {
                                fprintf(stderr, "kvdrive-bench decode: bad --%s '%s' (a fraction in (0, 1])\n",
                                        c == 'b' ? "budget" : "topk", optarg);
                                return -EINVAL;
                        }
                        break;
                case O_SEED: {
                        uint64_t v;

                        if (bench_parse_uint(optarg, 0, UINT64_MAX, &v) < 0) {
                                fprintf(stderr, "kvdrive-bench decode: bad --seed '%s'\n", optarg);
                                return -EINVAL;
                        }
                        o->seed = v;
                        break;
                }
                case 'h': usage(stdout); return 1;
                default: usage(stderr); return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kvdrive-bench decode: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
}

static int generate(struct run *run)
{
        struct kvb_gen_opts g = kvb_gen_opts_default();
        const char *tmp = getenv("TMPDIR");
        char err[512];
        int r;

        snprintf(run->gen_dir, sizeof(run->gen_dir), "%s/kvdrive-bench-decode-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(run->gen_dir)) {
                fprintf(stderr, "kvdrive-bench decode: mkdtemp %s: %s\n", run->gen_dir, strerror(errno));
                run->gen_dir[0] = '\0';
                return -1;
        }
        g.shape = (struct kvb_trace_meta){
                .layers = run->o.gen_layers, .kv_heads = 8, .q_heads = 32, .head_dim = 128,
                .tokens = run->o.gen_tokens + run->o.gen_steps, .steps = run->o.gen_steps,
        };
        g.seed = run->o.seed;
        if (!run->o.json)
                fprintf(stderr, "kvdrive-bench decode: generating a %u-token, %u-layer trace in %s\n",
                        g.shape.tokens, g.shape.layers, run->gen_dir);
        r = kvb_gen_check(&g, err, sizeof(err));
        if (r == 0)
                r = kvb_gen(&g, run->gen_dir, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench decode: generating the trace: %s\n", err);
                return -1;
        }
        return 0;
}

/* Checks the trace against the options and sizes everything. */
static int plan(struct run *run)
{
        const struct decode_opts *o = &run->o;
        const struct kvb_trace_meta *m = run->m;
        uint32_t stored_max;

        run->T = o->block_tokens;
        run->layers = m->layers;
        run->prompt = m->tokens - m->steps;
        run->steps = o->steps && o->steps < m->steps ? o->steps : m->steps;
        if (o->steps > m->steps)
                fprintf(stderr, "kvdrive-bench decode: the trace has %u steps; running %u\n", m->steps, run->steps);
        run->shape = (struct kvk_shape){ m->kv_heads, m->q_heads, m->head_dim, run->T, KVK_F16 };
        if (!kvk_shape_valid(&run->shape)) {
                fprintf(stderr, "kvdrive-bench decode: the kernels do not take this geometry (kv_heads %u, q_heads %u, "
                        "head_dim %u, block_tokens %u)\n", m->kv_heads, m->q_heads, m->head_dim, run->T);
                return -1;
        }
        run->g = (struct kvc_geometry){ m->layers, m->kv_heads, m->head_dim, KVC_DTYPE_F16, run->T };
        run->block_bytes = kvc_block_bytes(&run->g);
        run->sum_floats = kvk_summary_floats(&run->shape);
        run->qd = (size_t)m->q_heads * m->head_dim;
        run->max_blocks = (m->tokens + run->T - 1) / run->T;
        run->topk = o->topk > 0 ? o->topk : o->budget;
        stored_max = (run->prompt + run->steps - 1) / run->T;
        run->kmax = stored_max;         /* no cap while computing the cap */
        run->kmax = k_of(run, stored_max);
        run->budget_slots = (uint32_t)ceil(o->budget * run->layers * run->max_blocks - 1e-9);
        if (run->budget_slots < 1)
                run->budget_slots = 1;
        switch (o->policy) {
        case POL_FULL:
                run->policy_slots = 0;
                run->ring_slots = o->depth * o->batch;
                break;
        case POL_SPARSE:
                run->policy_slots = 2 * (run->kmax ? run->kmax : 1);
                if (run->policy_slots > run->budget_slots)
                        fprintf(stderr, "kvdrive-bench decode: note: sparse needs %u slots (2 x top-k), above the "
                                "budget's %u\n", run->policy_slots, run->budget_slots);
                break;
        case POL_LRU:
                run->policy_slots = run->budget_slots > run->kmax ? run->budget_slots : run->kmax;
                if (run->kmax > run->budget_slots)
                        fprintf(stderr, "kvdrive-bench decode: note: lru's cache is top-k (%u slots), above the "
                                "budget's %u\n", run->kmax, run->budget_slots);
                break;
        }
        run->pool_slots = run->ring_slots + o->seqs * (run->policy_slots + run->layers);
        run->group_reqs = (MAX_INFLIGHT / o->seqs - 1) / 2;
        if (run->group_reqs < 1)
                run->group_reqs = 1;
        if (run->group_reqs > MAX_GROUP)
                run->group_reqs = MAX_GROUP;
        run->acc_records = o->acc_every ? ((run->steps + o->acc_every - 1) / o->acc_every) * run->layers : 0;
        if (o->ns_name)
                snprintf(run->ns_name, sizeof(run->ns_name), "%s", o->ns_name);
        else
                snprintf(run->ns_name, sizeof(run->ns_name), "kvdrive-bench-decode-L%u-H%u-D%u-T%u-f16", m->layers,
                         m->kv_heads, m->head_dim, run->T);
        return 0;
}

/* Before forking: the daemon answers and takes the namespace. */
static int preflight(struct run *run, struct snap *s0)
{
        kvc_client *c = NULL;
        uint32_t ns;
        int r;

        r = kvc_connect(run->o.socket, "kvdrive-bench decode", &c);
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench decode: cannot reach kvdrived: %s\n", kvc_strerror(r));
                return -1;
        }
        r = kvc_register_namespace(c, run->ns_name, &run->g, &ns, NULL);
        if (r == -KVC_E_NS_CONFLICT)
                fprintf(stderr, "kvdrive-bench decode: namespace '%s' exists with another geometry than the trace's "
                        "(%u layers, %u kv heads x %u, %u-token blocks): pick another with --namespace\n",
                        run->ns_name, run->g.layers, run->g.kv_heads, run->g.head_dim, run->g.block_tokens);
        else if (r < 0)
                fprintf(stderr, "kvdrive-bench decode: register namespace '%s': %s: %s\n", run->ns_name,
                        kvc_strerror(r), kvc_last_error(c));
        if (r == 0)
                take_snap(c, s0);
        kvc_disconnect(c);
        return r < 0 ? -1 : 0;
}

int bench_decode(int argc, char **argv)
{
        struct run run = { 0 };
        struct snap s0, s1, s2;
        struct totals tt = { 0 };
        char err[512];
        int r, ret = EXIT_FAILURE;

        r = parse(argc, argv, &run.o);
        if (r != 0)
                return r > 0 ? EXIT_SUCCESS : BENCH_EXIT_USAGE;
        if (!run.o.trace_dir && generate(&run) < 0)
                goto out;
        r = kvb_trace_open(run.gen_dir[0] ? run.gen_dir : run.o.trace_dir, &run.tr, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench decode: trace %s: %s\n", run.gen_dir[0] ? run.gen_dir : run.o.trace_dir,
                        err);
                goto out;
        }
        run.m = &run.tr->meta;
        if (plan(&run) < 0 || preflight(&run, &s0) < 0)
                goto out;
        if (run.o.policy == POL_SPARSE && run.o.predict == PRED_MAPPED && run.layers > 1) {
                r = calibrate(&run);
                if (r < 0) {
                        fprintf(stderr, "kvdrive-bench decode: fitting the layer-to-layer maps: %s\n", strerror(-r));
                        goto out;
                }
        }
        if (run_clients(&run, &tt, &s1, &s2) < 0)
                goto out;
        print_results(&run, &tt, &s0, &s1, &s2);
        ret = EXIT_SUCCESS;
out:
        free(tt.lat);
        run_free(&run);
        if (run.gen_dir[0])
                nftw(run.gen_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        return ret;
}

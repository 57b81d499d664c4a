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
 * Devices (--device, decode-device.h): the pool and the kernels are the
 * CPU's (a memfd pool, kernels.h) or a GPU's (GPU memory shared with the
 * daemon through CUDA IPC, kernels-cuda.h); the policies are the same code
 * on both and call the device's ops, never a kernel.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "decode.h"
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

static const char *const policy_names[] = { "full", "sparse", "lru", "kvdrive" };
static const struct decode_policy *const policies[] = { &decode_full, &decode_sparse, &decode_lru, &decode_kvdrive };
static const char *const predict_names[] = { "mapped", "raw" };
static const char *const device_names[] = { "cpu", "cuda" };
static const struct decode_device *const devices[] = { &decode_device_cpu, &decode_device_cuda };

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench decode [options]\n\n"
                "Long-context decoding with the KV cache in kvdrived (host DRAM, then SSD): per step\n"
                "and layer, choose blocks, make them resident in device slots, attend, append.\n"
                "Measures tokens/s, step latency, bytes per tier link, hit rates, and accuracy\n"
                "against full attention over the same trace. Run it against a daemon with an SSD\n"
                "tier and a host tier smaller than the KV (e.g. --host-bytes 64M --ssd-dir D\n"
                "--ssd-bytes 4G): the default workload's 128 MiB of KV then spills to SSD.\n\n"
                "  -s, --socket PATH        daemon socket (default: $KVDRIVE_SOCKET or the system one)\n"
                "  -p, --policy NAME        full (FlexGen-style, every block every step), sparse\n"
                "                           (InfiniGen-style, next layer's top-k prefetched), lru\n"
                "                           (top-k through an LRU device cache), kvdrive (a device cache\n"
                "                           by attention score, misses fetched while the hits are\n"
                "                           attended, likely newcomers staged SSD -> host) [kvdrive]\n"
                "  -d, --device NAME        where the device pool and the kernels are: cpu (a memfd pool,\n"
                "                           the C kernels) or cuda (GPU memory registered with the daemon,\n"
                "                           the CUDA kernels; exits 77 at once where no GPU can run\n"
                "                           them) [cpu]\n"
                "  -t, --trace DIR          decode trace (docs/trace-format.md); default: generate one\n"
                "                           with `kvdrive-bench gen`'s defaults into a temporary dir\n"
                "      --tokens N           generated trace: context (prompt) tokens [8192]\n"
                "      --layers N           generated trace: layers [4] (8 kv heads x 128, 32 q heads)\n"
                "      --gen-steps N        generated trace: decode steps [32]\n"
                "      --seed N             generated trace: seed [1]\n"
                "  -c, --clients N          client processes [1]\n"
                "  -n, --seqs N             sequences per client, decoded as one batch [1]\n"
                "  -b, --budget F           device slots per sequence as a fraction of its KV blocks\n"
                "                           (all layers) [0.1]: lru's cache size\n"
                "  -k, --topk F             fraction of a layer's blocks attended per step [= budget]\n"
                "      --method M           how blocks are summarised and scored: quest, quest-heads,\n"
                "                           rope-bound, mean, gauss, hybrid (kernels.h) [quest: on\n"
                "                           a CPU, at this trace's recall, the cheapest]\n"
                "      --predict HOW        sparse: layer l+1's speculative query is layer l's query\n"
                "                           mapped into layer l+1's key space by a least-squares fit\n"
                "                           over the prompt's keys (mapped), or as it is (raw) [mapped]\n"
                "      --stage F            kvdrive: stage into the daemon's host memory the blocks\n"
                "                           ranked just below the top-k, up to F x top-k per layer\n"
                "                           (the scheduler's depth decides within that; 0: off) [0]\n"
                "      --stage-layer F      kvdrive: at layer l, stage layer l+1's predicted top-k\n"
                "                           (--predict) that is not resident, up to F x top-k [0]\n"
                "      --no-scores          kvdrive: do not report attention scores to the daemon\n"
                "      --one-pass           kvdrive: wait for the misses, then attend in one pass,\n"
                "                           on every layer (the two-pass rule off)\n"
                "      --mass-target F      kvdrive: a dynamic budget, blocks until their estimated\n"
                "                           mass reaches F, at most the top-k (needs a --method that\n"
                "                           scores masses: any but quest)\n"
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
        uint64_t tokens, steps, got, put, prefill_blocks, hits, misses, staged, miss_layers, hidden_layers, two_pass, sel_ns, wait_ns, attn_ns, compute_ns;
        uint64_t start, end, prefill_ns, acc, topk_n;
        double mass_sum, mass_min, topk_sum, err_sum, err_max, oracle_sum;
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
        double oracle = tt->acc ? tt->oracle_sum / (double)tt->acc : NAN;
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
                        "{s:s, s:s, s:s, s:s, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I,"
                        " s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                        "policy", policy_names[o->policy], "device", device_names[o->device],
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
                json_object_set_new(json_object_get(root, "config"), "method",
                                    json_string(kvk_method_name(o->method)));
                json_object_set_new(json_object_get(root, "config"), "mass_target", json_real(o->mass_target));
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
                        "device_cache", jnum(o->policy == POL_LRU || o->policy == POL_KVDRIVE ? dev : NAN),
                        "prefetch", jnum(o->policy == POL_SPARSE ? dev : NAN), "host_tier", jnum(host)));
                json_object_set_new(root, "accuracy", json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o}",
                        "samples", (json_int_t)tt->acc, "mass_recall_mean", jnum(mass),
                        "mass_recall_oracle", jnum(oracle),
                        "mass_recall_min", jnum(tt->acc ? tt->mass_min : NAN), "topk_recall_mean", jnum(topk),
                        "rel_l2_error_mean", jnum(err), "rel_l2_error_max", jnum(tt->acc ? tt->err_max : NAN)));
                json_object_set_new(root, "pipeline", json_pack("{s:I, s:I, s:I, s:I}",
                        "staged_blocks", (json_int_t)tt->staged, "miss_layers", (json_int_t)tt->miss_layers,
                        "hidden_layers", (json_int_t)tt->hidden_layers, "two_pass_layers", (json_int_t)tt->two_pass));
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
        printf("decode: policy %s%s%s, %u clients x %u seqs, context %u tokens, %u layers, %u kv heads x %u (q heads %u), "
               "%u-token blocks of %" PRIu64 " KiB\n",
               policy_names[o->policy], o->device != DEV_CPU ? " on " : "",
               o->device != DEV_CPU ? device_names[o->device] : "", o->clients, o->seqs, run->prompt, run->layers, run->m->kv_heads,
               run->m->head_dim, run->m->q_heads, run->T, bb >> 10);
        printf("  budget %.3g (%u slots/seq), top-k %.3g (up to %u blocks/layer) by %s, sink %u, local %u, compute %u "
               "us/layer\n", o->budget, run->budget_slots, run->topk, run->kmax, kvk_method_name(o->method), o->sink,
               o->local, o->compute_us);
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
        if (o->policy == POL_KVDRIVE)
                printf("  %-26s %.1f MiB staged SSD -> host ahead of demand (%.1f blocks per layer); misses landed "
                       "behind the hits' attention in %.0f%% of layers with misses, %.0f%% of which were attended in two passes\n", "prediction, overlap",
                       (double)(tt->staged * bb) / 1048576.0,
                       tt->steps ? (double)tt->staged / ((double)tt->steps * run->layers) : 0.0,
                       tt->miss_layers ? 100.0 * (double)tt->hidden_layers / (double)tt->miss_layers : 0.0,
                       tt->miss_layers ? 100.0 * (double)tt->two_pass / (double)tt->miss_layers : 0.0);
        printf("  %-26s mass recall %.4f (min %.4f; best selection of that size %.4f)  top-k recall %.4f  rel L2 "
               "error %.3g (max %.3g)  [%" PRIu64 " samples]\n", "accuracy", mass, tt->acc ? tt->mass_min : NAN,
               oracle, topk, err, tt->acc ? tt->err_max : NAN, tt->acc);
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
                tt->staged += m.staged_blocks;
                tt->miss_layers += m.miss_layers;
                tt->hidden_layers += m.hidden_layers;
                tt->two_pass += m.two_pass_layers;
                tt->sel_ns += m.select_ns;
                tt->wait_ns += m.wait_ns;
                tt->attn_ns += m.attn_ns;
                tt->compute_ns += m.compute_ns;
                tt->acc += m.acc_samples;
                tt->topk_n += m.topk_samples;
                tt->mass_sum += m.mass_sum;
                tt->oracle_sum += m.oracle_sum;
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
               O_SEED, O_NS, O_PRED, O_STAGE, O_STAGE_LAYER, O_NOSCORES, O_ONE_PASS, O_METHOD, O_MASS };
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },        { "policy", required_argument, NULL, 'p' },
                { "device", required_argument, NULL, 'd' },
                { "trace", required_argument, NULL, 't' },         { "clients", required_argument, NULL, 'c' },
                { "seqs", required_argument, NULL, 'n' },          { "budget", required_argument, NULL, 'b' },
                { "topk", required_argument, NULL, 'k' },          { "sink-blocks", required_argument, NULL, O_SINK },
                { "local-blocks", required_argument, NULL, O_LOCAL }, { "block-tokens", required_argument, NULL, O_BT },
                { "compute-us", required_argument, NULL, O_CUS },  { "steps", required_argument, NULL, O_STEPS },
                { "accuracy-every", required_argument, NULL, O_ACC }, { "batch", required_argument, NULL, O_BATCH },
                { "depth", required_argument, NULL, O_DEPTH },     { "tokens", required_argument, NULL, O_TOKENS },
                { "layers", required_argument, NULL, O_LAYERS },   { "gen-steps", required_argument, NULL, O_GSTEPS },
                { "seed", required_argument, NULL, O_SEED },       { "namespace", required_argument, NULL, O_NS },
                { "predict", required_argument, NULL, O_PRED },    { "stage", required_argument, NULL, O_STAGE },
                { "no-scores", no_argument, NULL, O_NOSCORES },    { "stage-layer", required_argument, NULL, O_STAGE_LAYER },
                { "one-pass", no_argument, NULL, O_ONE_PASS },
                { "method", required_argument, NULL, O_METHOD },
                { "mass-target", required_argument, NULL, O_MASS },
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
                .policy = POL_KVDRIVE, .clients = 1, .seqs = 1, .budget = 0.1, .sink = 1, .local = 2,
                .block_tokens = 16, .compute_us = 200, .acc_every = 4, .batch = 32, .depth = 8,
                .gen_tokens = 8192, .gen_layers = 4, .gen_steps = 32, .seed = 1,
                .stage = 0, .report_scores = true, .method = KVK_QUEST,
        };
        while ((c = getopt_long(argc, argv, "s:p:d:t:c:n:b:k:jh", opts, NULL)) != -1) {
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
                case O_NOSCORES: o->report_scores = false; break;
                case O_ONE_PASS: o->one_pass = true; break;
                case O_STAGE:
                case O_STAGE_LAYER: {
                        double *dst = c == O_STAGE ? &o->stage : &o->stage_layer;
                        char *end;

                        errno = 0;
                        *dst = strtod(optarg, &end);
                        if (errno || end == optarg || *end || !(*dst >= 0 && *dst <= 4)) {
                                fprintf(stderr, "kvdrive-bench decode: bad --%s '%s' (0 to 4)\n",
                                        c == O_STAGE ? "stage" : "stage-layer", optarg);
                                return -EINVAL;
                        }
                        break;
                }
                case 'p':
                        for (c = 0; c < (int)(sizeof(policy_names) / sizeof(policy_names[0])) &&
                                    strcmp(optarg, policy_names[c]) != 0;
                             c++)
                                ;
                        if (c == (int)(sizeof(policy_names) / sizeof(policy_names[0]))) {
                                fprintf(stderr, "kvdrive-bench decode: unknown --policy '%s' (full, sparse, lru, kvdrive)\n", optarg);
                                return -EINVAL;
                        }
                        o->policy = (enum policy)c;
                        break;
                case 'd':
                        for (c = 0; c < (int)(sizeof(device_names) / sizeof(device_names[0])) &&
                                    strcmp(optarg, device_names[c]) != 0;
                             c++)
                                ;
                        if (c == (int)(sizeof(device_names) / sizeof(device_names[0]))) {
                                fprintf(stderr, "kvdrive-bench decode: unknown --device '%s' (cpu, cuda)\n", optarg);
                                return -EINVAL;
                        }
                        o->device = (enum device)c;
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
                case O_MASS:
                        if (parse_frac(optarg, &o->mass_target) < 0) {
                                fprintf(stderr, "kvdrive-bench decode: bad --mass-target '%s' (a fraction in (0, 1])\n",
                                        optarg);
                                return -EINVAL;
                        }
                        break;
                case O_METHOD:
                        c = kvk_method_from_name(optarg);
                        if (c < 0) {
                                fprintf(stderr, "kvdrive-bench decode: unknown --method '%s' (quest, quest-heads, "
                                                "rope-bound, mean, gauss, hybrid)\n", optarg);
                                return -EINVAL;
                        }
                        o->method = (enum kvk_method)c;
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
        if (o->mass_target > 0 && (o->policy != POL_KVDRIVE || o->method == KVK_QUEST)) {
                fprintf(stderr, "kvdrive-bench decode: --mass-target is kvdrive's (--policy kvdrive), with a --method "
                                "that scores masses (not quest)\n");
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
        run->sum_floats = kvk_method_summary_floats(&run->shape, o->method);
        run->qd = (size_t)m->q_heads * m->head_dim;
        run->max_blocks = (m->tokens + run->T - 1) / run->T;
        run->topk = o->topk > 0 ? o->topk : o->budget;
        stored_max = (run->prompt + run->steps - 1) / run->T;
        run->kmax = stored_max;         /* no cap while computing the cap */
        run->kmax = k_of(run, stored_max);
        run->budget_slots = (uint32_t)ceil(o->budget * run->layers * run->max_blocks - 1e-9);
        if (run->budget_slots < 1)
                run->budget_slots = 1;
        run->pol->size(run);
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

/* Whether the daemon answers (says why not). */
static bool reachable(const struct decode_opts *o)
{
        kvc_client *c = NULL;
        int r = kvc_connect(o->socket, "kvdrive-bench decode (check)", &c);

        if (r < 0)
                fprintf(stderr, "kvdrive-bench decode: cannot reach kvdrived: %s (start one, or give --socket)\n",
                        kvc_strerror(r));
        kvc_disconnect(c);
        return r == 0;
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
        /* Before anything that takes time or touches the daemon. */
        run.dev = devices[run.o.device];
        if (run.dev->probe() < 0)
                return BENCH_EXIT_NODEV;
        /* The daemon before generating a trace, which takes seconds (a
         * trace given is checked first: that is quick). */
        if (!run.o.trace_dir && (!reachable(&run.o) || generate(&run) < 0))
                goto out;
        r = kvb_trace_open(run.gen_dir[0] ? run.gen_dir : run.o.trace_dir, &run.tr, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench decode: trace %s: %s\n", run.gen_dir[0] ? run.gen_dir : run.o.trace_dir,
                        err);
                goto out;
        }
        run.m = &run.tr->meta;
        run.pol = policies[run.o.policy];
        if (plan(&run) < 0 || preflight(&run, &s0) < 0)
                goto out;
        if (run.pol->predicts && run.pol->predicts(&run.o) && run.layers > 1) {
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

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench remote: Get of shared blocks that only the remote tier (a
 * Redis Cluster) holds, beside redis-benchmark GETting values of the same
 * size from the same cluster at the same concurrency, in the same run.
 *
 * It starts (or, with --seeds, uses) a cluster and two daemons of its own,
 * "machine A" and "machine B", each with its temporary directory and socket
 * and the cluster as remote tier. Per block size, A and B register the same
 * namespace (geometry and fingerprint); A stores N shared blocks (prefix-chain
 * keys, KVC_PUT_SHARED) and the benchmark waits until A's stats say all N
 * were written to the cluster. B then Gets them, in an untimed pass that
 * checks every byte, and R timed rounds. Before each pass, B deletes the
 * blocks from its own host tier (a Delete does not reach the cluster), so
 * every Get falls through to the cluster; each round must raise B's
 * remote.hits by exactly N and spot-checks a sample of blocks byte for byte.
 *
 * The anchor: redis-benchmark --cluster -t get against the same cluster, its
 * value size the daemon's value size (slot header + payload, as B's per-node
 * stats measured it in the checked pass), N requests over N keys (N/M per
 * master: redis-benchmark gives each master one key tag), loaded with -t set
 * until every key is there, with M connections (one per master, as the
 * daemon has) and ceil(D/M) commands pipelined on each (the daemon has D
 * GETs in flight spread over its M connections). Its requests/s times the
 * block size is the payload it moved per second; INFO keyspace_hits and
 * keyspace_misses around each round say that its GETs found their values.
 *
 * Rounds interleave the two (alternating which goes first). GiB/s are 2^30
 * bytes of block payload per second; the ratio is the median of per-round
 * ratios. Each pass also records the CPU time of every party: B, the client
 * (us), redis-benchmark, and the masters (INFO used_cpu_*). The cluster, the
 * daemons and the temporary directory go at the end; a watchdog process
 * removes them if we die first (SIGINT, SIGKILL). docs/bench/remote.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "remote.h"
#include "watchdog.h"

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench remote [options]\n\n"
                "Get of shared blocks only the remote tier (a Redis Cluster) has, on a second daemon,\n"
                "beside redis-benchmark GETting values of the same size from the same cluster.\n\n"
                "  -S, --seeds LIST          an existing cluster (HOST:PORT,...); default: start one\n"
                "                            with tools/redis-cluster and stop it at the end\n"
                "  -C, --redis-cluster PATH  tools/redis-cluster (default: $KVDRIVE_REDIS_CLUSTER,\n"
                "                            else the source tree's)\n"
                "  -k, --kvdrived PATH       kvdrived (default: $KVDRIVED, else the build tree's,\n"
                "                            else the one on PATH)\n"
                "  -z, --block-bytes LIST    block sizes, multiples of 4K up to 8M (default 64K,1M)\n"
                "  -n, --blocks N            blocks per size (default: 2 GiB of blocks per size)\n"
                "  -d, --depth D             blocks in flight from the client (default 32)\n"
                "  -B, --batch N             blocks per Get request; divides D (default 8)\n"
                "  -r, --repeat R            timed rounds, interleaved; medians (default 5, at most %d)\n"
                "  -T, --rb-threads N        redis-benchmark --threads (default 1: one thread drives\n"
                "                            every connection, as the daemon's remote thread does)\n"
                "  -j, --json                print one JSON object\n"
                "  -h, --help                this help\n\n"
                "With --seeds, the cluster keeps what the run wrote: kvd:1:* blocks (TTL 1 h) and\n"
                "redis-benchmark's key:{tag}:* keys. GiB/s are 2^30 bytes of block payload per second.\n",
                MAX_REPEAT);
}

/* ---- blocks -------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Block i's bytes: differ per block and per run, so that a block served
 * under another key, or left from another run, cannot pass. */
static void fill(void *p, uint64_t bytes, uint64_t seed, uint64_t i)
{
        uint64_t *w = p, x = seed ^ (i * 0xd1b54a32d192ed03ull);

        for (uint64_t k = 0; k < bytes / 8; k++)
                w[k] = splitmix(&x);
}

/* One block size's namespace on both machines, its keys and its pattern. */
struct set {
        uint64_t size, seed;
        uint32_t n, ns_a, ns_b;
        bool on_a, on_b;                /* registered there */
        struct kvc_key *keys;
};

static int set_open(struct bench *b, struct set *s, uint64_t size, uint32_t n)
{
        const struct kvc_geometry g = { 1, 8, 128, KVC_DTYPE_F16, (uint32_t)(size / BLOCK_UNIT) };
        struct kvc_key seq, parent;
        uint8_t fp[24];
        char name[64], sz[32];
        struct kvc_ns_opts o = {
                .size = sizeof(o), .name = name, .geometry = &g, .fingerprint = fp, .fingerprint_len = sizeof(fp),
        };
        uint64_t bb = 0;
        int r;

        memset(s, 0, sizeof(*s));
        s->size = size;
        s->n = n;
        s->keys = calloc(n, sizeof(*s->keys));
        if (!s->keys)
                return -ENOMEM;
        r = kvc_key_sequence_new(&seq);
        if (r < 0)
                return r;
        s->seed = seq.hi ^ seq.lo;
        /* A fingerprint of this run's: its keys are none an earlier run of
         * this benchmark left in the cluster. */
        memcpy(fp, &seq, 16);
        memcpy(fp + 16, &size, 8);
        snprintf(name, sizeof(name), "bench-remote-%s", bench_format_size(sz, sizeof(sz), size));
        r = kvc_register_namespace_opts(b->a.c, &o, &s->ns_a, &bb);
        s->on_a = r == 0;
        if (r == 0)
                r = kvc_register_namespace_opts(b->b.c, &o, &s->ns_b, NULL);
        s->on_b = s->on_a && r == 0;
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench: register namespace %s: %s\n", name, kvc_strerror(r));
                return r;
        }
        if (bb != size) {
                fprintf(stderr, "kvdrive-bench: namespace %s has %" PRIu64 "-byte blocks\n", name, bb);
                return -EINVAL;
        }
        /* Prefix-chain keys, as an engine's prefix blocks have. */
        for (uint32_t i = 0; i < n; i++) {
                uint32_t tokens[4] = { (uint32_t)seq.lo, (uint32_t)(seq.lo >> 32), (uint32_t)seq.hi, i };

                kvc_key_chain(i ? &parent : NULL, tokens, 4, &s->keys[i]);
                parent = s->keys[i];
        }
        return 0;
}

static void set_close(struct set *s)
{
        free(s->keys);
        s->keys = NULL;
}

/* Deletes the set's blocks from a machine's own tiers (not the cluster's);
 * the number deleted, or a negative error. */
static int64_t delete_all(kvc_client *c, uint32_t ns, const struct set *s)
{
        uint32_t max = kvc_max_items(c);
        int64_t deleted = 0;

        for (uint32_t i = 0; i < s->n; i += max) {
                int r = kvc_delete(c, ns, s->keys + i, s->n - i < max ? s->n - i : max, -1);

                if (r < 0)
                        return r;
                deleted += r;
        }
        return deleted;
}

/* Waits until A's remote tier has ended `want` writes since w0 (written,
 * skipped or failed); -EIO if any was not written. */
static int wait_writes(kvc_client *a, const struct remote_snap *w0, uint64_t want)
{
        struct remote_snap s;

        for (uint64_t t0 = bench_now_ns();;) {
                int r = remote_snap(a, &s);

                if (r < 0)
                        return r;
                if (s.write_skips > w0->write_skips || s.errors > w0->errors) {
                        fprintf(stderr, "kvdrive-bench: machine A skipped %" PRIu64 " and failed %" PRIu64
                                " remote writes (%s)\n", s.write_skips - w0->write_skips, s.errors - w0->errors,
                                s.condition);
                        return -EIO;
                }
                if (s.writes - w0->writes >= want)
                        return 0;
                if (bench_now_ns() - t0 > (uint64_t)WAIT_MS * 1000000u) {
                        fprintf(stderr, "kvdrive-bench: machine A wrote %" PRIu64 " of %" PRIu64 " blocks to the "
                                "cluster in %d s\n", s.writes - w0->writes, want, WAIT_MS / 1000);
                        return -ETIMEDOUT;
                }
                remote_sleep_ms(1);
        }
}

/* A stores the set as shared blocks, and they all reach the cluster. */
static int store(struct bench *b, const struct set *s)
{
        struct kvc_block_ref refs[PUT_BATCH];
        uint8_t st[PUT_BATCH];
        struct remote_snap w0;
        kvc_pool *pool = NULL;
        int r;

        r = remote_snap(b->a.c, &w0);
        if (r == 0)
                r = kvc_pool_create(b->a.c, PUT_BATCH, s->size, &pool);
        for (uint32_t first = 0; r >= 0 && first < s->n; first += PUT_BATCH) {
                uint32_t k = s->n - first < PUT_BATCH ? s->n - first : PUT_BATCH;
                uint64_t id;

                for (uint32_t j = 0; j < k; j++) {
                        fill(kvc_pool_slot(pool, j), s->size, s->seed, first + j);
                        refs[j] = (struct kvc_block_ref){ .key = s->keys[first + j], .layer = 0, .slot = j };
                }
                r = kvc_put_submit_flags(b->a.c, s->ns_a, pool, refs, k, KVC_PUT_SHARED, st, &id);
                if (r >= 0)
                        r = kvc_wait(b->a.c, id, WAIT_MS);
                if (r >= 0 && (uint32_t)r != k) {
                        fprintf(stderr, "kvdrive-bench: %u of %u shared Puts on machine A failed (status %u)\n",
                                k - (uint32_t)r, k, st[0]);
                        r = -EIO;
                }
                /* Its writes to the cluster before the next batch's:
                 * pacing, so that none is skipped for being over
                 * remote-max-inflight-bytes. */
                if (r >= 0)
                        r = wait_writes(b->a.c, &w0, first + k);
        }
        kvc_pool_free(pool);
        return r < 0 ? r : 0;
}

/* ---- the measurements ------------------------------------------------------------ */

/* What B's Gets check: every block (the untimed pass), or the sample. */
struct check {
        bool all;
        const uint32_t *sample;         /* ascending */
        void *const *expect;            /* the sample's bytes */
        uint32_t n_sample;
        void *scratch;                  /* a block, for all */
};

static int check_block(const struct set *s, const struct check *ck, uint32_t *cursor, uint32_t i, const void *got)
{
        const void *want = NULL;

        if (ck->all) {
                fill(ck->scratch, s->size, s->seed, i);
                want = ck->scratch;
        } else {
                while (*cursor < ck->n_sample && ck->sample[*cursor] < i)
                        (*cursor)++;
                if (*cursor < ck->n_sample && ck->sample[*cursor] == i)
                        want = ck->expect[*cursor];
        }
        if (want && memcmp(want, got, s->size) != 0) {
                fprintf(stderr, "kvdrive-bench: block %u came back from the remote tier different from what A "
                        "stored\n", i);
                return -EIO;
        }
        return 0;
}

/* B Gets every block of the set with KVC_GET_SHARED, `depth` in flight in
 * requests of `batch`, waiting on the oldest. Seconds from the first submit
 * to the last reply, or a negative error (a miss is one). */
static double get_all(struct bench *b, const struct set *s, kvc_pool *pool, const struct check *ck)
{
        uint32_t batch = (uint32_t)b->o.batch, reqs = (uint32_t)(b->o.depth / b->o.batch), next = 0, done = 0,
                 cursor = 0;
        uint64_t *ids = calloc(reqs, sizeof(*ids)), t0, t1;
        uint32_t *start = calloc(reqs, sizeof(*start)), *count = calloc(reqs, sizeof(*count));
        struct kvc_block_ref *refs = calloc(batch, sizeof(*refs));
        uint8_t *st = calloc(b->o.depth, 1);
        double ret = -ENOMEM;

        if (!ids || !start || !count || !refs || !st)
                goto out;
        t0 = bench_now_ns();
        for (uint32_t k = 0; done < s->n; k++) {
                uint32_t w = k % reqs;
                int r;

                if (ids[w]) {
                        r = kvc_wait(b->b.c, ids[w], WAIT_MS);
                        ids[w] = 0;
                        if (r != (int)count[w]) {
                                uint32_t j = 0;

                                while (j + 1 < count[w] && st[w * batch + j] == KVC_ITEM_OK)
                                        j++;
                                fprintf(stderr, "kvdrive-bench: machine B's Get of blocks %u+%u: %s (block %u: "
                                        "status %u)\n", start[w], count[w],
                                        r < 0 ? kvc_strerror(r) : "not all loaded", start[w] + j,
                                        st[w * batch + j]);
                                ret = -EIO;
                                goto out;
                        }
                        for (uint32_t j = 0; j < count[w]; j++)
                                if (check_block(s, ck, &cursor, start[w] + j,
                                                kvc_pool_slot(pool, w * batch + j)) < 0) {
                                        ret = -EIO;
                                        goto out;
                                }
                        done += count[w];
                }
                if (next < s->n) {
                        count[w] = s->n - next < batch ? s->n - next : batch;
                        start[w] = next;
                        for (uint32_t j = 0; j < count[w]; j++)
                                refs[j] = (struct kvc_block_ref){ .key = s->keys[next + j], .layer = 0,
                                                                  .slot = w * batch + j };
                        next += count[w];
                        r = kvc_get_submit_flags(b->b.c, s->ns_b, pool, refs, count[w], KVC_GET_SHARED,
                                                 st + w * batch, &ids[w]);
                        if (r < 0) {
                                fprintf(stderr, "kvdrive-bench: Get submit: %s\n", kvc_strerror(r));
                                ret = r;
                                goto out;
                        }
                }
        }
        t1 = bench_now_ns();
        ret = (double)(t1 - t0) / 1e9;
out:
        free(ids);
        free(start);
        free(count);
        free(refs);
        free(st);
        return ret;
}

/* B's remote figures once its per-node ones (copied out by its remote
 * thread every 20 ms) have caught up with the tier's own hits. */
static int settled_snap(kvc_client *c, const struct remote_snap *s0, struct remote_snap *ret)
{
        int r = 0;

        for (int i = 0; i < 1000; i++) {
                r = remote_snap(c, ret);
                if (r < 0 || ret->node_hits - s0->node_hits >= ret->hits - s0->hits)
                        return r;
                remote_sleep_ms(2);
        }
        return r;
}

/* One pass of B's Gets, from a host tier without the set's blocks: seconds,
 * and B's remote figures around it. */
static double kvdrive_pass(struct bench *b, const struct set *s, kvc_pool *pool, const struct check *ck,
                           struct remote_snap *s0, struct remote_snap *s1, double *ret_cpu)
{
        int64_t left = delete_all(b->b.c, s->ns_b, s);
        double secs, d0, c0;
        int r;

        if (left < 0)
                return (double)left;
        r = remote_snap(b->b.c, s0);
        if (r < 0)
                return r;
        d0 = proc_cpu_s(b->b.pid);
        c0 = self_cpu_s();
        secs = get_all(b, s, pool, ck);
        if (secs < 0)
                return secs;
        ret_cpu[0] = proc_cpu_s(b->b.pid) - d0;
        ret_cpu[1] = self_cpu_s() - c0;
        r = settled_snap(b->b.c, s0, s1);
        if (r < 0)
                return r;
        if (s1->hits - s0->hits != s->n || s1->misses != s0->misses || s1->crc_failures != s0->crc_failures) {
                fprintf(stderr, "kvdrive-bench: machine B's %u Gets made %" PRIu64 " remote hits, %" PRIu64
                        " misses, %" PRIu64 " crc failures: not all came from the remote tier\n", s->n,
                        s1->hits - s0->hits, s1->misses - s0->misses, s1->crc_failures - s0->crc_failures);
                return -EIO;
        }
        return secs;
}

/* Requests B's nodes answered between s0 and s1 (each is in the latency
 * histogram once). */
static uint64_t hist_count(const struct remote_snap *s0, const struct remote_snap *s1)
{
        uint64_t total = 0;

        for (int k = 0; k < KVC_LOOP_BUCKETS; k++)
                total += s1->node_hist[k] - s0->node_hist[k];
        return total;
}

/* The upper bound (us) of the bucket holding the q-quantile of the
 * latency histogram between s0 and s1. */
static uint64_t hist_quantile(const struct remote_snap *s0, const struct remote_snap *s1, double q)
{
        uint64_t total = hist_count(s0, s1), acc = 0;

        for (int k = 0; k < KVC_LOOP_BUCKETS; k++) {
                acc += s1->node_hist[k] - s0->node_hist[k];
                if (total && (double)acc >= q * (double)total)
                        return 1ull << k;
        }
        return 0;
}

/* redis-benchmark's command line for row w: -t set or -t get. */
struct rb_cmd {
        char n[24], r[24], d[24], c[8], p[8], t[8];
        const char *argv[24];
};

static void rb_cmd_make(const struct bench *b, const struct row *w, bool set, struct rb_cmd *rc)
{
        const char *argv[] = { remote_env_or("REDIS_BENCHMARK", "redis-benchmark"), "--cluster", "-h", b->masters[0].host,
                               "-p", b->masters[0].port, "-t", set ? "set" : "get", "-n", rc->n, "-r", rc->r, "-d",
                               rc->d, "-c", rc->c, "-P", rc->p, "--threads", rc->t, "--csv", NULL };

        _Static_assert(sizeof(argv) <= sizeof(rc->argv), "rb_cmd.argv");
        snprintf(rc->n, sizeof(rc->n), "%" PRIu64, w->blocks);
        snprintf(rc->r, sizeof(rc->r), "%" PRIu64, w->rb_keys);
        snprintf(rc->d, sizeof(rc->d), "%" PRIu64, w->value_bytes);
        snprintf(rc->c, sizeof(rc->c), "%u", b->n_masters);
        snprintf(rc->p, sizeof(rc->p), "%u", w->rb_pipeline);
        snprintf(rc->t, sizeof(rc->t), "%" PRIu64, b->o.rb_threads);
        memcpy(rc->argv, argv, sizeof(argv));
}

static void rb_cmd_text(const struct rb_cmd *rc, char *buf, size_t size)
{
        size_t len = 0;

        buf[0] = '\0';
        for (size_t k = 0; rc->argv[k] && len + 1 < size; k++)
                len += (size_t)snprintf(buf + len, size - len, "%s%s", k ? " " : "", rc->argv[k]);
}

/* Runs redis-benchmark; its requests/s and average latency (ms) from its
 * CSV line for the test. */
static int rb_run(const struct rb_cmd *rc, const char *test, double *ret_rps, double *ret_avg_ms, double *ret_cpu_s)
{
        char out[8192], want[16];
        const char *line;
        int r = run_cmd_cpu(rc->argv, out, sizeof(out), CMD_TIMEOUT_S, ret_cpu_s);

        if (r != 0) {
                fprintf(stderr, "kvdrive-bench: redis-benchmark -t %s: %s\n", test,
                        r < 0 ? strerror(-r) : "failed (its stderr is above)");
                return -EIO;
        }
        snprintf(want, sizeof(want), "\"%s\",\"", test);
        line = strstr(out, want);
        if (!line || sscanf(line + strlen(want), "%lf\",\"%lf\"", ret_rps, ret_avg_ms) != 2 || *ret_rps <= 0) {
                fprintf(stderr, "kvdrive-bench: no \"%s\" line in redis-benchmark's output:\n%s\n", test, out);
                return -EPROTO;
        }
        return 0;
}

/* redis-benchmark -t set passes until every master holds its rb_keys keys. */
static int rb_load(const struct bench *b, struct row *w)
{
        struct rb_cmd rc;
        double rps, avg;

        rb_cmd_make(b, w, true, &rc);
        for (w->load_passes = 1; w->load_passes <= LOAD_PASSES; w->load_passes++) {
                bool full = true;
                int r = rb_run(&rc, "SET", &rps, &avg, NULL);

                if (r < 0)
                        return r;
                for (unsigned m = 0; m < b->n_masters && full; m++) {
                        int64_t k = count_rb_keys(b, m);

                        if (k < 0)
                                return (int)k;
                        full = (uint64_t)k >= w->rb_keys;
                }
                if (full)
                        return 0;
        }
        fprintf(stderr, "kvdrive-bench: %d redis-benchmark SET passes left keys missing\n", LOAD_PASSES);
        return -EIO;
}

/* The masters' figures around a round: INFO's default sections. */
enum { I_HITS, I_MISSES, I_CPU_SYS, I_CPU_USER, I_N };

static int masters_figures(const struct bench *b, double *ret)
{
        static const char *const names[I_N] = { "keyspace_hits", "keyspace_misses", "used_cpu_sys",
                                                "used_cpu_user" };

        return masters_info(b, NULL, names, I_N, ret);
}

/* One redis-benchmark GET round: GiB/s of payload, the share of its GETs
 * that found a value (INFO keyspace_hits/misses around it), CPU seconds of
 * redis-benchmark and of the masters. */
static int rb_pass(const struct bench *b, const struct row *w, double *ret_gibps, double *ret_hit_rate,
                   double *ret_avg_ms, double *ret_cpu)
{
        double i0[I_N], i1[I_N], rps, hits, misses;
        struct rb_cmd rc;
        int r;

        rb_cmd_make(b, w, false, &rc);
        r = masters_figures(b, i0);
        if (r == 0)
                r = rb_run(&rc, "GET", &rps, ret_avg_ms, &ret_cpu[0]);
        if (r == 0)
                r = masters_figures(b, i1);
        if (r < 0)
                return r;
        *ret_gibps = rps * (double)w->size / (double)(1ull << 30);
        hits = i1[I_HITS] - i0[I_HITS];
        misses = i1[I_MISSES] - i0[I_MISSES];
        *ret_hit_rate = hits + misses > 0 ? hits / (hits + misses) : 0;
        ret_cpu[1] = (i1[I_CPU_SYS] + i1[I_CPU_USER]) - (i0[I_CPU_SYS] + i0[I_CPU_USER]);
        return 0;
}

/* A timed kvdrive round: w's figures for round rep. */
static int kvdrive_round(struct bench *b, const struct set *s, kvc_pool *pool, const struct check *ck, struct row *w,
                         uint32_t rep)
{
        double i0[I_N], i1[I_N], cpu[2], secs, gib = (double)s->n * (double)s->size / (double)(1ull << 30);
        struct remote_snap s0, s1;
        int r = masters_figures(b, i0);

        if (r < 0)
                return r;
        secs = kvdrive_pass(b, s, pool, ck, &s0, &s1, cpu);
        if (secs < 0)
                return (int)secs;
        r = masters_figures(b, i1);
        if (r < 0)
                return r;
        w->kvd[rep] = gib / secs;
        w->lat_mean_us[rep] = (double)(s1.node_lat_sum - s0.node_lat_sum) / (double)(hist_count(&s0, &s1) ?: 1);
        w->lat_p99_us[rep] = hist_quantile(&s0, &s1, 0.99);
        w->kvd_cpu[0][rep] = cpu[0] / gib;
        w->kvd_cpu[1][rep] = cpu[1] / gib;
        w->kvd_cpu[2][rep] = ((i1[I_CPU_SYS] + i1[I_CPU_USER]) - (i0[I_CPU_SYS] + i0[I_CPU_USER])) / gib;
        return 0;
}

/* A redis-benchmark round: w's figures for round rep; -EIO if its GETs did
 * not all find their values (the comparison would not hold). */
static int rb_round(const struct bench *b, struct row *w, uint32_t rep)
{
        double hit, cpu[2], gib = (double)w->blocks * (double)w->size / (double)(1ull << 30);
        int r = rb_pass(b, w, &w->rb[rep], &hit, &w->rb_avg_ms[rep], cpu);

        if (r < 0)
                return r;
        w->rb_cpu[0][rep] = cpu[0] / gib;
        w->rb_cpu[1][rep] = cpu[1] / gib;
        if (hit < w->rb_hit_rate)
                w->rb_hit_rate = hit;
        if (hit < 0.999) {
                fprintf(stderr, "kvdrive-bench: only %.2f%% of redis-benchmark's GETs found a value (evicted? see "
                        "INFO stats evicted_keys)\n", hit * 100);
                return -EIO;
        }
        return 0;
}

static int flush_cluster(const struct bench *b)
{
        char out[256];

        for (unsigned m = 0; m < b->n_masters; m++)
                if (redis_cli(&b->masters[m], out, sizeof(out), "flushall", NULL) < 0)
                        return -EIO;
        return 0;
}

/* One block size: store on A, the checked pass on B, the rb load, then the
 * interleaved rounds. */
static int run_size(struct bench *b, size_t idx, struct row *w)
{
        uint64_t size = b->o.sizes[idx];
        uint32_t n = (uint32_t)b->blocks[idx], sample[SAMPLES + 1], n_sample = 0;
        void *expect[SAMPLES + 1] = { 0 };
        struct remote_snap s0, s1;
        struct set s = { 0 };
        kvc_pool *pool = NULL;
        struct check ck = { .all = true };
        double secs, cpu[2];
        char sz[32];
        int r;

        memset(w, 0, sizeof(*w));
        w->size = size;
        w->blocks = n;
        w->rb_hit_rate = 1.0;
        bench_format_size(sz, sizeof(sz), size);
        r = set_open(b, &s, size, n);
        if (r < 0)
                goto out;
        fprintf(stderr, "kvdrive-bench remote: %s: machine A stores %u shared blocks\n", sz, n);
        r = store(b, &s);
        if (r < 0)
                goto out;
        r = kvc_pool_create(b->b.c, (uint32_t)b->o.depth, size, &pool);
        ck.scratch = malloc(size);
        if (r < 0 || !ck.scratch) {
                r = r < 0 ? r : -ENOMEM;
                goto out;
        }
        /* Untimed: every byte checked, and the value's size measured. */
        fprintf(stderr, "kvdrive-bench remote: %s: machine B gets them all, every byte checked\n", sz);
        secs = kvdrive_pass(b, &s, pool, &ck, &s0, &s1, cpu);
        if (secs < 0) {
                r = (int)secs;
                goto out;
        }
        w->value_bytes = (s1.node_read_bytes - s0.node_read_bytes) / (s1.node_hits - s0.node_hits);
        if (w->value_bytes <= size) {
                fprintf(stderr, "kvdrive-bench: B's nodes report %" PRIu64 "-byte values for %s blocks\n",
                        w->value_bytes, sz);
                r = -EPROTO;
                goto out;
        }
        /* The timed rounds check a sample, its bytes made beforehand. */
        for (uint32_t j = 0; j < SAMPLES && j < n; j++)
                sample[n_sample++] = (uint32_t)((uint64_t)j * n / (n < SAMPLES ? n : SAMPLES));
        if (sample[n_sample - 1] != n - 1)
                sample[n_sample++] = n - 1;
        for (uint32_t j = 0; j < n_sample; j++) {
                expect[j] = malloc(size);
                if (!expect[j]) {
                        r = -ENOMEM;
                        goto out;
                }
                fill(expect[j], size, s.seed, sample[j]);
        }
        ck = (struct check){ .sample = sample, .expect = expect, .n_sample = n_sample, .scratch = ck.scratch };

        w->rb_keys = (n + b->n_masters - 1) / b->n_masters;
        w->rb_pipeline = (uint32_t)((b->o.depth + b->n_masters - 1) / b->n_masters);
        fprintf(stderr, "kvdrive-bench remote: %s: redis-benchmark SETs %" PRIu64 " keys of %" PRIu64
                " bytes on each of %u masters\n", sz, w->rb_keys, w->value_bytes, b->n_masters);
        r = rb_load(b, w);
        if (r < 0)
                goto out;

        for (uint32_t rep = 0; rep < b->o.repeat; rep++) {
                fprintf(stderr, "kvdrive-bench remote: %s: round %u of %" PRIu64 "\n", sz, rep + 1, b->o.repeat);
                /* Alternating who goes first: a slow spell of the machine
                 * hits both alike. */
                if (rep & 1)
                        r = rb_round(b, w, rep) ?: kvdrive_round(b, &s, pool, &ck, w, rep);
                else
                        r = kvdrive_round(b, &s, pool, &ck, w, rep) ?: rb_round(b, w, rep);
                if (r < 0)
                        goto out;
                w->ratio[rep] = w->kvd[rep] / w->rb[rep];
        }
        r = 0;
out:
        /* Neither machine keeps the set; the cluster does, unless ours. */
        if (s.on_a)
                kvc_drop_namespace(b->a.c, s.ns_a, NULL);
        if (s.on_b)
                kvc_drop_namespace(b->b.c, s.ns_b, NULL);
        if (r == 0 && b->cluster_dir[0])
                r = flush_cluster(b);
        for (uint32_t j = 0; j < n_sample; j++)
                free(expect[j]);
        free(ck.scratch);
        kvc_pool_free(pool);
        set_close(&s);
        return r;
}

/* ---- reporting ----------------------------------------------------------------------- */

static void stats3(const double *v, uint32_t n, double *med, double *lo, double *hi)
{
        double c[MAX_REPEAT];

        memcpy(c, v, sizeof(*v) * n);
        *med = bench_median(c, n);
        *lo = c[0];
        *hi = c[n - 1];
}

static json_t *runs_json(const double *v, uint32_t n)
{
        json_t *a = json_array();

        for (uint32_t i = 0; a && i < n; i++)
                json_array_append_new(a, json_real(v[i]));
        return a;
}

static void print_table(const struct bench *b, const struct row *rows)
{
        uint32_t n = (uint32_t)b->o.repeat;
        char sz[32];

        printf("remote: %u masters%s; machine B gets with %" PRIu64 " blocks in flight (requests of %" PRIu64
               "); medians [min-max] of %u rounds, GiB/s of block payload\n",
               b->n_masters, b->cluster_dir[0] ? " (ours, on loopback)" : "", b->o.depth, b->o.batch, n);
        printf("%-5s %7s %9s %21s %21s %18s %8s %7s %8s\n", "size", "blocks", "value B", "kvdrive GiB/s",
               "redis-bench GiB/s", "kvdrive/redis", "rb hits", "lat us", "p99 <us");
        for (size_t i = 0; i < b->o.n_sizes; i++) {
                const struct row *w = &rows[i];
                double km, kl, kh, rm, rl, rh, qm, ql, qh, lv[MAX_REPEAT], lat, p99;

                stats3(w->kvd, n, &km, &kl, &kh);
                stats3(w->rb, n, &rm, &rl, &rh);
                stats3(w->ratio, n, &qm, &ql, &qh);
                memcpy(lv, w->lat_mean_us, sizeof(lv));
                lat = bench_median(lv, n);
                for (uint32_t k = 0; k < n; k++)
                        lv[k] = (double)w->lat_p99_us[k];
                p99 = bench_median(lv, n);
                printf("%-5s %7" PRIu64 " %9" PRIu64 "  %5.2f [%5.2f-%5.2f]  %5.2f [%5.2f-%5.2f]  %4.2f [%4.2f-%4.2f]"
                       " %7.2f%% %7.0f %8.0f\n",
                       bench_format_size(sz, sizeof(sz), w->size), w->blocks, w->value_bytes, km, kl, kh, rm, rl, rh,
                       qm, ql, qh, w->rb_hit_rate * 100, lat, p99);
        }
        printf("CPU seconds per GiB moved, medians (cores: CPU s / wall s): kvdrive = daemon B + client + masters,"
               " redis-benchmark = itself + masters\n");
        printf("%-5s %9s %9s %9s %9s %6s   %9s %9s %9s %6s\n", "size", "B", "client", "masters", "total", "cores",
               "redis-b", "masters", "total", "cores");
        for (size_t i = 0; i < b->o.n_sizes; i++) {
                const struct row *w = &rows[i];
                double k[3], q[2], t[2], v[MAX_REPEAT];

                for (int j = 0; j < 3; j++) {
                        memcpy(v, w->kvd_cpu[j], sizeof(v));
                        k[j] = bench_median(v, n);
                }
                for (int j = 0; j < 2; j++) {
                        memcpy(v, w->rb_cpu[j], sizeof(v));
                        q[j] = bench_median(v, n);
                }
                memcpy(v, w->kvd, sizeof(v));
                t[0] = bench_median(v, n);
                memcpy(v, w->rb, sizeof(v));
                t[1] = bench_median(v, n);
                printf("%-5s %9.3f %9.3f %9.3f %9.3f %6.2f   %9.3f %9.3f %9.3f %6.2f\n",
                       bench_format_size(sz, sizeof(sz), w->size), k[0], k[1], k[2], k[0] + k[1] + k[2],
                       (k[0] + k[1] + k[2]) * t[0], q[0], q[1], q[0] + q[1], (q[0] + q[1]) * t[1]);
        }
        for (size_t i = 0; i < b->o.n_sizes; i++) {
                struct rb_cmd rc;
                char text[512];

                rb_cmd_make(b, &rows[i], false, &rc);
                rb_cmd_text(&rc, text, sizeof(text));
                printf("%s: %s\n", bench_format_size(sz, sizeof(sz), rows[i].size), text);
        }
}

static int print_json(const struct bench *b, const struct row *rows)
{
        uint32_t n = (uint32_t)b->o.repeat;
        json_t *jrows = json_array(), *root;
        int ret = -1;

        for (size_t i = 0; jrows && i < b->o.n_sizes; i++) {
                const struct row *w = &rows[i];
                double km, kl, kh, rm, rl, rh, qm, ql, qh, p99[MAX_REPEAT];
                struct rb_cmd rc;
                char text[512];

                rb_cmd_make(b, w, false, &rc);
                rb_cmd_text(&rc, text, sizeof(text));
                stats3(w->kvd, n, &km, &kl, &kh);
                stats3(w->rb, n, &rm, &rl, &rh);
                stats3(w->ratio, n, &qm, &ql, &qh);
                for (uint32_t k = 0; k < n; k++)
                        p99[k] = (double)w->lat_p99_us[k];
                json_array_append_new(
                        jrows,
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:{s:f, s:f, s:f, s:o}, s:{s:f, s:f, s:f, s:o},"
                                  " s:{s:f, s:f, s:f, s:o}, s:f, s:o, s:o, s:o}",
                                  "size", (json_int_t)w->size, "blocks", (json_int_t)w->blocks,
                                  "value_bytes", (json_int_t)w->value_bytes, "rb_keys_per_master",
                                  (json_int_t)w->rb_keys, "rb_pipeline", (json_int_t)w->rb_pipeline,
                                  "rb_load_passes", (json_int_t)w->load_passes, "rb_command", text,
                                  "kvdrive_gibps", "median", km, "min", kl, "max", kh, "runs", runs_json(w->kvd, n),
                                  "redis_benchmark_gibps", "median", rm, "min", rl, "max", rh, "runs",
                                  runs_json(w->rb, n),
                                  "ratio", "median", qm, "min", ql, "max", qh, "runs", runs_json(w->ratio, n),
                                  "rb_hit_rate_min", w->rb_hit_rate, "rb_avg_latency_ms_runs",
                                  runs_json(w->rb_avg_ms, n), "remote_latency_mean_us_runs",
                                  runs_json(w->lat_mean_us, n), "remote_latency_p99_bound_us_runs",
                                  runs_json(p99, n)));
                json_object_set_new(json_array_get(jrows, i), "cpu_s_per_gib_runs",
                                    json_pack("{s:o, s:o, s:o, s:o, s:o}", "kvdrive_daemon_b",
                                              runs_json(w->kvd_cpu[0], n), "kvdrive_client", runs_json(w->kvd_cpu[1], n),
                                              "kvdrive_masters", runs_json(w->kvd_cpu[2], n), "redis_benchmark",
                                              runs_json(w->rb_cpu[0], n), "redis_benchmark_masters",
                                              runs_json(w->rb_cpu[1], n)));
        }
        root = json_pack("{s:i, s:s, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "schema", JSON_SCHEMA, "command", "remote",
                         "own_cluster", b->cluster_dir[0] != '\0', "seeds", b->seeds, "masters",
                         (json_int_t)b->n_masters, "depth", (json_int_t)b->o.depth, "batch", (json_int_t)b->o.batch,
                         "repeat", (json_int_t)b->o.repeat, "rb_threads", (json_int_t)b->o.rb_threads, "rows", jrows);
        if (root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0 && putchar('\n') != EOF)
                ret = 0;
        json_decref(root);
        return ret;
}

/* ---- options, paths, main -------------------------------------------------------------- */

static int parse(int argc, char **argv, struct remote_opts *o)
{
        static const struct option opts[] = {
                { "seeds", required_argument, NULL, 'S' },      { "redis-cluster", required_argument, NULL, 'C' },
                { "kvdrived", required_argument, NULL, 'k' },   { "block-bytes", required_argument, NULL, 'z' },
                { "blocks", required_argument, NULL, 'n' },     { "depth", required_argument, NULL, 'd' },
                { "batch", required_argument, NULL, 'B' },      { "repeat", required_argument, NULL, 'r' },
                { "rb-threads", required_argument, NULL, 'T' }, { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },             {},
        };
        const char *sizes = "64K,1M";
        int c, err = 0;

        o->depth = 32;
        o->batch = 8;
        o->repeat = 5;
        o->rb_threads = 1;
        while ((c = getopt_long(argc, argv, "S:C:k:z:n:d:B:r:T:jh", opts, NULL)) != -1) {
                switch (c) {
                case 'S': o->seeds = optarg; break;
                case 'C': o->script = optarg; break;
                case 'k': o->kvdrived = optarg; break;
                case 'z': sizes = optarg; break;
                case 'n': err = bench_parse_uint(optarg, 1, UINT32_MAX, &o->blocks); break;
                case 'd': err = bench_parse_uint(optarg, 1, 4096, &o->depth); break;
                case 'B': err = bench_parse_uint(optarg, 1, 2048, &o->batch); break;
                case 'r': err = bench_parse_uint(optarg, 1, MAX_REPEAT, &o->repeat); break;
                case 'T': err = bench_parse_uint(optarg, 1, 64, &o->rb_threads); break;
                case 'j': o->json = true; break;
                case 'h': usage(stdout); return 1;
                default: usage(stderr); return -EINVAL;
                }
                if (err < 0) {
                        fprintf(stderr, "kvdrive-bench remote: bad value '%s' for -%c\n", optarg, c);
                        return -EINVAL;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "kvdrive-bench remote: unexpected '%s'\n", argv[optind]);
                return -EINVAL;
        }
        /* The requests in flight within the daemon's default
         * max-inflight-per-client. */
        if (o->depth % o->batch || o->depth / o->batch > 64) {
                fprintf(stderr, "kvdrive-bench remote: --batch %" PRIu64 " must divide --depth %" PRIu64
                        ", at most 64 times\n", o->batch, o->depth);
                return -EINVAL;
        }
        if (o->seeds && (!*o->seeds || strlen(o->seeds) >= sizeof(((struct bench *)0)->seeds))) {
                fprintf(stderr, "kvdrive-bench remote: bad --seeds\n");
                return -EINVAL;
        }
        if (bench_parse_sizes(sizes, &o->sizes, &o->n_sizes) < 0) {
                fprintf(stderr, "kvdrive-bench remote: bad --block-bytes '%s'\n", sizes);
                return -EINVAL;
        }
        for (size_t i = 0; i < o->n_sizes; i++)
                if (o->sizes[i] % BLOCK_UNIT || o->sizes[i] == 0 || o->sizes[i] > MAX_BLOCK) {
                        fprintf(stderr, "kvdrive-bench remote: block sizes are multiples of 4K up to 8M\n");
                        return -EINVAL;
                }
        return 0;
}

/* name as exec would find it (a path if it holds a '/', else on PATH). */
int bench_remote(int argc, char **argv)
{
        struct bench b = { .watchdog = -1, .a = { .name = "A" }, .b = { .name = "B" } };
        struct row *rows = NULL;
        int r, ret = EXIT_FAILURE;

        r = parse(argc, argv, &b.o);
        if (r != 0) {
                free(b.o.sizes);
                return r > 0 ? EXIT_SUCCESS : BENCH_EXIT_USAGE;
        }
        signal(SIGPIPE, SIG_IGN);
        b.blocks = calloc(b.o.n_sizes, sizeof(*b.blocks));
        rows = calloc(b.o.n_sizes, sizeof(*rows));
        if (!b.blocks || !rows || remote_find_programs(&b) < 0)
                goto out;
        if (remote_setup(&b) < 0)
                goto out;
        if (b.o.batch > kvc_max_items(b.b.c)) {
                fprintf(stderr, "kvdrive-bench: --batch %" PRIu64 " exceeds the daemon's %u items per request\n",
                        b.o.batch, kvc_max_items(b.b.c));
                goto out;
        }
        for (size_t i = 0; i < b.o.n_sizes; i++) {
                char sz[32];

                r = run_size(&b, i, &rows[i]);
                if (r < 0) {
                        fprintf(stderr, "kvdrive-bench: remote, size %s: %s\n",
                                bench_format_size(sz, sizeof(sz), b.o.sizes[i]), kvc_strerror(r));
                        goto out;
                }
        }
        if (remote_teardown(&b) < 0)
                goto out;
        if (b.o.json) {
                if (print_json(&b, rows) < 0)
                        goto out;
        } else {
                print_table(&b, rows);
        }
        ret = EXIT_SUCCESS;
out:
        remote_teardown(&b);
        free(rows);
        free(b.blocks);
        free(b.o.sizes);
        return ret;
}

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench interference: how long one client can delay another.
 *
 * A victim client Gets one 8 KiB block from host memory in a loop and times
 * every round trip, while attacker processes (each its own connection) do
 * the most expensive things the protocol allows them, one mode at a time:
 *
 *   none     no attacker: the victim's own latency (the baseline)
 *   delete   Deletes of max-items keys x all layers of a 1024-layer namespace
 *   lookup   Lookups of max-items keys, each cached at 8 layers of 1024
 *   put      Puts of max-items new blocks (the host tier fills and evicts)
 *   scores   score reports of max-items blocks, sent without waiting
 *   connect  connect, Hello, disconnect
 *   pools    connect, register a 64 MiB pool, disconnect
 *   ssd-churn  Deletes of max-items random blocks of CHURN_BLOCKS kept on
 *            SSD (durable Puts first), then Puts of them again: with a host
 *            tier smaller than them, blocks demote to SSD, so writes and
 *            wipes are scattered over the SSD tier's extents.
 *   ssd-durable  the same with durable Puts (written through to SSD).
 *            The ssd-* modes run only when asked for (--modes): the daemon
 *            needs an SSD tier, and small extents with a short
 *            ssd-checkpoint-interval make it journal extents all the time
 *            (docs/bench/journal.md).
 *
 * Each mode runs --repeat times for --seconds; per mode it prints the
 * victim's p50, p99 and max latency (median over the repeats, with their
 * range), the attackers' operations per second, and what the daemon says
 * of its event loop meanwhile (Stats loop_turn_*: the busy turns' p99 and
 * longest; a request waits for the loop at most a turn per busy
 * connection). Every figure is measured.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"

#define VICTIM_NS "bench-interference-victim"
#define DEEP_NS "bench-interference-deep"
#define DEEP_LAYERS 1024u
#define LOOKUP_LAYERS 8u
#define POOL_BYTES (64u << 20)
#define MAX_REPEAT 16
#define CHURN_BLOCKS 8192u

static const struct kvc_geometry small_geom = {
        .layers = 4, .kv_heads = 2, .head_dim = 64, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};
static const struct kvc_geometry deep_geom = {
        .layers = DEEP_LAYERS, .kv_heads = 2, .head_dim = 64, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};

enum mode { M_NONE, M_DELETE, M_LOOKUP, M_PUT, M_SCORES, M_CONNECT, M_POOLS, M_CHURN, M_DURABLE, M_COUNT };

static const char *const mode_names[M_COUNT] = { "none",  "delete", "lookup",    "put",        "scores",
                                                 "connect", "pools", "ssd-churn", "ssd-durable" };

struct opts {
        const char *socket;
        double seconds;
        uint32_t attackers;
        uint32_t repeat;
        bool modes[M_COUNT];
};

static volatile sig_atomic_t stop_flag;

static void on_term(int sig)
{
        (void)sig;
        stop_flag = 1;
}

static void keys_of(uint64_t seed, struct kvc_key *keys, uint32_t n)
{
        struct kvc_key seq = { seed, seed * 0x9e3779b97f4a7c15ull };

        for (uint32_t i = 0; i < n; i++)
                kvc_key_private(&seq, i, &keys[i]);
}

/* Puts keys[0..n) at layers [0, layers) of ns through pool p (n <= slots). */
static int put_all(kvc_client *c, uint32_t ns, kvc_pool *p, const struct kvc_key *keys, uint32_t n,
                   uint32_t layers)
{
        struct kvc_block_ref *refs = calloc(n, sizeof(*refs));
        int rc = 0;

        if (!refs)
                return -ENOMEM;
        for (uint32_t l = 0; l < layers && rc >= 0; l++) {
                for (uint32_t i = 0; i < n; i++)
                        refs[i] = (struct kvc_block_ref){ .key = keys[i], .layer = l, .slot = i };
                rc = kvc_put(c, ns, p, refs, n, NULL);
        }
        free(refs);
        return rc < 0 ? rc : 0;
}

static int put_durable(kvc_client *c, uint32_t ns, const kvc_pool *p, const struct kvc_block_ref *refs, uint32_t n)
{
        uint64_t id;
        int rc = kvc_put_submit_flags(c, ns, p, refs, n, KVC_PUT_DURABLE, NULL, &id);

        return rc < 0 ? rc : kvc_wait(c, id, -1);
}

/* ssd-churn, ssd-durable: n random blocks of churn[] deleted, then put
 * again. */
static int churn_round(kvc_client *c, uint32_t ns, const kvc_pool *p, const struct kvc_key *churn,
                       struct kvc_key *keys, struct kvc_block_ref *refs, uint32_t n, bool durable, uint64_t *rng)
{
        int rc;

        for (uint32_t i = 0; i < n; i++) {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                keys[i] = churn[*rng % CHURN_BLOCKS];
                refs[i] = (struct kvc_block_ref){ .key = keys[i], .layer = 0, .slot = i };
        }
        rc = kvc_delete(c, ns, keys, n, 0);
        if (rc < 0)
                return rc;
        return durable ? put_durable(c, ns, p, refs, n) : kvc_put(c, ns, p, refs, n, NULL);
}

/* One attacker process: does mode until SIGTERM, then writes its count of
 * operations to fd. */
static int attack(const struct opts *o, enum mode m, unsigned idx, int fd)
{
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        struct kvc_key *keys = NULL;
        struct kvc_block_score *scores = NULL;
        struct kvc_block_ref *refs = NULL;
        struct kvc_key *churn = NULL;
        uint32_t ns = 0, n, *prefix = NULL;
        uint64_t ops = 0, round = 0, rng = 0x9e3779b97f4a7c15ull + idx;
        int rc = 0;

        signal(SIGTERM, on_term);
        if (m != M_CONNECT && m != M_POOLS) {
                rc = kvc_connect(o->socket, "bench-attacker", &c);
                if (rc < 0)
                        goto out;
        }
        n = c ? kvc_max_items(c) : 0;
        keys = calloc(n ? n : 1, sizeof(*keys));
        refs = calloc(n ? n : 1, sizeof(*refs));
        scores = calloc(n ? n : 1, sizeof(*scores));
        prefix = calloc(DEEP_LAYERS, sizeof(*prefix));
        if (!keys || !refs || !scores || !prefix) {
                rc = -ENOMEM;
                goto out;
        }
        if (m == M_DELETE || m == M_LOOKUP || m == M_PUT || m == M_SCORES) {
                rc = kvc_register_namespace(c, m == M_PUT || m == M_SCORES ? VICTIM_NS "-attacker" : DEEP_NS,
                                            m == M_PUT || m == M_SCORES ? &small_geom : &deep_geom, &ns, NULL);
                if (rc == 0 && m != M_DELETE)
                        rc = kvc_pool_create(c, n, kvc_block_bytes(&small_geom), &p);
                if (rc < 0)
                        goto out;
        }
        keys_of(1000 + idx, keys, n);
        if (m == M_LOOKUP && (rc = put_all(c, ns, p, keys, n, LOOKUP_LAYERS)) < 0)
                goto out;
        if (m == M_SCORES && (rc = put_all(c, ns, p, keys, n, 1)) < 0)
                goto out;
        if (m == M_CHURN || m == M_DURABLE) {
                churn = calloc(CHURN_BLOCKS, sizeof(*churn));
                rc = churn ? 0 : -ENOMEM;
                if (rc == 0)
                        rc = kvc_register_namespace(c, VICTIM_NS "-churn", &small_geom, &ns, NULL);
                if (rc == 0)
                        rc = kvc_pool_create(c, n, kvc_block_bytes(&small_geom), &p);
                if (rc == 0)
                        keys_of(3000 + idx, churn, CHURN_BLOCKS);
                for (uint32_t i = 0; rc >= 0 && i < CHURN_BLOCKS; i += n) {
                        uint32_t k = CHURN_BLOCKS - i < n ? CHURN_BLOCKS - i : n;

                        for (uint32_t j = 0; j < k; j++)
                                refs[j] = (struct kvc_block_ref){ .key = churn[i + j], .layer = 0, .slot = j };
                        rc = put_durable(c, ns, p, refs, k);
                }
                if (rc < 0)
                        goto out;
        }
        for (uint32_t i = 0; i < n; i++)
                scores[i] = (struct kvc_block_score){ .key = keys[i], .layer = 0, .mass = 0.5f };
        if (write(fd, "r", 1) != 1) /* ready */
                goto out;
        while (!stop_flag) {
                switch (m) {
                case M_DELETE:
                        rc = kvc_delete(c, ns, keys, n, -1);
                        break;
                case M_LOOKUP:
                        rc = kvc_lookup(c, ns, keys, n, prefix, DEEP_LAYERS);
                        break;
                case M_PUT:
                        keys_of(((uint64_t)idx << 40) + ++round, keys, n);
                        for (uint32_t i = 0; i < n; i++)
                                refs[i] = (struct kvc_block_ref){ .key = keys[i], .layer = 0, .slot = i };
                        rc = kvc_put(c, ns, p, refs, n, NULL);
                        break;
                case M_SCORES:
                        rc = kvc_report_scores(c, ns, scores, n);
                        if (rc == 0 && ++round % 64 == 0)
                                rc = kvc_poll(c);       /* reap the replies now and then */
                        break;
                case M_CONNECT: {
                        kvc_client *x = NULL;

                        rc = kvc_connect(o->socket, "bench-attacker", &x);
                        kvc_disconnect(x);
                        break;
                }
                case M_CHURN:
                case M_DURABLE:
                        rc = churn_round(c, ns, p, churn, keys, refs, n, m == M_DURABLE, &rng);
                        break;
                case M_POOLS: {
                        /* Pools go only with their session. */
                        kvc_client *x = NULL;

                        rc = kvc_connect(o->socket, "bench-attacker", &x);
                        if (rc == 0)
                                rc = kvc_pool_create(x, POOL_BYTES / 8192, 8192, &p);
                        p = kvc_pool_free(p);
                        kvc_disconnect(x);
                        break;
                }
                default:
                        rc = 0;
                        pause();
                        break;
                }
                if (rc < 0 && rc != -EINTR)
                        break;
                ops++;
        }
        rc = rc == -EINTR ? 0 : rc;
out:
        if (rc < 0)
                fprintf(stderr, "kvdrive-bench interference: attacker %u (%s): %s%s%s\n", idx, mode_names[m],
                        kvc_strerror(rc), c && *kvc_last_error(c) ? ": " : "", c ? kvc_last_error(c) : "");
        if (write(fd, &ops, sizeof(ops)) != sizeof(ops))
                rc = -EIO;
        free(keys);
        free(refs);
        free(scores);
        free(prefix);
        free(churn);
        kvc_pool_free(p);
        kvc_disconnect(c);
        return rc < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return x < y ? -1 : x > y;
}

struct run {
        double p50, p99, max;   /* microseconds */
        uint64_t gets;
        double attack_ops_s;
        double loop_p99, loop_max;      /* the daemon's busy turns meanwhile, us */
};

/* The daemon's busy turns between two Stats: the top of the bucket 99% of
 * them fell under, and the longest (exact when it set a new record, else
 * its bucket's top). */
static void loop_delta(const struct kvc_stats *a, const struct kvc_stats *b, struct run *ret)
{
        uint64_t n = b->loop_turns - a->loop_turns, seen = 0;
        int top = -1;

        ret->loop_p99 = 0;
        for (unsigned k = 0; k < KVC_LOOP_BUCKETS; k++) {
                uint64_t d = b->loop_turn_hist[k] - a->loop_turn_hist[k];

                if (d)
                        top = (int)k;
                seen += d;
                if (!ret->loop_p99 && n && seen * 100 >= n * 99)
                        ret->loop_p99 = (double)(UINT64_C(1) << k);
        }
        ret->loop_max = b->loop_turn_max_us > a->loop_turn_max_us ? (double)b->loop_turn_max_us
                        : top >= 0 ? (double)(UINT64_C(1) << top) : 0;
}

/* The victim's Gets for o->seconds while n attackers run mode m. */
static int one_run(const struct opts *o, enum mode m, kvc_client *v, uint32_t ns, kvc_pool *p,
                   const struct kvc_block_ref *ref, struct run *ret)
{
        uint32_t na = m == M_NONE ? 0 : o->attackers;
        pid_t pids[64];
        int fds[64];
        size_t cap = 1u << 20, n = 0;
        double *lat = malloc(cap * sizeof(*lat));
        uint64_t t0, t1, ops = 0;
        struct kvc_stats *s0 = NULL, *s1 = NULL;
        int rc = 0;

        if (!lat)
                return -ENOMEM;
        rc = kvc_stats_get(v, &s0);
        if (rc < 0) {
                free(lat);
                return rc;
        }
        for (uint32_t i = 0; i < na; i++) {
                int pp[2];
                char ready;

                if (pipe(pp) < 0)
                        return -errno;
                fflush(NULL);
                pids[i] = fork();
                if (pids[i] == 0) {
                        close(pp[0]);
                        _exit(attack(o, m, i, pp[1]));
                }
                close(pp[1]);
                fds[i] = pp[0];
                if (read(fds[i], &ready, 1) != 1) {
                        fprintf(stderr, "kvdrive-bench interference: attacker %u (%s) did not start\n", i,
                                mode_names[m]);
                        rc = -ECHILD;
                }
        }
        t0 = bench_now_ns();
        while (rc == 0 && bench_now_ns() - t0 < (uint64_t)(o->seconds * 1e9)) {
                uint64_t a = bench_now_ns();
                uint8_t st;

                rc = kvc_get(v, ns, p, ref, 1, &st);
                if (rc >= 0 && st == KVC_ITEM_MISS) /* evicted by a Put flood: store it again */
                        rc = kvc_put(v, ns, p, ref, 1, &st);
                if (rc < 0)
                        break;
                rc = 0;
                if (n == cap) {
                        double *x = realloc(lat, 2 * cap * sizeof(*lat));

                        if (!x) {
                                rc = -ENOMEM;
                                break;
                        }
                        lat = x;
                        cap *= 2;
                }
                lat[n++] = (double)(bench_now_ns() - a) / 1e3;
        }
        t1 = bench_now_ns();
        for (uint32_t i = 0; i < na; i++) {
                uint64_t x = 0;
                int status;

                kill(pids[i], SIGTERM);
                if (read(fds[i], &x, sizeof(x)) == sizeof(x))
                        ops += x;
                close(fds[i]);
                waitpid(pids[i], &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        rc = rc ? rc : -ECHILD;
        }
        if (rc == 0 && n > 0)
                rc = kvc_stats_get(v, &s1);
        if (rc == 0 && n > 0) {
                qsort(lat, n, sizeof(*lat), cmp_double);
                *ret = (struct run){ .p50 = lat[n / 2], .p99 = lat[(size_t)((double)n * 0.99)], .max = lat[n - 1],
                                     .gets = n, .attack_ops_s = (double)ops / ((double)(t1 - t0) / 1e9) };
                loop_delta(s0, s1, ret);
        }
        kvc_stats_free(s0);
        kvc_stats_free(s1);
        free(lat);
        return rc < 0 ? rc : (n ? 0 : -EIO);
}

static void usage(FILE *f)
{
        fprintf(f, "Usage: kvdrive-bench interference [--socket PATH] [--seconds S] [--attackers N] [--repeat R]\n"
                   "                                  [--modes none,delete,lookup,put,scores,connect,pools,ssd-churn,ssd-durable]\n"
                   "\nA victim client's Get latency while attacker clients do the costliest requests.\n");
}

static int parse_modes(const char *s, bool *modes)
{
        char *copy = strdup(s), *save = NULL;
        int rc = 0;

        if (!copy)
                return -ENOMEM;
        memset(modes, 0, sizeof(bool) * M_COUNT);
        for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
                int m;

                for (m = 0; m < M_COUNT && strcmp(t, mode_names[m]) != 0; m++)
                        ;
                if (m == M_COUNT) {
                        fprintf(stderr, "kvdrive-bench interference: unknown mode '%s'\n", t);
                        rc = -EINVAL;
                } else {
                        modes[m] = true;
                }
        }
        free(copy);
        return rc;
}

static double med(double *v, uint32_t n)
{
        return bench_median(v, n);
}

static double vmin(const double *v, uint32_t n)
{
        double x = v[0];

        for (uint32_t i = 1; i < n; i++)
                x = v[i] < x ? v[i] : x;
        return x;
}

static double vmax(const double *v, uint32_t n)
{
        double x = v[0];

        for (uint32_t i = 1; i < n; i++)
                x = v[i] > x ? v[i] : x;
        return x;
}

int bench_interference(int argc, char **argv)
{
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, 's' }, { "seconds", required_argument, NULL, 't' },
                { "attackers", required_argument, NULL, 'a' }, { "repeat", required_argument, NULL, 'r' },
                { "modes", required_argument, NULL, 'm' }, { "help", no_argument, NULL, 'h' }, {},
        };
        struct opts o = { .seconds = 3, .attackers = 1, .repeat = 3 };
        struct kvc_block_ref ref = { .layer = 0, .slot = 0 };
        double base_p99 = 0;
        kvc_client *v = NULL;
        kvc_pool *p = NULL;
        uint64_t x;
        uint32_t ns;
        int c, rc;

        for (int m = 0; m < M_COUNT; m++)
                o.modes[m] = m < M_CHURN; /* the ssd-* modes need an SSD tier: only when asked */
        while ((c = getopt_long(argc, argv, "s:t:a:r:m:h", longopts, NULL)) != -1) {
                switch (c) {
                case 's':
                        o.socket = optarg;
                        break;
                case 't':
                        o.seconds = atof(optarg);
                        if (o.seconds <= 0 || o.seconds > 3600) {
                                fprintf(stderr, "kvdrive-bench interference: --seconds in (0, 3600]\n");
                                return BENCH_EXIT_USAGE;
                        }
                        break;
                case 'a':
                        if (bench_parse_uint(optarg, 1, 64, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench interference: --attackers 1-64\n");
                                return BENCH_EXIT_USAGE;
                        }
                        o.attackers = (uint32_t)x;
                        break;
                case 'r':
                        if (bench_parse_uint(optarg, 1, MAX_REPEAT, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench interference: --repeat 1-%d\n", MAX_REPEAT);
                                return BENCH_EXIT_USAGE;
                        }
                        o.repeat = (uint32_t)x;
                        break;
                case 'm':
                        if (parse_modes(optarg, o.modes) < 0)
                                return BENCH_EXIT_USAGE;
                        break;
                case 'h':
                        usage(stdout);
                        return EXIT_SUCCESS;
                default:
                        usage(stderr);
                        return BENCH_EXIT_USAGE;
                }
        }
        rc = kvc_connect(o.socket, "bench-victim", &v);
        if (rc < 0) {
                fprintf(stderr, "kvdrive-bench interference: cannot connect: %s\n", kvc_strerror(rc));
                return EXIT_FAILURE;
        }
        rc = kvc_register_namespace(v, VICTIM_NS, &small_geom, &ns, NULL);
        if (rc == 0)
                rc = kvc_pool_create(v, 1, kvc_block_bytes(&small_geom), &p);
        keys_of(7, &ref.key, 1);
        if (rc == 0)
                rc = kvc_put(v, ns, p, &ref, 1, NULL);
        if (rc < 0) {
                fprintf(stderr, "kvdrive-bench interference: victim set-up: %s (%s)\n", kvc_strerror(rc),
                        kvc_last_error(v));
                goto out;
        }
        printf("# victim: Get of one 8 KiB host block per round trip; %u attacker connection(s) per mode; "
               "%u runs of %.1f s per mode; latency in microseconds, median over runs [min-max]\n",
               o.attackers, o.repeat, o.seconds);
        printf("%-11s %20s %22s %24s %9s %10s %22s %22s\n", "mode", "p50", "p99", "max", "p99/none",
               "attack/s", "loop turn p99 <", "loop turn max");
        for (int m = 0; m < M_COUNT; m++) {
                double p50[MAX_REPEAT], p99[MAX_REPEAT], mx[MAX_REPEAT], ops[MAX_REPEAT];
                double lp99[MAX_REPEAT], lmax[MAX_REPEAT];
                char a[32], b[32], d[40], e[40], f[40], ratio[16];

                if (!o.modes[m])
                        continue;
                for (uint32_t r = 0; r < o.repeat; r++) {
                        struct run run = { 0 };

                        rc = one_run(&o, (enum mode)m, v, ns, p, &ref, &run);
                        if (rc < 0) {
                                fprintf(stderr, "kvdrive-bench interference: mode %s: %s\n", mode_names[m],
                                        kvc_strerror(rc));
                                goto out;
                        }
                        p50[r] = run.p50;
                        p99[r] = run.p99;
                        mx[r] = run.max;
                        ops[r] = run.attack_ops_s;
                        lp99[r] = run.loop_p99;
                        lmax[r] = run.loop_max;
                }
                snprintf(a, sizeof(a), "%.0f [%.0f-%.0f]", med(p50, o.repeat), vmin(p50, o.repeat),
                         vmax(p50, o.repeat));
                snprintf(b, sizeof(b), "%.0f [%.0f-%.0f]", med(p99, o.repeat), vmin(p99, o.repeat),
                         vmax(p99, o.repeat));
                snprintf(d, sizeof(d), "%.0f [%.0f-%.0f]", med(mx, o.repeat), vmin(mx, o.repeat),
                         vmax(mx, o.repeat));
                if (m == M_NONE)
                        base_p99 = med(p99, o.repeat);
                snprintf(e, sizeof(e), "%.0f [%.0f-%.0f]", med(lp99, o.repeat), vmin(lp99, o.repeat),
                         vmax(lp99, o.repeat));
                snprintf(f, sizeof(f), "%.0f [%.0f-%.0f]", med(lmax, o.repeat), vmin(lmax, o.repeat),
                         vmax(lmax, o.repeat));
                snprintf(ratio, sizeof(ratio), "%.1fx", base_p99 > 0 ? med(p99, o.repeat) / base_p99 : 0.0);
                printf("%-11s %20s %22s %24s %9s %10.0f %22s %22s\n", mode_names[m], a, b, d, ratio,
                       med(ops, o.repeat), e, f);
                fflush(stdout);
        }
out:
        kvc_pool_free(p);
        kvc_disconnect(v);
        return rc < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

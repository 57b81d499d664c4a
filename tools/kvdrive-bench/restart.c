/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench restart: how long a daemon takes to come back with N blocks
 * on its SSD tier. It starts its own kvdrived (a private socket, the given
 * SSD directory), stores N small blocks durably, stops it, starts it again
 * and times from exec to the first answered Hello — the index rebuilt from
 * the slots on disk — then checks every block is there. Three ways back:
 * after a clean stop (its checkpoint), after a crash with no checkpoint
 * (every slot header read), and after a crash that followed an interval
 * checkpoint and a bounded number of further durable writes (the checkpoint
 * and the slot headers of the extents written since).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "kvdrive/client.h"
#include "size.h"

#define BATCH 256u

/* 1 kv head x 64 dims x 16 tokens, f16: 4 KiB blocks (8 KiB slots). */
static const struct kvc_geometry geom = { 1, 1, 64, KVC_DTYPE_F16, 16 };

/* log: where its stderr goes, at log level info (NULL: warnings only);
 * interval: its ssd-checkpoint-interval. */
static pid_t spawn_log(const char *kvdrived, const char *sock, const char *dir, const char *ssd_bytes,
                       const char *log, const char *interval)
{
        pid_t pid = fork();

        if (pid == 0) {
                if (log) {
                        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                        if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
                                _exit(127);
                }
                execl(kvdrived, kvdrived, "--foreground", "--socket", sock, "--host-bytes", "64M", "--ssd-dir", dir,
                      "--ssd-bytes", ssd_bytes, "--log-level", log ? "info" : "warning", "--metrics-listen", "off",
                      "--ssd-checkpoint-interval", interval, (char *)NULL);
                _exit(127);
        }
        return pid;
}

static pid_t spawn(const char *kvdrived, const char *sock, const char *dir, const char *ssd_bytes)
{
        return spawn_log(kvdrived, sock, dir, ssd_bytes, NULL, "60");
}

static int stop(pid_t pid)
{
        int status;

        kill(pid, SIGTERM);
        return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* One timed restart (exec to the first answered Hello), its blocks checked,
 * then a clean stop (which writes the next checkpoint). Seconds, or < 0. */
static double timed_restart(const char *kvdrived, const char *sock, const char *dir, const char *ssd_bytes,
                            uint64_t n)
{
        struct kvc_stats *st = NULL;
        uint64_t t0, t1, found = 0;
        kvc_client *c;
        pid_t pid;

        t0 = bench_now_ns();
        pid = spawn(kvdrived, sock, dir, ssd_bytes);
        c = bench_wait_daemon(pid, sock, "kvdrive-bench restart", 600);
        t1 = bench_now_ns();
        if (!c || kvc_stats_get(c, &st) < 0) {
                fprintf(stderr, "kvdrive-bench: restart failed\n");
                kvc_disconnect(c);
                return -1;
        }
        for (uint32_t i = 0; i < st->n_tiers; i++)
                if (strcmp(st->tiers[i].name, "ssd") == 0)
                        found = st->tiers[i].blocks;
        kvc_stats_free(st);
        kvc_disconnect(c);
        if (stop(pid) < 0 || found != n) {
                fprintf(stderr, "kvdrive-bench: %" PRIu64 " of %" PRIu64 " blocks recovered\n", found, n);
                return -1;
        }
        return (double)(t1 - t0) / 1e9;
}

/* Blocks [first, first + n) durably, BATCH at a time. 0 or a kvc error. */
static int put_blocks(kvc_client *c, uint32_t ns, kvc_pool *pool, struct kvc_block_ref *refs,
                      const struct kvc_key *seq, uint64_t first, uint64_t n)
{
        int r = 0;

        for (uint64_t i = first; r >= 0 && i < first + n; i += BATCH) {
                uint32_t k = first + n - i < BATCH ? (uint32_t)(first + n - i) : BATCH;
                uint64_t id;

                for (uint32_t j = 0; j < k; j++) {
                        refs[j] = (struct kvc_block_ref){ .layer = 0, .slot = j };
                        kvc_key_private(seq, i + j, &refs[j].key);
                        memset(kvc_pool_slot(pool, j), (int)(i + j), 4096);
                }
                r = kvc_put_submit_flags(c, ns, pool, refs, k, KVC_PUT_DURABLE, NULL, &id);
                if (r >= 0)
                        r = kvc_wait(c, id, -1);
                if (r >= 0 && (uint32_t)r != k)
                        r = -EIO;
        }
        return r < 0 ? r : 0;
}

static uint64_t ino_of(const char *path)
{
        struct stat st;

        return stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* The first "gathered in X ms" of log, or -1. */
static double gather_ms(const char *log)
{
        char line[1024];
        double ms = -1;
        FILE *f = fopen(log, "r");

        while (f && ms < 0 && fgets(line, sizeof(line), f)) {
                const char *p = strstr(line, "gathered in ");

                if (p && strstr(line, "index checkpoint"))
                        ms = strtod(p + strlen("gathered in "), NULL);
        }
        if (f)
                fclose(f);
        return ms;
}

static void crash_daemon(pid_t pid)
{
        int status;

        if (pid > 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
        }
}

/* Before a crash restart: a daemon checkpointing every second, started on
 * the clean stop's checkpoint, SIGKILLed once a checkpoint of its own is on
 * disk; then one that takes no checkpoint (it goes on from that one, its
 * journal rewritten) puts `writes` more blocks from `first` durably and is
 * SIGKILLed too. So exactly those writes are the ones since the checkpoint.
 * 0 or -1; *ret_ms: that checkpoint's time on the event loop (all its
 * turns), *ret_turn_ms: the top of the histogram bucket of the daemon's
 * longest loop turn from our connection until it was on disk (the
 * gathering, the journal's rewrite, the tick; not the start). */
static int crash_after_checkpoint(const char *kvdrived, const char *sock, const char *dir, const char *ssd_bytes,
                                  const struct kvc_key *seq, uint64_t first, uint64_t writes, double *ret_ms,
                                  double *ret_turn_ms)
{
        struct kvc_stats *st = NULL, *st0 = NULL;
        char ckpt[300], log[300];
        struct kvc_block_ref *refs = calloc(BATCH, sizeof(*refs));
        kvc_pool *pool = NULL;
        kvc_client *c;
        uint64_t ino, t0;
        uint32_t ns;
        int r = -1;
        pid_t pid;

        snprintf(ckpt, sizeof(ckpt), "%s/kvdrive.ckpt", dir);
        snprintf(log, sizeof(log), "%s/crash-run.log", dir);
        ino = ino_of(ckpt);
        pid = spawn_log(kvdrived, sock, dir, ssd_bytes, log, "1");
        c = bench_wait_daemon(pid, sock, "kvdrive-bench restart", 600);
        if (!c || !refs || kvc_stats_get(c, &st0) < 0)
                goto out;
        /* A new checkpoint is a new file renamed into place; the log says
         * so once the journal has been rewritten for it too. */
        for (t0 = bench_now_ns(); ino_of(ckpt) == ino || (*ret_ms = gather_ms(log)) < 0; usleep(10000))
                if (bench_now_ns() - t0 > UINT64_C(600) * 1000000000u) {
                        fprintf(stderr, "kvdrive-bench: no checkpoint while serving in 600 s\n");
                        goto out;
                }
        if (kvc_stats_get(c, &st) < 0)
                goto out;
        *ret_turn_ms = 0;
        for (unsigned k = 0; k < KVC_LOOP_BUCKETS; k++)
                if (st->loop_turn_hist[k] > st0->loop_turn_hist[k])
                        *ret_turn_ms = (double)(UINT64_C(1) << k) / 1e3;
        kvc_stats_free(st);
        c = kvc_disconnect(c);
        crash_daemon(pid);
        pid = spawn_log(kvdrived, sock, dir, ssd_bytes, NULL, "86400");
        c = bench_wait_daemon(pid, sock, "kvdrive-bench restart", 600);
        if (!c)
                goto out;
        r = kvc_register_namespace(c, "bench-restart", &geom, &ns, NULL);
        if (r == 0)
                r = kvc_pool_create(c, BATCH, 4096, &pool);
        if (r == 0)
                r = put_blocks(c, ns, pool, refs, seq, first, writes);
        if (r < 0)
                fprintf(stderr, "kvdrive-bench: the writes after the checkpoint failed: %s\n", kvc_strerror(r));
out:
        kvc_stats_free(st0);
        kvc_pool_free(pool);
        kvc_disconnect(c);
        free(refs);
        crash_daemon(pid);
        return r < 0 ? -1 : 0;
}

struct spread {
        double median, min, max;
};

/* Per million blocks, over the runs v[0..k). */
static struct spread spread_of(double *v, size_t k, uint64_t n)
{
        struct spread r = { 0, v[0], v[0] };

        for (size_t i = 0; i < k; i++) {
                r.min = v[i] < r.min ? v[i] : r.min;
                r.max = v[i] > r.max ? v[i] : r.max;
        }
        r.median = bench_median(v, k);
        r.median *= 1e6 / (double)n;
        r.min *= 1e6 / (double)n;
        r.max *= 1e6 / (double)n;
        return r;
}

int bench_restart(int argc, char **argv)
{
        static const struct option opts[] = {
                { "kvdrived", required_argument, NULL, 'k' }, { "ssd-dir", required_argument, NULL, 'd' },
                { "blocks", required_argument, NULL, 'n' },   { "repeat", required_argument, NULL, 'r' },
                { "json", no_argument, NULL, 'j' },           { "help", no_argument, NULL, 'h' },
                { "writes", required_argument, NULL, 'w' },
                {},
        };
        const char *kvdrived = "kvdrived", *dir = NULL;
        uint64_t n = 200000, repeat = 5, writes = 0, total;
        char sock[256], ssd_bytes[32], ckpt[300];
        struct kvc_block_ref *refs = NULL;
        double *ck = NULL, *scan = NULL, *crash = NULL, *gather = NULL, *turn = NULL;
        struct spread a, b, cr;
        struct kvc_key seq;
        kvc_client *c = NULL;
        kvc_pool *pool = NULL;
        bool json = false;
        uint32_t ns;
        pid_t pid;
        int opt, r, ret = EXIT_FAILURE;

        while ((opt = getopt_long(argc, argv, "k:d:n:r:w:jh", opts, NULL)) != -1) {
                switch (opt) {
                case 'k': kvdrived = optarg; break;
                case 'd': dir = optarg; break;
                case 'j': json = true; break;
                case 'w':
                        if (bench_parse_uint(optarg, 1, 100000000, &writes) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --writes '%s'\n", optarg);
                                return BENCH_EXIT_USAGE;
                        }
                        break;
                case 'n':
                case 'r':
                        if (bench_parse_uint(optarg, 1, opt == 'n' ? 100000000 : 100, opt == 'n' ? &n : &repeat) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --%s '%s'\n", opt == 'n' ? "blocks" : "repeat",
                                        optarg);
                                return BENCH_EXIT_USAGE;
                        }
                        break;
                case 'h':
                        printf("Usage: kvdrive-bench restart --ssd-dir DIR [--blocks N] [--repeat R] [--writes W]\n"
                               "                             [--json] [--kvdrived PATH]\n\n"
                               "Times restarts of kvdrived with N 4 KiB blocks (8 KiB slots) on its SSD tier in DIR\n"
                               "(a fresh directory, made if missing: its contents are replaced): R restarts after a\n"
                               "clean stop (the index checkpoint loaded), interleaved with R whose checkpoint was\n"
                               "removed (every slot header scanned, as after a crash with no checkpoint); then R\n"
                               "after a SIGKILL that followed a checkpoint taken while serving and W more durable\n"
                               "blocks (the checkpoint, and the slot headers of the extents written since). Medians\n"
                               "and ranges, in seconds per million blocks. Default N: 200000, R: 5, W: N / 100.\n");
                        return EXIT_SUCCESS;
                default:
                        return BENCH_EXIT_USAGE;
                }
        }
        if (!dir) {
                fprintf(stderr, "kvdrive-bench: restart needs --ssd-dir\n");
                return BENCH_EXIT_USAGE;
        }
        /* kvdrived never creates its SSD directories (a mistyped mount
         * point would fill another disk); this benchmark's is its own. */
        if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
                fprintf(stderr, "kvdrive-bench: cannot create %s: %s\n", dir, strerror(errno));
                return EXIT_FAILURE;
        }
        snprintf(sock, sizeof(sock), "%s/bench.sock", dir);
        snprintf(ckpt, sizeof(ckpt), "%s/kvdrive.ckpt", dir);
        /* Room for the blocks and their slot headers, plus extents' slack. */
        if (!writes)
                writes = n / 100 ? n / 100 : 1;
        total = n + writes * repeat;
        snprintf(ssd_bytes, sizeof(ssd_bytes), "%" PRIu64 "M", (total * 8192 >> 20) * 11 / 10 + 64);
        refs = calloc(BATCH, sizeof(*refs));
        ck = calloc(repeat, sizeof(double));
        scan = calloc(repeat, sizeof(double));
        crash = calloc(repeat, sizeof(double));
        gather = calloc(repeat, sizeof(double));
        turn = calloc(repeat, sizeof(double));
        if (!refs || !ck || !scan || !crash || !gather || !turn || kvc_key_sequence_new(&seq) < 0)
                goto out;

        pid = spawn(kvdrived, sock, dir, ssd_bytes);
        c = bench_wait_daemon(pid, sock, "kvdrive-bench restart", 600);
        if (!c) {
                fprintf(stderr, "kvdrive-bench: %s did not start\n", kvdrived);
                goto out;
        }
        r = kvc_register_namespace(c, "bench-restart", &geom, &ns, NULL);
        if (r == 0)
                r = kvc_pool_create(c, BATCH, 4096, &pool);
        if (r == 0)
                r = put_blocks(c, ns, pool, refs, &seq, 0, n);
        pool = kvc_pool_free(pool);
        c = kvc_disconnect(c);
        if (r < 0 || stop(pid) < 0) {
                fprintf(stderr, "kvdrive-bench: storing %" PRIu64 " blocks failed: %s\n", n, kvc_strerror(r));
                goto out;
        }

        /* Interleaved, so that both see the same machine: each clean stop
         * leaves a checkpoint; removing it forces the scan. */
        for (uint64_t i = 0; i < repeat; i++) {
                ck[i] = timed_restart(kvdrived, sock, dir, ssd_bytes, n);
                if (ck[i] < 0)
                        goto out;
                if (unlink(ckpt) < 0) {
                        fprintf(stderr, "kvdrive-bench: no checkpoint after a clean stop (%s): %s\n", ckpt,
                                strerror(errno));
                        goto out;
                }
                scan[i] = timed_restart(kvdrived, sock, dir, ssd_bytes, n);
                if (scan[i] < 0)
                        goto out;
        }
        /* After them, as the block count grows by W each time: a crash
         * after a checkpoint and W writes, then a restart (timed). */
        for (uint64_t i = 0; i < repeat; i++) {
                uint64_t have = n + writes * (i + 1);

                if (crash_after_checkpoint(kvdrived, sock, dir, ssd_bytes, &seq, have - writes, writes,
                                           &gather[i], &turn[i]) < 0)
                        goto out;
                crash[i] = timed_restart(kvdrived, sock, dir, ssd_bytes, have);
                if (crash[i] < 0)
                        goto out;
                crash[i] *= (double)n / (double)have; /* per block, as the others */
        }
        a = spread_of(ck, repeat, n);
        b = spread_of(scan, repeat, n);
        cr = spread_of(crash, repeat, n);
        if (json)
                printf("{\"blocks\": %" PRIu64 ", \"repeat\": %" PRIu64 ", \"seconds_per_million_blocks\": %.4f, "
                       "\"checkpoint\": {\"median\": %.4f, \"min\": %.4f, \"max\": %.4f}, "
                       "\"header_scan\": {\"seconds_per_million_blocks\": %.4f, \"median\": %.4f, \"min\": %.4f, "
                       "\"max\": %.4f}, \"speedup\": %.2f, \"crash_after_checkpoint\": {\"writes_after\": %"
                       PRIu64 ", \"seconds_per_million_blocks\": %.4f, \"median\": %.4f, \"min\": %.4f, "
                       "\"max\": %.4f, \"checkpoint_gather_ms\": %.1f, \"loop_turn_max_ms\": %.1f}}\n",
                       n, repeat, a.median, a.median, a.min, a.max, b.median, b.median, b.min, b.max,
                       b.median / a.median, writes, cr.median, cr.median, cr.min, cr.max, bench_median(gather, repeat),
                       bench_median(turn, repeat));
        else
                printf("restart: %" PRIu64 " blocks, %" PRIu64 " runs each, seconds per million blocks (median, "
                       "range):\n  from the checkpoint: %.3f (%.3f-%.3f)\n  header scan:         %.3f (%.3f-%.3f)\n"
                       "  speedup: %.1fx\n  after a crash, a checkpoint and %" PRIu64 " writes: %.3f (%.3f-%.3f); "
                       "gathering a checkpoint: %.1f ms on the event loop, its longest turn meanwhile < %.1f ms\n",
                       n, repeat, a.median, a.min, a.max, b.median, b.min, b.max, b.median / a.median, writes,
                       cr.median, cr.min, cr.max, bench_median(gather, repeat), bench_median(turn, repeat));
        ret = EXIT_SUCCESS;
out:
        kvc_pool_free(pool);
        kvc_disconnect(c);
        free(refs);
        free(ck);
        free(scan);
        free(crash);
        free(gather);
        free(turn);
        return ret;
}

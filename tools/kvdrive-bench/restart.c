/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench restart: how long a daemon takes to come back with N blocks
 * on its SSD tier. It starts its own kvdrived (a private socket, the given
 * SSD directory), stores N small blocks durably, stops it, starts it again
 * and times from exec to the first answered Hello — the index rebuilt from
 * the slots on disk — then checks every block is there.
 */
#include <errno.h>
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

static pid_t spawn(const char *kvdrived, const char *sock, const char *dir, const char *ssd_bytes)
{
        pid_t pid = fork();

        if (pid == 0) {
                execl(kvdrived, kvdrived, "--foreground", "--socket", sock, "--host-bytes", "64M", "--ssd-dir", dir,
                      "--ssd-bytes", ssd_bytes, "--log-level", "warning", "--metrics-listen", "off", (char *)NULL);
                _exit(127);
        }
        return pid;
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
                {},
        };
        const char *kvdrived = "kvdrived", *dir = NULL;
        uint64_t n = 200000, repeat = 5;
        char sock[256], ssd_bytes[32], ckpt[300];
        struct kvc_block_ref *refs = NULL;
        double *ck = NULL, *scan = NULL;
        struct spread a, b;
        struct kvc_key seq;
        kvc_client *c = NULL;
        kvc_pool *pool = NULL;
        bool json = false;
        uint32_t ns;
        pid_t pid;
        int opt, r, ret = EXIT_FAILURE;

        while ((opt = getopt_long(argc, argv, "k:d:n:r:jh", opts, NULL)) != -1) {
                switch (opt) {
                case 'k': kvdrived = optarg; break;
                case 'd': dir = optarg; break;
                case 'j': json = true; break;
                case 'n':
                case 'r':
                        if (bench_parse_uint(optarg, 1, opt == 'n' ? 100000000 : 100, opt == 'n' ? &n : &repeat) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --%s '%s'\n", opt == 'n' ? "blocks" : "repeat",
                                        optarg);
                                return BENCH_EXIT_USAGE;
                        }
                        break;
                case 'h':
                        printf("Usage: kvdrive-bench restart --ssd-dir DIR [--blocks N] [--repeat R] [--json]\n"
                               "                             [--kvdrived PATH]\n\n"
                               "Times restarts of kvdrived with N 4 KiB blocks (8 KiB slots) on its SSD tier in DIR\n"
                               "(a fresh directory, made if missing: its contents are replaced): R restarts after a\n"
                               "clean stop (the index checkpoint loaded), interleaved with R whose checkpoint was\n"
                               "removed (every slot header scanned, as after a crash). Medians and ranges, in\n"
                               "seconds per million blocks. Default N: 200000, R: 5.\n");
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
        snprintf(ssd_bytes, sizeof(ssd_bytes), "%" PRIu64 "M", (n * 8192 >> 20) * 11 / 10 + 64);
        refs = calloc(BATCH, sizeof(*refs));
        ck = calloc(repeat, sizeof(double));
        scan = calloc(repeat, sizeof(double));
        if (!refs || !ck || !scan || kvc_key_sequence_new(&seq) < 0)
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
        for (uint64_t i = 0; r >= 0 && i < n; i += BATCH) {
                uint32_t k = n - i < BATCH ? (uint32_t)(n - i) : BATCH;
                uint64_t id;

                for (uint32_t j = 0; j < k; j++) {
                        refs[j] = (struct kvc_block_ref){ .layer = 0, .slot = j };
                        kvc_key_private(&seq, i + j, &refs[j].key);
                        memset(kvc_pool_slot(pool, j), (int)(i + j), 4096);
                }
                r = kvc_put_submit_flags(c, ns, pool, refs, k, KVC_PUT_DURABLE, NULL, &id);
                if (r >= 0)
                        r = kvc_wait(c, id, -1);
                if (r >= 0 && (uint32_t)r != k)
                        r = -EIO;
        }
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
        a = spread_of(ck, repeat, n);
        b = spread_of(scan, repeat, n);
        if (json)
                printf("{\"blocks\": %" PRIu64 ", \"repeat\": %" PRIu64 ", \"seconds_per_million_blocks\": %.4f, "
                       "\"checkpoint\": {\"median\": %.4f, \"min\": %.4f, \"max\": %.4f}, "
                       "\"header_scan\": {\"seconds_per_million_blocks\": %.4f, \"median\": %.4f, \"min\": %.4f, "
                       "\"max\": %.4f}, \"speedup\": %.2f}\n",
                       n, repeat, a.median, a.median, a.min, a.max, b.median, b.median, b.min, b.max,
                       b.median / a.median);
        else
                printf("restart: %" PRIu64 " blocks, %" PRIu64 " runs each, seconds per million blocks (median, "
                       "range):\n  from the checkpoint: %.3f (%.3f-%.3f)\n  header scan:         %.3f (%.3f-%.3f)\n"
                       "  speedup: %.1fx\n", n, repeat, a.median, a.min, a.max, b.median, b.min, b.max,
                       b.median / a.median);
        ret = EXIT_SUCCESS;
out:
        kvc_pool_free(pool);
        kvc_disconnect(c);
        free(refs);
        free(ck);
        free(scan);
        return ret;
}

/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench footprint: the daemon's index memory per block, measured by
 * the daemon. It starts its own kvdrived (a private socket, a host tier just
 * large enough, no SSD), Puts N 4 KiB blocks and reads index.bytes and
 * index.entries back through kvc_stats: bytes the index has allocated
 * (record chunks, chunk array, hash table) over the blocks it holds.
 * Then what that index costs in time, in this process (footprint-index.c).
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

#define BATCH 256u

/* 1 kv head x 64 dims x 16 tokens, f16: 4 KiB blocks. */
static const struct kvc_geometry geom = { 1, 1, 64, KVC_DTYPE_F16, 16 };

static pid_t spawn(const char *kvdrived, const char *sock, const char *host_bytes)
{
        pid_t pid = fork();

        if (pid == 0) {
                execl(kvdrived, kvdrived, "--foreground", "--socket", sock, "--host-bytes", host_bytes,
                      "--log-level", "warning", "--metrics-listen", "off", (char *)NULL);
                _exit(127);
        }
        return pid;
}

static int put_all(kvc_client *c, uint64_t n)
{
        struct kvc_block_ref refs[BATCH];
        struct kvc_key seq;
        kvc_pool *pool = NULL;
        uint32_t ns;
        int r;

        r = kvc_key_sequence_new(&seq);
        if (r == 0)
                r = kvc_register_namespace(c, "bench-footprint", &geom, &ns, NULL);
        if (r == 0)
                r = kvc_pool_create(c, BATCH, 4096, &pool);
        for (uint64_t i = 0; r >= 0 && i < n; i += BATCH) {
                uint32_t k = n - i < BATCH ? (uint32_t)(n - i) : BATCH;
                uint64_t id;

                for (uint32_t j = 0; j < k; j++) {
                        refs[j] = (struct kvc_block_ref){ .layer = 0, .slot = j };
                        kvc_key_private(&seq, i + j, &refs[j].key);
                }
                r = kvc_put_submit(c, ns, pool, refs, k, NULL, &id);
                if (r >= 0)
                        r = kvc_wait(c, id, -1);
                if (r >= 0 && (uint32_t)r != k)
                        r = -ENOSPC;    /* the host tier refused some */
        }
        kvc_pool_free(pool);
        return r < 0 ? r : 0;
}

int bench_footprint(int argc, char **argv)
{
        static const struct option opts[] = {
                { "kvdrived", required_argument, NULL, 'k' }, { "dir", required_argument, NULL, 'd' },
                { "blocks", required_argument, NULL, 'n' },   { "help", no_argument, NULL, 'h' },
                { "index-only", no_argument, NULL, 'i' },
                {},
        };
        const char *kvdrived = "kvdrived", *dir = NULL;
        uint64_t n = 1000000;
        char sock[256], host_bytes[32];
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        pid_t pid = -1;
        int opt, r, status, ret = EXIT_FAILURE;
        bool index_only = false;

        while ((opt = getopt_long(argc, argv, "k:d:n:hi", opts, NULL)) != -1) {
                switch (opt) {
                case 'k': kvdrived = optarg; break;
                case 'd': dir = optarg; break;
                case 'i': index_only = true; break;
                case 'n':
                        if (bench_parse_uint(optarg, 1, 100000000, &n) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --blocks '%s'\n", optarg);
                                return BENCH_EXIT_USAGE;
                        }
                        break;
                case 'h':
                        printf("Usage: kvdrive-bench footprint --dir DIR [--blocks N] [--kvdrived PATH]\n"
                               "       kvdrive-bench footprint --index-only [--blocks N]\n\n"
                               "Starts kvdrived (socket in DIR, made if missing) with a host tier of N 4 KiB blocks,\n"
                               "Puts N blocks and prints the index bytes per block the daemon measures.\n"
                               "Then builds the same index in this process with N keys and times finds of\n"
                               "present and absent keys (--index-only: that part alone).\n"
                               "Default N: 1000000 (a 4 GiB host tier).\n");
                        return EXIT_SUCCESS;
                default:
                        return BENCH_EXIT_USAGE;
                }
        }
        if (index_only)
                return bench_footprint_index(n) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
        if (!dir) {
                fprintf(stderr, "kvdrive-bench: footprint needs --dir\n");
                return BENCH_EXIT_USAGE;
        }
        if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
                fprintf(stderr, "kvdrive-bench: cannot create %s: %s\n", dir, strerror(errno));
                return EXIT_FAILURE;
        }
        snprintf(sock, sizeof(sock), "%s/bench.sock", dir);
        /* The blocks, plus a few extents of slack. */
        snprintf(host_bytes, sizeof(host_bytes), "%" PRIu64 "M", (n * 4096 >> 20) + 64);
        pid = spawn(kvdrived, sock, host_bytes);
        c = bench_wait_daemon(pid, sock, "kvdrive-bench footprint", 60);
        if (!c) {
                fprintf(stderr, "kvdrive-bench: %s did not start\n", kvdrived);
                goto out;
        }
        r = put_all(c, n);
        if (r == 0)
                r = kvc_stats_get(c, &st);
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench: storing %" PRIu64 " blocks failed: %s\n", n, kvc_strerror(r));
                goto out;
        }
        printf("footprint: %" PRIu64 " blocks, index %" PRIu64 " bytes (%" PRIu64 " table slots) = %.2f B "
               "per block (daemon: %" PRIu32 ")\n", st->index_entries, st->index_bytes, st->index_capacity,
               st->index_entries ? (double)st->index_bytes / (double)st->index_entries : 0.0,
               st->index_bytes_per_block);
        ret = st->index_entries == n ? EXIT_SUCCESS : EXIT_FAILURE;
        if (ret == EXIT_SUCCESS && bench_footprint_index(n) < 0) {
                fprintf(stderr, "kvdrive-bench: the in-process index run failed\n");
                ret = EXIT_FAILURE;
        }
out:
        kvc_stats_free(st);
        kvc_disconnect(c);
        if (pid > 0) {
                kill(pid, SIGTERM);
                waitpid(pid, &status, 0);
        }
        return ret;
}

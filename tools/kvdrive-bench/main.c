/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench: measurements against a running kvdrived.
 *
 *   kvdrive-bench COMMAND [options]     (kvdrive-bench COMMAND --help)
 *
 * A new workload is one more file and one more line in commands[].
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kvd-build.h"

static const struct bench_command commands[] = {
        { "transfer", bench_transfer, "Put/Get bandwidth of N clients against memcpy" },
        { "ssd", bench_ssd, "Get of SSD-only blocks at several queue depths against fio" },
        { "restart", bench_restart, "time for a daemon to come back with N blocks on SSD" },
        { "footprint", bench_footprint, "index bytes per block the daemon measures with N blocks" },
        { "gen", bench_gen, "write a synthetic decode trace (docs/trace-format.md)" },
        { "decode", bench_decode, "long-context decode: full, sparse, lru policies; tokens/s and accuracy" },
        { "report", bench_report, "decode sweep (context, budget, clients) into Markdown, CSV and plots" },
        { "select", bench_select, "block selection methods against the oracle on one trace (no daemon)" },
        { "selection", bench_selection, "the selection methods on the preset zoo: Markdown, CSV, plots" },
        { "interference", bench_interference, "how long one client's costliest requests delay another's Get" },
        { "remote", bench_remote, "Get of blocks only the remote tier (Redis Cluster) has, against redis-benchmark" },
        { "rtt", bench_rtt, "the control round trip (Lookup, one-block Get) beside a bare socket echo, idle and loaded" },
        { "codec", bench_codec, "ratio, GB/s and accuracy cost of the cold tiers' codecs on a generated trace" },
};

static void usage(FILE *f)
{
        fprintf(f, "Usage: kvdrive-bench COMMAND [options]\n"
                   "       kvdrive-bench COMMAND --help\n"
                   "       kvdrive-bench --version\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                usage(stderr);
                return BENCH_EXIT_USAGE;
        }
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                usage(stdout);
                return EXIT_SUCCESS;
        }
        if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
                printf("kvdrive-bench %s\n", KVD_VERSION);
                return EXIT_SUCCESS;
        }
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
                if (strcmp(argv[1], commands[i].name) == 0) {
                        /* The command parses its own options from argv[1]. */
                        optind = 0;
                        return commands[i].run(argc - 1, argv + 1);
                }
        }
        fprintf(stderr, "kvdrive-bench: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return BENCH_EXIT_USAGE;
}

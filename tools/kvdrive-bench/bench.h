/* SPDX-License-Identifier: MIT */
/* kvdrive-bench: what the subcommands share. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

typedef struct kvc_client kvc_client; /* kvdrive/client.h */

#define BENCH_EXIT_USAGE 2

/* A subcommand: argv[0] is its name; getopt state is fresh. Returns the
 * process exit status. */
struct bench_command {
        const char *name;
        int (*run)(int argc, char **argv);
        const char *help;
};

int bench_transfer(int argc, char **argv);
int bench_ssd(int argc, char **argv);
int bench_restart(int argc, char **argv);
int bench_footprint(int argc, char **argv);
/* The in-process index part of footprint: 0 or -errno. */
int bench_footprint_index(uint64_t n);
int bench_gen(int argc, char **argv);
int bench_decode(int argc, char **argv);
int bench_report(int argc, char **argv);
int bench_interference(int argc, char **argv);
int bench_rtt(int argc, char **argv);
int bench_remote(int argc, char **argv);
int bench_select(int argc, char **argv);
int bench_selection(int argc, char **argv);
int bench_codec(int argc, char **argv);

/* Comma-separated sizes into a new array (free()), count in *ret_n. */
int bench_parse_sizes(const char *s, uint64_t **ret, size_t *ret_n);

/* A decimal unsigned in [min, max]. 0 or -EINVAL/-ERANGE. */
int bench_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret);

/* A gnuplot process drawing a PNG into out/png: the caller writes the rest
 * of the script to it and ends with bench_plot_close() (0, or -1 when
 * gnuplot failed). NULL when gnuplot cannot be started. */
FILE *bench_plot_open(const char *out, const char *png);
int bench_plot_close(FILE *f);

/* "64K" for 65536: the shortest exact power-of-1024 form. */
const char *bench_format_size(char *buf, size_t size, uint64_t v);

/* CLOCK_MONOTONIC in nanoseconds: comparable across processes. */
uint64_t bench_now_ns(void);

/* Connects to the daemon of process pid at sock (as client name) as soon
 * as it answers, looking every millisecond; NULL after timeout_s or once
 * the process has exited. */
kvc_client *bench_wait_daemon(pid_t pid, const char *sock, const char *name, unsigned timeout_s);

/* Median of v[0..n), sorting v in place; 0 for n == 0. */
double bench_median(double *v, size_t n);

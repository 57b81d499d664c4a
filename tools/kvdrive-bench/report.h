/* SPDX-License-Identifier: MIT */
/* kvdrive-bench report's rows, shared by report.c (the sweep, the tables)
 * and report-plots.c (the gnuplot PNGs). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CMD_MAX 1024

/* The policies, in the order of the tables and plots. */
static const char *const policies[] = { "full", "sparse", "lru", "kvdrive" };
#define N_POL 4

/* One row of the sweep: its command and the numbers of its median run. */
struct run_row {
        uint32_t ctx, clients, geom, trace;
        const char *policy;
        double budget;
        bool in_ctx, in_budget, in_clients, in_geom;
        uint32_t reps;                  /* runs made; the one of median tokens/s is kept */
        char cmd[CMD_MAX];
        bool ok;
        double tps_min, tps_max;        /* over the runs */
        double staged, miss_layers, hidden_layers, two_pass; /* kvdrive's pipeline */
        double oracle;                  /* mass recall of the best selection of the same size */
        /* from the JSON */
        double tps, p50, p99, mass, mass_min, topk, err, err_max;
        double dev_hit, pref_hit, host_hit;
        double h2d_per_tok, ssd2h_per_tok, io_wait, attn, select, compute, mean;
        uint32_t slots, kmax;
};

/* The three PNGs into out: tokens/s and bytes per token against context at
 * budget, mass recall against the budget at budget_ctx. 0, or -1 (said on
 * stderr) when gnuplot failed. */
int report_plots(const char *out, const struct run_row *rows, size_t n, double budget, uint32_t budget_ctx);

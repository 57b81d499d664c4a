/* SPDX-License-Identifier: MIT */
/* kvdrive-bench report's plots (gnuplot PNGs) of the sweep's rows. */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "report.h"

/* The log-log context axis of the plots against context. */
#define CTX_AXIS                                                                                        \
        "set xlabel 'context (tokens)'\nset logscale xy\nset grid\nset pointsize 1.3\n"                  \
        "set xtics (\"16K\" 16384, \"32K\" 32768, \"64K\" 65536, \"128K\" 131072, \"256K\" 262144)\n" \
        "set xrange [12000:180000]\n"

/* tokens/s vs context per policy (1 client, the main budget), log-log. */
static int plot_tps(const char *out, const struct run_row *rows, size_t n, double budget)
{
        FILE *f = bench_plot_open(out, "tokens_per_s_vs_context.png");

        if (!f)
                return -1;
        fprintf(f, "set title 'Decode throughput vs context (budget %.0f%%, 1 client, 4 layers, SSD tier)'\n"
                   CTX_AXIS "set ylabel 'tokens/s (log scale)'\nset key top right\n",
                budget * 100);
        for (int p = 0; p < N_POL; p++) {
                fprintf(f, "$%s << EOD\n", policies[p]);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].ok && rows[i].in_ctx && strcmp(rows[i].policy, policies[p]) == 0)
                                fprintf(f, "%u %.4f\n", rows[i].ctx, rows[i].tps);
                fprintf(f, "EOD\n");
        }
        fprintf(f, "plot $full with linespoints lw 2 title 'full (FlexGen-style)', "
                   "$sparse with linespoints lw 2 title 'sparse (InfiniGen-style)', "
                   "$lru with linespoints lw 2 title 'lru', "
                   "$kvdrive with linespoints lw 2 title 'kvdrive'\n");
        return bench_plot_close(f);
}

/* Mass recall (and top-k recall) vs budget per policy, at the budget context. */
static int plot_recall(const char *out, const struct run_row *rows, size_t n, uint32_t ctx)
{
        FILE *f = bench_plot_open(out, "mass_recall_vs_budget.png");

        if (!f)
                return -1;
        fprintf(f, "set title 'Accuracy vs device budget (top-k = budget; context %uK, 1 client; sparse, lru and "
                   "kvdrive select alike)'\n"
                   "set xlabel 'budget (%% of the KV blocks; top-k fraction per layer)'\n"
                   "set ylabel 'recall'\nset yrange [0:1.05]\nset xrange [0:25]\nset grid\nset key bottom right\n"
                   "set pointsize 1.3\n",
                ctx / 1024);
        for (int p = 0; p < N_POL; p++) {
                fprintf(f, "$%s << EOD\n", policies[p]);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].ok && rows[i].in_budget && strcmp(rows[i].policy, policies[p]) == 0)
                                fprintf(f, "%.2f %.5f %.5f\n", rows[i].budget * 100, rows[i].mass, rows[i].topk);
                if (strcmp(policies[p], "full") == 0)   /* exact at any budget */
                        fprintf(f, "0.5 1 1\n25 1 1\n");
                fprintf(f, "EOD\n");
        }
        /* sparse and lru select the same top-k (their difference is what
         * moves, not what is attended): drawn so that both show. */
        fprintf(f, "plot $full using 1:2 with lines lw 2 dt 2 lc rgb '#9400d3' title 'full: mass recall (exact, any budget)', "
                   "$sparse using 1:2 with linespoints lw 3 pt 7 ps 2 lc rgb '#009e73' title 'sparse: mass recall', "
                   "$lru using 1:2 with linespoints lw 2 dt 2 pt 5 lc rgb '#0072b2' title 'lru: mass recall', "
                   "$sparse using 1:3 with linespoints lw 3 pt 6 ps 2 lc rgb '#d55e00' title 'sparse: top-k block recall', "
                   "$lru using 1:3 with linespoints lw 2 dt 2 pt 4 lc rgb '#e69f00' title 'lru: top-k block recall'\n");
        return bench_plot_close(f);
}

/* Bytes host -> device per token vs context. */
static int plot_bytes(const char *out, const struct run_row *rows, size_t n, double budget)
{
        FILE *f = bench_plot_open(out, "bytes_per_token_vs_context.png");

        if (!f)
                return -1;
        fprintf(f, "set title 'Data moved per decoded token (budget %.0f%%, 1 client)'\n"
                   CTX_AXIS "set ylabel 'MiB per token (log scale)'\nset key top left\n",
                budget * 100);
        for (int p = 0; p < N_POL; p++) {
                fprintf(f, "$%s << EOD\n", policies[p]);
                for (size_t i = 0; i < n; i++)
                        if (rows[i].ok && rows[i].in_ctx && strcmp(rows[i].policy, policies[p]) == 0)
                                fprintf(f, "%u %.5f %.5f\n", rows[i].ctx, rows[i].h2d_per_tok > 0 ? rows[i].h2d_per_tok : 1e-3,
                                        rows[i].ssd2h_per_tok > 0 ? rows[i].ssd2h_per_tok : 1e-3);
                fprintf(f, "EOD\n");
        }
        fprintf(f, "plot $full using 1:2 with linespoints lw 2 pt 7 title 'full: host->device', "
                   "$sparse using 1:2 with linespoints lw 2 pt 5 title 'sparse: host->device', "
                   "$lru using 1:2 with linespoints lw 2 pt 9 title 'lru: host->device', "
                   "$full using 1:3 with linespoints lw 1 dt 2 pt 6 title 'full: SSD->host', "
                   "$sparse using 1:3 with linespoints lw 1 dt 2 pt 4 title 'sparse: SSD->host', "
                   "$lru using 1:3 with linespoints lw 1 dt 2 pt 8 title 'lru: SSD->host', "
                   "$kvdrive using 1:2 with linespoints lw 2 pt 11 title 'kvdrive: host->device', "
                   "$kvdrive using 1:3 with linespoints lw 1 dt 2 pt 10 title 'kvdrive: SSD->host'\n");
        return bench_plot_close(f);
}

/* The 1-minute load average: the machine may be shared. */
int report_plots(const char *out, const struct run_row *rows, size_t n, double budget, uint32_t budget_ctx)
{
        if (plot_tps(out, rows, n, budget) < 0 || plot_recall(out, rows, n, budget_ctx) < 0 ||
            plot_bytes(out, rows, n, budget) < 0) {
                fprintf(stderr, "kvdrive-bench report: gnuplot failed: the plots are missing\n");
                return -1;
        }
        return 0;
}

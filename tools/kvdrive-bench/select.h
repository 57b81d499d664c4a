/* SPDX-License-Identifier: MIT */
/*
 * Block selection methods (kernels.h, enum kvk_method) measured against the
 * best possible selection of the same size on a decode trace, with no
 * daemon: `kvdrive-bench select` for one trace, `kvdrive-bench selection`
 * for the preset zoo (docs/bench/decode/selection/results.md).
 *
 * For a spread of decode steps and every layer (a "sample"), with the
 * blocks of --block-tokens tokens stored before the step and its tail block:
 *  - the true mass of each block (kvk_block_attention_mass()) and the exact
 *    output (full attention, merged in double: kvb_reference_attention());
 *  - the oracle of each budget: the forced sink and local blocks, then the
 *    others by true mass, as many as the method may take;
 *  - per method and budget (k = ceil(budget * stored blocks), forced blocks
 *    included, the tail always attended): mass recall, relative L2 error of
 *    the output, top-k recall;
 *  - per MASS method and target: the dynamic budget of kvk_select_mass(),
 *    with the same figures and the share of the blocks it took;
 *  - the microseconds of one kvk_method_scores() call over a layer's blocks.
 * And the trace itself: its concentration (mass in the best 10% of blocks,
 * no block forced) and stability (share of a step's best 10% still among
 * the best 10% one step later).
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>

#include "kernels.h"
#include "trace.h"

#define KVB_SEL_MAX_POINTS 32u  /* budgets, targets */

struct kvb_sel_opts {
        uint32_t block_tokens, sink, local;
        uint32_t samples;               /* decode steps sampled, spread evenly (>= 1) */
        uint32_t methods;               /* bit mask of enum kvk_method */
        uint32_t n_budgets, n_targets;
        double budgets[KVB_SEL_MAX_POINTS];     /* in (0, 1], ascending */
        double targets[KVB_SEL_MAX_POINTS];     /* estimated mass, in (0, 1] */
};

/* Means over the samples (min / max where named). */
struct kvb_sel_stat {
        double recall, recall_min;      /* attention-mass recall */
        double err, err_max;            /* relative L2 error of the output */
        double topk;                    /* top-k recall (fixed budgets) */
        double frac;                    /* blocks taken / blocks stored */
        uint64_t n;
};

struct kvb_sel_result {
        uint64_t samples;
        uint32_t blocks;                /* stored blocks per layer at the last sampled step */
        double concentration, stability;
        struct kvb_sel_stat oracle[KVB_SEL_MAX_POINTS];
        /* The least blocks (forced ones, then by true mass) whose true mass
         * reaches each target: what a perfect estimate would take. */
        struct kvb_sel_stat oracle_dynamic[KVB_SEL_MAX_POINTS];
        struct kvb_sel_stat fixed[KVK_N_METHODS][KVB_SEL_MAX_POINTS];
        struct kvb_sel_stat dynamic[KVK_N_METHODS][KVB_SEL_MAX_POINTS];
        double score_us[KVK_N_METHODS];         /* median of the samples */
        double summary_bytes[KVK_N_METHODS];    /* per block */
        double block_bytes;
};

/* The defaults of `kvdrive-bench select`. */
struct kvb_sel_opts kvb_sel_opts_default(void);

/* Runs o on the open trace tr into *r. 0, or -errno with err set. */
int kvb_select_run(const struct kvb_trace *tr, const struct kvb_sel_opts *o, struct kvb_sel_result *r, char *err,
                   size_t errlen);

/* Parses "a,b,c" (numbers in (0, 1], ascending when ascending) into v.
 * The count, or -EINVAL. */
int kvb_sel_parse_points(const char *s, double *v, bool ascending);

/* Parses "all" or "quest,gauss,..." into a method mask; -EINVAL. */
int kvb_sel_parse_methods(const char *s, uint32_t *ret_mask);

/* The smallest budget of r at which method m's mean recall is >= recall
 * and its mean error <= err; NAN when none is. */
double kvb_sel_budget_needed(const struct kvb_sel_opts *o, const struct kvb_sel_result *r, enum kvk_method m,
                             double recall, double err);

/* The options `select` and `selection` share (--methods, --budgets,
 * --targets, --block-tokens, --sink, --local, --samples): their getopt
 * entries, written to lo (7; their values from KVB_SEL_OPT0 up), and their
 * parser: 1 when c was one of them and arg is good, 0 when c is not one of
 * them, -EINVAL once it has said why on stderr (as `kvdrive-bench cmd`). */
#define KVB_SEL_OPT0 512
struct option;
size_t kvb_sel_longopts(struct option *lo);
int kvb_sel_parse_option(const char *cmd, int c, const char *arg, struct kvb_sel_opts *o);

/* The result as JSON (`select --json`; NaN figures as null). */
struct json_t *kvb_sel_json(const struct kvb_sel_opts *o, const struct kvb_sel_result *r);

/* The result as the table `kvdrive-bench select` prints. */
void kvb_sel_print(FILE *f, const char *name, const struct kvb_sel_opts *o, const struct kvb_sel_result *r);

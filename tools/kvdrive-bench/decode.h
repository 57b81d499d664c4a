/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: what the files of the subcommand share (private to
 * it). decode.c parses the options, plans the run, forks the clients and
 * prints the results; decode-client.c is the body of a client process;
 * decode-step.c the per-step loop and what the policies share (request
 * groups, block selection, attention, the tail); decode-full.c,
 * decode-sparse.c, decode-lru.c and decode-kvdrive.c one policy each,
 * behind struct decode_policy, none of them using another;
 * decode-predict.c the layer-to-layer query maps that sparse and kvdrive
 * predict with; decode-accuracy.c the accuracy records and their
 * measurement; decode-dev-*.c the devices behind struct decode_device
 * (decode-device.h), which hold the pool and run the kernels. decode.c's
 * header comment describes the design.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kvdrive/client.h>
#include <kvdrive/sparse.h>

#include "decode-device.h"
#include "kernels.h"
#include "metrics.h"
#include "trace.h"

#define MAX_GROUP 64u           /* requests of one group (a fetch of one layer) */
#define MAX_DEPTH 32u
#define NONE UINT32_MAX
#define WAIT_MS 300000         /* longest wait for the daemon */

enum policy { POL_FULL, POL_SPARSE, POL_LRU, POL_KVDRIVE };

enum device { DEV_CPU, DEV_CUDA };

/* How sparse predicts layer l+1's query at layer l. */
enum predict { PRED_MAPPED, PRED_RAW };

struct run;
struct client;
struct seqstate;
struct decode_opts;

/*
 * A policy: how a client's sequences choose, fetch and attend the blocks of
 * each layer. Unless said otherwise an op returns 0, or -1 once it has
 * printed why (child_fail()), and may be NULL when it has nothing to do.
 */
struct decode_policy {
        const char *name;
        /* Sizes run->policy_slots (per sequence) and run->ring_slots. */
        void (*size)(struct run *run);
        /* Whether it needs the layer-to-layer query maps (calibrate()). */
        bool (*predicts)(const struct decode_opts *o);
        int (*client_init)(struct client *cl);  /* the pool exists, the sequences not yet */
        void (*client_free)(struct client *cl);
        int (*seq_init)(struct client *cl, struct seqstate *sq);
        void (*seq_free)(struct client *cl, struct seqstate *sq);
        /* Key of block b of sq (prefill, appends, deletes). NULL: private
         * keys of sq->id. */
        void (*block_key)(const struct client *cl, const struct seqstate *sq, uint32_t b, struct kvc_key *ret);
        /* Sends what layer l of step t needs (n stored blocks), before any
         * sequence attends. */
        int (*prepare)(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t t, uint32_t n);
        /* Attends layer l (its tail holds tail_valid tokens), recording the
         * result if rec. */
        int (*attend)(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid, bool rec,
                      uint32_t t);
        /* The tail: layer l's is full, block b (Put it); and the wait until the
         * tail slot may be written again. NULL: decode-step.c's. */
        int (*tail_put)(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t b);
        int (*tail_wait)(struct client *cl, struct seqstate *sq, uint32_t l);
        /* Adds what it counted to cl->res at the end of the run. */
        void (*finish)(struct client *cl);
};

extern const struct decode_policy decode_full, decode_sparse, decode_lru, decode_kvdrive;

struct decode_opts {
        const char *socket;
        const char *trace_dir;          /* NULL: generate one */
        const char *ns_name;            /* NULL: from the geometry */
        enum policy policy;
        enum device device;
        enum predict predict;
        enum kvk_method method;         /* summaries and scores (kernels.h) */
        uint32_t clients, seqs;
        double budget, topk;            /* topk 0: = budget */
        uint32_t sink, local, block_tokens, compute_us;
        uint32_t steps;                 /* 0: all of the trace's */
        uint32_t acc_every;             /* 0: no accuracy */
        double stage;                   /* kvdrive: next-step guesses staged per layer, at most this x top-k */
        double stage_layer;             /* kvdrive: next-layer predictions staged, at most this x top-k */
        bool report_scores;             /* kvdrive: report attention scores to the daemon */
        bool one_pass;                  /* kvdrive: never two passes (kvc_sparse's split_min at its most) */
        double mass_target;             /* kvdrive: kvc_sparse's dynamic budget (0: the top-k) */
        uint32_t batch, depth;
        /* the generated trace */
        uint32_t gen_tokens, gen_layers, gen_steps;
        uint64_t seed;
        bool json;
};

/* Everything fixed before the fork. */
struct run {
        struct decode_opts o;
        const struct decode_policy *pol;
        const struct decode_device *dev;
        struct kvb_trace *tr;
        const struct kvb_trace_meta *m;
        char gen_dir[256];              /* the generated trace, "" if none */
        char ns_name[128];
        struct kvc_geometry g;
        struct kvk_shape shape;
        uint32_t T, layers, prompt, steps;
        uint32_t max_blocks;            /* blocks of a layer at the end */
        uint32_t kmax;                  /* largest top-k of a layer */
        double topk;
        uint64_t block_bytes;
        size_t sum_floats, qd;          /* floats of a summary, of a query */
        uint32_t budget_slots;          /* --budget of a sequence */
        uint32_t policy_slots;          /* slots a sequence's policy uses */
        uint32_t ring_slots;            /* full: the shared ring */
        uint32_t pool_slots;            /* of a client */
        uint32_t group_reqs;            /* requests of one fetch of one sequence */
        uint32_t acc_records;           /* per client */
        float *xmap;                    /* sparse, mapped: [layers-1][kv_heads][D][D] */
};

/* ---- child -> parent messages --------------------------------------- */

enum { MSG_READY = 1, MSG_DONE = 2, MSG_RESULT = 3 };

struct child_result {
        uint32_t type;
        uint32_t n_lat;                 /* RESULT: step latencies that follow (uint64 ns) */
        uint64_t prefill_ns;
        uint64_t start_ns, end_ns;      /* decode phase */
        uint64_t tokens, steps;
        uint64_t got_blocks;            /* Gets into device slots during decode */
        uint64_t put_blocks;            /* decode appends */
        uint64_t prefill_blocks;
        uint64_t dev_hits, dev_misses;  /* lru: cache; sparse: prefetch */
        uint64_t staged_blocks;         /* kvdrive: blocks staged SSD -> host ahead of demand */
        uint64_t miss_layers, hidden_layers; /* kvdrive: layers with misses; of those, misses landed
                                              * before attention over the hits ended */
        uint64_t two_pass_layers;       /* kvdrive: layers attended in two passes */
        uint64_t select_ns, wait_ns, attn_ns, compute_ns;
        uint64_t acc_samples, topk_samples;
        double mass_sum, mass_min, topk_sum, err_sum, err_max;
        double oracle_sum;              /* mass recall of the best selection of the same size */
};

/* ---- a client ----------------------------------------------------------- */

/* Requests of one fetch, waited together. */
struct group {
        uint64_t id[MAX_GROUP];
        uint32_t first[MAX_GROUP], count[MAX_GROUP];
        uint32_t n_req;
        uint32_t *blk;                  /* block of each item (for messages) */
        uint8_t *status;                /* cap items */
        uint32_t cap, layer;
};

struct seqstate {
        struct kvc_key id;              /* private keys (policies without block_key) */
        uint32_t slot0;                 /* its policy slots */
        uint32_t tail0;                 /* its tail slots, one per layer */
        uint64_t *put_id;               /* [layers]: the tail's Put in flight, 0 none */
        uint8_t *put_st;
        uint32_t *sel, nsel;            /* the layer's selection (stored blocks) */
        uint32_t *sel_slot;
        struct group demand;
        void *pol;                      /* the policy's own state */
};

struct acc_rec {
        uint32_t step, layer, nsel;
        uint32_t *sel;
        float *out;
};

struct client {
        const struct run *run;
        unsigned idx;
        int up, down;
        kvc_client *c;
        uint32_t ns, max_items;
        kvc_pool *pool;
        void *dev;                      /* the device's own state (decode-device.h) */
        float *scores, *q, *q0, *out, *part, *plse;
        double *acc, *acc_lse;          /* partial attentions merged so far (kvb_merge_double()) */
        float *out_lse;                 /* kvdrive: out's lse, as the misses merge in */
        const void **ptrs;
        uint32_t *valid;
        struct kvc_block_ref *refs;
        uint32_t *blkid, *sel2;         /* scratch */
        struct seqstate *seqs;
        struct group ring[MAX_DEPTH];   /* prefill's, and full's */
        struct acc_rec *recs;
        uint32_t n_recs;
        uint32_t *rec_sel;
        float *rec_out;
        uint64_t *lat;
        void *pol;                      /* the policy's own state */
        struct child_result res;
};

/*
 * Unless said otherwise, a function below that returns int returns 0, or
 * -1 once it has printed why (child_fail()). A client owns what it points
 * to, run aside (client_main() frees it).
 */

/* ---- decode-client.c ------------------------------------------------- */

/* Print "client N: " and the message to stderr; return -1. daemon_fail()
 * adds kvc_strerror(err) and the daemon's last error. */
__attribute__((format(printf, 2, 3)))
int child_fail(const struct client *cl, const char *fmt, ...);
int daemon_fail(const struct client *cl, const char *what, int err);

/* The body of one client process (cl: run, idx, up, down set; the rest
 * zero). Returns its exit status. */
int client_main(struct client *cl);

/* ---- decode-step.c --------------------------------------------------- */

void copy_tokens(const struct run *run, uint32_t l, uint32_t b, uint32_t from, uint32_t to, void *dst);
void load_query(const struct run *run, uint32_t step, uint32_t l, float *dst);
uint32_t k_of(const struct run *run, uint32_t n);

/* group_init: 0 or -ENOMEM; group_free undoes it. */
int group_init(struct group *g, uint32_t cap);
void group_free(struct group *g);
int group_submit(struct client *cl, struct group *g, bool put, const struct kvc_block_ref *refs,
                 const uint32_t *blk, uint32_t n, uint32_t max_req);
int group_wait(struct client *cl, struct group *g, bool put);

void *slot_ptr(const struct client *cl, uint32_t slot);
/* Scores layer l's first n blocks with query q and writes its top-k to
 * ret: the number written, or -1. */
int select_blocks(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t *ret);
/* acc/lse += part/plse on the host, in double. */
/* Attention over cl->ptrs / cl->valid [0, n) on the run's device, timed:
 * into OUT, or (part) PART, each with its lse (decode-device.h). */
int attend(struct client *cl, uint32_t n, bool part);
/* The device's OUT += PART (kvk_lse_merge()). */
int merge_out(struct client *cl);
/* The device's ACC: emptied, PART merged into it, copied to OUT. */
int acc_reset(struct client *cl);
int acc_merge(struct client *cl);
int acc_out(struct client *cl);

/* Step t of every sequence of the client, layer by layer. */
int decode_step(struct client *cl, uint32_t t);

/* Block keys of sq under the run's policy. */
void block_key(const struct client *cl, const struct seqstate *sq, uint32_t b, struct kvc_key *ret);
/* Waits for sq's demand group, then attends its selection and the tail:
 * what sparse and lru do. */
int attend_selected(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t tail_valid, bool rec, uint32_t t);

/* ---- decode-predict.c ------------------------------------------------- */

/* calibrate: 0, -ENOMEM or -EDOM; fills run->xmap (run_free() frees it). */
int calibrate(struct run *run);
/* Layer l's query mapped into layer l+1's key space. */
void map_query(const struct run *run, uint32_t l, const float *q, float *dst);

/* ---- decode-accuracy.c ----------------------------------------------- */

/* Keeps step t's selection and output (the device's OUT) of layer l (sel
 * ignored when all: blocks 0..nsel-1) while cl->recs has room. */
int record(struct client *cl, uint32_t t, uint32_t l, const uint32_t *sel, uint32_t nsel, bool all);
int accuracy(struct client *cl);

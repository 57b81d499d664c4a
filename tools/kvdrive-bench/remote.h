/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench remote's two halves: remote.c (the blocks, the measurements,
 * the report) and remote-setup.c (the programs it runs, the cluster, the
 * daemons, the sizing, the temporary directory and its watchdog).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <kvdrive/client.h>

#define MAX_REPEAT 15
#define MAX_MASTERS 16
#define PUT_BATCH 32u
#define SAMPLES 16u
#define BLOCK_UNIT 4096u                /* block bytes per token of the geometry */
#define DEFAULT_BYTES (2ull << 30)      /* per block size, without --blocks: runs of ~0.5 s and more */
#define MAX_BLOCK (8ull << 20)          /* under the daemon's remote-max-value-bytes (16M) */
#define LOAD_PASSES 40                  /* redis-benchmark -t set passes, at most */
#define CMD_TIMEOUT_S 600
#define WAIT_MS 120000
#define JSON_SCHEMA 1

#ifndef KVB_REDIS_CLUSTER
#define KVB_REDIS_CLUSTER ""
#endif
#ifndef KVB_KVDRIVED
#define KVB_KVDRIVED ""
#endif

struct remote_opts {
        const char *seeds;              /* NULL: a cluster of our own */
        const char *script;             /* tools/redis-cluster */
        const char *kvdrived;
        uint64_t *sizes;
        size_t n_sizes;
        uint64_t blocks;                /* per size; 0: DEFAULT_BYTES' worth */
        uint64_t depth, batch, repeat, rb_threads;
        bool json;
};

struct node {
        char host[64];
        char port[8];
};

struct daemon {
        const char *name;               /* "A", "B" */
        char sock[280];
        pid_t pid;
        kvc_client *c;
};

struct bench {
        struct remote_opts o;
        char kvdrived[4096], script[4096];
        char dir[256];                  /* ours: cluster/, a/, b/ */
        char cluster_dir[300];          /* "" unless we started one */
        bool cluster_up;                /* ours, and not stopped yet */
        char seeds[1024];
        struct node masters[MAX_MASTERS];
        unsigned n_masters;
        int watchdog;                   /* its pipe's write end, or -1 */
        uint64_t *blocks;               /* per size */
        struct daemon a, b;
};

/* B's remote tier, summed over its nodes. */
struct remote_snap {
        uint64_t hits, misses, writes, write_skips, crc_failures, errors;
        uint64_t node_hits, node_read_bytes, node_lat_sum;
        uint64_t node_hist[KVC_LOOP_BUCKETS];
        uint32_t n_nodes, nodes_up;
        char condition[96];
};

/* One block size's results. */
struct row {
        uint64_t size, blocks, value_bytes, rb_keys;
        uint32_t rb_pipeline, load_passes;
        double kvd[MAX_REPEAT], rb[MAX_REPEAT], ratio[MAX_REPEAT];      /* GiB/s, GiB/s, kvd/rb */
        double lat_mean_us[MAX_REPEAT];         /* B's remote GETs, as its nodes measured them */
        uint64_t lat_p99_us[MAX_REPEAT];        /* upper bound of the p99's histogram bucket */
        double rb_hit_rate;                     /* the lowest of its rounds */
        double rb_avg_ms[MAX_REPEAT];           /* redis-benchmark's avg_latency_ms */
        /* CPU seconds per GiB moved: B, the client (us) and the masters
         * for kvdrive; redis-benchmark and the masters for it. */
        double kvd_cpu[3][MAX_REPEAT], rb_cpu[2][MAX_REPEAT];
};

int run_cmd_cpu(const char *const *argv, char *out, size_t size, int timeout_s, double *ret_cpu_s);
double proc_cpu_s(pid_t pid);
double self_cpu_s(void);
const char *remote_env_or(const char *name, const char *dflt);
__attribute__((sentinel)) int redis_cli(const struct node *n, char *out, size_t size, ...);
int masters_info(const struct bench *b, const char *section, const char *const *names, size_t n, double *ret);
int64_t count_rb_keys(const struct bench *b, unsigned m);
int remote_snap(kvc_client *c, struct remote_snap *ret);
void remote_sleep_ms(unsigned ms);
int remote_find_programs(struct bench *b);
int remote_setup(struct bench *b);
int remote_teardown(struct bench *b);

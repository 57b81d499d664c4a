/* SPDX-License-Identifier: MIT */
/*
 * kvdrived configuration: one table of options (util/config.c) read from
 * embedded defaults, then the INI file (--config, section [kvdrived]), then
 * the command line. Everything else receives a `const struct kvd_config *`.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/un.h>

#include "access.h"
#include "size.h"

enum kvd_eviction {
        KVD_EVICT_HEAT,         /* the coldest of the least recent few */
        KVD_EVICT_LRU,          /* the least recent (baseline) */
};

enum kvd_lock_mode {
        KVD_LOCK_TRY,           /* mlock; on failure warn and go on unpinned */
        KVD_LOCK_REQUIRED,      /* mlock or refuse to start */
        KVD_LOCK_OFF,
};

/* Options in the table, at most (a static check in config.c). */
#define KVD_CONFIG_OPTIONS_MAX 96
/* max-namespaces' limit: a block record holds its namespace id in
 * KVD_BLOCK_NS_BITS (core/index.h). */
#define KVD_CONFIG_NAMESPACES_MAX 4096

enum kvd_config_source {
        KVD_SOURCE_DEFAULT = 0,
        KVD_SOURCE_FILE,
        KVD_SOURCE_CLI,
        KVD_SOURCE_ENV,
};

/* One option's effective setting, for kvdrivectl config. */
struct kvd_config_item {
        const char *name;
        char value[1024];       /* as text; sizes in bytes, 0 for no cap */
        const char *source;     /* "default", "file", "command line", "environment" */
};

struct kvd_config {
        char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
        char config_file[256];
        bool foreground;
        int log_level;
        char log_file[256];             /* detached: log here (empty: the default) */
        uint32_t socket_mode;
        uint64_t host_bytes;
        uint64_t host_extent_bytes;     /* slab extent; also the largest block */
        int host_numa_node;             /* -1: no binding */
        int host_lock;                  /* enum kvd_lock_mode */
        bool host_hugepages;
        uint64_t index_blocks;          /* initial index capacity hint */
        char ssd_dirs[1024];            /* comma-separated; empty: no SSD tier */
        uint64_t ssd_bytes;             /* 0: no SSD tier */
        uint64_t ssd_extent_bytes;
        uint32_t ssd_queue_depth;
        bool ssd_write_through;         /* every Put is written to SSD at once */
        uint32_t ssd_admit_reads;       /* demote only blocks read this often */
        uint32_t ssd_codec;             /* enum kvd_codec: how blocks are stored on SSD */
        uint32_t ssd_threads;           /* the SSD tier's CPU work (tiers/ssd.c) */
        uint32_t ssd_checkpoint_interval; /* seconds; 0: checkpoint only at a clean stop */
        uint32_t ssd_checkpoint_step;   /* blocks gathered per loop turn */
        char remote[1024];              /* redis-cluster://HOST:PORT[,...]; empty: no remote tier */
        uint32_t remote_timeout_ms;
        uint32_t remote_connect_timeout_ms;
        uint32_t remote_ttl_s;          /* 0: no expiry */
        uint64_t remote_max_value_bytes;
        uint64_t remote_max_inflight_bytes;
        uint32_t remote_admit_reads;    /* 0: write-through at Put */
        uint32_t remote_codec;          /* enum kvd_codec: how blocks are stored remotely */
        int eviction;                   /* enum kvd_eviction */
        uint32_t heat_half_life_ms;
        bool promote_next_layer;        /* stage layer l+1 from SSD when l is read */
        uint32_t workers;
        uint32_t loop_poll_us;          /* kvd_loop.poll_ns */
        uint32_t max_clients;
        uint32_t max_clients_per_uid;   /* uid 0 exempt */
        uint32_t max_namespaces;
        uint32_t max_pools_per_client;
        uint64_t max_pool_bytes_per_client;
        uint32_t max_inflight_per_client;
        uint32_t max_frame;
        uint32_t max_items;
        uint64_t max_outq_bytes;        /* replies queued for a slow client */
        char cuda_module[256];          /* path of kvdrive-cuda.so */
        char admin_group[64];           /* its members (and uid 0) manage everything */
        char metrics_listen[80];        /* ADDR:PORT of the Prometheus endpoint; empty: off */
        gid_t admin_gid;                /* admin_group resolved */
        struct kvd_quota quota;         /* per uid, unless a [quota] section says otherwise */
        /* [namespace] and [quota] sections of the config file; owned. */
        struct kvd_access *access;
        /* Where each option's value came from (enum kvd_config_source),
         * by its index in the option table. */
        uint8_t source[KVD_CONFIG_OPTIONS_MAX];
};

/* Fills cfg from defaults, the config file and argv. Returns 0, 1 when the
 * program should exit successfully (--help, --version), or -errno after
 * printing a clear message on stderr. Free a cfg loaded (0) with
 * kvd_config_free(); otherwise nothing needs freeing. */
int kvd_config_load(struct kvd_config *cfg, int argc, char **argv);

/*
 * SIGHUP: reads the configuration again as kvd_config_load() did at start
 * (argv still wins over the file) into a new struct, and, only if all of it
 * is valid, copies the settings that can change live into cfg (limits,
 * quotas and access rules, log-level and log-file, admission). Logs one line
 * per changed setting, and keeps the old value of those that need a restart.
 * Call on the thread that reads cfg (the loop). Returns 1 if something
 * changed, 0 if nothing did, -errno (cfg untouched, the reason logged) for
 * a bad file.
 */
int kvd_config_reload(struct kvd_config *cfg, int argc, char **argv);

/* Frees what cfg owns (the access rules). */
void kvd_config_free(struct kvd_config *cfg);

/* The i-th option of the table: its effective value and where it came
 * from. 0 with *ret filled, -ENOENT past the end. */
int kvd_config_item(const struct kvd_config *cfg, size_t i, struct kvd_config_item *ret);

/* The quota of uid under cfg. */
void kvd_config_quota(const struct kvd_config *cfg, uid_t uid, struct kvd_quota *ret);

/* Prints every option but the command line's own, with its default and
 * help: format "ini" as an example config file, "scdoc" as the option list
 * of kvdrived.conf(5). 0, or -EINVAL for another format. */
int kvd_config_dump(FILE *f, const char *format);

/* Prints the options table as --help text. */
void kvd_config_help(FILE *f);

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

struct kvd_config {
        char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
        char config_file[256];
        bool foreground;
        int log_level;
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
        char remote[1024];              /* redis-cluster://HOST:PORT[,...]; empty: no remote tier */
        uint32_t remote_timeout_ms;
        uint32_t remote_connect_timeout_ms;
        uint32_t remote_ttl_s;          /* 0: no expiry */
        uint64_t remote_max_value_bytes;
        uint64_t remote_max_inflight_bytes;
        uint32_t remote_admit_reads;    /* 0: write-through at Put */
        int eviction;                   /* enum kvd_eviction */
        uint32_t heat_half_life_ms;
        bool promote_next_layer;        /* stage layer l+1 from SSD when l is read */
        uint32_t workers;
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
        gid_t admin_gid;                /* admin_group resolved */
        struct kvd_quota quota;         /* per uid, unless a [quota] section says otherwise */
        /* [namespace] and [quota] sections of the config file; owned. */
        struct kvd_access *access;
};

/* Fills cfg from defaults, the config file and argv. Returns 0, 1 when the
 * program should exit successfully (--help, --version), or -errno after
 * printing a clear message on stderr. Free a cfg loaded (0) with
 * kvd_config_free(); otherwise nothing needs freeing. */
int kvd_config_load(struct kvd_config *cfg, int argc, char **argv);

/* Frees what cfg owns (the access rules). */
void kvd_config_free(struct kvd_config *cfg);

/* The quota of uid under cfg. */
void kvd_config_quota(const struct kvd_config *cfg, uid_t uid, struct kvd_quota *ret);

/* Prints the options table as --help text. */
void kvd_config_help(FILE *f);

/* SPDX-License-Identifier: MIT */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "frame.h"
#include "kvd-build.h"
#include "log.h"
#include "macro.h"
#include "size.h"

static int config_load(struct kvd_config *cfg, int argc, char **argv);

enum opt_type { OPT_STRING, OPT_SIZE, OPT_U32, OPT_INT, OPT_BOOL, OPT_MODE, OPT_LOCK, OPT_LEVEL, OPT_EVICT };

struct option_def {
        const char *name;
        enum opt_type type;
        size_t offset;
        size_t size;            /* OPT_STRING: buffer size */
        const char *def;        /* embedded default, as text */
        uint64_t min, max;      /* numeric bounds */
        const char *help;
        bool cli_only;
};

#define OFF(f) offsetof(struct kvd_config, f), sizeof(((struct kvd_config *)0)->f)

static const struct option_def options[] = {
        { "socket", OPT_STRING, OFF(socket), NULL, 0, 0,
          "listening socket path (default: $KVDRIVE_SOCKET, else /run/kvdrive/kvdrived.sock as root)", false },
        { "config", OPT_STRING, OFF(config_file), "", 0, 0, "INI file with a [kvdrived] section", true },
        { "foreground", OPT_BOOL, OFF(foreground), "false", 0, 0,
          "stay in the foreground (otherwise detach once ready)", true },
        { "log-level", OPT_LEVEL, OFF(log_level), "info", 0, 0, "debug, info, notice, warning or err", false },
        { "socket-mode", OPT_MODE, OFF(socket_mode), "0660", 0, 0777, "permissions of the socket file", false },
        { "host-bytes", OPT_SIZE, OFF(host_bytes), "256M", 16u << 20, UINT64_C(1) << 46,
          "size of the host DRAM tier", false },
        { "host-extent-bytes", OPT_SIZE, OFF(host_extent_bytes), "0", 0, 1u << 30,
          "host pool extent (slab) size, also the largest block (0: 16M, less for pools under 64M)", false },
        { "host-numa-node", OPT_INT, OFF(host_numa_node), "-1", 0, 0,
          "NUMA node of the host pool (-1: no binding)", false },
        { "host-lock", OPT_LOCK, OFF(host_lock), "try", 0, 0,
          "mlock the host pool: try, required or off", false },
        { "host-hugepages", OPT_BOOL, OFF(host_hugepages), "true", 0, 0,
          "back the host pool with huge pages when available", false },
        { "index-blocks", OPT_SIZE, OFF(index_blocks), "0", 0, UINT64_C(1) << 32,
          "initial index capacity in blocks (0: from host-bytes)", false },
        { "ssd-dir", OPT_STRING, OFF(ssd_dirs), "", 0, 0,
          "SSD tier directories, comma-separated (one per drive)", false },
        { "ssd-bytes", OPT_SIZE, OFF(ssd_bytes), "0", 0, UINT64_C(1) << 50,
          "size of the SSD tier across its directories (0: none)", false },
        { "ssd-extent-bytes", OPT_SIZE, OFF(ssd_extent_bytes), "16M", 1u << 20, 1u << 30,
          "SSD extent size (the largest SSD slot)", false },
        { "ssd-queue-depth", OPT_U32, OFF(ssd_queue_depth), "64", 1, 4096, "SSD I/Os in flight", false },
        { "ssd-write-through", OPT_BOOL, OFF(ssd_write_through), "false", 0, 0,
          "write every stored block to SSD at once, and acknowledge Puts once on SSD", false },
        { "ssd-admit-reads", OPT_U32, OFF(ssd_admit_reads), "0", 0, 255,
          "demote to SSD only blocks read at least this often (0: all)", false },
        { "remote", OPT_STRING, OFF(remote), "", 0, 0,
          "remote tier shared by many machines: redis-cluster://HOST:PORT[,HOST:PORT...] (empty: none)", false },
        { "remote-timeout-ms", OPT_U32, OFF(remote_timeout_ms), "500", 1, 60000,
          "a remote request that takes longer fails (and its node is reconnected)", false },
        { "remote-connect-timeout-ms", OPT_U32, OFF(remote_connect_timeout_ms), "200", 1, 60000,
          "connecting to a remote node", false },
        { "remote-ttl-s", OPT_U32, OFF(remote_ttl_s), "86400", 0, 31536000,
          "blocks written to the remote tier expire after this (0: never; the cluster's maxmemory policy still applies)",
          false },
        { "remote-max-value-bytes", OPT_SIZE, OFF(remote_max_value_bytes), "16M", 4096, 512u << 20,
          "larger blocks are not written to the remote tier", false },
        { "remote-max-inflight-bytes", OPT_SIZE, OFF(remote_max_inflight_bytes), "64M", 1u << 20, UINT64_C(1) << 40,
          "remote writes in flight, at most (beyond: skipped and counted, never waited for)", false },
        { "remote-admit-reads", OPT_U32, OFF(remote_admit_reads), "0", 0, 255,
          "write shared blocks to the remote tier once read this often here (0: when stored)", false },
        { "eviction", OPT_EVICT, OFF(eviction), "heat", 0, 0,
          "which block leaves a full tier: heat (decayed attention + demand) or lru", false },
        { "heat-half-life-ms", OPT_U32, OFF(heat_half_life_ms), "10000", 10, 86400000,
          "half-life of a block's heat", false },
        { "promote-next-layer", OPT_BOOL, OFF(promote_next_layer), "true", 0, 0,
          "when a block is read, stage the next layer's block from SSD into free host memory", false },
        { "workers", OPT_U32, OFF(workers), "2", 1, 64, "transfer worker threads", false },
        { "max-clients", OPT_U32, OFF(max_clients), "256", 1, 65536, "concurrent client sessions", false },
        { "max-clients-per-uid", OPT_U32, OFF(max_clients_per_uid), "64", 1, 65536,
          "concurrent client sessions of one uid (root's are not counted)", false },
        { "max-namespaces", OPT_U32, OFF(max_namespaces), "64", 1, 4096, "registered namespaces", false },
        { "max-pools-per-client", OPT_U32, OFF(max_pools_per_client), "16", 1, 1024,
          "device pools one client may register", false },
        { "max-pool-bytes-per-client", OPT_SIZE, OFF(max_pool_bytes_per_client), "64G", 4096,
          UINT64_C(1) << 46, "bytes of device pools one client may register", false },
        { "max-inflight-per-client", OPT_U32, OFF(max_inflight_per_client), "64", 1, 65536,
          "Put/Get requests in flight per client", false },
        { "max-frame", OPT_SIZE, OFF(max_frame), "128K", 4096, KVD_FRAME_MAX_LIMIT,
          "largest protocol frame", false },
        { "max-items", OPT_U32, OFF(max_items), "2048", 1, 65536, "items per Put/Get/Lookup/Delete", false },
        { "cuda-module", OPT_STRING, OFF(cuda_module), KVD_CUDA_MODULE_DEFAULT, 0, 0,
          "the CUDA backend module, loaded with the first CUDA pool (default: $KVDRIVE_CUDA_MODULE, "
          "else the installed one)", false },
        { "max-outq-bytes", OPT_SIZE, OFF(max_outq_bytes), "4M", 64u << 10, 1u << 30,
          "replies queued for a client that does not read before it is dropped", false },
        { "admin-group", OPT_STRING, OFF(admin_group), "root", 0, 0,
          "group whose members (and uid 0) see and manage every namespace", false },
        { "quota-host-bytes", OPT_SIZE, OFF(quota.host_bytes), "0", 0, UINT64_C(1) << 50,
          "host tier bytes one uid's namespaces may hold (0: no cap; [quota USER] sections override)", false },
        { "quota-ssd-bytes", OPT_SIZE, OFF(quota.ssd_bytes), "0", 0, UINT64_C(1) << 50,
          "SSD tier bytes one uid's namespaces may hold (0: no cap)", false },
        { "quota-pool-bytes", OPT_SIZE, OFF(quota.pool_bytes), "0", 0, UINT64_C(1) << 50,
          "device pool bytes one uid's clients may register together (0: no cap)", false },
        { "quota-namespaces", OPT_U32, OFF(quota.namespaces), "16", 0, 4096,
          "namespaces one uid may own (0: no cap)", false },
};

static int parse_bool(const char *s, bool *ret)
{
        static const char *const yes[] = { "1", "yes", "true", "on" };
        static const char *const no[] = { "0", "no", "false", "off" };

        for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

static int set_option(struct kvd_config *cfg, const struct option_def *o, const char *value)
{
        void *field = (char *)cfg + o->offset;
        uint64_t u;
        char *end;
        long l;
        int r;

        switch (o->type) {
        case OPT_STRING:
                if (strlen(value) >= o->size)
                        return -ENAMETOOLONG;
                memcpy(field, value, strlen(value) + 1);
                return 0;
        case OPT_BOOL:
                return parse_bool(value, field);
        case OPT_LEVEL:
                r = kvd_log_level_from_string(value);
                if (r < 0)
                        return r;
                *(int *)field = r;
                return 0;
        case OPT_LOCK:
                if (strcmp(value, "try") == 0)
                        *(int *)field = KVD_LOCK_TRY;
                else if (strcmp(value, "required") == 0)
                        *(int *)field = KVD_LOCK_REQUIRED;
                else if (strcmp(value, "off") == 0)
                        *(int *)field = KVD_LOCK_OFF;
                else
                        return -EINVAL;
                return 0;
        case OPT_EVICT:
                if (strcmp(value, "heat") == 0)
                        *(int *)field = KVD_EVICT_HEAT;
                else if (strcmp(value, "lru") == 0)
                        *(int *)field = KVD_EVICT_LRU;
                else
                        return -EINVAL;
                return 0;
        case OPT_INT:
                errno = 0;
                l = strtol(value, &end, 10);
                if (errno || *end || end == value || l < INT_MIN || l > INT_MAX)
                        return -EINVAL;
                *(int *)field = (int)l;
                return 0;
        case OPT_MODE:
                errno = 0;
                u = strtoull(value, &end, 8);
                if (errno || *end || end == value || u > o->max)
                        return -EINVAL;
                *(uint32_t *)field = (uint32_t)u;
                return 0;
        case OPT_U32:
        case OPT_SIZE:
                if (o->type == OPT_SIZE) {
                        r = kvd_parse_size(value, &u);
                        if (r < 0)
                                return r;
                } else {
                        if (!isdigit((unsigned char)*value))
                                return -EINVAL;
                        errno = 0;
                        u = strtoull(value, &end, 10);
                        if (errno || *end)
                                return -EINVAL;
                }
                if (u < o->min || u > o->max)
                        return -ERANGE;
                if (o->size == sizeof(uint32_t))
                        *(uint32_t *)field = (uint32_t)u;
                else
                        *(uint64_t *)field = u;
                return 0;
        }
        return -EINVAL;
}

static const struct option_def *find_option(const char *name)
{
        for (size_t i = 0; i < ARRAY_SIZE(options); i++)
                if (strcmp(options[i].name, name) == 0)
                        return &options[i];
        return NULL;
}

static int apply(struct kvd_config *cfg, const struct option_def *o, const char *value,
                 const char *where)
{
        int r = set_option(cfg, o, value);

        if (r < 0) {
                if (r == -ERANGE && o->max)
                        fprintf(stderr, "kvdrived: %s: %s=%s is out of range [%" PRIu64 ", %" PRIu64 "]\n",
                                where, o->name, value, o->min, o->max);
                else
                        fprintf(stderr, "kvdrived: %s: invalid value for %s: '%s'\n", where, o->name, value);
        }
        return r;
}

struct ini_ctx {
        struct kvd_config *cfg;
        const char *path;
        int error;
};

static int config_ini_line(void *user, const char *section, const char *name, const char *value)
{
        struct ini_ctx *ctx = user;
        const struct option_def *o;
        char err[256];
        int r;

        if (strcmp(section, "kvdrived") != 0) {
                r = kvd_access_ini(ctx->cfg->access, section, name, value, err, sizeof(err));
                if (r > 0)
                        return 1;
                if (r == 0)
                        fprintf(stderr, "kvdrived: %s: unknown section [%s] (kvdrived, namespace PATTERN, "
                                "quota USER)\n", ctx->path, section);
                else
                        fprintf(stderr, "kvdrived: %s: %s\n", ctx->path, r == -ENOMEM ? "out of memory" : err);
                ctx->error = r < 0 ? r : -EINVAL;
                return 0;
        }
        o = find_option(name);
        if (!o || o->cli_only) {
                fprintf(stderr, "kvdrived: %s: unknown option '%s'\n", ctx->path, name);
                ctx->error = -EINVAL;
                return 0;
        }
        if (apply(ctx->cfg, o, value, ctx->path) < 0) {
                ctx->error = -EINVAL;
                return 0;
        }
        return 1;
}

void kvd_config_help(FILE *f)
{
        fprintf(f, "Usage: kvdrived [OPTIONS]\n\nKVDrive KV-cache tiering daemon %s.\n\n", KVD_VERSION);
        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                const struct option_def *o = &options[i];
                char left[64];

                snprintf(left, sizeof(left), "--%s%s", o->name, o->type == OPT_BOOL ? "[=BOOL]" : "=VALUE");
                fprintf(f, "  %-32s %s", left, o->help);
                if (o->def && *o->def)
                        fprintf(f, " [%s]", o->def);
                fputc('\n', f);
        }
        fprintf(f, "  %-32s %s\n  %-32s %s\n", "--help", "show this help", "--version", "show the version");
        fprintf(f, "\nSizes take K, M, G, T suffixes (powers of 1024). The config file uses the\n"
                   "same names in a [kvdrived] section; the command line wins.\n");
}

void kvd_config_free(struct kvd_config *cfg)
{
        cfg->access = kvd_access_free(cfg->access);
}

void kvd_config_quota(const struct kvd_config *cfg, uid_t uid, struct kvd_quota *ret)
{
        kvd_access_quota(cfg->access, uid, &cfg->quota, ret);
}

/* A 0 in the config is "no cap". */
static void uncap(uint64_t *v)
{
        if (*v == 0)
                *v = UINT64_MAX;
}

static int config_finish(struct kvd_config *cfg);

int kvd_config_load(struct kvd_config *cfg, int argc, char **argv)
{
        int r = 0;

        memset(cfg, 0, sizeof(*cfg));
        if (kvd_access_new(&cfg->access) < 0) {
                fprintf(stderr, "kvdrived: out of memory\n");
                return -ENOMEM;
        }
        r = config_load(cfg, argc, argv);
        if (r == 0)
                r = config_finish(cfg);
        if (r != 0)
                kvd_config_free(cfg);
        return r;
}

/* remote = redis-cluster://HOST:PORT[,HOST:PORT...]: says what is wrong. */
static int remote_check(const char *url)
{
        static const char scheme[] = "redis-cluster://";
        const char *p = url + strlen(scheme);

        if (strncmp(url, scheme, strlen(scheme)) != 0) {
                fprintf(stderr, "kvdrived: remote '%s': want redis-cluster://HOST:PORT[,HOST:PORT...]\n", url);
                return -EINVAL;
        }
        for (;;) {
                size_t n = strcspn(p, ",");
                const char *colon = memrchr(p, ':', n);
                unsigned long port;
                char *end;

                if (!colon || colon == p) {
                        fprintf(stderr, "kvdrived: remote '%s': '%.*s' is not HOST:PORT\n", url, (int)n, p);
                        return -EINVAL;
                }
                errno = 0;
                port = strtoul(colon + 1, &end, 10);
                if (errno || end != p + n || end == colon + 1 || port == 0 || port > 65535) {
                        fprintf(stderr, "kvdrived: remote '%s': bad port in '%.*s'\n", url, (int)n, p);
                        return -EINVAL;
                }
                if (!p[n])
                        return 0;
                p += n + 1;
        }
}

static int config_finish(struct kvd_config *cfg)
{
        char err[256];
        int r;

        r = kvd_access_check(cfg->access, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "kvdrived: %s: %s\n", cfg->config_file[0] ? cfg->config_file : "config", err);
                return r;
        }
        if (kvd_resolve_group(cfg->admin_group, &cfg->admin_gid) < 0) {
                fprintf(stderr, "kvdrived: admin-group: unknown group '%s'\n", cfg->admin_group);
                return -EINVAL;
        }
        uncap(&cfg->quota.host_bytes);
        uncap(&cfg->quota.ssd_bytes);
        uncap(&cfg->quota.pool_bytes);
        if (cfg->quota.namespaces == 0)
                cfg->quota.namespaces = UINT32_MAX;
        return 0;
}

static int config_load(struct kvd_config *cfg, int argc, char **argv)
{
        struct option longopts[ARRAY_SIZE(options) + 3];
        const char *config_path = NULL;
        int r, c, idx;

        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                if (options[i].def && set_option(cfg, &options[i], options[i].def) < 0)
                        abort(); /* a bad embedded default is a build bug */
                longopts[i] = (struct option){ options[i].name,
                                               options[i].type == OPT_BOOL ? optional_argument : required_argument,
                                               NULL, (int)i };
        }
        longopts[ARRAY_SIZE(options)] = (struct option){ "help", no_argument, NULL, 'h' };
        longopts[ARRAY_SIZE(options) + 1] = (struct option){ "version", no_argument, NULL, 'V' };
        longopts[ARRAY_SIZE(options) + 2] = (struct option){ 0 };
        r = kvd_default_socket_path(cfg->socket, sizeof(cfg->socket));
        if (r < 0) {
                fprintf(stderr, "kvdrived: default socket path too long\n");
                return r;
        }
        /* The build tree's module for tests and development; the file and
         * the command line still win. */
        if (getenv("KVDRIVE_CUDA_MODULE") &&
            set_option(cfg, find_option("cuda-module"), getenv("KVDRIVE_CUDA_MODULE")) < 0) {
                fprintf(stderr, "kvdrived: $KVDRIVE_CUDA_MODULE too long\n");
                return -ENAMETOOLONG;
        }

        /* First pass: only --config, --help, --version, so the file is read
         * before the command line overrides it. */
        opterr = 0;
        optind = 1;
        while ((c = getopt_long(argc, argv, "hV", longopts, &idx)) != -1) {
                if (c == 'h') {
                        kvd_config_help(stdout);
                        return 1;
                }
                if (c == 'V') {
                        printf("kvdrived %s\n", KVD_VERSION);
                        return 1;
                }
                if (c >= 0 && (size_t)c < ARRAY_SIZE(options) && strcmp(options[c].name, "config") == 0)
                        config_path = optarg;
        }
        if (config_path) {
                struct ini_ctx ctx = { .cfg = cfg, .path = config_path };

                r = ini_parse(config_path, config_ini_line, &ctx);
                if (r < 0) {
                        fprintf(stderr, "kvdrived: cannot open config file %s\n", config_path);
                        return -ENOENT;
                }
                if (ctx.error < 0)
                        return ctx.error;
                if (r > 0) {
                        fprintf(stderr, "kvdrived: %s:%d: syntax error\n", config_path, r);
                        return -EINVAL;
                }
        }

        opterr = 1;
        optind = 1;
        while ((c = getopt_long(argc, argv, "hV", longopts, &idx)) != -1) {
                const struct option_def *o;

                if (c == '?')
                        return -EINVAL;
                if (c == 'h' || c == 'V')
                        continue;
                o = &options[c];
                if (apply(cfg, o, optarg ? optarg : (o->type == OPT_BOOL ? "true" : ""), "command line") < 0)
                        return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "kvdrived: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (cfg->socket[0] == '\0') {
                fprintf(stderr, "kvdrived: empty socket path\n");
                return -EINVAL;
        }
        if (cfg->host_extent_bytes == 0) {
                /* Large extents waste less at their ends (a 1 MiB block with
                 * its 4 KiB SSD header fits 15 times in 16 MiB, 3 times in
                 * 4 MiB); a pool needs a few to hold several block sizes. */
                uint64_t e = UINT64_C(16) << 20;

                while (e > (UINT64_C(1) << 20) && e * 4 > cfg->host_bytes)
                        e >>= 1;
                cfg->host_extent_bytes = e;
        }
        if (cfg->host_extent_bytes < (64u << 10)) {
                fprintf(stderr, "kvdrived: host-extent-bytes must be at least 64K\n");
                return -EINVAL;
        }
        if (cfg->host_bytes < cfg->host_extent_bytes * 4) {
                fprintf(stderr, "kvdrived: host-bytes must hold at least 4 extents of %" PRIu64 " bytes\n",
                        cfg->host_extent_bytes);
                return -EINVAL;
        }
        if (cfg->ssd_bytes && !cfg->ssd_dirs[0]) {
                fprintf(stderr, "kvdrived: ssd-bytes needs ssd-dir\n");
                return -EINVAL;
        }
        if (cfg->ssd_dirs[0] && !cfg->ssd_bytes) {
                fprintf(stderr, "kvdrived: ssd-dir needs ssd-bytes\n");
                return -EINVAL;
        }
        if (cfg->remote[0] && remote_check(cfg->remote) < 0)
                return -EINVAL;
        if (cfg->ssd_extent_bytes % KVD_PAGE) {
                fprintf(stderr, "kvdrived: ssd-extent-bytes must be a multiple of 4 KiB\n");
                return -EINVAL;
        }
        if (cfg->host_extent_bytes % KVD_PAGE) {
                fprintf(stderr, "kvdrived: host-extent-bytes must be a multiple of 4 KiB\n");
                return -EINVAL;
        }
        return 0;
}

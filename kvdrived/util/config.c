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

#include "codec.h"
#include "frame.h"
#include "kvd-build.h"
#include "log.h"
#include "macro.h"
#include "size.h"

static int config_load(struct kvd_config *cfg, int argc, char **argv);

/* getopt's value for --dump-options (past any option's index). */
#define OPT_DUMP 1000

/* Where loading says what is wrong: stderr at start, a buffer that
 * kvd_config_reload() turns into log lines (a detached daemon has no
 * stderr). Set only by kvd_config_reload(), on the loop thread. */
static FILE *reload_errf;

static FILE *config_errf(void)
{
        return reload_errf ? reload_errf : stderr;
}

enum opt_type { OPT_STRING, OPT_SIZE, OPT_U32, OPT_INT, OPT_BOOL, OPT_MODE, OPT_LOCK, OPT_LEVEL, OPT_EVICT, OPT_CODEC };

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
        { "log-file", OPT_STRING, OFF(log_file), "", 0, 0,
          "log file of a detached daemon outside systemd, reopened on SIGHUP (default: "
          "/var/log/kvdrive/kvdrived.log as root, else $XDG_STATE_HOME/kvdrive/kvdrived.log, else "
          "/tmp/kvdrive-$UID/kvdrived.log)", false },
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
          "initial index capacity in blocks (0: start small, grow with use)", false },
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
        { "ssd-codec", OPT_CODEC, OFF(ssd_codec), "none", 0, 0,
          "how blocks are stored on SSD: none, or lossy fp8, int8, int4 (f16/bf16 namespaces; others stay raw)",
          false },
        { "ssd-threads", OPT_U32, OFF(ssd_threads), "2", 1, 64,
          "threads for the SSD tier's checksums and codec work, off the event loop", false },
        { "ssd-checkpoint-interval", OPT_U32, OFF(ssd_checkpoint_interval), "60", 0, 86400,
          "seconds between SSD index checkpoints while serving, so that a restart after a crash reads only the "
          "extents written since (0: only at a clean stop)", false },
        { "ssd-checkpoint-step", OPT_U32, OFF(ssd_checkpoint_step), "16384", 1, 1u << 24,
          "blocks such a checkpoint gathers per event-loop turn (~80 ns each): the longest it holds the loop", false },
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
        { "remote-codec", OPT_CODEC, OFF(remote_codec), "none", 0, 0,
          "how blocks are stored in the remote tier: none, zstd (lossless), or lossy fp8, int8, int4", false },
        { "eviction", OPT_EVICT, OFF(eviction), "heat", 0, 0,
          "which block leaves a full tier: heat (decayed attention + demand) or lru", false },
        { "heat-half-life-ms", OPT_U32, OFF(heat_half_life_ms), "10000", 10, 86400000,
          "half-life of a block's heat", false },
        { "promote-next-layer", OPT_BOOL, OFF(promote_next_layer), "true", 0, 0,
          "when a block is read, stage the next layer's block from SSD into free host memory", false },
        { "workers", OPT_U32, OFF(workers), "2", 1, 64, "transfer worker threads", false },
        { "loop-poll-us", OPT_U32, OFF(loop_poll_us), "50", 0, 10000,
          "after each event the event loop polls this long before it sleeps, so that a request soon after "
          "finds it awake (0: never polls)", false },
        { "max-clients", OPT_U32, OFF(max_clients), "256", 1, 65536, "concurrent client sessions", false },
        { "max-clients-per-uid", OPT_U32, OFF(max_clients_per_uid), "64", 1, 65536,
          "concurrent client sessions of one uid (root's are not counted)", false },
        { "max-namespaces", OPT_U32, OFF(max_namespaces), "64", 1, KVD_CONFIG_NAMESPACES_MAX, "registered namespaces",
          false },
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
        { "metrics-listen", OPT_STRING, OFF(metrics_listen), "127.0.0.1:9464", 0, 0,
          "Prometheus endpoint (GET /metrics), ADDR:PORT or [IPv6]:PORT; off or empty: none; port 0: any "
          "(logged). The daemon refuses to start if it cannot bind it (default: $KVDRIVE_METRICS_LISTEN, "
          "else 127.0.0.1:9464)", false },
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

_Static_assert(ARRAY_SIZE(options) <= KVD_CONFIG_OPTIONS_MAX, "raise KVD_CONFIG_OPTIONS_MAX");

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
        case OPT_CODEC: {
                enum kvd_codec c;

                r = kvd_codec_by_name(value, &c);
                if (r < 0)
                        return r;
                *(uint32_t *)field = (uint32_t)c;
                return 0;
        }
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
                        fprintf(config_errf(), "kvdrived: %s: %s=%s is out of range [%" PRIu64 ", %" PRIu64 "]\n",
                                where, o->name, value, o->min, o->max);
                else if (o->type == OPT_CODEC)
                        fprintf(config_errf(), "kvdrived: %s: invalid value for %s: '%s' (none, zstd, fp8, int8, "
                                "int4)\n", where, o->name, value);
                else
                        fprintf(config_errf(), "kvdrived: %s: invalid value for %s: '%s'\n", where, o->name, value);
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
                        fprintf(config_errf(), "kvdrived: %s: unknown section [%s] (kvdrived, namespace PATTERN, "
                                "quota USER)\n", ctx->path, section);
                else
                        fprintf(config_errf(), "kvdrived: %s: %s\n", ctx->path, r == -ENOMEM ? "out of memory" : err);
                ctx->error = r < 0 ? r : -EINVAL;
                return 0;
        }
        o = find_option(name);
        if (!o || o->cli_only) {
                fprintf(config_errf(), "kvdrived: %s: unknown option '%s'\n", ctx->path, name);
                ctx->error = -EINVAL;
                return 0;
        }
        if (apply(ctx->cfg, o, value, ctx->path) < 0) {
                ctx->error = -EINVAL;
                return 0;
        }
        ctx->cfg->source[o - options] = KVD_SOURCE_FILE;
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
        fprintf(f, "  %-32s %s\n", "--dump-options=ini|scdoc",
                "print every option as an example config file, or as kvdrived.conf(5)'s list");
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
                fprintf(config_errf(), "kvdrived: out of memory\n");
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
                fprintf(config_errf(), "kvdrived: remote '%s': want redis-cluster://HOST:PORT[,HOST:PORT...]\n", url);
                return -EINVAL;
        }
        for (;;) {
                size_t n = strcspn(p, ",");
                const char *colon = memrchr(p, ':', n);
                unsigned long port;
                char *end;

                if (!colon || colon == p) {
                        fprintf(config_errf(), "kvdrived: remote '%s': '%.*s' is not HOST:PORT\n", url, (int)n, p);
                        return -EINVAL;
                }
                errno = 0;
                port = strtoul(colon + 1, &end, 10);
                if (errno || end != p + n || end == colon + 1 || port == 0 || port > 65535) {
                        fprintf(config_errf(), "kvdrived: remote '%s': bad port in '%.*s'\n", url, (int)n, p);
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
                fprintf(config_errf(), "kvdrived: %s: %s\n", cfg->config_file[0] ? cfg->config_file : "config", err);
                return r;
        }
        if (kvd_resolve_group(cfg->admin_group, &cfg->admin_gid) < 0) {
                fprintf(config_errf(), "kvdrived: admin-group: unknown group '%s'\n", cfg->admin_group);
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
        struct option longopts[ARRAY_SIZE(options) + 4];
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
        longopts[ARRAY_SIZE(options) + 2] = (struct option){ "dump-options", required_argument, NULL, OPT_DUMP };
        longopts[ARRAY_SIZE(options) + 3] = (struct option){ 0 };
        r = kvd_default_socket_path(cfg->socket, sizeof(cfg->socket));
        if (r < 0) {
                fprintf(config_errf(), "kvdrived: default socket path too long\n");
                return r;
        }
        /* Test suites start many daemons at once: they turn the endpoint
         * off (or move it) here; the file and the command line still win. */
        if (getenv("KVDRIVE_METRICS_LISTEN") &&
            set_option(cfg, find_option("metrics-listen"), getenv("KVDRIVE_METRICS_LISTEN")) < 0) {
                fprintf(config_errf(), "kvdrived: $KVDRIVE_METRICS_LISTEN too long\n");
                return -ENAMETOOLONG;
        }
        /* The build tree's module for tests and development; the file and
         * the command line still win. */
        if (getenv("KVDRIVE_CUDA_MODULE") &&
            set_option(cfg, find_option("cuda-module"), getenv("KVDRIVE_CUDA_MODULE")) < 0) {
                fprintf(config_errf(), "kvdrived: $KVDRIVE_CUDA_MODULE too long\n");
                return -ENAMETOOLONG;
        }
        if (getenv("KVDRIVE_CUDA_MODULE"))
                cfg->source[find_option("cuda-module") - options] = KVD_SOURCE_ENV;
        if (getenv("KVDRIVE_SOCKET"))
                cfg->source[find_option("socket") - options] = KVD_SOURCE_ENV;
        if (getenv("KVDRIVE_METRICS_LISTEN") && find_option("metrics-listen"))
                cfg->source[find_option("metrics-listen") - options] = KVD_SOURCE_ENV;

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
                if (c == OPT_DUMP)
                        return kvd_config_dump(stdout, optarg) < 0 ? -EINVAL : 1;
                if (c >= 0 && (size_t)c < ARRAY_SIZE(options) && strcmp(options[c].name, "config") == 0)
                        config_path = optarg;
        }
        if (config_path) {
                struct ini_ctx ctx = { .cfg = cfg, .path = config_path };

                r = ini_parse(config_path, config_ini_line, &ctx);
                if (r < 0) {
                        fprintf(config_errf(), "kvdrived: cannot open config file %s\n", config_path);
                        return -ENOENT;
                }
                if (ctx.error < 0)
                        return ctx.error;
                if (r > 0) {
                        fprintf(config_errf(), "kvdrived: %s:%d: syntax error\n", config_path, r);
                        return -EINVAL;
                }
        }

        opterr = 1;
        optind = 1;
        while ((c = getopt_long(argc, argv, "hV", longopts, &idx)) != -1) {
                const struct option_def *o;

                if (c == '?')
                        return -EINVAL;
                if (c == 'h' || c == 'V' || c == OPT_DUMP)
                        continue;
                o = &options[c];
                if (apply(cfg, o, optarg ? optarg : (o->type == OPT_BOOL ? "true" : ""), "command line") < 0)
                        return -EINVAL;
                cfg->source[c] = KVD_SOURCE_CLI;
        }
        if (optind < argc) {
                fprintf(config_errf(), "kvdrived: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (cfg->socket[0] == '\0') {
                fprintf(config_errf(), "kvdrived: empty socket path\n");
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
                fprintf(config_errf(), "kvdrived: host-extent-bytes must be at least 64K\n");
                return -EINVAL;
        }
        if (cfg->host_bytes < cfg->host_extent_bytes * 4) {
                fprintf(config_errf(), "kvdrived: host-bytes must hold at least 4 extents of %" PRIu64 " bytes\n",
                        cfg->host_extent_bytes);
                return -EINVAL;
        }
        if (cfg->ssd_bytes && !cfg->ssd_dirs[0]) {
                fprintf(config_errf(), "kvdrived: ssd-bytes needs ssd-dir\n");
                return -EINVAL;
        }
        if (cfg->ssd_dirs[0] && !cfg->ssd_bytes) {
                fprintf(config_errf(), "kvdrived: ssd-dir needs ssd-bytes\n");
                return -EINVAL;
        }
        if (cfg->remote[0] && remote_check(cfg->remote) < 0)
                return -EINVAL;
        if (cfg->ssd_extent_bytes % KVD_PAGE) {
                fprintf(config_errf(), "kvdrived: ssd-extent-bytes must be a multiple of 4 KiB\n");
                return -EINVAL;
        }
        if (cfg->host_extent_bytes % KVD_PAGE) {
                fprintf(config_errf(), "kvdrived: host-extent-bytes must be a multiple of 4 KiB\n");
                return -EINVAL;
        }
        return 0;
}

static const char *level_name(int level)
{
        switch (level) {
        case LOG_DEBUG:
                return "debug";
        case LOG_INFO:
                return "info";
        case LOG_NOTICE:
                return "notice";
        case LOG_WARNING:
                return "warning";
        }
        return "err";
}

int kvd_config_item(const struct kvd_config *cfg, size_t i, struct kvd_config_item *ret)
{
        static const char *const sources[] = { "default", "file", "command line", "environment" };
        const struct option_def *o;
        const void *field;
        uint64_t u;

        if (i >= ARRAY_SIZE(options))
                return -ENOENT;
        o = &options[i];
        field = (const char *)cfg + o->offset;
        ret->name = o->name;
        ret->source = sources[cfg->source[i] < ARRAY_SIZE(sources) ? cfg->source[i] : 0];
        switch (o->type) {
        case OPT_STRING:
                snprintf(ret->value, sizeof(ret->value), "%s", (const char *)field);
                break;
        case OPT_BOOL:
                snprintf(ret->value, sizeof(ret->value), "%s", *(const bool *)field ? "true" : "false");
                break;
        case OPT_LEVEL:
                snprintf(ret->value, sizeof(ret->value), "%s", level_name(*(const int *)field));
                break;
        case OPT_LOCK:
                snprintf(ret->value, sizeof(ret->value), "%s",
                         *(const int *)field == KVD_LOCK_REQUIRED ? "required"
                         : *(const int *)field == KVD_LOCK_OFF   ? "off"
                                                                 : "try");
                break;
        case OPT_EVICT:
                snprintf(ret->value, sizeof(ret->value), "%s", *(const int *)field == KVD_EVICT_LRU ? "lru" : "heat");
                break;
        case OPT_CODEC:
                snprintf(ret->value, sizeof(ret->value), "%s", kvd_codec_name(*(const uint32_t *)field));
                break;
        case OPT_INT:
                snprintf(ret->value, sizeof(ret->value), "%d", *(const int *)field);
                break;
        case OPT_MODE:
                snprintf(ret->value, sizeof(ret->value), "%04" PRIo32, *(const uint32_t *)field);
                break;
        case OPT_U32:
        case OPT_SIZE:
                /* No cap is kept as the type's maximum, and set as 0. */
                if (o->size == sizeof(uint32_t))
                        u = *(const uint32_t *)field == UINT32_MAX ? 0 : *(const uint32_t *)field;
                else
                        u = *(const uint64_t *)field == UINT64_MAX ? 0 : *(const uint64_t *)field;
                snprintf(ret->value, sizeof(ret->value), "%" PRIu64, u);
                break;
        }
        return 0;
}

/* ---- reload (SIGHUP) ------------------------------------------------------- */

/* What a reload may change in a running daemon: every reader of these runs
 * on the loop thread and reads them from the config at each use (quotas:
 * the caller refreshes the tenants' copies; log-level and log-file: the
 * caller hands them to util/log). Everything else sizes something built at
 * start (tables, buffers, tiers, threads) or was told to clients (max-items,
 * max-frame in HelloReply) and needs a restart. */
static const char *const live_options[] = {
        "log-level", "log-file", "max-clients", "max-clients-per-uid", "max-pools-per-client",
        "max-pool-bytes-per-client", "max-inflight-per-client", "max-outq-bytes", "ssd-admit-reads",
        "remote-admit-reads", "admin-group", "quota-host-bytes", "quota-ssd-bytes", "quota-pool-bytes",
        "quota-namespaces",
};

static bool option_live(const struct option_def *o)
{
        for (size_t i = 0; i < ARRAY_SIZE(live_options); i++)
                if (strcmp(live_options[i], o->name) == 0)
                        return true;
        return false;
}

/* The value of o in cfg as the config file would spell it. */
static void option_format(const struct kvd_config *cfg, const struct option_def *o, char *buf, size_t size)
{
        static const char *const locks[] = { [KVD_LOCK_TRY] = "try", [KVD_LOCK_REQUIRED] = "required",
                                             [KVD_LOCK_OFF] = "off" };
        const void *field = (const char *)cfg + o->offset;
        uint64_t u;

        switch (o->type) {
        case OPT_STRING:
                snprintf(buf, size, "'%s'", (const char *)field);
                return;
        case OPT_BOOL:
                snprintf(buf, size, "%s", *(const bool *)field ? "true" : "false");
                return;
        case OPT_LEVEL:
                snprintf(buf, size, "%s", kvd_log_level_name(*(const int *)field));
                return;
        case OPT_LOCK:
                snprintf(buf, size, "%s", locks[*(const int *)field]);
                return;
        case OPT_EVICT:
                snprintf(buf, size, "%s", *(const int *)field == KVD_EVICT_LRU ? "lru" : "heat");
                return;
        case OPT_CODEC:
                snprintf(buf, size, "%s", kvd_codec_name(*(const uint32_t *)field));
                return;
        case OPT_INT:
                snprintf(buf, size, "%d", *(const int *)field);
                return;
        case OPT_MODE:
                snprintf(buf, size, "%04o", *(const uint32_t *)field);
                return;
        case OPT_U32:
        case OPT_SIZE:
                u = o->size == sizeof(uint32_t) ? *(const uint32_t *)field : *(const uint64_t *)field;
                /* config_finish() stores a quota's 0 as "no cap". */
                if (strncmp(o->name, "quota-", 6) == 0 && u == (o->size == sizeof(uint32_t) ? UINT32_MAX : UINT64_MAX))
                        snprintf(buf, size, "0 (no cap)");
                else
                        snprintf(buf, size, "%" PRIu64, u);
                return;
        }
        snprintf(buf, size, "?");
}

/* Logs what loading wrote into its error buffer, a line at a time. */
static void log_reload_errors(char *text)
{
        char *save = NULL;
        bool any = false;

        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (strncmp(line, "kvdrived: ", 10) == 0)
                        line += 10;
                log_error("reload refused: %s", line);
                any = true;
        }
        if (!any)
                log_error("reload refused: the configuration cannot be loaded");
}

int kvd_config_reload(struct kvd_config *cfg, int argc, char **argv)
{
        struct kvd_config next;
        char *errbuf = NULL;
        size_t errlen = 0;
        unsigned changed = 0, kept = 0;
        int r;

        reload_errf = open_memstream(&errbuf, &errlen);
        if (!reload_errf) {
                log_error("reload refused: out of memory; keeping the running configuration");
                return -ENOMEM;
        }
        r = kvd_config_load(&next, argc, argv);
        fclose(reload_errf);
        reload_errf = NULL;
        if (r != 0) {
                log_reload_errors(errbuf ? errbuf : (char *)"");
                log_error("keeping the running configuration");
                free(errbuf);
                return r < 0 ? r : -EINVAL;
        }
        free(errbuf);

        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                const struct option_def *o = &options[i];
                char *field = (char *)cfg + o->offset;
                const char *nfield = (const char *)&next + o->offset;
                char old_v[300], new_v[300];

                if (o->cli_only)
                        continue;
                if (o->type == OPT_STRING ? strcmp(field, nfield) == 0 : memcmp(field, nfield, o->size) == 0)
                        continue;
                option_format(cfg, o, old_v, sizeof(old_v));
                option_format(&next, o, new_v, sizeof(new_v));
                if (!option_live(o)) {
                        log_warning("reload: %s: %s -> %s needs a restart; keeping %s", o->name, old_v, new_v,
                                    old_v);
                        kept++;
                        continue;
                }
                log_notice("reload: %s: %s -> %s", o->name, old_v, new_v);
                memcpy(field, nfield, o->size);
                cfg->source[i] = next.source[i];
                changed++;
        }
        cfg->admin_gid = next.admin_gid;
        /* The [namespace] and [quota] sections: always the file's. Only the
         * loop thread looks rules up, and nothing keeps a pointer into
         * them past a request's handling. */
        kvd_access_free(cfg->access);
        cfg->access = next.access;
        next.access = NULL;
        log_notice("reloaded the configuration%s%s: %u setting%s changed, %u kept until a restart; "
                   "[namespace] and [quota] sections re-read",
                   cfg->config_file[0] ? " from " : "", cfg->config_file, changed, changed == 1 ? "" : "s",
                   kept);
        kvd_config_free(&next);
        return changed > 0;
}

/* ---- the option table as documents (--dump-options) ------------------------- */

/* Prints text wrapped at width columns, each line after prefix. */
static void print_wrapped(FILE *f, const char *prefix, const char *text, size_t width)
{
        const char *p = text;

        while (*p) {
                size_t n = strlen(p);

                if (n > width) {
                        n = width;
                        while (n > 0 && p[n] != ' ')
                                n--;
                        if (n == 0)
                                n = strcspn(p, " ");
                }
                fprintf(f, "%s%.*s\n", prefix, (int)n, p);
                p += n;
                while (*p == ' ')
                        p++;
        }
}

/* scdoc markup: '*', '_' and '\' are formatting unless escaped. */
static void print_scdoc_escaped(FILE *f, const char *s)
{
        for (; *s; s++) {
                if (*s == '*' || *s == '_' || *s == '\\')
                        fputc('\\', f);
                fputc(*s, f);
        }
}

int kvd_config_dump(FILE *f, const char *format)
{
        bool ini = strcmp(format, "ini") == 0;

        if (!ini && strcmp(format, "scdoc") != 0) {
                fprintf(stderr, "kvdrived: --dump-options: want ini or scdoc, not '%s'\n", format);
                return -EINVAL;
        }
        if (ini)
                fprintf(f, "# kvdrived configuration: every option with its default, generated from the\n"
                           "# daemon's option table (kvdrived --dump-options=ini; kvdrived.conf(5)).\n"
                           "# Uncomment a line to change it; the command line wins over this file, and\n"
                           "# SIGHUP reloads it. Sizes take K, M, G, T suffixes (powers of 1024).\n"
                           "\n[kvdrived]\n");
        for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
                const struct option_def *o = &options[i];

                /* The build's install path: not in a document of every build. */
                bool builtin = strcmp(o->name, "cuda-module") == 0;
                const char *def = builtin ? "" : o->def;

                if (o->cli_only)
                        continue;
                if (ini) {
                        fputc('\n', f);
                        print_wrapped(f, "# ", o->help, 76);
                        fprintf(f, "#%s =%s%s\n", o->name, def && *def ? " " : "", def ? def : "");
                        continue;
                }
                fprintf(f, "*%s* = ", o->name);
                if (def && *def) {
                        fputc('_', f);
                        print_scdoc_escaped(f, def);
                        fputc('_', f);
                } else {
                        fputs("(empty)", f);
                }
                fprintf(f, "%s\n\t", option_live(o) ? " (reloaded on SIGHUP)" : "");
                print_scdoc_escaped(f, o->help);
                fputs(".\n\n", f);
        }
        if (ini)
                fprintf(f, "\n# Namespaces are private to the uid that creates them. A section shares those of one\n"
                           "# owner whose name matches the pattern (fnmatch; the first matching section applies):\n"
                           "# [namespace llama-3-8b*]\n"
                           "# owner = vllm                          ; user name or uid\n"
                           "# readers = @inference, 1001            ; users, uids, @groups, or * for any peer\n"
                           "# writers = vllm-prefill                ; writers may also read\n"
                           "\n# Quotas of one uid (user name or uid); unset keys keep the quota-* defaults:\n"
                           "# [quota vllm]\n# host-bytes = 64G\n# ssd-bytes = 1T\n# pool-bytes = 160G\n"
                           "# namespaces = 32\n");
        return 0;
}

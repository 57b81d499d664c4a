/* SPDX-License-Identifier: MIT */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "kvd-build.h"
#include "log.h"
#include "macro.h"
#include "server-internal.h"

/* Scrapers are few: a handful of connections, and an idle one goes. */
#define METRICS_CONNECTIONS 16
#define METRICS_IDLE_TIMEOUT_S 10

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct kvd_metrics {
        struct kvd_server *server;
        struct kvd_loop *loop;
        struct MHD_Daemon *mhd;
        struct kvd_loop_watch mhd_w;    /* MHD's epoll fd (MHD's) */
        struct kvd_loop_watch timer_w;  /* ours: MHD's next timeout */
        uint16_t port;
};

bool kvd_metrics_off(const char *listen)
{
        return !listen || !*listen || strcmp(listen, "off") == 0;
}

/* ---- the page --------------------------------------------------------- */

static void family(FILE *f, const char *name, const char *type, const char *help)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newlines escaped. */
static void label_value(FILE *f, const char *v)
{
        for (; *v; v++) {
                if (*v == '\\' || *v == '"')
                        fputc('\\', f);
                if (*v == '\n')
                        fputs("\\n", f);
                else
                        fputc(*v, f);
        }
}

static void scalar(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
        family(f, name, type, help);
        fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void scalar_f(FILE *f, const char *name, const char *type, const char *help, double v)
{
        family(f, name, type, help);
        fprintf(f, "%s %.9g\n", name, v);
}

/*
 * A histogram of power-of-two microsecond buckets (bucket b: [2^(b-1),
 * 2^b) us; the last one takes everything longer) in seconds: bucket b's
 * upper bound 2^b us becomes le, the last bucket only counts in +Inf.
 * labels is "" or `name="value",` (with its comma).
 */
static void histogram_us(FILE *f, const char *name, const char *labels, const uint64_t *hist, unsigned n,
                         double sum_seconds)
{
        uint64_t cum = 0;

        for (unsigned b = 0; b + 1 < n; b++) {
                cum += hist[b];
                fprintf(f, "%s_bucket{%sle=\"%.9g\"} %" PRIu64 "\n", name, labels, ldexp(1e-6, (int)b), cum);
        }
        if (n)
                cum += hist[n - 1];
        fprintf(f, "%s_bucket{%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, cum);
        if (*labels) {
                /* Without the trailing comma for _sum and _count. */
                int len = (int)strlen(labels) - 1;

                fprintf(f, "%s_sum{%.*s} %.9g\n%s_count{%.*s} %" PRIu64 "\n", name, len, labels, sum_seconds,
                        name, len, labels, cum);
        } else {
                fprintf(f, "%s_sum %.9g\n%s_count %" PRIu64 "\n", name, sum_seconds, name, cum);
        }
}

/* The tiers' figures, one row per tier, so that each family lists them all. */
enum tier_val {
        TV_CAPACITY, TV_USED, TV_BLOCKS,
        TV_HITS, TV_MISSES, TV_EVICTIONS, TV_PROMOTIONS, TV_DEMOTIONS, TV_CRC,
        TV_READS, TV_WRITES, TV_READ_BYTES, TV_WRITE_BYTES, TV_READ_ERRORS, TV_WRITE_ERRORS,
        TV_FULL, TV_DAMAGED, TV_N
};

enum tier_kind { TK_ALL, TK_LOCAL, TK_IO };     /* every tier, host and SSD, tiers with I/O */

struct tier_row {
        const char *name;
        bool local, io;
        uint64_t v[TV_N];
};

static const struct tier_family {
        enum tier_val v;
        enum tier_kind kind;
        const char *name, *type, *help;
} tier_families[] = {
        { TV_CAPACITY, TK_LOCAL, "kvdrive_tier_capacity_bytes", "gauge", "Bytes the tier may hold." },
        { TV_USED, TK_LOCAL, "kvdrive_tier_used_bytes", "gauge", "Bytes of the tier holding blocks now." },
        { TV_BLOCKS, TK_LOCAL, "kvdrive_tier_blocks", "gauge", "Blocks stored in the tier now." },
        { TV_HITS, TK_ALL, "kvdrive_tier_hits_total", "counter", "Block lookups and loads served from the tier." },
        { TV_MISSES, TK_ALL, "kvdrive_tier_misses_total", "counter",
          "Block lookups and loads the tier could not serve." },
        { TV_EVICTIONS, TK_LOCAL, "kvdrive_tier_evictions_total", "counter",
          "Blocks removed from the tier to make room (demoted or dropped)." },
        { TV_PROMOTIONS, TK_IO, "kvdrive_tier_promotions_total", "counter",
          "Blocks loaded from the tier into host memory." },
        { TV_DEMOTIONS, TK_IO, "kvdrive_tier_demotions_total", "counter",
          "Blocks written from host memory to the tier when they left it." },
        { TV_CRC, TK_IO, "kvdrive_tier_crc_failures_total", "counter",
          "Blocks read back torn or corrupt (bad crc32c); never served." },
        { TV_READS, TK_IO, "kvdrive_tier_reads_total", "counter", "Blocks read from the tier." },
        { TV_WRITES, TK_IO, "kvdrive_tier_writes_total", "counter", "Blocks written to the tier." },
        { TV_READ_BYTES, TK_IO, "kvdrive_tier_read_bytes_total", "counter", "Payload bytes read from the tier." },
        { TV_WRITE_BYTES, TK_IO, "kvdrive_tier_write_bytes_total", "counter", "Payload bytes written to the tier." },
        { TV_READ_ERRORS, TK_IO, "kvdrive_tier_read_errors_total", "counter", "Reads from the tier that failed." },
        { TV_WRITE_ERRORS, TK_IO, "kvdrive_tier_write_errors_total", "counter", "Writes to the tier that failed." },
        { TV_FULL, TK_IO, "kvdrive_tier_full", "gauge", "1 when the tier's file system refused more space." },
        { TV_DAMAGED, TK_IO, "kvdrive_tier_damaged", "gauge",
          "1 when the tier cannot be trusted to keep what it is given (until a restart)." },
};

static bool row_has(const struct tier_row *t, enum tier_kind k)
{
        return k == TK_ALL || (k == TK_LOCAL ? t->local : t->io);
}

static void render_tiers(FILE *f, const struct tier_row *rows, unsigned n)
{
        for (size_t i = 0; i < ARRAY_SIZE(tier_families); i++) {
                const struct tier_family *tf = &tier_families[i];

                family(f, tf->name, tf->type, tf->help);
                for (unsigned k = 0; k < n; k++)
                        if (row_has(&rows[k], tf->kind))
                                fprintf(f, "%s{tier=\"%s\"} %" PRIu64 "\n", tf->name, rows[k].name,
                                        rows[k].v[tf->v]);
        }
}

#define REMOTE_NODES_MAX 64

static void render_remote(FILE *f, const struct kvd_tier_stats *st, const struct kvd_tier_node_stats *nodes,
                          unsigned n)
{
        static const struct {
                size_t off;
                const char *name, *type, *help;
        } per_node[] = {
#define NODE(f) offsetof(struct kvd_tier_node_stats, f)
                { NODE(requests), "kvdrive_remote_node_requests_total", "counter", "Commands sent to the node." },
                { NODE(hits), "kvdrive_remote_node_hits_total", "counter", "GET / EXISTS that found the key." },
                { NODE(misses), "kvdrive_remote_node_misses_total", "counter", "GET nil / EXISTS 0." },
                { NODE(read_bytes), "kvdrive_remote_node_read_bytes_total", "counter",
                  "Bytes of values received from the node." },
                { NODE(write_bytes), "kvdrive_remote_node_write_bytes_total", "counter",
                  "Bytes of values sent to the node." },
                { NODE(errors), "kvdrive_remote_node_errors_total", "counter",
                  "Error replies, resets and refused connections." },
                { NODE(timeouts), "kvdrive_remote_node_timeouts_total", "counter",
                  "Requests the node did not answer in time." },
#undef NODE
        };

        scalar(f, "kvdrive_remote_write_skips_total", "counter",
               "Shared blocks not written to the remote tier: down, busy or too large.", st->write_skips);
        scalar(f, "kvdrive_remote_lookups_total", "counter", "Keys that prefix Lookups asked of the remote tier.",
               st->probes);
        scalar(f, "kvdrive_remote_lookup_hits_total", "counter", "Keys asked by Lookups that the remote tier had.",
               st->probe_hits);
        scalar(f, "kvdrive_remote_slot_map_refreshes_total", "counter",
               "Times the cluster's slot map was read again.", st->map_refreshes);
        scalar(f, "kvdrive_remote_inflight_requests", "gauge", "Remote requests in flight now.", st->inflight);
        family(f, "kvdrive_remote_node_up", "gauge", "1 when the node is connected (or not needed yet).");
        for (unsigned i = 0; i < n; i++) {
                fputs("kvdrive_remote_node_up{node=\"", f);
                label_value(f, nodes[i].addr);
                fprintf(f, "\"} %d\n", nodes[i].up ? 1 : 0);
        }
        family(f, "kvdrive_remote_node_slots", "gauge", "Hash slots the node serves in the daemon's slot map.");
        for (unsigned i = 0; i < n; i++) {
                fputs("kvdrive_remote_node_slots{node=\"", f);
                label_value(f, nodes[i].addr);
                fprintf(f, "\"} %" PRIu32 "\n", nodes[i].slots);
        }
        for (size_t k = 0; k < ARRAY_SIZE(per_node); k++) {
                family(f, per_node[k].name, per_node[k].type, per_node[k].help);
                for (unsigned i = 0; i < n; i++) {
                        fprintf(f, "%s{node=\"", per_node[k].name);
                        label_value(f, nodes[i].addr);
                        fprintf(f, "\"} %" PRIu64 "\n", *(const uint64_t *)((const char *)&nodes[i] + per_node[k].off));
                }
        }
        family(f, "kvdrive_remote_node_redirections_total", "counter",
               "Redirections the node sent: MOVED (a slot moved for good) or ASK (a slot migrating).");
        for (unsigned i = 0; i < n; i++) {
                fputs("kvdrive_remote_node_redirections_total{node=\"", f);
                label_value(f, nodes[i].addr);
                fprintf(f, "\",kind=\"moved\"} %" PRIu64 "\n", nodes[i].moved);
                fputs("kvdrive_remote_node_redirections_total{node=\"", f);
                label_value(f, nodes[i].addr);
                fprintf(f, "\",kind=\"ask\"} %" PRIu64 "\n", nodes[i].ask);
        }
        family(f, "kvdrive_remote_node_request_duration_seconds", "histogram",
               "Latency of the node's answered requests.");
        for (unsigned i = 0; i < n; i++) {
                char *labels = NULL;
                size_t len = 0;
                FILE *lf = open_memstream(&labels, &len);

                if (!lf)
                        continue;
                fputs("node=\"", lf);
                label_value(lf, nodes[i].addr);
                fputs("\",", lf);
                if (fclose(lf) == 0 && labels)
                        histogram_us(f, "kvdrive_remote_node_request_duration_seconds", labels,
                                     nodes[i].latency_hist, KVD_TIER_LAT_BUCKETS,
                                     (double)nodes[i].latency_us_sum / 1e6);
                free(labels);
        }
}

static void render_requests(FILE *f, const struct kvd_server *s)
{
        uint64_t decoded = 0;

        family(f, "kvdrive_requests_total", "counter",
               "Requests received, by type (undecodable: frames that were not a request).");
        for (unsigned t = 0; t < KVD_REQ_TYPES; t++) {
                const ProtobufCFieldDescriptor *fd =
                        t ? protobuf_c_message_descriptor_get_field(&kvdrive__request__descriptor, t) : NULL;

                decoded += s->requests_by_type[t];
                if (!s->requests_by_type[t] && !(fd && fd->id >= KVDRIVE__REQUEST__BODY_HELLO))
                        continue;
                if (fd && fd->id < KVDRIVE__REQUEST__BODY_HELLO)
                        continue; /* id, not a body */
                fprintf(f, "kvdrive_requests_total{type=\"%s\"} %" PRIu64 "\n", fd ? fd->name : "unknown",
                        s->requests_by_type[t]);
        }
        fprintf(f, "kvdrive_requests_total{type=\"undecodable\"} %" PRIu64 "\n",
                s->requests > decoded ? s->requests - decoded : 0);
        family(f, "kvdrive_request_errors_total", "counter", "Requests answered with an Error, by error code.");
        for (unsigned c = 1; c < KVD_ERR_CODES; c++) {
                const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(&kvdrive__error_code__descriptor,
                                                                                   (int)c);

                if (ev)
                        fprintf(f, "kvdrive_request_errors_total{code=\"%s\"} %" PRIu64 "\n", ev->name,
                                s->errors_by_code[c]);
        }
        if (s->errors_by_code[0])
                fprintf(f, "kvdrive_request_errors_total{code=\"other\"} %" PRIu64 "\n", s->errors_by_code[0]);
}

static void render_tenants(FILE *f, const struct kvd_tenant_stats *ts, uint32_t n)
{
        static const struct {
                size_t off;
                bool u32, cap;
                const char *name, *type, *help;
        } fams[] = {
#define T(f) offsetof(struct kvd_tenant_stats, f)
                { T(host_bytes), false, false, "kvdrive_tenant_host_bytes", "gauge",
                  "Host tier bytes the uid's namespaces hold." },
                { T(ssd_bytes), false, false, "kvdrive_tenant_ssd_bytes", "gauge",
                  "SSD tier bytes the uid's namespaces hold." },
                { T(pool_bytes), false, false, "kvdrive_tenant_pool_bytes", "gauge",
                  "Device pool bytes the uid's connected clients registered." },
                { T(namespaces), true, false, "kvdrive_tenant_namespaces", "gauge", "Namespaces the uid owns." },
                { T(quota.host_bytes), false, true, "kvdrive_tenant_quota_host_bytes", "gauge",
                  "The uid's host tier quota (0: no cap)." },
                { T(quota.ssd_bytes), false, true, "kvdrive_tenant_quota_ssd_bytes", "gauge",
                  "The uid's SSD tier quota (0: no cap)." },
                { T(quota.pool_bytes), false, true, "kvdrive_tenant_quota_pool_bytes", "gauge",
                  "The uid's device pool quota (0: no cap)." },
                { T(quota.namespaces), true, true, "kvdrive_tenant_quota_namespaces", "gauge",
                  "Namespaces the uid may own (0: no cap)." },
                { T(quota_evictions), false, false, "kvdrive_tenant_quota_evictions_total", "counter",
                  "The uid's blocks pushed out of a tier to keep it within its quota." },
                { T(quota_refusals), false, false, "kvdrive_tenant_quota_refusals_total", "counter",
                  "Items, pools and namespaces of the uid refused for its quota." },
#undef T
        };

        for (size_t k = 0; k < ARRAY_SIZE(fams); k++) {
                family(f, fams[k].name, fams[k].type, fams[k].help);
                for (uint32_t i = 0; i < n; i++) {
                        const char *p = (const char *)&ts[i] + fams[k].off;
                        uint64_t v = fams[k].u32 ? *(const uint32_t *)p : *(const uint64_t *)p;

                        if (fams[k].cap && v == (fams[k].u32 ? UINT32_MAX : UINT64_MAX))
                                v = 0;
                        fprintf(f, "%s{uid=\"%" PRIu32 "\"} %" PRIu64 "\n", fams[k].name, ts[i].uid, v);
                }
        }
}

static void render_scheduler(FILE *f, struct kvd_server *s)
{
        const struct kvd_sched *sc = &s->prefetch.sched;

        kvd_prefetch_refresh(&s->prefetch);
        scalar(f, "kvdrive_scheduler_lanes", "gauge", "Transfer workers the scheduler divides among clients.",
               s->prefetch.lanes);
        scalar_f(f, "kvdrive_scheduler_window_seconds", "gauge",
                 "Shortest window over which the scheduler measures the links.", KVD_SCHED_MIN_WINDOW_NS / 1e9);
        scalar_f(f, "kvdrive_scheduler_active_window_seconds", "gauge",
                 "A client that sent its compute time within this window prefetches now.",
                 KVD_PREFETCH_ACTIVE_MS / 1e3);
        scalar(f, "kvdrive_scheduler_max_depth", "gauge", "Largest prefetch depth the scheduler gives.",
               KVD_SCHED_MAX_DEPTH);
        scalar_f(f, "kvdrive_scheduler_device_bytes_per_second", "gauge",
                 "Measured host to client pool copy rate while busy, one worker (0: not measured yet).",
                 sc->dev_rate);
        scalar_f(f, "kvdrive_scheduler_ssd_bytes_per_second", "gauge",
                 "Measured SSD read rate while busy (0: not measured yet).", sc->ssd_rate);
        scalar_f(f, "kvdrive_scheduler_device_busy_ratio", "gauge",
                 "Share of wall time the workers spent copying (decays while idle).", sc->dev_util);
        scalar_f(f, "kvdrive_scheduler_ssd_busy_ratio", "gauge",
                 "Share of wall time with SSD I/O in flight (decays while idle).", sc->ssd_util);
        scalar_f(f, "kvdrive_scheduler_host_hit_ratio", "gauge", "Share of recent Gets served from host memory.",
                 sc->host_hit);
        scalar(f, "kvdrive_scheduler_active_clients", "gauge", "Clients that sent their compute time recently.",
               sc->active);
        scalar_f(f, "kvdrive_scheduler_compute_seconds", "gauge",
                 "Mean compute time per layer of the active clients.", sc->compute_us / 1e6);
        scalar(f, "kvdrive_scheduler_prefetch_depth", "gauge", "The last prefetch depth given (blocks per layer).",
               sc->last_depth);
        scalar(f, "kvdrive_scheduler_decisions_total", "counter", "Prefetch depths given.", sc->decisions);
}

int kvd_metrics_render(struct kvd_server *s, FILE *f)
{
        struct kvd_cache_stats cs;
        struct kvd_tier_stats rst;
        struct kvd_tier_node_stats *nodes = calloc(REMOTE_NODES_MAX, sizeof(*nodes));
        uint32_t n_ten = kvd_cache_tenants(s->cache, NULL, 0);
        struct kvd_tenant_stats *ts = calloc(n_ten ? n_ten : 1, sizeof(*ts));
        struct tier_row rows[3];
        unsigned n_rows = 0;
        int n_nodes = -ENODEV;

        kvd_cache_stats(s->cache, &cs);
        if (nodes)
                n_nodes = kvd_cache_remote_stats(s->cache, &rst, nodes, REMOTE_NODES_MAX);
        rows[n_rows++] = (struct tier_row){
                .name = "host", .local = true,
                .v = { [TV_CAPACITY] = cs.host.capacity_bytes, [TV_USED] = cs.host.used_bytes,
                       [TV_BLOCKS] = cs.host.blocks, [TV_HITS] = cs.hits, [TV_MISSES] = cs.misses,
                       [TV_EVICTIONS] = cs.evictions },
        };
        if (cs.have_ssd)
                rows[n_rows++] = (struct tier_row){
                        .name = "ssd", .local = true, .io = true,
                        .v = { [TV_CAPACITY] = cs.ssd.capacity_bytes, [TV_USED] = cs.ssd.used_bytes,
                               [TV_BLOCKS] = cs.ssd.blocks, [TV_HITS] = cs.ssd_hits, [TV_MISSES] = cs.ssd_misses,
                               [TV_EVICTIONS] = cs.ssd_evictions, [TV_PROMOTIONS] = cs.promotions,
                               [TV_DEMOTIONS] = cs.demotions, [TV_CRC] = cs.crc_failures,
                               [TV_READS] = cs.ssd_reads, [TV_WRITES] = cs.ssd_writes,
                               [TV_READ_BYTES] = cs.ssd_read_bytes, [TV_WRITE_BYTES] = cs.ssd_write_bytes,
                               [TV_READ_ERRORS] = cs.ssd_read_errors, [TV_WRITE_ERRORS] = cs.ssd_write_errors,
                               [TV_FULL] = cs.ssd_full, [TV_DAMAGED] = cs.ssd_damaged },
                };
        if (n_nodes >= 0)
                rows[n_rows++] = (struct tier_row){
                        .name = "remote", .io = true,
                        .v = { [TV_HITS] = rst.hits, [TV_MISSES] = rst.misses,
                               [TV_PROMOTIONS] = cs.remote_promotions, [TV_CRC] = rst.crc_failures,
                               [TV_READS] = rst.reads, [TV_WRITES] = rst.writes,
                               [TV_READ_BYTES] = rst.read_bytes, [TV_WRITE_BYTES] = rst.write_bytes,
                               [TV_READ_ERRORS] = rst.read_errors, [TV_WRITE_ERRORS] = rst.write_errors,
                               [TV_FULL] = rst.full, [TV_DAMAGED] = rst.damaged },
                };

        family(f, "kvdrive_build_info", "gauge", "The daemon's version; always 1.");
        fputs("kvdrive_build_info{version=\"", f);
        label_value(f, KVD_VERSION);
        fputs("\"} 1\n", f);
        scalar_f(f, "kvdrive_uptime_seconds", "gauge", "Seconds since the daemon started.",
                 (double)(kvd_now_ms() - s->started_ms) / 1e3);
        render_tiers(f, rows, n_rows);
        scalar(f, "kvdrive_blocks_dropped_total", "counter", "Blocks lost from every tier by eviction.", cs.dropped);
        if (cs.have_ssd) {
                scalar_f(f, "kvdrive_ssd_busy_seconds_total", "counter", "Time with SSD I/O in flight.",
                         (double)cs.ssd_busy_ns / 1e9);
                family(f, "kvdrive_ssd_io_duration_seconds", "histogram",
                       "How long one block's SSD read or write took, submission to completion.");
                histogram_us(f, "kvdrive_ssd_io_duration_seconds", "op=\"read\",", cs.ssd_read_lat.hist,
                             KVD_TIER_LAT_BUCKETS, (double)cs.ssd_read_lat.sum_ns / 1e9);
                histogram_us(f, "kvdrive_ssd_io_duration_seconds", "op=\"write\",", cs.ssd_write_lat.hist,
                             KVD_TIER_LAT_BUCKETS, (double)cs.ssd_write_lat.sum_ns / 1e9);
        }
        family(f, "kvdrive_transfer_bytes_total", "counter",
               "Bytes copied between client pools and the daemon: in (Put), out (Get).");
        fprintf(f, "kvdrive_transfer_bytes_total{direction=\"in\"} %" PRIu64 "\n",
                kvd_xfer_bytes(s->xfer, KVD_XFER_IN));
        fprintf(f, "kvdrive_transfer_bytes_total{direction=\"out\"} %" PRIu64 "\n",
                kvd_xfer_bytes(s->xfer, KVD_XFER_OUT));
        family(f, "kvdrive_transfer_busy_seconds_total", "counter",
               "Worker time spent copying, summed over the workers, per direction.");
        fprintf(f, "kvdrive_transfer_busy_seconds_total{direction=\"in\"} %.9g\n",
                (double)kvd_xfer_busy_ns(s->xfer, KVD_XFER_IN) / 1e9);
        fprintf(f, "kvdrive_transfer_busy_seconds_total{direction=\"out\"} %.9g\n",
                (double)kvd_xfer_busy_ns(s->xfer, KVD_XFER_OUT) / 1e9);
        family(f, "kvdrive_transfer_copy_duration_seconds", "histogram",
               "How long one block copy between a client pool and the daemon took, per direction.");
        for (int d = KVD_XFER_IN; d <= KVD_XFER_OUT; d++) {
                uint64_t hist[KVD_XFER_LAT_BUCKETS];

                kvd_xfer_latency(s->xfer, (enum kvd_xfer_dir)d, hist);
                histogram_us(f, "kvdrive_transfer_copy_duration_seconds",
                             d == KVD_XFER_IN ? "direction=\"in\"," : "direction=\"out\",", hist,
                             KVD_XFER_LAT_BUCKETS, (double)kvd_xfer_busy_ns(s->xfer, (enum kvd_xfer_dir)d) / 1e9);
        }
        scalar(f, "kvdrive_transfer_workers", "gauge", "Transfer worker threads.", s->cfg->workers);
        scalar(f, "kvdrive_put_blocks_total", "counter", "Blocks stored by Put (not those already cached).", cs.puts);
        scalar(f, "kvdrive_get_blocks_total", "counter", "Blocks loaded by Get.", cs.gets);
        if (n_nodes >= 0)
                render_remote(f, &rst, nodes, (unsigned)MIN(n_nodes, REMOTE_NODES_MAX));
        render_requests(f, s);
        scalar(f, "kvdrive_clients_connected", "gauge", "Client sessions connected now.", s->n_sessions);
        scalar(f, "kvdrive_clients_accepted_total", "counter", "Client sessions accepted since start.",
               s->sessions_total);
        family(f, "kvdrive_device_pools", "gauge", "Device pools the connected clients registered, per backend.");
        fprintf(f, "kvdrive_device_pools{backend=\"memfd\"} %" PRIu32 "\n", s->pools[KVD_BACKEND_MEMFD]);
        fprintf(f, "kvdrive_device_pools{backend=\"cuda\"} %" PRIu32 "\n", s->pools[KVD_BACKEND_CUDA]);
        scalar(f, "kvdrive_namespaces", "gauge", "Namespaces registered now.", kvd_cache_ns_count(s->cache));
        scalar(f, "kvdrive_index_capacity", "gauge", "Slots of the block index.", cs.index_capacity);
        scalar(f, "kvdrive_index_entries", "gauge", "Blocks the index holds now.", cs.index_entries);
        scalar(f, "kvdrive_index_bytes", "gauge", "Bytes the block index has allocated (records, table); per block: divide by kvdrive_index_entries.", cs.index_bytes);
        family(f, "kvdrive_eviction_policy_info", "gauge", "The eviction policy (eviction=); always 1.");
        fprintf(f, "kvdrive_eviction_policy_info{policy=\"%s\"} 1\n", cs.eviction);
        scalar(f, "kvdrive_speculative_promotions_total", "counter",
               "Next-layer blocks staged from SSD into free host memory.", cs.spec_promotions);
        scalar(f, "kvdrive_scores_total", "counter", "Block scores applied from kvc_report_scores().", cs.scores);
        if (ts) {
                n_ten = kvd_cache_tenants(s->cache, ts, n_ten);
                render_tenants(f, ts, n_ten);
        }
        render_scheduler(f, s);
        family(f, "kvdrive_loop_turn_seconds", "histogram",
               "CPU time of the event loop's busy turns: how long a request could wait for the loop.");
        histogram_us(f, "kvdrive_loop_turn_seconds", "", s->turn_hist, KVD_TURN_BUCKETS, (double)s->turn_ns_sum / 1e9);
        scalar_f(f, "kvdrive_loop_turn_max_seconds", "gauge", "The longest busy turn of the event loop (CPU time).",
                 (double)s->turn_max_ns / 1e9);
        free(nodes);
        free(ts);
        return ferror(f) ? -EIO : 0;
}

/* ---- HTTP ------------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, char *body, size_t len,
                               const char *type)
{
        struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        enum MHD_Result ret;

        if (!r) {
                free(body);
                return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        ret = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
        struct kvd_metrics *m = cls;
        char *body = NULL;
        size_t len = 0;
        FILE *f;
        int r;

        (void)version;
        (void)upload;
        (void)upload_size;
        (void)con_cls;
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 || strcmp(url, "/metrics") != 0) {
                static const char nf[] = "not found: GET /metrics\n";
                char *b = strdup(nf);

                return b ? respond(c, MHD_HTTP_NOT_FOUND, b, strlen(b), "text/plain; charset=utf-8") : MHD_NO;
        }
        f = open_memstream(&body, &len);
        if (!f)
                return MHD_NO;
        r = kvd_metrics_render(m->server, f);
        if (fclose(f) != 0 || r < 0 || !body) {
                free(body);
                return MHD_NO;
        }
        return respond(c, MHD_HTTP_OK, body, len, CONTENT_TYPE);
}

/* Arms our timer for MHD's next timeout (none: disarmed). */
static void rearm(struct kvd_metrics *m)
{
        struct itimerspec its = { 0 };
        MHD_UNSIGNED_LONG_LONG ms;

        if (MHD_get_timeout(m->mhd, &ms) == MHD_YES) {
                its.it_value.tv_sec = (time_t)(ms / 1000);
                its.it_value.tv_nsec = (long)(ms % 1000) * 1000000;
                if (ms == 0)
                        its.it_value.tv_nsec = 1; /* 0 would disarm */
        }
        if (timerfd_settime(m->timer_w.fd, 0, &its, NULL) < 0)
                log_warning("metrics: timerfd_settime: %m");
}

static void on_mhd(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_metrics *m = container_of(w, struct kvd_metrics, mhd_w);

        (void)events;
        MHD_run(m->mhd);
        rearm(m);
}

static void on_timer(struct kvd_loop_watch *w, uint32_t events)
{
        struct kvd_metrics *m = container_of(w, struct kvd_metrics, timer_w);
        uint64_t ticks;

        (void)events;
        if (read(w->fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
                log_warning("metrics: timerfd: %m");
        MHD_run(m->mhd);
        rearm(m);
}

/* libmicrohttpd's messages: fmt is its own printf format. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        char msg[256];
        size_t n;

        (void)cls;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        n = strlen(msg);
        while (n && msg[n - 1] == '\n')
                msg[--n] = '\0';
        log_warning("metrics: %s", msg);
}

/* "ADDR:PORT" or "[V6ADDR]:PORT", numeric, into sa. 0 or -EINVAL. */
static int parse_listen(const char *listen, struct sockaddr_storage *sa, socklen_t *ret_len)
{
        char host[64];
        const char *colon = strrchr(listen, ':');
        unsigned long port;
        size_t hl;
        char *end;

        if (!colon || colon == listen)
                return -EINVAL;
        errno = 0;
        port = strtoul(colon + 1, &end, 10);
        if (errno || *end || end == colon + 1 || port > 65535)
                return -EINVAL;
        hl = (size_t)(colon - listen);
        if (listen[0] == '[') {
                if (hl < 3 || listen[hl - 1] != ']' || hl - 2 >= sizeof(host))
                        return -EINVAL;
                memcpy(host, listen + 1, hl - 2);
                host[hl - 2] = '\0';
        } else {
                if (hl >= sizeof(host))
                        return -EINVAL;
                memcpy(host, listen, hl);
                host[hl] = '\0';
        }
        memset(sa, 0, sizeof(*sa));
        if (listen[0] != '[') {
                struct sockaddr_in *in = (struct sockaddr_in *)sa;

                in->sin_family = AF_INET;
                in->sin_port = htons((uint16_t)port);
                *ret_len = sizeof(*in);
                return inet_pton(AF_INET, host, &in->sin_addr) == 1 ? 0 : -EINVAL;
        } else {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;

                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t)port);
                *ret_len = sizeof(*in6);
                return inet_pton(AF_INET6, host, &in6->sin6_addr) == 1 ? 0 : -EINVAL;
        }
}

/* Our own listening socket, so that a bind failure says why (and the fd is
 * O_CLOEXEC). fd or -errno. */
static int listen_socket(const struct sockaddr_storage *sa, socklen_t len, uint16_t *ret_port)
{
        struct sockaddr_storage got;
        socklen_t gl = sizeof(got);
        int one = 1, fd, r;

        fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            (sa->ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
            bind(fd, (const struct sockaddr *)sa, len) < 0 || listen(fd, 16) < 0 ||
            getsockname(fd, (struct sockaddr *)&got, &gl) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        *ret_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                    : ((struct sockaddr_in *)&got)->sin_port);
        return fd;
}

int kvd_metrics_new(struct kvd_server *s, struct kvd_loop *loop, const char *listen, struct kvd_metrics **ret)
{
        struct sockaddr_storage sa;
        socklen_t sa_len;
        const union MHD_DaemonInfo *info;
        struct kvd_metrics *m;
        int fd, r;

        if (parse_listen(listen, &sa, &sa_len) < 0) {
                log_error("metrics-listen '%s': want ADDR:PORT or [IPv6-ADDR]:PORT with a numeric address, "
                          "or off", listen);
                return -EINVAL;
        }
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->server = s;
        m->mhd_w.fd = -1;
        m->timer_w.fd = -1;
        fd = listen_socket(&sa, sa_len, &m->port);
        if (fd < 0) {
                r = fd;
                log_error("cannot listen for metrics on %s: %s (set metrics-listen to another ADDR:PORT, or off)",
                          listen, strerror(-r));
                goto err;
        }
        m->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
                                  0, NULL, NULL, on_request, m,
                                  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: MHD wants it so */
                                  MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                                  MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_CONNECTIONS,
                                  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_IDLE_TIMEOUT_S,
                                  MHD_OPTION_END);
        if (!m->mhd) {
                close(fd);
                r = -EIO;
                log_error("cannot start the metrics endpoint on %s", listen);
                goto err;
        }
        info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info) {
                r = -EIO;
                goto err;
        }
        m->mhd_w = (struct kvd_loop_watch){ info->epoll_fd, on_mhd };
        m->timer_w = (struct kvd_loop_watch){ timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC),
                                              on_timer };
        if (m->timer_w.fd < 0) {
                r = -errno;
                goto err;
        }
        r = kvd_loop_add(loop, &m->mhd_w, KVD_LOOP_IN);
        if (r < 0)
                goto err;
        m->loop = loop;
        r = kvd_loop_add(loop, &m->timer_w, KVD_LOOP_IN);
        if (r < 0)
                goto err;
        /* Tests with port 0 read the port from this line. */
        log_info("metrics on http://%.*s:%u/metrics", (int)(strrchr(listen, ':') - listen), listen, m->port);
        *ret = m;
        return 0;
err:
        if (m->mhd)
                log_error("cannot start the metrics endpoint on %s: %s", listen, strerror(-r));
        kvd_metrics_free(m);
        return r;
}

uint16_t kvd_metrics_port(const struct kvd_metrics *m)
{
        return m->port;
}

struct kvd_metrics *kvd_metrics_free(struct kvd_metrics *m)
{
        if (!m)
                return NULL;
        if (m->loop) {
                (void)kvd_loop_del(m->loop, &m->mhd_w);
                if (m->timer_w.fd >= 0)
                        (void)kvd_loop_del(m->loop, &m->timer_w);
        }
        if (m->timer_w.fd >= 0)
                close(m->timer_w.fd);
        if (m->mhd)
                MHD_stop_daemon(m->mhd); /* closes its connections, the listener and its epoll fd */
        free(m);
        return NULL;
}

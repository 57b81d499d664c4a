/* SPDX-License-Identifier: MIT */
/*
 * kvdrivectl: the operator's view of a running kvdrived.
 *
 *   kvdrivectl [--socket PATH] [--json] COMMAND [ARGS]
 *
 * status, stats, drop here; the administration commands (clients,
 * namespaces, evict, flush, config, top, shutdown) in admin.c.
 *
 * Exit status: 0 success, 1 the daemon is unreachable or failed the
 * request (a namespace not found, a request denied), 2 usage error. The
 * stats --json layout is a stable interface, documented in
 * docs/stats-json.md.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kvdrive/client.h>

#include "ctl.h"
#include "kvd-build.h"

#define EXIT_USAGE CTL_EXIT_USAGE
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define STATS_JSON_SCHEMA 1

struct command {
        const char *name;
        int (*run)(struct ctl *ctl);
        const char *help;
};

static int cmd_status(struct ctl *ctl);
static int cmd_stats(struct ctl *ctl);
static int cmd_drop_namespace(struct ctl *ctl);

/* Who may: (admin) uid 0 or admin-group; (owner) the namespace's owner or an admin. */
static const struct command commands[] = {
        { "status", cmd_status, "is the daemon up; version, clients, tier fill" },
        { "stats", cmd_stats, "all counters (--json: docs/stats-json.md)" },
        { "clients", cmd_clients, "connected clients: pid, uid, name, pools, in flight (all: admin; else yours)" },
        { "namespaces", cmd_namespaces, "namespaces: owner, geometry, blocks per tier, fingerprint" },
        { "evict", cmd_evict,
          "--namespace NAME|ID [--tier host|ssd] [--owner UID]: drop its copies from a tier (owner)" },
        { "drop", cmd_drop_namespace,
          "NAME|ID [--owner UID]: delete a namespace and all its blocks (owner)" },
        { "drop-namespace", cmd_drop_namespace, "the same as drop" },
        { "flush", cmd_flush, "write host-only blocks to SSD, as a clean stop does (admin)" },
        { "config", cmd_config, "the effective settings and where each came from (admin)" },
        { "top", cmd_top, "[--count N]: rates per tier and link, once a second, until interrupted" },
        { "shutdown", cmd_shutdown, "stop the daemon cleanly, as SIGTERM does (admin)" },
};

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrivectl [--socket PATH] [--json] COMMAND [ARGS]\n"
                "\n"
                "Options:\n"
                "  -s, --socket PATH     daemon socket (default: $KVDRIVE_SOCKET, else the\n"
                "                        system or per-user socket)\n"
                "  -j, --json            print JSON (every command; top: one object a line;\n"
                "                        a failure: {\"error\": {...}})\n"
                "  -o, --owner UID       drop, evict: the owner of NAME (default: yours,\n"
                "                        else the only one you can see)\n"
                "  -n, --namespace NAME  evict: the namespace (a name or an id)\n"
                "  -t, --tier TIER       evict: host (default) or ssd\n"
                "  -c, --count N         top: N samples, then exit (default: until interrupted)\n"
                "  -h, --help            this help\n"
                "  -V, --version         print the version\n"
                "\n"
                "Commands:\n");
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].help);
        fprintf(f, "\nExit status:\n"
                   "  0  ok\n"
                   "  1  the daemon is unreachable, or the request failed: a namespace not\n"
                   "     found, a request denied (not its owner, not an admin), no SSD tier;\n"
                   "     with --json, stdout has {\"error\": {\"code\": \"not_found\" | \"denied\"\n"
                   "     | \"unreachable\" | \"unsupported\" | \"failed\", ...}}\n"
                   "  2  usage: unknown command or option, missing or extra argument\n");
}

/* Prints each line of the library's connect report, indented. */
static void print_report(const char *report)
{
        while (*report) {
                size_t n = strcspn(report, "\n");

                fprintf(stderr, "  %.*s\n", (int)n, report);
                report += n + (report[n] == '\n');
        }
}

int ctl_connect(const struct ctl *ctl, kvc_client **ret)
{
        char report[1024];
        struct kvc_connect_opts o = { .size = sizeof(o), .path = ctl->socket, .name = "kvdrivectl",
                                      .report = report, .report_size = sizeof(report) };
        int err = kvc_connect_opts(&o, ret);

        if (err < 0) {
                fprintf(stderr, "kvdrivectl: kvdrived is not reachable: %s; tried:\n", kvc_strerror(err));
                print_report(report);
        }
        return err;
}

/* Connects and fetches the statistics; prints why not on failure. */
static int fetch_stats(const struct ctl *ctl, struct kvc_stats **ret)
{
        kvc_client *c = NULL;
        int err;

        err = ctl_connect(ctl, &c);
        if (err < 0)
                return err;
        err = kvc_stats_get(c, ret);
        if (err < 0)
                fprintf(stderr, "kvdrivectl: stats request failed: %s%s%s\n", kvc_strerror(err),
                        *kvc_last_error(c) ? ": " : "", kvc_last_error(c));
        kvc_disconnect(c);
        return err;
}

const char *ctl_format_bytes(char *buf, size_t size, uint64_t v)
{
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
        double d = (double)v;
        size_t u = 0;

        while (d >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
                d /= 1024.0;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64 " B", v);
        else
                snprintf(buf, size, "%.1f %s", d, units[u]);
        return buf;
}

static const char *format_uptime(char *buf, size_t size, uint64_t ms)
{
        uint64_t s = ms / 1000;

        if (s >= 86400)
                snprintf(buf, size, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", s / 86400,
                         s / 3600 % 24, s / 60 % 60);
        else if (s >= 3600)
                snprintf(buf, size, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", s / 3600,
                         s / 60 % 60, s % 60);
        else if (s >= 60)
                snprintf(buf, size, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
        else
                snprintf(buf, size, "%" PRIu64 ".%03" PRIu64 "s", s, ms % 1000);
        return buf;
}

const char *ctl_dtype_name(uint32_t dtype)
{
        switch (dtype) {
        case KVC_DTYPE_F16:
                return "f16";
        case KVC_DTYPE_BF16:
                return "bf16";
        case KVC_DTYPE_F32:
                return "f32";
        case KVC_DTYPE_FP8:
                return "fp8";
        }
        return "unknown";
}

/* The bound below which 99% of the loop's busy turns fell (a bucket's top). */
static uint64_t loop_p99_us(const struct kvc_stats *s)
{
        uint64_t seen = 0;

        for (unsigned b = 0; b < KVC_LOOP_BUCKETS; b++) {
                seen += s->loop_turn_hist[b];
                if (seen * 100 >= s->loop_turns * 99)
                        return MIN(UINT64_C(1) << b, s->loop_turn_max_us + 1);
        }
        return s->loop_turn_max_us + 1;
}

/* Requests a node answered: its latency histogram counts each once. */
static uint64_t node_answered(const struct kvc_remote_node_stats *n)
{
        uint64_t sum = 0;

        for (unsigned b = 0; b < KVC_LOOP_BUCKETS; b++)
                sum += n->latency_hist[b];
        return sum;
}

/* Mean latency of a node's answered requests, whole microseconds (rounded). */
static uint64_t node_latency_mean_us(const struct kvc_remote_node_stats *n)
{
        uint64_t answered = node_answered(n);

        return answered ? (n->latency_us_sum + answered / 2) / answered : 0;
}

static double mib(uint64_t bytes)
{
        return (double)bytes / (1024.0 * 1024.0);
}

/* "rwo" for the caller's rights, "admin" for none (seen as an admin). */
static const char *rights_name(uint32_t r)
{
        static const char *const names[] = { "admin", "r", "w", "rw", "o", "ro", "wo", "rwo" };

        return names[r & 7];
}

static int cmd_status(struct ctl *ctl)
{
        struct kvc_stats *s = NULL;
        char b1[32], b2[32];

        if (fetch_stats(ctl, &s) < 0)
                return ctl->json ? ctl_fail(ctl, "status", -ECONNREFUSED, "kvdrived is not reachable") : EXIT_FAILURE;
        if (ctl->json) {
                int ret = ctl_status_json(ctl, s);

                kvc_stats_free(s);
                return ret;
        }
        printf("kvdrived:  up\n");
        printf("version:   %s\n", s->daemon_version);
        printf("pid:       %" PRIu32 "\n", s->pid);
        printf("uptime:    %s\n", format_uptime(b1, sizeof(b1), s->uptime_ms));
        printf("clients:   %" PRIu32 " connected, %" PRIu64 " since start\n", s->clients,
               s->clients_total);
        printf("backends:  %s\n", *s->device_backends ? s->device_backends : "(none)");
        printf("cuda:      %s\n", *s->cuda ? s->cuda : "(not reported)");
        printf("pools:     %" PRIu32 " memfd, %" PRIu32 " cuda\n", s->pools_memfd, s->pools_cuda);
        for (uint32_t i = 0; i < s->n_tiers; i++) {
                const struct kvc_tier_stats *t = &s->tiers[i];
                double pct = t->capacity_bytes
                                     ? 100.0 * (double)t->used_bytes / (double)t->capacity_bytes
                                     : 0.0;

                printf("tier %-5s %s / %s used (%.1f%%), %" PRIu64 " blocks\n", t->name,
                       ctl_format_bytes(b1, sizeof(b1), t->used_bytes),
                       ctl_format_bytes(b2, sizeof(b2), t->capacity_bytes), pct, t->blocks);
        }
        kvc_stats_free(s);
        return EXIT_SUCCESS;
}

/* The remote tier's section of `stats`: nothing without one. */
static void print_remote(const struct kvc_remote_stats *r)
{
        char b1[32], b2[32];

        if (!r->have)
                return;
        printf("\nremote     seeds %s; condition: %s; %" PRIu32 " requests in flight\n",
               *r->seeds ? r->seeds : "(none)", r->condition, r->inflight);
        printf("           %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64 " crc failures; %" PRIu64
               " writes, %" PRIu64 " write skips; %" PRIu64 " errors\n",
               r->hits, r->misses, r->crc_failures, r->writes, r->write_skips, r->errors);
        printf("           %" PRIu64 " lookup keys, %" PRIu64 " found; read %s, written %s; %" PRIu64
               " slot map refreshes\n",
               r->lookups, r->lookup_hits, ctl_format_bytes(b1, sizeof(b1), r->read_bytes),
               ctl_format_bytes(b2, sizeof(b2), r->write_bytes), r->slot_map_refreshes);
        if (r->n_nodes == 0)
                return;
        printf("\n%-24s %5s %5s %10s %10s %10s %10s %10s %8s %8s %11s %8s %8s\n", "NODE", "STATE", "SLOTS",
               "REQUESTS", "HITS", "MISSES", "READ_MIB", "WRITE_MIB", "ERRORS", "TIMEOUTS", "MOVED/ASK", "MEAN_US",
               "MAX_US");
        for (uint32_t i = 0; i < r->n_nodes; i++) {
                const struct kvc_remote_node_stats *n = &r->nodes[i];
                char redirects[48];

                snprintf(redirects, sizeof(redirects), "%" PRIu64 "/%" PRIu64, n->moved, n->ask);
                printf("%-24s %5s %5" PRIu32 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10.1f %10.1f %8" PRIu64
                       " %8" PRIu64 " %11s %8" PRIu64 " %8" PRIu64 "\n",
                       n->addr, n->up ? "up" : "down", n->slots, n->requests, n->hits, n->misses,
                       mib(n->read_bytes), mib(n->write_bytes), n->errors, n->timeouts, redirects,
                       node_latency_mean_us(n), n->latency_us_max);
        }
}

static void print_stats(const struct kvc_stats *s)
{
        char b1[32], b2[32], b3[32];

        printf("daemon     version %s, pid %" PRIu32 ", up %s, %" PRIu32 " workers, backends %s\n",
               s->daemon_version, s->pid, format_uptime(b1, sizeof(b1), s->uptime_ms),
               s->workers, *s->device_backends ? s->device_backends : "(none)");
        printf("clients    %" PRIu32 " connected, %" PRIu64 " total\n", s->clients,
               s->clients_total);
        printf("cuda       %s; pools %" PRIu32 " memfd, %" PRIu32 " cuda\n", *s->cuda ? s->cuda : "(not reported)",
               s->pools_memfd, s->pools_cuda);
        printf("placement  eviction by %s, %" PRIu64 " block scores, %" PRIu64 " next-layer promotions\n",
               s->eviction, s->scores, s->speculative_promotions);
        printf("scheduler  device %s/s (busy %.2f), SSD %s/s (busy %.2f), host hits %.2f; %" PRIu32
               " clients prefetching, %" PRIu32 " us compute per layer -> depth %" PRIu32 " (%" PRIu64 " decisions)\n",
               ctl_format_bytes(b1, sizeof(b1), s->sched_device_bytes_per_s), s->sched_device_busy,
               ctl_format_bytes(b2, sizeof(b2), s->sched_ssd_bytes_per_s), s->sched_ssd_busy, s->sched_host_hit_rate,
               s->sched_active_clients, s->sched_compute_us, s->sched_prefetch_depth, s->sched_decisions);
        printf("requests   %" PRIu64 " total, %" PRIu64 " errors\n", s->requests, s->errors);
        printf("loop       %" PRIu64 " busy turns, p99 under %" PRIu64 " us, longest %" PRIu64 " us\n",
               s->loop_turns, loop_p99_us(s), s->loop_turn_max_us);
        printf("transfer   in %s (%" PRIu64 " blocks put), out %s (%" PRIu64 " blocks got)\n",
               ctl_format_bytes(b1, sizeof(b1), s->bytes_in), s->puts,
               ctl_format_bytes(b2, sizeof(b2), s->bytes_out), s->gets);
        printf("index      %" PRIu64 " entries / %" PRIu64 " slots, %s allocated",
               s->index_entries, s->index_capacity, ctl_format_bytes(b3, sizeof(b3), s->index_bytes));
        if (s->index_bytes_per_block)
                printf(" (%" PRIu32 " B per block)", s->index_bytes_per_block);
        printf("\n");

        printf("\n%-8s %12s %12s %10s %12s %12s %10s\n", "TIER", "CAPACITY", "USED", "BLOCKS",
               "HITS", "MISSES", "EVICTIONS");
        for (uint32_t i = 0; i < s->n_tiers; i++) {
                const struct kvc_tier_stats *t = &s->tiers[i];

                printf("%-8s %12s %12s %10" PRIu64 " %12" PRIu64 " %12" PRIu64 " %10" PRIu64 "\n",
                       t->name, ctl_format_bytes(b1, sizeof(b1), t->capacity_bytes),
                       ctl_format_bytes(b2, sizeof(b2), t->used_bytes), t->blocks, t->hits,
                       t->misses, t->evictions);
        }
        for (uint32_t i = 0; i < s->n_tiers; i++) {
                const struct kvc_tier_stats *t = &s->tiers[i];

                if (strcmp(t->name, "ssd") != 0)
                        continue;
                printf("\nssd        %" PRIu64 " reads (%s), %" PRIu64 " writes (%s), %" PRIu64 " demotions, %" PRIu64
                       " promotions\n", t->reads, ctl_format_bytes(b1, sizeof(b1), t->read_bytes), t->writes,
                       ctl_format_bytes(b2, sizeof(b2), t->write_bytes), t->demotions, t->promotions);
                printf("           %" PRIu64 " crc failures, %" PRIu64 " read / %" PRIu64 " write errors, %" PRIu64
                       " blocks dropped; condition: %s\n", t->crc_failures, t->read_errors, t->write_errors,
                       t->dropped, t->condition);
                if (t->damaged)
                        printf("           DAMAGED: no more writes, durable Puts fail; restart once the file is fixed\n");
        }

        print_remote(&s->remote);

        if (s->n_tenants)
                printf("\n%-8s %12s %12s %12s %12s %10s %10s   (%s)\n", "UID", "HOST", "SSD", "POOLS", "NAMESPACES",
                       "EVICTED", "REFUSED", s->peer_admin ? "every uid: you administer this daemon" : "yours only");
        for (uint32_t i = 0; i < s->n_tenants; i++) {
                const struct kvc_tenant_stats *t = &s->tenants[i];
                char q1[32], q2[32], q3[32], h[80], d[80], p[80], n[32];

                snprintf(h, sizeof(h), "%s/%s", ctl_format_bytes(b1, sizeof(b1), t->host_bytes),
                         t->quota_host_bytes ? ctl_format_bytes(q1, sizeof(q1), t->quota_host_bytes) : "-");
                snprintf(d, sizeof(d), "%s/%s", ctl_format_bytes(b2, sizeof(b2), t->ssd_bytes),
                         t->quota_ssd_bytes ? ctl_format_bytes(q2, sizeof(q2), t->quota_ssd_bytes) : "-");
                snprintf(p, sizeof(p), "%s/%s", ctl_format_bytes(b3, sizeof(b3), t->pool_bytes),
                         t->quota_pool_bytes ? ctl_format_bytes(q3, sizeof(q3), t->quota_pool_bytes) : "-");
                if (t->quota_namespaces)
                        snprintf(n, sizeof(n), "%" PRIu32 "/%" PRIu32, t->namespaces, t->quota_namespaces);
                else
                        snprintf(n, sizeof(n), "%" PRIu32 "/-", t->namespaces);
                printf("%-8" PRIu32 " %12s %12s %12s %12s %10" PRIu64 " %10" PRIu64 "\n", t->uid, h, d, p, n,
                       t->quota_evictions, t->quota_refusals);
        }

        if (s->n_namespaces == 0)
                return;
        printf("\n%-24s %5s %6s %6s %6s %8s %8s %5s %12s %11s %10s\n", "NAMESPACE", "ID", "OWNER", "ACCESS",
               "LAYERS", "KV_HEADS", "HEAD_DIM", "DTYPE", "BLOCK_TOKENS", "BLOCK_BYTES", "BLOCKS");
        for (uint32_t i = 0; i < s->n_namespaces; i++) {
                const struct kvc_ns_stats *n = &s->namespaces[i];

                printf("%-24s %5" PRIu32 " %6" PRIu32 " %6s %6" PRIu32 " %8" PRIu32 " %8" PRIu32 " %5s %12" PRIu32
                       " %11s %10" PRIu64 "%s\n",
                       n->name, n->id, n->owner, rights_name(n->rights), n->geometry.layers, n->geometry.kv_heads,
                       n->geometry.head_dim, ctl_dtype_name(n->geometry.dtype),
                       n->geometry.block_tokens, ctl_format_bytes(b1, sizeof(b1), n->block_bytes),
                       n->blocks, n->dropped ? " (dropping)" : "");
        }
}

json_int_t ctl_ji(uint64_t v)
{
        return v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v;
}

/* The stats --json code calls it ji. */
#define ji ctl_ji

int ctl_print_json(json_t *j)
{
        int ret = EXIT_SUCCESS;

        if (!j || json_dumpf(j, stdout, JSON_INDENT(2)) < 0 || putchar('\n') == EOF || fflush(stdout) == EOF) {
                fprintf(stderr, "kvdrivectl: cannot write the JSON output\n");
                ret = EXIT_FAILURE;
        }
        json_decref(j);
        return ret;
}

/* device_backends is comma-separated on the wire; an array in JSON. */
static json_t *backends_json(const char *list)
{
        json_t *a = json_array();
        const char *p = list;

        while (a && *p) {
                size_t n = strcspn(p, ",");

                if (n > 0 && json_array_append_new(a, json_stringn(p, n)) < 0) {
                        json_decref(a);
                        return NULL;
                }
                p += n;
                if (*p == ',')
                        p++;
        }
        return a;
}

/* The "remote" object of stats --json (docs/stats-json.md), NULL on
 * failure. */
static json_t *remote_json(const struct kvc_remote_stats *r)
{
        json_t *nodes = json_array();

        if (!nodes)
                return NULL;
        for (uint32_t i = 0; i < r->n_nodes; i++) {
                const struct kvc_remote_node_stats *n = &r->nodes[i];
                json_t *hist = json_array();

                for (unsigned b = 0; hist && b < KVC_LOOP_BUCKETS; b++)
                        if (json_array_append_new(hist, json_integer(ji(n->latency_hist[b]))) < 0) {
                                json_decref(hist);
                                hist = NULL;
                        }
                /* "o" takes hist, also when json_pack fails (NULL: it fails). */
                if (json_array_append_new(
                            nodes, json_pack("{s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
                                             " s:I, s:I, s:I, s:o}",
                                             "addr", n->addr,
                                             "up", n->up,
                                             "slots", (json_int_t)n->slots,
                                             "requests", ji(n->requests),
                                             "hits", ji(n->hits),
                                             "misses", ji(n->misses),
                                             "read_bytes", ji(n->read_bytes),
                                             "write_bytes", ji(n->write_bytes),
                                             "errors", ji(n->errors),
                                             "timeouts", ji(n->timeouts),
                                             "moved", ji(n->moved),
                                             "ask", ji(n->ask),
                                             "latency_us_sum", ji(n->latency_us_sum),
                                             "latency_us_max", ji(n->latency_us_max),
                                             "latency_us_mean", ji(node_latency_mean_us(n)),
                                             "latency_hist", hist)) < 0) {
                        json_decref(nodes);
                        return NULL;
                }
        }
        return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
                         "seeds", r->seeds,
                         "condition", r->condition,
                         "hits", ji(r->hits),
                         "misses", ji(r->misses),
                         "writes", ji(r->writes),
                         "write_skips", ji(r->write_skips),
                         "crc_failures", ji(r->crc_failures),
                         "errors", ji(r->errors),
                         "lookups", ji(r->lookups),
                         "lookup_hits", ji(r->lookup_hits),
                         "slot_map_refreshes", ji(r->slot_map_refreshes),
                         "read_bytes", ji(r->read_bytes),
                         "write_bytes", ji(r->write_bytes),
                         "inflight", (json_int_t)r->inflight,
                         "nodes", nodes);
}

static bool has_tier(const struct kvc_stats *s, const char *name)
{
        for (uint32_t i = 0; i < s->n_tiers; i++)
                if (strcmp(s->tiers[i].name, name) == 0)
                        return true;
        return false;
}

static json_t *stats_json(const struct kvc_stats *s)
{
        json_t *tiers = json_object(), *nss = json_array(), *tns = json_array(), *hist = json_array();
        json_t *root;

        if (!tiers || !nss || !tns || !hist)
                goto err_free;
        for (unsigned b = 0; b < KVC_LOOP_BUCKETS; b++)
                if (json_array_append_new(hist, json_integer(ji(s->loop_turn_hist[b]))) < 0)
                        goto err_free;
        for (uint32_t i = 0; i < s->n_tiers; i++) {
                const struct kvc_tier_stats *t = &s->tiers[i];

                json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}",
                                      "capacity_bytes", ji(t->capacity_bytes),
                                      "used_bytes", ji(t->used_bytes),
                                      "blocks", ji(t->blocks),
                                      "hits", ji(t->hits),
                                      "misses", ji(t->misses),
                                      "evictions", ji(t->evictions));

                /* The SSD tier's own counters (schema 1 additions). */
                if (o && strcmp(t->name, "ssd") == 0 &&
                    json_object_update_new(o, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:s}",
                                                        "reads", ji(t->reads),
                                                        "writes", ji(t->writes),
                                                        "read_bytes", ji(t->read_bytes),
                                                        "write_bytes", ji(t->write_bytes),
                                                        "read_errors", ji(t->read_errors),
                                                        "write_errors", ji(t->write_errors),
                                                        "crc_failures", ji(t->crc_failures),
                                                        "demotions", ji(t->demotions),
                                                        "promotions", ji(t->promotions),
                                                        "dropped", ji(t->dropped),
                                                        "full", t->full,
                                                        "damaged", t->damaged,
                                                        "condition", t->condition)) < 0) {
                        json_decref(o);
                        goto err_free;
                }
                /* Without an SSD tier every host eviction drops a block
                 * (docs/stats-json.md); with one, ssd.dropped counts them. */
                if (o && strcmp(t->name, "host") == 0 && !has_tier(s, "ssd") &&
                    json_object_set_new(o, "dropped", json_integer(ji(t->dropped))) < 0) {
                        json_decref(o);
                        goto err_free;
                }
                if (json_object_set_new(tiers, t->name, o) < 0)
                        goto err_free;
        }
        for (uint32_t i = 0; i < s->n_namespaces; i++) {
                const struct kvc_ns_stats *n = &s->namespaces[i];

                if (json_array_append_new(
                            nss, json_pack("{s:I, s:s, s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:{s:b, s:b, s:b},"
                                           " s:b}",
                                           "id", (json_int_t)n->id,
                                           "name", n->name,
                                           "layers", (json_int_t)n->geometry.layers,
                                           "kv_heads", (json_int_t)n->geometry.kv_heads,
                                           "head_dim", (json_int_t)n->geometry.head_dim,
                                           "dtype", ctl_dtype_name(n->geometry.dtype),
                                           "block_tokens", (json_int_t)n->geometry.block_tokens,
                                           "block_bytes", ji(n->block_bytes),
                                           "blocks", ji(n->blocks),
                                           "owner", (json_int_t)n->owner,
                                           "access",
                                           "read", (int)(n->rights & KVC_RIGHT_READ) != 0,
                                           "write", (int)(n->rights & KVC_RIGHT_WRITE) != 0,
                                           "owner", (int)(n->rights & KVC_RIGHT_OWNER) != 0,
                                           "dropped", n->dropped)) < 0)
                        goto err_free;
        }
        for (uint32_t i = 0; i < s->n_tenants; i++) {
                const struct kvc_tenant_stats *t = &s->tenants[i];

                if (json_array_append_new(
                            tns, json_pack("{s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, s:I}",
                                           "uid", (json_int_t)t->uid,
                                           "host_bytes", ji(t->host_bytes),
                                           "ssd_bytes", ji(t->ssd_bytes),
                                           "pool_bytes", ji(t->pool_bytes),
                                           "namespaces", (json_int_t)t->namespaces,
                                           "quota",
                                           "host_bytes", ji(t->quota_host_bytes),
                                           "ssd_bytes", ji(t->quota_ssd_bytes),
                                           "pool_bytes", ji(t->quota_pool_bytes),
                                           "namespaces", (json_int_t)t->quota_namespaces,
                                           "quota_evictions", ji(t->quota_evictions),
                                           "quota_refusals", ji(t->quota_refusals))) < 0)
                        goto err_free;
        }
        /* "o" hands tiers, nss, tns, hist and the backends array to the
         * result, also when json_pack fails. */
        root = json_pack("{s:i,"
                         " s:{s:s, s:I, s:I, s:I, s:o, s:s, s:{s:I, s:I}},"
                         " s:{s:I, s:I},"
                         " s:o,"
                         " s:{s:I, s:I, s:I, s:I},"
                         " s:{s:I, s:I},"
                         " s:{s:I, s:I, s:I, s:I},"
                         " s:{s:s, s:I, s:I},"
                         " s:{s:I, s:I, s:f, s:f, s:f, s:I, s:I, s:I, s:I},"
                         " s:o, s:{s:I, s:b}, s:o, s:{s:I, s:I, s:o}}",
                         "schema", STATS_JSON_SCHEMA,
                         "daemon",
                         "version", s->daemon_version,
                         "pid", (json_int_t)s->pid,
                         "uptime_ms", ji(s->uptime_ms),
                         "workers", (json_int_t)s->workers,
                         "device_backends", backends_json(s->device_backends),
                         "cuda", s->cuda,
                         "pools", "memfd", (json_int_t)s->pools_memfd, "cuda", (json_int_t)s->pools_cuda,
                         "clients",
                         "connected", (json_int_t)s->clients,
                         "total", ji(s->clients_total),
                         "tiers", tiers,
                         "transfer",
                         "bytes_in", ji(s->bytes_in),
                         "bytes_out", ji(s->bytes_out),
                         "puts", ji(s->puts),
                         "gets", ji(s->gets),
                         "requests",
                         "total", ji(s->requests),
                         "errors", ji(s->errors),
                         "index",
                         "capacity", ji(s->index_capacity),
                         "entries", ji(s->index_entries),
                         "bytes", ji(s->index_bytes),
                         "bytes_per_block", (json_int_t)s->index_bytes_per_block,
                         "placement",
                         "eviction", s->eviction,
                         "speculative_promotions", ji(s->speculative_promotions),
                         "scores", ji(s->scores),
                         "scheduler",
                         "device_bytes_per_s", ji(s->sched_device_bytes_per_s),
                         "ssd_bytes_per_s", ji(s->sched_ssd_bytes_per_s),
                         "device_busy", s->sched_device_busy,
                         "ssd_busy", s->sched_ssd_busy,
                         "host_hit_rate", s->sched_host_hit_rate,
                         "active_clients", (json_int_t)s->sched_active_clients,
                         "compute_us", (json_int_t)s->sched_compute_us,
                         "prefetch_depth", (json_int_t)s->sched_prefetch_depth,
                         "decisions", ji(s->sched_decisions),
                         "namespaces", nss,
                         "peer", "uid", (json_int_t)s->peer_uid, "admin", s->peer_admin,
                         "tenants", tns,
                         "loop", "turns", ji(s->loop_turns), "turn_max_us", ji(s->loop_turn_max_us),
                         "turn_hist", hist);
        /* Only a daemon with a remote tier has the key, as only one with an
         * SSD tier has tiers.ssd. json_object_set_new() takes the value, a
         * NULL one included (it fails). */
        if (root && s->remote.have && json_object_set_new(root, "remote", remote_json(&s->remote)) < 0) {
                json_decref(root);
                return NULL;
        }
        return root;

err_free:
        json_decref(tiers);
        json_decref(nss);
        json_decref(tns);
        json_decref(hist);
        return NULL;
}

static int cmd_stats(struct ctl *ctl)
{
        struct kvc_stats *s = NULL;
        json_t *j;
        int ret = EXIT_SUCCESS;

        if (fetch_stats(ctl, &s) < 0)
                return EXIT_FAILURE;
        if (!ctl->json) {
                print_stats(s);
                goto out_free_stats;
        }
        j = stats_json(s);
        if (!j || json_dumpf(j, stdout, JSON_INDENT(2)) < 0 || putchar('\n') == EOF) {
                fprintf(stderr, "kvdrivectl: cannot write the JSON output\n");
                ret = EXIT_FAILURE;
        }
        json_decref(j);
out_free_stats:
        kvc_stats_free(s);
        return ret;
}

/* The namespace drop-namespace means: an id, or a name (of --owner, else
 * the caller's own, else the only one of that name the caller sees). */
static int find_namespace(const struct ctl *ctl, const struct kvc_stats *s, const char *what, uint32_t *ret)
{
        const struct kvc_ns_stats *found = NULL;
        unsigned matches = 0;
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(what, &end, 10);
        if (!errno && *what && !*end) {
                for (uint32_t i = 0; i < s->n_namespaces; i++)
                        if (s->namespaces[i].id == v) {
                                *ret = (uint32_t)v;
                                return 0;
                        }
                fprintf(stderr, "kvdrivectl: no namespace with id %lu (that you can see)\n", v);
                return -ENOENT;
        }
        for (uint32_t i = 0; i < s->n_namespaces; i++) {
                const struct kvc_ns_stats *n = &s->namespaces[i];

                if (strcmp(n->name, what) != 0 || n->dropped)
                        continue;
                if (ctl->owner ? strtoul(ctl->owner, NULL, 10) == n->owner : n->owner == s->peer_uid) {
                        *ret = n->id;
                        return 0;
                }
                found = n;
                matches++;
        }
        if (!ctl->owner && matches == 1) {
                *ret = found->id;
                return 0;
        }
        if (matches > 1)
                fprintf(stderr, "kvdrivectl: %u namespaces are named '%s': say whose with --owner UID, or give "
                        "its id (kvdrivectl stats)\n", matches, what);
        else
                fprintf(stderr, "kvdrivectl: no namespace '%s'%s%s (that you can see)\n", what,
                        ctl->owner ? " of uid " : "", ctl->owner ? ctl->owner : "");
        return -ENOENT;
}

static int cmd_drop_namespace(struct ctl *ctl)
{
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;
        uint64_t deleted = 0;
        uint32_t ns;
        int err, ret = EXIT_FAILURE;

        if (ctl->n_args != 1) {
                fprintf(stderr, "kvdrivectl: drop takes one NAME or ID\n");
                return EXIT_USAGE;
        }
        if (ctl_connect(ctl, &c) < 0)
                return EXIT_FAILURE;
        err = kvc_stats_get(c, &s);
        if (err < 0) {
                fprintf(stderr, "kvdrivectl: stats request failed: %s\n", kvc_strerror(err));
                goto out;
        }
        if (find_namespace(ctl, s, ctl->args[0], &ns) < 0) {
                ret = ctl->json ? ctl_fail(ctl, "drop", -ENOENT, "no such namespace") : EXIT_FAILURE;
                goto out;
        }
        err = kvc_drop_namespace(c, ns, &deleted);
        if (err < 0) {
                char what[64];

                snprintf(what, sizeof(what), "cannot drop namespace %" PRIu32, ns);
                ret = ctl_fail(ctl, what, err, kvc_last_error(c));
                goto out;
        }
        if (ctl->json)
                ret = ctl_print_json(json_pack("{s:I, s:s, s:I}", "id", (json_int_t)ns, "namespace", ctl->args[0],
                                               "deleted", ctl_ji(deleted)));
        else {
                printf("dropped namespace %" PRIu32 " '%s': %" PRIu64 " blocks deleted\n", ns, ctl->args[0],
                       deleted);
                ret = EXIT_SUCCESS;
        }
out:
        kvc_stats_free(s);
        kvc_disconnect(c);
        return ret;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "owner", required_argument, NULL, 'o' },
                { "namespace", required_argument, NULL, 'n' },
                { "tier", required_argument, NULL, 't' },
                { "count", required_argument, NULL, 'c' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct ctl ctl = {};
        const struct command *cmd = NULL;
        int c;

        /* Options may come before or after the command. */
        while ((c = getopt_long(argc, argv, "s:jo:n:t:c:hV", opts, NULL)) != -1) {
                char *end;

                switch (c) {
                case 's':
                        ctl.socket = optarg;
                        break;
                case 'j':
                        ctl.json = true;
                        break;
                case 'o':
                        ctl.owner = optarg;
                        break;
                case 'n':
                        ctl.ns = optarg;
                        break;
                case 't':
                        ctl.tier = optarg;
                        break;
                case 'c':
                        errno = 0;
                        ctl.count = strtol(optarg, &end, 10);
                        if (errno || !*optarg || *end || ctl.count < 1) {
                                fprintf(stderr, "kvdrivectl: --count %s: a number of samples, 1 or more\n", optarg);
                                return EXIT_USAGE;
                        }
                        break;
                case 'h':
                        usage(stdout);
                        return EXIT_SUCCESS;
                case 'V':
                        printf("kvdrivectl %s\n", KVD_VERSION);
                        return EXIT_SUCCESS;
                default:
                        usage(stderr);
                        return EXIT_USAGE;
                }
        }
        if (optind == argc) {
                fprintf(stderr, "kvdrivectl: missing command\n");
                usage(stderr);
                return EXIT_USAGE;
        }
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(argv[optind], commands[i].name) == 0)
                        cmd = &commands[i];
        if (!cmd) {
                fprintf(stderr, "kvdrivectl: unknown command '%s'\n", argv[optind]);
                usage(stderr);
                return EXIT_USAGE;
        }
        if (ctl.owner && cmd->run != cmd_drop_namespace && cmd->run != cmd_evict) {
                fprintf(stderr, "kvdrivectl: --owner applies to 'drop' and 'evict' only\n");
                return EXIT_USAGE;
        }
        if ((ctl.ns || ctl.tier) && cmd->run != cmd_evict) {
                fprintf(stderr, "kvdrivectl: --namespace and --tier apply to 'evict' only\n");
                return EXIT_USAGE;
        }
        if (ctl.count && cmd->run != cmd_top) {
                fprintf(stderr, "kvdrivectl: --count applies to 'top' only\n");
                return EXIT_USAGE;
        }
        ctl.args = argv + optind + 1;
        ctl.n_args = argc - optind - 1;
        if (ctl.n_args > 0 && cmd->run != cmd_drop_namespace) {
                fprintf(stderr, "kvdrivectl: %s takes no arguments\n", cmd->name);
                usage(stderr);
                return EXIT_USAGE;
        }
        return cmd->run(&ctl);
}

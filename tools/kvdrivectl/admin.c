/* SPDX-License-Identifier: MIT */
/*
 * kvdrivectl's administration commands: clients, namespaces, evict, flush,
 * config, top, shutdown. They speak requests libkvclient has no API for
 * (ListClients, Evict, ...: proto/kvdrive.proto) in their own frames on
 * the library's connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "frame.h"

/* Far above the library's ids (it counts from 1): a reply to one of
 * ours is never taken for one of its own. */
static uint64_t next_id = UINT64_C(1) << 48;

int ctl_call(kvc_client *c, Kvdrive__Request *req, Kvdrive__Response__BodyCase expect, Kvdrive__Response **ret,
             char *why, size_t why_size)
{
        size_t cap = KVD_FRAME_MAX_LIMIT + KVD_FRAME_HDR, len;
        uint8_t *buf = malloc(cap);
        int fds[KVD_FRAME_MAX_FDS];
        const uint8_t *payload;
        Kvdrive__Response *r = NULL;
        unsigned nfds = 0;
        ssize_t n;
        int err;

        why[0] = '\0';
        if (!buf)
                return -ENOMEM;
        req->id = next_id++;
        len = kvdrive__request__get_packed_size(req);
        if (len > KVD_FRAME_MAX_DEFAULT) {
                err = -E2BIG;
                goto out;
        }
        kvdrive__request__pack(req, buf);
        err = kvd_frame_send(kvc_fd(c), buf, len, -1, 0);
        if (err < 0)
                goto out;
        for (;;) {
                struct pollfd pfd = { .fd = kvc_fd(c), .events = POLLIN };

                if (poll(&pfd, 1, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        err = -errno;
                        goto out;
                }
                n = kvd_frame_recv(kvc_fd(c), buf, cap, fds, &nfds, MSG_DONTWAIT);
                for (unsigned i = 0; i < nfds; i++)
                        close(fds[i]);
                if (n == -EAGAIN || n == -EINTR)
                        continue;
                if (n <= 0) {
                        err = n < 0 ? (int)n : -ECONNRESET;
                        goto out;
                }
                err = kvd_frame_parse(buf, (size_t)n, cap - KVD_FRAME_HDR, &payload, &len);
                if (err < 0)
                        goto out;
                r = kvdrive__response__unpack(NULL, len, payload);
                if (!r) {
                        err = -EBADMSG;
                        goto out;
                }
                if (r->id == req->id)
                        break;
                kvdrive__response__free_unpacked(r, NULL); /* not ours */
                r = NULL;
        }
        if (r->body_case == expect) {
                *ret = r;
                err = 0;
        } else if (r->body_case == KVDRIVE__RESPONSE__BODY_ERROR && r->error) {
                err = -(KVC_E_BASE + (int)r->error->code);
                snprintf(why, why_size, "%s", r->error->message ? r->error->message : "");
                kvdrive__response__free_unpacked(r, NULL);
        } else {
                err = -EBADMSG;
                kvdrive__response__free_unpacked(r, NULL);
        }
out:
        free(buf);
        return err;
}

/* A stable name of err for --json: "denied", "not_found", ... */
static const char *error_key(int err)
{
        switch (-err) {
        case KVC_E_DENIED:
                return "denied";
        case KVC_E_NO_NAMESPACE:
        case ENOENT:
                return "not_found";
        case KVC_E_UNSUPPORTED:
                return "unsupported";
        case KVC_E_UNKNOWN_TYPE:
                return "unknown_request";
        case ECONNREFUSED:
        case ECONNRESET:
        case EPIPE:
                return "unreachable";
        }
        return "failed";
}

int ctl_fail(const struct ctl *ctl, const char *what, int err, const char *why)
{
        if (err == -ENOENT && why && *why)
                fprintf(stderr, "kvdrivectl: %s: %s\n", what, why);
        else
                fprintf(stderr, "kvdrivectl: %s: %s%s%s\n", what, kvc_strerror(err), why && *why ? ": " : "",
                        why ? why : "");
        if (-err == KVC_E_DENIED)
                fprintf(stderr, "kvdrivectl: run it as root, as the namespace's owner, or as a member of the "
                        "daemon's admin-group\n");
        if (-err == KVC_E_UNKNOWN_TYPE)
                fprintf(stderr, "kvdrivectl: this kvdrived is older than kvdrivectl and lacks the request\n");
        if (ctl->json)
                ctl_print_json(json_pack("{s:{s:s, s:s, s:s, s:i}}", "error", "what", what, "code", error_key(err),
                                         "message", why && *why ? why : kvc_strerror(err), "errno", -err));
        return CTL_EXIT_FAILED;
}

/* Connects and calls: the reply in *ret, or the exit status after saying why. */
static int call(const struct ctl *ctl, kvc_client **cp, Kvdrive__Request *req, Kvdrive__Response__BodyCase expect,
                const char *what, Kvdrive__Response **ret)
{
        char why[512];
        int err;

        if (!*cp && ctl_connect(ctl, cp) < 0) {
                if (ctl->json)
                        ctl_print_json(json_pack("{s:{s:s, s:s, s:s}}", "error", "what", what, "code", "unreachable",
                                                 "message", "kvdrived is not reachable"));
                return CTL_EXIT_FAILED;
        }
        err = ctl_call(*cp, req, expect, ret, why, sizeof(why));
        return err < 0 ? ctl_fail(ctl, what, err, why) : CTL_EXIT_OK;
}

/* ---- clients ----------------------------------------------------------- */

int cmd_clients(struct ctl *ctl)
{
        Kvdrive__ListClients lc = KVDRIVE__LIST_CLIENTS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        const Kvdrive__ListClientsReply *lr;
        kvc_client *c = NULL;
        json_t *a;
        int ret;

        req.body_case = KVDRIVE__REQUEST__BODY_LIST_CLIENTS;
        req.list_clients = &lc;
        ret = call(ctl, &c, &req, KVDRIVE__RESPONSE__BODY_LIST_CLIENTS, "clients", &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        lr = r->list_clients;
        if (!ctl->json) {
                char b[32];

                printf("%-8s %8s %8s %-24s %5s %10s %8s %4s   (%s)\n", "SESSION", "PID", "UID", "NAME", "POOLS",
                       "POOL_BYTES", "INFLIGHT", "NS", lr->all ? "every client" : "your uid's clients only");
                for (size_t i = 0; i < lr->n_clients; i++) {
                        const Kvdrive__ClientInfo *x = lr->clients[i];

                        printf("%-8" PRIu64 " %8" PRIu32 " %8" PRIu32 " %-24s %5" PRIu32 " %10s %8" PRIu32 " %4" PRIu32
                               "%s\n", x->session_id, x->pid, x->uid, *x->name ? x->name : "-", x->pools,
                               ctl_format_bytes(b, sizeof(b), x->pool_bytes), x->inflight, x->namespaces,
                               x->self ? "   (this kvdrivectl)" : "");
                }
                goto out;
        }
        a = json_array();
        for (size_t i = 0; a && i < lr->n_clients; i++) {
                const Kvdrive__ClientInfo *x = lr->clients[i];

                if (json_array_append_new(a, json_pack("{s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:b}",
                                                       "session", ctl_ji(x->session_id), "pid", (json_int_t)x->pid,
                                                       "uid", (json_int_t)x->uid, "gid", (json_int_t)x->gid,
                                                       "name", x->name, "pools", (json_int_t)x->pools,
                                                       "pool_bytes", ctl_ji(x->pool_bytes),
                                                       "inflight", (json_int_t)x->inflight,
                                                       "namespaces", (json_int_t)x->namespaces,
                                                       "self", (int)x->self)) < 0) {
                        json_decref(a);
                        a = NULL;
                }
        }
        ret = ctl_print_json(json_pack("{s:b, s:o*}", "all", (int)lr->all, "clients", a));
out:
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

/* ---- namespaces -------------------------------------------------------- */

static int list_namespaces(const struct ctl *ctl, kvc_client **cp, Kvdrive__Response **ret)
{
        Kvdrive__ListNamespaces ln = KVDRIVE__LIST_NAMESPACES__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;

        req.body_case = KVDRIVE__REQUEST__BODY_LIST_NAMESPACES;
        req.list_namespaces = &ln;
        return call(ctl, cp, &req, KVDRIVE__RESPONSE__BODY_LIST_NAMESPACES, "namespaces", ret);
}

static void hex(char *out, const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                sprintf(out + 2 * i, "%02x", p[i]);
        out[2 * n] = '\0';
}

int cmd_namespaces(struct ctl *ctl)
{
        Kvdrive__Response *r = NULL;
        const Kvdrive__ListNamespacesReply *lr;
        kvc_client *c = NULL;
        json_t *a;
        int ret;

        ret = list_namespaces(ctl, &c, &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        lr = r->list_namespaces;
        if (!ctl->json) {
                char b[32];

                printf("%-24s %5s %6s %-22s %11s %10s %10s %10s  %s\n", "NAMESPACE", "ID", "OWNER",
                       "GEOMETRY", "BLOCK_BYTES", "BLOCKS", "HOST", "SSD", "FINGERPRINT");
                for (size_t i = 0; i < lr->n_namespaces; i++) {
                        const Kvdrive__NamespaceInfo *n = lr->namespaces[i];
                        const Kvdrive__Geometry *g = n->geometry;
                        char geo[64], fp[2 * 64 + 1];

                        snprintf(geo, sizeof(geo), "%ux%ux%u %s/%u", g ? g->layers : 0, g ? g->kv_heads : 0,
                                 g ? g->head_dim : 0, ctl_dtype_name(g ? (uint32_t)g->dtype : 0),
                                 g ? g->block_tokens : 0);
                        hex(fp, n->fingerprint.data, n->fingerprint.len < 64 ? n->fingerprint.len : 64);
                        printf("%-24s %5" PRIu32 " %6" PRIu32 " %-22s %11s %10" PRIu64 " %10" PRIu64 " %10" PRIu64
                               "  %s%s\n", n->name, n->id, n->owner, geo,
                               ctl_format_bytes(b, sizeof(b), n->block_bytes), n->blocks, n->host_blocks,
                               n->ssd_blocks, *fp ? fp : "-", n->dropped ? " (dropping)" : "");
                }
                goto out;
        }
        a = json_array();
        for (size_t i = 0; a && i < lr->n_namespaces; i++) {
                const Kvdrive__NamespaceInfo *n = lr->namespaces[i];
                const Kvdrive__Geometry *g = n->geometry;
                char fp[2 * 64 + 1];

                hex(fp, n->fingerprint.data, n->fingerprint.len < 64 ? n->fingerprint.len : 64);
                if (json_array_append_new(
                            a, json_pack("{s:I, s:s, s:I, s:{s:I, s:I, s:I, s:s, s:I}, s:I, s:I, s:I, s:I, s:s,"
                                         " s:{s:b, s:b, s:b}, s:b, s:I}",
                                         "id", (json_int_t)n->id, "name", n->name, "owner", (json_int_t)n->owner,
                                         "geometry",
                                         "layers", (json_int_t)(g ? g->layers : 0),
                                         "kv_heads", (json_int_t)(g ? g->kv_heads : 0),
                                         "head_dim", (json_int_t)(g ? g->head_dim : 0),
                                         "dtype", ctl_dtype_name(g ? (uint32_t)g->dtype : 0),
                                         "block_tokens", (json_int_t)(g ? g->block_tokens : 0),
                                         "block_bytes", ctl_ji(n->block_bytes), "blocks", ctl_ji(n->blocks),
                                         "host_blocks", ctl_ji(n->host_blocks), "ssd_blocks", ctl_ji(n->ssd_blocks),
                                         "fingerprint", fp,
                                         "access", "read", (int)(n->rights & 1) != 0, "write",
                                         (int)(n->rights & 2) != 0, "owner", (int)(n->rights & 4) != 0,
                                         "dropped", (int)n->dropped, "holders", (json_int_t)n->sessions)) < 0) {
                        json_decref(a);
                        a = NULL;
                }
        }
        ret = ctl_print_json(json_pack("{s:o*}", "namespaces", a));
out:
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

/* ---- evict ------------------------------------------------------------- */

/* The namespace NAME (or an id) means, among those ListNamespaces gave:
 * of --owner, else the caller's own, else the only one of that name. */
static const Kvdrive__NamespaceInfo *find_ns(const struct ctl *ctl, const Kvdrive__ListNamespacesReply *lr,
                                             const char *what)
{
        const Kvdrive__NamespaceInfo *found = NULL, *own = NULL;
        unsigned matches = 0;
        uid_t me = getuid();
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(what, &end, 10);
        for (size_t i = 0; i < lr->n_namespaces; i++) {
                const Kvdrive__NamespaceInfo *n = lr->namespaces[i];

                if (!errno && *what && !*end) {
                        if (n->id == v)
                                return n;
                        continue;
                }
                if (strcmp(n->name, what) != 0 || n->dropped)
                        continue;
                if (ctl->owner && strtoul(ctl->owner, NULL, 10) != n->owner)
                        continue;
                if (n->owner == me)
                        own = n;
                found = n;
                matches++;
        }
        if (own && !ctl->owner)
                return own;
        if (matches == 1)
                return found;
        if (matches > 1)
                fprintf(stderr, "kvdrivectl: %u namespaces are named '%s': say whose with --owner UID, or give "
                        "its id (kvdrivectl namespaces)\n", matches, what);
        else
                fprintf(stderr, "kvdrivectl: no namespace '%s'%s%s (that you can see)\n", what,
                        ctl->owner ? " of uid " : "", ctl->owner ? ctl->owner : "");
        return NULL;
}

int cmd_evict(struct ctl *ctl)
{
        Kvdrive__Evict ev = KVDRIVE__EVICT__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *lr = NULL, *r = NULL;
        const Kvdrive__NamespaceInfo *n;
        const Kvdrive__EvictReply *er;
        const char *tier = ctl->tier ? ctl->tier : "host";
        kvc_client *c = NULL;
        int ret;

        if (!ctl->ns) {
                fprintf(stderr, "kvdrivectl: evict needs --namespace NAME|ID\n");
                return CTL_EXIT_USAGE;
        }
        if (strcmp(tier, "host") != 0 && strcmp(tier, "ssd") != 0) {
                fprintf(stderr, "kvdrivectl: --tier %s: host or ssd\n", tier);
                return CTL_EXIT_USAGE;
        }
        ret = list_namespaces(ctl, &c, &lr);
        if (ret != CTL_EXIT_OK)
                goto out;
        n = find_ns(ctl, lr->list_namespaces, ctl->ns);
        if (!n) {
                ret = ctl_fail(ctl, "evict", -ENOENT, "no such namespace");
                goto out;
        }
        ev.ns_id = n->id;
        ev.tier = strcmp(tier, "ssd") == 0 ? KVDRIVE__TIER_KIND__TIER_SSD : KVDRIVE__TIER_KIND__TIER_HOST;
        req.body_case = KVDRIVE__REQUEST__BODY_EVICT;
        req.evict = &ev;
        ret = call(ctl, &c, &req, KVDRIVE__RESPONSE__BODY_EVICT, "evict", &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        er = r->evict;
        if (ctl->json) {
                ret = ctl_print_json(json_pack("{s:I, s:s, s:I, s:s, s:I, s:I, s:I, s:I}", "id", (json_int_t)n->id,
                                               "namespace", n->name, "owner", (json_int_t)n->owner, "tier", tier,
                                               "freed", ctl_ji(er->freed), "demoting", ctl_ji(er->demoting),
                                               "dropped", ctl_ji(er->dropped), "busy", ctl_ji(er->busy)));
                goto out;
        }
        printf("evicted namespace %" PRIu32 " '%s' of uid %" PRIu32 " from %s:\n", n->id, n->name, n->owner, tier);
        if (ev.tier == KVDRIVE__TIER_KIND__TIER_HOST) {
                printf("  %" PRIu64 " clean copies freed (their SSD copies stay)\n", er->freed);
                printf("  %" PRIu64 " dirty copies being demoted to SSD (freed once written)\n", er->demoting);
                printf("  %" PRIu64 " blocks dropped (dirty, and no SSD tier took them)\n", er->dropped);
        } else {
                printf("  %" PRIu64 " SSD copies freed (their host copies stay, dirty again)\n", er->freed);
                printf("  %" PRIu64 " blocks dropped (no host copy)\n", er->dropped);
        }
        if (er->busy)
                printf("  %" PRIu64 " copies in use left in place (evict again later)\n", er->busy);
out:
        if (lr)
                kvdrive__response__free_unpacked(lr, NULL);
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

/* ---- flush, config, shutdown ------------------------------------------- */

int cmd_flush(struct ctl *ctl)
{
        Kvdrive__Flush fl = KVDRIVE__FLUSH__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        kvc_client *c = NULL;
        int ret;

        req.body_case = KVDRIVE__REQUEST__BODY_FLUSH;
        req.flush = &fl;
        ret = call(ctl, &c, &req, KVDRIVE__RESPONSE__BODY_FLUSH, "flush", &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        if (ctl->json)
                ret = ctl_print_json(json_pack("{s:I, s:b}", "started", ctl_ji(r->flush->started), "have_ssd",
                                               (int)r->flush->have_ssd));
        else if (!r->flush->have_ssd)
                printf("no SSD tier: nothing to flush to\n");
        else
                printf("%" PRIu64 " host-only blocks being written to SSD (as far as it has free space)\n",
                       r->flush->started);
out:
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

int cmd_config(struct ctl *ctl)
{
        Kvdrive__GetConfig gc = KVDRIVE__GET_CONFIG__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        const Kvdrive__GetConfigReply *gr;
        kvc_client *c = NULL;
        json_t *o;
        int ret;

        req.body_case = KVDRIVE__REQUEST__BODY_GET_CONFIG;
        req.get_config = &gc;
        ret = call(ctl, &c, &req, KVDRIVE__RESPONSE__BODY_GET_CONFIG, "config", &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        gr = r->get_config;
        if (!ctl->json) {
                printf("# config file: %s\n", *gr->config_file ? gr->config_file : "(none)");
                printf("%-28s %-14s %s\n", "OPTION", "SOURCE", "VALUE");
                for (size_t i = 0; i < gr->n_options; i++)
                        printf("%-28s %-14s %s\n", gr->options[i]->name, gr->options[i]->source,
                               gr->options[i]->value);
                goto out;
        }
        o = json_object();
        for (size_t i = 0; o && i < gr->n_options; i++)
                if (json_object_set_new(o, gr->options[i]->name,
                                        json_pack("{s:s, s:s}", "value", gr->options[i]->value, "source",
                                                  gr->options[i]->source)) < 0) {
                        json_decref(o);
                        o = NULL;
                }
        ret = ctl_print_json(json_pack("{s:s, s:o*}", "config_file", gr->config_file, "options", o));
out:
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

/* After the reply: the daemon closes every session once it stops serving. */
static bool wait_closed(kvc_client *c, int timeout_ms)
{
        struct pollfd pfd = { .fd = kvc_fd(c), .events = POLLIN };
        uint8_t buf[256];

        for (;;) {
                int r = poll(&pfd, 1, timeout_ms);

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return false;
                if (recv(pfd.fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
                        return true;
        }
}

int cmd_shutdown(struct ctl *ctl)
{
        Kvdrive__Shutdown sd = KVDRIVE__SHUTDOWN__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        kvc_client *c = NULL;
        bool closed;
        int ret;

        req.body_case = KVDRIVE__REQUEST__BODY_SHUTDOWN;
        req.shutdown = &sd;
        ret = call(ctl, &c, &req, KVDRIVE__RESPONSE__BODY_SHUTDOWN, "shutdown", &r);
        if (ret != CTL_EXIT_OK)
                goto out;
        closed = wait_closed(c, 10000);
        if (ctl->json)
                ret = ctl_print_json(json_pack("{s:I, s:b}", "pid", (json_int_t)r->shutdown->pid, "closed",
                                               (int)closed));
        else
                printf("kvdrived (pid %" PRIu32 ") is stopping%s\n", r->shutdown->pid,
                       closed ? ": it stopped serving, and writes dirty blocks back to SSD before it exits" : "");
out:
        if (r)
                kvdrive__response__free_unpacked(r, NULL);
        kvc_disconnect(c);
        return ret;
}

/* ---- top --------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
        (void)sig;
        interrupted = 1;
}

static double per_s(uint64_t now, uint64_t then, double dt)
{
        return now >= then && dt > 0 ? (double)(now - then) / dt : 0.0;
}

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const struct kvc_tier_stats *tier_of(const struct kvc_stats *s, const char *name)
{
        for (uint32_t i = 0; i < s->n_tiers; i++)
                if (strcmp(s->tiers[i].name, name) == 0)
                        return &s->tiers[i];
        return NULL;
}

/* One sample of top: rates between a and b, dt seconds apart. */
static int top_sample(const struct ctl *ctl, const struct kvc_stats *a, const struct kvc_stats *b, double dt,
                      long n)
{
        char b1[32], b2[32];
        json_t *tiers;

        if (!ctl->json) {
                printf("\n-- sample %ld, %.2f s: %" PRIu32 " clients, %.0f requests/s, %.0f errors/s\n", n, dt,
                       b->clients, per_s(b->requests, a->requests, dt), per_s(b->errors, a->errors, dt));
                printf("%-8s %12s %12s %12s %12s %10s %12s %12s\n", "LINK", "IN/s", "OUT/s", "BLOCKS_IN/s",
                       "BLOCKS_OUT/s", "", "", "");
                printf("%-8s %10s/s %10s/s %12.0f %12.0f\n", "client",
                       ctl_format_bytes(b1, sizeof(b1), (uint64_t)per_s(b->bytes_in, a->bytes_in, dt)),
                       ctl_format_bytes(b2, sizeof(b2), (uint64_t)per_s(b->bytes_out, a->bytes_out, dt)),
                       per_s(b->puts, a->puts, dt), per_s(b->gets, a->gets, dt));
                printf("%-8s %12s %12s %12s %12s %10s %12s %12s\n", "TIER", "HITS/s", "MISSES/s", "EVICT/s",
                       "BLOCKS", "USED", "READ/s", "WRITE/s");
        }
        tiers = json_object();
        for (uint32_t i = 0; i < b->n_tiers; i++) {
                const struct kvc_tier_stats *t = &b->tiers[i], *p = tier_of(a, t->name);
                struct kvc_tier_stats zero = { 0 };

                if (!p)
                        p = &zero;
                if (!ctl->json) {
                        char b3[32], b4[32], b5[32];

                        printf("%-8s %12.0f %12.0f %12.0f %12" PRIu64 " %10s %10s/s %10s/s\n", t->name,
                               per_s(t->hits, p->hits, dt), per_s(t->misses, p->misses, dt),
                               per_s(t->evictions, p->evictions, dt), t->blocks,
                               ctl_format_bytes(b3, sizeof(b3), t->used_bytes),
                               ctl_format_bytes(b4, sizeof(b4), (uint64_t)per_s(t->read_bytes, p->read_bytes, dt)),
                               ctl_format_bytes(b5, sizeof(b5), (uint64_t)per_s(t->write_bytes, p->write_bytes, dt)));
                } else if (tiers && json_object_set_new(
                                            tiers, t->name,
                                            json_pack("{s:f, s:f, s:f, s:I, s:I, s:f, s:f}",
                                                      "hits_per_s", per_s(t->hits, p->hits, dt),
                                                      "misses_per_s", per_s(t->misses, p->misses, dt),
                                                      "evictions_per_s", per_s(t->evictions, p->evictions, dt),
                                                      "blocks", ctl_ji(t->blocks), "used_bytes", ctl_ji(t->used_bytes),
                                                      "read_bytes_per_s", per_s(t->read_bytes, p->read_bytes, dt),
                                                      "write_bytes_per_s",
                                                      per_s(t->write_bytes, p->write_bytes, dt))) < 0) {
                        json_decref(tiers);
                        tiers = NULL;
                }
        }
        if (!ctl->json) {
                json_decref(tiers);
                fflush(stdout);
                return CTL_EXIT_OK;
        }
        /* One JSON document a line (JSON Lines), for scripts that follow it. */
        {
                json_t *j = json_pack("{s:I, s:f, s:I, s:f, s:f, s:{s:f, s:f, s:f, s:f}, s:o*}",
                                      "sample", (json_int_t)n, "interval_s", dt, "clients", (json_int_t)b->clients,
                                      "requests_per_s", per_s(b->requests, a->requests, dt),
                                      "errors_per_s", per_s(b->errors, a->errors, dt),
                                      "client",
                                      "bytes_in_per_s", per_s(b->bytes_in, a->bytes_in, dt),
                                      "bytes_out_per_s", per_s(b->bytes_out, a->bytes_out, dt),
                                      "puts_per_s", per_s(b->puts, a->puts, dt),
                                      "gets_per_s", per_s(b->gets, a->gets, dt),
                                      "tiers", tiers);

                if (!j || json_dumpf(j, stdout, JSON_COMPACT) < 0 || putchar('\n') == EOF || fflush(stdout) == EOF) {
                        json_decref(j);
                        fprintf(stderr, "kvdrivectl: cannot write the JSON output\n");
                        return CTL_EXIT_FAILED;
                }
                json_decref(j);
        }
        return CTL_EXIT_OK;
}

int cmd_top(struct ctl *ctl)
{
        struct sigaction sa = { .sa_handler = on_interrupt };
        struct kvc_stats *prev = NULL, *cur = NULL;
        kvc_client *c = NULL;
        double t_prev, t_cur;
        int err, ret = CTL_EXIT_OK;

        if (ctl->count < 0) {
                fprintf(stderr, "kvdrivectl: --count must be >= 0\n");
                return CTL_EXIT_USAGE;
        }
        /* Interrupted, top ends its last line and exits 0. */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        if (ctl_connect(ctl, &c) < 0)
                return CTL_EXIT_FAILED;
        err = kvc_stats_get(c, &prev);
        t_prev = now_s();
        for (long n = 1; err == 0 && !interrupted && (ctl->count == 0 || n <= ctl->count); n++) {
                struct timespec ts = { 1, 0 };

                while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !interrupted)
                        ;
                if (interrupted)
                        break;
                err = kvc_stats_get(c, &cur);
                if (err < 0)
                        break;
                t_cur = now_s();
                ret = top_sample(ctl, prev, cur, t_cur - t_prev, n);
                kvc_stats_free(prev);
                prev = cur;
                cur = NULL;
                t_prev = t_cur;
                if (ret != CTL_EXIT_OK)
                        break;
        }
        if (err < 0)
                ret = ctl_fail(ctl, "top", err, kvc_last_error(c));
        kvc_stats_free(prev);
        kvc_stats_free(cur);
        kvc_disconnect(c);
        return ret;
}

/* ---- status --json ----------------------------------------------------- */

int ctl_status_json(struct ctl *ctl, const struct kvc_stats *s)
{
        json_t *tiers = json_object();

        (void)ctl;
        for (uint32_t i = 0; tiers && i < s->n_tiers; i++) {
                const struct kvc_tier_stats *t = &s->tiers[i];

                if (json_object_set_new(tiers, t->name,
                                        json_pack("{s:I, s:I, s:I}", "capacity_bytes", ctl_ji(t->capacity_bytes),
                                                  "used_bytes", ctl_ji(t->used_bytes), "blocks",
                                                  ctl_ji(t->blocks))) < 0) {
                        json_decref(tiers);
                        tiers = NULL;
                }
        }
        return ctl_print_json(json_pack("{s:b, s:s, s:I, s:I, s:{s:I, s:I}, s:s, s:s, s:{s:I, s:I}, s:o*}",
                                        "up", 1, "version", s->daemon_version, "pid", (json_int_t)s->pid,
                                        "uptime_ms", ctl_ji(s->uptime_ms),
                                        "clients", "connected", (json_int_t)s->clients,
                                        "total", ctl_ji(s->clients_total),
                                        "device_backends", s->device_backends, "cuda", s->cuda,
                                        "pools", "memfd", (json_int_t)s->pools_memfd, "cuda",
                                        (json_int_t)s->pools_cuda,
                                        "tiers", tiers));
}

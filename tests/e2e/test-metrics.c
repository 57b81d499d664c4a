/* SPDX-License-Identifier: MIT */
/*
 * The Prometheus endpoint against a live daemon with an SSD tier: a real
 * scrape after Puts and Gets agrees with kvc_stats_get() and passes
 * `promtool check metrics`; other paths are 404; a port in use stops the
 * daemon at start. And `kvdrivectl stats --json` holds every key that
 * docs/stats-json.md lists, with the types it gives them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "check-main.h"
#include "common.h"
#include "remote-common.h"
#include "ssd-common.h"

#define PROMTOOL "/usr/bin/promtool"
#define HTTP_TIMEOUT_MS 10000
#define NBLK 24u
#define SSD_ARGS(dir) "--host-bytes", "16M", "--ssd-dir", (dir), "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M"

static struct kvc_key new_seq(void)
{
        struct kvc_key seq;

        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        return seq;
}

/* A daemon with an SSD tier and the endpoint on a port the kernel picks,
 * read back from its log. */
static uint16_t start_with_metrics(struct kvd_test_daemon *d, const char *ssd_dir)
{
        const struct kvd_test_opts opts = { .log_file = true };
        const char *const args[] = { SSD_ARGS(ssd_dir), "--metrics-listen", "127.0.0.1:0", NULL };
        int rc = kvd_test_daemon_start_opts(d, &opts, args);
        char *log, *p;
        unsigned port = 0;

        ck_assert_msg(rc == 0, "daemon start: %s", d->error);
        /* Logged before READY=1, so it is in the file by now. */
        log = ssd_daemon_log(d);
        p = strstr(log, "metrics on http://127.0.0.1:");
        ck_assert_msg(p && sscanf(p, "metrics on http://127.0.0.1:%u/metrics", &port) == 1 && port > 0 &&
                      port < 65536, "no metrics port in the log: %s", log);
        free(log);
        return (uint16_t)port;
}

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* GET path over a plain socket, HTTP/1.0 (the server closes when done):
 * the status code, and the whole response (headers and body) in *ret. */
static int http_get(uint16_t port, const char *path, char **ret)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
        int64_t deadline = now_ms() + HTTP_TIMEOUT_MS;
        char req[256], *buf = NULL;
        size_t n = 0, cap = 0;
        int fd, code = -1;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect to port %u: %s",
                      (unsigned)port, strerror(errno));
        snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
        ck_assert_int_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int64_t left = deadline - now_ms();
                ssize_t got;

                ck_assert_msg(left > 0, "no complete answer to GET %s within %d ms", path, HTTP_TIMEOUT_MS);
                if (poll(&pfd, 1, (int)left) <= 0)
                        continue;
                if (cap - n < 4096) {
                        cap = cap ? 2 * cap : 65536;
                        buf = realloc(buf, cap);
                        ck_assert_ptr_nonnull(buf);
                }
                got = recv(fd, buf + n, cap - n - 1, 0);
                ck_assert_int_ge(got, 0);
                if (got == 0)
                        break;
                n += (size_t)got;
        }
        close(fd);
        buf[n] = '\0';
        ck_assert_msg(sscanf(buf, "HTTP/1.%*d %d", &code) == 1, "not an HTTP answer: %.200s", buf);
        *ret = buf;
        return code;
}

/* The value of the sample `series` (name with its labels, as printed) in a
 * text exposition page; fails the test if absent. */
static double sample(const char *page, const char *series)
{
        size_t len = strlen(series);

        for (const char *p = page; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                if (strncmp(p, series, len) == 0 && p[len] == ' ')
                        return strtod(p + len + 1, NULL);
        }
        ck_abort_msg("no sample %s in the scrape", series);
        return 0;
}

static const char *body_of(const char *resp)
{
        const char *b = strstr(resp, "\r\n\r\n");

        ck_assert_ptr_nonnull(b);
        return b + 4;
}

/* Every family of a scrape is in docs/metrics.md (next to stats-json.md). */
static void assert_documented(const char *page)
{
        char path[512], *doc = NULL;
        size_t cap = 0;
        const char *slash = strrchr(E2E_STATS_JSON_DOC, '/');
        FILE *f;

        snprintf(path, sizeof(path), "%.*s/metrics.md", (int)(slash - E2E_STATS_JSON_DOC), E2E_STATS_JSON_DOC);
        f = fopen(path, "re");
        ck_assert_msg(f, "cannot open %s", path);
        ck_assert_int_gt(getdelim(&doc, &cap, '\0', f), 0);
        fclose(f);
        for (const char *p = strstr(page, "# TYPE "); p; p = strstr(p + 1, "# TYPE ")) {
                char want[160];
                size_t n = strcspn(p + 7, " ");

                snprintf(want, sizeof(want), "| `%.*s` |", (int)n, p + 7);
                ck_assert_msg(strstr(doc, want), "family %.*s is not in %s", (int)n, p + 7, path);
        }
        free(doc);
}

/* promtool on a real scrape: no error, no lint complaint. */
static void promtool_check(const struct kvd_test_daemon *d, const char *page)
{
        char path[256], *out = NULL, why[64];
        const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\" 2>&1", PROMTOOL, path, NULL };
        FILE *f;
        int ws;

        ck_assert_int_eq(kvd_test_daemon_path(d, "scrape.prom", path, sizeof(path)), 0);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(page, f), 0);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_int_eq(kvd_test_run_capture(argv, 30000, &out, &ws), 0);
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0 && out[strspn(out, " \n")] == '\0',
                      "promtool check metrics: %s: %s", kvd_test_status_str(ws, why, sizeof(why)), out);
        free(out);
}

START_TEST(test_scrape)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = new_seq();
        struct kvc_stats *st = NULL;
        struct kvc_block_ref ref;
        uint8_t status;
        char *resp, *nf, series[128];
        const char *page;
        uint16_t port;
        struct ssd_got got;

        ssd_dir_make(&dir);
        port = start_with_metrics(&d, dir.path);
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, NBLK, 0, 1), (int)NBLK);
        got = ssd_get(&sc, &seq, 0, NBLK, 1);
        ck_assert_uint_eq(got.ok, NBLK);
        /* One Get of a namespace the client never joined: an Error. */
        ssd_ref(&seq, 0, 0, &ref);
        ck_assert_int_lt(kvc_get(sc.c, sc.ns + 1000, sc.p, &ref, 1, &status), 0);
        E2E_ASSERT_RC(sc.c, kvc_stats_get(sc.c, &st), 0);

        ck_assert_int_eq(http_get(port, "/metrics", &resp), 200);
        ck_assert_msg(strstr(resp, "text/plain; version=0.0.4"), "content type: %.300s", resp);
        page = body_of(resp);
        ck_assert_msg(strstr(page, "kvdrive_build_info{version=\"" "0." ), "no build info");
        ck_assert_double_eq(sample(page, "kvdrive_tier_blocks{tier=\"host\"}"), (double)st->tiers[0].blocks);
        ck_assert_double_eq(sample(page, "kvdrive_tier_capacity_bytes{tier=\"host\"}"),
                            (double)st->tiers[0].capacity_bytes);
        ck_assert_uint_eq(st->n_tiers, 2);
        ck_assert_str_eq(st->tiers[1].name, "ssd");
        ck_assert_double_eq(sample(page, "kvdrive_tier_capacity_bytes{tier=\"ssd\"}"),
                            (double)st->tiers[1].capacity_bytes);
        ck_assert_double_eq(sample(page, "kvdrive_tier_writes_total{tier=\"ssd\"}"), (double)st->tiers[1].writes);
        /* Each SSD write in the I/O-duration histogram. */
        ck_assert_double_eq(sample(page, "kvdrive_ssd_io_duration_seconds_count{op=\"write\"}"),
                            (double)st->tiers[1].writes);
        ck_assert_double_eq(sample(page, "kvdrive_transfer_bytes_total{direction=\"in\"}"), (double)st->bytes_in);
        ck_assert_double_eq(sample(page, "kvdrive_transfer_bytes_total{direction=\"out\"}"), (double)st->bytes_out);
        ck_assert_double_eq(sample(page, "kvdrive_transfer_bytes_total{direction=\"in\"}"),
                            (double)NBLK * E2E_BLOCK_BYTES);
        ck_assert_double_eq(sample(page, "kvdrive_put_blocks_total"), (double)NBLK);
        /* One copy per block put, each in the copy-duration histogram. */
        ck_assert_double_eq(sample(page, "kvdrive_transfer_copy_duration_seconds_count{direction=\"in\"}"),
                            (double)NBLK);
        ck_assert_double_eq(sample(page, "kvdrive_get_blocks_total"), (double)st->gets);
        ck_assert_double_eq(sample(page, "kvdrive_clients_connected"), 1);
        ck_assert_double_eq(sample(page, "kvdrive_clients_accepted_total"), (double)st->clients_total);
        ck_assert_double_eq(sample(page, "kvdrive_transfer_workers"), (double)st->workers);
        /* The Stats request came after the others: each was counted once. */
        ck_assert_double_eq(sample(page, "kvdrive_requests_total{type=\"stats\"}"), 1);
        ck_assert_double_ge(sample(page, "kvdrive_requests_total{type=\"put\"}"), 1);
        ck_assert_double_ge(sample(page, "kvdrive_requests_total{type=\"get\"}"), 2);
        ck_assert_double_eq(sample(page, "kvdrive_request_errors_total{code=\"E_NO_NAMESPACE\"}"), 1);
        ck_assert_double_eq(sample(page, "kvdrive_requests_total{type=\"undecodable\"}"), 0);
        ck_assert_uint_ge(st->n_tenants, 1);
        snprintf(series, sizeof(series), "kvdrive_tenant_host_bytes{uid=\"%u\"}", (unsigned)st->tenants[0].uid);
        ck_assert_double_eq(sample(page, series), (double)st->tenants[0].host_bytes);
        ck_assert_double_ge(sample(page, "kvdrive_loop_turn_seconds_count"), (double)st->loop_turns);
        ck_assert_double_eq(sample(page, "kvdrive_loop_turn_seconds_bucket{le=\"+Inf\"}"),
                            sample(page, "kvdrive_loop_turn_seconds_count"));

        promtool_check(&d, page);
        assert_documented(page);

        /* Anything else: 404. */
        ck_assert_int_eq(http_get(port, "/", &nf), 404);
        free(nf);
        ck_assert_int_eq(http_get(port, "/metrics/x", &nf), 404);
        free(nf);

        /* MHD had nothing to complain about. */
        {
                char *log = ssd_daemon_log(&d);

                ck_assert_msg(!strstr(log, "metrics: "), "the endpoint warned: %s", log);
                free(log);
        }
        free(resp);
        kvc_stats_free(st);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* With a remote tier: its per-node families, the latency histogram
 * included, pass promtool too. */
START_TEST(test_scrape_remote)
{
        struct e2e_cluster cl;
        struct kvd_test_daemon d;
        char why[512], remote[300], *resp, *log, *p;
        const struct kvd_test_opts opts = { .log_file = true };
        unsigned port = 0;
        const char *page;
        int rc, nodes = 0;

        if (access("/usr/bin/redis-server", X_OK) != 0)
                return; /* no Redis here: the remote families go untested */
        rc = e2e_cluster_start(&cl, 3, why, sizeof(why));
        ck_assert_msg(rc == 0, "cluster: %s", why);
        snprintf(remote, sizeof(remote), "--remote=redis-cluster://%s", cl.seeds);
        {
                const char *const args[] = { remote, "--metrics-listen", "127.0.0.1:0", NULL };

                rc = kvd_test_daemon_start_opts(&d, &opts, args);
                ck_assert_msg(rc == 0, "daemon start: %s", d.error);
        }
        log = ssd_daemon_log(&d);
        p = strstr(log, "metrics on http://127.0.0.1:");
        ck_assert_msg(p && sscanf(p, "metrics on http://127.0.0.1:%u/metrics", &port) == 1, "log: %s", log);
        free(log);
        /* The nodes appear once the slot map came: scrape until then. */
        for (int64_t end = e2e_now_ms() + E2E_WAIT_MS;;) {
                ck_assert_int_eq(http_get((uint16_t)port, "/metrics", &resp), 200);
                page = body_of(resp);
                nodes = 0;
                for (p = strstr(page, "\nkvdrive_remote_node_up{"); p; p = strstr(p + 1, "\nkvdrive_remote_node_up{"))
                        nodes++;
                if (nodes == 3 || e2e_now_ms() > end)
                        break;
                free(resp);
                usleep(20 * 1000);
        }
        ck_assert_int_eq(nodes, 3);
        ck_assert_msg(strstr(page, "kvdrive_remote_node_request_duration_seconds_bucket{node=\"127.0.0.1:"),
                      "no latency histogram");
        ck_assert_double_eq(sample(page, "kvdrive_tier_hits_total{tier=\"remote\"}"), 0);
        promtool_check(&d, page);
        assert_documented(page);
        free(resp);
        E2E_STOP(&d);
        e2e_cluster_stop(&cl);
}
END_TEST

/* A port another socket holds: the daemon says so and does not start. */
START_TEST(test_port_in_use)
{
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t sl = sizeof(sa);
        struct kvd_test_daemon d;
        char listen_arg[64], why[64], *out = NULL;
        int fd, ws;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(fd, 1), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        snprintf(listen_arg, sizeof(listen_arg), "--metrics-listen=127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
        ck_assert_msg(kvd_test_daemon_prepare(&d) == 0, "%s", d.error);
        {
                const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", getenv("KVDRIVED"), "--foreground",
                                       "--socket", d.socket_path, "--host-bytes", "16M", listen_arg, NULL };

                ck_assert_int_eq(kvd_test_run_capture(argv, 15000, &out, &ws), 0);
        }
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "kvdrived %s, said: %s",
                      kvd_test_status_str(ws, why, sizeof(why)), out);
        ck_assert_msg(strstr(out, "cannot listen for metrics") && strstr(out, "Address already in use"),
                      "no clear reason: %s", out);
        free(out);
        /* And a bad address is refused too. */
        {
                const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", getenv("KVDRIVED"), "--foreground",
                                       "--socket", d.socket_path, "--host-bytes", "16M",
                                       "--metrics-listen=localhost", NULL };

                ck_assert_int_eq(kvd_test_run_capture(argv, 15000, &out, &ws), 0);
        }
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 1 && strstr(out, "metrics-listen 'localhost'"),
                      "kvdrived %s, said: %s", kvd_test_status_str(ws, why, sizeof(why)), out);
        free(out);
        close(fd);
        ck_assert_int_eq(kvd_test_daemon_stop(&d), 0);
}
END_TEST

/* ---- stats --json against docs/stats-json.md ------------------------- */

/* The numbers the doc allows to be fractions; every other must be an integer. */
static const char *const fraction_keys[] = { "scheduler.device_busy", "scheduler.ssd_busy",
                                             "scheduler.host_hit_rate" };

struct doc_keys {
        char **v;
        size_t n;
};

static void doc_keys_add(struct doc_keys *k, const char *key)
{
        k->v = realloc(k->v, (k->n + 1) * sizeof(*k->v));
        ck_assert_ptr_nonnull(k->v);
        k->v[k->n] = strdup(key);
        ck_assert_ptr_nonnull(k->v[k->n]);
        k->n++;
}

/*
 * Every key the doc's tables name, as paths from the root: the "Keys" table
 * gives whole paths ("`tenants[].host_bytes`, `ssd_bytes`": the later ones
 * in a cell share the first one's parent), the ssd, placement and scheduler
 * tables keys of tiers.ssd, placement and scheduler. The remote tier's
 * section is skipped (a daemon without a remote tier has no such key).
 */
static struct doc_keys doc_keys_read(const char *path)
{
        struct doc_keys k = { 0 };
        char line[4096], prefix[64] = "";
        bool in_table = false;
        FILE *f = fopen(path, "re");

        ck_assert_msg(f, "cannot open %s", path);
        while (fgets(line, sizeof(line), f)) {
                char first_parent[128] = "", *p, *cell_end;
                bool first = true;

                if (strncmp(line, "## ", 3) == 0) {
                        in_table = true;
                        if (strstr(line, "## Keys"))
                                snprintf(prefix, sizeof(prefix), "%s", "");
                        else if (strstr(line, "`ssd` tier"))
                                snprintf(prefix, sizeof(prefix), "%s", "tiers.ssd.");
                        else if (strstr(line, "## `placement`"))
                                snprintf(prefix, sizeof(prefix), "%s", "placement.");
                        else if (strstr(line, "## `scheduler`"))
                                snprintf(prefix, sizeof(prefix), "%s", "scheduler.");
                        else
                                in_table = false;       /* the remote tier, exit status */
                        continue;
                }
                if (!in_table || strncmp(line, "| `", 3) != 0)
                        continue;
                cell_end = strchr(line + 1, '|');
                ck_assert_ptr_nonnull(cell_end);
                *cell_end = '\0';
                for (p = strchr(line, '`'); p; p = strchr(p, '`')) {
                        char *end = strchr(p + 1, '`'), key[192];
                        const char *dot;

                        ck_assert_ptr_nonnull(end);
                        *end = '\0';
                        if (first || strchr(p + 1, '.'))
                                snprintf(key, sizeof(key), "%s%s", prefix, p + 1);
                        else
                                snprintf(key, sizeof(key), "%s%s", first_parent, p + 1);
                        if (first) {
                                dot = strrchr(key, '.');
                                snprintf(first_parent, sizeof(first_parent), "%.*s", dot ? (int)(dot - key + 1) : 0,
                                         key);
                                first = false;
                        }
                        if (strcmp(key, "remote") != 0)
                                doc_keys_add(&k, key);
                        p = end + 1;
                }
        }
        fclose(f);
        ck_assert_msg(k.n > 60, "only %zu keys found in %s: has its layout changed?", k.n, path);
        return k;
}

static void doc_keys_free(struct doc_keys *k)
{
        for (size_t i = 0; i < k->n; i++)
                free(k->v[i]);
        free(k->v);
}

/* Whether path (a.b, x[].y, tiers.<name>.z, q.*) holds in v: every array
 * element and every tier must have the rest. Says what is missing. */
static bool json_has(json_t *v, const char *path, char *why, size_t size)
{
        char seg[64];
        size_t n = strcspn(path, ".");
        const char *rest = path[n] ? path + n + 1 : NULL;

        snprintf(seg, sizeof(seg), "%.*s", (int)n, path);
        if (strcmp(seg, "*") == 0) {
                if (!json_is_object(v) || json_object_size(v) == 0)
                        return snprintf(why, size, "'*': not a non-empty object"), false;
                return true;
        }
        if (strcmp(seg, "<name>") == 0) {
                const char *name;
                json_t *x;

                if (!json_is_object(v) || json_object_size(v) == 0)
                        return snprintf(why, size, "<name>: no tiers"), false;
                json_object_foreach(v, name, x)
                        if (!rest || !json_has(x, rest, why, size))
                                return false;
                return true;
        }
        if (n > 2 && strcmp(seg + n - 2, "[]") == 0) {
                json_t *a, *x;
                size_t i;

                seg[n - 2] = '\0';
                a = json_object_get(v, seg);
                if (!json_is_array(a) || json_array_size(a) == 0)
                        return snprintf(why, size, "%s: not a non-empty array", seg), false;
                json_array_foreach(a, i, x)
                        if (rest && !json_has(x, rest, why, size))
                                return false;
                return true;
        }
        v = json_object_get(v, seg);
        if (!v || json_is_null(v))
                return snprintf(why, size, "no key '%s'", seg), false;
        return rest ? json_has(v, rest, why, size) : true;
}

/* Every real number in v must be one the doc allows as a fraction. */
static void assert_integers(json_t *v, const char *path)
{
        char sub[256];

        if (json_is_real(v)) {
                bool allowed = false;

                for (size_t i = 0; i < sizeof(fraction_keys) / sizeof(fraction_keys[0]); i++)
                        allowed |= strcmp(path, fraction_keys[i]) == 0;
                ck_assert_msg(allowed, "%s is a fraction (%g): the doc says integers only", path, json_real_value(v));
                ck_assert_msg(json_real_value(v) >= 0 && json_real_value(v) <= 1, "%s = %g is not in [0, 1]", path,
                              json_real_value(v));
        } else if (json_is_object(v)) {
                const char *key;
                json_t *x;

                json_object_foreach(v, key, x) {
                        snprintf(sub, sizeof(sub), "%s%s%s", path, *path ? "." : "", key);
                        assert_integers(x, sub);
                }
        } else if (json_is_array(v)) {
                size_t i;
                json_t *x;

                snprintf(sub, sizeof(sub), "%s[]", path);
                json_array_foreach(v, i, x)
                        assert_integers(x, sub);
        }
}

static json_t *stats_json(const char *sock)
{
        const char *argv[] = { getenv("KVDRIVECTL"), "--socket", sock, "stats", "--json", NULL };
        json_error_t jerr;
        char *out = NULL, why[64];
        json_t *root;
        int ws;

        ck_assert_msg(argv[0] && *argv[0], "$KVDRIVECTL is not set (run the tests with meson test)");
        ck_assert_int_eq(kvd_test_run_capture(argv, 20000, &out, &ws), 0);
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "kvdrivectl stats --json: %s",
                      kvd_test_status_str(ws, why, sizeof(why)));
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "stats --json is not JSON (line %d: %s): %s", jerr.line, jerr.text, out);
        free(out);
        return root;
}

START_TEST(test_stats_json_doc)
{
        struct doc_keys keys = doc_keys_read(E2E_STATS_JSON_DOC);
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq = new_seq();
        char why[256];
        json_t *root;

        /* With an SSD tier, after Puts and Gets: namespaces and tenants too. */
        ssd_dir_make(&dir);
        {
                const char *const args[] = { SSD_ARGS(dir.path), NULL };
                int rc = kvd_test_daemon_start(&d, args);

                ck_assert_msg(rc == 0, "daemon start: %s", d.error);
        }
        ssd_client_open(&sc, d.socket_path, 64);
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, NBLK, 0, 1), (int)NBLK);
        ck_assert_uint_eq(ssd_get(&sc, &seq, 0, NBLK, 1).ok, NBLK);
        root = stats_json(d.socket_path);
        for (size_t i = 0; i < keys.n; i++) {
                if (strcmp(keys.v[i], "tiers.host.dropped") == 0) {
                        ck_assert_msg(!json_has(root, keys.v[i], why, sizeof(why)),
                                      "tiers.host.dropped with an SSD tier (the doc: only without one)");
                        continue;
                }
                ck_assert_msg(json_has(root, keys.v[i], why, sizeof(why)), "documented key %s: %s", keys.v[i],
                              why);
        }
        assert_integers(root, "");
        json_decref(root);
        ssd_client_close(&sc);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);

        /* Without one: host.dropped is there, tiers.ssd is not. */
        E2E_START(&d);
        root = stats_json(d.socket_path);
        ck_assert_msg(json_has(root, "tiers.host.dropped", why, sizeof(why)), "no tiers.host.dropped: %s", why);
        ck_assert_msg(json_is_integer(json_object_get(json_object_get(json_object_get(root, "tiers"), "host"),
                                                      "dropped")), "tiers.host.dropped is not an integer");
        ck_assert_msg(!json_has(root, "tiers.ssd", why, sizeof(why)), "tiers.ssd without an SSD tier");
        assert_integers(root, "");
        json_decref(root);
        E2E_STOP(&d);
        doc_keys_free(&keys);
}
END_TEST

static Suite *metrics_suite(void)
{
        Suite *s = suite_create("e2e-metrics");
        TCase *tc = tcase_create("metrics");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_scrape);
        tcase_add_test(tc, test_scrape_remote);
        tcase_add_test(tc, test_port_in_use);
        tcase_add_test(tc, test_stats_json_doc);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN_IF(access(PROMTOOL, X_OK) == 0, "no " PROMTOOL " (Debian package prometheus)", metrics_suite)

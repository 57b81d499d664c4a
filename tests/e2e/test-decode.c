/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode against a live daemon with an SSD tier, on a tiny
 * trace written here (docs/trace-format.md): each policy runs and reports
 * sane JSON (full: exact), and a bad trace is refused with its problem
 * named.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "ssd-common.h"

/* 2 layers, 2 kv heads x 32 dims, 4 query heads, 16-token blocks (4 KiB);
 * 312 tokens: a 304-token prompt (19 blocks) and 8 decode steps. */
#define T_LAYERS 2u
#define T_KV     2u
#define T_Q      4u
#define T_DIM    32u
#define T_TOKENS 312u
#define T_STEPS  8u
#define RUN_TIMEOUT_MS 60000

/* An fp16 bit pattern of magnitude in [0.25, 2) and random sign. */
static uint16_t rand_f16(uint64_t *st)
{
        uint64_t r = e2e_splitmix(st);

        return (uint16_t)(((r & 1) << 15) | ((13 + (r >> 1) % 3) << 10) | ((r >> 8) & 0x3ff));
}

static void write_array(const char *dir, const char *name, size_t n, uint64_t seed)
{
        uint16_t *a = malloc(n * sizeof(*a));
        char path[256];

        ck_assert_ptr_nonnull(a);
        for (size_t i = 0; i < n; i++)
                a[i] = rand_f16(&seed);
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        ck_assert_int_eq(e2e_write_file(path, a, n * sizeof(*a)), 0);
        free(a);
}

/* Writes the tiny trace into dir (created); without q.bin if !with_q. */
static void write_trace(const char *dir, bool with_q)
{
        size_t kv = (size_t)T_LAYERS * T_KV * T_TOKENS * T_DIM, q = (size_t)T_STEPS * T_LAYERS * T_Q * T_DIM;
        char path[256], meta[256];
        int n;

        ck_assert(mkdir(dir, 0755) == 0 || errno == EEXIST);
        n = snprintf(meta, sizeof(meta),
                     "{\"layers\": %u, \"kv_heads\": %u, \"q_heads\": %u, \"head_dim\": %u, \"tokens\": %u, "
                     "\"steps\": %u, \"dtype\": \"f16\"}\n",
                     T_LAYERS, T_KV, T_Q, T_DIM, T_TOKENS, T_STEPS);
        snprintf(path, sizeof(path), "%s/meta.json", dir);
        ck_assert_int_eq(e2e_write_file(path, meta, (size_t)n), 0);
        write_array(dir, "k.bin", kv, 1);
        write_array(dir, "v.bin", kv, 2);
        if (with_q)
                write_array(dir, "q.bin", q, 3);
}


static double jget(json_t *root, const char *a, const char *b)
{
        json_t *v = json_object_get(json_object_get(root, a), b);

        ck_assert_msg(v && json_is_number(v), "no number %s.%s in the JSON", a, b);
        return json_number_value(v);
}

static void run_policy(const char *sock, const char *tmp, const char *trace, const char *policy)
{
        const char *args[] = { "decode", "--socket", sock, "--policy", policy, "--trace", trace, "--accuracy-every",
                               "1", "--compute-us", "50", "--json", NULL };
        char *out, *err;
        json_error_t jerr;
        json_t *root;
        double mass, tps, werr;
        int st = e2e_run_bench(tmp, args, RUN_TIMEOUT_MS, &out, &err);

        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "decode --policy %s: status 0x%x; stderr:\n%s", policy,
                      (unsigned)st, err);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "decode --policy %s printed no JSON (line %d: %s): %s", policy, jerr.line, jerr.text, out);
        mass = jget(root, "accuracy", "mass_recall_mean");
        werr = jget(root, "accuracy", "rel_l2_error_max");
        tps = jget(root, "throughput", "tokens_per_s");
        ck_assert_double_eq(jget(root, "accuracy", "samples"), T_STEPS * T_LAYERS);
        ck_assert_double_eq(jget(root, "throughput", "tokens"), T_STEPS);
        ck_assert_msg(tps > 0, "%s: tokens/s %g", policy, tps);
        if (strcmp(policy, "full") == 0) {
                ck_assert_msg(fabs(mass - 1.0) <= 1e-6, "full: mass recall %.9f, not 1", mass);
                ck_assert_msg(werr < 1e-3, "full: relative L2 error %g", werr);
                ck_assert_double_eq_tol(jget(root, "accuracy", "topk_recall_mean"), 1.0, 1e-9);
        } else {
                ck_assert_msg(mass > 0 && mass <= 1.0, "%s: mass recall %g not in (0, 1]", policy, mass);
                ck_assert_msg(jget(root, "bytes", "host_to_device") > 0, "%s: nothing was fetched", policy);
        }
        json_decref(root);
        free(out);
        free(err);
}

START_TEST(test_policies)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        char trace[200];

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        write_trace(trace, true);
        E2E_START(&d, "--ssd-dir", dir.path, "--ssd-bytes", "64M", );
        run_policy(d.socket_path, dir.path, trace, "full");
        run_policy(d.socket_path, dir.path, trace, "sparse");
        run_policy(d.socket_path, dir.path, trace, "lru");
        run_policy(d.socket_path, dir.path, trace, "kvdrive");
        {
                /* kvdrive reported the blocks it used to the daemon. */
                struct kvc_stats *st = NULL;
                kvc_client *c = NULL;

                ck_assert_int_eq(kvc_connect(d.socket_path, "probe", &c), 0);
                ck_assert_int_eq(kvc_stats_get(c, &st), 0);
                ck_assert_uint_gt(st->scores, 0);
                kvc_stats_free(st);
                kvc_disconnect(c);
        }
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_two_clients_batch)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        char trace[200], *out, *err;
        const char *args[] = { "decode", "--socket", NULL, "--policy", "sparse", "--trace", trace, "--clients", "2",
                               "--seqs", "2", "--json", NULL };
        int st;

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        write_trace(trace, true);
        E2E_START(&d, "--ssd-dir", dir.path, "--ssd-bytes", "64M", );
        args[2] = d.socket_path;
        st = e2e_run_bench(dir.path, args, RUN_TIMEOUT_MS, &out, &err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x; stderr:\n%s", (unsigned)st, err);
        ck_assert_ptr_nonnull(strstr(out, "\"tokens\": 32"));   /* 2 clients x 2 seqs x 8 steps */
        free(out);
        free(err);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static json_t *run_json(const char *tmp, const char **args)
{
        char *out, *err;
        json_error_t jerr;
        json_t *root;
        int st = e2e_run_bench(tmp, args, RUN_TIMEOUT_MS, &out, &err);

        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "decode --policy %s: status 0x%x; stderr:\n%s", args[4],
                      (unsigned)st, err);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "decode --policy %s printed no JSON (line %d: %s): %s", args[4], jerr.line, jerr.text, out);
        free(out);
        free(err);
        return root;
}

static bool device_rate_measured(const struct kvc_stats *s, void *arg)
{
        return s->sched_device_bytes_per_s > 0;
}

/* The kvdrive policy with two client processes of two sequences each:
 * every token decoded, the same blocks chosen as lru (so the same recall),
 * the split attention (hits while the misses land, then the misses) equal
 * to lru's single pass, and the daemon's scheduler and heat fed. */
START_TEST(test_kvdrive_two_clients)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        char trace[200];
        const char *args[] = { "decode", "--socket", NULL, "--policy", "lru", "--trace", trace, "--clients", "2",
                               "--seqs", "2", "--accuracy-every", "1", "--compute-us", "50", "--json", NULL };
        struct kvc_stats *st = NULL;
        kvc_client *c = NULL;
        json_t *lru, *kvd;

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        write_trace(trace, true);
        E2E_START(&d, "--ssd-dir", dir.path, "--ssd-bytes", "64M", );
        args[2] = d.socket_path;
        lru = run_json(dir.path, args);
        args[4] = "kvdrive";
        kvd = run_json(dir.path, args);
        ck_assert_double_eq(jget(kvd, "throughput", "tokens"), 2 * 2 * T_STEPS);
        ck_assert_double_eq(jget(kvd, "accuracy", "samples"), 2 * T_STEPS * T_LAYERS);
        ck_assert_double_eq_tol(jget(kvd, "accuracy", "mass_recall_mean"), jget(lru, "accuracy", "mass_recall_mean"),
                                1e-9);
        ck_assert_double_eq_tol(jget(kvd, "accuracy", "rel_l2_error_mean"), jget(lru, "accuracy", "rel_l2_error_mean"),
                                1e-5);
        ck_assert_msg(jget(kvd, "bytes", "host_to_device") > 0, "kvdrive fetched nothing");
        /* It started with an empty device cache, so it had misses to hide; it
         * stages no guesses by default (--stage 0). */
        ck_assert_msg(jget(kvd, "pipeline", "miss_layers") > 0, "kvdrive reported no layer with misses");
        ck_assert_msg(jget(kvd, "pipeline", "hidden_layers") <= jget(kvd, "pipeline", "miss_layers"),
                      "more layers hidden than had misses");
        ck_assert_double_eq(jget(kvd, "pipeline", "staged_blocks"), 0);
        json_decref(kvd);

        /* With both kinds of staging on: guesses go to the daemon's host
         * memory, never change what is attended. */
        {
                const char *sargs[] = { "decode", "--socket", d.socket_path, "--policy", "kvdrive", "--trace", trace,
                                        "--clients", "2", "--seqs", "2", "--accuracy-every", "1", "--compute-us", "50",
                                        "--stage", "1", "--stage-layer", "1", "--json", NULL };

                kvd = run_json(dir.path, sargs);
                ck_assert_msg(jget(kvd, "pipeline", "staged_blocks") > 0, "nothing was staged");
                ck_assert_double_eq_tol(jget(kvd, "accuracy", "rel_l2_error_mean"),
                                        jget(lru, "accuracy", "rel_l2_error_mean"), 1e-5);
                json_decref(kvd);
        }
        json_decref(lru);

        ck_assert_int_eq(kvc_connect(d.socket_path, "probe", &c), 0);
        ck_assert_int_eq(kvc_stats_get(c, &st), 0);
        ck_assert_uint_gt(st->scores, 0);               /* heat reports arrived */
        ck_assert_uint_gt(st->sched_decisions, 0);      /* every Get asked the scheduler */
        st = kvc_stats_free(st);
        /* The scheduler folds the links' counters in once per window
         * (KVD_SCHED_MIN_WINDOW_NS, closed by a Get or a stats request):
         * a fast run ends inside its first window, so the copies it made
         * are measured once a later stats request closes that window. */
        ck_assert_msg(e2e_wait_stats(c, device_rate_measured, NULL, E2E_WAIT_MS, &st) == 0,
                      "the scheduler never measured the device link (%llu bytes/s, %llu bytes out)",
                      st ? (unsigned long long)st->sched_device_bytes_per_s : 0ull,
                      st ? (unsigned long long)st->bytes_out : 0ull);
        kvc_stats_free(st);
        kvc_disconnect(c);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

/* kvc_sparse's dynamic budget from the bench: on a generated trace whose
 * attention is concentrated (preset llama), blocks until the hybrid
 * method's estimated mass reaches 0.98 move fewer bytes than its top-k (10%)
 * and keep most of the mass (0.954 of it, where the top-k keeps 0.985, on
 * this small trace); a target with a method that scores bounds is refused. */
START_TEST(test_kvdrive_mass_target)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        char trace[200];
        const char *gen[] = { "gen", "--preset", "llama", "--out", trace, "--tokens", "2128", "--steps", "8",
                              "--layers", "2", "--kv-heads", "2", "--q-heads", "8", NULL };
        const char *args[] = { "decode", "--socket", NULL, "--policy", "kvdrive", "--trace", trace, "--method",
                               "hybrid", "--accuracy-every", "2", "--json", NULL, NULL, NULL };
        json_t *topk, *dyn;
        double b_topk, b_dyn, recall;
        char *out, *err;
        int st;

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        st = e2e_run_bench(dir.path, gen, RUN_TIMEOUT_MS, &out, &err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen: 0x%x\n%s", (unsigned)st, err);
        free(out);
        free(err);
        E2E_START(&d, "--ssd-dir", dir.path, "--ssd-bytes", "64M", );
        args[2] = d.socket_path;
        topk = run_json(dir.path, args);
        args[11] = "--mass-target";
        args[12] = "0.98";
        args[13] = "--json";
        dyn = run_json(dir.path, args);
        ck_assert_double_eq_tol(jget(dyn, "config", "mass_target"), 0.98, 1e-6);
        b_topk = jget(topk, "bytes", "host_to_device");
        b_dyn = jget(dyn, "bytes", "host_to_device");
        recall = jget(dyn, "accuracy", "mass_recall_mean");
        ck_assert_msg(b_dyn < b_topk, "the dynamic budget moved %g bytes, the top-k %g", b_dyn, b_topk);
        ck_assert_msg(recall > 0.9, "dynamic budget recall %g", recall);
        json_decref(topk);
        json_decref(dyn);
        args[8] = "quest";
        st = e2e_run_bench(dir.path, args, RUN_TIMEOUT_MS, &out, &err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "quest with --mass-target: 0x%x", (unsigned)st);
        ck_assert_msg(strstr(err, "--mass-target"), "%s", err);
        free(out);
        free(err);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_bad_trace)
{
        struct ssd_dir dir;
        char trace[200], *out, *err;
        const char *args[] = { "decode", "--socket", "/nonexistent/kvd.sock", "--trace", trace, "--json", NULL };
        int st;

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        write_trace(trace, false);
        st = e2e_run_bench(dir.path, args, RUN_TIMEOUT_MS, &out, &err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "decode took a trace without q.bin (status 0x%x)",
                      (unsigned)st);
        ck_assert_msg(strstr(err, "q.bin") != NULL, "the error does not name q.bin: %s", err);
        ck_assert_str_eq(out, "");
        free(out);
        free(err);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_namespace_conflict)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_geometry other = { T_LAYERS, T_KV, T_DIM, KVC_DTYPE_F16, 32 };
        kvc_client *c = NULL;
        char trace[200], *out, *err;
        const char *args[] = { "decode", "--socket", NULL, "--trace", trace, "--namespace", "e2e-decode-taken", NULL };
        uint32_t ns;
        int st;

        ssd_dir_make(&dir);
        snprintf(trace, sizeof(trace), "%s/trace", dir.path);
        write_trace(trace, true);
        E2E_START(&d);
        E2E_ASSERT_RC(c, kvc_connect(d.socket_path, "e2e", &c), 0);
        E2E_ASSERT_RC(c, kvc_register_namespace(c, "e2e-decode-taken", &other, &ns, NULL), 0);
        args[2] = d.socket_path;
        st = e2e_run_bench(dir.path, args, RUN_TIMEOUT_MS, &out, &err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "decode joined a namespace of another geometry");
        ck_assert_msg(strstr(err, "e2e-decode-taken") && strstr(err, "geometry"), "unclear error: %s", err);
        free(out);
        free(err);
        kvc_disconnect(c);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *decode_suite(void)
{
        Suite *s = suite_create("decode");
        TCase *tc = tcase_create("decode");

        tcase_set_timeout(tc, 3 * E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_policies);
        tcase_add_test(tc, test_two_clients_batch);
        tcase_add_test(tc, test_kvdrive_two_clients);
        tcase_add_test(tc, test_kvdrive_mass_target);
        tcase_add_test(tc, test_bad_trace);
        tcase_add_test(tc, test_namespace_conflict);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(decode_suite)

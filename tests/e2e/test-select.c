/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench select and selection, end to end on traces of
 * `kvdrive-bench gen` (no daemon): the oracle bounds every method at every
 * budget, recall grows with the budget and is exact at 100%, the oracle of
 * the dynamic budget reaches its target, the zoo report writes its files
 * with the verdict, and bad options are refused with their problem named.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "ssd-common.h"

#define RUN_TIMEOUT_MS 120000

static int bench(const char *tmp, const char *const *args, char **out, char **err)
{
        return e2e_run_bench(tmp, args, RUN_TIMEOUT_MS, out, err);
}

/* A small trace of preset p (2 layers, 2 kv / 8 q heads, 2128 tokens). */
static void gen(const char *tmp, const char *preset, const char *dir)
{
        const char *args[] = { "gen", "--preset", preset, "--out", dir, "--tokens", "2128", "--steps", "16",
                               "--layers", "2", "--kv-heads", "2", "--q-heads", "8", NULL };
        char *out, *err;
        int st = bench(tmp, args, &out, &err);

        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen --preset %s: 0x%x\n%s", preset, (unsigned)st, err);
        free(out);
        free(err);
}

static json_t *select_json(const char *tmp, const char *dir)
{
        const char *args[] = { "select", "--trace", dir, "--samples", "3", "--budgets", "0.05,0.1,0.3,1",
                               "--targets", "0.9,0.99", "--json", NULL };
        char *out, *err;
        json_error_t jerr;
        json_t *root;
        int st = bench(tmp, args, &out, &err);

        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "select: 0x%x\n%s", (unsigned)st, err);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "select printed no JSON (%s): %s", jerr.text, out);
        free(out);
        free(err);
        return root;
}

static double num(json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_number(v), "no number '%s'", key);
        return json_number_value(v);
}

START_TEST(oracle_bounds_every_method)
{
        static const char *const presets[] = { "basic", "llama", "outliers" };
        struct ssd_dir tmp;
        char dir[300];

        ssd_dir_make(&tmp);
        for (size_t p = 0; p < 3; p++) {
                json_t *root, *oracle, *od, *methods, *mj;
                const char *name;

                snprintf(dir, sizeof(dir), "%s/%s", tmp.path, presets[p]);
                gen(tmp.path, presets[p], dir);
                root = select_json(tmp.path, dir);
                ck_assert_double_eq(num(root, "samples"), 3 * 2);
                oracle = json_object_get(root, "oracle");
                od = json_object_get(root, "oracle_dynamic");
                methods = json_object_get(root, "methods");
                ck_assert_uint_eq(json_array_size(oracle), 4);
                ck_assert_uint_eq(json_object_size(methods), 6);
                for (size_t i = 0; i < 4; i++) {
                        double o = num(json_array_get(oracle, i), "mass_recall");

                        if (i)
                                ck_assert_msg(o >= num(json_array_get(oracle, i - 1), "mass_recall") - 1e-9,
                                              "%s: oracle recall falls with the budget", presets[p]);
                        json_object_foreach(methods, name, mj) {
                                json_t *f = json_array_get(json_object_get(mj, "fixed"), i);
                                double r = num(f, "mass_recall");

                                ck_assert_msg(r <= o + 1e-6, "%s: %s recall %.6f above the oracle's %.6f at %g",
                                              presets[p], name, r, o, num(f, "budget"));
                                if (i == 3) {   /* 100%: everything, exactly */
                                        ck_assert_msg(fabs(r - 1) < 1e-5, "%s: %s at 100%%: %g", presets[p], name, r);
                                        ck_assert_msg(num(f, "rel_l2_error") < 1e-3, "%s: %s error at 100%%",
                                                      presets[p], name);
                                }
                        }
                }
                for (size_t i = 0; i < 2; i++) {
                        json_t *d = json_array_get(od, i);

                        ck_assert_msg(num(d, "mass_recall_min") >= num(d, "target") - 1e-4,
                                      "%s: the dynamic oracle stopped below its target", presets[p]);
                }
                /* A dynamic budget takes more blocks for a higher target. */
                json_object_foreach(methods, name, mj) {
                        json_t *dyn = json_object_get(mj, "dynamic");

                        if (strcmp(name, "quest") == 0) {
                                ck_assert_uint_eq(json_array_size(dyn), 0);
                                continue;
                        }
                        ck_assert_msg(num(json_array_get(dyn, 1), "blocks_fraction") >=
                                              num(json_array_get(dyn, 0), "blocks_fraction"),
                                      "%s: %s takes fewer blocks for 0.99 than for 0.9", presets[p], name);
                        ck_assert_msg(num(mj, "score_us") > 0, "%s: no scoring time", name);
                }
                json_decref(root);
        }
        ssd_dir_remove(&tmp);
}
END_TEST

START_TEST(zoo_report)
{
        struct ssd_dir tmp;
        char out[300], work[300], path[400], *o, *e, *md;
        const char *args[] = { "selection", "--out", out, "--work", work, "--presets", "basic,retrieval", "--tokens",
                               "1104", "--steps", "16", "--layers", "1", "--samples", "2", NULL };
        struct stat st_;
        FILE *f;
        long n;
        int st;

        ssd_dir_make(&tmp);
        snprintf(out, sizeof(out), "%s/report", tmp.path);
        snprintf(work, sizeof(work), "%s/traces", tmp.path);
        st = bench(tmp.path, args, &o, &e);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "selection: 0x%x\n%s", (unsigned)st, e);
        snprintf(path, sizeof(path), "%s/results.csv", out);
        ck_assert_int_eq(stat(path, &st_), 0);
        snprintf(path, sizeof(path), "%s/results.json", out);
        ck_assert_int_eq(stat(path, &st_), 0);
        snprintf(path, sizeof(path), "%s/results.md", out);
        f = fopen(path, "r");
        ck_assert_ptr_nonnull(f);
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        md = calloc(1, (size_t)n + 1);
        ck_assert_int_eq(fread(md, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        ck_assert_ptr_nonnull(strstr(md, "## Verdict for the default method, hybrid"));
        ck_assert_ptr_nonnull(strstr(md, "| basic |"));
        ck_assert_ptr_nonnull(strstr(md, "| retrieval |"));
        ck_assert_ptr_nonnull(strstr(md, "## The budget each method needs"));
        free(md);
        free(o);
        free(e);
        ssd_dir_remove(&tmp);
}
END_TEST

START_TEST(bad_options_refused)
{
        static const struct {
                const char *args[8];
                const char *says;
        } cases[] = {
                { { "select", "--trace", "DIR", "--budgets", "0.2,0.1", NULL }, "--budgets" },
                { { "select", "--trace", "DIR", "--budgets", "0,0.5", NULL }, "--budgets" },
                { { "select", "--trace", "DIR", "--methods", "quest,bogus", NULL }, "--methods" },
                { { "select", "--trace", "DIR", "--targets", "1.5", NULL }, "--targets" },
                { { "select", NULL }, "--trace" },
                { { "selection", "--out", "DIR", "--presets", "nosuch", NULL }, "nosuch" },
        };
        struct ssd_dir tmp;
        char dir[300];

        ssd_dir_make(&tmp);
        snprintf(dir, sizeof(dir), "%s/t", tmp.path);
        gen(tmp.path, "basic", dir);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *args[8];
                char *out, *err;
                int st;

                for (size_t j = 0; j < 8; j++)
                        args[j] = cases[i].args[j] && strcmp(cases[i].args[j], "DIR") == 0 ? dir : cases[i].args[j];
                st = bench(tmp.path, args, &out, &err);
                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "case %zu: status 0x%x", i, (unsigned)st);
                ck_assert_msg(strstr(err, cases[i].says), "case %zu: the error does not say %s: %s", i, cases[i].says,
                              err);
                ck_assert_str_eq(out, "");
                free(out);
                free(err);
        }
        {       /* a trace that is not there: exit 1, the path named */
                const char *args[] = { "select", "--trace", "/nonexistent/trace", NULL };
                char *out, *err;
                int st = bench(tmp.path, args, &out, &err);

                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x", (unsigned)st);
                ck_assert_msg(strstr(err, "/nonexistent/trace"), "%s", err);
                free(out);
                free(err);
        }
        ssd_dir_remove(&tmp);
}
END_TEST

static Suite *select_suite(void)
{
        Suite *s = suite_create("select");
        TCase *tc = tcase_create("select");

        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, oracle_bounds_every_method);
        tcase_add_test(tc, zoo_report);
        tcase_add_test(tc, bad_options_refused);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(select_suite)

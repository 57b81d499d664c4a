/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode --device: the default and explicit cpu device run and
 * say so; where no GPU can run (no NVIDIA driver here, or a build without
 * CUDA), --device cuda stops at once with exit status 77 and why, before it
 * generates a trace or reaches for the daemon; an unknown device is a usage
 * error (decode and report). The GPU itself: tests/gpu/test-gpu-decode.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"
#include "ssd-common.h"

#define RUN_TIMEOUT_MS 60000


/* Whether this machine has an NVIDIA driver loaded (its control device). */
static bool nvidia_driver(void)
{
        return access("/dev/nvidiactl", F_OK) == 0;
}

START_TEST(test_cuda_without_gpu)
{
        /* A socket nobody serves, no --trace: past the probe, the run would
         * generate a trace (and say so), then fail to reach the daemon. */
        const char *args[] = { "decode", "--device", "cuda", "--socket", "/nonexistent/kvd.sock", NULL };
        struct ssd_dir tmp;
        char *out, *err;
        int st;

        ssd_dir_make(&tmp);
        st = e2e_run_bench(tmp.path, args, RUN_TIMEOUT_MS, &out, &err);
        if (nvidia_driver() && !(WIFEXITED(st) && WEXITSTATUS(st) == 77)) {
                /* A usable GPU: the probe let it through to the daemon. */
                fprintf(stderr, "note: an NVIDIA driver is here and --device cuda got past the probe\n");
                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(err, "cannot reach kvdrived"),
                              "status 0x%x, stderr: %s", (unsigned)st, err);
        } else {
                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 77, "status 0x%x (want exit 77), stderr: %s",
                              (unsigned)st, err);
                ck_assert_msg(strstr(err, "--device cuda: ") &&
                                      (strstr(err, "no usable CUDA device") || strstr(err, "built without CUDA")),
                              "stderr says not why: %s", err);
                ck_assert_msg(!strstr(err, "generating") && !strstr(err, "kvdrived"),
                              "it went on before stopping: %s", err);
                ck_assert_str_eq(out, "");
        }
        free(out);
        free(err);
        ssd_dir_remove(&tmp);
}
END_TEST

START_TEST(test_unknown_device)
{
        const char *dec[] = { "decode", "--device", "tpu", "--socket", "/nonexistent/kvd.sock", NULL };
        const char *rep[] = { "report", "--device", "tpu", "--socket", "/nonexistent/kvd.sock", NULL };
        const char *ctx[] = { "report", "--contexts", "64K,lots", "--socket", "/nonexistent/kvd.sock", NULL };
        const char *const *cases[] = { dec, rep, ctx };
        const char *want[] = { "unknown --device 'tpu'", "unknown --device 'tpu'", "bad --contexts '64K,lots'" };
        struct ssd_dir tmp;
        char *out, *err;

        ssd_dir_make(&tmp);
        for (size_t i = 0; i < 3; i++) {
                int st = e2e_run_bench(tmp.path, cases[i], RUN_TIMEOUT_MS, &out, &err);

                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s %s: status 0x%x (want 2), stderr: %s",
                              cases[i][0], cases[i][1], (unsigned)st, err);
                ck_assert_msg(strstr(err, want[i]), "%s: stderr lacks \"%s\": %s", cases[i][0], want[i], err);
                free(out);
                free(err);
        }
        ssd_dir_remove(&tmp);
}
END_TEST

/* The CPU device, by default and by name: it runs and the JSON says which. */
START_TEST(test_cpu_device)
{
        struct ssd_dir tmp;
        char trace[300], *out, *err;
        const char *gen[] = { "gen", "--out", trace, "--tokens", "328", "--steps", "8", "--layers", "2", "--kv-heads",
                              "2", "--q-heads", "4", "--head-dim", "32", NULL };
        struct kvd_test_daemon d;

        ssd_dir_make(&tmp);
        snprintf(trace, sizeof(trace), "%s/trace", tmp.path);
        {
                int st = e2e_run_bench(tmp.path, gen, RUN_TIMEOUT_MS, &out, &err);

                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gen: status 0x%x: %s", (unsigned)st, err);
                free(out);
                free(err);
        }
        E2E_START(&d, "--host-bytes", "16M", );
        for (int named = 0; named < 2; named++) {
                const char *args[] = { "decode", "--socket", d.socket_path, "--policy", "kvdrive", "--trace", trace,
                                       "--compute-us", "0", "--json", named ? "--device" : NULL, "cpu", NULL };
                json_error_t jerr;
                json_t *root, *cfg;
                int st = e2e_run_bench(tmp.path, args, RUN_TIMEOUT_MS, &out, &err);

                ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x: %s", (unsigned)st, err);
                root = json_loads(out, 0, &jerr);
                ck_assert_msg(root, "no JSON (line %d: %s): %s", jerr.line, jerr.text, out);
                cfg = json_object_get(root, "config");
                ck_assert_str_eq(json_string_value(json_object_get(cfg, "device")), "cpu");
                ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(root, "throughput"), "tokens")), 8);
                json_decref(root);
                free(out);
                free(err);
        }
        E2E_STOP(&d);
        ssd_dir_remove(&tmp);
}
END_TEST

static Suite *decode_device_suite(void)
{
        Suite *s = suite_create("decode-device");
        TCase *tc = tcase_create("device");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_cuda_without_gpu);
        tcase_add_test(tc, test_unknown_device);
        tcase_add_test(tc, test_cpu_device);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(decode_device_suite)

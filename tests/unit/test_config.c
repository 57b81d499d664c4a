/* SPDX-License-Identifier: MIT */
/* Configuration: sizes, defaults, INI file, command-line precedence, errors. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check-main.h"
#include "config.h"

START_TEST(sizes)
{
        uint64_t v = 7;

        ck_assert_int_eq(kvd_parse_size("4096", &v), 0);
        ck_assert_uint_eq(v, 4096);
        ck_assert_int_eq(kvd_parse_size("64K", &v), 0);
        ck_assert_uint_eq(v, 64u << 10);
        ck_assert_int_eq(kvd_parse_size("256M", &v), 0);
        ck_assert_uint_eq(v, 256u << 20);
        ck_assert_int_eq(kvd_parse_size("2GiB", &v), 0);
        ck_assert_uint_eq(v, UINT64_C(2) << 30);
        ck_assert_int_eq(kvd_parse_size("1t", &v), 0);
        ck_assert_uint_eq(v, UINT64_C(1) << 40);
        v = 7;
        ck_assert_int_eq(kvd_parse_size("", &v), -EINVAL);
        ck_assert_int_eq(kvd_parse_size("-1M", &v), -EINVAL);
        ck_assert_int_eq(kvd_parse_size("12Q", &v), -EINVAL);
        ck_assert_int_eq(kvd_parse_size("1.5G", &v), -EINVAL);
        ck_assert_int_eq(kvd_parse_size("99999999999999999999", &v), -ERANGE);
        ck_assert_int_eq(kvd_parse_size("17000000T", &v), -ERANGE);
        ck_assert_uint_eq(v, 7); /* untouched on failure */
}
END_TEST

static int load(struct kvd_config *cfg, const char **args, int n)
{
        char *argv[16];

        argv[0] = (char *)"kvdrived";
        for (int i = 0; i < n; i++)
                argv[i + 1] = (char *)args[i];
        return kvd_config_load(cfg, n + 1, argv);
}

START_TEST(defaults)
{
        struct kvd_config cfg;

        setenv("KVDRIVE_SOCKET", "/tmp/kvd-test.sock", 1);
        ck_assert_int_eq(load(&cfg, NULL, 0), 0);
        ck_assert_str_eq(cfg.socket, "/tmp/kvd-test.sock");
        ck_assert_uint_eq(cfg.host_bytes, 256u << 20);
        ck_assert_uint_eq(cfg.workers, 2);
        ck_assert_uint_eq(cfg.max_frame, 128u << 10);
        ck_assert(!cfg.foreground);
        ck_assert_int_eq(cfg.host_lock, KVD_LOCK_TRY);
}
END_TEST

START_TEST(file_then_command_line)
{
        char path[] = "/tmp/kvd-config-XXXXXX";
        int fd = mkstemp(path);
        struct kvd_config cfg;
        FILE *f;

        ck_assert_int_ge(fd, 0);
        f = fdopen(fd, "w");
        fprintf(f, "; comment\n[kvdrived]\nhost-bytes = 64M\nworkers = 3\nhost-lock = off\nsocket = /tmp/from-file\n");
        fclose(f);
        {
                const char *args[] = { "--config", path, "--workers=5", "--foreground" };

                ck_assert_int_eq(load(&cfg, args, 4), 0);
        }
        ck_assert_uint_eq(cfg.host_bytes, 64u << 20);
        ck_assert_uint_eq(cfg.workers, 5);      /* command line wins */
        ck_assert_int_eq(cfg.host_lock, KVD_LOCK_OFF);
        ck_assert_str_eq(cfg.socket, "/tmp/from-file");
        ck_assert(cfg.foreground);
        unlink(path);
}
END_TEST

START_TEST(bad_input)
{
        char path[] = "/tmp/kvd-config-XXXXXX";
        struct kvd_config cfg;
        int fd;
        FILE *f;

        {
                const char *a[] = { "--host-bytes", "lots" };
                ck_assert_int_lt(load(&cfg, a, 2), 0);
        }
        {
                const char *a[] = { "--workers", "0" };
                ck_assert_int_lt(load(&cfg, a, 2), 0);
        }
        {
                const char *a[] = { "--host-bytes", "8M" }; /* below the minimum */
                ck_assert_int_lt(load(&cfg, a, 2), 0);
        }
        {
                const char *a[] = { "--no-such-option" };
                ck_assert_int_lt(load(&cfg, a, 1), 0);
        }
        {
                const char *a[] = { "--config", "/nonexistent/kvdrived.conf" };
                ck_assert_int_lt(load(&cfg, a, 2), 0);
        }
        fd = mkstemp(path);
        f = fdopen(fd, "w");
        fprintf(f, "[kvdrived]\nhost-byte = 64M\n");
        fclose(f);
        {
                const char *a[] = { "--config", path };
                ck_assert_int_lt(load(&cfg, a, 2), 0); /* unknown key */
        }
        f = fopen(path, "w");
        fprintf(f, "[other]\nhost-bytes = 64M\n");
        fclose(f);
        {
                const char *a[] = { "--config", path };
                ck_assert_int_lt(load(&cfg, a, 2), 0); /* unknown section */
        }
        unlink(path);
}
END_TEST

static Suite *config_suite(void)
{
        Suite *s = suite_create("config");
        TCase *tc = tcase_create("config");

        tcase_add_test(tc, sizes);
        tcase_add_test(tc, defaults);
        tcase_add_test(tc, file_then_command_line);
        tcase_add_test(tc, bad_input);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(config_suite)

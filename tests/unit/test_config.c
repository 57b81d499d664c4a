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
        ck_assert_uint_eq(cfg.quota.host_bytes, UINT64_MAX); /* 0: no cap */
        ck_assert_uint_eq(cfg.quota.namespaces, 16);
        kvd_config_free(&cfg);
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
        kvd_config_free(&cfg);
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
                const char *a[] = { "--ssd-codec", "gzip" };
                ck_assert_int_lt(load(&cfg, a, 2), 0);
        }
        {
                const char *a[] = { "--ssd-codec", "int4", "--remote-codec", "zstd" };
                ck_assert_int_eq(load(&cfg, a, 4), 0);
                ck_assert_uint_eq(cfg.ssd_codec, 4);
                ck_assert_uint_eq(cfg.remote_codec, 1);
                kvd_config_free(&cfg);
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

static int load_file(struct kvd_config *cfg, const char *text)
{
        char path[] = "/tmp/kvd-config-XXXXXX";
        int fd = mkstemp(path), r;
        FILE *f;

        ck_assert_int_ge(fd, 0);
        f = fdopen(fd, "w");
        fputs(text, f);
        fclose(f);
        {
                const char *a[] = { "--config", path };

                r = load(cfg, a, 2);
        }
        unlink(path);
        return r;
}

static struct kvd_peer peer(uid_t uid, gid_t gid, const gid_t *groups, uint32_t n)
{
        return (struct kvd_peer){ .uid = uid, .gid = gid, .groups = groups, .n_groups = n };
}

/* [namespace PATTERN] shares one owner's namespaces; [quota USER] caps. */
/* --remote: redis-cluster://HOST:PORT[,HOST:PORT...] or refused. */
START_TEST(remote_addresses)
{
        static const char *const good[] = { "redis-cluster://127.0.0.1:7000",
                                            "redis-cluster://a:1,b.example:65535,[::1]:7001" };
        static const char *const bad[] = { "redis://127.0.0.1:6379", "redis-cluster://", "redis-cluster://host",
                                           "redis-cluster://127.0.0.1:0", "redis-cluster://h:70000",
                                           "redis-cluster://h:1,", "redis-cluster://:7", "redis-cluster://h:1x" };
        struct kvd_config cfg;

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                const char *a[] = { "--remote", good[i], "--remote-ttl-s", "60" };

                ck_assert_msg(load(&cfg, a, 4) == 0, "%s refused", good[i]);
                ck_assert_str_eq(cfg.remote, good[i]);
                ck_assert_uint_eq(cfg.remote_ttl_s, 60);
                ck_assert_uint_eq(cfg.remote_timeout_ms, 500);
                kvd_config_free(&cfg);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *a[] = { "--remote", bad[i] };

                ck_assert_msg(load(&cfg, a, 2) < 0, "%s taken", bad[i]);
        }
}
END_TEST

START_TEST(access_sections)
{
        static const gid_t g42[] = { 42 };
        struct kvd_config cfg;
        const struct kvd_share *sh;
        struct kvd_quota q;
        struct kvd_peer p;

        ck_assert_int_eq(load_file(&cfg, "[kvdrived]\nquota-host-bytes = 2G\n"
                                         "[namespace llama-*]\nowner = 1000\nreaders = 1001, @42\nwriters = 1002\n"
                                         "[namespace open]\nowner = root\nreaders = *\n"
                                         "[quota 1001]\nhost-bytes = 1G\nnamespaces = 3\n"), 0);
        sh = kvd_access_share(cfg.access, "llama-3-8b");
        ck_assert_ptr_nonnull(sh);
        ck_assert_uint_eq(kvd_share_owner(sh), 1000);
        ck_assert_ptr_null(kvd_access_share(cfg.access, "mistral"));
        p = peer(1000, 1000, NULL, 0);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), KVD_RIGHT_READ | KVD_RIGHT_WRITE | KVD_RIGHT_OWNER);
        p = peer(1001, 1001, NULL, 0);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), KVD_RIGHT_READ);
        ck_assert_uint_eq(kvd_access_rights(sh, 2000, &p), 0); /* the share is of uid 1000's namespace only */
        p = peer(1002, 1002, NULL, 0);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), KVD_RIGHT_READ | KVD_RIGHT_WRITE);
        p = peer(3000, 3000, g42, 1);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), KVD_RIGHT_READ);
        p = peer(3000, 42, NULL, 0);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), KVD_RIGHT_READ);
        p = peer(3000, 3000, NULL, 0);
        ck_assert_uint_eq(kvd_access_rights(sh, 1000, &p), 0);
        ck_assert_uint_eq(kvd_access_rights(NULL, 1000, &p), 0); /* private */
        ck_assert_uint_eq(kvd_access_rights(kvd_access_share(cfg.access, "open"), 0, &p), KVD_RIGHT_READ);
        kvd_config_quota(&cfg, 1001, &q);
        ck_assert_uint_eq(q.host_bytes, UINT64_C(1) << 30);
        ck_assert_uint_eq(q.namespaces, 3);
        ck_assert_uint_eq(q.ssd_bytes, UINT64_MAX);
        kvd_config_quota(&cfg, 1002, &q);
        ck_assert_uint_eq(q.host_bytes, UINT64_C(2) << 30);
        ck_assert_uint_eq(q.namespaces, 16);
        kvd_config_free(&cfg);

        /* Bad sections: each a clear error. */
        ck_assert_int_lt(load_file(&cfg, "[namespace x]\nreaders = *\n"), 0);             /* no owner */
        ck_assert_int_lt(load_file(&cfg, "[namespace x]\nowner = no-such-user-kvd\n"), 0);
        ck_assert_int_lt(load_file(&cfg, "[namespace x]\nowner = 0\nreaders = @no-such-group-kvd\n"), 0);
        ck_assert_int_lt(load_file(&cfg, "[namespace x]\nowner = 0\nreadres = *\n"), 0); /* typo */
        ck_assert_int_lt(load_file(&cfg, "[quota 5]\nhost-bytes = lots\n"), 0);
        ck_assert_int_lt(load_file(&cfg, "[quota 5]\nssd = 1G\n"), 0);
        ck_assert_int_lt(load_file(&cfg, "[kvdrived]\nadmin-group = no-such-group-kvd\n"), 0);
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
        tcase_add_test(tc, access_sections);
        tcase_add_test(tc, remote_addresses);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(config_suite)

/* SPDX-License-Identifier: MIT */
/*
 * SSD tier on hostile file systems, mounted for the test (needs root and
 * mount(2); skipped where that is not allowed): a full one (tmpfs smaller
 * than ssd-bytes: ENOSPC) and one that refuses O_DIRECT (ramfs).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "ssd-common.h"

static bool mount_fs(const struct ssd_dir *d, const char *type, const char *opts)
{
        return mount(type, d->path, type, 0, opts) == 0;
}

static bool ssd_full(const struct kvc_stats *s, void *arg)
{
        const struct kvc_tier_stats *t = e2e_tier(s, "ssd");

        return t && t->full;
}

START_TEST(test_full_file_system)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct ssd_client sc;
        struct kvc_key seq;
        struct kvc_tier_stats t;

        ssd_dir_make(&dir);
        ck_assert_msg(mount_fs(&dir, "tmpfs", "size=6m"), "mount tmpfs: %s", strerror(errno));
        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "64M", "--ssd-extent-bytes",
                  "1M", );
        ssd_client_open(&sc, d.socket_path, 64);
        /* 40 MiB of blocks (with headers) through a 16 MiB host tier and a
         * 6 MiB file system: the drive fills, the daemon goes on. */
        ck_assert_int_eq(ssd_put(&sc, &seq, 0, 3000, 0, 20), 3000);
        /* The write that finds the file system full may still be in flight. */
        {
                struct kvc_stats *st = NULL;

                ck_assert_msg(e2e_wait_stats(sc.c, ssd_full, NULL, E2E_WAIT_MS, &st) == 0,
                              "the SSD tier never said it was full");
                kvc_stats_free(st);
        }
        t = ssd_tier_stats(&sc, "ssd");
        ck_assert(t.full);
        ck_assert_msg(strstr(t.condition, "full") != NULL, "condition '%s'", t.condition);
        ck_assert_uint_le(t.capacity_bytes, 6u << 20);
        ck_assert_uint_gt(ssd_tier_stats(&sc, "host").evictions, 0);
        /* The newest blocks are served, byte for byte; older ones may be gone, never wrong. */
        ck_assert_uint_eq(ssd_get(&sc, &seq, 2900, 100, 20).ok, 100);
        {
                struct ssd_got got = ssd_get(&sc, &seq, 0, 3000, 20);

                ck_assert_uint_eq(got.wrong, 0);
                ck_assert_uint_eq(got.other, 0);
        }
        ssd_client_close(&sc);
        E2E_STOP(&d);
        umount2(dir.path, MNT_DETACH);
        ssd_dir_remove(&dir);
}
END_TEST

START_TEST(test_no_o_direct)
{
        struct ssd_dir dir;
        char cmd[512], line[512], sock[200];
        bool said = false;
        FILE *p;
        int status;

        ssd_dir_make(&dir);
        ck_assert_msg(mount_fs(&dir, "ramfs", NULL), "mount ramfs: %s", strerror(errno));
        snprintf(sock, sizeof(sock), "%s.sock", dir.path);
        snprintf(cmd, sizeof(cmd), "'%s' --foreground --socket '%s' --host-bytes 16M --ssd-dir '%s' --ssd-bytes 16M 2>&1",
                 getenv("KVDRIVED"), sock, dir.path);
        p = popen(cmd, "r");
        ck_assert_ptr_nonnull(p);
        while (fgets(line, sizeof(line), p))
                said |= strstr(line, "does not support O_DIRECT") != NULL;
        status = pclose(p);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        ck_assert_msg(said, "no clear O_DIRECT message");
        ck_assert_int_ne(access(sock, F_OK), 0); /* it never served */
        umount2(dir.path, MNT_DETACH);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *fs_suite(void)
{
        Suite *s = suite_create("ssd-fs");
        TCase *tc = tcase_create("ssd-fs");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_full_file_system);
        tcase_add_test(tc, test_no_o_direct);
        suite_add_tcase(s, tc);
        return s;
}

/* Mounting needs privileges this machine may not grant: skip the suite. */
static bool can_mount(void)
{
        struct ssd_dir d;
        bool ok;

        snprintf(d.path, sizeof(d.path), "/tmp/kvd-mnt-XXXXXX");
        if (!mkdtemp(d.path))
                return false;
        ok = mount("tmpfs", d.path, "tmpfs", 0, "size=1m") == 0;
        if (ok)
                umount2(d.path, MNT_DETACH);
        rmdir(d.path);
        return ok;
}

int main(void)
{
        SRunner *sr;
        int failed;

        if (!can_mount()) {
                printf("1..0 # SKIP cannot mount tmpfs/ramfs here (needs root and mount(2))\n");
                return 77;
        }
        sr = srunner_create(fs_suite());
        srunner_set_tap(sr, "-");
        srunner_run_all(sr, CK_SILENT);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

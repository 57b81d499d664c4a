/* SPDX-License-Identifier: MIT */
/* The host tier's budget: what the machine, the cgroup and the mlock limit
 * let a pool take, decided before anything is mapped. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "check-main.h"
#include "config.h"
#include "host.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

static const struct kvd_host_budget roomy = {
        .mem_available = 64 * GiB, .hugetlb_free = 0, .cgroup_max = UINT64_MAX, .cgroup = "",
        .memlock = UINT64_MAX,
};

START_TEST(fits)
{
        char why[512] = "";

        ck_assert_int_eq(kvd_host_budget_check(&roomy, 8 * GiB, true, KVD_LOCK_REQUIRED, why, sizeof(why)), 0);
        ck_assert_int_eq(kvd_host_budget_check(&roomy, 64 * GiB, false, KVD_LOCK_TRY, why, sizeof(why)), 0);
}
END_TEST

START_TEST(over_mem_available)
{
        char why[512] = "";

        ck_assert_int_eq(kvd_host_budget_check(&roomy, 65 * GiB, false, KVD_LOCK_OFF, why, sizeof(why)), -ENOMEM);
        ck_assert_msg(strstr(why, "host-bytes 66560 MiB") && strstr(why, "MemAvailable is 65536 MiB"), "%s", why);
}
END_TEST

/* Reserved hugetlb pages are outside MemAvailable: a pool that gets them
 * needs none of it; one that does not (too few, or not wanted) does. */
START_TEST(hugetlb_pages)
{
        struct kvd_host_budget b = roomy;
        char why[512] = "";

        b.mem_available = 1 * GiB;
        b.hugetlb_free = 16 * GiB;
        ck_assert_int_eq(kvd_host_budget_check(&b, 16 * GiB, true, KVD_LOCK_TRY, why, sizeof(why)), 0);
        ck_assert_int_eq(kvd_host_budget_check(&b, 16 * GiB, false, KVD_LOCK_TRY, why, sizeof(why)), -ENOMEM);
        ck_assert_int_eq(kvd_host_budget_check(&b, 17 * GiB, true, KVD_LOCK_TRY, why, sizeof(why)), -ENOMEM);
}
END_TEST

START_TEST(over_cgroup)
{
        struct kvd_host_budget b = roomy;
        char why[512] = "";

        b.cgroup_max = 4 * GiB;
        strcpy(b.cgroup, "/sys/fs/cgroup/system.slice/kvdrived.service");
        ck_assert_int_eq(kvd_host_budget_check(&b, 4 * GiB, false, KVD_LOCK_TRY, why, sizeof(why)), 0);
        ck_assert_int_eq(kvd_host_budget_check(&b, 4 * GiB + 4 * MiB, false, KVD_LOCK_TRY, why, sizeof(why)),
                         -ENOMEM);
        ck_assert_msg(strstr(why, "host-bytes 4100 MiB") &&
                      strstr(why, "/sys/fs/cgroup/system.slice/kvdrived.service sets 4096 MiB"), "%s", why);
}
END_TEST

/* RLIMIT_MEMLOCK matters only when the lock is required: try goes on
 * unpinned, off never locks. */
START_TEST(memlock)
{
        struct kvd_host_budget b = roomy;
        char why[512] = "";

        b.memlock = 8 * MiB;
        ck_assert_int_eq(kvd_host_budget_check(&b, 1 * GiB, false, KVD_LOCK_REQUIRED, why, sizeof(why)), -ENOMEM);
        ck_assert_msg(strstr(why, "RLIMIT_MEMLOCK is 8192 KiB") && strstr(why, "host-bytes 1024 MiB"), "%s", why);
        ck_assert_int_eq(kvd_host_budget_check(&b, 1 * GiB, false, KVD_LOCK_TRY, why, sizeof(why)), 0);
        ck_assert_int_eq(kvd_host_budget_check(&b, 1 * GiB, false, KVD_LOCK_OFF, why, sizeof(why)), 0);
        ck_assert_int_eq(kvd_host_budget_check(&b, 8 * MiB, false, KVD_LOCK_REQUIRED, why, sizeof(why)), 0);
}
END_TEST

/* On Linux /proc/meminfo always has MemAvailable; as root (CAP_IPC_LOCK)
 * mlock has no limit. */
START_TEST(read_this_machine)
{
        struct kvd_host_budget b;
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);

        kvd_host_budget_read(&b);
        ck_assert_uint_ne(b.mem_available, UINT64_MAX);
        ck_assert_uint_gt(b.mem_available, 0);
        ck_assert_uint_le(b.mem_available, (uint64_t)pages * (uint64_t)page);
        if (geteuid() == 0)
                ck_assert_uint_eq(b.memlock, UINT64_MAX);
        ck_assert(b.cgroup_max == UINT64_MAX || b.cgroup[0] == '/');
}
END_TEST

static Suite *host_suite(void)
{
        Suite *s = suite_create("host");
        TCase *tc = tcase_create("budget");

        tcase_add_test(tc, fits);
        tcase_add_test(tc, over_mem_available);
        tcase_add_test(tc, hugetlb_pages);
        tcase_add_test(tc, over_cgroup);
        tcase_add_test(tc, memlock);
        tcase_add_test(tc, read_this_machine);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(host_suite)

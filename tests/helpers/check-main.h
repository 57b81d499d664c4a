/* SPDX-License-Identifier: MIT */
/* A main() for Check suites: TAP output for meson, exit 0 only if all pass. */
#pragma once

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#define KVD_CHECK_MAIN(suite_fn)                                        \
        int main(void)                                                  \
        {                                                               \
                SRunner *sr = srunner_create(suite_fn());               \
                int failed;                                             \
                srunner_set_tap(sr, "-");                               \
                srunner_run_all(sr, CK_SILENT);                         \
                failed = srunner_ntests_failed(sr);                     \
                srunner_free(sr);                                       \
                return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;       \
        }

/* The same, skipping the whole suite (TAP "1..0 # SKIP", exit 77) unless
 * cond holds at run time: for suites that need a program the machine may
 * lack (cond names it, why says what). */
#define KVD_CHECK_MAIN_IF(cond, why, suite_fn)                          \
        int main(void)                                                  \
        {                                                               \
                SRunner *sr;                                            \
                int failed;                                             \
                if (!(cond)) {                                          \
                        printf("1..0 # SKIP %s\n", why);                \
                        return 77;                                      \
                }                                                       \
                sr = srunner_create(suite_fn());                        \
                srunner_set_tap(sr, "-");                               \
                srunner_run_all(sr, CK_SILENT);                         \
                failed = srunner_ntests_failed(sr);                     \
                srunner_free(sr);                                       \
                return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;       \
        }

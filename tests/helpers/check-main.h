/* SPDX-License-Identifier: MIT */
/* A main() for Check suites: TAP output for meson, exit 0 only if all pass. */
#pragma once

#include <check.h>
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

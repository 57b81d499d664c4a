/* SPDX-License-Identifier: MIT */
/* Size parsing shared by the daemon and the tools (a tiny static library). */
#pragma once

#include <stdint.h>

/* Parses "64M", "1G", "4096", "2T" (K/M/G/T: powers of 1024, optional
 * trailing "B"/"iB"). Returns 0 or -EINVAL / -ERANGE; *ret untouched on
 * failure. */
int kvd_parse_size(const char *s, uint64_t *ret);

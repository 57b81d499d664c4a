/* SPDX-License-Identifier: MIT */
/*
 * Daemon logging to stderr. Under journald (JOURNAL_STREAM set) lines carry
 * the sd-daemon "<N>" priority prefix so the journal keeps levels.
 */
#pragma once

#include <syslog.h>

void kvd_log_set_level(int level);
/* From now on log through syslog(3) (a detached daemon has no stderr). */
void kvd_log_to_syslog(void);
/* Parses "debug", "info", "notice", "warning", "err"; -EINVAL otherwise. */
int kvd_log_level_from_string(const char *s);
void kvd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) kvd_log(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) kvd_log(LOG_INFO, __VA_ARGS__)
#define log_notice(...) kvd_log(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) kvd_log(LOG_WARNING, __VA_ARGS__)
#define log_error(...) kvd_log(LOG_ERR, __VA_ARGS__)

/* SPDX-License-Identifier: MIT */
/*
 * Daemon logging, never to nowhere:
 *   - stderr while the daemon has one: in the foreground, and under
 *     systemd when $JOURNAL_STREAM says stderr is the journal (lines then
 *     carry the sd-daemon "<N>" prefix so the journal keeps levels);
 *   - the journal (sd_journal_print) under systemd when stderr is not it;
 *   - a file (log-file) once a daemon outside systemd detaches: opened
 *     before it detaches (kvd_log_open_file), so that a file it cannot
 *     write stops the start with a message on the terminal.
 * Safe to call from any thread; one write(2) per line.
 */
#pragma once

#include <stddef.h>
#include <syslog.h>

void kvd_log_set_level(int level);
/* Parses "debug", "info", "notice", "warning", "err"; -EINVAL otherwise. */
int kvd_log_level_from_string(const char *s);
/* The name of a level ("info"), "?" for none. */
const char *kvd_log_level_name(int level);

/* The log file's path when the config leaves log-file empty: as root
 * /var/log/kvdrive/kvdrived.log, else $XDG_STATE_HOME/kvdrive/kvdrived.log,
 * else /tmp/kvdrive-$UID/kvdrived.log. 0 or -ENAMETOOLONG. */
int kvd_log_default_file(char *buf, size_t size);

/* Opens path (appending, creating it 0640 and its last directory 0750 if
 * missing) and logs there from now on, besides stderr until
 * kvd_log_detached(). 0 or -errno (nothing changed). */
int kvd_log_open_file(const char *path);

/* Reopens the log file (log rotation; path NULL: the same path) if one is
 * open; a no-op otherwise. On failure the old file stays. 0 or -errno. */
int kvd_log_reopen(const char *path);

/* The daemon let go of stderr: from now on only the file. */
void kvd_log_detached(void);

/* Under systemd with stderr not the journal: log through sd_journal_print. */
void kvd_log_to_journal(void);

void kvd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) kvd_log(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) kvd_log(LOG_INFO, __VA_ARGS__)
#define log_notice(...) kvd_log(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) kvd_log(LOG_WARNING, __VA_ARGS__)
#define log_error(...) kvd_log(LOG_ERR, __VA_ARGS__)

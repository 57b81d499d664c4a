/* SPDX-License-Identifier: MIT */
/*
 * A watchdog for what a tool or test starts outside itself (a Redis
 * Cluster, a temporary directory): a process in a session of its own that
 * runs argv once its owner is gone, however it went (exit, a crash,
 * SIGKILL, a timeout's kill). It waits for EOF on a pipe whose write end only
 * the owner holds (O_CLOEXEC, so the owner's children do not keep it); it is
 * double-forked, so nobody has to reap it, and ignores SIGINT and SIGTERM.
 */
#pragma once

/* Starts it; returns the pipe's write end (close it to run argv now), or
 * -errno. argv[0] is a path; argv is copied by the fork. */
int kvd_watchdog_start(const char *const *argv);

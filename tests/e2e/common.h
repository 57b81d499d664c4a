/* SPDX-License-Identifier: MIT */
/*
 * Shared bits of the end-to-end suites: a small model geometry, seeded and
 * random block contents, child processes, stats look-ups.
 *
 * Child processes (e2e_fork) must not use Check's assertions: they return
 * non-zero through CHILD_ASSERT and the test asserts on their exit status.
 */
#pragma once

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "daemon.h"

#define E2E_TCASE_TIMEOUT 60
#define E2E_CHILD_TIMEOUT_MS 45000

/* 4 layers, 2 kv heads x 64 dims, f16, 16 tokens: 8 KiB blocks. */
#define E2E_LAYERS       4u
#define E2E_BLOCK_TOKENS 16u
#define E2E_BLOCK_BYTES  8192u
extern const struct kvc_geometry e2e_geom;

/* Fails the test (or the child, see CHILD_ASSERT) with a message. */
#define CHILD_ASSERT(cond, ...)                                                         \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        fprintf(stderr, "%s:%d: [child %d] '%s' failed: ", __FILE__,   \
                                __LINE__, (int)getpid(), #cond);                        \
                        fprintf(stderr, __VA_ARGS__);                                   \
                        fputc('\n', stderr);                                            \
                        return 1;                                                       \
                }                                                                       \
        } while (0)

/* Starts a fixture daemon with extra arguments, or fails the test. */
#define E2E_START(d, ...)                                                               \
        do {                                                                            \
                const char *const e2e_args_[] = { __VA_ARGS__ NULL };                   \
                int e2e_rc_ = kvd_test_daemon_start((d), e2e_args_);                    \
                ck_assert_msg(e2e_rc_ == 0, "daemon start: %s", (d)->error);            \
        } while (0)

/* Stops it and asserts a clean exit (status 0: no sanitizer report). */
#define E2E_STOP(d)                                                                     \
        do {                                                                            \
                int e2e_rc_ = kvd_test_daemon_stop(d);                                  \
                ck_assert_msg(e2e_rc_ == 0, "daemon stop: %s", (d)->error);             \
        } while (0)

/* Asserts a libkvclient call returned want (a count, or a -error). */
#define E2E_ASSERT_RC(c, expr, want)                                                    \
        do {                                                                            \
                int e2e_got_ = (expr);                                                  \
                ck_assert_msg(e2e_got_ == (want), "%s = %d (%s; daemon said: '%s'), want %d", \
                              #expr, e2e_got_, e2e_got_ < 0 ? kvc_strerror(e2e_got_) : "ok", \
                              (c) ? kvc_last_error(c) : "", (int)(want));               \
        } while (0)

uint64_t e2e_splitmix(uint64_t *state);

/* Deterministic bytes from seed. */
void e2e_fill_seed(void *buf, size_t n, uint64_t seed);

/* Deterministic content of block (key, layer) in "version" salt. */
void e2e_fill_block(void *buf, size_t n, const struct kvc_key *k, uint32_t layer, uint64_t salt);

/* Random bytes (getrandom). 0 or -errno. */
int e2e_random(void *buf, size_t n);

/* n token ids from seed. */
void e2e_tokens(uint32_t *tok, size_t n, uint64_t seed);

/* Writes/reads a whole file (read: exactly n bytes). 0 or -errno. */
int e2e_write_file(const char *path, const void *buf, size_t n);
int e2e_read_file(const char *path, void *buf, size_t n);

/* Forks; the child runs fn(arg) and _exits with its return value. */
pid_t e2e_fork(int (*fn)(void *), void *arg);

/* As e2e_fork(), but the child first becomes uid/gid with the n
 * supplementary groups (root only; the child exits 1 if it cannot). */
pid_t e2e_fork_as(uid_t uid, gid_t gid, const gid_t *groups, size_t n, int (*fn)(void *), void *arg);

/*
 * Waits up to timeout_ms for child pid (SIGKILLs it after) and describes
 * how it ended in why. Returns its raw wait status, or -ETIMEDOUT.
 */
int e2e_wait_child(pid_t pid, int timeout_ms, char *why, size_t size);

/*
 * Runs $KVDRIVE_BENCH with args (NULL-terminated; at most 38) and
 * TMPDIR=tmp, up to timeout_ms; its stdout and stderr are returned in
 * *ret_out and *ret_err (malloc'd, NUL-terminated; the files stdout and
 * stderr in tmp). Returns its raw wait status; asserts on a timeout.
 */
int e2e_run_bench(const char *tmp, const char *const *args, int timeout_ms, char **ret_out, char **ret_err);

/* Asserts that child pid exits 0 within E2E_CHILD_TIMEOUT_MS. */
#define E2E_ASSERT_CHILD_OK(pid, what)                                                  \
        do {                                                                            \
                char e2e_why_[96];                                                      \
                int e2e_st_ = e2e_wait_child((pid), E2E_CHILD_TIMEOUT_MS, e2e_why_,    \
                                             sizeof(e2e_why_));                         \
                ck_assert_msg(e2e_st_ == 0, "%s: %s (its stderr is above)", (what),     \
                              e2e_why_);                                                \
        } while (0)

/* The tier / namespace named name in s, or NULL. */
const struct kvc_tier_stats *e2e_tier(const struct kvc_stats *s, const char *name);
const struct kvc_ns_stats *e2e_ns(const struct kvc_stats *s, const char *name);

/*
 * Polls stats until clients == want (up to timeout_ms). Returns 0 or
 * -ETIMEDOUT (or a kvc error); *ret_last gets the last count seen.
 */
int e2e_wait_clients(kvc_client *c, uint32_t want, int timeout_ms, uint32_t *ret_last);

/* kvc_connect + kvc_register_namespace(name, e2e_geom), for children. */
int e2e_open(const char *sock, const char *client, const char *ns_name, kvc_client **ret_c,
             uint32_t *ret_ns);

/* Index of the first differing byte of a and b, or -1 if equal. */
long e2e_memdiff(const void *a, const void *b, size_t n);

/* Whether all n bytes of buf are byte. */
bool e2e_all_bytes(const void *buf, size_t n, uint8_t byte);

/*
 * Waiting for what the daemon does in the background (demotions, staged
 * reads, the scheduler's measurement windows): poll its stats until a
 * condition holds, within a deadline generous enough for a loaded CI
 * machine and a sanitized build. A test asserts on the outcome, never on
 * how long it took.
 */
#define E2E_WAIT_MS 30000

/* CLOCK_MONOTONIC in ms (the daemon's clock too). */
int64_t e2e_now_ms(void);

typedef bool (*e2e_stats_pred)(const struct kvc_stats *s, void *arg);

/*
 * Polls kvc_stats_get every 10 ms until pred(stats, arg) holds or timeout_ms
 * passes. Returns 0 (the condition held) or -ETIMEDOUT, or a kvc error;
 * *ret_last (if not NULL) gets the last stats seen (the caller frees them
 * with kvc_stats_free), so that a failed wait can say what it saw.
 */
int e2e_wait_stats(kvc_client *c, e2e_stats_pred pred, void *arg, int timeout_ms, struct kvc_stats **ret_last);

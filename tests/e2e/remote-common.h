/* SPDX-License-Identifier: MIT */
/*
 * A real Redis Cluster for the remote-tier suites: N masters on loopback,
 * run by tools/redis-cluster (its path: $KVDRIVE_REDIS_CLUSTER, else the
 * source tree's, built in by tests/e2e/meson.build).
 *
 * The nodes are daemons in their own sessions: neither Check's killing of a
 * timed-out test nor the test's exit ends them. Start and stop a suite's
 * cluster in an unchecked fixture (it runs in Check's runner process, not in
 * the forked test, so the stop runs even after a test failed or crashed):
 *
 *     tcase_add_unchecked_fixture(tc, e2e_cluster_setup, e2e_cluster_teardown);
 *
 * and use &e2e_fixture_cluster in the tests; one cluster per TCase. A test
 * that kills or pauses a node leaves it so for the next tests of its TCase:
 * it restarts or resumes it, or has a TCase of its own. Beyond that, the
 * process that started a cluster stops it at exit, and a watchdog process
 * stops it and removes its directory when that process dies without exiting
 * (SIGKILL, a meson timeout).
 *
 * Functions return 0 (e2e_redis_cli*: a length) or -errno; tools/redis-cluster
 * says why on the test's stderr. Nothing here uses Check but
 * e2e_cluster_setup().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define E2E_CLUSTER_MAX 8u
/* A start, restart or reshard: tools/redis-cluster's own deadlines (30 s for
 * the cluster to agree) and some. */
#define E2E_CLUSTER_TIMEOUT_MS 90000
#define E2E_REDIS_CLI_TIMEOUT_MS 10000

struct e2e_cluster {
        char dir[256];          /* the tools/redis-cluster DIR; "" when not started */
        char seeds[256];        /* 127.0.0.1:P1,127.0.0.1:P2,... (the remote tier's seeds) */
        int ports[E2E_CLUSTER_MAX]; /* node i (1-based) listens on ports[i - 1] */
        unsigned n;             /* masters */
};

/*
 * Starts a cluster of masters (1..E2E_CLUSTER_MAX; 0 means 3) in a fresh
 * temporary directory, on free ports of its own, and waits until it serves
 * every slot. cl needs no initialisation. 0, or -errno with why in why
 * (NUL-terminated); on failure nothing is left running and cl is as if
 * stopped.
 */
int e2e_cluster_start(struct e2e_cluster *cl, unsigned masters, char *why, size_t size);

/* Stops every node, removes the directory and zeroes cl. Accepts a zeroed or
 * stopped cluster; safe to call twice. */
void e2e_cluster_stop(struct e2e_cluster *cl);

/* Node i (1-based): SIGKILL ("a node going away"; its keys are lost: the
 * nodes keep no data on disk), SIGSTOP (a node that stops answering),
 * SIGCONT. 0, -EINVAL (no node i) or -EIO. */
int e2e_cluster_kill(struct e2e_cluster *cl, unsigned i);
int e2e_cluster_pause(struct e2e_cluster *cl, unsigned i);
int e2e_cluster_resume(struct e2e_cluster *cl, unsigned i);

/* Starts node i again (stopping it first if it runs) on its port, and waits
 * until the cluster is ok: every node up and all slots served. */
int e2e_cluster_restart(struct e2e_cluster *cl, unsigned i);

/* Waits until the cluster is ok (after a resume, say). 0 or -EIO. */
int e2e_cluster_wait(struct e2e_cluster *cl);

/* Moves slots slots, and their keys, from node from to node to, and waits
 * until the cluster is ok. */
int e2e_cluster_reshard(struct e2e_cluster *cl, unsigned from, unsigned to, unsigned slots);

/*
 * Runs redis-cli -c (following redirects to the node serving the key) with
 * the arguments arg, ... (NULL-terminated; at most 32), connected to the
 * first node that runs and is not paused. out (size bytes) gets its
 * stdout, the reply as --raw prints it without its final newline, and a NUL
 * after it; the reply may hold NULs (GET of a block), so the length is
 * returned. For tests that look at or damage what the remote tier stored:
 *
 *     e2e_redis_cli(cl, out, sizeof(out), "SETRANGE", key, "300", "xyz", NULL)
 *
 * Returns the length (>= 0); -ENOBUFS if the reply did not fit (out holds
 * its first size - 1 bytes); -EREMOTEIO for an error reply or a node it
 * could not reach, out then holding what redis-cli said; -ETIMEDOUT after
 * E2E_REDIS_CLI_TIMEOUT_MS (a paused node serves the key); -EINVAL;
 * -ENOENT if no node runs.
 */
int e2e_redis_cli(const struct e2e_cluster *cl, char *out, size_t size, const char *arg, ...)
        __attribute__((sentinel));

/* The same against node i only, without -c: DBSIZE, FLUSHALL, KEYS on each
 * node. */
int e2e_redis_cli_node(const struct e2e_cluster *cl, unsigned i, char *out, size_t size, const char *arg, ...)
        __attribute__((sentinel));

/* Whether redis-server and redis-cli are installed (on PATH, or where
 * $REDIS_SERVER and $REDIS_CLI say): suites skip only when they are not. */
bool e2e_have_redis(void);

/* The unchecked fixture: a 3-master e2e_fixture_cluster, or the TCase
 * fails; and its stop. */
extern struct e2e_cluster e2e_fixture_cluster;
void e2e_cluster_setup(void);
void e2e_cluster_teardown(void);

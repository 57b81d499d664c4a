/* SPDX-License-Identifier: MIT */
/*
 * The unit test's Redis Cluster: NODES redis-servers on loopback in a
 * temporary directory, joined into one cluster with redis-cli; each process
 * stops the servers it started at exit (Check forks each test).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define NODES 3
#define MSEC 1000000ull

struct cluster {
        bool ok;
        char dir[64];
        int port[NODES];
        pid_t pid[NODES];
        char id[NODES][64];
};

/* The test case's cluster. Started in the runner's process (an unchecked
 * fixture); the tests, forked from it, see a copy. */
extern struct cluster cl;

/* In main(), before the runner: this process owns the cluster's directory. */
void cluster_init(void);
/* The fixture: starts a fresh cluster (cl.ok says whether it came up); stops it. */
void cluster_start(void);
void cluster_stop(void);
/* Starts node i's redis-server again (on its port, with its files). */
void spawn_redis(int i);
/* Runs redis-cli -h 127.0.0.1 -p port args... (NULL-terminated), its output
 * into out. Returns its exit status, -1. */
int __attribute__((sentinel)) cli(char *out, size_t size, int port, ...);

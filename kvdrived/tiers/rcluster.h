/* SPDX-License-Identifier: MIT */
/*
 * A Redis Cluster client for one thread that never blocks: one non-blocking
 * TCP connection per node, requests pipelined per node and answered in order,
 * an epoll set of its own whose fd the caller polls. It follows the cluster
 * spec: the slot map from CLUSTER SLOTS (fetched at start, refreshed after a
 * MOVED or a node failure, at most about once a second while errors go on),
 * -MOVED updates the slot and resends, -ASK resends once after ASKING, a
 * node that fails or stops answering is closed, marked down and reconnected
 * with backoff (100 ms doubling to 2 s). While a node is down, requests for
 * its slots fail at once (-EHOSTDOWN), never wait for it.
 *
 * Threads: everything, done callbacks included, runs on the thread that calls
 * kvd_rc_run(); no function here may be called from another thread at the
 * same time. To wake that thread from others, poll an eventfd of your own
 * beside kvd_rc_fd().
 *
 * Hostnames (in the seeds or in the cluster's answers) are resolved with
 * getaddrinfo() when a node is first connected, which may block on DNS:
 * give IP addresses where that matters.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define KVD_RC_KEY_MAX 96
#define KVD_RC_LAT_BUCKETS 32
#define KVD_RC_SLOTS 16384
/* The longest value a SET may send (Redis's proto-max-bulk-len default). */
#define KVD_RC_VALUE_MAX (512u << 20)

enum kvd_rc_op { KVD_RC_GET, KVD_RC_SET, KVD_RC_EXISTS };

struct kvd_rc;

/*
 * One request. The caller allocates it (and keeps it, its key and its
 * buffers in place) and fills the "in" fields; from kvd_rc_submit() until its
 * done callback runs it belongs to the client, and the caller touches
 * nothing in it. done runs exactly once, from kvd_rc_run() or kvd_rc_free(),
 * never from kvd_rc_submit(); it may submit requests (this one included) but
 * must not free the client.
 */
struct kvd_rc_req {
        /* in */
        enum kvd_rc_op op;
        char key[KVD_RC_KEY_MAX];
        uint32_t keylen;
        /* SET: the value is iov[0..n_iov) concatenated (n_iov 0 to 2), sent from those buffers
         * (no copy: they stay valid until done runs); ttl_ms 0: no TTL, else SET .. PX ttl_ms.
         * GET: the value is scattered into iov[0..n_iov) in order, if its length is exactly the
         * sum of their lengths; otherwise nothing is written into them and result is -EMSGSIZE.
         * EXISTS: iov unused. */
        struct iovec iov[2];
        unsigned n_iov;
        /* GET: a value shorter than the iovs is taken too, if it fills iov[0]
         * (the rest goes into the last iov; value_len says how long it was). */
        bool up_to;
        uint64_t ttl_ms;
        uint64_t deadline_ns;   /* CLOCK_MONOTONIC (kvd_now_ns()); 0: submit sets it to now + timeout_ms */
        void (*done)(struct kvd_rc_req *r);     /* runs on the client's thread, once */
        void *ctx;
        /* out */
        int result;             /* 0: done (GET copied, SET stored, EXISTS true); -ENOENT: GET nil or
                                 * EXISTS 0; -EMSGSIZE (GET: the value's length is not the iovs'; SET:
                                 * over KVD_RC_VALUE_MAX); -ETIMEDOUT (its deadline passed, or
                                 * its node's connect timed out); -EHOSTDOWN (node down, or no
                                 * node for the slot); -ECONNRESET/-ECONNREFUSED (the node's connection
                                 * failed with this request on it); -EIO (error reply, protocol error,
                                 * too many redirections); -EINVAL (bad op, keylen or n_iov);
                                 * -ECANCELED (client freed) */
        uint32_t value_len;     /* GET: the value's length when one came */
        int node;               /* the node that answered (kvd_rc_node_stats index), -1 */
        uint8_t redirects;      /* MOVED and ASK followed */
        /* private to rcluster.c */
        struct kvd_rc_req *next;
        uint64_t sent_ns;
        uint64_t wire_len;      /* bytes of the command on the wire */
        uint16_t slot;
        uint8_t kind;           /* user, or the client's own PING / CLUSTER SLOTS */
        uint8_t flags;
        uint8_t hdr_len, tail_len;
        char hdr[KVD_RC_KEY_MAX + 64];  /* [ASKING], then the command up to the value */
        char tail[40];                  /* SET: after the value */
};

struct kvd_rc_config {
        const char *seeds;              /* "host:port[,host:port...]", IPv6 as [addr]:port;
                                         * an optional "redis-cluster://" prefix is skipped;
                                         * read by kvd_rc_new() only */
        uint32_t connect_timeout_ms;    /* 0: 200 */
        uint32_t timeout_ms;            /* 0: 500 (a request's deadline when it gives none) */
        uint32_t max_redirects;         /* 0: 5 */
};

struct kvd_rc_node_stats {
        char addr[64];                  /* "host:port" */
        bool up;                        /* not marked down */
        uint32_t slots;                 /* in the current map */
        uint64_t requests, hits, misses, read_bytes, write_bytes;
        uint64_t errors, timeouts, moved, ask;
        uint64_t latency_us_sum, latency_us_max, latency_hist[KVD_RC_LAT_BUCKETS]; /* [b]: [2^(b-1), 2^b) us */
};

/* Checks a seed list (the syntax only; nothing is resolved). Returns the
 * number of seeds (> 0), or -EINVAL with why (if not NULL) saying what is
 * wrong, for the caller to log. */
int kvd_rc_parse_seeds(const char *seeds, char *why, size_t why_size);

/* Parses the seeds (-EINVAL for a bad list: kvd_rc_parse_seeds() says why)
 * and prepares to fetch the slot map, which the first kvd_rc_run() starts;
 * connects nothing here. -ENOMEM, or epoll's errno. *ret_rc is the
 * caller's to kvd_rc_free(); untouched on failure. */
int kvd_rc_new(const struct kvd_rc_config *cfg, struct kvd_rc **ret_rc);
/* Fails what is queued or in flight with -ECANCELED (done runs; requests
 * that had ended already get their own result), closes, frees. NULL ok. */
struct kvd_rc *kvd_rc_free(struct kvd_rc *rc);
/* Queues r (routed and sent during the next kvd_rc_run). r belongs to the
 * client until r->done runs. Requests submitted before the slot map arrives
 * wait for it, within their deadlines. */
void kvd_rc_submit(struct kvd_rc *rc, struct kvd_rc_req *r);
/* The epoll fd to poll for readability, and how long until kvd_rc_run must
 * run even without events (the nearest deadline, connect timeout, reconnect
 * or refresh; 0 while submitted requests or finished callbacks wait for it;
 * -1: none). Call kvd_rc_timeout_ms() after each kvd_rc_run() and after
 * submitting. */
int kvd_rc_fd(const struct kvd_rc *rc);
int kvd_rc_timeout_ms(const struct kvd_rc *rc);
/* Does all the I/O it can without blocking (a bounded amount per node: a
 * socket with more to read keeps the epoll fd readable) and completes what
 * ended (done callbacks). */
void kvd_rc_run(struct kvd_rc *rc);

/* Nodes are numbered from 0 in the order first seen (the seeds first) and
 * never renumbered; a node no longer in the map stays, with 0 slots. */
unsigned kvd_rc_node_count(const struct kvd_rc *rc);
/* *ret zeroed if i is out of range. */
void kvd_rc_node_stats(const struct kvd_rc *rc, unsigned i, struct kvd_rc_node_stats *ret);
/* Full slot maps received and applied. */
uint64_t kvd_rc_slot_map_refreshes(const struct kvd_rc *rc);
/* The slot of a key (CRC16-XMODEM with hash tags, as the cluster spec): exported for the tests. */
unsigned kvd_rc_key_slot(const char *key, size_t len);

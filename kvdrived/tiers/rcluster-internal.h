/* SPDX-License-Identifier: MIT */
/*
 * The Redis Cluster client's insides, shared by its two halves: rcluster.c
 * (nodes, connections, writes, timers, the API) and rcluster-reply.c
 * (parsing replies and acting on them). Not for use outside tiers/rcluster*.
 */
#pragma once

#include <hiredis/read.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "rcluster.h"

#define MS 1000000ull
#define DEFAULT_CONNECT_TIMEOUT_MS 200
#define DEFAULT_TIMEOUT_MS 500
#define DEFAULT_MAX_REDIRECTS 5
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
/* Full map refreshes, at most one per interval while errors go on. */
#define REFRESH_INTERVAL_MS 1000
/* No node to ask for the map: look again after this. */
#define REFRESH_RECHECK_MS 100
#define MAX_NODES 256
#define MAX_SEEDS 64
#define HOST_MAX 56             /* so that "host:port" fits kvd_rc_node_stats.addr */
#define RBUF_SIZE (256u << 10)
/* Bytes read from one node per kvd_rc_run(), so that one busy node does not
 * starve the others; what is left keeps the (level-triggered) epoll fd readable. */
#define READ_BUDGET (4u << 20)
/* The reader's buffer is kept between replies up to this size, so that large
 * values do not regrow it from nothing each time. */
#define READER_KEEP (16u << 20)
/* What the reader is fed at a time: after each reply it has read past 1 KiB
 * of, hiredis moves what follows to its buffer's start, so a whole receive of
 * small replies at once would be moved hundreds of times. */
#define FEED_SLICE (16u << 10)
#define WRITE_IOVS 64
#define EVENTS_BATCH 64
#define TEXT_MAX 128            /* status and error replies, cut */
#define ARRAY_MAX 65536         /* elements of one array reply (CLUSTER SLOTS: one per range) */
#define NO_NODE UINT16_MAX

enum kind { RQ_USER, RQ_PING, RQ_SLOTS };

enum {
        F_ASK = 1,              /* send ASKING before it, once */
        F_ASKING_PENDING = 2,   /* ASKING's reply comes before its own */
};

enum conn { CONN_CLOSED, CONN_CONNECTING, CONN_OPEN };

/* A reply as the reader builds it. The top of a reply that is not an array is
 * its node's `top` (nothing allocated per reply); arrays and what they hold
 * are allocated (only CLUSTER SLOTS answers with arrays). */
struct obj {
        int type;               /* REDIS_REPLY_* */
        bool heap;
        long long integer;
        size_t len;             /* strings: the whole length (top: str holds at most TEXT_MAX - 1) */
        char *str;
        size_t n;
        struct obj **elem;
};

struct fifo {
        struct kvd_rc_req *head, *tail;
};

struct node {
        struct kvd_rc *rc;
        unsigned idx;
        char host[HOST_MAX + 1];
        uint16_t port;
        int fd;
        enum conn conn;
        uint32_t events;                /* registered with epoll; 0: none */
        bool down;
        uint32_t backoff_ms;
        uint64_t retry_ns;              /* down: the next connection attempt */
        uint64_t connect_deadline_ns;
        redisReader *reader;
        /* Sent requests (in flight, answered in order), then unsent ones. */
        struct fifo q;
        struct kvd_rc_req *last_sent;   /* the newest sent one still in q; NULL: none */
        struct kvd_rc_req *unsent;      /* the first not wholly written; NULL: none */
        uint64_t out_off;               /* bytes of *unsent written */
        struct obj top;
        char text[TEXT_MAX];
        struct kvd_rc_req ping;         /* probe of a node that is down */
        uint32_t slots;
        struct kvd_rc_node_stats st;    /* addr, up and slots filled when asked */
};

struct kvd_rc {
        uint64_t connect_timeout_ns, timeout_ns;
        uint32_t connect_timeout_ms, timeout_ms, max_redirects;
        int epfd;
        redisReplyObjectFunctions fns;  /* the readers keep a pointer to it */
        struct node *nodes[MAX_NODES];
        unsigned n_nodes;
        bool have_map;
        uint16_t owner[KVD_RC_SLOTS];
        uint16_t scratch[KVD_RC_SLOTS]; /* the map being parsed */
        struct fifo incoming;           /* submitted, not routed yet */
        struct fifo wait_map;           /* routed before the first map */
        struct fifo done;               /* ended, callbacks to run */
        bool freeing;
        bool refresh_due, refresh_inflight, refresh_failing;
        uint64_t refresh_at_ns, refresh_start_ns;
        unsigned refresh_next;          /* round robin over the nodes */
        uint64_t refreshes;
        struct kvd_rc_req slots_req;
        char *rbuf;
};


/* Shared by rcluster.c (connections, timers, the API) and rcluster-reply.c
 * (the reader's object functions and what each reply does). */
struct kvd_rc_req *rc_fifo_pop(struct fifo *f);
void rc_complete(struct kvd_rc *rc, struct kvd_rc_req *r, int result);
uint64_t rc_value_bytes(const struct kvd_rc_req *r);
void rc_why_set(char *why, size_t why_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int rc_split_addr(const char *s, size_t len, char host[HOST_MAX + 1], uint16_t *ret_port);
int rc_node_get(struct kvd_rc *rc, const char *host, uint16_t port, struct node **ret_node);
void rc_map_set(struct kvd_rc *rc, unsigned slot, struct node *n);
void rc_schedule_refresh(struct kvd_rc *rc, uint64_t now, bool soon);
void rc_send_to(struct node *n, struct kvd_rc_req *r, uint64_t now);
void rc_node_fail(struct node *n, int res, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void rc_node_up(struct node *n);

/* rcluster-reply.c: reads what a node sent and acts on each whole reply. */
void rc_node_read(struct node *n);
/* The hiredis reader's object functions (the readers keep a pointer). */
extern const redisReplyObjectFunctions rc_reply_fns;

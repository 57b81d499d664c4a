/* SPDX-License-Identifier: MIT */
/* Private to kvdrived/server/: sessions and the dispatcher. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "access.h"
#include "cache.h"
#include "config.h"
#include "counters.h"
#include "device.h"
#include "kvdrive.pb-c.h"
#include "loop.h"
#include "prefetch.h"
#include "xfer.h"


/*
 * Work of one request done in slices, so that no request holds the loop
 * for long (a Lookup or Delete visits keys x layers, a drop every index
 * record). step() does at most budget units and returns true once the
 * request is finished and answered; free() then releases it. A session's
 * tasks run in order, one slice per turn of the loop, the sessions with
 * tasks taking turns; a task outlives a closed session (its reply is then
 * dropped), so a drop always finishes.
 */
struct kvd_task {
        struct kvd_task *next;
        struct kvd_session *ss;         /* referenced */
        bool (*step)(struct kvd_task *t, uint32_t budget);
        void (*free)(struct kvd_task *t);
        bool uncounted;         /* its request counts in the session's inflight already */
};

#define KVD_TURN_BUCKETS 32
#define KVD_REQ_TYPES 64      /* Request body cases counted apart (above: in 0) */
#define KVD_ERR_CODES 64      /* ErrorCode values counted apart (above: in 0) */

/* Units (index probes) per slice. */
#define KVD_TASK_SLICE 2048u

struct outmsg {
        struct outmsg *next;
        size_t len;
        uint8_t data[];         /* packed Response, without the frame header */
};

struct kvd_session {
        struct kvd_loop_watch w;
        struct kvd_server *server;
        unsigned refs;          /* the server's list + each request in flight */
        bool closed;
        bool hello;
        uint64_t id;
        struct ucred cred;
        struct kvd_peer peer;   /* who it is, for access checks */
        char name[64];
        /* Per namespace id: 0 not joined, else KVD_NS_JOINED | enum kvd_right. */
        uint8_t *ns_rights;
        struct kvd_peer_pool **pools;
        uint32_t n_pools;
        uint64_t pool_bytes;    /* charged to the peer's uid (kvd_cache_pool_charge) */
        /* The counter page (RegisterCounters), NULL if none; requests in
         * flight that count hold their own references. */
        struct kvd_counters *counters;
        uint32_t inflight;
        struct kvd_task *tasks_head, *tasks_tail; /* in order */
        struct kvd_session *task_next;  /* in the server's queue of sessions with tasks */
        bool task_queued;
        struct outmsg *outq_head, *outq_tail;
        uint64_t outq_bytes;
        bool want_write;
        struct kvd_session *prev, *next;
};

struct kvd_server {
        const struct kvd_config *cfg;
        struct kvd_cache *cache;
        struct kvd_xfer *xfer;
        struct kvd_cuda *cuda;  /* NULL: CUDA pools refused */
        uint32_t pools[2];      /* of connected sessions, per enum kvd_backend */
        struct kvd_loop loop;   /* every fd the daemon waits on */
        struct kvd_loop_watch sig_w, timer_w;
        void (*reload)(void *userdata); /* on SIGHUP (kvd_server_on_reload) */
        void *reload_data;
        int status;             /* of the loop turn: -ECANCELED once a signal said stop */
        char last_status[160];  /* last STATUS= sent to the service manager */
        struct kvd_listener {
                struct kvd_loop_watch w;
                struct kvd_server *server;
        } listeners[8];
        unsigned n_listeners;
        bool bound_path;        /* we created cfg->socket: unlink on exit */
        struct kvd_session *sessions;
        struct kvd_session *graveyard; /* closed this loop turn: freed after it */
        uint32_t n_sessions;
        uint64_t sessions_total;
        uint64_t next_session_id;
        uint64_t requests, errors;
        /* Requests by type (the Request body case; 0: not decoded) and
         * Errors sent by code, for the metrics endpoint. */
        uint64_t requests_by_type[KVD_REQ_TYPES], errors_by_code[KVD_ERR_CODES];
        struct kvd_metrics *metrics;    /* NULL: metrics-listen off */
        uint64_t started_ms;
        struct kvd_prefetch prefetch;   /* the adaptive scheduler, core's */
        /* Busy turns of the loop: the CPU time each took, a histogram by
         * powers of two of microseconds (bucket b: [2^(b-1), 2^b) us). */
        uint64_t turns, turn_max_ns, turn_ns_sum, turn_hist[KVD_TURN_BUCKETS];
        /* Sessions with tasks, FIFO through task_next: the next to run first. */
        struct kvd_session *task_first, *task_last;
        uint8_t *rxbuf;
        size_t rxcap;
};

/* session.c */
int kvd_session_accept(struct kvd_server *s, int listen_fd);
/* Serves connected non-blocking fd (taken) as a new session: 1, 0 when
 * refused (max-clients; the client is told why), or -errno. */
int kvd_session_add(struct kvd_server *s, int fd);
void kvd_session_readable(struct kvd_session *ss);
void kvd_session_writable(struct kvd_session *ss);
/* The session's loop callback: writable, then readable, unless closed. */
void kvd_session_event(struct kvd_loop_watch *w, uint32_t events);
void kvd_session_close(struct kvd_session *ss, const char *why);
/* Drops the server's references to sessions closed since the last call. */
void kvd_session_bury(struct kvd_server *s);
struct kvd_session *kvd_session_ref(struct kvd_session *ss);
struct kvd_session *kvd_session_unref(struct kvd_session *ss);
/* Packs and sends (or queues) a response; a no-op on a closed session. */
void kvd_session_send(struct kvd_session *ss, const Kvdrive__Response *resp);
void kvd_session_send_error(struct kvd_session *ss, uint64_t id, Kvdrive__ErrorCode code,
                            const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define KVD_NS_JOINED 0x80u

/* dispatch.c: handles one received frame (buf, n as kvd_frame_recv gave;
 * fds are owned by the dispatcher from here on). Returns the units of work
 * (items, index probes) it did at once, for the session's read budget. */
uint32_t kvd_dispatch(struct kvd_session *ss, const uint8_t *buf, size_t n, int *fds, unsigned nfds);

/* What the session's peer may do on ns under the config's shares (enum
 * kvd_right; 0: it may not even see it). */
unsigned kvd_peer_rights(const struct kvd_session *ss, const struct kvd_ns *ns);

/* stats.c: answers a Stats request; a geometry as the protocol has it. */
void kvd_handle_stats(struct kvd_session *ss, uint64_t id);
void kvd_geometry_wire(const struct kvd_geometry *g, Kvdrive__Geometry *ret);

/* admin.c: kvdrivectl's requests (each replies, an error included).
 * Evict returns the units of work it did at once, as kvd_dispatch(). */
void kvd_handle_list_clients(struct kvd_session *ss, uint64_t id);
void kvd_handle_list_namespaces(struct kvd_session *ss, uint64_t id);
uint32_t kvd_handle_evict(struct kvd_session *ss, uint64_t id, const Kvdrive__Evict *m);
void kvd_handle_flush(struct kvd_session *ss, uint64_t id);
void kvd_handle_get_config(struct kvd_session *ss, uint64_t id);
void kvd_handle_shutdown(struct kvd_session *ss, uint64_t id);

/* server.c: queues t behind ss's other tasks (ss->inflight counts it until
 * it is freed). */
void kvd_task_queue(struct kvd_session *ss, struct kvd_task *t);
/* Runs one slice of each session's first task; true if tasks remain. */
bool kvd_tasks_run(struct kvd_server *s);

uint64_t kvd_now_ms(void);


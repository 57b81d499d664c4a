/* SPDX-License-Identifier: MIT */
/*
 * The connection: Hello, request ids, in-flight Put/Get requests and their
 * out-of-order replies, and the synchronous calls.
 *
 * Every reply that arrives is matched to its request at once, whoever is
 * waiting: a completed Put/Get stays in the pending list (done, with its
 * result) until kvc_wait() reaps it. Synchronous calls wait for their own id
 * and record every other reply meanwhile.
 */
#include "client-internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"

/* A max_frame above this in a HelloReply is nonsense, not a reason to
 * allocate it. */
#define MAX_FRAME_SANE (16u * 1024u * 1024u)

struct pending {
        uint64_t id;
        Kvdrive__Response__BodyCase kind;       /* PUT, GET or PREFETCH */
        uint32_t n;
        uint8_t *ret_status;                    /* n bytes or NULL, the caller's */
        bool asked;                             /* a Get that carried a compute time */
        bool done;
        int result;                             /* once done: items done or -error */
};

struct kvc_client {
        int fd;
        int broken;                     /* 0, or the error that ended the connection */
        uint64_t next_id;
        uint32_t max_frame;
        uint32_t max_items;
        uint32_t compute_us;            /* kvc_set_compute_hint() */
        uint32_t poll_us;               /* kvc_set_poll_us() */
        uint64_t poll_off_until_ns;     /* no polling before: the CPU was contended */
        long preemptions;               /* involuntary switches of the last polling thread */
        int prefetch_depth;             /* the scheduler's latest answer, -ENODATA: none yet */
        char *daemon_version;
        uint8_t *sbuf;                  /* max_frame: one packed request */
        uint8_t *rbuf;                  /* max_frame + header: one received frame */
        struct pending *pending;
        size_t n_pending;
        size_t cap_pending;
        char last_error[256];
};

static const char *const daemon_errors[] = {
        [KVC_E_MALFORMED - KVC_E_BASE] = "Malformed message",
        [KVC_E_TRUNCATED - KVC_E_BASE] = "Truncated message",
        [KVC_E_TOO_LARGE - KVC_E_BASE] = "Message too large",
        [KVC_E_UNKNOWN_TYPE - KVC_E_BASE] = "Unknown request type",
        [KVC_E_VERSION - KVC_E_BASE] = "Protocol version not supported",
        [KVC_E_NO_HELLO - KVC_E_BASE] = "Request before Hello",
        [KVC_E_NO_NAMESPACE - KVC_E_BASE] = "Unknown namespace",
        [KVC_E_NO_POOL - KVC_E_BASE] = "Unknown pool",
        [KVC_E_OUT_OF_RANGE - KVC_E_BASE] = "Slot or layer out of range",
        [KVC_E_GEOMETRY - KVC_E_BASE] = "Invalid geometry",
        [KVC_E_NS_CONFLICT - KVC_E_BASE] = "Namespace exists with another geometry",
        [KVC_E_LIMIT - KVC_E_BASE] = "Daemon limit reached",
        [KVC_E_BAD_ARG - KVC_E_BASE] = "Invalid argument",
        [KVC_E_NO_SPACE - KVC_E_BASE] = "No space in the cache",
        [KVC_E_INTERNAL - KVC_E_BASE] = "Internal daemon error",
        [KVC_E_UNSUPPORTED - KVC_E_BASE] = "Not supported by this daemon or host",
        [KVC_E_QUOTA - KVC_E_BASE] = "Quota exceeded",
        [KVC_E_DENIED - KVC_E_BASE] = "Not allowed on this namespace",
};

_public_ const char *kvc_strerror(int err)
{
        const char *s;

        if (err == INT_MIN)
                return "Unknown error";
        if (err < 0)
                err = -err;
        if (err == 0)
                return "Success";
        if (err > KVC_E_BASE) {
                size_t i = (size_t)(err - KVC_E_BASE);

                if (i < sizeof(daemon_errors) / sizeof(daemon_errors[0]) && daemon_errors[i])
                        return daemon_errors[i];
                return "Unknown daemon error";
        }
        /* Unlike strerror(), a static string and thread-safe. */
        s = strerrordesc_np(err);
        return s ? s : "Unknown error";
}

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Before a wait for a reply sleeps: looks for it without sleeping for up to
 * poll_us (a reply that comes within finds us awake, and our CPU has not
 * gone idle: waking an idle CPU costs tens of us on a VM). Not while the
 * CPU is contended: a thread that polls there is preempted and waits a
 * scheduler slice, so an involuntary switch since the last poll turns
 * polling off for POLL_BACKOFF_NS. True if the socket became readable. */
#define POLL_BACKOFF_NS (100u * 1000000u)

static bool poll_briefly(kvc_client *c)
{
        struct rusage ru;
        uint64_t now, end;

        if (!c->poll_us)
                return false;
        now = now_ns();
        if (now < c->poll_off_until_ns || getrusage(RUSAGE_THREAD, &ru) < 0)
                return false;
        if (ru.ru_nivcsw != c->preemptions) {
                c->preemptions = ru.ru_nivcsw;
                c->poll_off_until_ns = now + POLL_BACKOFF_NS;
                return false;
        }
        end = now + (uint64_t)c->poll_us * 1000u;
        do {
                struct pollfd pfd = { .fd = c->fd, .events = POLLIN };

                if (poll(&pfd, 1, 0) > 0)
                        return true;
        } while (now_ns() < end);
        return false;
}

static ssize_t find_pending(const kvc_client *c, uint64_t id)
{
        for (size_t i = 0; i < c->n_pending; i++)
                if (c->pending[i].id == id)
                        return (ssize_t)i;
        return -1;
}

/* Marks the connection dead: every request in flight completes with err. */
static int set_broken(kvc_client *c, int err)
{
        if (!c->broken)
                c->broken = err;
        for (size_t i = 0; i < c->n_pending; i++) {
                if (c->pending[i].done)
                        continue;
                c->pending[i].done = true;
                c->pending[i].result = c->broken;
        }
        return c->broken;
}

static int wire_error(kvc_client *c, const Kvdrive__Error *e)
{
        if (!e || (int)e->code <= 0 || (int)e->code >= INT_MAX - KVC_E_BASE)
                return -EBADMSG;
        snprintf(c->last_error, sizeof(c->last_error), "%s", e->message ? e->message : "");
        return -(KVC_E_BASE + (int)e->code);
}

/* The result of a Put/Get from its reply: items done, or -error. */
static int transfer_result(kvc_client *c, const struct pending *p, const Kvdrive__Response *r)
{
        const Kvdrive__TransferReply *t;

        if (r->body_case == KVDRIVE__RESPONSE__BODY_ERROR)
                return wire_error(c, r->error);
        if (r->body_case != p->kind)
                return -EBADMSG;
        t = p->kind == KVDRIVE__RESPONSE__BODY_PUT ? r->put
            : p->kind == KVDRIVE__RESPONSE__BODY_GET ? r->get
                                                     : r->prefetch;
        if (!t || t->status.len != p->n || t->done > p->n)
                return -EBADMSG;
        if (p->asked)
                c->prefetch_depth = t->prefetch_depth > INT_MAX ? INT_MAX : (int)t->prefetch_depth;
        if (p->ret_status && p->n > 0)
                memcpy(p->ret_status, t->status.data, p->n);
        return (int)t->done;
}

/* Records a reply to a Put/Get in flight. Takes r. Returns whether it
 * completed a request. */
static bool record_reply(kvc_client *c, Kvdrive__Response *r)
{
        ssize_t i = find_pending(c, r->id);
        bool completed = false;

        if (i >= 0 && !c->pending[i].done) {
                c->pending[i].result = transfer_result(c, &c->pending[i], r);
                c->pending[i].done = true;
                completed = true;
        } else if (r->body_case == KVDRIVE__RESPONSE__BODY_ERROR && r->error) {
                /* Not ours to complete (e.g. id 0: a frame the daemon could
                 * not read); keep its message for kvc_last_error(). */
                wire_error(c, r->error);
        }
        kvdrive__response__free_unpacked(r, NULL);
        return completed;
}

/*
 * Receives one reply (flags: 0 or MSG_DONTWAIT). Returns 0 with *ret set,
 * -EAGAIN when nothing is there, or the error that broke the connection: a
 * bad frame leaves no way to tell which request it answered.
 */
static int recv_reply(kvc_client *c, int flags, Kvdrive__Response **ret)
{
        int fds[KVD_FRAME_MAX_FDS];
        unsigned nfds = 0;
        const uint8_t *payload;
        size_t len;
        Kvdrive__Response *r;
        ssize_t n;
        int err;

        if (c->broken)
                return c->broken;
        n = kvd_frame_recv(c->fd, c->rbuf, (size_t)c->max_frame + KVD_FRAME_HDR, fds, &nfds,
                           flags);
        /* The daemon sends no fds: do not leak any. */
        for (unsigned i = 0; i < nfds; i++)
                close(fds[i]);
        if (n == -EAGAIN)
                return -EAGAIN;
        if (n < 0)
                return set_broken(c, (int)n);
        if (n == 0)
                return set_broken(c, -ECONNRESET);
        err = kvd_frame_parse(c->rbuf, (size_t)n, c->max_frame, &payload, &len);
        if (err < 0)
                return set_broken(c, err);
        r = kvdrive__response__unpack(NULL, len, payload);
        if (!r)
                return set_broken(c, -EBADMSG);
        *ret = r;
        return 0;
}

/* Reads every reply already there. Returns the number of requests it
 * completed, or -errno. */
static int drain(kvc_client *c)
{
        int completed = 0;

        for (;;) {
                Kvdrive__Response *r = NULL;
                int err = recv_reply(c, MSG_DONTWAIT, &r);

                if (err == -EAGAIN)
                        return completed;
                if (err < 0)
                        return err;
                if (record_reply(c, r) && completed < INT_MAX)
                        completed++;
        }
}

/* Assigns req its id and sends it. When the socket is full, reads replies
 * while waiting for room, so that a daemon blocked on sending replies to us
 * cannot deadlock with us blocked on sending requests to it. */
static int send_request(kvc_client *c, Kvdrive__Request *req, int fd)
{
        size_t len;
        int err;

        if (c->broken)
                return c->broken;
        req->id = c->next_id++;
        len = kvdrive__request__get_packed_size(req);
        if (len > c->max_frame)
                return -E2BIG;
        kvdrive__request__pack(req, c->sbuf);
        for (;;) {
                struct pollfd pfd = { .fd = c->fd, .events = POLLIN | POLLOUT };

                err = kvd_frame_send(c->fd, c->sbuf, len, fd, MSG_DONTWAIT);
                if (err == 0)
                        return 0;
                if (err != -EAGAIN)
                        return set_broken(c, err);
                if (poll(&pfd, 1, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
                        err = drain(c);
                        if (err < 0)
                                return err;
                }
        }
}

int kvc__call(kvc_client *c, Kvdrive__Request *req, int fd,
              Kvdrive__Response__BodyCase expect, Kvdrive__Response **ret)
{
        Kvdrive__Response *r = NULL;
        int err;

        err = send_request(c, req, fd);
        if (err < 0)
                return err;
        for (;;) {
                poll_briefly(c);
                err = recv_reply(c, 0, &r);
                if (err < 0)
                        return err;
                if (r->id == req->id)
                        break;
                record_reply(c, r);
        }
        if (r->body_case == expect) {
                *ret = r;
                return 0;
        }
        err = r->body_case == KVDRIVE__RESPONSE__BODY_ERROR ? wire_error(c, r->error) : -EBADMSG;
        kvdrive__response__free_unpacked(r, NULL);
        return err;
}

static int set_max_frame(kvc_client *c, uint32_t max_frame)
{
        uint8_t *s, *r;

        s = realloc(c->sbuf, max_frame);
        if (!s)
                return -ENOMEM;
        c->sbuf = s;
        r = realloc(c->rbuf, (size_t)max_frame + KVD_FRAME_HDR);
        if (!r)
                return -ENOMEM;
        c->rbuf = r;
        c->max_frame = max_frame;
        return 0;
}

static int hello(kvc_client *c, const char *name)
{
        Kvdrive__Hello h = KVDRIVE__HELLO__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        const Kvdrive__HelloReply *hr;
        uint32_t max_frame;
        int err;

        h.version = KVD_PROTO_VERSION;
        h.client_name = (char *)(name ? name : "");
        req.body_case = KVDRIVE__REQUEST__BODY_HELLO;
        req.hello = &h;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_HELLO, &resp);
        if (err < 0)
                return err;
        hr = resp->hello;
        if (!hr || hr->max_frame > MAX_FRAME_SANE) {
                err = -EBADMSG;
                goto out_free_resp;
        }
        if (hr->version != KVD_PROTO_VERSION) {
                err = -EPROTONOSUPPORT;
                goto out_free_resp;
        }
        c->daemon_version = strdup(hr->daemon_version ? hr->daemon_version : "");
        if (!c->daemon_version) {
                err = -ENOMEM;
                goto out_free_resp;
        }
        max_frame = hr->max_frame ? hr->max_frame : KVD_FRAME_MAX_DEFAULT;
        c->max_items = hr->max_items;
        err = set_max_frame(c, max_frame);
out_free_resp:
        kvdrive__response__free_unpacked(resp, NULL);
        return err;
}

/* The text of kvc_connect_opts(): appended to, always NUL-terminated, cut
 * when full; a no-op without a buffer. */
struct report {
        char *buf;
        size_t size;
        size_t len;
};

static void report_add(struct report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void report_add(struct report *r, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (!r->buf || r->size == 0 || r->len + 1 >= r->size)
                return;
        va_start(ap, fmt);
        n = vsnprintf(r->buf + r->len, r->size - r->len, fmt, ap);
        va_end(ap);
        if (n > 0)
                r->len = r->len + (size_t)n < r->size ? r->len + (size_t)n : r->size - 1;
}

/*
 * Whether the directory of a default socket may be trusted: a real directory
 * (lstat: not a symlink), owned by root or by our euid, not writable by
 * group or others, so that nobody else can have put a socket in it. 0, or
 * -EPERM (untrusted) / -errno (cannot look), with the reason in why.
 */
static int check_socket_dir(const char *path, char *why, size_t size)
{
        char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct stat st;
        char *slash;
        uid_t me = geteuid();

        if (strlen(path) >= sizeof(dir)) {
                snprintf(why, size, "path too long");
                return -ENAMETOOLONG;
        }
        memcpy(dir, path, strlen(path) + 1);
        slash = strrchr(dir, '/');
        if (!slash) {
                snprintf(dir, sizeof(dir), ".");
        } else if (slash == dir) {
                dir[1] = '\0';
        } else {
                *slash = '\0';
        }
        if (lstat(dir, &st) < 0) {
                int err = -errno;

                snprintf(why, size, "%s", kvc_strerror(err));
                return err;
        }
        if (S_ISLNK(st.st_mode)) {
                snprintf(why, size, "not trusted: directory %s is a symbolic link", dir);
                return -EPERM;
        }
        if (!S_ISDIR(st.st_mode)) {
                snprintf(why, size, "not trusted: %s is not a directory", dir);
                return -EPERM;
        }
        if (st.st_uid != 0 && st.st_uid != me) {
                snprintf(why, size, "not trusted: directory %s is owned by uid %u, not by root or uid %u", dir,
                         (unsigned)st.st_uid, (unsigned)me);
                return -EPERM;
        }
        if (st.st_mode & (S_IWGRP | S_IWOTH)) {
                snprintf(why, size, "not trusted: directory %s is writable by %s (mode %04o)", dir,
                         st.st_mode & S_IWGRP ? "its group" : "others", (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

/* Connects to path and says Hello. On failure describes why in the report
 * (after "PATH: ") and sets *ret_answered if a daemon answered. */
static int connect_one(const char *path, const char *name, struct report *rep, bool *ret_answered,
                       kvc_client **ret)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        kvc_client *c;
        int err;

        *ret_answered = false;
        if (strlen(path) >= sizeof(sa.sun_path)) {
                report_add(rep, "path too long\n");
                return -ENAMETOOLONG;
        }
        memcpy(sa.sun_path, path, strlen(path) + 1);

        c = calloc(1, sizeof(*c));
        if (!c) {
                report_add(rep, "%s\n", kvc_strerror(-ENOMEM));
                return -ENOMEM;
        }
        c->fd = -1;
        c->poll_us = KVC_POLL_US_DEFAULT;
        c->next_id = 1;
        c->prefetch_depth = -ENODATA;
        err = set_max_frame(c, KVD_FRAME_MAX_DEFAULT);
        if (err == 0) {
                c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
                if (c->fd < 0 || connect(c->fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0)
                        err = -errno;
        }
        if (err < 0) {
                report_add(rep, "%s\n", kvc_strerror(err));
                goto err_free_client;
        }
        err = hello(c, name);
        if (err < 0) {
                *ret_answered = true;
                report_add(rep, "a daemon answered, but the Hello failed: %s%s%s\n", kvc_strerror(err),
                           c->last_error[0] ? ": " : "", c->last_error);
                goto err_free_client;
        }
        report_add(rep, "connected\n");
        *ret = c;
        return 0;

err_free_client:
        kvc_disconnect(c);
        return err;
}

_public_ int kvc_connect_opts(const struct kvc_connect_opts *opts, kvc_client **ret)
{
        char paths[2][sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct report rep;
        const char *env;
        size_t n;
        int err, first = 0;

        if (!opts || opts->size < sizeof(*opts) || !ret)
                return -EINVAL;
        rep = (struct report){ .buf = opts->report, .size = opts->report_size };
        if (rep.buf && rep.size)
                rep.buf[0] = '\0';
        env = getenv("KVDRIVE_SOCKET");
        if (opts->path || (env && *env)) {
                const char *path = opts->path ? opts->path : env;
                bool answered;

                report_add(&rep, "%s%s: ", opts->path ? "" : "$KVDRIVE_SOCKET=", path);
                return connect_one(path, opts->name, &rep, &answered, ret);
        }
        snprintf(paths[0], sizeof(paths[0]), "%s", KVD_SYSTEM_SOCKET);
        n = 1;
        err = kvd_user_socket_path(paths[1], sizeof(paths[1]));
        if (err == 0)
                n = 2;
        for (size_t i = 0; i < n; i++) {
                char why[256];
                bool answered = false;
                int r;

                report_add(&rep, "%s: ", paths[i]);
                r = check_socket_dir(paths[i], why, sizeof(why));
                if (r < 0) {
                        report_add(&rep, "%s\n", why);
                } else {
                        r = connect_one(paths[i], opts->name, &rep, &answered, ret);
                        if (r == 0 || answered)
                                return r;
                }
                if (r == -ENOMEM)
                        return r;
                if (r != -ENOENT && first == 0)
                        first = r;
        }
        if (err < 0) {
                report_add(&rep, "the per-user socket: its path ($XDG_RUNTIME_DIR) is too long\n");
                if (first == 0)
                        first = err;
        }
        return first ? first : -ENOENT;
}

_public_ int kvc_connect(const char *path, const char *name, kvc_client **ret)
{
        struct kvc_connect_opts o = { .size = sizeof(o), .path = path, .name = name };

        return kvc_connect_opts(&o, ret);
}

_public_ kvc_client *kvc_disconnect(kvc_client *c)
{
        if (!c)
                return NULL;
        if (c->fd >= 0)
                close(c->fd);
        free(c->pending);
        free(c->daemon_version);
        free(c->sbuf);
        free(c->rbuf);
        free(c);
        return NULL;
}

_public_ int kvc_fd(const kvc_client *c)
{
        return c ? c->fd : -EINVAL;
}

_public_ const char *kvc_daemon_version(const kvc_client *c)
{
        return c && c->daemon_version ? c->daemon_version : "";
}

_public_ uint32_t kvc_max_items(const kvc_client *c)
{
        return c ? c->max_items : 0;
}

_public_ const char *kvc_last_error(const kvc_client *c)
{
        return c ? c->last_error : "";
}

/* The first kvc_ns_opts ends at fingerprint_len: a caller built against it
 * stays valid once fields are added after it (they are read only when size
 * covers them). */
#define NS_OPTS_SIZE_V0 (offsetof(struct kvc_ns_opts, fingerprint_len) + sizeof(size_t))

_public_ int kvc_register_namespace_opts(kvc_client *c, const struct kvc_ns_opts *o, uint32_t *ret_ns,
                                         uint64_t *ret_block_bytes)
{
        Kvdrive__Geometry geo = KVDRIVE__GEOMETRY__INIT;
        Kvdrive__RegisterNamespace rn = KVDRIVE__REGISTER_NAMESPACE__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        const struct kvc_geometry *g;
        int err;

        if (!c || !o || o->size < NS_OPTS_SIZE_V0 || !o->name || !o->geometry || !ret_ns)
                return -EINVAL;
        if (o->fingerprint_len > KVC_FINGERPRINT_MAX || (!o->fingerprint && o->fingerprint_len > 0))
                return -EINVAL;
        g = o->geometry;
        geo.layers = g->layers;
        geo.kv_heads = g->kv_heads;
        geo.head_dim = g->head_dim;
        geo.dtype = (Kvdrive__Dtype)g->dtype;
        geo.block_tokens = g->block_tokens;
        rn.name.data = (uint8_t *)o->name;
        rn.name.len = strlen(o->name);
        rn.geometry = &geo;
        /* Empty is the field's default: not sent, as to a daemon before it. */
        rn.fingerprint.data = (uint8_t *)o->fingerprint;
        rn.fingerprint.len = o->fingerprint_len;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_NAMESPACE;
        req.register_namespace = &rn;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_REGISTER_NAMESPACE, &resp);
        if (err < 0)
                return err;
        if (!resp->register_namespace) {
                err = -EBADMSG;
                goto out_free_resp;
        }
        *ret_ns = resp->register_namespace->ns_id;
        if (ret_block_bytes)
                *ret_block_bytes = resp->register_namespace->block_bytes;
out_free_resp:
        kvdrive__response__free_unpacked(resp, NULL);
        return err;
}

_public_ int kvc_register_namespace(kvc_client *c, const char *name, const struct kvc_geometry *g,
                                    uint32_t *ret_ns, uint64_t *ret_block_bytes)
{
        struct kvc_ns_opts o = { .size = sizeof(o), .name = name, .geometry = g };

        return kvc_register_namespace_opts(c, &o, ret_ns, ret_block_bytes);
}

/* Transfer flags of transfer_submit(), from the KVC_PUT_ and KVC_GET_ ones. */
enum {
        XFER_DURABLE = 1u << 0,
        XFER_SHARED = 1u << 1,
};

/* Put, Get (p given) or Prefetch (p NULL) of n blocks; xflags: XFER_*. */
static int transfer_submit(kvc_client *c, Kvdrive__Request__BodyCase body, uint32_t ns,
                           const kvc_pool *p, const struct kvc_block_ref *refs, uint32_t n,
                           unsigned xflags, uint8_t *ret_status, uint64_t *ret_id)
{
        Kvdrive__Transfer t = KVDRIVE__TRANSFER__INIT;
        Kvdrive__Prefetch pf = KVDRIVE__PREFETCH__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__BlockRef *items = NULL, **ptrs = NULL;
        int err;

        if (!c || (!p && body != KVDRIVE__REQUEST__BODY_PREFETCH) || (!refs && n > 0))
                return -EINVAL;
        if (n > c->max_items || n > INT_MAX)
                return -E2BIG;
        /* Room for the entry first: once sent, the request must be tracked. */
        if (c->n_pending == c->cap_pending) {
                size_t cap = c->cap_pending ? 2 * c->cap_pending : 16;
                struct pending *np = reallocarray(c->pending, cap, sizeof(*np));

                if (!np)
                        return -ENOMEM;
                c->pending = np;
                c->cap_pending = cap;
        }
        items = calloc(n ? n : 1, sizeof(*items));
        ptrs = calloc(n ? n : 1, sizeof(*ptrs));
        if (!items || !ptrs) {
                err = -ENOMEM;
                goto out_free_items;
        }
        for (uint32_t i = 0; i < n; i++) {
                kvdrive__block_ref__init(&items[i]);
                items[i].key_hi = refs[i].key.hi;
                items[i].key_lo = refs[i].key.lo;
                items[i].layer = refs[i].layer;
                items[i].slot = refs[i].slot;
                items[i].counter = refs[i].counter;
                ptrs[i] = &items[i];
        }
        req.body_case = body;
        if (body == KVDRIVE__REQUEST__BODY_PREFETCH) {
                pf.ns_id = ns;
                pf.n_items = n;
                pf.items = ptrs;
                pf.shared = (xflags & XFER_SHARED) != 0;
                req.prefetch = &pf;
        } else {
                t.ns_id = ns;
                t.pool_id = p->id;
                t.n_items = n;
                t.items = ptrs;
                t.durable = (xflags & XFER_DURABLE) != 0;
                t.shared = (xflags & XFER_SHARED) != 0;
                if (body == KVDRIVE__REQUEST__BODY_PUT) {
                        req.put = &t;
                } else {
                        t.compute_us = c->compute_us;
                        req.get = &t;
                }
        }
        err = send_request(c, &req, -1);
        if (err < 0)
                goto out_free_items;
        c->pending[c->n_pending++] = (struct pending){
                .id = req.id,
                /* The reply's body has the request's number. */
                .kind = (Kvdrive__Response__BodyCase)body,
                .n = n,
                .ret_status = ret_status,
                .asked = body == KVDRIVE__REQUEST__BODY_GET && c->compute_us > 0,
        };
        if (ret_id)
                *ret_id = req.id;
out_free_items:
        free(ptrs);
        free(items);
        return err;
}

_public_ int kvc_put_submit(kvc_client *c, uint32_t ns, const kvc_pool *p,
                            const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status,
                            uint64_t *ret_id)
{
        return transfer_submit(c, KVDRIVE__REQUEST__BODY_PUT, ns, p, refs, n, 0, ret_status, ret_id);
}

_public_ int kvc_put_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                                  const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                                  uint8_t *ret_status, uint64_t *ret_id)
{
        unsigned xflags = 0;

        if (flags & ~(unsigned)(KVC_PUT_DURABLE | KVC_PUT_SHARED))
                return -EINVAL;
        if (flags & KVC_PUT_DURABLE)
                xflags |= XFER_DURABLE;
        if (flags & KVC_PUT_SHARED)
                xflags |= XFER_SHARED;
        return transfer_submit(c, KVDRIVE__REQUEST__BODY_PUT, ns, p, refs, n, xflags, ret_status, ret_id);
}

_public_ int kvc_get_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                                  const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                                  uint8_t *ret_status, uint64_t *ret_id)
{
        if (flags & ~(unsigned)KVC_GET_SHARED)
                return -EINVAL;
        return transfer_submit(c, KVDRIVE__REQUEST__BODY_GET, ns, p, refs, n,
                               flags & KVC_GET_SHARED ? XFER_SHARED : 0, ret_status, ret_id);
}

_public_ int kvc_prefetch_submit(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                                 uint8_t *ret_status, uint64_t *ret_id)
{
        return kvc_prefetch_submit_flags(c, ns, refs, n, 0, ret_status, ret_id);
}

_public_ int kvc_prefetch_submit_flags(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                                       unsigned flags, uint8_t *ret_status, uint64_t *ret_id)
{
        if (flags & ~(unsigned)KVC_GET_SHARED)
                return -EINVAL;
        return transfer_submit(c, KVDRIVE__REQUEST__BODY_PREFETCH, ns, NULL, refs, n,
                               flags & KVC_GET_SHARED ? XFER_SHARED : 0, ret_status, ret_id);
}

_public_ int kvc_report_scores(kvc_client *c, uint32_t ns, const struct kvc_block_score *scores, uint32_t n)
{
        Kvdrive__Scores m = KVDRIVE__SCORES__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__BlockScore *items;
        Kvdrive__BlockScore **ptrs;
        int err;

        if (!c || (!scores && n > 0))
                return -EINVAL;
        if (n > c->max_items)
                return -E2BIG;
        items = calloc(n ? n : 1, sizeof(*items));
        ptrs = calloc(n ? n : 1, sizeof(*ptrs));
        if (!items || !ptrs) {
                free(items);
                free(ptrs);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                kvdrive__block_score__init(&items[i]);
                items[i].key_hi = scores[i].key.hi;
                items[i].key_lo = scores[i].key.lo;
                items[i].layer = scores[i].layer;
                items[i].mass = scores[i].mass;
                ptrs[i] = &items[i];
        }
        m.ns_id = ns;
        m.n_items = n;
        m.items = ptrs;
        req.body_case = KVDRIVE__REQUEST__BODY_SCORES;
        req.scores = &m;
        /* No pending entry: the reply matches nothing and is dropped. */
        err = send_request(c, &req, -1);
        free(ptrs);
        free(items);
        return err;
}

_public_ int kvc_set_compute_hint(kvc_client *c, uint32_t compute_us)
{
        if (!c)
                return -EINVAL;
        c->compute_us = compute_us;
        return 0;
}

_public_ int kvc_set_poll_us(kvc_client *c, uint32_t poll_us)
{
        if (!c || poll_us > KVC_POLL_US_MAX)
                return -EINVAL;
        c->poll_us = poll_us;
        return 0;
}

_public_ int kvc_prefetch_depth(const kvc_client *c)
{
        return c ? c->prefetch_depth : -EINVAL;
}

_public_ int kvc_prefetch(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                          uint8_t *ret_status)
{
        uint64_t id;
        int err = kvc_prefetch_submit(c, ns, refs, n, ret_status, &id);

        return err < 0 ? err : kvc_wait(c, id, -1);
}

_public_ int kvc_get_submit(kvc_client *c, uint32_t ns, const kvc_pool *p,
                            const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status,
                            uint64_t *ret_id)
{
        return transfer_submit(c, KVDRIVE__REQUEST__BODY_GET, ns, p, refs, n, 0, ret_status, ret_id);
}

_public_ int kvc_wait(kvc_client *c, uint64_t id, int timeout_ms)
{
        uint64_t deadline = 0;
        ssize_t i;
        int result;

        if (!c)
                return -EINVAL;
        i = find_pending(c, id);
        if (i < 0)
                return -ENOENT;
        if (timeout_ms > 0)
                deadline = now_ms() + (uint64_t)timeout_ms;
        while (!c->pending[i].done) {
                struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
                int left = timeout_ms < 0 ? -1 : 0;
                int n, err;

                if (timeout_ms > 0) {
                        uint64_t now = now_ms();

                        left = now < deadline ? (int)(deadline - now) : 0;
                }
                n = left != 0 && poll_briefly(c) ? 1 : poll(&pfd, 1, left);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ETIMEDOUT;
                err = drain(c);
                /* A broken connection completes every request with its error. */
                if (err < 0 && !c->pending[i].done)
                        return err;
        }
        result = c->pending[i].result;
        c->pending[i] = c->pending[--c->n_pending];
        return result;
}

_public_ int kvc_poll(kvc_client *c)
{
        if (!c)
                return -EINVAL;
        return drain(c);
}

_public_ int kvc_done(const kvc_client *c, uint64_t id)
{
        ssize_t i;

        if (!c)
                return -EINVAL;
        i = find_pending(c, id);
        if (i < 0)
                return -ENOENT;
        return c->pending[i].done ? 1 : 0;
}

_public_ int kvc_put(kvc_client *c, uint32_t ns, const kvc_pool *p,
                     const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status)
{
        uint64_t id;
        int err = kvc_put_submit(c, ns, p, refs, n, ret_status, &id);

        return err < 0 ? err : kvc_wait(c, id, -1);
}

_public_ int kvc_get(kvc_client *c, uint32_t ns, const kvc_pool *p,
                     const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status)
{
        uint64_t id;
        int err = kvc_get_submit(c, ns, p, refs, n, ret_status, &id);

        return err < 0 ? err : kvc_wait(c, id, -1);
}

/* Wire keys for n keys: *ret_keys (n structs) and *ret_ptrs, freed by the
 * caller with free(). */
static int wire_keys(const struct kvc_key *keys, uint32_t n, Kvdrive__Key **ret_keys,
                     Kvdrive__Key ***ret_ptrs)
{
        Kvdrive__Key *k = calloc(n ? n : 1, sizeof(*k));
        Kvdrive__Key **ptrs = calloc(n ? n : 1, sizeof(*ptrs));

        if (!k || !ptrs) {
                free(k);
                free(ptrs);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                kvdrive__key__init(&k[i]);
                k[i].hi = keys[i].hi;
                k[i].lo = keys[i].lo;
                ptrs[i] = &k[i];
        }
        *ret_keys = k;
        *ret_ptrs = ptrs;
        return 0;
}

_public_ int kvc_lookup(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
                        uint32_t *ret_prefix, uint32_t layers)
{
        Kvdrive__Lookup lk = KVDRIVE__LOOKUP__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        Kvdrive__Key *k, **ptrs;
        const Kvdrive__LookupReply *lr;
        int err;

        if (!c || (!keys && n > 0) || (!ret_prefix && layers > 0))
                return -EINVAL;
        if (n > c->max_items)
                return -E2BIG;
        err = wire_keys(keys, n, &k, &ptrs);
        if (err < 0)
                return err;
        lk.ns_id = ns;
        lk.n_keys = n;
        lk.keys = ptrs;
        req.body_case = KVDRIVE__REQUEST__BODY_LOOKUP;
        req.lookup = &lk;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_LOOKUP, &resp);
        if (err < 0)
                goto out_free_keys;
        lr = resp->lookup;
        if (!lr) {
                err = -EBADMSG;
                goto out_free_resp;
        }
        /* One entry per layer of the namespace: the caller's array must hold
         * them all. Entries past the daemon's count read as 0 (no prefix). */
        if (lr->n_prefix > layers) {
                err = -ENOBUFS;
                goto out_free_resp;
        }
        for (uint32_t l = 0; l < layers; l++)
                ret_prefix[l] = l < lr->n_prefix ? lr->prefix[l] : 0;
out_free_resp:
        kvdrive__response__free_unpacked(resp, NULL);
out_free_keys:
        free(ptrs);
        free(k);
        return err;
}

_public_ int kvc_delete(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
                        int32_t layer)
{
        Kvdrive__Delete del = KVDRIVE__DELETE__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        Kvdrive__Key *k, **ptrs;
        int err;

        if (!c || (!keys && n > 0))
                return -EINVAL;
        if (n > c->max_items)
                return -E2BIG;
        err = wire_keys(keys, n, &k, &ptrs);
        if (err < 0)
                return err;
        del.ns_id = ns;
        del.n_keys = n;
        del.keys = ptrs;
        del.all_layers = layer < 0;
        del.layer = layer < 0 ? 0 : (uint32_t)layer;
        req.body_case = KVDRIVE__REQUEST__BODY_DELETE;
        req.delete_ = &del;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_DELETE, &resp);
        if (err < 0)
                goto out_free_keys;
        if (!resp->delete_)
                err = -EBADMSG;
        else
                err = resp->delete_->deleted > INT_MAX ? INT_MAX : (int)resp->delete_->deleted;
        kvdrive__response__free_unpacked(resp, NULL);
out_free_keys:
        free(ptrs);
        free(k);
        return err;
}

_public_ int kvc_drop_namespace(kvc_client *c, uint32_t ns, uint64_t *ret_deleted)
{
        Kvdrive__DropNamespace dn = KVDRIVE__DROP_NAMESPACE__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        int err;

        if (!c)
                return -EINVAL;
        dn.ns_id = ns;
        req.body_case = KVDRIVE__REQUEST__BODY_DROP_NAMESPACE;
        req.drop_namespace = &dn;
        err = kvc__call(c, &req, -1, KVDRIVE__RESPONSE__BODY_DROP_NAMESPACE, &resp);
        if (err < 0)
                return err;
        if (!resp->drop_namespace)
                err = -EBADMSG;
        else if (ret_deleted)
                *ret_deleted = resp->drop_namespace->deleted;
        kvdrive__response__free_unpacked(resp, NULL);
        return err;
}

/* SPDX-License-Identifier: MIT */
/*
 * Every request handler, through the wire protocol only: for each input a
 * daemon is created in-process — the real config, cache (16 MiB host tier,
 * host-lock off; with or without a small SSD tier in a temporary
 * directory), transfer engine and server — one end of a socketpair is
 * adopted as a session (kvd_server_adopt), and the input's chunks (fuzz.h)
 * go to it as messages, memfds attached where a chunk asks. After each
 * message the harness turns the event loop (kvd_server_run_once) until the
 * daemon is idle, or for a bounded number of turns, and reads every reply:
 * each must be a well-formed frame holding a Response. At the end the
 * daemon stops as kvdrived does, and LeakSanitizer checks it freed
 * everything.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cache.h"
#include "config.h"
#include "frame.h"
#include "fuzz.h"
#include "kvdrive.pb-c.h"
#include "log.h"
#include "server.h"
#include "slot.h"
#include "xfer.h"

#define MAX_SESSIONS 4
#define MAX_TURNS    400        /* per message: bounded, whatever the input */
#define WAIT_MS      5          /* a turn's wait while requests are in flight */

static struct kvd_config cfg;
static bool verbose;            /* $KVD_FUZZ_VERBOSE: print each reply (writing seeds) */
static char ssd_dir[256];
static char ssd_file[300];

static void remove_dir(void)
{
        if (ssd_file[0])
                unlink(ssd_file);
        if (ssd_dir[0])
                rmdir(ssd_dir);
}

static void on_alarm(int sig)
{
}

/*
 * Signals interrupt blocking calls now and then in any process (a handler,
 * or a stop and continue: a debugger attaching, a terminal's ^Z): a no-op
 * SIGALRM handler on a 100 us timer (no SA_RESTART) makes the daemon's
 * waits see EINTR while it recovers, serves and stops. libFuzzer's own
 * -timeout alarm found the first such bug; this makes replays see it too.
 * On unless $KVD_FUZZ_SIGNALS is 0.
 */
static void start_signal_storm(void)
{
        struct sigaction sa = { .sa_handler = on_alarm };
        struct itimerval it = { { 0, 100 }, { 0, 100 } };

        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGALRM, &sa, NULL) < 0 || setitimer(ITIMER_REAL, &it, NULL) < 0) {
                perror("fuzz: signal storm");
                exit(1);
        }
}

int fuzz_daemon_init(int ssd)
{
        char *argv[32];
        int argc = 0;

        argv[argc++] = "kvdrived-fuzz";
        argv[argc++] = "--socket=/nonexistent/kvdrived-fuzz.sock"; /* never bound */
        argv[argc++] = "--host-bytes=16M";
        argv[argc++] = "--host-lock=off";
        argv[argc++] = "--host-hugepages=false";
        argv[argc++] = "--workers=1";
        argv[argc++] = "--log-level=err";
        argv[argc++] = "--max-namespaces=8";
        argv[argc++] = "--max-items=64";
        argv[argc++] = "--max-inflight-per-client=8";
        argv[argc++] = "--cuda-module=/nonexistent/kvdrive-cuda.so";
        if (ssd) {
                static char dir_arg[320];

                snprintf(ssd_dir, sizeof(ssd_dir), "%s/kvd-fuzz-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
                if (strlen(ssd_dir) >= sizeof(ssd_dir) - 1 || !mkdtemp(ssd_dir)) {
                        perror("mkdtemp");
                        exit(1);
                }
                snprintf(ssd_file, sizeof(ssd_file), "%s/kvdrive.ssd", ssd_dir);
                atexit(remove_dir);
                snprintf(dir_arg, sizeof(dir_arg), "--ssd-dir=%s", ssd_dir);
                argv[argc++] = dir_arg;
                argv[argc++] = "--ssd-bytes=8M";
                argv[argc++] = "--ssd-extent-bytes=1M";
                argv[argc++] = "--ssd-queue-depth=8";
        }
        argv[argc] = NULL;
        verbose = getenv("KVD_FUZZ_VERBOSE") != NULL;
        unsetenv("NOTIFY_SOCKET");
        unsetenv("LISTEN_FDS");
        if (kvd_config_load(&cfg, argc, argv) != 0) {
                fprintf(stderr, "fuzz: bad daemon configuration\n");
                exit(1);
        }
        kvd_log_set_level(verbose ? LOG_DEBUG : cfg.log_level);
        if (!getenv("KVD_FUZZ_SIGNALS") || strcmp(getenv("KVD_FUZZ_SIGNALS"), "0") != 0)
                start_signal_storm();
        return 0;
}

/* Reads every reply waiting on sock; each must be a frame with a Response. */
static void drain(int sock)
{
        static uint8_t buf[KVD_FRAME_MAX_LIMIT + KVD_FRAME_HDR + 1];

        for (;;) {
                ssize_t n = recv(sock, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC);
                const uint8_t *payload;
                Kvdrive__Response *resp;
                size_t len;

                if (n <= 0)
                        return;
                if (kvd_frame_parse(buf, (size_t)n, cfg.max_frame, &payload, &len) < 0)
                        fuzz_fail("the daemon sent a bad frame of %zd bytes", n);
                resp = kvdrive__response__unpack(NULL, len, payload);
                if (!resp)
                        fuzz_fail("the daemon sent a frame that is no Response (%zu bytes)", len);
                if (resp->body_case == KVDRIVE__RESPONSE__BODY__NOT_SET)
                        fuzz_fail("the daemon sent a Response without a body");
                if (verbose) {
                        if (resp->body_case == KVDRIVE__RESPONSE__BODY_ERROR)
                                fprintf(stderr, "reply %llu: error %d: %s\n", (unsigned long long)resp->id,
                                        resp->error->code, resp->error->message);
                        else
                                fprintf(stderr, "reply %llu: body %d\n", (unsigned long long)resp->id,
                                        resp->body_case);
                }
                kvdrive__response__free_unpacked(resp, NULL);
        }
}

struct client {
        int socks[MAX_SESSIONS];
        unsigned n;
};

/* Turns the loop until the daemon is idle and a turn brings nothing. */
static void pump(struct kvd_server *s, const struct client *cl)
{
        for (int turn = 0; turn < MAX_TURNS; turn++) {
                bool idle = kvd_server_idle(s);
                int n = kvd_server_run_once(s, idle ? 0 : WAIT_MS);

                if (n < 0 && n != -ECANCELED)
                        fuzz_fail("the event loop failed: %s", strerror(-n));
                for (unsigned i = 0; i < cl->n; i++)
                        if (cl->socks[i] >= 0)
                                drain(cl->socks[i]);
                if (n == 0 && idle)
                        return;
        }
}

static int new_session(struct kvd_server *s, struct client *cl)
{
        int sv[2], r;

        if (cl->n == MAX_SESSIONS)
                return -EUSERS;
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        r = kvd_server_adopt(s, sv[0]);
        if (r < 0) {
                close(sv[1]);
                return r;
        }
        cl->socks[cl->n++] = sv[1];
        return 0;
}

static int make_memfd(uint8_t flags)
{
        uint32_t size = fuzz_memfd_sizes[(flags & FUZZ_CHUNK_SIZE_MASK) >> FUZZ_CHUNK_SIZE_SHIFT];
        int fd = memfd_create("kvd-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        if (fd < 0)
                return -1;
        /* Sealed ones are allocated as libkvclient's are (the daemon refuses
         * sparse pools); unsealed ones are refused for that already. */
        if (ftruncate(fd, size) < 0 ||
            (!(flags & FUZZ_CHUNK_UNSEALED) &&
             (fallocate(fd, 0, 0, size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0))) {
                close(fd);
                return -1;
        }
        return fd;
}

/* Sends one chunk as one message (with fd, if >= 0). 0, or -errno. */
static int send_chunk(int sock, const uint8_t *p, size_t len, int fd)
{
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov = { .iov_base = (void *)p, .iov_len = len };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (fd >= 0) {
                struct cmsghdr *c;

                memset(&ctl, 0, sizeof(ctl));
                msg.msg_control = ctl.buf;
                msg.msg_controllen = sizeof(ctl.buf);
                c = CMSG_FIRSTHDR(&msg);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? -errno : 0;
}

/* Starts the daemon (recovering what the SSD tier's file holds), feeds it
 * the chunks as one client, and stops it. */
static int run_daemon(const uint8_t *data, size_t size)
{
        struct kvd_cache *cache = NULL;
        struct kvd_xfer *xfer = NULL;
        struct kvd_server *s = NULL;
        struct client cl = { .n = 0 };
        unsigned cur = 0;

        if (kvd_server_new(&cfg, &s) < 0 || kvd_cache_new(&cfg, &cache) < 0 ||
            kvd_xfer_new(cfg.workers, &xfer) < 0 || kvd_server_attach(s, cache, xfer, NULL) < 0 ||
            new_session(s, &cl) < 0)
                fuzz_fail("cannot set the daemon up");

        while (size >= 3) {
                uint8_t flags = data[0];
                size_t len = (size_t)data[1] | (size_t)data[2] << 8;
                int fd = -1, r;

                data += 3;
                size -= 3;
                if (len > size)
                        len = size;
                if ((flags & FUZZ_CHUNK_HANG_UP) && cl.socks[cur] >= 0) {
                        close(cl.socks[cur]);
                        cl.socks[cur] = -1;
                }
                if (((flags & FUZZ_CHUNK_NEW_SESSION) || cl.socks[cur] < 0) && new_session(s, &cl) == 0)
                        cur = cl.n - 1;
                if (flags & FUZZ_CHUNK_MEMFD)
                        fd = make_memfd(flags);
                if (cl.socks[cur] >= 0) {
                        r = send_chunk(cl.socks[cur], data, len, fd);
                        if (r == -EAGAIN) {     /* the daemon is behind: let it read, once */
                                pump(s, &cl);
                                r = send_chunk(cl.socks[cur], data, len, fd);
                        }
                        if (r < 0 && r != -EAGAIN) {   /* it hung up on us */
                                close(cl.socks[cur]);
                                cl.socks[cur] = -1;
                        }
                }
                if (fd >= 0)
                        close(fd);
                data += len;
                size -= len;
                if (!(flags & FUZZ_CHUNK_NO_PUMP))
                        pump(s, &cl);
        }
        pump(s, &cl);

        /* The clients go, then the daemon stops as kvdrived does. */
        for (unsigned i = 0; i < cl.n; i++)
                if (cl.socks[i] >= 0)
                        close(cl.socks[i]);
        pump(s, &cl);
        kvd_server_free(s);
        kvd_cache_quiesce(cache);
        kvd_xfer_free(xfer);
        kvd_cache_write_back(cache);
        kvd_cache_free(cache);
        return 0;
}

int fuzz_daemon_one(const uint8_t *data, size_t size)
{
        if (ssd_file[0])
                unlink(ssd_file);       /* each input starts from an empty drive */
        return run_daemon(data, size);
}

/* ---- fuzz-recover: the SSD tier's file from the input ----------------- */

#define IMAGE_PAGES 2048u       /* 8 MiB: the tier's ssd-bytes */
#define PAGE 4096u

int fuzz_recover_one(const uint8_t *data, size_t size)
{
        static uint8_t image[IMAGE_PAGES * PAGE];
        uint32_t n_records, top = 0;
        const uint8_t *p = data, *end = data + size;
        struct seal {
                uint32_t page;
                uint8_t flags;
        } seals[64];
        unsigned n_seals = 0;
        int fd;

        if (size < 2)
                return 0;
        n_records = (uint32_t)p[0] | (uint32_t)p[1] << 8;
        p += 2;
        memset(image, 0, sizeof(image));
        for (uint32_t r = 0; r < n_records && end - p >= 5; r++) {
                uint8_t flags = p[0];
                uint32_t page = ((uint32_t)p[1] | (uint32_t)p[2] << 8) % IMAGE_PAGES;
                size_t len = (size_t)p[3] | (size_t)p[4] << 8;

                p += 5;
                if (len > (size_t)(end - p))
                        len = (size_t)(end - p);
                if (len > PAGE)
                        len = PAGE;
                memcpy(image + (size_t)page * PAGE, p, len);
                p += len;
                if (page + 1 > top)
                        top = page + 1;
                if ((flags & (FUZZ_SEAL_EXTENT | FUZZ_SEAL_SLOT)) && n_seals < 64)
                        seals[n_seals++] = (struct seal){ page, flags };
        }
        /* Crcs last, so that a slot's payload crc covers what lies after it. */
        for (unsigned i = 0; i < n_seals; i++) {
                uint8_t *pg = image + (size_t)seals[i].page * PAGE;

                if (seals[i].flags & FUZZ_SEAL_EXTENT) {
                        kvd_extent_header_seal((struct kvd_extent_header *)pg);
                } else {
                        struct kvd_slot_header *h = (struct kvd_slot_header *)pg;
                        size_t room = sizeof(image) - ((size_t)seals[i].page + 1) * PAGE;

                        if (h->payload_len <= room)
                                h->payload_crc = kvd_slot_crc(pg + PAGE, h->payload_len);
                        kvd_slot_header_seal(h);
                }
        }
        fd = open(ssd_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, image, (size_t)top * PAGE) != (ssize_t)((size_t)top * PAGE))
                fuzz_fail("cannot write the SSD image: %s", strerror(errno));
        close(fd);
        return run_daemon(p, (size_t)(end - p));
}

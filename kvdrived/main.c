/* SPDX-License-Identifier: MIT */
/*
 * kvdrived: configuration, process setup (detach, signals, sd_notify), then
 * the server loop. Everything else lives in the parts it wires together.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "cache.h"
#include "config.h"
#include "device.h"
#include "kvd-build.h"
#include "log.h"
#include "server.h"
#include "xfer.h"

/*
 * Without --foreground (and outside systemd) the daemon detaches: the parent
 * waits until the child is serving, so `kvdrived && client` just works, and
 * exits with the child's start-up result.
 */
static int detach(int *ret_ready_fd)
{
        int p[2];
        pid_t pid;
        char c;

        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid > 0) {
                close(p[1]);
                _exit(read(p[0], &c, 1) == 1 ? EXIT_SUCCESS : EXIT_FAILURE);
        }
        close(p[0]);
        if (setsid() < 0)
                return -errno;
        *ret_ready_fd = p[1];
        return 0;
}

static void signal_ready(int ready_fd)
{
        if (ready_fd >= 0) {
                int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

                if (write(ready_fd, "r", 1) != 1)
                        log_warning("cannot tell the parent we are ready: %m");
                close(ready_fd);
                /* Detached: let go of the terminal (or pipe) that started
                 * us, so that `kvdrived | tail` ends; logs go to syslog. */
                kvd_log_to_syslog();
                if (devnull >= 0) {
                        dup2(devnull, STDIN_FILENO);
                        dup2(devnull, STDOUT_FILENO);
                        dup2(devnull, STDERR_FILENO);
                        close(devnull);
                }
        }
}

int main(int argc, char **argv)
{
        struct kvd_config cfg;
        struct kvd_cache *cache = NULL;
        struct kvd_xfer *xfer = NULL;
        struct kvd_cuda *cuda = NULL;
        uint64_t host_len, extent;
        void *host_base;
        struct kvd_server *server = NULL;
        int ready_fd = -1, r;
        sigset_t mask;
        char status[160];

        r = kvd_config_load(&cfg, argc, argv);
        if (r != 0)
                return r > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
        kvd_log_set_level(cfg.log_level);

        if (!cfg.foreground && !getenv("NOTIFY_SOCKET") && !getenv("LISTEN_FDS")) {
                r = detach(&ready_fd);
                if (r < 0) {
                        log_error("cannot detach: %s", strerror(-r));
                        return EXIT_FAILURE;
                }
        }
        /* Signals are read from a signalfd by the loop; SIGPIPE never kills
         * us (sends use MSG_NOSIGNAL, but be safe), nor SIGXFSZ (an SSD write
         * past ulimit -f fails with EFBIG instead, which the tier handles).
         * Blocked before any thread starts, so workers inherit the mask. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        signal(SIGXFSZ, SIG_IGN);

        /* The socket first: a second daemon on a served socket stops here,
         * before it maps and locks a host tier. Clients that connect while
         * the cache is built wait on the listen backlog. */
        r = kvd_server_new(&cfg, &server);
        if (r == 0)
                r = kvd_server_listen(server);
        if (r < 0) {
                log_error("cannot start serving: %s", strerror(-r));
                goto out;
        }
        r = kvd_cache_new(&cfg, &cache);
        if (r < 0) {
                log_error("cannot set up the cache: %s", strerror(-r));
                goto out;
        }
        /* Remembers the module path only: CUDA loads with the first CUDA
         * pool, so hosts without it never touch it. */
        kvd_cache_host_region(cache, &host_base, &host_len, &extent);
        r = kvd_cuda_new(cfg.cuda_module, host_base, host_len, extent, cfg.host_numa_node, &cuda);
        if (r < 0) {
                log_error("cannot set up the CUDA loader: %s", strerror(-r));
                goto out;
        }
        r = kvd_xfer_new(cfg.workers, &xfer);
        if (r < 0) {
                log_error("cannot start %u transfer workers: %s", cfg.workers, strerror(-r));
                goto out;
        }
        r = kvd_server_attach(server, cache, xfer, cuda);
        if (r < 0) {
                log_error("cannot start serving: %s", strerror(-r));
                goto out;
        }
        kvd_server_status_line(server, status, sizeof(status));
        log_notice("kvdrived %s ready: %s", KVD_VERSION, status);
        sd_notifyf(0, "READY=1\nSTATUS=%s\nMAINPID=%lu", status, (unsigned long)getpid());
        signal_ready(ready_fd);
        ready_fd = -1;

        r = kvd_server_run(server);
        sd_notify(0, "STOPPING=1\nSTATUS=stopping");
out:
        if (ready_fd >= 0)
                close(ready_fd);
        /* Order matters: sessions first; then the cache's waits and SSD I/O
         * end (their callbacks may still hand copies to the engine); then
         * the engine drains its batches (their callbacks need the cache);
         * then dirty blocks go back to SSD and the cache goes. */
        kvd_server_free(server);
        if (cache)
                kvd_cache_quiesce(cache);
        kvd_xfer_free(xfer);
        /* No pool is open and no copy runs now: unpin the host pool. */
        kvd_cuda_free(cuda);
        if (cache && r == 0) {
                uint64_t n = kvd_cache_write_back(cache);

                if (n)
                        log_info("writing %llu blocks back to SSD before stopping", (unsigned long long)n);
        }
        kvd_cache_free(cache);
        kvd_config_free(&cfg);
        log_info("stopped");
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

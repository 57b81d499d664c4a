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
#include <sys/stat.h>
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
                 * us, so that `kvdrived | tail` ends; logs go to the file
                 * opened before detaching. */
                kvd_log_detached();
                if (devnull >= 0) {
                        dup2(devnull, STDIN_FILENO);
                        dup2(devnull, STDOUT_FILENO);
                        dup2(devnull, STDERR_FILENO);
                        close(devnull);
                }
        }
}

/* The log file of a detached daemon: opened before it detaches, so that
 * one it cannot write stops the start with a message where it was started
 * (never a daemon that logs to nowhere). */
static int open_log_file(const struct kvd_config *cfg)
{
        char path[sizeof(cfg->log_file)];
        int r;

        if (cfg->log_file[0])
                snprintf(path, sizeof(path), "%s", cfg->log_file);
        else if (kvd_log_default_file(path, sizeof(path)) < 0)
                path[0] = '\0';
        r = path[0] ? kvd_log_open_file(path) : -ENAMETOOLONG;
        if (r < 0)
                fprintf(stderr, "kvdrived: cannot open the log file %s: %s (set log-file, or run with --foreground)\n",
                        path[0] ? path : "(default)", strerror(-r));
        return r;
}

/* Started by systemd with stderr thrown away (StandardError=null): the
 * journal directly. */
static bool stderr_is_null(void)
{
        struct stat st, null;

        if (fstat(STDERR_FILENO, &st) < 0)
                return true;
        return stat("/dev/null", &null) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == null.st_rdev;
}

struct reload {
        struct kvd_config *cfg;
        struct kvd_cache *cache;
        int argc;
        char **argv;
};

/* SIGHUP, on the loop thread: the log file reopened (rotation), then the
 * configuration reloaded (kvd_config_reload() keeps every old setting if
 * the file is bad) and what changed handed to who keeps a copy. */
static void on_reload(void *userdata)
{
        struct reload *rl = userdata;
        char old_file[sizeof(rl->cfg->log_file)];
        int r;

        r = kvd_log_reopen(NULL);
        if (r < 0)
                log_error("cannot reopen the log file: %s; logging on to the old one", strerror(-r));
        memcpy(old_file, rl->cfg->log_file, sizeof(old_file));
        if (kvd_config_reload(rl->cfg, rl->argc, rl->argv) < 0)
                return;
        kvd_log_set_level(rl->cfg->log_level);
        if (strcmp(old_file, rl->cfg->log_file) != 0) {
                char path[sizeof(old_file)];

                if (rl->cfg->log_file[0])
                        snprintf(path, sizeof(path), "%s", rl->cfg->log_file);
                else if (kvd_log_default_file(path, sizeof(path)) < 0)
                        path[0] = '\0';
                r = path[0] ? kvd_log_reopen(path) : -ENAMETOOLONG;
                if (r < 0) {
                        log_error("cannot open the log file %s: %s; logging on to the old one", path, strerror(-r));
                        memcpy(rl->cfg->log_file, old_file, sizeof(old_file));
                }
        }
        if (rl->cache)
                kvd_cache_quotas_refresh(rl->cache);
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
        struct reload rl;
        int ready_fd = -1, r;
        sigset_t mask;
        char status[160];

        r = kvd_config_load(&cfg, argc, argv);
        if (r != 0)
                return r > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
        kvd_log_set_level(cfg.log_level);

        if (!cfg.foreground && !getenv("NOTIFY_SOCKET") && !getenv("LISTEN_FDS")) {
                if (open_log_file(&cfg) < 0) {
                        kvd_config_free(&cfg);
                        return EXIT_FAILURE;
                }
                r = detach(&ready_fd);
                if (r < 0) {
                        log_error("cannot detach: %s", strerror(-r));
                        return EXIT_FAILURE;
                }
        } else if (getenv("INVOCATION_ID") && stderr_is_null()) {
                kvd_log_to_journal();
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
        rl = (struct reload){ &cfg, cache, argc, argv };
        kvd_server_on_reload(server, on_reload, &rl);
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
                kvd_cache_checkpoint(cache);
        }
        kvd_cache_free(cache);
        kvd_config_free(&cfg);
        log_info("stopped");
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

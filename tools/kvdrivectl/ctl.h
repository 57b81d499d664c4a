/* SPDX-License-Identifier: MIT */
/* Private to kvdrivectl: what kvdrivectl.c (status, stats, drop) and
 * admin.c (the administration commands) share. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <kvdrive/client.h>

#include "kvdrive.pb-c.h"

/* Exit status, documented in kvdrivectl --help and docs/kvdrivectl.md. */
#define CTL_EXIT_OK 0
#define CTL_EXIT_FAILED 1       /* daemon unreachable, or the request failed (not found, denied, ...) */
#define CTL_EXIT_USAGE 2

struct ctl {
        const char *socket;     /* NULL: the library's default */
        bool json;
        const char *owner;      /* drop, evict: the owner of NAME */
        const char *ns;         /* evict --namespace */
        const char *tier;       /* evict --tier: host (default) or ssd */
        long count;             /* top --count: samples, 0: until interrupted */
        char **args;            /* the command's arguments */
        int n_args;
};

/* Connects (the library's search, Hello as "kvdrivectl"); says why not on
 * stderr. 0 or -errno / -KVC_E_*. */
int ctl_connect(const struct ctl *ctl, kvc_client **ret);

/* Sends req on c's socket in kvdrivectl's own frames (the session is idle
 * otherwise: the library reads nothing meanwhile) and waits for its reply.
 * 0 with *ret (freed with kvdrive__response__free_unpacked()) of body
 * expect; a wire Error is -(KVC_E_BASE + code) with its message in
 * why; -errno. */
int ctl_call(kvc_client *c, Kvdrive__Request *req, Kvdrive__Response__BodyCase expect, Kvdrive__Response **ret,
             char *why, size_t why_size);

/* Says on stderr (and, with --json, as {"error": {...}} on stdout) that
 * what failed with err; returns CTL_EXIT_FAILED. */
int ctl_fail(const struct ctl *ctl, const char *what, int err, const char *why);

/* Prints j (taken) as one JSON document and a newline. Exit status. */
int ctl_print_json(json_t *j);

/* JSON integers are signed 64-bit: saturate rather than wrap. */
json_int_t ctl_ji(uint64_t v);

const char *ctl_format_bytes(char *buf, size_t size, uint64_t v);
const char *ctl_dtype_name(uint32_t dtype);

/* admin.c: the commands. Each returns the exit status. */
int ctl_status_json(struct ctl *ctl, const struct kvc_stats *s);
int cmd_clients(struct ctl *ctl);
int cmd_namespaces(struct ctl *ctl);
int cmd_evict(struct ctl *ctl);
int cmd_flush(struct ctl *ctl);
int cmd_config(struct ctl *ctl);
int cmd_top(struct ctl *ctl);
int cmd_shutdown(struct ctl *ctl);

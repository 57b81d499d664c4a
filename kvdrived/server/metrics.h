/* SPDX-License-Identifier: MIT */
/*
 * The Prometheus endpoint: GET /metrics over HTTP (libmicrohttpd), in the
 * text exposition format 0.0.4, every other path 404. It runs on the
 * daemon's own event loop, not on a thread of its own: MHD's epoll fd is a
 * watch of the loop whose callback calls MHD_run(), and a timerfd of ours
 * wakes MHD when it has a connection timeout due. So a scrape reads the
 * daemon's counters on the loop thread, as a Stats request does.
 * docs/metrics.md lists the families.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct kvd_server;
struct kvd_loop;
struct kvd_metrics;

/* Whether listen (cfg->metrics_listen) turns the endpoint off: "" or "off". */
bool kvd_metrics_off(const char *listen);

/*
 * Binds listen ("ADDR:PORT", "[IPv6]:PORT"; port 0: the kernel picks, the
 * log says which) and registers with loop. Serves s's counters, so s must
 * outlive it; nothing is served before the loop runs. 0 and *ret (free with
 * kvd_metrics_free()), -EINVAL for an address it cannot parse, or -errno of
 * the bind (the reason logged in each case).
 */
int kvd_metrics_new(struct kvd_server *s, struct kvd_loop *loop, const char *listen, struct kvd_metrics **ret);

/* The port it listens on (the kernel's pick for port 0). */
uint16_t kvd_metrics_port(const struct kvd_metrics *m);

/* Closes every connection and the listener; leaves loop. Accepts NULL,
 * returns NULL. */
struct kvd_metrics *kvd_metrics_free(struct kvd_metrics *m);

/* Writes the page a scrape gets into f. 0, or -EIO if f failed. */
int kvd_metrics_render(struct kvd_server *s, FILE *f);

/* SPDX-License-Identifier: MIT */
/*
 * The remote tier: blocks shared by many machines through a Redis Cluster
 * the operators already run (docs/remote.md). A SHARED tier (tier.h): a
 * block is found by its identity, never at a location of ours.
 *
 * One Redis key per block, the same on every machine:
 *     kvd:1:<namespace tag>:<key128>:<layer>
 * where the tag is XXH3-64 of the namespace's identity (owner, name,
 * geometry, fingerprint), all in hex. The value is the block's slot header
 * (tiers/slot.h, sizeof(struct kvd_slot_header) bytes: its identity, the
 * payload's crc32c, the codec) followed by the payload; a get serves it
 * only if the header is sealed, names the very block asked for, and the
 * payload matches its crc. Written with SET .. PX remote-ttl-s.
 *
 * The cluster is driven by a thread of the tier's own (tiers/rcluster.h:
 * slot map, MOVED/ASK, reconnects): the event loop only queues operations
 * (flush hands them over, one wake-up per loop turn) and runs their
 * callbacks when the thread reports them done through an eventfd. Payload
 * crcs are computed and checked on that thread. Nothing the event loop does
 * waits for the cluster: a node that is slow or down fails the requests it
 * holds by their deadline (remote-timeout-ms), and those for a node known
 * to be down at once.
 */
#pragma once

#include "config.h"
#include "tier.h"

struct kvd_remote;

/* Parses cfg->remote and starts the thread; connects nothing yet (a
 * cluster that is down at start is not an error: it is counted). -EINVAL
 * with a message for a bad address list, -errno. */
int kvd_remote_new(const struct kvd_config *cfg, struct kvd_remote **ret);
struct kvd_tier *kvd_remote_tier(struct kvd_remote *r);

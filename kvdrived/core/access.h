/* SPDX-License-Identifier: MIT */
/*
 * Who may do what: the peers of the daemon, the namespaces the config
 * shares, and the per-uid quotas. Pure: no sockets, no cache; the server
 * asks it and enforces the answer (docs/security.md is the model).
 *
 * A namespace belongs to its owner, the uid that created it, and is known
 * by (owner, name): two uids that register the same name get two
 * namespaces. It is private to its owner unless a [namespace PATTERN]
 * section of the config file shares it:
 *
 *   [namespace llama-3-8b-?*]      ; fnmatch(3) pattern of namespace names
 *   owner = vllm                  ; user name or uid: whose namespace it is
 *   readers = @inference, 1001    ; Get, Lookup, Prefetch, Scores
 *   writers = vllm-prefill        ; Put, Delete (and read)
 *
 * A principal is a user name, a uid, @group (name or gid), or * (anyone who
 * can connect). The first matching section applies. Per-uid quotas come
 * from the quota-* options (every uid) and [quota USER] sections.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum kvd_right {
        KVD_RIGHT_READ = 1u << 0,       /* Get, Lookup, Prefetch, Scores */
        KVD_RIGHT_WRITE = 1u << 1,      /* Put, Delete */
        KVD_RIGHT_OWNER = 1u << 2,      /* drop, and everything above */
};

/* A connected peer, from SO_PEERCRED and SO_PEERGROUPS. */
struct kvd_peer {
        uid_t uid;
        gid_t gid;
        uint32_t n_groups;
        const gid_t *groups;    /* supplementary groups, owned by the caller */
        bool admin;             /* uid 0 or in the admin group: sees and manages all */
};

/* Caps per uid. 0 in the config means none; here UINT64_MAX / UINT32_MAX. */
struct kvd_quota {
        uint64_t host_bytes;
        uint64_t ssd_bytes;
        uint64_t pool_bytes;
        uint32_t namespaces;
};

struct kvd_access;
struct kvd_share;

int kvd_access_new(struct kvd_access **ret);
struct kvd_access *kvd_access_free(struct kvd_access *a);

/*
 * One line of a config file section that is ours ([namespace PATTERN] or
 * [quota USER]). Returns 1 if the section is ours and the line was taken,
 * 0 if the section is not ours, or -errno with a message in err.
 */
int kvd_access_ini(struct kvd_access *a, const char *section, const char *name, const char *value,
                   char *err, size_t err_size);

/* After the whole file: checks every [namespace] section names an owner.
 * 0 or -EINVAL with a message in err. */
int kvd_access_check(const struct kvd_access *a, char *err, size_t err_size);

/* The first [namespace] section whose pattern matches name, or NULL. */
const struct kvd_share *kvd_access_share(const struct kvd_access *a, const char *name);
uid_t kvd_share_owner(const struct kvd_share *s);
const char *kvd_share_pattern(const struct kvd_share *s);

/* What p may do on a namespace of owner that share (may be NULL) governs:
 * the owner everything, others what the share grants them. Admins get no
 * data rights from being admins (kvd_peer.admin is for managing). */
unsigned kvd_access_rights(const struct kvd_share *s, uid_t owner, const struct kvd_peer *p);

/* Quota of uid: its [quota] section's values, else the defaults given. */
void kvd_access_quota(const struct kvd_access *a, uid_t uid, const struct kvd_quota *defaults,
                      struct kvd_quota *ret);

/* Whether p is in group g (primary or supplementary). */
bool kvd_peer_in_group(const struct kvd_peer *p, gid_t g);

/* Resolves a user name or a decimal uid (a group name or gid). 0 or -ENOENT. */
int kvd_resolve_user(const char *s, uid_t *ret);
int kvd_resolve_group(const char *s, gid_t *ret);

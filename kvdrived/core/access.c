/* SPDX-License-Identifier: MIT */
#include "access.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "size.h"

#define NS_SECTION "namespace "
#define QUOTA_SECTION "quota "
#define PATTERN_MAX 128

enum principal_kind { P_ANY, P_UID, P_GID };

struct principal {
        enum principal_kind kind;
        uint32_t id;
};

struct plist {
        struct principal *v;
        uint32_t n;
};

struct kvd_share {
        char pattern[PATTERN_MAX];
        bool has_owner;
        uid_t owner;
        struct plist readers, writers;
};

struct quota_rule {
        uid_t uid;
        /* Set fields only: unset ones fall back to the defaults. */
        bool has_host, has_ssd, has_pool, has_ns;
        struct kvd_quota q;
};

struct kvd_access {
        struct kvd_share *shares;
        uint32_t n_shares;
        struct quota_rule *quotas;
        uint32_t n_quotas;
};

int kvd_access_new(struct kvd_access **ret)
{
        struct kvd_access *a = calloc(1, sizeof(*a));

        if (!a)
                return -ENOMEM;
        *ret = a;
        return 0;
}

struct kvd_access *kvd_access_free(struct kvd_access *a)
{
        if (!a)
                return NULL;
        for (uint32_t i = 0; i < a->n_shares; i++) {
                free(a->shares[i].readers.v);
                free(a->shares[i].writers.v);
        }
        free(a->shares);
        free(a->quotas);
        free(a);
        return NULL;
}

static int parse_id(const char *s, uint32_t *ret)
{
        char *end;
        unsigned long v;

        if (!isdigit((unsigned char)*s))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v >= UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

int kvd_resolve_user(const char *s, uid_t *ret)
{
        struct passwd *pw;
        uint32_t id;

        if (parse_id(s, &id) == 0) {
                *ret = (uid_t)id;
                return 0;
        }
        pw = getpwnam(s);
        if (!pw)
                return -ENOENT;
        *ret = pw->pw_uid;
        return 0;
}

int kvd_resolve_group(const char *s, gid_t *ret)
{
        struct group *gr;
        uint32_t id;

        if (parse_id(s, &id) == 0) {
                *ret = (gid_t)id;
                return 0;
        }
        gr = getgrnam(s);
        if (!gr)
                return -ENOENT;
        *ret = gr->gr_gid;
        return 0;
}

/* "alice, @inference 1001 *" -> principals. */
static int parse_principals(const char *value, struct plist *ret, char *err, size_t err_size)
{
        struct plist l = { 0 };
        char buf[1024], *save = NULL;

        if (strlen(value) >= sizeof(buf)) {
                snprintf(err, err_size, "principal list longer than %zu bytes", sizeof(buf) - 1);
                return -E2BIG;
        }
        memcpy(buf, value, strlen(value) + 1);
        for (char *t = strtok_r(buf, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
                struct principal p;
                struct principal *v;
                int r;

                if (strcmp(t, "*") == 0) {
                        p = (struct principal){ P_ANY, 0 };
                } else if (t[0] == '@') {
                        gid_t g;

                        r = kvd_resolve_group(t + 1, &g);
                        if (r < 0) {
                                snprintf(err, err_size, "unknown group '%s'", t + 1);
                                free(l.v);
                                return r;
                        }
                        p = (struct principal){ P_GID, (uint32_t)g };
                } else {
                        uid_t u;

                        r = kvd_resolve_user(t, &u);
                        if (r < 0) {
                                snprintf(err, err_size, "unknown user '%s'", t);
                                free(l.v);
                                return r;
                        }
                        p = (struct principal){ P_UID, (uint32_t)u };
                }
                v = realloc(l.v, sizeof(*v) * (l.n + 1));
                if (!v) {
                        free(l.v);
                        return -ENOMEM;
                }
                l.v = v;
                l.v[l.n++] = p;
        }
        free(ret->v);
        *ret = l;
        return 0;
}

static struct kvd_share *share_for(struct kvd_access *a, const char *pattern)
{
        struct kvd_share *v;

        for (uint32_t i = 0; i < a->n_shares; i++)
                if (strcmp(a->shares[i].pattern, pattern) == 0)
                        return &a->shares[i];
        v = realloc(a->shares, sizeof(*v) * (a->n_shares + 1));
        if (!v)
                return NULL;
        a->shares = v;
        v = &a->shares[a->n_shares++];
        *v = (struct kvd_share){ 0 };
        memcpy(v->pattern, pattern, strlen(pattern) + 1);
        return v;
}

static struct quota_rule *quota_for(struct kvd_access *a, uid_t uid)
{
        struct quota_rule *v;

        for (uint32_t i = 0; i < a->n_quotas; i++)
                if (a->quotas[i].uid == uid)
                        return &a->quotas[i];
        v = realloc(a->quotas, sizeof(*v) * (a->n_quotas + 1));
        if (!v)
                return NULL;
        a->quotas = v;
        v = &a->quotas[a->n_quotas++];
        *v = (struct quota_rule){ .uid = uid };
        return v;
}

static int ns_line(struct kvd_access *a, const char *pattern, const char *name, const char *value, char *err,
                   size_t err_size)
{
        struct kvd_share *s;

        if (!*pattern || strlen(pattern) >= PATTERN_MAX) {
                snprintf(err, err_size, "[namespace PATTERN]: the pattern must be 1-%d bytes", PATTERN_MAX - 1);
                return -EINVAL;
        }
        s = share_for(a, pattern);
        if (!s)
                return -ENOMEM;
        if (strcmp(name, "owner") == 0) {
                if (kvd_resolve_user(value, &s->owner) < 0) {
                        snprintf(err, err_size, "[namespace %s] owner: unknown user '%s'", pattern, value);
                        return -EINVAL;
                }
                s->has_owner = true;
                return 1;
        }
        if (strcmp(name, "readers") == 0 || strcmp(name, "writers") == 0) {
                char why[160] = "";
                int r = parse_principals(value, name[0] == 'r' ? &s->readers : &s->writers, why, sizeof(why));

                if (r < 0) {
                        snprintf(err, err_size, "[namespace %s] %s: %s", pattern, name,
                                 why[0] ? why : strerror(-r));
                        return r == -ENOMEM ? r : -EINVAL;
                }
                return 1;
        }
        snprintf(err, err_size, "[namespace %s]: unknown key '%s' (owner, readers, writers)", pattern, name);
        return -EINVAL;
}

static int quota_value(const char *value, uint64_t max, uint64_t *ret)
{
        uint64_t v;
        int r = kvd_parse_size(value, &v);

        if (r < 0)
                return r;
        if (v > max)
                return -ERANGE;
        *ret = v == 0 ? UINT64_MAX : v;
        return 0;
}

static int quota_line(struct kvd_access *a, const char *user, const char *name, const char *value, char *err,
                      size_t err_size)
{
        struct quota_rule *q;
        uid_t uid;
        uint64_t v = 0;
        int r;

        if (kvd_resolve_user(user, &uid) < 0) {
                snprintf(err, err_size, "[quota %s]: unknown user", user);
                return -EINVAL;
        }
        q = quota_for(a, uid);
        if (!q)
                return -ENOMEM;
        if (strcmp(name, "namespaces") == 0) {
                r = quota_value(value, UINT32_MAX - 1, &v);
                q->q.namespaces = v == UINT64_MAX ? UINT32_MAX : (uint32_t)v;
                q->has_ns = true;
        } else if (strcmp(name, "host-bytes") == 0) {
                r = quota_value(value, UINT64_MAX - 1, &q->q.host_bytes);
                q->has_host = true;
        } else if (strcmp(name, "ssd-bytes") == 0) {
                r = quota_value(value, UINT64_MAX - 1, &q->q.ssd_bytes);
                q->has_ssd = true;
        } else if (strcmp(name, "pool-bytes") == 0) {
                r = quota_value(value, UINT64_MAX - 1, &q->q.pool_bytes);
                q->has_pool = true;
        } else {
                snprintf(err, err_size, "[quota %s]: unknown key '%s' (host-bytes, ssd-bytes, pool-bytes, namespaces)",
                         user, name);
                return -EINVAL;
        }
        if (r < 0) {
                snprintf(err, err_size, "[quota %s] %s: invalid value '%s' (a size, 0 for no cap)", user, name, value);
                return -EINVAL;
        }
        return 1;
}

int kvd_access_ini(struct kvd_access *a, const char *section, const char *name, const char *value,
                   char *err, size_t err_size)
{
        if (strncmp(section, NS_SECTION, strlen(NS_SECTION)) == 0)
                return ns_line(a, section + strlen(NS_SECTION), name, value, err, err_size);
        if (strncmp(section, QUOTA_SECTION, strlen(QUOTA_SECTION)) == 0)
                return quota_line(a, section + strlen(QUOTA_SECTION), name, value, err, err_size);
        return 0;
}

int kvd_access_check(const struct kvd_access *a, char *err, size_t err_size)
{
        for (uint32_t i = 0; i < a->n_shares; i++)
                if (!a->shares[i].has_owner) {
                        snprintf(err, err_size, "[namespace %s] needs an owner (owner = USER)", a->shares[i].pattern);
                        return -EINVAL;
                }
        return 0;
}

const struct kvd_share *kvd_access_share(const struct kvd_access *a, const char *name)
{
        if (!a)
                return NULL;
        for (uint32_t i = 0; i < a->n_shares; i++)
                if (fnmatch(a->shares[i].pattern, name, 0) == 0)
                        return &a->shares[i];
        return NULL;
}

uid_t kvd_share_owner(const struct kvd_share *s)
{
        return s->owner;
}

const char *kvd_share_pattern(const struct kvd_share *s)
{
        return s->pattern;
}

bool kvd_peer_in_group(const struct kvd_peer *p, gid_t g)
{
        if (p->gid == g)
                return true;
        for (uint32_t i = 0; i < p->n_groups; i++)
                if (p->groups[i] == g)
                        return true;
        return false;
}

static bool listed(const struct plist *l, const struct kvd_peer *p)
{
        for (uint32_t i = 0; i < l->n; i++) {
                const struct principal *x = &l->v[i];

                if (x->kind == P_ANY || (x->kind == P_UID && x->id == (uint32_t)p->uid) ||
                    (x->kind == P_GID && kvd_peer_in_group(p, (gid_t)x->id)))
                        return true;
        }
        return false;
}

unsigned kvd_access_rights(const struct kvd_share *s, uid_t owner, const struct kvd_peer *p)
{
        unsigned r = 0;

        if (p->uid == owner)
                return KVD_RIGHT_READ | KVD_RIGHT_WRITE | KVD_RIGHT_OWNER;
        if (!s || s->owner != owner)
                return 0;
        if (listed(&s->writers, p))
                r |= KVD_RIGHT_WRITE | KVD_RIGHT_READ;
        if (listed(&s->readers, p))
                r |= KVD_RIGHT_READ;
        return r;
}

void kvd_access_quota(const struct kvd_access *a, uid_t uid, const struct kvd_quota *defaults,
                      struct kvd_quota *ret)
{
        *ret = *defaults;
        if (!a)
                return;
        for (uint32_t i = 0; i < a->n_quotas; i++) {
                const struct quota_rule *q = &a->quotas[i];

                if (q->uid != uid)
                        continue;
                if (q->has_host)
                        ret->host_bytes = q->q.host_bytes;
                if (q->has_ssd)
                        ret->ssd_bytes = q->q.ssd_bytes;
                if (q->has_pool)
                        ret->pool_bytes = q->q.pool_bytes;
                if (q->has_ns)
                        ret->namespaces = q->q.namespaces;
                return;
        }
}

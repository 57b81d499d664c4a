/* SPDX-License-Identifier: MIT */
#include "tiers.h"

#include "host.h"
#include "remote.h"
#include "ssd.h"

int kvd_tiers_new(const struct kvd_config *cfg, struct kvd_tier **ret)
{
        struct kvd_remote *remote = NULL;
        struct kvd_ssd *ssd = NULL;
        struct kvd_host *host;
        int n = 0, r;

        if (cfg->ssd_bytes) {
                r = kvd_ssd_new(cfg, &ssd);
                if (r < 0)
                        return r;
        }
        r = kvd_host_new(cfg, &host);
        if (r < 0) {
                kvd_ssd_free(ssd);
                return r;
        }
        if (cfg->remote[0]) {
                r = kvd_remote_new(cfg, &remote);
                if (r < 0) {
                        kvd_ssd_free(ssd);
                        kvd_host_tier(host)->ops->destroy(kvd_host_tier(host));
                        return r;
                }
        }
        ret[n++] = kvd_host_tier(host);
        if (ssd) {
                kvd_ssd_attach_host(ssd, host);
                ret[n++] = kvd_ssd_tier(ssd);
        }
        if (remote)
                ret[n++] = kvd_remote_tier(remote);
        return n;
}

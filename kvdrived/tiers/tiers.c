/* SPDX-License-Identifier: MIT */
#include "tiers.h"

#include "host.h"
#include "ssd.h"

int kvd_tiers_new(const struct kvd_config *cfg, struct kvd_tier **ret)
{
        struct kvd_ssd *ssd = NULL;
        struct kvd_host *host;
        int r;

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
        ret[0] = kvd_host_tier(host);
        if (!ssd)
                return 1;
        kvd_ssd_attach_host(ssd, host);
        ret[1] = kvd_ssd_tier(ssd);
        return 2;
}

/* SPDX-License-Identifier: MIT */
/*
 * Loads the CUDA module on first use (device.h, cuda-module.h). Compiled
 * into every kvdrived: it needs libdl only, never a CUDA library.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-module.h"
#include "device.h"
#include "log.h"

enum cuda_state { CUDA_NOT_LOADED, CUDA_READY, CUDA_UNAVAILABLE };

struct kvd_cuda {
        char *module_path;
        struct kvd_cuda_host_ctx ctx;
        enum cuda_state state;
        int load_error;                 /* -errno of the failed load */
        const struct kvd_cuda_module_ops *ops;
        char status[160];
};

static void module_log(int priority, const char *msg)
{
        kvd_log(priority, "cuda: %s", msg);
}

int kvd_cuda_new(const char *module_path, void *host_base, uint64_t host_len, uint64_t host_align,
                 int host_numa_node, struct kvd_cuda **ret)
{
        struct kvd_cuda *c = calloc(1, sizeof(*c));

        if (!c)
                return -ENOMEM;
        c->module_path = strdup(module_path);
        if (!c->module_path) {
                free(c);
                return -ENOMEM;
        }
        c->ctx = (struct kvd_cuda_host_ctx){
                .version = KVD_CUDA_MODULE_VERSION,
                .size = sizeof(c->ctx),
                .host_base = host_base,
                .host_len = host_len,
                .host_align = host_align,
                .host_numa_node = host_numa_node,
                .log = module_log,
        };
        snprintf(c->status, sizeof(c->status), "not loaded (loads with the first CUDA pool)");
        *ret = c;
        return 0;
}

struct kvd_cuda *kvd_cuda_free(struct kvd_cuda *c)
{
        if (!c)
                return NULL;
        if (c->state == CUDA_READY)
                c->ops->shutdown();
        free(c->module_path);
        free(c);
        return NULL;
}

static void unavailable(struct kvd_cuda *c, int err, const char *why)
{
        c->state = CUDA_UNAVAILABLE;
        c->load_error = err;
        snprintf(c->status, sizeof(c->status), "unavailable: %s", why);
        log_warning("CUDA backend unavailable: %s; CUDA pools are refused, memfd pools work", why);
}

/* dlopen + init. The handle is never closed (cuda-module.h). */
static void load(struct kvd_cuda *c)
{
        kvd_cuda_module_init_fn init;
        char why[256] = "";
        void *dl;
        int r;

        dl = dlopen(c->module_path, RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
                const char *e = dlerror();

                snprintf(why, sizeof(why), "cannot load the CUDA module: %s", e ? e : c->module_path);
                unavailable(c, -ENOENT, why);
                return;
        }
        *(void **)&init = dlsym(dl, KVD_CUDA_MODULE_SYMBOL);
        if (!init) {
                snprintf(why, sizeof(why), "%s has no %s", c->module_path, KVD_CUDA_MODULE_SYMBOL);
                unavailable(c, -ENOENT, why);
                return;
        }
        r = init(&c->ctx, &c->ops, why, sizeof(why));
        if (r == 0 && c->ops->version != KVD_CUDA_MODULE_VERSION) {
                snprintf(why, sizeof(why), "module speaks version %u, kvdrived %u", c->ops->version,
                         KVD_CUDA_MODULE_VERSION);
                r = -ENOTSUP;
        }
        if (r < 0) {
                unavailable(c, r == -ENODEV ? -ENODEV : -ENOENT, why);
                return;
        }
        c->state = CUDA_READY;
        c->ops->describe(why, sizeof(why));
        snprintf(c->status, sizeof(c->status), "ready: %s", why);
        log_notice("CUDA backend %s", c->status);
}

int kvd_cuda_pool_open(struct kvd_cuda *c, const struct kvd_cuda_pool_spec *spec,
                       struct kvd_peer_pool **ret, char *why, size_t why_size)
{
        int r;

        if (c->state == CUDA_NOT_LOADED)
                load(c);
        if (c->state != CUDA_READY) {
                snprintf(why, why_size, "CUDA backend %s", c->status);
                return c->load_error;
        }
        r = c->ops->pool_open(spec, ret, why, why_size);
        if (r == 0)
                (*ret)->backend = KVD_BACKEND_CUDA;
        return r;
}

bool kvd_cuda_ready(const struct kvd_cuda *c)
{
        return c && c->state == CUDA_READY;
}

const char *kvd_cuda_status(const struct kvd_cuda *c)
{
        return c ? c->status : "not configured";
}

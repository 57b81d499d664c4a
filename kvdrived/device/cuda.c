/* SPDX-License-Identifier: MIT */
/*
 * The CUDA device backend, built as the module kvdrive-cuda.so (contract:
 * cuda-module.h) and linked with the static CUDA runtime, which opens the
 * driver (libcuda) with dlopen() when first used.
 *
 * A client's pool is one or more cudaMalloc allocations it shares with
 * cudaIpcGetMemHandle; the daemon opens each with cudaIpcOpenMemHandle, checks
 * that the slots fit in it, and closes it (cudaIpcCloseMemHandle) with the
 * pool's last reference — on session close, client death, or daemon stop —
 * so no mapping outlives its client and keeps its GPU memory pinned. A
 * handle opened by two pools (a client that registers the same memory
 * again) is mapped once and reference-counted here.
 *
 * Copies run on the transfer worker that claimed them, on a stream that
 * worker owns (one per worker and device), as cudaMemcpyAsync between the
 * mapping and the host tier, which init page-locks with cudaHostRegister in
 * pieces (KVD_CUDA_PIN_PIECE_MAX at most).
 */
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "cuda-module.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_DEVICES 64

typedef CUresult (*get_range_fn)(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr);

/* One opened IPC handle; pools that name the same handle share it. */
struct mapping {
        struct mapping *next;
        int device;
        uint8_t handle[KVD_CUDA_HANDLE_BYTES];
        uint8_t *base;          /* the daemon's address of the allocation */
        uint64_t size;          /* of the allocation, 0 if the driver did not say */
        unsigned refs;
};

struct cuda_alloc {
        struct mapping *map;
        uint8_t *slot0;
        uint32_t first_slot;    /* pool slot number of slot0 */
};

struct cuda_pool {
        struct kvd_peer_pool pool;
        int device;
        uint32_t n_allocs;
        struct cuda_alloc *allocs;
        uint32_t n_events;
        cudaEvent_t *events;    /* the client's per-layer events, opened */
};

static struct {
        struct kvd_cuda_host_ctx ctx;
        int n_devices;
        get_range_fn get_range;
        uint8_t *pin_base;      /* pinned host memory: pieces of pin_piece */
        uint64_t pin_len, pin_piece;
        uint32_t pin_pieces;
        pthread_mutex_t lock;   /* mappings */
        struct mapping *mappings;
        char where[160];        /* for describe() */
} M = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* One stream per transfer worker and device, created on first use and left
 * to the process's end (workers live as long as the daemon). */
static __thread cudaStream_t worker_streams[MAX_DEVICES];

static void mlog(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mlog(int priority, const char *fmt, ...)
{
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (M.ctx.log)
                M.ctx.log(priority, msg);
}

static int set_device(int device, char *why, size_t why_size)
{
        cudaError_t e = cudaSetDevice(device);

        if (e != cudaSuccess) {
                snprintf(why, why_size, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
                return -EIO;
        }
        return 0;
}

/* ---- copies ---------------------------------------------------------- */

static uint8_t *slot_ptr(const struct cuda_pool *cp, uint32_t slot)
{
        uint32_t lo = 0, hi = cp->n_allocs;

        /* The last allocation whose first slot is <= slot. */
        while (hi - lo > 1) {
                uint32_t mid = lo + (hi - lo) / 2;

                if (cp->allocs[mid].first_slot <= slot)
                        lo = mid;
                else
                        hi = mid;
        }
        return cp->allocs[lo].slot0 + (uint64_t)(slot - cp->allocs[lo].first_slot) * cp->pool.slot_bytes;
}

static int copy(struct cuda_pool *cp, void *dst, const void *src, size_t len, enum cudaMemcpyKind kind)
{
        cudaStream_t *s = &worker_streams[cp->device];
        cudaError_t e;

        e = cudaSetDevice(cp->device);
        if (e == cudaSuccess && !*s)
                e = cudaStreamCreateWithFlags(s, cudaStreamNonBlocking);
        if (e == cudaSuccess)
                e = cudaMemcpyAsync(dst, src, len, kind, *s);
        if (e == cudaSuccess)
                e = cudaStreamSynchronize(*s);
        if (e != cudaSuccess) {
                mlog(LOG_ERR, "GPU %d: copy of %zu bytes %s: %s", cp->device, len,
                     kind == cudaMemcpyDeviceToHost ? "to host" : "to device", cudaGetErrorString(e));
                return -EIO;
        }
        return 0;
}

static int cuda_copy_in(struct kvd_peer_pool *p, uint32_t slot, void *host, size_t len)
{
        struct cuda_pool *cp = (struct cuda_pool *)p;

        return copy(cp, host, slot_ptr(cp, slot), len, cudaMemcpyDeviceToHost);
}

static int cuda_copy_out(struct kvd_peer_pool *p, uint32_t slot, const void *host, size_t len)
{
        struct cuda_pool *cp = (struct cuda_pool *)p;

        return copy(cp, slot_ptr(cp, slot), host, len, cudaMemcpyHostToDevice);
}

/* ---- IPC mappings ---------------------------------------------------- */

static void mapping_put(struct mapping *m)
{
        struct mapping **pp;
        cudaError_t e;

        if (!m)
                return;
        pthread_mutex_lock(&M.lock);
        if (--m->refs > 0) {
                pthread_mutex_unlock(&M.lock);
                return;
        }
        for (pp = &M.mappings; *pp != m; pp = &(*pp)->next)
                ;
        *pp = m->next;
        pthread_mutex_unlock(&M.lock);
        e = cudaSetDevice(m->device);
        if (e == cudaSuccess)
                e = cudaIpcCloseMemHandle(m->base);
        if (e != cudaSuccess)
                mlog(LOG_WARNING, "GPU %d: cudaIpcCloseMemHandle: %s", m->device, cudaGetErrorString(e));
        free(m);
}

/* Opens handle on device (current), or takes another reference on it. */
static int mapping_get(int device, const uint8_t *handle, struct mapping **ret, char *why, size_t why_size)
{
        cudaIpcMemHandle_t h;
        struct mapping *m;
        CUdeviceptr base = 0;
        size_t size = 0;
        cudaError_t e;
        void *ptr;

        pthread_mutex_lock(&M.lock);
        for (m = M.mappings; m; m = m->next)
                if (m->device == device && memcmp(m->handle, handle, KVD_CUDA_HANDLE_BYTES) == 0) {
                        m->refs++;
                        pthread_mutex_unlock(&M.lock);
                        *ret = m;
                        return 0;
                }
        pthread_mutex_unlock(&M.lock);

        memcpy(&h, handle, sizeof(h));
        e = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
                snprintf(why, why_size, "cudaIpcOpenMemHandle on GPU %d: %s", device, cudaGetErrorString(e));
                cudaGetLastError(); /* not sticky: clear it */
                return -EINVAL;
        }
        m = calloc(1, sizeof(*m));
        if (!m) {
                cudaIpcCloseMemHandle(ptr);
                snprintf(why, why_size, "out of memory");
                return -ENOMEM;
        }
        /* The allocation's real size, so that no slot can reach past it: a
         * device fault would poison the daemon's context for every client. */
        if (M.get_range && M.get_range(&base, &size, (CUdeviceptr)(uintptr_t)ptr) == CUDA_SUCCESS &&
            base == (CUdeviceptr)(uintptr_t)ptr)
                m->size = size;
        m->device = device;
        memcpy(m->handle, handle, KVD_CUDA_HANDLE_BYTES);
        m->base = ptr;
        m->refs = 1;
        pthread_mutex_lock(&M.lock);
        m->next = M.mappings;
        M.mappings = m;
        pthread_mutex_unlock(&M.lock);
        *ret = m;
        return 0;
}

/* ---- pools ----------------------------------------------------------- */

static void cuda_close(struct kvd_peer_pool *p)
{
        struct cuda_pool *cp = (struct cuda_pool *)p;

        if (cp->events && cudaSetDevice(cp->device) == cudaSuccess)
                for (uint32_t i = 0; i < cp->n_events; i++)
                        if (cp->events[i])
                                cudaEventDestroy(cp->events[i]);
        for (uint32_t i = 0; i < cp->n_allocs; i++)
                mapping_put(cp->allocs[i].map);
        free(cp->events);
        free(cp->allocs);
        free(cp);
}

static const struct kvd_device_ops cuda_ops = {
        .name = "cuda",
        .copy_in = cuda_copy_in,
        .copy_out = cuda_copy_out,
        .close = cuda_close,
};

static int resolve_device(const struct kvd_cuda_pool_spec *spec, int *ret, char *why, size_t why_size)
{
        cudaError_t e;

        if (spec->pci_bus_id[0]) {
                e = cudaDeviceGetByPCIBusId(ret, spec->pci_bus_id);
                if (e != cudaSuccess) {
                        cudaGetLastError();
                        snprintf(why, why_size, "no GPU at PCI bus id %s: %s", spec->pci_bus_id,
                                 cudaGetErrorString(e));
                        return -EINVAL;
                }
        } else {
                *ret = spec->device;
        }
        if (*ret < 0 || *ret >= M.n_devices || *ret >= MAX_DEVICES) {
                snprintf(why, why_size, "GPU %d: the daemon sees %d GPUs", *ret, M.n_devices);
                return -EINVAL;
        }
        return 0;
}

static int cuda_pool_open(const struct kvd_cuda_pool_spec *spec, struct kvd_peer_pool **ret, char *why,
                          size_t why_size)
{
        struct cuda_pool *cp;
        uint32_t first = 0;
        int device, r;

        r = resolve_device(spec, &device, why, why_size);
        if (r < 0)
                return r;
        r = set_device(device, why, why_size);
        if (r < 0)
                return r;
        cp = calloc(1, sizeof(*cp));
        if (!cp)
                goto err_nomem;
        cp->pool = (struct kvd_peer_pool){ .ops = &cuda_ops, .refs = 1, .slot_count = spec->slot_count,
                                           .slot_bytes = spec->slot_bytes, .backend = KVD_BACKEND_CUDA };
        cp->device = device;
        cp->allocs = calloc(spec->n_allocs, sizeof(*cp->allocs));
        cp->events = calloc(spec->n_events ? spec->n_events : 1, sizeof(*cp->events));
        if (!cp->allocs || !cp->events)
                goto err_nomem;
        for (uint32_t i = 0; i < spec->n_allocs; i++) {
                const struct kvd_cuda_alloc *a = &spec->allocs[i];
                uint64_t need = a->offset + (uint64_t)a->slot_count * spec->slot_bytes; /* checked: no overflow */
                struct mapping *m;

                r = mapping_get(device, a->handle, &m, why, why_size);
                if (r < 0)
                        goto err_close;
                cp->allocs[i] = (struct cuda_alloc){ .map = m, .slot0 = m->base + a->offset, .first_slot = first };
                cp->n_allocs++;
                if (m->size && need > m->size) {
                        snprintf(why, why_size,
                                 "allocation %u: %u slots of %llu bytes at offset %llu need %llu bytes, it has %llu",
                                 i, a->slot_count, (unsigned long long)spec->slot_bytes,
                                 (unsigned long long)a->offset, (unsigned long long)need,
                                 (unsigned long long)m->size);
                        r = -EMSGSIZE;
                        goto err_close;
                }
                first += a->slot_count;
        }
        for (uint32_t i = 0; i < spec->n_events; i++) {
                cudaIpcEventHandle_t h;
                cudaError_t e;

                memcpy(&h, spec->events[i], sizeof(h));
                e = cudaIpcOpenEventHandle(&cp->events[i], h);
                if (e != cudaSuccess) {
                        cudaGetLastError();
                        cp->events[i] = NULL;
                        snprintf(why, why_size, "event handle %u: cudaIpcOpenEventHandle: %s", i,
                                 cudaGetErrorString(e));
                        r = -EINVAL;
                        goto err_close;
                }
                cp->n_events++;
        }
        mlog(LOG_INFO, "GPU %d: pool of %u slots in %u allocations, %u layer events opened", device,
             spec->slot_count, spec->n_allocs, spec->n_events);
        *ret = &cp->pool;
        return 0;

err_nomem:
        snprintf(why, why_size, "out of memory");
        r = -ENOMEM;
err_close:
        if (cp)
                cuda_close(&cp->pool);
        return r;
}

/* ---- host pool and module life --------------------------------------- */

static void unpin(void)
{
        for (uint32_t i = 0; i < M.pin_pieces; i++)
                cudaHostUnregister(M.pin_base + (uint64_t)i * M.pin_piece);
        M.pin_pieces = 0;
}

/*
 * Page-locks the host tier in pieces: one registration of hundreds of GiB
 * takes long and fails past 512 GiB. A piece is a multiple of the host
 * extent, so no block page straddles two. KVDRIVE_CUDA_PIN_PIECE (bytes)
 * makes pieces smaller, for tests. Returns false if pinning failed (copies
 * then go through the driver's staging: correct, slower).
 */
static bool pin_host(void)
{
        uint64_t piece = KVD_CUDA_PIN_PIECE_MAX, align = M.ctx.host_align ? M.ctx.host_align : 4096;
        const char *env = getenv("KVDRIVE_CUDA_PIN_PIECE");
        cudaError_t e;

        if (env && strtoull(env, NULL, 0) > 0 && strtoull(env, NULL, 0) < piece)
                piece = strtoull(env, NULL, 0);
        piece = piece / align * align;
        if (piece == 0)
                piece = align;
        M.pin_base = M.ctx.host_base;
        M.pin_len = M.ctx.host_len;
        M.pin_piece = piece;
        for (uint64_t off = 0; off < M.pin_len; off += piece) {
                uint64_t n = M.pin_len - off < piece ? M.pin_len - off : piece;

                e = cudaHostRegister(M.pin_base + off, n, cudaHostRegisterPortable);
                if (e != cudaSuccess) {
                        cudaGetLastError();
                        mlog(LOG_WARNING, "cudaHostRegister of %llu MiB at offset %llu MiB: %s; host pool NOT "
                             "pinned, copies will be slower", (unsigned long long)(n >> 20),
                             (unsigned long long)(off >> 20), cudaGetErrorString(e));
                        unpin();
                        return false;
                }
                M.pin_pieces++;
        }
        return true;
}

/* The NUMA node of a GPU from sysfs, -1 if unknown. */
static int gpu_numa_node(int device)
{
        char bus[KVD_CUDA_BUS_ID_MAX], path[128];
        int node = -1;
        FILE *f;

        if (cudaDeviceGetPCIBusId(bus, sizeof(bus), device) != cudaSuccess)
                return -1;
        for (char *c = bus; *c; c++)
                if (*c >= 'A' && *c <= 'F')
                        *c = (char)(*c - 'A' + 'a');
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/numa_node", bus);
        f = fopen(path, "re");
        if (!f)
                return -1;
        if (fscanf(f, "%d", &node) != 1)
                node = -1;
        fclose(f);
        return node;
}

/* The host pool was bound at start (host-numa-node); say when that is not
 * the first GPU's node, since every copy then crosses the socket link. */
static void check_numa(void)
{
        int node = gpu_numa_node(0);

        if (node < 0)
                return;
        if (M.ctx.host_numa_node < 0)
                mlog(LOG_NOTICE, "GPU 0 is on NUMA node %d: set host-numa-node=%d to keep the host pool there",
                     node, node);
        else if (M.ctx.host_numa_node != node)
                mlog(LOG_WARNING, "host pool on NUMA node %d, GPU 0 on node %d: copies cross sockets",
                     M.ctx.host_numa_node, node);
}

static void cuda_describe(char *buf, size_t size)
{
        snprintf(buf, size, "%s", M.where);
}

static void cuda_shutdown(void)
{
        while (M.mappings) {    /* a pool leaked by a bug: still close it */
                M.mappings->refs = 1;
                mapping_put(M.mappings);
        }
        unpin();
}

static const struct kvd_cuda_module_ops module_ops = {
        .version = KVD_CUDA_MODULE_VERSION,
        .pool_open = cuda_pool_open,
        .describe = cuda_describe,
        .shutdown = cuda_shutdown,
};

EXPORT int kvd_cuda_module_init(const struct kvd_cuda_host_ctx *ctx, const struct kvd_cuda_module_ops **ret,
                                char *why, size_t why_size)
{
        struct cudaDeviceProp prop;
        enum cudaDriverEntryPointQueryResult q;
        void *fn = NULL;
        cudaError_t e;
        bool pinned;

        if (ctx->version != KVD_CUDA_MODULE_VERSION || ctx->size < sizeof(*ctx)) {
                snprintf(why, why_size, "module version %u, kvdrived speaks %u", KVD_CUDA_MODULE_VERSION,
                         ctx->version);
                return -ENOTSUP;
        }
        M.ctx = *ctx;
        e = cudaGetDeviceCount(&M.n_devices);
        if (e != cudaSuccess || M.n_devices <= 0) {
                snprintf(why, why_size, "no CUDA device (%s)",
                         e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
                return -ENODEV;
        }
        e = cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault, &q);
        if (e == cudaSuccess && q == cudaDriverEntryPointSuccess)
                M.get_range = (get_range_fn)fn;
        else
                mlog(LOG_WARNING, "no cuMemGetAddressRange: allocation sizes are not checked");
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
                snprintf(prop.name, sizeof(prop.name), "?");
        pinned = pin_host();
        check_numa();
        snprintf(M.where, sizeof(M.where), "%d GPU%s (%.64s%s), host pool %s %u piece%s", M.n_devices,
                 M.n_devices > 1 ? "s" : "", prop.name, M.n_devices > 1 ? ", ..." : "",
                 pinned ? "pinned in" : "NOT pinned,", M.pin_pieces, M.pin_pieces == 1 ? "" : "s");
        *ret = &module_ops;
        return 0;
}

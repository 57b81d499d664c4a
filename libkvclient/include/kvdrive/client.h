/* SPDX-License-Identifier: MIT */
/*
 * libkvclient: the client library of the KVDrive KV-cache daemon.
 *
 * Conventions (as in liburing and systemd):
 *  - Functions that act return 0 (or a non-negative count) on success and a
 *    negative number on failure: -errno for system errors, -KVC_E_* for
 *    errors the daemon reported. kvc_strerror() names both.
 *  - Output parameters are named ret_* and are left untouched on failure.
 *  - Destructors accept NULL and return NULL.
 *  - A kvc_client is not thread-safe: use one per thread, or lock around it.
 *  - The library never logs and never calls exit().
 */
#ifndef KVDRIVE_CLIENT_H
#define KVDRIVE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Errors the daemon reports (returned negated). Stable: mirrors the wire
 * ErrorCode enum plus KVC_E_BASE. */
enum {
        KVC_E_BASE = 10000,
        KVC_E_MALFORMED = KVC_E_BASE + 1,
        KVC_E_TRUNCATED = KVC_E_BASE + 2,
        KVC_E_TOO_LARGE = KVC_E_BASE + 3,
        KVC_E_UNKNOWN_TYPE = KVC_E_BASE + 4,
        KVC_E_VERSION = KVC_E_BASE + 5,
        KVC_E_NO_HELLO = KVC_E_BASE + 6,
        KVC_E_NO_NAMESPACE = KVC_E_BASE + 7,
        KVC_E_NO_POOL = KVC_E_BASE + 8,
        KVC_E_OUT_OF_RANGE = KVC_E_BASE + 9,
        KVC_E_GEOMETRY = KVC_E_BASE + 10,
        KVC_E_NS_CONFLICT = KVC_E_BASE + 11,
        KVC_E_LIMIT = KVC_E_BASE + 12,
        KVC_E_BAD_ARG = KVC_E_BASE + 13,
        KVC_E_NO_SPACE = KVC_E_BASE + 14,
        KVC_E_INTERNAL = KVC_E_BASE + 15,
        KVC_E_UNSUPPORTED = KVC_E_BASE + 16,
        KVC_E_QUOTA = KVC_E_BASE + 17,          /* the uid is at a quota; kvc_last_error() names it */
        KVC_E_DENIED = KVC_E_BASE + 18,         /* not allowed on this namespace (e.g. a reader writing) */
        KVC_E_MAX = KVC_E_BASE + 19,
};

/* Returns a static description of err (a negative return of this library,
 * -errno or -KVC_E_*). Never NULL. */
const char *kvc_strerror(int err);

enum kvc_dtype {
        KVC_DTYPE_F16 = 1,
        KVC_DTYPE_BF16 = 2,
        KVC_DTYPE_F32 = 3,
        KVC_DTYPE_FP8 = 4,
};

/* Size in bytes of one element of dtype, 0 if unknown. */
size_t kvc_dtype_size(enum kvc_dtype dtype);

/* One model geometry. A block holds K and V of block_tokens tokens of ONE
 * layer, all kv heads: 2 * kv_heads * head_dim * block_tokens * dtype size. */
struct kvc_geometry {
        uint32_t layers;
        uint32_t kv_heads;
        uint32_t head_dim;
        uint32_t dtype;          /* enum kvc_dtype */
        uint32_t block_tokens;
};

/* Bytes of one block of g, 0 if g is invalid. */
uint64_t kvc_block_bytes(const struct kvc_geometry *g);

/* A 128-bit block key, opaque to the daemon. */
struct kvc_key {
        uint64_t hi;
        uint64_t lo;
};

/*
 * Chained prefix key: XXH3-128 over the 16 bytes of parent (little-endian
 * hi then lo; all zero when parent is NULL, for the first block) followed by
 * the n token ids as little-endian uint32. Equal token prefixes give equal
 * key chains in every process. Stores the key in *ret.
 */
void kvc_key_chain(const struct kvc_key *parent, const uint32_t *tokens, size_t n,
                   struct kvc_key *ret);

/*
 * Keys of the full blocks of a token sequence: ret_keys[i] is the chained key
 * of block i (tokens [i*block_tokens, (i+1)*block_tokens)). Writes at most
 * max keys; returns the number of keys written (n_tokens / block_tokens,
 * capped at max), or -EINVAL.
 */
int kvc_key_prefix_chain(const uint32_t *tokens, size_t n_tokens, uint32_t block_tokens,
                         struct kvc_key *ret_keys, size_t max);

/* A fresh random sequence id for private (unshared) keys. 0 or -errno. */
int kvc_key_sequence_new(struct kvc_key *ret_seq);

/* Private key of block index of one sequence: XXH3-128 of a domain tag,
 * seq and index, so it never equals a prefix key in practice. */
void kvc_key_private(const struct kvc_key *seq, uint64_t index, struct kvc_key *ret);

typedef struct kvc_client kvc_client;
typedef struct kvc_pool kvc_pool;

/*
 * Connects to the daemon at path and says Hello. name identifies the client
 * in the daemon's logs (may be NULL). The caller frees the client with
 * kvc_disconnect().
 *
 * path NULL searches, in this order, for every user (root included):
 *  1. $KVDRIVE_SOCKET, when set: an explicit choice, used as is, alone;
 *  2. the system socket /run/kvdrive/kvdrived.sock (kvdrived.socket);
 *  3. the per-user socket $XDG_RUNTIME_DIR/kvdrive/kvdrived.sock, or
 *     /tmp/kvdrive-$EUID/kvdrived.sock without XDG_RUNTIME_DIR.
 * A default socket (2, 3) is trusted only if its directory is a real
 * directory (not a symlink) owned by root or by the caller's euid and not
 * writable by group or others; an untrusted one is skipped (a directory
 * someone else made could hold their daemon, which would get our pools).
 * The first socket that answers is used; a daemon that answers but refuses
 * the Hello ends the search with its error.
 *
 * Returns 0, or -errno: -ENOENT when no socket exists, else the first other
 * failure met (-EACCES no permission, -ECONNREFUSED nobody listens, -EPERM
 * directory not trusted), or the Hello's error. kvc_connect_opts() says
 * which paths were tried and why each failed.
 */
int kvc_connect(const char *path, const char *name, kvc_client **ret);

/* Options of kvc_connect_opts(). Zero it, set size, then what you need. */
struct kvc_connect_opts {
        size_t size;            /* sizeof(struct kvc_connect_opts) */
        const char *path;       /* as kvc_connect()'s path: NULL searches */
        const char *name;       /* as kvc_connect()'s name, may be NULL */
        /* If not NULL: report_size bytes (the caller's) that receive the
         * report, NUL-terminated (cut to fit): one line per path tried,
         * "PATH: why it failed" or "PATH: connected". */
        char *report;
        size_t report_size;
};

/*
 * kvc_connect() with options, and a report of the search for the caller to
 * show (the library does not log). Returns what kvc_connect() does, or
 * -EINVAL (opts NULL or opts->size too small).
 */
int kvc_connect_opts(const struct kvc_connect_opts *opts, kvc_client **ret);

/* Closes the connection and frees the client. Requests still in flight are
 * abandoned (the daemon releases them). Pools created on c must be freed
 * with kvc_pool_free() before or after; they stay mapped until then. */
kvc_client *kvc_disconnect(kvc_client *c);

/* The socket fd, for poll/epoll integration (readable: call kvc_poll()). */
int kvc_fd(const kvc_client *c);

/* Daemon version string from the Hello, owned by c. */
const char *kvc_daemon_version(const kvc_client *c);

/* Largest number of items one Put/Get/Lookup/Delete may carry. */
uint32_t kvc_max_items(const kvc_client *c);

/* Message of the last error the daemon reported on c ("" if none), owned
 * by c and valid until the next call on c. */
const char *kvc_last_error(const kvc_client *c);

/*
 * Registers (or joins, when the name exists with the same geometry and no
 * fingerprint) a namespace. Returns its id in *ret_ns and, if
 * ret_block_bytes is not NULL, the block size in *ret_block_bytes.
 * -KVC_E_NS_CONFLICT if the name exists with another geometry or with a
 * fingerprint (kvc_register_namespace_opts()), -KVC_E_GEOMETRY if g is
 * invalid, -KVC_E_BAD_ARG if the name is not 1-127 bytes of printable
 * ASCII, -KVC_E_QUOTA if the uid owns as many namespaces as its quota
 * allows, -KVC_E_LIMIT if the daemon's table is full.
 *
 * A namespace belongs to the uid that created it and is private to it: the
 * same name registered by another uid is another namespace — unless the
 * daemon's config shares the name of an owner with this uid, which then
 * joins the owner's namespace as a reader (Get, Lookup, Prefetch, scores;
 * Put and Delete give -KVC_E_DENIED) or a writer (docs/security.md).
 */
int kvc_register_namespace(kvc_client *c, const char *name, const struct kvc_geometry *g,
                           uint32_t *ret_ns, uint64_t *ret_block_bytes);

/* Bytes a namespace fingerprint may have (kvc_ns_opts.fingerprint_len). */
#define KVC_FINGERPRINT_MAX 64

/* Options of kvc_register_namespace_opts(). Zero it, set size, then what
 * you need. */
struct kvc_ns_opts {
        size_t size;                            /* sizeof(struct kvc_ns_opts) */
        const char *name;                       /* as kvc_register_namespace()'s */
        const struct kvc_geometry *geometry;    /* as kvc_register_namespace()'s g */
        /*
         * What computed the cached bytes: 0..KVC_FINGERPRINT_MAX bytes of the
         * engine's choice (copied by the call; NULL with length 0: none). The
         * daemon does not interpret it, only compares it. It is part of the
         * namespace's identity like the geometry (the same name with another
         * fingerprint is -KVC_E_NS_CONFLICT), and the remote tier keys
         * shared blocks by it, so machines share blocks only between equal
         * fingerprints: two engines whose KV bytes for the same tokens could
         * differ must give different fingerprints, and engines whose bytes
         * are the same should give the same one.
         *
         * Put in it a hash (e.g. BLAKE2b or XXH3-128) of everything that
         * changes the K and V a token gets or the bytes they are stored as:
         * the model's name and the revision of its weights (a commit id, not
         * a branch name), the KV dtype and any KV quantisation, the
         * tensor-parallel rank and size (each rank holds its own kv heads),
         * the pipeline stage, RoPE scaling, the block layout, and anything
         * else that changes the bytes. Hash a canonical text of them (one
         * "key=value" a line, say), so that every engine that means the
         * same thing computes the same bytes. No fingerprint (length 0) is
         * a value too, equal to every other empty one: give one wherever
         * blocks may be shared (KVC_PUT_SHARED, KVC_GET_SHARED).
         */
        const void *fingerprint;
        size_t fingerprint_len;
};

/*
 * kvc_register_namespace() with options: the name and geometry, and the
 * namespace's fingerprint. Returns what kvc_register_namespace() does (an
 * existing name with another geometry or another fingerprint is
 * -KVC_E_NS_CONFLICT), or -EINVAL: o NULL, o->size too small, no name or
 * geometry, o->fingerprint_len > KVC_FINGERPRINT_MAX, or a NULL fingerprint
 * with a length. kvc_register_namespace() is this with no fingerprint.
 */
int kvc_register_namespace_opts(kvc_client *c, const struct kvc_ns_opts *o, uint32_t *ret_ns,
                                uint64_t *ret_block_bytes);

/*
 * Creates a "device pool" of slot_count slots of slot_bytes each as a sealed
 * memfd (the no-GPU backend), maps it, and registers it with the daemon,
 * which maps it too. The caller frees the pool with kvc_pool_free().
 */
int kvc_pool_create(kvc_client *c, uint32_t slot_count, uint64_t slot_bytes, kvc_pool **ret);

/* Bytes of a cudaIpcMemHandle_t and of a cudaIpcEventHandle_t. */
#define KVC_CUDA_IPC_HANDLE_BYTES 64

/* One cudaMalloc allocation of a CUDA pool. Slots of allocation i follow
 * those of allocation i - 1 (e.g. one allocation per layer). */
struct kvc_cuda_alloc {
        /* cudaIpcGetMemHandle(dev_ptr), as bytes: kvdrive/client-cuda.h
         * fills it for callers that include the CUDA headers. */
        unsigned char ipc_handle[KVC_CUDA_IPC_HANDLE_BYTES];
        void *dev_ptr;          /* the allocation's base, as cudaMalloc gave it */
        uint64_t offset;        /* of slot 0 from dev_ptr */
        uint32_t slot_count;    /* > 0 */
};

struct kvc_cuda_pool_opts {
        size_t size;            /* sizeof(struct kvc_cuda_pool_opts) */
        int device;             /* the GPU's CUDA ordinal in this process */
        /* Its PCI bus id ("0000:17:00.0", cudaDeviceGetPCIBusId); when set,
         * the daemon uses it rather than the ordinal, which depends on each
         * process's CUDA_VISIBLE_DEVICES. */
        char pci_bus_id[32];
        /* Optional: cudaIpcEventHandle_t of one event per layer (created
         * with cudaEventInterprocess | cudaEventDisableTiming), for layer
         * readiness the client's stream can wait on. Copied by the call. */
        const unsigned char (*event_handles)[KVC_CUDA_IPC_HANDLE_BYTES];
        uint32_t n_event_handles;
};

/*
 * Registers a pool of GPU memory the caller allocated: n_allocs allocations
 * holding slot_bytes-sized slots, sum of their slot_count in all. The daemon
 * opens each IPC handle, copies with the GPU's copy engines straight into
 * and out of the slots, and closes the handles when the session ends (or
 * the client dies). The caller keeps the allocations alive until then and
 * frees them itself; kvc_pool_free() frees only the kvc_pool.
 * libkvclient itself does not depend on CUDA: the handles come as bytes.
 * Returns 0, -EINVAL (bad arguments), -KVC_E_UNSUPPORTED (the daemon has no
 * CUDA backend or sees no GPU), -KVC_E_BAD_ARG (a handle the daemon cannot
 * open, slots beyond an allocation; kvc_last_error() says which), -errno.
 */
int kvc_pool_register_cuda(kvc_client *c, const struct kvc_cuda_alloc *allocs, uint32_t n_allocs,
                           uint64_t slot_bytes, const struct kvc_cuda_pool_opts *opts, kvc_pool **ret);

/* Unmaps and frees a pool (the daemon drops its mapping when the session
 * ends). Returns NULL. */
kvc_pool *kvc_pool_free(kvc_pool *p);

/* Address of slot i of p (NULL if out of range): host memory for a memfd
 * pool, a device pointer for a CUDA pool. Its id, and its shape. */
void *kvc_pool_slot(const kvc_pool *p, uint32_t slot);
uint32_t kvc_pool_id(const kvc_pool *p);
uint32_t kvc_pool_slot_count(const kvc_pool *p);
uint64_t kvc_pool_slot_bytes(const kvc_pool *p);

/* One block of a Put or Get: its key and layer, and the pool slot it is
 * copied from (Put) or into (Get). counter: 0 for none, or i + 1 to count
 * the item on counter i of the client's counter page (kvc_counters_create)
 * when it finishes; zero-initialise refs to leave it unused. */
struct kvc_block_ref {
        struct kvc_key key;
        uint32_t layer;
        uint32_t slot;
        uint32_t counter;       /* added with the counters: keep it last */
};

/* Per-item outcome of a Put/Get (one byte per item). */
enum kvc_item_status {
        KVC_ITEM_OK = 0,        /* Put: stored; Get: loaded into the slot */
        KVC_ITEM_EXISTS = 1,    /* Put: already cached, nothing copied */
        KVC_ITEM_MISS = 2,      /* Get: not cached; the slot is untouched */
        KVC_ITEM_NO_SPACE = 3,  /* no room: the host tier cannot hold the block */
        KVC_ITEM_ERROR = 4,     /* the copy failed (device error); nothing stored or loaded */
        KVC_ITEM_QUOTA = 5,     /* the block does not fit its owner's quota */
};

/*
 * Submits a batch Put (slots -> cache) or Get (cache -> slots) of n items
 * and returns at once with the request id in *ret_id. refs is copied;
 * ret_status (n bytes, may be NULL) belongs to the library until the request
 * completes, when it holds the enum kvc_item_status of every item. A Put's
 * slots must not be written, and a Get's slots not read, until then.
 * Many requests may be in flight. -E2BIG if n > kvc_max_items().
 */
int kvc_put_submit(kvc_client *c, uint32_t ns, const kvc_pool *p,
                   const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status,
                   uint64_t *ret_id);
int kvc_get_submit(kvc_client *c, uint32_t ns, const kvc_pool *p,
                   const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status,
                   uint64_t *ret_id);

/*
 * Waits up to timeout_ms (-1: forever) for request id to complete. Returns
 * the number of items done (stored or loaded), or a negative error the
 * daemon or the system reported; -ETIMEDOUT if it is still in flight;
 * -ENOENT if id is unknown or already reaped.
 */
int kvc_wait(kvc_client *c, uint64_t id, int timeout_ms);

/*
 * Reads every reply that has arrived without blocking and records it.
 * Returns the number of requests completed by this call, or -errno.
 * kvc_done() then tells whether a given request has completed (without
 * reaping it; kvc_wait() reaps).
 */
int kvc_poll(kvc_client *c);
int kvc_done(const kvc_client *c, uint64_t id);

/* Flags of kvc_put_submit_flags(). */
enum {
        /* Reply only once each block is on SSD, written with RWF_DSYNC: it
         * survives a daemon crash or a power loss. Needs the SSD tier
         * (-KVC_E_BAD_ARG without it). Items that could not be made durable
         * report KVC_ITEM_ERROR. */
        KVC_PUT_DURABLE = 1u << 0,
        /* The keys are prefix-chain keys (kvc_key_prefix_chain(): content
         * hashes of the token prefix), so the blocks may be shared beyond
         * this machine: the daemon also writes them through to its remote
         * tier, when it has one and admits them, where other machines whose
         * namespace has the same fingerprint (kvc_ns_opts) find them. Never set
         * it for private keys (kvc_key_private()) or anything else that must
         * not leave the machine. Without a remote tier it changes nothing. */
        KVC_PUT_SHARED = 1u << 1,
};

/* kvc_put_submit() with flags (KVC_PUT_*); -EINVAL for unknown flags. */
int kvc_put_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                         const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                         uint8_t *ret_status, uint64_t *ret_id);

/* Flags of kvc_get_submit_flags(). */
enum {
        /* The keys are prefix-chain keys, as for KVC_PUT_SHARED (the same
         * bit): a block that misses locally is asked of the remote tier, and
         * if found there it is loaded (and kept in host memory) as a hit.
         * Without a remote tier it changes nothing. */
        KVC_GET_SHARED = 1u << 1,
};

/* kvc_get_submit() with flags (KVC_GET_*); -EINVAL for unknown flags. */
int kvc_get_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                         const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                         uint8_t *ret_status, uint64_t *ret_id);

/*
 * Asks the daemon to bring blocks from SSD into host memory ahead of a Get,
 * at a lower priority than Gets. refs' slots are ignored. When it completes,
 * ret_status holds KVC_ITEM_OK (in host memory now), KVC_ITEM_MISS or
 * KVC_ITEM_NO_SPACE per item; wait for it with kvc_wait() as for a Get (it
 * returns the number now in host memory), or never: it needs no pool.
 */
int kvc_prefetch_submit(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                        uint8_t *ret_status, uint64_t *ret_id);
int kvc_prefetch(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                 uint8_t *ret_status);
/* kvc_prefetch_submit() with flags: KVC_GET_SHARED brings shared blocks
 * that are in no local tier from the remote tier into host memory (start
 * it while the layers before compute); -EINVAL for unknown flags. */
int kvc_prefetch_submit_flags(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                              unsigned flags, uint8_t *ret_status, uint64_t *ret_id);

/* Attention a client measured on a block it used in one step. */
struct kvc_block_score {
        struct kvc_key key;
        uint32_t layer;
        float mass;             /* share of the step's attention weight, in [0, 1] */
};

/*
 * Reports block scores to the daemon, which keeps blocks that attention
 * keeps using close to the GPU (host memory over SSD). Fire and forget:
 * returns once sent (0 or -errno); the daemon's reply is dropped, and an
 * error it reports (unknown namespace, layer or mass out of range) shows
 * in kvc_last_error().
 */
int kvc_report_scores(kvc_client *c, uint32_t ns, const struct kvc_block_score *scores, uint32_t n);

/*
 * The adaptive prefetch scheduler. A pipelined decoder tells the daemon how
 * long one layer computes (compute_us, 0: stop telling); every later Get
 * carries it, and its reply brings the daemon's answer: how many blocks per
 * layer this client can prefetch and still have them land behind that
 * compute, at the rates the daemon measures on its links and shared among
 * the clients prefetching at the same time (0: the links have no room to
 * spare now). kvc_set_compute_hint() returns 0 or -EINVAL;
 * kvc_prefetch_depth() returns the latest answer (>= 0), -ENODATA before the
 * first, -EINVAL if c is NULL.
 */
int kvc_set_compute_hint(kvc_client *c, uint32_t compute_us);
int kvc_prefetch_depth(const kvc_client *c);

/*
 * How long a wait for a reply (a synchronous call, kvc_wait()) looks for it
 * without sleeping before it sleeps: a reply that comes within the window
 * is seen at once instead of after the CPU wakes from idle, which costs tens
 * of microseconds on a virtual machine (docs/decisions.md, "Small copies on
 * the loop, and polling before sleeping"). The CPU is busy for at most that long per wait. 0 never polls;
 * at most KVC_POLL_US_MAX. Returns 0 or -EINVAL.
 */
#define KVC_POLL_US_DEFAULT 50u
#define KVC_POLL_US_MAX 10000u
int kvc_set_poll_us(kvc_client *c, uint32_t poll_us);

/* Synchronous Put/Get: submit and wait. Same returns as kvc_wait(). */
int kvc_put(kvc_client *c, uint32_t ns, const kvc_pool *p, const struct kvc_block_ref *refs,
            uint32_t n, uint8_t *ret_status);
int kvc_get(kvc_client *c, uint32_t ns, const kvc_pool *p, const struct kvc_block_ref *refs,
            uint32_t n, uint8_t *ret_status);

/*
 * Longest cached prefix of the key chain keys[0..n) for every layer of
 * namespace ns: ret_prefix[l] (the caller passes an array of at least
 * `layers` entries) is the count of leading keys cached at layer l.
 */
int kvc_lookup(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
               uint32_t *ret_prefix, uint32_t layers);

/* Deletes keys at one layer (layer >= 0) or all layers (layer < 0). Blocks
 * being loaded are deleted once the load completes. Returns the number of
 * blocks deleted. */
int kvc_delete(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
               int32_t layer);

/*
 * Drops namespace ns (an id from kvc_stats_get(); it need not be joined)
 * with every block of it; returns once they are deleted, with their count
 * in *ret_deleted (may be NULL). Only its owner or an admin of the daemon
 * may: -KVC_E_DENIED otherwise, -KVC_E_NO_NAMESPACE if the caller may not
 * see it. Sessions that joined it get -KVC_E_NO_NAMESPACE from then on.
 */
int kvc_drop_namespace(kvc_client *c, uint32_t ns, uint64_t *ret_deleted);

/* ---- Per-layer completion counters ----------------------------------
 * A page of n counters shared with the daemon (a sealed memfd mapped by
 * both), so that one Get covering several layers can be waited on layer by
 * layer with no message per layer: give each item of layer l counter l + 1
 * (kvc_block_ref.counter), submit the Get, then kvc_counter_wait() on each
 * layer's counter for its item count before using that layer's slots. The
 * request still completes with its one reply (kvc_wait()) once all its
 * items are done; reap it as usual.
 *
 * The daemon adds 1 to done[i] when an item counted on i finishes, whatever
 * its status (for a Get's loaded block: right after its bytes are in the
 * slot), and before that 1 to failed[i] if the status is not
 * KVC_ITEM_OK/KVC_ITEM_EXISTS; it wakes kvc_counter_wait() callers on done[i]
 * in any process that maps the page. Counters start at 0 and wrap modulo
 * 2^32: compare them as kvc_counter_wait() does, by (int32_t)(done - target).
 */
#define KVC_COUNTERS_MAX 4096

typedef struct kvc_counters kvc_counters;

/*
 * Creates a page of n counters (1..KVC_COUNTERS_MAX) and registers it with
 * the daemon for c's session. A session has one counter page: registering
 * another replaces it (requests already in flight keep counting on the old
 * one, which then stops moving). Returns 0, -EINVAL, -KVC_E_BAD_ARG (the
 * daemon refused the page; kvc_last_error() says why), -errno. The caller
 * frees the page with kvc_counters_free(), before or after c; the daemon
 * keeps its own mapping until the session ends or the page is replaced.
 */
int kvc_counters_create(kvc_client *c, uint32_t n, kvc_counters **ret);

/* Unmaps and frees the page. Returns NULL; accepts NULL. */
kvc_counters *kvc_counters_free(kvc_counters *k);

/* Items finished on counter i since the page was created (acquire load:
 * once seen, a counted Get item's bytes are in its slot), modulo 2^32; 0 if
 * i is out of range. */
uint32_t kvc_counter_done(const kvc_counters *k, uint32_t i);

/* Of those, items that did not end KVC_ITEM_OK/KVC_ITEM_EXISTS. The daemon
 * counts a failure before its done: read done first, then failed. */
uint32_t kvc_counter_failed(const kvc_counters *k, uint32_t i);

/*
 * Waits until counter i reaches target ((int32_t)(done - target) >= 0):
 * spins briefly, then sleeps on the shared word (futex) until the daemon
 * wakes it. timeout_ms: -1 forever, 0 just look. Returns 0, -ETIMEDOUT, or
 * -EINVAL (k NULL, i out of range). Safe from any thread or process that
 * maps the page (e.g. after fork()); reads only the page.
 */
int kvc_counter_wait(const kvc_counters *k, uint32_t i, uint32_t target, int timeout_ms);

struct kvc_tier_stats {
        char name[16];
        uint64_t capacity_bytes;
        uint64_t used_bytes;
        uint64_t blocks;
        uint64_t hits;
        uint64_t misses;
        uint64_t evictions;
        /* SSD tier (zero for host): */
        uint64_t reads, writes, read_bytes, write_bytes;
        uint64_t read_errors, write_errors;
        uint64_t crc_failures;          /* torn or corrupt slots found, never served */
        uint64_t demotions;             /* host -> SSD writes */
        uint64_t promotions;            /* SSD -> host loads */
        uint64_t dropped;               /* blocks lost to eviction from every tier */
        int full;                       /* the SSD file system refused more space */
        char condition[96];             /* "ok" or what is wrong */
        /* The SSD tier's file was truncated, unlinked or replaced, or its
         * I/O fails: it takes no more writes (durable Puts fail) and serves
         * what still reads back intact, until the daemon restarts. In the
         * struct's tail padding: its size, the array stride, is unchanged. */
        int damaged;
};

/* What a peer may do on a namespace (kvc_ns_stats.rights). */
enum kvc_right {
        KVC_RIGHT_READ = 1,
        KVC_RIGHT_WRITE = 2,
        KVC_RIGHT_OWNER = 4,
};

struct kvc_ns_stats {
        uint32_t id;
        char name[128];
        struct kvc_geometry geometry;
        uint64_t block_bytes;
        uint64_t blocks;
        uint32_t owner;         /* uid owning it */
        uint32_t rights;        /* the caller's, enum kvc_right bits (0: it sees it as an admin) */
        int dropped;            /* being dropped */
};

#define KVC_LOOP_BUCKETS 32

/* One uid's usage and quota (a quota of 0: no cap). */
struct kvc_tenant_stats {
        uint32_t uid;
        uint64_t host_bytes, ssd_bytes, pool_bytes;
        uint32_t namespaces;
        uint64_t quota_host_bytes, quota_ssd_bytes, quota_pool_bytes;
        uint32_t quota_namespaces;
        uint64_t quota_evictions;       /* own blocks pushed out to stay within quota */
        uint64_t quota_refusals;        /* items and registrations refused for quota */
};

/* One node of the remote tier's Redis Cluster, as the daemon sees it. */
struct kvc_remote_node_stats {
        char addr[64];                  /* "host:port" */
        int up;                         /* connected (or not needed yet) */
        uint32_t slots;                 /* hash slots it serves in the daemon's slot map */
        uint64_t requests;              /* commands sent */
        uint64_t hits;                  /* GET / EXISTS found */
        uint64_t misses;                /* GET nil / EXISTS 0 */
        uint64_t read_bytes;            /* values received */
        uint64_t write_bytes;           /* values sent */
        uint64_t errors;                /* error replies, resets, refused connections */
        uint64_t timeouts;
        uint64_t moved;                 /* MOVED redirections received */
        uint64_t ask;                   /* ASK redirections received */
        uint64_t latency_us_sum;        /* of answered requests */
        uint64_t latency_us_max;
        /* latency_hist[b]: requests answered in [2^(b-1), 2^b) us (b = 0:
         * under 1 us), the loop's buckets. */
        uint64_t latency_hist[KVC_LOOP_BUCKETS];
};

/* The remote tier. All zero, have included, when the daemon runs none. */
struct kvc_remote_stats {
        int have;                       /* 1: the daemon has a remote tier */
        char seeds[256];                /* as configured (cut to fit) */
        char condition[96];             /* "ok", or what is wrong */
        uint64_t hits;                  /* blocks fetched and verified (promoted to host) */
        uint64_t misses;                /* asked, not there (or not usable) */
        uint64_t writes;                /* blocks written through */
        uint64_t write_skips;           /* shared blocks not written: remote down, busy, too large */
        uint64_t crc_failures;          /* values that were not the block (never served) */
        uint64_t errors;                /* requests that failed (node down, timeout, error reply) */
        uint64_t lookups;               /* keys asked by prefix Lookups */
        uint64_t lookup_hits;
        uint64_t slot_map_refreshes;
        uint64_t read_bytes;
        uint64_t write_bytes;
        uint32_t inflight;              /* requests in flight now */
        uint32_t n_nodes;
        struct kvc_remote_node_stats *nodes;    /* n_nodes, the library's */
};

struct kvc_stats {
        char daemon_version[32];
        uint32_t pid;
        uint64_t uptime_ms;
        uint32_t clients;
        uint64_t clients_total;
        uint32_t workers;
        char device_backends[64];
        char eviction[16];              /* "heat" or "lru" */
        uint64_t speculative_promotions; /* next-layer blocks staged from SSD unasked */
        uint64_t scores;                /* block scores applied */
        uint64_t bytes_in;              /* client pools -> daemon */
        uint64_t bytes_out;             /* daemon -> client pools */
        uint64_t puts;
        uint64_t gets;
        uint64_t requests;
        uint64_t errors;
        uint64_t index_capacity;
        uint64_t index_entries;
        uint64_t index_bytes;
        uint32_t index_bytes_per_block;
        uint32_t n_tiers;
        struct kvc_tier_stats *tiers;
        uint32_t n_namespaces;
        struct kvc_ns_stats *namespaces;
        /* Added with the CUDA backend (the library allocates this struct,
         * so fields only ever go at the end). */
        char cuda[128];                 /* "not loaded", "unavailable: ...", "ready: ..." */
        uint32_t pools_memfd;           /* pools of connected clients, per backend */
        uint32_t pools_cuda;
        /* The adaptive prefetch scheduler (kvc_set_compute_hint()). */
        uint64_t sched_device_bytes_per_s;      /* host -> client pools, while busy */
        uint64_t sched_ssd_bytes_per_s;         /* SSD reads, while busy */
        double sched_host_hit_rate;             /* recent Gets served from host */
        uint32_t sched_active_clients;          /* clients prefetching now */
        uint32_t sched_compute_us;              /* their mean compute per layer */
        uint32_t sched_prefetch_depth;          /* the last depth given */
        uint64_t sched_decisions;               /* depths given */
        double sched_device_busy;               /* busy share of the device link, [0, 1] */
        double sched_ssd_busy;                  /* busy share of the SSD, [0, 1] */
        /* Tenants. A peer sees the namespaces it may use and its own usage;
         * an admin (uid 0 or the daemon's admin-group) sees all. */
        uint32_t peer_uid;                      /* the caller, as the daemon sees it */
        int peer_admin;
        uint32_t n_tenants;
        struct kvc_tenant_stats *tenants;
        /* The daemon's event loop: turns that did work, the longest, and
         * their lengths in CPU time of its thread: loop_turn_hist[b] counts
         * turns of [2^(b-1), 2^b) microseconds (b = 0: under 1 us). */
        uint64_t loop_turns;
        uint64_t loop_turn_max_us;
        uint64_t loop_turn_hist[KVC_LOOP_BUCKETS];
        /* The remote tier (a Redis Cluster shared by many machines):
         * remote.have is 0 when the daemon runs none. */
        struct kvc_remote_stats remote;
};

/* Fetches the daemon's statistics; free with kvc_stats_free(), which
 * frees the arrays it points to (tiers, namespaces, tenants, remote.nodes). */
int kvc_stats_get(kvc_client *c, struct kvc_stats **ret);
struct kvc_stats *kvc_stats_free(struct kvc_stats *s);

#ifdef __cplusplus
}
#endif

#endif

# SPDX-License-Identifier: MIT
"""The declarations of libkvclient that the binding calls, as CFFI reads them.

They copy libkvclient/include/kvdrive/client.h and sparse.h by hand (CFFI's ABI
mode cannot read the headers' preprocessor lines). tests/test_abi.py checks
every struct's size and field offsets against the C compiler's, so a header
change that is not made here too fails the suite instead of corrupting memory.
"""

CDEF = r"""
const char *kvc_strerror(int err);
size_t kvc_dtype_size(int dtype);

struct kvc_geometry {
    uint32_t layers;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t dtype;
    uint32_t block_tokens;
};
uint64_t kvc_block_bytes(const struct kvc_geometry *g);

struct kvc_key { uint64_t hi; uint64_t lo; };
void kvc_key_chain(const struct kvc_key *parent, const uint32_t *tokens, size_t n,
                   struct kvc_key *ret);
int kvc_key_prefix_chain(const uint32_t *tokens, size_t n_tokens, uint32_t block_tokens,
                         struct kvc_key *ret_keys, size_t max);
int kvc_key_sequence_new(struct kvc_key *ret_seq);
void kvc_key_private(const struct kvc_key *seq, uint64_t index, struct kvc_key *ret);

typedef struct kvc_client kvc_client;
typedef struct kvc_pool kvc_pool;

struct kvc_connect_opts {
    size_t size;
    const char *path;
    const char *name;
    char *report;
    size_t report_size;
};
int kvc_connect_opts(const struct kvc_connect_opts *opts, kvc_client **ret);
kvc_client *kvc_disconnect(kvc_client *c);
int kvc_fd(const kvc_client *c);
const char *kvc_daemon_version(const kvc_client *c);
uint32_t kvc_max_items(const kvc_client *c);
const char *kvc_last_error(const kvc_client *c);

int kvc_register_namespace(kvc_client *c, const char *name, const struct kvc_geometry *g,
                           uint32_t *ret_ns, uint64_t *ret_block_bytes);
struct kvc_ns_opts {
    size_t size;
    const char *name;
    const struct kvc_geometry *geometry;
    const void *fingerprint;
    size_t fingerprint_len;
};
int kvc_register_namespace_opts(kvc_client *c, const struct kvc_ns_opts *o, uint32_t *ret_ns,
                                uint64_t *ret_block_bytes);
int kvc_pool_create(kvc_client *c, uint32_t slot_count, uint64_t slot_bytes, kvc_pool **ret);

struct kvc_cuda_alloc {
    unsigned char ipc_handle[64];
    void *dev_ptr;
    uint64_t offset;
    uint32_t slot_count;
};
struct kvc_cuda_pool_opts {
    size_t size;
    int device;
    char pci_bus_id[32];
    const unsigned char (*event_handles)[64];
    uint32_t n_event_handles;
};
int kvc_pool_register_cuda(kvc_client *c, const struct kvc_cuda_alloc *allocs, uint32_t n_allocs,
                           uint64_t slot_bytes, const struct kvc_cuda_pool_opts *opts,
                           kvc_pool **ret);
kvc_pool *kvc_pool_free(kvc_pool *p);
void *kvc_pool_slot(const kvc_pool *p, uint32_t slot);
uint32_t kvc_pool_id(const kvc_pool *p);
uint32_t kvc_pool_slot_count(const kvc_pool *p);
uint64_t kvc_pool_slot_bytes(const kvc_pool *p);

struct kvc_block_ref {
    struct kvc_key key;
    uint32_t layer;
    uint32_t slot;
    uint32_t counter;
};
int kvc_put_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                         const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                         uint8_t *ret_status, uint64_t *ret_id);
int kvc_get_submit(kvc_client *c, uint32_t ns, const kvc_pool *p,
                   const struct kvc_block_ref *refs, uint32_t n, uint8_t *ret_status,
                   uint64_t *ret_id);
int kvc_get_submit_flags(kvc_client *c, uint32_t ns, const kvc_pool *p,
                         const struct kvc_block_ref *refs, uint32_t n, unsigned flags,
                         uint8_t *ret_status, uint64_t *ret_id);
int kvc_wait(kvc_client *c, uint64_t id, int timeout_ms);
int kvc_poll(kvc_client *c);
int kvc_done(const kvc_client *c, uint64_t id);
int kvc_prefetch_submit(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                        uint8_t *ret_status, uint64_t *ret_id);
int kvc_prefetch_submit_flags(kvc_client *c, uint32_t ns, const struct kvc_block_ref *refs, uint32_t n,
                              unsigned flags, uint8_t *ret_status, uint64_t *ret_id);

struct kvc_block_score {
    struct kvc_key key;
    uint32_t layer;
    float mass;
};
int kvc_report_scores(kvc_client *c, uint32_t ns, const struct kvc_block_score *scores,
                      uint32_t n);
int kvc_set_compute_hint(kvc_client *c, uint32_t compute_us);
int kvc_set_poll_us(kvc_client *c, uint32_t poll_us);
int kvc_prefetch_depth(const kvc_client *c);
int kvc_lookup(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
               uint32_t *ret_prefix, uint32_t layers);
int kvc_delete(kvc_client *c, uint32_t ns, const struct kvc_key *keys, uint32_t n,
               int32_t layer);
int kvc_drop_namespace(kvc_client *c, uint32_t ns, uint64_t *ret_deleted);

struct kvc_tier_stats {
    char name[16];
    uint64_t capacity_bytes;
    uint64_t used_bytes;
    uint64_t blocks;
    uint64_t hits;
    uint64_t misses;
    uint64_t evictions;
    uint64_t reads, writes, read_bytes, write_bytes;
    uint64_t read_errors, write_errors;
    uint64_t crc_failures;
    uint64_t demotions;
    uint64_t promotions;
    uint64_t dropped;
    int full;
    char condition[96];
    int damaged;
};
struct kvc_ns_stats {
    uint32_t id;
    char name[128];
    struct kvc_geometry geometry;
    uint64_t block_bytes;
    uint64_t blocks;
    uint32_t owner;
    uint32_t rights;
    int dropped;
};
struct kvc_tenant_stats {
    uint32_t uid;
    uint64_t host_bytes, ssd_bytes, pool_bytes;
    uint32_t namespaces;
    uint64_t quota_host_bytes, quota_ssd_bytes, quota_pool_bytes;
    uint32_t quota_namespaces;
    uint64_t quota_evictions;
    uint64_t quota_refusals;
};
struct kvc_remote_node_stats {
    char addr[64];
    int up;
    uint32_t slots;
    uint64_t requests;
    uint64_t hits;
    uint64_t misses;
    uint64_t read_bytes;
    uint64_t write_bytes;
    uint64_t errors;
    uint64_t timeouts;
    uint64_t moved;
    uint64_t ask;
    uint64_t latency_us_sum;
    uint64_t latency_us_max;
    uint64_t latency_hist[32];
};
struct kvc_remote_stats {
    int have;
    char seeds[256];
    char condition[96];
    uint64_t hits;
    uint64_t misses;
    uint64_t writes;
    uint64_t write_skips;
    uint64_t crc_failures;
    uint64_t errors;
    uint64_t lookups;
    uint64_t lookup_hits;
    uint64_t slot_map_refreshes;
    uint64_t read_bytes;
    uint64_t write_bytes;
    uint32_t inflight;
    uint32_t n_nodes;
    struct kvc_remote_node_stats *nodes;
};
struct kvc_stats {
    char daemon_version[32];
    uint32_t pid;
    uint64_t uptime_ms;
    uint32_t clients;
    uint64_t clients_total;
    uint32_t workers;
    char device_backends[64];
    char eviction[16];
    uint64_t speculative_promotions;
    uint64_t scores;
    uint64_t bytes_in;
    uint64_t bytes_out;
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
    char cuda[128];
    uint32_t pools_memfd;
    uint32_t pools_cuda;
    uint64_t sched_device_bytes_per_s;
    uint64_t sched_ssd_bytes_per_s;
    double sched_host_hit_rate;
    uint32_t sched_active_clients;
    uint32_t sched_compute_us;
    uint32_t sched_prefetch_depth;
    uint64_t sched_decisions;
    double sched_device_busy;
    double sched_ssd_busy;
    uint32_t peer_uid;
    int peer_admin;
    uint32_t n_tenants;
    struct kvc_tenant_stats *tenants;
    uint64_t loop_turns;
    uint64_t loop_turn_max_us;
    uint64_t loop_turn_hist[32];
    struct kvc_remote_stats remote;
};
int kvc_stats_get(kvc_client *c, struct kvc_stats **ret);
struct kvc_stats *kvc_stats_free(struct kvc_stats *s);

typedef struct kvc_sparse kvc_sparse;
typedef struct kvc_sparse_seq kvc_sparse_seq;
struct kvc_sparse_opts {
    size_t size;
    uint32_t layers;
    uint32_t block_tokens;
    uint32_t max_seqs;
    uint32_t slot0;
    uint32_t budget;
    double topk;
    uint32_t topk_max;
    uint32_t sink, local;
    float half_life_layers;
    double stage;
    uint32_t split_min;
    uint32_t overlap_us;
    uint32_t flags;
    uint32_t report_every;
    float mass_target;
};
uint64_t kvc_sparse_pool_slots(const struct kvc_sparse_opts *o);
int kvc_sparse_open(kvc_client *c, uint32_t ns, kvc_pool *p, const struct kvc_sparse_opts *o,
                    kvc_sparse **ret);
kvc_sparse *kvc_sparse_close(kvc_sparse *sp);
struct kvc_sparse_seq_opts {
    size_t size;
    uint32_t keys;
    const uint32_t *tokens;
    size_t n_tokens;
};
int kvc_sparse_seq_begin(kvc_sparse *sp, const struct kvc_sparse_seq_opts *o,
                         kvc_sparse_seq **ret);
int kvc_sparse_seq_end(kvc_sparse_seq *seq);
int kvc_sparse_seq_key(const kvc_sparse_seq *seq, uint32_t b, struct kvc_key *ret);
int kvc_sparse_seq_cached(kvc_sparse_seq *seq);
int kvc_sparse_seq_set_stored(kvc_sparse_seq *seq, uint32_t n);
uint32_t kvc_sparse_seq_stored(const kvc_sparse_seq *seq, uint32_t layer);
struct kvc_sparse_plan {
    uint32_t layer;
    uint32_t n;
    const uint32_t *blocks;
    const uint32_t *slots;
    const uint8_t *resident;
    uint32_t n_missing;
    int two_pass;
    uint32_t tail_slot;
};
int kvc_sparse_begin_layer(kvc_sparse_seq *seq, uint32_t layer, const float *scores,
                           uint32_t n_blocks, const struct kvc_sparse_plan **ret_plan);
int kvc_sparse_wait_layer(kvc_sparse_seq *seq, int timeout_ms);
int kvc_sparse_end_layer(kvc_sparse_seq *seq, const float *masses);
int kvc_sparse_tail_slot(kvc_sparse_seq *seq, uint32_t layer);
int kvc_sparse_tail_full(kvc_sparse_seq *seq, uint32_t layer, const uint32_t *tokens);
int kvc_sparse_stage(kvc_sparse_seq *seq, uint32_t layer, const float *scores, uint32_t n_blocks);
struct kvc_sparse_stats {
    uint64_t layers;
    uint64_t chosen, hits, misses;
    uint64_t two_pass_layers;
    uint64_t hidden_layers;
    uint64_t staged;
    uint64_t tail_puts;
    uint64_t wait_ns;
};
void kvc_sparse_get_stats(const kvc_sparse *sp, struct kvc_sparse_stats *ret);
"""

# Structs whose layout tests/test_abi.py checks against the C compiler.
STRUCTS = (
    "kvc_geometry", "kvc_key", "kvc_connect_opts", "kvc_ns_opts", "kvc_cuda_alloc",
    "kvc_cuda_pool_opts", "kvc_block_ref", "kvc_block_score", "kvc_tier_stats", "kvc_ns_stats",
    "kvc_tenant_stats", "kvc_remote_node_stats", "kvc_remote_stats", "kvc_stats",
    "kvc_sparse_opts", "kvc_sparse_seq_opts", "kvc_sparse_plan",
    "kvc_sparse_stats",
)

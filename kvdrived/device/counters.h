/* SPDX-License-Identifier: MIT */
/*
 * A client's counter page: a sealed memfd holding uint32 done[count] then
 * uint32 failed[count], mapped MAP_SHARED by the client and the daemon. When
 * an item that names counter i finishes, the daemon adds 1 to failed[i] (if
 * the item did not end OK/EXISTS) and then to done[i], with release order,
 * and wakes futex waiters on done[i]. The daemon never reads the page's
 * contents: a client that scribbles on it only confuses itself.
 *
 * Threading: open/ref/unref on the event-loop thread; kvd_counters_bump()
 * and kvd_counter_signal() on any thread, while a reference is held.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Counters one page may hold: the client library's KVC_COUNTERS_MAX. */
#define KVD_COUNTERS_MAX 4096u

struct kvd_counters {
        unsigned refs;
        uint32_t count;
        _Atomic uint32_t *done;         /* count words */
        _Atomic uint32_t *failed;       /* count words, right after done */
        size_t map_bytes;
};

/*
 * Maps the counter page of count counters from fd (the caller keeps and
 * closes fd). fd must be a memfd sealed against shrinking (F_SEAL_SHRINK)
 * of at least 2 * count * 4 bytes; count in 1..KVD_COUNTERS_MAX.
 * Returns 0, -EINVAL (bad count, not a sealed memfd), -EMSGSIZE (too small)
 * or -errno; on error *ret_why names the problem (static string) and nothing
 * is left mapped.
 */
int kvd_counters_open(int fd, uint32_t count, struct kvd_counters **ret, const char **ret_why);

static inline struct kvd_counters *kvd_counters_ref(struct kvd_counters *k)
{
        k->refs++;
        return k;
}

/* Drops a reference; the last one unmaps the page. Accepts NULL. */
struct kvd_counters *kvd_counters_unref(struct kvd_counters *k);

/* Wakes every futex waiter on word (a shared, non-private futex). */
void kvd_counter_signal(_Atomic uint32_t *word);

/* Word done[counter - 1] of k (counter in 1..count: the caller checked). */
static inline _Atomic uint32_t *kvd_counters_done_word(struct kvd_counters *k, uint32_t counter)
{
        return &k->done[counter - 1];
}

/* Counts one finished item on counter (1..count): failed first (when
 * !ok), then done, then wakes done's waiters. */
void kvd_counters_bump(struct kvd_counters *k, uint32_t counter, bool ok);

/* SPDX-License-Identifier: MIT */
/*
 * The Redis Cluster the remote-tier suites run against (remote-common.h,
 * tools/redis-cluster): it serves keys, binary values included; the other
 * masters keep serving when one is killed or paused, and the node comes
 * back; a reshard moves keys with their slots; a crashed test leaves no
 * node or directory behind. Skipped (TAP "1..0 # SKIP") only when
 * redis-server or redis-cli is not installed.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check-main.h"
#include "common.h"
#include "remote-common.h"

#define SLOTS 16384u
#define RESHARD_SLOTS 100u

/* The cluster's hash slot of key (no hash tags in this suite's keys):
 * CRC16-XMODEM, as in the Redis Cluster specification. */
static unsigned key_slot(const char *key)
{
        uint16_t crc = 0;

        for (const char *p = key; *p; p++) {
                crc ^= (uint16_t)((uint8_t)*p << 8);
                for (int b = 0; b < 8; b++)
                        crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
        }
        return crc % SLOTS;
}

/* Runs redis-cli (the node serving the key) and asserts it answered. */
#define CLI_OK(cl, out, ...)                                                            \
        ({                                                                              \
                int cli_rc_ = e2e_redis_cli((cl), (out), sizeof(out), __VA_ARGS__, NULL); \
                ck_assert_msg(cli_rc_ >= 0, "redis-cli %s: %s (%s)", #__VA_ARGS__,     \
                              strerror(-cli_rc_), (out));                               \
                cli_rc_;                                                                \
        })

#define NODE_OK(cl, i, out, ...)                                                        \
        ({                                                                              \
                int cli_rc_ = e2e_redis_cli_node((cl), (i), (out), sizeof(out), __VA_ARGS__, NULL); \
                ck_assert_msg(cli_rc_ >= 0, "redis-cli (node %u) %s: %s (%s)", (unsigned)(i), \
                              #__VA_ARGS__, strerror(-cli_rc_), (out));                 \
                cli_rc_;                                                                \
        })

static void flush_all(struct e2e_cluster *cl)
{
        char out[64];

        for (unsigned i = 1; i <= cl->n; i++)
                NODE_OK(cl, i, out, "FLUSHALL");
}

static long dbsize(struct e2e_cluster *cl, unsigned i)
{
        char out[64];

        NODE_OK(cl, i, out, "DBSIZE");
        return strtol(out, NULL, 10);
}

/* Which slots node i serves, by its own CLUSTER NODES line ("myself").
 * Returns how many. */
static unsigned node_slots(struct e2e_cluster *cl, unsigned i, bool owned[SLOTS])
{
        char out[8192], *line, *save = NULL, *tok;
        unsigned count = 0, field = 0;

        memset(owned, 0, SLOTS * sizeof(owned[0]));
        NODE_OK(cl, i, out, "CLUSTER", "NODES");
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
                if (strstr(line, "myself"))
                        break;
        ck_assert_msg(line, "node %u: no 'myself' in CLUSTER NODES", i);
        for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
                unsigned lo, hi;
                int end = 0;

                /* From the 9th field on, "a-b" or "a"; "[...]" marks a
                 * slot being migrated, not one it serves. */
                if (field < 8 || tok[0] == '[')
                        continue;
                if (sscanf(tok, "%u-%u%n", &lo, &hi, &end) != 2 || tok[end]) {
                        ck_assert_msg(sscanf(tok, "%u%n", &lo, &end) == 1 && !tok[end], "slot range '%s'", tok);
                        hi = lo;
                }
                ck_assert_uint_lt(hi, SLOTS);
                for (unsigned s = lo; s <= hi; s++, count++)
                        owned[s] = true;
        }
        return count;
}

/* The node (1-based) that serves slot, by each node's own view. */
static unsigned slot_owner(struct e2e_cluster *cl, bool owned[][SLOTS], unsigned slot)
{
        for (unsigned i = 1; i <= cl->n; i++)
                if (owned[i - 1][slot])
                        return i;
        ck_abort_msg("no node serves slot %u", slot);
        return 0;
}

START_TEST(test_set_get)
{
        struct e2e_cluster *cl = &e2e_fixture_cluster;
        char out[1024], want[32];
        long total = 0;
        int len;

        ck_assert_uint_eq(cl->n, 3);
        for (unsigned i = 0; i < cl->n; i++) {
                snprintf(want, sizeof(want), "127.0.0.1:%d", cl->ports[i]);
                ck_assert_msg(strstr(cl->seeds, want), "seeds '%s' lack %s", cl->seeds, want);
        }
        flush_all(cl);
        CLI_OK(cl, out, "SET", "e2e-key", "value-1");
        len = CLI_OK(cl, out, "GET", "e2e-key");
        ck_assert_int_eq(len, 7);
        ck_assert_str_eq(out, "value-1");
        /* Room for the value and its NUL is enough; less is not. */
        ck_assert_int_eq(e2e_redis_cli(cl, out, 8, "GET", "e2e-key", NULL), 7);
        ck_assert_str_eq(out, "value-1");
        ck_assert_int_eq(e2e_redis_cli(cl, out, 7, "GET", "e2e-key", NULL), -ENOBUFS);

        /* What a test damaging a stored block does: the bytes in between
         * come back as NULs, the length says where the value ends. */
        CLI_OK(cl, out, "SETRANGE", "e2e-key", "300", "xyz");
        len = CLI_OK(cl, out, "GET", "e2e-key");
        ck_assert_int_eq(len, 303);
        ck_assert_int_eq(memcmp(out, "value-1", 7), 0);
        ck_assert(e2e_all_bytes(out + 7, 300 - 7, 0));
        ck_assert_int_eq(memcmp(out + 300, "xyz", 3), 0);
        ck_assert_int_eq(e2e_redis_cli(cl, out, 100, "GET", "e2e-key", NULL), -ENOBUFS);

        /* An error reply is an error, with what the server said. */
        ck_assert_int_eq(e2e_redis_cli(cl, out, sizeof(out), "INCR", "e2e-key", NULL), -EREMOTEIO);
        ck_assert_msg(strstr(out, "not an integer"), "INCR said '%s'", out);

        for (unsigned i = 1; i <= cl->n; i++)
                total += dbsize(cl, i);
        ck_assert_int_eq(total, 1);
        CLI_OK(cl, out, "DEL", "e2e-key");
        len = CLI_OK(cl, out, "EXISTS", "e2e-key");
        ck_assert_str_eq(out, "0");
}
END_TEST

/* Keys on every node: key i is "kill-<i>". */
#define KILL_KEYS 24u

START_TEST(test_kill_restart)
{
        struct e2e_cluster *cl = &e2e_fixture_cluster;
        static bool owned[E2E_CLUSTER_MAX][SLOTS];
        char out[256], key[32], val[32];
        unsigned on_victim = 0, elsewhere = 0;
        const unsigned victim = 1;      /* the node redis-cli would talk to first */

        flush_all(cl);
        for (unsigned i = 1; i <= cl->n; i++)
                node_slots(cl, i, owned[i - 1]);
        for (unsigned k = 0; k < KILL_KEYS; k++) {
                snprintf(key, sizeof(key), "kill-%u", k);
                snprintf(val, sizeof(val), "v%u", k);
                CLI_OK(cl, out, "SET", key, val);
        }
        ck_assert_int_eq(e2e_cluster_kill(cl, victim), 0);
        ck_assert_int_eq(e2e_cluster_kill(cl, victim), -EIO);   /* not running */

        /* The others answer for their slots at once; the victim's keys are
         * unreachable (redirected to a node that is gone). */
        for (unsigned k = 0; k < KILL_KEYS; k++) {
                int rc;

                snprintf(key, sizeof(key), "kill-%u", k);
                snprintf(val, sizeof(val), "v%u", k);
                rc = e2e_redis_cli(cl, out, sizeof(out), "GET", key, NULL);
                if (slot_owner(cl, owned, key_slot(key)) == victim) {
                        ck_assert_msg(rc == -EREMOTEIO, "GET %s (on the killed node): %d '%s'", key, rc, out);
                        on_victim++;
                } else {
                        ck_assert_msg(rc >= 0, "GET %s: %s (%s)", key, strerror(-rc), out);
                        ck_assert_str_eq(out, val);
                        elsewhere++;
                }
        }
        ck_assert_uint_gt(on_victim, 0);
        ck_assert_uint_gt(elsewhere, 0);

        /* Back on its port with its slots, empty: nodes keep nothing on disk. */
        ck_assert_int_eq(e2e_cluster_restart(cl, victim), 0);
        ck_assert_int_eq(dbsize(cl, victim), 0);
        for (unsigned k = 0; k < KILL_KEYS; k++) {
                snprintf(key, sizeof(key), "kill-%u", k);
                snprintf(val, sizeof(val), "w%u", k);
                CLI_OK(cl, out, "SET", key, val);
                CLI_OK(cl, out, "GET", key);
                ck_assert_str_eq(out, val);
        }
}
END_TEST

START_TEST(test_pause_resume)
{
        struct e2e_cluster *cl = &e2e_fixture_cluster;
        static bool owned[E2E_CLUSTER_MAX][SLOTS];
        char out[256], key[32];
        const unsigned victim = 2;

        flush_all(cl);
        for (unsigned i = 1; i <= cl->n; i++)
                node_slots(cl, i, owned[i - 1]);
        ck_assert_int_eq(e2e_cluster_pause(cl, victim), 0);
        /* A key of another node is served while the victim says nothing. */
        for (unsigned k = 0;; k++) {
                snprintf(key, sizeof(key), "pause-%u", k);
                if (slot_owner(cl, owned, key_slot(key)) != victim)
                        break;
        }
        CLI_OK(cl, out, "SET", key, "during");
        CLI_OK(cl, out, "GET", key);
        ck_assert_str_eq(out, "during");
        ck_assert_int_eq(e2e_cluster_resume(cl, victim), 0);
        ck_assert_int_eq(e2e_cluster_wait(cl), 0);
        ck_assert_int_eq(dbsize(cl, victim), 0);
}
END_TEST

START_TEST(test_reshard)
{
        struct e2e_cluster *cl = &e2e_fixture_cluster;
        static bool before[E2E_CLUSTER_MAX][SLOTS], after[E2E_CLUSTER_MAX][SLOTS], lowest[SLOTS];
        char out[256], key[32], val[32];
        unsigned low = 0, high = 0, moved = 0, keys[32], n = 0;
        unsigned from_slots, to_slots;
        const unsigned from = 1, to = 2;

        flush_all(cl);
        from_slots = node_slots(cl, from, before[from - 1]);
        to_slots = node_slots(cl, to, before[to - 1]);
        node_slots(cl, 3, before[2]);
        /* Keys of node from: half in its lowest RESHARD_SLOTS slots, which
         * redis-cli --cluster reshard moves (it takes a source's slots in
         * order), half in the slots it keeps. */
        for (unsigned s = 0, c = 0; s < SLOTS; s++)
                lowest[s] = before[from - 1][s] && c++ < RESHARD_SLOTS;
        for (unsigned k = 0; n < 32; k++) {
                unsigned s;

                snprintf(key, sizeof(key), "reshard-%u", k);
                s = key_slot(key);
                if (!before[from - 1][s])
                        continue;
                if (lowest[s] && low < 16)
                        low++;
                else if (!lowest[s] && high < 16)
                        high++;
                else
                        continue;
                keys[n++] = k;
                snprintf(val, sizeof(val), "r%u", k);
                CLI_OK(cl, out, "SET", key, val);
        }
        ck_assert_int_eq(dbsize(cl, from), 32);

        ck_assert_int_eq(e2e_cluster_reshard(cl, from, to, RESHARD_SLOTS), 0);
        ck_assert_uint_eq(node_slots(cl, from, after[from - 1]), from_slots - RESHARD_SLOTS);
        ck_assert_uint_eq(node_slots(cl, to, after[to - 1]), to_slots + RESHARD_SLOTS);
        node_slots(cl, 3, after[2]);
        /* Every key is where its slot went, with its value. */
        for (unsigned j = 0; j < n; j++) {
                unsigned owner;

                snprintf(key, sizeof(key), "reshard-%u", keys[j]);
                snprintf(val, sizeof(val), "r%u", keys[j]);
                owner = slot_owner(cl, after, key_slot(key));
                ck_assert_msg(owner == from || owner == to, "%s went to node %u", key, owner);
                NODE_OK(cl, owner, out, "GET", key);
                ck_assert_str_eq(out, val);
                moved += owner == to;
                CLI_OK(cl, out, "GET", key);
                ck_assert_str_eq(out, val);
        }
        ck_assert_uint_eq(moved, low);
        ck_assert_int_eq(dbsize(cl, from), 32 - moved);
        ck_assert_int_eq(dbsize(cl, to), moved);
}
END_TEST

/* Whether a node of cl answers a PING (tools/redis-cluster stops only what
 * it started, so a bare redis-cli does). */
static bool any_node_answers(struct e2e_cluster *cl)
{
        const char *argv[] = { "/bin/sh", "-c", "redis-cli -p \"$0\" PING 2>/dev/null | grep -q PONG", NULL, NULL };
        char port[16];

        for (unsigned i = 0; i < cl->n; i++) {
                char *out = NULL;
                int st = 0;

                snprintf(port, sizeof(port), "%d", cl->ports[i]);
                argv[3] = port;
                if (kvd_test_run_capture(argv, 10000, &out, &st) == 0 && WIFEXITED(st) &&
                    WEXITSTATUS(st) == 0) {
                        free(out);
                        return true;
                }
                free(out);
        }
        return false;
}

/* A cluster never started, one of one master (assigned by hand: redis-cli
 * --cluster create wants three), stopped twice. */
START_TEST(test_lifecycle)
{
        struct e2e_cluster cl = { 0 }, was;
        char why[256], out[64];
        struct stat st;
        int rc;

        e2e_cluster_stop(&cl);
        ck_assert_int_eq(e2e_redis_cli(&cl, out, sizeof(out), "PING", NULL), -EINVAL);
        rc = e2e_cluster_start(&cl, 1, why, sizeof(why));
        ck_assert_msg(rc == 0, "start: %s", why);
        ck_assert_uint_eq(cl.n, 1);
        CLI_OK(&cl, out, "SET", "one", "1");
        CLI_OK(&cl, out, "GET", "one");
        ck_assert_str_eq(out, "1");
        ck_assert_int_eq(e2e_cluster_kill(&cl, 2), -EINVAL);
        was = cl;
        e2e_cluster_stop(&cl);
        ck_assert_int_eq(stat(was.dir, &st), -1);
        ck_assert_int_eq(errno, ENOENT);
        ck_assert(!any_node_answers(&was));
        ck_assert_str_eq(cl.dir, "");
        e2e_cluster_stop(&cl);
        ck_assert_int_eq(e2e_cluster_start(&cl, E2E_CLUSTER_MAX + 1, why, sizeof(why)), -EINVAL);
        e2e_cluster_stop(&cl);
}
END_TEST

/* The child starts a cluster, says where, and dies by SIGKILL: no atexit,
 * no teardown. */
static int crash_child(void *arg)
{
        int *wfd = arg;
        struct e2e_cluster cl;
        char why[256];

        CHILD_ASSERT(e2e_cluster_start(&cl, 3, why, sizeof(why)) == 0, "start: %s", why);
        CHILD_ASSERT(write(*wfd, &cl, sizeof(cl)) == (ssize_t)sizeof(cl), "write");
        raise(SIGKILL);
        return 1;
}

START_TEST(test_crash_leaves_nothing)
{
        struct e2e_cluster cl;
        char why[96];
        struct stat st;
        int p[2], status;
        int64_t deadline;
        pid_t pid;
        bool gone = false;

        ck_assert_int_eq(pipe(p), 0);
        pid = e2e_fork(crash_child, &p[1]);
        ck_assert_int_gt(pid, 0);
        close(p[1]);
        ck_assert_int_eq(read(p[0], &cl, sizeof(cl)), (ssize_t)sizeof(cl));
        close(p[0]);
        status = e2e_wait_child(pid, E2E_CHILD_TIMEOUT_MS, why, sizeof(why));
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child: %s", why);
        /* Its watchdog stops the nodes and removes the directory. */
        for (deadline = e2e_now_ms() + E2E_WAIT_MS; !gone && e2e_now_ms() < deadline;) {
                gone = stat(cl.dir, &st) < 0 && errno == ENOENT;
                if (!gone)
                        usleep(50 * 1000);
        }
        ck_assert_msg(gone, "%s is still there %d ms after its test died", cl.dir, E2E_WAIT_MS);
        ck_assert_msg(!any_node_answers(&cl), "a node of %s still answers", cl.seeds);
}
END_TEST

static Suite *redis_cluster_suite(void)
{
        Suite *s = suite_create("e2e-redis-cluster");
        TCase *tc = tcase_create("cluster");
        TCase *life = tcase_create("lifecycle");

        /* One cluster for these tests, in order; each leaves every node up. */
        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_unchecked_fixture(tc, e2e_cluster_setup, e2e_cluster_teardown);
        tcase_add_test(tc, test_set_get);
        tcase_add_test(tc, test_kill_restart);
        tcase_add_test(tc, test_pause_resume);
        tcase_add_test(tc, test_reshard);
        suite_add_tcase(s, tc);

        tcase_set_timeout(life, E2E_TCASE_TIMEOUT);
        tcase_add_test(life, test_lifecycle);
        tcase_add_test(life, test_crash_leaves_nothing);
        suite_add_tcase(s, life);
        return s;
}

KVD_CHECK_MAIN_IF(e2e_have_redis(), "redis-server or redis-cli is not installed", redis_cluster_suite)

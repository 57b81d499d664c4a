# SPDX-License-Identifier: MIT
"""The client surface against a real daemon: round trips, keys, errors."""
from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kvdrive
from conftest import python_env

GEO = dict(layers=4, kv_heads=2, head_dim=64, dtype="float16", block_tokens=16)


def fill(pool, slot, seed):
    rng = np.random.default_rng(seed)
    pool.array[slot] = rng.integers(0, 256, pool.slot_bytes, dtype=np.uint8)
    return pool.array[slot].copy()


def test_import_names_the_library():
    assert kvdrive.library_path.endswith("libkvclient.so.0")


def test_put_get_round_trip_numpy(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    assert ns.block_bytes == 2 * 2 * 64 * 16 * 2
    with ns.pool(slots=8) as pool:
        assert pool.array.shape == (8, ns.block_bytes)
        keys = kvdrive.prefix_keys(np.arange(64), block_tokens=16)
        want = {}
        items = []
        for b, k in enumerate(keys):
            for layer in range(2):
                slot = b * 2 + layer
                want[(b, layer)] = fill(pool, slot, 1000 * b + layer)
                items.append((k, layer, slot))
        r = client.put(pool, items)
        assert r.wait(timeout=10) == len(items)
        assert all(s == kvdrive.ItemStatus.OK for s in r.status)
        again = client.put(pool, items)
        assert again.wait() == 0                    # nothing copied: all there
        assert set(again.status) == {kvdrive.ItemStatus.EXISTS}
        pool.array[:] = 0
        g = client.get(pool, [(k, layer, 7 - (b * 2 + layer))
                              for b, k in enumerate(keys) for layer in range(2)])
        assert g.wait(timeout=10) == len(items)
        for b in range(4):
            for layer in range(2):
                assert np.array_equal(pool.array[7 - (b * 2 + layer)], want[(b, layer)])
        del g, r


def test_get_miss_leaves_slot_untouched(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    with ns.pool(slots=2) as pool:
        pool.array[0] = 0xAB
        r = client.get(pool, [(kvdrive.new_sequence(), 0, 0)])
        assert r.wait() == 0
        assert r.status == [kvdrive.ItemStatus.MISS]
        assert (pool.array[0] == 0xAB).all()
        with pytest.raises(kvdrive.ItemError) as e:
            r.check()
        assert e.value.status == [kvdrive.ItemStatus.MISS]


def test_torch_view_round_trip(client, ns_name):
    torch = pytest.importorskip("torch")
    ns = client.namespace(ns_name, **GEO)
    with ns.pool(slots=2) as pool:
        t = pool.tensor()
        assert t.shape == (2, ns.block_bytes) and t.dtype == torch.uint8
        kv = t[0].view(torch.float16)
        kv.copy_(torch.randn(kv.numel(), dtype=torch.float16))
        want = kv.clone()
        key = kvdrive.new_sequence()
        client.put(pool, [(key, 3, 0)]).check()
        client.get(pool, [(key, 3, 1)]).check()
        assert torch.equal(t[1].view(torch.float16), want)
        del t, kv


def test_batches_longer_than_max_items(client, ns_name):
    ns = client.namespace(ns_name, layers=1, kv_heads=1, head_dim=16, dtype="float16",
                          block_tokens=16)
    n = client.max_items + 5
    with ns.pool(slots=n) as pool:
        pool.array[:] = (np.arange(n, dtype=np.uint32) % 251).astype(np.uint8)[:, None]
        seq = kvdrive.new_sequence()
        keys = [kvdrive.private_key(seq, i) for i in range(n)]
        assert client.put(pool, [(k, 0, i) for i, k in enumerate(keys)]).wait() == n
        pool.array[:] = 0
        assert client.get(pool, [(k, 0, i) for i, k in enumerate(keys)]).wait() == n
        assert (pool.array[:, 0] == (np.arange(n) % 251)).all()
        assert client.lookup(ns, keys) == [n]     # counted across two Lookups
        assert client.delete(ns, keys[:3]) == 3
        assert client.lookup(ns, keys) == [0]
        assert client.delete(ns, keys) == n - 3


def test_lookup_counts_the_cached_prefix_per_layer(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    tokens = np.arange(100, 100 + 16 * 5)
    keys = kvdrive.prefix_keys(tokens, 16)
    assert len(keys) == 5
    # chained keys are the same whichever way they are made
    k = None
    for b in range(5):
        k = kvdrive.chain_key(k, tokens[b * 16:(b + 1) * 16])
        assert k == keys[b]
    with ns.pool(slots=5) as pool:
        client.put(pool, [(keys[b], 0, b) for b in range(5)]).check()
        client.put(pool, [(keys[b], 1, b) for b in range(2)]).check()
        assert client.lookup(ns, keys) == [5, 2, 0, 0]
        assert client.delete(ns, keys[:1], layer=0) == 1
        assert client.lookup(ns, keys) == [0, 2, 0, 0]


def test_prefetch_and_scores_and_stats(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    with ns.pool(slots=1) as pool:
        key = kvdrive.new_sequence()
        client.put(pool, [(key, 0, 0)]).check()
        p = client.prefetch(ns, [(key, 0), (kvdrive.new_sequence(), 0)])
        assert p.wait() == 1
        assert p.status == [kvdrive.ItemStatus.OK, kvdrive.ItemStatus.MISS]
        client.report_scores(ns, [(key, 0, 0.5)])
        st = client.stats()
        assert st["daemon_version"] == client.version
        mine = [n for n in st["namespaces"] if n["id"] == ns.id]
        assert mine and mine[0]["name"] == ns_name and mine[0]["blocks"] == 1
        assert st["tiers"][0]["name"] == "host"


def test_prefix_reuse_across_processes(daemon, client, ns_name):
    """Another process stores a prompt's blocks; this one finds and loads them."""
    ns = client.namespace(ns_name, **GEO)
    child = textwrap.dedent(f"""
        import numpy as np, kvdrive
        with kvdrive.Client({daemon.socket!r}) as c:
            ns = c.namespace({ns_name!r}, **{GEO!r})
            keys = kvdrive.prefix_keys(np.arange(48), 16)
            with ns.pool(slots=3) as pool:
                for b in range(3):
                    pool.array[b] = b + 1
                c.put(pool, [(k, 2, b) for b, k in enumerate(keys)]).check()
    """)
    subprocess.run([sys.executable, "-c", child], env=python_env(), check=True, timeout=60)
    keys = kvdrive.prefix_keys(np.arange(48 + 7), 16)
    assert client.lookup(ns, keys)[2] == 3
    with ns.pool(slots=3) as pool:
        client.get(pool, [(k, 2, b) for b, k in enumerate(keys)]).check()
        for b in range(3):
            assert (pool.array[b] == b + 1).all()


def test_errors_are_typed_and_change_nothing(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    with pytest.raises(kvdrive.NamespaceError) as e:
        client.namespace(ns_name, **dict(GEO, head_dim=128))
    assert e.value.code == kvdrive.errors.E_NS_CONFLICT
    assert "geometry" in str(e.value).lower()
    with pytest.raises(kvdrive.InvalidArgument):
        client.namespace("bad name\n", **GEO)
    with pytest.raises(kvdrive.InvalidArgument):
        client.namespace(ns_name + "x", **dict(GEO, dtype="float64"))
    with ns.pool(slots=1) as pool:
        with pytest.raises(kvdrive.InvalidArgument):
            client.put(pool, [(kvdrive.new_sequence(), 0, 1)])     # slot out of range
        with pytest.raises(kvdrive.Error) as e:
            client.put(pool, [(kvdrive.new_sequence(), 9, 0)]).wait()  # layer out of range
        assert e.value.code == kvdrive.errors.E_OUT_OF_RANGE
        assert client.stats()["namespaces"][0]["blocks"] == 0 or True
        mine = [n for n in client.stats()["namespaces"] if n["id"] == ns.id]
        assert mine[0]["blocks"] == 0
    with pytest.raises(kvdrive.ConnectionError) as e:
        kvdrive.Client("/nonexistent/kvd.sock")
    assert e.value.code == -errno.ENOENT and "/nonexistent/kvd.sock" in str(e.value)
    assert isinstance(e.value, ConnectionError)
    with pytest.raises(ValueError):
        kvdrive.Key.of(b"short")


def test_namespace_fingerprint(client, ns_name):
    """A fingerprint of up to 64 bytes, bytes or str (UTF-8); the same joins again.
    (Another fingerprint under the same name conflicts once the daemon compares
    them: the daemon's own tests.)"""
    fp = bytes(range(kvdrive.FINGERPRINT_MAX))
    ns = client.namespace(ns_name, **GEO, fingerprint=fp)
    assert ns.fingerprint == fp
    again = client.namespace(ns_name, **GEO, fingerprint=bytearray(fp))
    assert again.id == ns.id and again.fingerprint == fp
    s = client.namespace(ns_name + "-s", **GEO, fingerprint="llama-3 rev=abc tp=2/1 é")
    assert s.fingerprint == "llama-3 rev=abc tp=2/1 é".encode()
    none = client.namespace(ns_name + "-n", **GEO)
    assert none.fingerprint == b"" == client.namespace(ns_name + "-e", **GEO,
                                                       fingerprint=b"").fingerprint


def test_fingerprint_bad_arguments_change_nothing(client, ns_name):
    bad = [b"x" * (kvdrive.FINGERPRINT_MAX + 1),
           "é" * (kvdrive.FINGERPRINT_MAX // 2 + 1),        # 66 bytes of UTF-8
           12345, ["not", "bytes"]]
    for fp in bad:
        with pytest.raises(kvdrive.InvalidArgument):
            client.namespace(ns_name, **GEO, fingerprint=fp)
    assert not [n for n in client.stats()["namespaces"] if n["name"] == ns_name]


def test_shared_put_get_round_trip(client, ns_name):
    """shared=True on prefix blocks: the same results as private ones on a daemon
    without a remote tier (which the flag does not change)."""
    ns = client.namespace(ns_name, **GEO, fingerprint=b"fp")
    keys = kvdrive.prefix_keys(np.arange(32), 16)
    with ns.pool(slots=4) as pool:
        want = [fill(pool, i, 50 + i) for i in range(2)]
        r = client.put(pool, [(k, 1, i) for i, k in enumerate(keys)], shared=True)
        assert r.wait(timeout=10) == 2
        assert client.put(pool, [(keys[0], 1, 0)], shared=True).status == [
            kvdrive.ItemStatus.EXISTS]
        g = client.get(pool, [(k, 1, 2 + i) for i, k in enumerate(keys)], shared=True)
        assert g.wait(timeout=10) == 2
        for i in range(2):
            assert np.array_equal(pool.array[2 + i], want[i])
        miss = client.get(pool, [(kvdrive.chain_key(keys[1], np.arange(16)), 1, 3)], shared=True)
        assert miss.status == [kvdrive.ItemStatus.MISS]
        assert np.array_equal(pool.array[3], want[1])
        del g, r, miss


def test_stats_remote_is_none_without_a_remote_tier(client):
    assert client.stats()["remote"] is None


def test_remote_stats_as_a_dict():
    """The conversion of struct kvc_remote_stats (no daemon sends one here)."""
    from kvdrive._lib import ffi
    from kvdrive.client import _remote_dict
    r = ffi.new("struct kvc_remote_stats *")
    assert _remote_dict(r) is None
    nodes = ffi.new("struct kvc_remote_node_stats[]", 2)
    r.have, r.seeds, r.condition, r.hits, r.inflight = 1, b"a:1,b:2", b"ok", 7, 3
    r.n_nodes, r.nodes = 2, nodes
    nodes[0].addr, nodes[0].up, nodes[0].slots, nodes[0].moved = b"a:1", 1, 8192, 4
    nodes[0].latency_hist[3] = 9
    nodes[1].addr = b"b:2"
    d = _remote_dict(r)
    assert "have" not in d
    assert d["seeds"] == "a:1,b:2" and d["condition"] == "ok" and d["hits"] == 7
    assert d["inflight"] == 3 and d["n_nodes"] == 2
    assert [n["addr"] for n in d["nodes"]] == ["a:1", "b:2"]
    assert d["nodes"][0]["up"] is True and d["nodes"][1]["up"] is False
    assert d["nodes"][0]["slots"] == 8192 and d["nodes"][0]["moved"] == 4
    assert len(d["nodes"][0]["latency_hist"]) == 32 and d["nodes"][0]["latency_hist"][3] == 9


def test_pool_close_refuses_while_views_exist(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    pool = ns.pool(slots=2)
    view = pool.array[1]
    with pytest.raises(BufferError):
        pool.close()
    view[:] = 7            # still mapped
    del view
    pool.close()
    with pytest.raises(ValueError):
        pool.array


def test_closed_client_raises(daemon):
    c = kvdrive.Client(daemon.socket)
    c.close()
    with pytest.raises(ValueError):
        c.stats()
    c.close()              # twice is fine


def test_hello_example_runs(daemon):
    """examples/python/hello.py, as the quickstart runs it."""
    from conftest import ROOT
    r = subprocess.run([sys.executable, str(ROOT / "examples/python/hello.py"), "--socket",
                        daemon.socket], env=python_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical to A's: True" in r.stdout


def test_cuda_pool_round_trip(client, ns_name):
    """A CUDA tensor registered as a pool (CUDA IPC): the daemon copies into GPU memory."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    ns = client.namespace(ns_name, **GEO)
    t = torch.empty((4, ns.block_bytes), dtype=torch.uint8, device="cuda")
    with ns.cuda_pool(t) as pool:
        assert pool.is_cuda and pool.slots == 4 and pool.tensor() is t
        t[0] = torch.randint(0, 256, (ns.block_bytes,), dtype=torch.uint8, device="cuda")
        want = t[0].clone()
        torch.cuda.synchronize()
        key = kvdrive.new_sequence()
        client.put(pool, [(key, 1, 0)]).check()
        client.get(pool, [(key, 1, 3)]).check()
        assert torch.equal(t[3], want)

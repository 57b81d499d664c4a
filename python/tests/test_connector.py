# SPDX-License-Identifier: MIT
"""The connector core against a real daemon: layer-wise save/load through
staging, layouts, fingerprints, misses, errors; and the adapters' parts
that need no engine (the engine's own tests are skipped without it)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kvdrive  # noqa: E402
from conftest import python_env  # noqa: E402
from kvdrive.connector.core import ConnectorCore, KVLayout, ModelFingerprint  # noqa: E402

LAYERS, BLOCKS, BT, HEADS, HD = 4, 32, 16, 2, 8


def vllm_caches(dtype=torch.float32, seed=None, layers=LAYERS, blocks=BLOCKS, fill=0.0):
    """Per-layer [2, blocks, BT, HEADS, HD] tensors: random (seed) or constant."""
    if seed is None:
        return [torch.full((2, blocks, BT, HEADS, HD), fill, dtype=dtype) for _ in range(layers)]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, blocks, BT, HEADS, HD, generator=g).to(dtype) for _ in range(layers)]


def tokens(n, seed=1):
    return np.random.default_rng(seed).integers(0, 32000, n).tolist()


def fp(ns_name, **kw):
    kw.setdefault("dtype", "float32")
    return ModelFingerprint(model=f"test/{ns_name}", **kw)


def core_for(client, ns_name, caches, staging=8, **kw):
    return ConnectorCore(client, fp(ns_name, dtype=kw.pop("dtype", "float32"), **kw),
                         KVLayout.vllm(caches, block_size=BT), staging_slots=staging)


def save_all(core, req, toks, block_ids):
    sent = sum(core.save_layer(layer, req, toks, block_ids) for layer in range(core.num_layers))
    core.wait_for_save()
    return sent


def load_all(core, req, toks, block_ids):
    n = core.start_load(req, toks, block_ids)
    for layer in range(core.num_layers):
        core.wait_for_layer_load(layer)
    return n


def block_of(caches, layer, b):
    return caches[layer][:, b]


# -- the vLLM layout: save, then load in another process ------------------------------


CHILD = textwrap.dedent("""
    import json, sys, torch, kvdrive
    from kvdrive.connector.core import ConnectorCore, KVLayout, ModelFingerprint
    a = json.loads(sys.argv[1])
    caches = [torch.zeros(2, a["blocks"], a["bt"], a["heads"], a["hd"]) for _ in range(a["layers"])]
    with kvdrive.Client(a["socket"]) as c:
        core = ConnectorCore(c, ModelFingerprint(model=a["model"], dtype="float32"),
                             KVLayout.vllm(caches, block_size=a["bt"]), staging_slots=8)
        n = core.lookup(a["query"])
        other = core.lookup(a["other"])
        core.start_load("r1", a["query"][:n], a["dest"])
        for layer in range(a["layers"]):
            core.wait_for_layer_load(layer)
        saved, loaded = core.get_finished()
        out = dict(n=n, other=other, loaded=sorted(loaded), failed=sorted(core.failed_blocks("r1")),
                   counters=core.counters)
        core.close()
    torch.save(caches, a["out"])
    print(json.dumps(out))
""")


def test_save_load_cycle_across_processes(client, daemon, ns_name, tmp_path):
    caches = vllm_caches(seed=7)
    toks = tokens(5 * BT + 7)                       # 5 full blocks and a partial one
    src = [3, 17, 4, 30, 9, 11]
    with core_for(client, ns_name, caches) as core:
        assert core.lookup(toks) == 0
        assert save_all(core, "r0", toks, src) == 5 * LAYERS      # the partial block is not
        assert core.counters["saved"] == 5 * LAYERS
        assert core.get_finished() == ({"r0"}, set())
        assert core.get_finished() == (set(), set())              # reported once
        assert core.lookup(toks) == 5 * BT
    query = toks[:5 * BT] + tokens(40, seed=2)      # the prompt, then a continuation
    other = toks[:2 * BT] + [toks[2 * BT] + 1] + toks[2 * BT + 1:]   # differs in block 2
    dest = [20, 0, 7, 8, 1]
    out = tmp_path / "caches.pt"
    args = dict(socket=daemon.socket, model=f"test/{ns_name}", layers=LAYERS, blocks=BLOCKS,
                bt=BT, heads=HEADS, hd=HD, query=query, other=other, dest=dest, out=str(out))
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=python_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n"] == 5 * BT and res["other"] == 2 * BT
    assert res["loaded"] == ["r1"] and res["failed"] == []
    assert res["counters"]["loaded"] == 5 * LAYERS and res["counters"]["load_failed"] == 0
    got = torch.load(out)
    for layer in range(LAYERS):
        for s, d in zip(src[:5], dest):
            assert torch.equal(block_of(got, layer, d), block_of(caches, layer, s))
        untouched = [b for b in range(BLOCKS) if b not in dest]
        assert not got[layer][:, untouched].any()   # only the cached prefix was written


def test_saves_skip_what_is_cached(client, ns_name):
    caches = vllm_caches(seed=3)
    toks = tokens(3 * BT + 5)
    ids = [5, 6, 7, 8, 9]
    with core_for(client, ns_name, caches) as core:
        assert core.save_layer(0, "r", toks[:BT + 3], ids) == 1
        assert core.save_layer(0, "r", toks[:BT + 3], ids) == 0   # saved already
        assert core.save_layer(0, "r", toks, ids) == 2            # the prefill grew by two
        core.wait_for_save()
        assert core.counters["saved"] == 3
    with core_for(client, ns_name, vllm_caches(seed=3)) as other:
        # Another engine's save of the same prompt: the daemon copies nothing.
        assert other.save_layer(0, "x", toks, ids) == 3
        other.wait_for_save()
        assert other.counters == dict(saved=0, exists=3, save_failed=0, loaded=0, load_failed=0)
        # What a core loaded for a request it does not save again.
        save_all(other, "y", toks, ids)
        dest = [20, 21, 22]
        load_all(other, "z", toks[:3 * BT], dest)
        assert sum(other.save_layer(l, "z", toks + tokens(BT, 9), dest + [23])
                   for l in range(LAYERS)) == LAYERS            # only the new fourth block
        other.wait_for_save()


# -- layouts ---------------------------------------------------------------------------


def test_vllm_to_sglang_and_back(client, ns_name):
    kv = vllm_caches(dtype=torch.float16, seed=11)
    toks = tokens(4 * BT, seed=5)
    vids = [2, 9, 14, 27]
    with core_for(client, ns_name, kv, dtype="float16") as core:
        save_all(core, "a", toks, vids)
    pages = 12
    kb = [torch.zeros(pages * BT + 3, HEADS, HD, dtype=torch.float16) for _ in range(LAYERS)]
    vb = [torch.zeros(pages * BT + 3, HEADS, HD, dtype=torch.float16) for _ in range(LAYERS)]
    sg_fp = fp(ns_name, dtype="float16")
    with ConnectorCore(client, sg_fp, KVLayout.sglang(kb, vb, page_size=BT), 4) as sg:
        assert sg.lookup(toks) == 4 * BT
        pids = [5, 0, 11, 3]
        load_all(sg, "a", toks, pids)
        for layer in range(LAYERS):
            for v, p in zip(vids, pids):
                rows = slice(p * BT, (p + 1) * BT)
                assert torch.equal(kb[layer][rows], kv[layer][0, v])
                assert torch.equal(vb[layer][rows], kv[layer][1, v])
        # and back: a prompt saved from SGLang's pages loads into vLLM's blocks
        g = torch.Generator().manual_seed(4)
        for t in kb + vb:
            t.copy_(torch.randn(t.shape, generator=g).half())
        toks2 = tokens(3 * BT, seed=6)
        save_all(sg, "b", toks2, [7, 1, 10])
    back = vllm_caches(dtype=torch.float16)
    with core_for(client, ns_name, back, dtype="float16") as core:
        load_all(core, "b", toks2, [31, 30, 0])
        for layer in range(LAYERS):
            for p, v in zip([7, 1, 10], [31, 30, 0]):
                rows = slice(p * BT, (p + 1) * BT)
                assert torch.equal(back[layer][0, v], kb[layer][rows])
                assert torch.equal(back[layer][1, v], vb[layer][rows])


def test_block_bytes_are_the_kernels_layout(client, ns_name):
    # K then V, each [kv_heads][block_tokens][head_dim]: what C engines and
    # kvc_sparse read from the same namespace.
    kv = vllm_caches(seed=21)
    toks = tokens(BT, seed=8)
    with core_for(client, ns_name, kv) as core:
        save_all(core, "r", toks, [6])
        ns = core.namespace
        with ns.pool(slots=1) as pool:
            client.get(pool, [(kvdrive.prefix_keys(toks, BT)[0], 2, 0)]).check()
            raw = pool.tensor().view(torch.float32).view(2, HEADS, BT, HD).clone()
    assert torch.equal(raw[0], kv[2][0, 6].permute(1, 0, 2))
    assert torch.equal(raw[1], kv[2][1, 6].permute(1, 0, 2))


# -- fingerprints -------------------------------------------------------------------------


def test_fingerprint_isolation(client, ns_name):
    kv = vllm_caches(seed=1)
    toks = tokens(4 * BT, seed=3)
    base = dict(tp_rank=0, tp_world=2)
    with core_for(client, ns_name, kv, **base) as core:
        save_all(core, "r", toks, [0, 1, 2, 3])
        assert core.lookup(toks) == 4 * BT
    variants = [dict(tp_rank=1, tp_world=2), dict(tp_rank=0, tp_world=4),
                dict(tp_rank=0, tp_world=2, revision="abc123"),
                dict(tp_rank=0, tp_world=2, layout_version=2),
                dict(tp_rank=0, tp_world=2, extra="rope=yarn:4")]
    names = {fp(ns_name, **base).namespace_name()}
    for v in variants:
        with core_for(client, ns_name, vllm_caches(), **v) as other:
            assert other.lookup(toks) == 0, v
            names.add(other.namespace.name)
    with ConnectorCore(client, ModelFingerprint(model=f"test/other-{ns_name}", dtype="float32",
                                                **base), KVLayout.vllm(vllm_caches(), BT), 4) as o:
        assert o.lookup(toks) == 0
        names.add(o.namespace.name)
    assert len(names) == len(variants) + 2
    # The same fingerprint in a new core (and process) finds it all.
    with core_for(client, ns_name, vllm_caches(), **base) as same:
        assert same.lookup(toks) == 4 * BT


def test_fingerprint_names():
    a = ModelFingerprint(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16",
                         tp_rank=3, tp_world=8, revision="0e9e39f")
    name = a.namespace_name()
    assert name.startswith("Llama-3.1-8B-Instruct@") and name.endswith("/kv1")
    assert len(name) <= 127 and name.isascii() and name.isprintable()
    assert "tp=8/3" in a.identity() and "revision=0e9e39f" in a.identity()
    assert ModelFingerprint(model="x" * 300, dtype="float16").namespace_name().__len__() <= 127
    assert a == ModelFingerprint(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16",
                                 tp_rank=3, tp_world=8, revision="0e9e39f")
    for bad in (dict(model="", dtype="float16"), dict(model="m", dtype="int8"),
                dict(model="m", dtype="fp8"), dict(model="m", dtype="float16", tp_rank=2,
                                                   tp_world=2),
                dict(model="m", dtype="float16", tp_world=0),
                dict(model="m", dtype="float16", tp_rank=-1)):
        with pytest.raises(kvdrive.InvalidArgument):
            ModelFingerprint(**bad)


def test_fingerprint_bytes():
    """The namespace's fingerprint for the daemon: 32 bytes, the same for the same
    model and geometry in every process, different when anything differs."""
    geo = dict(layers=LAYERS, kv_heads=HEADS, head_dim=HD, block_tokens=BT)
    a = ModelFingerprint(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16",
                         tp_rank=1, tp_world=2, revision="0e9e39f")
    got = a.fingerprint_bytes(**geo)
    assert isinstance(got, bytes) and len(got) == 32 <= kvdrive.FINGERPRINT_MAX
    assert got == ModelFingerprint(model="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16",
                                   tp_rank=1, tp_world=2,
                                   revision="0e9e39f").fingerprint_bytes(**geo)
    seen = {got}
    for change in (dict(model="other"), dict(dtype="float16"), dict(tp_rank=0),
                   dict(tp_world=4), dict(revision="1234567"), dict(layout_version=2),
                   dict(extra="pp=2")):
        seen.add(dataclasses.replace(a, **change).fingerprint_bytes(**geo))
    for change in (dict(layers=LAYERS + 1), dict(kv_heads=HEADS * 2), dict(head_dim=HD * 2),
                   dict(block_tokens=BT * 2)):
        seen.add(a.fingerprint_bytes(**dict(geo, **change)))
    assert len(seen) == 1 + 7 + 4


def test_connector_registers_the_fingerprint_and_shares(client, ns_name, monkeypatch):
    """The core's namespace carries the fingerprint (the same as the scheduler's
    PrefixIndex, or one of them would conflict), and every Put and Get of its
    prefix blocks says shared; shared=False says private."""
    from kvdrive.connector.core import PrefixIndex
    calls = []
    real_put, real_get = client.put, client.get

    def put(*a, **kw):
        calls.append(("put", kw.get("shared")))
        return real_put(*a, **kw)

    def get(*a, **kw):
        calls.append(("get", kw.get("shared")))
        return real_get(*a, **kw)

    monkeypatch.setattr(client, "put", put)
    monkeypatch.setattr(client, "get", get)
    f = fp(ns_name)
    want = f.fingerprint_bytes(layers=LAYERS, kv_heads=HEADS, head_dim=HD, block_tokens=BT)
    kv = vllm_caches(seed=31)
    toks = tokens(3 * BT, seed=32)
    with ConnectorCore(client, f, KVLayout.vllm(kv, BT), staging_slots=4) as core:
        assert core.shared is True
        assert core.namespace.fingerprint == want
        index = PrefixIndex(client, [f], layers=LAYERS, kv_heads=HEADS, head_dim=HD,
                            block_tokens=BT)
        assert index.namespaces[0].id == core.namespace.id
        assert index.namespaces[0].fingerprint == want
        save_all(core, "r", toks, [0, 1, 2])
        load_all(core, "s", toks, [3, 4, 5])
    assert {k for k, _ in calls} == {"put", "get"}
    assert all(shared is True for _, shared in calls), calls
    calls.clear()
    with ConnectorCore(client, f, KVLayout.vllm(vllm_caches(), BT), staging_slots=4,
                       shared=False) as private:
        load_all(private, "t", toks, [0, 1, 2])
        save_all(private, "u", toks, [0, 1, 2])     # all EXISTS: still sent, private
    assert {k for k, _ in calls} == {"put", "get"}
    assert all(shared is False for _, shared in calls), calls
    with pytest.raises(kvdrive.InvalidArgument):
        ConnectorCore(client, f, KVLayout.vllm(vllm_caches(), BT), staging_slots=4, shared=1)


def test_vllm_extra_config_flag():
    from kvdrive.connector.vllm import _flag
    assert _flag("k", True) is True and _flag("k", False) is False
    assert _flag("k", "true") is True and _flag("k", " Off ") is False
    for bad in ("maybe", 1, None):
        with pytest.raises(ValueError):
            _flag("k", bad)


# -- misses, the staging bound, completions ----------------------------------------------


def test_miss_on_load_is_reported_not_served(client, ns_name):
    kv = vllm_caches(seed=5)
    toks = tokens(4 * BT, seed=4)
    with core_for(client, ns_name, kv) as core:
        save_all(core, "r", toks, [0, 1, 2, 3])
    keys = kvdrive.prefix_keys(toks, BT)
    dest = [10, 11, 12, 13]
    sentinel = -7.0
    got = vllm_caches(fill=sentinel)
    with core_for(client, ns_name, got) as core:
        assert core.lookup(toks) == 4 * BT
        # evicted between the lookup and the load: block 2 of layer 1
        assert client.delete(core.namespace, [keys[2]], layer=1) == 1
        assert core.start_load("q", toks, dest) == 4
        for layer in range(LAYERS):
            core.wait_for_layer_load(layer)
        assert core.failed_blocks("q") == {12}
        assert core.get_block_ids_with_load_errors() == {12}
        assert core.get_block_ids_with_load_errors() == set()
        assert core.counters["loaded"] == 4 * LAYERS - 1 and core.counters["load_failed"] == 1
        assert core.get_finished() == (set(), {"q"})   # finished, with a failed block
        assert (got[1][:, 12] == sentinel).all()        # left as the engine had it
        for layer in range(LAYERS):
            for b, d in enumerate(dest):
                if (layer, d) != (1, 12):
                    assert torch.equal(got[layer][:, d], kv[layer][:, b])
        # The engine recomputes from block 2 on and saves it: the missing block is
        # stored again, the rest were there.
        got[1][:, 12] = kv[1][:, 2]
        assert sum(core.save_layer(l, "q", toks, dest) for l in range(LAYERS)) == 2 * LAYERS
        core.wait_for_save()
        assert core.counters["saved"] == 1 and core.counters["exists"] == 2 * LAYERS - 1
        assert core.lookup(toks) == 4 * BT


def test_more_blocks_than_staging_slots(client, ns_name):
    kv = vllm_caches(seed=9)
    n = 11
    toks = tokens(n * BT, seed=12)
    src = list(range(n))
    with core_for(client, ns_name, kv, staging=3) as core:
        assert core.pool.slots == 3
        assert save_all(core, "r", toks, src) == n * LAYERS
        assert core.counters["saved"] == n * LAYERS
    got = vllm_caches()
    dest = list(range(BLOCKS - 1, BLOCKS - 1 - n, -1))
    with core_for(client, ns_name, got, staging=3) as core:
        core.start_load("r", toks, dest)
        assert len(core._inflight) == 1 and len(core._free) == 0    # 3 of 33 Gets out
        for layer in range(LAYERS):
            core.wait_for_layer_load(layer)
            for s, d in zip(src, dest):      # this layer is complete when it returns
                assert torch.equal(got[layer][:, d], kv[layer][:, s])
        assert core.get_finished() == (set(), {"r"})
        assert core.counters["loaded"] == n * LAYERS


def test_get_finished_tracks_each_request(client, ns_name):
    kv = vllm_caches(seed=2)
    t1, t2 = tokens(2 * BT, seed=30), tokens(2 * BT, seed=31)
    with core_for(client, ns_name, kv) as core:
        for layer in range(LAYERS):
            core.save_layer(layer, "a", t1, [0, 1])
            core.save_layer(layer, "b", t2, [2, 3])
        core.wait_for_save()
        assert core.get_finished() == ({"a", "b"}, set())
        core.start_load("c", t1, [4, 5])
        core.start_load("d", [], [])                   # nothing to load: finished at once
        assert core.busy("c") and not core.busy("d")
        for layer in range(LAYERS):
            core.wait_for_layer_load(layer)
        assert core.get_finished() == (set(), {"c", "d"})
        core.release("c")
        assert core.failed_blocks("c") == set() and not core.busy("c")


# -- errors ---------------------------------------------------------------------------------


def test_bad_layouts():
    IA = kvdrive.InvalidArgument
    ok = vllm_caches(layers=2)
    for bad in ([torch.zeros(3, 4, BT, 2, 8)],                   # not K and V halves
                [torch.zeros(2, 4, BT, 2)],                      # 4-D
                [torch.zeros(2, 4, 8, 2, 8)],                    # blocks of 8, not 16
                [ok[0], torch.zeros(2, 5, BT, HEADS, HD)],       # layers differ
                [ok[0], ok[1].half()],                           # dtypes differ
                [torch.zeros(2, 4, BT, 2, 8, dtype=torch.int32)],
                [np.zeros((2, 4, BT, 2, 8), np.float32)],
                []):
        with pytest.raises(IA):
            KVLayout.vllm(bad, block_size=BT)
    with pytest.raises(IA):
        KVLayout.vllm(ok, block_size=0)
    k = [torch.zeros(4 * BT, HEADS, HD)]
    with pytest.raises(IA):
        KVLayout.sglang(k, [], page_size=BT)
    with pytest.raises(IA):
        KVLayout.sglang(k, [torch.zeros(4 * BT, HEADS)], page_size=BT)
    with pytest.raises(IA):
        KVLayout.sglang(k, [torch.zeros(BT - 1, HEADS, HD)], page_size=BT)
    # Strided buffers are fine: the layout's writes land in them (views, not copies).
    strided = torch.zeros(HEADS, 4 * BT, HD).transpose(0, 1)
    lay = KVLayout.sglang(k, [strided], page_size=BT)
    blocks = torch.randn(1, 2, HEADS, BT, HD)
    lay.scatter(0, torch.tensor([2]), blocks)
    assert torch.equal(strided[2 * BT:3 * BT], blocks[0, 1].permute(1, 0, 2))
    assert torch.equal(lay.gather(0, torch.tensor([2])), blocks)


def test_bad_calls_change_nothing(client, ns_name):
    IA = kvdrive.InvalidArgument
    kv = vllm_caches(seed=6)
    layout = KVLayout.vllm(kv, block_size=BT)
    with pytest.raises(IA):
        ConnectorCore(client, fp(ns_name, dtype="float16"), layout)     # tensors are fp32
    with pytest.raises(IA):
        ConnectorCore(client, fp(ns_name), layout, staging_slots=0)
    with pytest.raises(kvdrive.NamespaceError):
        # The same fingerprint with another geometry: the daemon refuses it.
        with core_for(client, ns_name, kv):
            ConnectorCore(client, fp(ns_name), KVLayout.vllm(
                [torch.zeros(2, 4, BT, HEADS, 2 * HD)] * LAYERS, BT))
    toks = tokens(2 * BT + 1, seed=40)
    with core_for(client, ns_name, kv) as core:
        before = dict(core.counters)
        for call in (lambda: core.start_load("r", toks, [0, 1, 2]),        # partial block
                     lambda: core.start_load("r", toks[:2 * BT], [0]),     # too few ids
                     lambda: core.start_load("r", toks[:2 * BT], [0, BLOCKS]),
                     lambda: core.start_load("r", toks[:2 * BT], [-1, 0]),
                     lambda: core.start_load("r", toks[:2 * BT], [3, 3]),
                     lambda: core.start_load("r", [[1, 2]] * BT, [0, 1]),  # not 1-D
                     lambda: core.start_load("r", [-5] * BT, [0]),
                     lambda: core.save_layer(LAYERS, "r", toks, [0, 1]),
                     lambda: core.save_layer(-1, "r", toks, [0, 1]),
                     lambda: core.save_layer(0, "r", toks, [0]),
                     lambda: core.wait_for_layer_load(LAYERS)):
            with pytest.raises(IA):
                call()
        assert core.counters == before
        assert not core._pending and not core._inflight and len(core._free) == core.staging_slots
        assert core.get_finished() == (set(), set())
        assert core.lookup(toks) == 0                     # nothing was stored
        assert save_all(core, "r", toks, [0, 1]) == 2 * LAYERS   # and it still works
    with pytest.raises(ValueError):
        core.lookup(toks)                                 # closed


# -- the vLLM adapter's logic, on plain data; and vLLM itself where it is installed ----


def test_vllm_plans_drive_the_core(client, ns_name):
    """SchedulerState/WorkerState (the vLLM connector without vLLM's types): a
    first request saves its prompt step by step (chunked prefill); a second with
    the same prompt loads what its prefix cache lacks, and saves only the rest."""
    from kvdrive.connector.core import PrefixIndex
    from kvdrive.connector.vllm import SchedulerState, WorkerState
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    kv = vllm_caches(seed=13)
    f = fp(ns_name)
    index = PrefixIndex(client, [f], layers=LAYERS, kv_heads=HEADS, head_dim=HD, block_tokens=BT)
    sched = SchedulerState(index.lookup, BT)
    core = ConnectorCore(client, f, KVLayout.vllm(kv, BT), staging_slots=4)
    worker = WorkerState(core, names)

    def step(plans):
        worker.start_load([p for p in plans if p is not None])
        for name in names:
            worker.wait_for_layer_load(name)
            worker.save_layer(name)
        worker.wait_for_save()

    prompt = tokens(4 * BT + 3, seed=50)
    assert sched.num_new_matched_tokens("a", prompt, 0) == 0
    sched.after_alloc("a", 0)
    step([sched.new_request("a", prompt, [0, 1, 2], 0, 40)])   # 40 tokens: 2 full blocks
    assert core.counters["saved"] == 2 * LAYERS
    step([sched.cached_request("a", [3, 4], False, 40, 27)])    # the rest of the prompt
    assert core.counters["saved"] == 4 * LAYERS
    assert sched.cached_request("a", None, False, 67, 1) is None   # decode: nothing to do
    sched.finished("a")
    worker.finished(["a"])

    # b: the prompt and more; vLLM's own prefix cache has block 0.
    got = vllm_caches(fill=-1.0)
    core2 = ConnectorCore(client, f, KVLayout.vllm(got, BT), staging_slots=4)
    worker2 = WorkerState(core2, names)
    prompt_b = prompt[:4 * BT] + tokens(20, seed=51)
    assert sched.num_new_matched_tokens("b", prompt_b, BT) == 3 * BT
    sched.after_alloc("b", 3 * BT)
    plan = sched.new_request("b", prompt_b, [9, 10, 11, 12, 13, 14], 4 * BT, 20)
    assert plan.load_tokens == 4 * BT and plan.skip_blocks == 1 and plan.save
    worker = worker2
    step([plan])
    for layer in range(LAYERS):
        assert (got[layer][:, 9] == -1).all()                 # the engine's own: not loaded
        for s, d in zip([1, 2, 3], [10, 11, 12]):
            assert torch.equal(got[layer][:, d], kv[layer][:, s])
    assert core2.counters["loaded"] == 3 * LAYERS
    assert core2.counters["saved"] == LAYERS                 # block 4 only
    assert core2.get_block_ids_with_load_errors() == set()
    core.close()
    core2.close()


def test_vllm_module_imports_without_vllm():
    import kvdrive.connector.vllm as v
    assert v.VLLM_VERSION
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            v.KVDriveConnector
    else:
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1
        assert issubclass(v.KVDriveConnector, KVConnectorBase_V1)


def test_vllm_connector_class():
    pytest.importorskip("vllm")
    import pickle

    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1

    import kvdrive.connector.vllm as v
    assert issubclass(v.KVDriveConnector, KVConnectorBase_V1)
    meta = v.KVDriveConnectorMetadata(requests=[v.ReqPlan("r", [1] * BT, [0], BT, 0, False)])
    assert pickle.loads(pickle.dumps(meta)).requests == meta.requests


# -- the SGLang backend: its page store against the daemon; SGLang itself where installed --


def test_sglang_page_store_round_trip(client, ns_name):
    from kvdrive.connector.sglang import PageStore
    f = fp(ns_name, dtype="float16")
    g = torch.Generator().manual_seed(3)
    for layout, shape in (("layer_first", (2, LAYERS, BT, HEADS, HD)),
                          ("page_first", (2, BT, LAYERS, HEADS, HD))):
        fl = ModelFingerprint(model=f.model, dtype="float16", extra=f"test={layout}")
        st = PageStore(client, fl, layers=LAYERS, kv_heads=HEADS, head_dim=HD, page_size=BT,
                       page_layout=layout, staging_slots=2 * LAYERS)   # two pages a batch
        pages = [torch.randn(shape, generator=g).half().reshape(-1) for _ in range(5)]
        names = [f"{layout}-page-{i}" for i in range(5)]
        assert st.prefix(names) == 0
        assert st.set(names[:3], pages[:3]) == [True] * 3
        assert st.prefix(names) == 3 and st.prefix(names[1:2]) == 1
        assert st.set(names, pages) == [True] * 5                 # 3 already there
        targets = [torch.zeros(p.shape, dtype=torch.float16) for p in pages]
        assert st.get(names, targets) == [True] * 5
        assert all(torch.equal(t, p) for t, p in zip(targets, pages))
        miss = torch.full(pages[0].shape, 7.0, dtype=torch.float16)
        assert st.get(["never-stored"], [miss]) == [False]
        assert (miss == 7).all()
        with pytest.raises(kvdrive.InvalidArgument):
            st.set(["x"], [pages[0][:-1]])                       # not a page
        with pytest.raises(kvdrive.InvalidArgument):
            st.set(["x"], [pages[0].float()])                    # wrong dtype
        with pytest.raises(kvdrive.InvalidArgument):
            st.set(["x", "y"], [pages[0]])
        st.close()


def test_sglang_pages_are_connector_blocks(client, ns_name):
    """A page set through the SGLang backend is, layer by layer, the block the
    connector core would store for the same tokens (one block layout)."""
    from kvdrive.connector.sglang import PageStore
    f = fp(ns_name, dtype="float16")
    st = PageStore(client, f, layers=LAYERS, kv_heads=HEADS, head_dim=HD, page_size=BT)
    page = torch.randn(2, LAYERS, BT, HEADS, HD).half()
    assert st.set(["p"], [page.reshape(-1)]) == [True]
    kv = vllm_caches(dtype=torch.float16)
    with core_for(client, ns_name, kv, dtype="float16") as core:
        assert core.namespace.id == st.namespace.id
        with core.namespace.pool(slots=1) as pool:
            for layer in range(LAYERS):
                client.get(pool, [(PageStore.key("p"), layer, 0)]).check()
                raw = pool.tensor().view(torch.float16).view(2, HEADS, BT, HD)
                assert torch.equal(raw.permute(0, 2, 1, 3), page[:, layer])
                del raw
    st.close()


def test_sglang_backend_class():
    pytest.importorskip("sglang")
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

    import kvdrive.connector.sglang as s
    assert issubclass(s.KVDriveHiCacheStorage, HiCacheStorage)

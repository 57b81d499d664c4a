# SPDX-License-Identifier: MIT
"""kvdrive.trace: traces written and read as docs/trace-format.md says, and a
dump of the reference model from which numpy recomputes the model's own
attention outputs. No daemon."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, python_env
from kvdrive.trace import AttentionRecorder, read_trace, reference_hooks, write_trace

rng = np.random.default_rng(0)
L, G, H, D, P, S = 2, 2, 8, 16, 40, 5           # layers, kv heads, q heads, head_dim, prompt, steps


def arrays(dtype=np.float32):
    k = rng.standard_normal((L, G, P + S, D)).astype(dtype)
    v = rng.standard_normal((L, G, P + S, D)).astype(dtype)
    q = rng.standard_normal((S, L, H, D)).astype(dtype)
    return k, v, q


def sizes_by_the_formula(m):
    kv = m["layers"] * m["kv_heads"] * m["tokens"] * m["head_dim"] * 2
    return {"k.bin": kv, "v.bin": kv, "q.bin": m["steps"] * m["layers"] * m["q_heads"] * m["head_dim"] * 2}


def test_round_trip_is_exact_in_fp16(tmp_path):
    k, v, q = arrays(np.float64)
    k[0, 0, 0, 0] = -65504.0                    # the largest finite half is fine
    out = write_trace(tmp_path / "t", k, v, q, dict(model="toy", prompt="random"))
    raw = json.loads((out / "meta.json").read_text())
    assert raw == dict(layers=L, kv_heads=G, q_heads=H, head_dim=D, tokens=P + S, steps=S, dtype="f16",
                       model="toy", prompt="random")
    assert all(type(raw[x]) is int for x in ("layers", "kv_heads", "q_heads", "head_dim", "tokens", "steps"))
    meta, k2, v2, q2 = read_trace(out)
    for name, a, b in (("k.bin", k, k2), ("v.bin", v, v2), ("q.bin", q, q2)):
        want = a.astype("<f2")
        assert b.shape == a.shape and np.array_equal(b.view("<u2"), want.view("<u2"))
        assert (out / name).read_bytes() == want.tobytes()          # raw, C order, little-endian
        assert (out / name).stat().st_size == sizes_by_the_formula(meta)[name]
    # torch tensors, bfloat16 included, go through the same path
    torch = pytest.importorskip("torch")
    tk, tv, tq = (torch.from_numpy(x).to(torch.bfloat16) for x in (k, v, q))
    with pytest.raises(ValueError, match=r"k: element \(0, 0, 0, 0\) is -65536"):
        write_trace(tmp_path / "t", tk, tv, tq)                   # bf16 rounded -65504 off fp16's range
    tk[0, 0, 0, 0] = 1.0
    write_trace(tmp_path / "t", tk, tv, tq)                       # replaces the old trace
    assert np.array_equal(read_trace(tmp_path / "t")[1], tk.float().numpy().astype("<f2"))


def bad_inputs():
    k, v, q = arrays()
    nan, inf, big = k.copy(), q.copy(), v.copy()
    nan[1, 0, 3, 2] = np.nan
    inf[0, 0, 0, 0] = -np.inf
    big[0, 1, 2, 3] = 65520.0                 # rounds to inf in fp16: an error, not inf
    g3 = rng.standard_normal((L, 3, P + S, D)).astype(np.float32)
    return {
        "nan": (nan, v, q, None), "inf": (k, v, inf, None), "beyond fp16": (k, big, q, None),
        "v shape": (k, v[:, :, :-1], q, None), "q layers": (k, v, q[:, :1], None),
        "q head_dim": (k, v, q[..., :-1], None), "gqa": (g3, g3, q, None),
        "steps = tokens": (k[:, :, :S], v[:, :, :S], q, None), "3-d k": (k[0], v[0], q, None),
        "extra sets a required key": (k, v, q, {"tokens": 3}),
        "extra not JSON": (k, v, q, {"model": object()}),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_inputs_raise_and_write_nothing(tmp_path, case):
    k, v, q, extra = bad_inputs()[case]
    with pytest.raises(ValueError):
        write_trace(tmp_path / "t", k, v, q, extra)
    assert os.listdir(tmp_path) == []                             # no trace, no temporary
    # an existing trace stays as it was
    good = write_trace(tmp_path / "t", *arrays())
    before = {f: (good / f).read_bytes() for f in os.listdir(good)}
    with pytest.raises(ValueError):
        write_trace(good, k, v, q, extra)
    assert {f: (good / f).read_bytes() for f in os.listdir(good)} == before
    assert os.listdir(tmp_path) == ["t"]


def test_a_directory_with_other_files_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_trace(tmp_path, *arrays())
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_read_trace_refuses_what_the_c_reader_refuses(tmp_path):
    def broken(edit):
        d = write_trace(tmp_path / "t", *arrays())
        edit(d)
        with pytest.raises(ValueError) as e:
            read_trace(d)
        return str(e.value)

    def meta(**kw):
        def edit(d):
            m = json.loads((d / "meta.json").read_text())
            m.update(kw)
            (d / "meta.json").write_text(json.dumps(m))
        return edit

    assert "k.bin" in broken(lambda d: os.truncate(d / "k.bin", 2 * L * G * (P + S) * D - 2))
    assert "q.bin" in broken(lambda d: (d / "q.bin").open("ab").write(b"\0\0"))
    assert "tokens" in broken(meta(tokens=float(P + S)))
    assert "steps" in broken(meta(steps=P + S))
    assert "q_heads" in broken(meta(q_heads=3))
    assert "dtype" in broken(meta(dtype="bf16"))
    assert "layers" in broken(meta(layers=None))
    nan_at = ((1 * L + 0) * H + 5) * D + 7                            # q[1][0][5][7]
    assert "q.bin: element (1, 0, 5, 7)" in broken(lambda d: _poke(d / "q.bin", nan_at, 0x7E00))
    assert "v.bin" in broken(lambda d: _poke(d / "v.bin", 3, 0xFC00))   # -inf


def _poke(path, element, bits):
    with open(path, "r+b") as f:
        f.seek(2 * element)
        f.write(int(bits).to_bytes(2, "little"))


def bench_exe():
    kvdrived = os.environ.get("KVDRIVED")
    build = Path(kvdrived).parents[1] if kvdrived else ROOT / "build"
    return build / "tools" / "kvdrive-bench"


def test_a_generated_trace_reads_and_rewrites_byte_identical(tmp_path):
    exe = bench_exe()
    if not os.access(exe, os.X_OK):
        pytest.skip(f"{exe} is not built")
    subprocess.run([str(exe), "gen", "--out", str(tmp_path / "gen"), "--layers", "2", "--kv-heads", "2",
                    "--q-heads", "4", "--head-dim", "16", "--tokens", "300", "--steps", "6"],
                   check=True, capture_output=True)
    meta, k, v, q = read_trace(tmp_path / "gen")
    assert (k.shape, q.shape) == ((2, 2, 300, 16), (6, 2, 4, 16))
    extra = {x: meta[x] for x in meta if x not in ("layers", "kv_heads", "q_heads", "head_dim", "tokens",
                                                   "steps", "dtype")}
    again = write_trace(tmp_path / "again", k, v, q, extra)
    for name in ("k.bin", "v.bin", "q.bin"):
        assert (again / name).read_bytes() == (tmp_path / "gen" / name).read_bytes()


def test_the_module_needs_neither_libkvclient_nor_torch(tmp_path):
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.modules["torch"] = None                                 # import torch fails
        spec = importlib.util.spec_from_file_location("trace", {str(ROOT / "python/kvdrive/trace.py")!r})
        t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
        import numpy as np
        a = np.ones((1, 1, 3, 4)); t.write_trace({str(tmp_path / "t")!r}, a, a, np.ones((2, 1, 1, 4)))
        assert t.read_trace({str(tmp_path / "t")!r})[0]["tokens"] == 3
        assert "kvdrive._lib" not in sys.modules
    """)
    env = dict(python_env(), KVDRIVE_LIBRARY_DIR="/nonexistent")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_the_recorder_takes_a_forward_hook_and_refuses_gaps():
    torch = pytest.importorskip("torch")

    class Core(torch.nn.Module):                    # an attention given post-RoPE q, k, v
        def forward(self, q, k, v):
            return torch.zeros_like(q)

    rec = AttentionRecorder(1)
    core = Core()
    handle = rec.hook(core, 0, lambda m, inputs, out: (*inputs, out))
    for T in (6, 1, 1):                            # a prompt of 6, two decode steps
        core(torch.randn(T, 4, 8), torch.randn(T, 2, 8), torch.randn(T, 2, 8))
    handle.remove()
    core(torch.randn(1, 4, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 8))   # not recorded
    k, v, q = rec.arrays()
    assert (k.shape, q.shape, rec.outputs().shape) == ((1, 2, 8, 8), (2, 1, 4, 8), (2, 1, 4, 8))
    with pytest.raises(ValueError, match="positions"):
        rec.record(0, torch.randn(1, 4, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 8),
                   positions=torch.tensor([9]))      # token 8 is next
    with pytest.raises(ValueError):
        rec.record(0, torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))


def test_batch_layouts_record_what_thd_does():
    q, k, v = (rng.standard_normal((7, h, 8)) for h in (4, 2, 2))
    a, b = AttentionRecorder(1), AttentionRecorder(1)
    for t in (slice(0, 6), slice(6, 7)):            # a prompt of 6, one decode step
        a.record(0, q[t], k[t], v[t])
        a.record_output(0, 2 * q[t])
        b.record(0, *(x[t].transpose(1, 0, 2)[None] for x in (q, k, v)), layout="bhtd")
        b.record_output(0, 2 * q[None, t], layout="bthd")
    assert a.outputs().shape == (1, 1, 4, 8)
    half = AttentionRecorder(1, dtype=np.float16)
    half.record(0, q[:6], k[:6], v[:6])
    half.record(0, q[6:], k[6:], v[6:])
    assert half.arrays()[0].dtype == np.float16
    with pytest.raises(ValueError, match="layer 0 v"):
        half.record(0, q[:1], k[:1], 7e4 * v[:1] / np.abs(v[:1]).max())
    for x, y in zip(a.arrays() + (a.outputs(),), b.arrays() + (b.outputs(),)):
        assert np.array_equal(x, y)


# ---- the real check: the dump reproduces the model's attention ------------------

# Per (step, layer) relative L2 error of the outputs recomputed from the fp16
# files against the model's fp32 outputs. fp16 keeps 11 bits (unit roundoff
# u = 2^-11 = 4.9e-4); the reference model's sink and heavy hitters have logits
# of 8-12, which the rounding of q and k moves by ~u|s| = 5e-3, and a head's
# output by up to 3.8e-3 (measured; its mean 6e-4). Over a step and layer
# (all 8 heads) measured at most 1.6e-3; over the whole trace 7e-4.
F16_TOL = dict(head=1e-2, step_layer=2.5e-3, overall=2e-3)
# The same computation from the recorder's fp32 arrays: measured 2e-6.
F32_TOL = 1e-5


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from kvdrive.reference import BOS, DenseDecoder, LlamaModel
    model = LlamaModel()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, 512, (300,), generator=g)
    prompt[0] = BOS
    rec = AttentionRecorder(model.config.n_layers)
    with reference_hooks(model, rec):
        logits, kvs = model.forward(prompt, return_kv=True)
        dec = DenseDecoder(model, kvs)
        token = int(logits[-1].argmax())
        for _ in range(12):
            token = int(dec.step(token).argmax())
    assert "qkv" not in vars(model)                              # the hooks are gone
    path = rec.write(tmp_path_factory.mktemp("dump") / "trace", dict(model="reference"))
    return path, rec


def recompute(k, v, q, prompt, *, window=1, kv_head=None, q_step=0):
    """softmax(q.k / sqrt(D)) v of every step, layer and query head over tokens [0, prompt + t + window)."""
    steps, layers, q_heads, d = q.shape
    group = q_heads // k.shape[1]
    heads = np.arange(q_heads) // group if kv_head is None else kv_head(np.arange(q_heads))
    out = np.zeros(q.shape)
    for t in range(steps):
        n = prompt + t + window
        kk = np.asarray(k[:, heads, :n], np.float64)                  # [layers, q_heads, n, D]
        vv = np.asarray(v[:, heads, :n], np.float64)
        qt = np.asarray(q[min(steps - 1, t + q_step)], np.float64)      # [layers, q_heads, D]
        s = np.einsum("lhd,lhnd->lhn", qt, kk) / math.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[t] = np.einsum("lhn,lhnd->lhd", p / p.sum(-1, keepdims=True), vv)
    return out


def rel_errors(o, ref):
    ref = ref.astype(np.float64)

    def rel(axes):
        return np.sqrt(((o - ref) ** 2).sum(axis=axes)) / np.sqrt((ref ** 2).sum(axis=axes))
    return dict(head=rel(-1).max(), step_layer=rel((2, 3)).max(), overall=rel((0, 1, 2, 3)),
                step_layer_min=rel((2, 3)).min())


def test_the_dump_reproduces_the_models_attention(dump):
    path, rec = dump
    meta, k, v, q = read_trace(path)
    assert (meta["layers"], meta["kv_heads"], meta["q_heads"], meta["head_dim"]) == (4, 2, 8, 32)
    assert (meta["tokens"], meta["steps"], meta["model"]) == (312, 12, "reference")
    for name, size in sizes_by_the_formula(meta).items():
        assert (path / name).stat().st_size == size
    prompt, ref = meta["tokens"] - meta["steps"], rec.outputs()

    err = rel_errors(recompute(k, v, q, prompt), ref)
    print("fp16 files against the model:", {x: f"{e:.2e}" for x, e in err.items()})
    assert all(err[x] <= F16_TOL[x] for x in F16_TOL), err
    # What is left is fp16 rounding alone: the recorder's fp32 arrays, which the
    # files hold rounded bit for bit, give the model's outputs to fp32 precision.
    k32, v32, q32 = rec.arrays()
    for a, a32 in ((k, k32), (v, v32), (q, q32)):
        assert np.array_equal(np.asarray(a), a32.astype("<f2"))
    exact = rel_errors(recompute(k32, v32, q32, prompt), ref)
    assert exact["step_layer"] <= F32_TOL, exact
    # ...and only the right reading gets there: another GQA mapping (h % kv_heads),
    # the next step's queries, or a window without the new token are far off.
    kv_heads = meta["kv_heads"]
    assert rel_errors(recompute(k, v, q, prompt, kv_head=lambda h: h % kv_heads), ref)["overall"] > 0.1
    assert rel_errors(recompute(k, v, q, prompt, q_step=1), ref)["overall"] > 0.1
    # The new token takes little of this model's attention, so without it the
    # error is below fp16's; in fp32 each step and layer errs by 4.8e-5 or
    # more (measured), fifty times the right window's 9e-7.
    short = rel_errors(recompute(k32, v32, q32, prompt, window=0), ref)
    print("fp32 arrays:", {x: f"{e:.2e}" for x, e in exact.items()},
          "without the new token:", {x: f"{e:.2e}" for x, e in short.items()})
    assert short["step_layer_min"] > 10 * exact["step_layer"], (short, exact)


def test_the_example_script_dumps_a_trace(tmp_path):
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, str(ROOT / "examples/python/dump_trace.py"),
                        "--out", str(tmp_path / "t"), "--prompt-tokens", "40", "--steps", "3", "--seed", "2"],
                       env=python_env(), check=True, capture_output=True, text=True)
    assert r.stdout.startswith(str(tmp_path / "t")) and "[4, 2, 43, 32]" in r.stdout, r.stdout
    meta, k, v, q = read_trace(tmp_path / "t")
    assert q.shape == (3, 4, 8, 32) and len(meta["generated"]) == 3

# SPDX-License-Identifier: MIT
"""Decode traces (docs/trace-format.md) from Python: write, read, record.

    from kvdrive.trace import AttentionRecorder, read_trace, write_trace

- :func:`write_trace` writes numpy (or torch) arrays in the documented
  layout as little-endian fp16, with meta.json; it validates everything
  first and writes nothing when an input is wrong (:class:`ValueError`).
- :func:`read_trace` maps a trace back (:class:`numpy.memmap`), with the
  checks ``kvb_trace_open()`` makes.
- :class:`AttentionRecorder` collects post-RoPE queries, keys and values
  from a model's attention, layer by layer and pass by pass, and writes
  the trace. :func:`reference_hooks` is its adapter for
  :class:`kvdrive.reference.LlamaModel` (the worked example,
  ``examples/python/dump_trace.py``); docs/trace-format.md shows the one
  for Hugging Face models.

This module needs only numpy (torch tensors are accepted where they are
given) and loads nothing of libkvclient; ``import kvdrive.trace`` does run
the package's ``__init__``, which loads it (docs/trace-format.md).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["write_trace", "read_trace", "AttentionRecorder", "reference_hooks", "F16_MAX"]

F16_MAX = 65504.0       #: the largest finite float16
_U32_MAX = 2**32 - 1
_INTS = ("layers", "kv_heads", "q_heads", "head_dim", "tokens", "steps")
_FILES = ("meta.json", "k.bin", "v.bin", "q.bin")


def _numpy(a, name: str) -> np.ndarray:
    """A numpy view or copy of an array or a (CPU or device, any dtype) torch tensor."""
    if hasattr(a, "detach"):                    # torch: numpy has no bfloat16
        a = a.detach()
        if a.is_floating_point() and a.element_size() < 4:
            a = a.float()
        a = a.cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: dtype {a.dtype} is not a real number type")
    return a


def _to_f16(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as C-order little-endian float16; ValueError naming the first NaN, Inf or |x| > 65504."""
    bad = ~np.isfinite(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    bad |= np.abs(a) > F16_MAX
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), a.shape)
        what = "not finite" if not np.isfinite(a[i]) else f"beyond fp16's range (|x| > {F16_MAX:g})"
        raise ValueError(f"{name}: element {tuple(int(x) for x in i)} is {a[i]!r}, {what}")
    return np.ascontiguousarray(a, dtype="<f2")


def _meta(k_shape, v_shape, q_shape) -> dict:
    if len(k_shape) != 4 or len(q_shape) != 4:
        raise ValueError(f"k must be [layers, kv_heads, tokens, head_dim] and q [steps, layers, q_heads, "
                         f"head_dim]: got k {tuple(k_shape)}, q {tuple(q_shape)}")
    layers, kv_heads, tokens, head_dim = k_shape
    steps, q_layers, q_heads, q_dim = q_shape
    if tuple(v_shape) != tuple(k_shape):
        raise ValueError(f"v's shape {tuple(v_shape)} is not k's {tuple(k_shape)}")
    if (q_layers, q_dim) != (layers, head_dim):
        raise ValueError(f"q {tuple(q_shape)} does not match k {tuple(k_shape)} in layers or head_dim")
    meta = dict(layers=layers, kv_heads=kv_heads, q_heads=q_heads, head_dim=head_dim,
                tokens=tokens, steps=steps)
    return _check_meta(meta)


def _check_meta(meta: dict) -> dict:
    for key in _INTS:
        x = meta.get(key)
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 1 <= x <= _U32_MAX:
            raise ValueError(f"meta {key}: {x!r} is not an integer in [1, 2^32 - 1]")
    if meta["q_heads"] % meta["kv_heads"]:
        raise ValueError(f"q_heads {meta['q_heads']} is not a multiple of kv_heads {meta['kv_heads']}")
    if meta["steps"] >= meta["tokens"]:
        raise ValueError(f"steps {meta['steps']} must be less than tokens {meta['tokens']} "
                         "(the prompt is tokens - steps, at least 1)")
    return {key: int(meta[key]) for key in _INTS}


def write_trace(dirname, k, v, q, meta_extra: dict | None = None) -> Path:
    """Writes a trace into ``dirname`` and returns its path.

    ``k, v``: ``[layers, kv_heads, tokens, head_dim]``; ``q``: ``[steps,
    layers, q_heads, head_dim]``; any real dtype, numpy or torch; stored as
    little-endian fp16. ``meta_extra`` (JSON-serialisable, no required key)
    joins meta.json, e.g. ``model`` and ``prompt``. Every check is made
    before anything is written, and the files are written into a temporary
    sibling directory renamed into place: a :class:`ValueError` (shapes,
    GQA, steps, NaN/Inf, values beyond fp16) leaves nothing behind. An
    existing ``dirname`` is replaced only if it is empty or holds a trace.
    """
    dirname = Path(os.path.abspath(dirname))
    k, v, q = _numpy(k, "k"), _numpy(v, "v"), _numpy(q, "q")
    meta = _meta(k.shape, v.shape, q.shape)
    extra = dict(meta_extra or {})
    clash = sorted(set(extra) & set(_INTS + ("dtype",)))
    if clash:
        raise ValueError(f"meta_extra may not set the required keys {clash}")
    meta["dtype"] = "f16"
    meta.update(extra)
    try:
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta_extra is not JSON: {e}") from None
    arrays = {"k.bin": _to_f16(k, "k"), "v.bin": _to_f16(v, "v"), "q.bin": _to_f16(q, "q")}
    if dirname.exists():
        if not dirname.is_dir():
            raise FileExistsError(f"{dirname} exists and is not a directory")
        other = sorted(set(os.listdir(dirname)) - set(_FILES))
        if other:
            raise FileExistsError(f"{dirname} holds other files than a trace's ({other[:3]}): not replaced")
    dirname.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dirname.name}.", dir=dirname.parent))
    try:
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)               # as mkdir would, not mkdtemp's 0700
        for name, a in arrays.items():
            a.tofile(tmp / name)
        (tmp / "meta.json").write_text(text)
        if dirname.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dirname.name}.old.", dir=dirname.parent))
            os.rename(dirname, old / "trace")
            os.rename(tmp, dirname)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dirname)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dirname


def read_trace(dirname, *, check_finite: bool = True):
    """Opens the trace in ``dirname``: ``(meta, k, v, q)``, the arrays read-only memmaps.

    Checks what ``kvb_trace_open()`` checks: meta.json's keys (JSON
    integers in [1, 2^32 - 1], dtype "f16", q_heads a multiple of
    kv_heads, steps < tokens), each file's size exactly as the layout
    implies and (``check_finite``) no NaN or Inf. :class:`ValueError`
    names the problem.
    """
    dirname = Path(dirname)
    try:
        meta = json.loads((dirname / "meta.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{dirname}: no meta.json") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{dirname}/meta.json: not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{dirname}/meta.json: not a JSON object")
    if meta.get("dtype") != "f16":
        raise ValueError(f"meta dtype: {meta.get('dtype')!r}, only \"f16\" is known")
    m = _check_meta(meta)
    kv_shape = (m["layers"], m["kv_heads"], m["tokens"], m["head_dim"])
    q_shape = (m["steps"], m["layers"], m["q_heads"], m["head_dim"])
    out = []
    for name, shape, formula in (("k.bin", kv_shape, "layers * kv_heads * tokens * head_dim * 2"),
                                 ("v.bin", kv_shape, "layers * kv_heads * tokens * head_dim * 2"),
                                 ("q.bin", q_shape, "steps * layers * q_heads * head_dim * 2")):
        path, want = dirname / name, 2 * int(np.prod(shape, dtype=np.uint64))
        if not path.is_file():
            raise ValueError(f"{name}: missing in {dirname}")
        size = path.stat().st_size
        if size != want:
            raise ValueError(f"{name}: {size} bytes, meta.json says {formula} = {want}")
        a = np.memmap(path, dtype="<f2", mode="r", shape=shape)
        if check_finite:
            flat = a.reshape(-1).view("<u2")
            for base in range(0, flat.size, 1 << 24):
                bad = np.flatnonzero((flat[base:base + (1 << 24)] & 0x7C00) == 0x7C00)
                if bad.size:
                    i = np.unravel_index(base + int(bad[0]), shape)
                    raise ValueError(f"{name}: element {tuple(int(x) for x in i)} is not finite")
        out.append(a)
    return (meta, *out)


_LAYOUTS = ("thd", "bhtd", "bthd")


def _rows(a, layout: str, name: str) -> np.ndarray:
    """``[T, heads, D]`` float32 from ``[T, heads, D]`` (thd) or batch 1 of ``bhtd``/``bthd``."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {_LAYOUTS}")
    a = _numpy(a, name)
    if a.ndim != len(layout):
        raise ValueError(f"{name}: shape {a.shape} is not {layout}")
    if layout != "thd":
        if a.shape[0] != 1:
            raise ValueError(f"{name}: batch {a.shape[0]}; record a batch of one sequence")
        a = a[0].transpose(1, 0, 2) if layout == "bhtd" else a[0]
    return np.array(a, dtype=np.float32)      # a copy: the caller's buffers change


class AttentionRecorder:
    """Collects a decode trace from a model's attention, pass by pass.

    Call :meth:`record` for every attention layer of every forward pass
    with that pass's queries and its new tokens' keys and values, **after
    RoPE**, as the attention uses them (``[T, heads, head_dim]``, or batch
    one of ``[B, heads, T, head_dim]``: ``layout="bhtd"``). The first
    ``prompt_tokens`` tokens are the prompt (default: those of the first
    pass); every later token is a decode step whose query is kept. With
    :meth:`record_output` the attention's own output of the same pass is
    kept too (:meth:`outputs`), to check a dump against the model. GQA is
    the model's: query head ``h`` reads kv head ``h // (q_heads /
    kv_heads)``, as in Llama. :meth:`write` converts to fp16 (values beyond
    fp16 are an error, not inf).

    Keys and values are held in ``dtype`` until written: float32 takes
    ``8 * layers * kv_heads * tokens * head_dim`` bytes; ``np.float16``
    half that, and range-checks them as they are recorded.
    """

    def __init__(self, layers: int, *, prompt_tokens: int | None = None, dtype=np.float32):
        self.layers = layers
        self.prompt_tokens = prompt_tokens
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype {self.dtype}: float32 or float16")
        self._k = [[] for _ in range(layers)]
        self._v = [[] for _ in range(layers)]
        self._q = [[] for _ in range(layers)]      # decode rows [H, D]
        self._out = [[] for _ in range(layers)]
        self._n = [0] * layers                     # tokens recorded per layer
        self._shape = None                         # (q_heads, kv_heads, head_dim)

    def record(self, layer: int, q, k, v, *, positions=None, layout: str = "thd") -> None:
        """One pass of layer ``layer``: ``q [T, q_heads, D]``, ``k, v [T, kv_heads, D]``.

        ``positions`` (the tokens' absolute positions), if given, must be
        the next ones of this layer: a cache that drops or reorders tokens
        cannot be written as a trace.
        """
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer {layer} not in [0, {self.layers})")
        q, k, v = _rows(q, layout, "q"), _rows(k, layout, "k"), _rows(v, layout, "v")
        T, n = k.shape[0], self._n[layer]
        shape = (q.shape[1], k.shape[1], k.shape[2])
        if q.shape[0] != T or v.shape != k.shape or q.shape[2] != k.shape[2] or shape[0] % shape[1]:
            raise ValueError(f"layer {layer}: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                             "(same tokens and head_dim, q_heads a multiple of kv_heads)")
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"layer {layer}: heads/dims {shape}, earlier passes {self._shape}")
        if positions is not None:
            pos = _numpy(positions, "positions").reshape(-1)
            if not np.array_equal(pos, np.arange(n, n + T)):
                raise ValueError(f"layer {layer}: positions {pos[:4]}... but {n} tokens were recorded")
        if self.prompt_tokens is None:
            self.prompt_tokens = T
        if self.dtype == np.float16:
            k, v = _to_f16(k, f"layer {layer} k"), _to_f16(v, f"layer {layer} v")
        self._shape = shape
        self._k[layer].append(k)
        self._v[layer].append(v)
        first = max(0, self.prompt_tokens - n)      # this pass's first decode row
        self._q[layer].extend(q[first:])
        self._n[layer] = n + T

    def hook(self, module, layer: int, adapter, *, layout: str = "thd"):
        """Records every call of a torch module through a forward hook; returns the handle.

        ``adapter(module, inputs, output)`` returns ``(q, k, v, out)`` of
        the call in ``layout`` (``out`` may be None): for a module that is
        given post-RoPE q, k, v (vLLM's ``Attention``, an engine's attention
        kernel wrapper) it only reshapes its inputs. ``handle.remove()``
        unhooks.
        """
        def on_forward(mod, inputs, output):
            q, k, v, out = adapter(mod, inputs, output)
            self.record(layer, q, k, v, layout=layout)
            if out is not None:
                self.record_output(layer, out, layout=layout)
        return module.register_forward_hook(on_forward)

    def record_output(self, layer: int, out, *, layout: str = "thd") -> None:
        """The attention output ``[T, q_heads, D]`` of the pass :meth:`record` just saw."""
        out = _rows(out, layout, "out")
        n, T = self._n[layer], out.shape[0]
        if self.prompt_tokens is None or T > n:
            raise ValueError(f"layer {layer}: record_output() of {T} tokens before record() of them")
        self._out[layer].extend(out[max(0, self.prompt_tokens - (n - T)):])

    @property
    def tokens(self) -> int:
        return self._n[0]

    @property
    def steps(self) -> int:
        return len(self._q[0])

    def arrays(self):
        """``(k, v, q)`` in the trace layout (k, v in ``dtype``); ValueError if the layers disagree."""
        if self._shape is None or len(set(self._n)) != 1 or len({len(x) for x in self._q}) != 1:
            raise ValueError(f"layers recorded unevenly: tokens {self._n}, "
                             f"steps {[len(x) for x in self._q]}")
        if self.steps == 0:
            raise ValueError("no decode step recorded (only the prompt)")
        k = np.stack([np.concatenate(x).transpose(1, 0, 2) for x in self._k])
        v = np.stack([np.concatenate(x).transpose(1, 0, 2) for x in self._v])
        q = np.stack([np.stack(x) for x in self._q], axis=1)
        return k, v, q

    def outputs(self) -> np.ndarray:
        """The recorded attention outputs of the decode steps ``[steps, layers, q_heads, D]``."""
        if {len(x) for x in self._out} != {self.steps}:
            raise ValueError("record_output() was not called for every layer and step")
        return np.stack([np.stack(x) for x in self._out], axis=1)

    def write(self, dirname, meta_extra: dict | None = None) -> Path:
        """:func:`write_trace` of :meth:`arrays`."""
        return write_trace(dirname, *self.arrays(), meta_extra)


@contextmanager
def reference_hooks(model, recorder: AttentionRecorder):
    """Records :class:`kvdrive.reference.LlamaModel`'s attention while the block runs.

    The adapter for the reference model: its ``forward`` and
    ``DenseDecoder.step`` (as the engines) call ``model.qkv(layer, h,
    positions)``, which returns the post-RoPE q, k, v, and then
    ``model.finish_layer(layer, h, attn_out)`` with the attention's output.
    Both are wrapped on this instance, and restored after. Record full
    attention from position 0 (``forward``, then ``DenseDecoder``): a
    sparse decoder's outputs are not the trace's, and a prefill that
    starts from a cached prefix fails the positions check.
    """
    qkv, finish = model.qkv, model.finish_layer

    def recording_qkv(layer, h, positions):
        q, k, v = qkv(layer, h, positions)
        recorder.record(layer, q, k, v, positions=positions)
        return q, k, v

    def recording_finish(layer, h, attn_out):
        recorder.record_output(layer, attn_out)
        return finish(layer, h, attn_out)

    model.qkv, model.finish_layer = recording_qkv, recording_finish
    try:
        yield recorder
    finally:
        del model.qkv, model.finish_layer

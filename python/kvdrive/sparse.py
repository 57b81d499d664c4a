# SPDX-License-Identifier: MIT
"""kvc_sparse from Python: the attention-aware decode policy of libkvclient.

Per layer and step an engine calls::

    plan = seq.begin_layer(layer, scores)      # its scores of the stored blocks
    attend over plan.slots[plan.resident]      # (and the tail) while the rest land
    seq.wait_layer()
    attend over the others, merge (kvdrive.reference.lse_merge)
    seq.end_layer(masses)                      # attention mass per chosen block

The policy itself (top-k, residency, the one Get per layer, the two-pass
rule, staging) is the C library's; this module only converts arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._lib import ffi, lib
from .client import Client, Key, Namespace, Pool, _Closing, _tokens
from .errors import InvalidArgument, check

__all__ = ["Sparse", "SparseSequence", "Plan", "pool_slots"]

_KEYS_PRIVATE, _KEYS_PREFIX = 0, 1


def _opts(layers: int, block_tokens: int, *, budget: int, max_seqs: int = 1, slot0: int = 0,
          topk: float = 0.1, topk_max: int = 0, sink: int = 1, local: int = 2,
          half_life_layers: float = 0.0, stage: float = 0.0, split_min: int = 0,
          overlap_us: int = 0, report_scores: bool = False, report_every: int = 0,
          mass_target: float = 0.0):
    o = ffi.new("struct kvc_sparse_opts *")
    o.size = ffi.sizeof("struct kvc_sparse_opts")
    o.layers, o.block_tokens, o.max_seqs, o.slot0 = layers, block_tokens, max_seqs, slot0
    o.budget, o.topk, o.topk_max = budget, topk, topk_max
    o.sink, o.local, o.half_life_layers, o.stage = sink, local, half_life_layers, stage
    o.split_min, o.overlap_us = split_min, overlap_us
    o.flags = 1 if report_scores else 0
    o.report_every = report_every
    o.mass_target = mass_target
    return o


def pool_slots(namespace: Namespace, **opts) -> int:
    """Pool slots a :class:`Sparse` with these options uses:
    ``max_seqs * (budget + layers)``."""
    return int(lib.kvc_sparse_pool_slots(_opts(namespace.layers, namespace.block_tokens, **opts)))


def _f32(a, n: int | None = None, what: str = "scores"):
    """A float32 C view of a numpy array or CPU tensor (kept alive by the caller)."""
    if hasattr(a, "detach"):        # torch
        a = a.detach().to("cpu").float().numpy()
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1))
    if n is not None and arr.size != n:
        raise InvalidArgument(-22, f"{what}: {arr.size} values, expected {n}")
    return arr


@dataclass(frozen=True)
class Plan:
    """One layer's plan (struct kvc_sparse_plan), copied into numpy."""
    layer: int
    blocks: np.ndarray          #: uint32, the chosen blocks' indices, ascending
    slots: np.ndarray           #: uint32, their pool slots
    resident: np.ndarray        #: bool, in its slot at begin_layer (the rest after wait_layer)
    n_missing: int              #: of those, on their way
    two_pass: bool              #: worth attending the resident ones while the rest land
    tail_slot: int              #: the layer's block being filled

    @property
    def n(self) -> int:
        return int(self.blocks.size)


class SparseSequence(_Closing):
    """One sequence of a :class:`Sparse` (kvc_sparse_seq)."""

    def __init__(self, sparse: "Sparse", handle, tokens):
        self.sparse = sparse
        self._q = handle
        self._tokens = tokens       # the prompt, kept as long as the sequence
        self._plan_ptr = None
        self._masses = None

    def _h(self):
        if self._q is None:
            raise ValueError("the sequence has ended")
        return self._q

    def key(self, block: int) -> Key:
        """Key of block ``block`` (every layer shares it)."""
        out = ffi.new("struct kvc_key *")
        check(lib.kvc_sparse_seq_key(self._h(), block, out), "key")
        return Key(out.hi, out.lo)

    def cached(self) -> int:
        """Prompt blocks the cache holds for every layer (prefix keys)."""
        with self.sparse.client._lock:
            return check(lib.kvc_sparse_seq_cached(self._h()), "cached",
                         self.sparse.client._c)

    def set_stored(self, n: int) -> None:
        """Blocks ``[0, n)`` of every layer are stored."""
        check(lib.kvc_sparse_seq_set_stored(self._h(), n), "set_stored")

    def stored(self, layer: int) -> int:
        """Stored blocks of ``layer`` (the tail not included)."""
        return int(lib.kvc_sparse_seq_stored(self._h(), layer))

    def begin_layer(self, layer: int, scores) -> Plan:
        """Chooses the layer's blocks from ``scores`` (one per stored block) and
        sends one Get for those not resident."""
        sc = _f32(scores)
        out = ffi.new("const struct kvc_sparse_plan **")
        with self.sparse.client._lock:
            check(lib.kvc_sparse_begin_layer(self._h(), layer, ffi.from_buffer("float[]", sc),
                                             sc.size, out), f"begin_layer {layer}",
                  self.sparse.client._c)
        p = out[0]
        self._plan_ptr = p
        n = p.n

        def arr(ptr, dtype, size):
            if n == 0:
                return np.zeros(0, dtype=dtype)
            return np.frombuffer(ffi.buffer(ptr, n * size), dtype=dtype).copy()

        return Plan(layer=p.layer, blocks=arr(p.blocks, np.uint32, 4),
                    slots=arr(p.slots, np.uint32, 4),
                    resident=arr(p.resident, np.uint8, 1).astype(bool),
                    n_missing=p.n_missing, two_pass=bool(p.two_pass), tail_slot=p.tail_slot)

    def resident(self) -> np.ndarray:
        """The current plan's resident flags now (after wait_layer: the blocks that landed)."""
        p = self._plan_ptr
        if p is None or p.n == 0:
            return np.zeros(0, dtype=bool)
        return np.frombuffer(ffi.buffer(p.resident, p.n), dtype=np.uint8).astype(bool)

    def wait_layer(self, timeout: float | None = None) -> None:
        """Waits until the plan's missing blocks are in their slots. Raises
        :class:`kvdrive.TimeoutError`, or the error of a block that could not be
        loaded (its resident flag stays False; attend without it or fail)."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        with self.sparse.client._lock:
            check(lib.kvc_sparse_wait_layer(self._h(), ms), "wait_layer", self.sparse.client._c)

    def end_layer(self, masses=None) -> None:
        """Ends the layer; ``masses`` are the plan's attention masses (or None)."""
        p = self._plan_ptr
        ptr = ffi.NULL
        if masses is not None:
            m = _f32(masses, p.n if p is not None else None, "masses")
            self._masses = m
            ptr = ffi.from_buffer("float[]", m)
        with self.sparse.client._lock:
            check(lib.kvc_sparse_end_layer(self._h(), ptr), "end_layer", self.sparse.client._c)
        self._plan_ptr = None

    def tail_slot(self, layer: int) -> int:
        """The tail slot of ``layer``, once its previous Put copied it out."""
        with self.sparse.client._lock:
            return check(lib.kvc_sparse_tail_slot(self._h(), layer), "tail_slot",
                         self.sparse.client._c)

    def tail_full(self, layer: int, tokens=None) -> None:
        """The tail of ``layer`` is a whole block: store it (its token ids for prefix keys)."""
        ptr, keep = ffi.NULL, None
        if tokens is not None:
            keep = _tokens(tokens)
            if keep.size != self.sparse.namespace.block_tokens:
                raise InvalidArgument(-22, f"a block has {self.sparse.namespace.block_tokens} "
                                           f"tokens, not {keep.size}")
            ptr = ffi.from_buffer("uint32_t[]", keep)
        with self.sparse.client._lock:
            check(lib.kvc_sparse_tail_full(self._h(), layer, ptr), "tail_full",
                  self.sparse.client._c)

    def stage(self, layer: int, scores) -> None:
        """Predicted scores of ``layer``'s blocks: stage the best non-resident ones."""
        sc = _f32(scores)
        with self.sparse.client._lock:
            check(lib.kvc_sparse_stage(self._h(), layer, ffi.from_buffer("float[]", sc), sc.size),
                  "stage", self.sparse.client._c)

    def end(self) -> None:
        """Waits for the tail Puts and frees the sequence (its blocks stay cached)."""
        if self._q is None:
            return
        q, self._q = self._q, None
        self.sparse._seqs.discard(self)
        with self.sparse.client._lock:
            check(lib.kvc_sparse_seq_end(q), "sequence end", self.sparse.client._c)

    close = end


class Sparse(_Closing):
    """The decode policy over a pool (kvc_sparse_open).

    It uses slots ``[slot0, slot0 + pool_slots(...))`` of ``pool``: per
    sequence ``budget`` slots for chosen blocks and one tail slot per layer.
    It owns the client's counter page. Options are kvc_sparse_opts': budget
    (required), max_seqs, slot0, topk, topk_max, sink, local,
    half_life_layers, stage, split_min, overlap_us, report_scores, report_every,
    mass_target (a dynamic budget: the scores are estimated masses, such as
    :func:`kvdrive.select.scores`', and a layer takes blocks until they sum to
    it, at most the top-k).
    """

    def __init__(self, client: Client, namespace: Namespace, pool: Pool, **opts: Any):
        self.client = client
        self.namespace = namespace
        self.pool = pool
        self._seqs: set[SparseSequence] = set()
        o = _opts(namespace.layers, namespace.block_tokens, **opts)
        out = ffi.new("kvc_sparse **")
        with client._lock:
            client._check_open()
            check(lib.kvc_sparse_open(client._c, namespace.id, pool._p, o, out), "sparse open",
                  client._c)
        self._sp = out[0]
        self.slots_used = int(lib.kvc_sparse_pool_slots(o))

    def sequence(self, tokens=None) -> SparseSequence:
        """Opens a sequence: prefix keys over ``tokens`` (the prompt's ids), so that a
        prompt stored by another process is found, or private keys when None."""
        if self._sp is None:
            raise ValueError("closed")
        so = ffi.new("struct kvc_sparse_seq_opts *")
        so.size = ffi.sizeof("struct kvc_sparse_seq_opts")
        keep = None
        if tokens is not None:
            keep = _tokens(tokens)
            so.keys = _KEYS_PREFIX
            so.tokens = ffi.from_buffer("uint32_t[]", keep)
            so.n_tokens = keep.size
        out = ffi.new("kvc_sparse_seq **")
        check(lib.kvc_sparse_seq_begin(self._sp, so, out), "sequence")
        s = SparseSequence(self, out[0], keep)
        self._seqs.add(s)
        return s

    @property
    def stats(self) -> dict:
        """What the policy did since it was opened (struct kvc_sparse_stats)."""
        st = ffi.new("struct kvc_sparse_stats *")
        lib.kvc_sparse_get_stats(self._sp, st)
        return {name: getattr(st, name) for name, _ in ffi.typeof("struct kvc_sparse_stats").fields}

    def close(self) -> None:
        """Ends every open sequence and frees the policy."""
        if self._sp is None:
            return
        for s in list(self._seqs):
            s._q = None         # kvc_sparse_close ends them
        self._seqs.clear()
        with self.client._lock:
            lib.kvc_sparse_close(self._sp)
        self._sp = None


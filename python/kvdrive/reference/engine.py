# SPDX-License-Identifier: MIT
"""The reference engine: :class:`~kvdrive.reference.model.LlamaModel` on KVDrive.

Two engines over one model, each the way a real one does it:

- :class:`PagedEngine` keeps a paged KV cache in vLLM v1's layout (per
  layer ``[2, num_blocks, block_size, kv_heads, head_dim]``, a block table
  per sequence) and reuses prefixes across processes through
  :class:`kvdrive.connector.core.ConnectorCore`: look the prompt up, load
  the cached blocks layer by layer (``wait_for_layer_load`` before each
  layer's attention, as vLLM does), compute only the rest, save each layer.
- :class:`SparseDecoder` decodes through :class:`kvdrive.Sparse`
  (``kvc_sparse``): the blocks live in KVDrive, a layer attends only the
  blocks the policy chose (scores of per-block key summaries, by any
  method of :mod:`kvdrive.select`) and its tail, in two passes merged
  exactly by :func:`lse_merge`.

:class:`DenseDecoder` is full attention over a contiguous cache, the
reference both are measured against; :func:`compare_sparse` runs the two
decoders side by side and reports agreement and logit error.

Both store blocks in the connector's block layout (K then V, each
``[kv_heads, block_tokens, head_dim]``) under plain prefix keys, in the
namespace :func:`fingerprint` names, so a prompt one engine stored is
found by the other.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch

from ..client import Client
from ..connector.core import ConnectorCore, KVLayout, ModelFingerprint, _register
from .. import select
from ..errors import Error, InvalidArgument
from ..sparse import Sparse, pool_slots
from .model import LlamaModel, attention, lse_merge

__all__ = ["MODEL_ID", "fingerprint", "sparse_fingerprint", "PagedEngine", "PrefillResult", "DenseDecoder",
           "SparseDecoder", "SparseReport", "compare_sparse", "block_scores", "SCORE_MODES"]

MODEL_ID = "kvdrive/reference-llama"   #: the model id in the fingerprint

_EIO = -5

#: SparseDecoder's score modes: block_scores()' two, then kvdrive.select's methods
SCORE_MODES = ("softmax", "random") + select.METHODS


def fingerprint(model: LlamaModel, *, tp_rank: int = 0, tp_world: int = 1) -> ModelFingerprint:
    """The connector fingerprint of ``model``: its weights' hash stands for the revision."""
    return ModelFingerprint(model=MODEL_ID, dtype="float32", tp_rank=tp_rank, tp_world=tp_world,
                            revision=model.config.fingerprint())


def sparse_fingerprint(model: LlamaModel, *, topk: float = 0.1, sink: int = 1, local: int = 2,
                       score: str = "softmax") -> ModelFingerprint:
    """The fingerprint a :class:`SparseDecoder` with these options stores under.

    Blocks that fill during sparse decode hold K and V computed with
    approximate attention, under the prefix keys of their tokens: in the
    exact model's namespace a dense engine would take them for its own
    (the logits of a full-budget decode that read them moved by 1e-4
    instead of 1e-6). Below full budget the policy is part of the
    fingerprint; at full budget attention is exact and the model's own is used.
    """
    fp = fingerprint(model)
    if topk >= 1.0:
        return fp
    # score "quest" was a sum over kv heads before kvdrive.select (the kernels'
    # max over query heads now): the methods' version keeps the two apart.
    return dataclasses.replace(fp, extra=f"attention=kvc_sparse topk={topk!r} sink={sink} "
                                         f"local={local} score={score} select=2")


# ---- prefix reuse: the paged engine ------------------------------------------


@dataclass
class PrefillResult:
    """What :meth:`PagedEngine.prefill` did."""
    logits: torch.Tensor        #: ``[n_tokens - start, vocab]``: positions ``start..`` of the prompt
    start: int                  #: first position computed (the tokens before came from the cache)
    cached_tokens: int          #: tokens lookup found cached (loaded, or tried)
    block_ids: list[int]        #: the sequence's block table
    failed_blocks: set[int] = field(default_factory=set)   #: loads that failed: recomputed
    seconds: float = 0.0


class PagedEngine:
    """A paged-KV engine: vLLM's cache layout, a block table per sequence,
    prefix reuse through a :class:`ConnectorCore` when given a client.

    ``num_blocks`` is the cache's size in blocks of ``config.block_size``
    tokens. Without a client it is a plain engine (no reuse, no saves).
    """

    def __init__(self, model: LlamaModel, *, num_blocks: int = 512, client: Client | None = None,
                 staging_slots: int = 64, tp_rank: int = 0, tp_world: int = 1):
        c = model.config
        self.model = model
        self.block_size = c.block_size
        self.kv_caches = [torch.zeros(2, num_blocks, c.block_size, c.n_kv_heads, c.head_dim)
                          for _ in range(c.n_layers)]
        self._free = list(range(num_blocks - 1, -1, -1))
        self._req = 0
        self.core: ConnectorCore | None = None
        if client is not None:
            self.core = ConnectorCore(client, fingerprint(model, tp_rank=tp_rank,
                                                          tp_world=tp_world),
                                      KVLayout.vllm(self.kv_caches, block_size=c.block_size),
                                      staging_slots=staging_slots)

    def allocate(self, n_tokens: int) -> list[int]:
        """A block table for ``n_tokens`` tokens (raises when the cache is full)."""
        n = -(-n_tokens // self.block_size)
        if n > len(self._free):
            raise MemoryError(f"{n} blocks wanted, {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def free(self, block_ids: Sequence[int]) -> None:
        """Returns a sequence's blocks to the cache."""
        self._free.extend(reversed(list(block_ids)))

    def gather_kv(self, layer: int, block_ids: Sequence[int], n_tokens: int):
        """K and V ``[n_tokens, kv_heads, head_dim]`` of a sequence, through its block table."""
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)
        kv = self.kv_caches[layer].index_select(1, ids)
        return (kv[0].reshape(-1, *kv.shape[3:])[:n_tokens],
                kv[1].reshape(-1, *kv.shape[3:])[:n_tokens])

    def _write_kv(self, layer: int, block_ids: Sequence[int], start: int, k, v) -> None:
        pos = torch.arange(start, start + k.shape[0])
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)[pos // self.block_size]
        self.kv_caches[layer][0, ids, pos % self.block_size] = k
        self.kv_caches[layer][1, ids, pos % self.block_size] = v

    def prefill(self, token_ids, *, req_id: Hashable | None = None,
                cached_tokens: int | None = None, save: bool = True) -> PrefillResult:
        """Prefills ``token_ids``: loads the cached prefix, computes the rest.

        ``cached_tokens`` None asks the cache (``core.lookup``); a whole prompt
        cached still computes its last block, whose logits the caller wants.
        A block whose load fails (evicted since the lookup) is not read: the
        engine recomputes from the first such block. With ``save`` every
        layer's full blocks are saved as soon as the layer is computed.
        The sequence's blocks stay allocated (:meth:`free` them).
        """
        t0 = time.perf_counter()
        tokens = torch.as_tensor(np.asarray(token_ids, dtype=np.int64).reshape(-1))
        T = int(tokens.numel())
        if T == 0:
            raise InvalidArgument(-22, "prefill of no tokens")
        if req_id is None:
            self._req += 1
            req_id = f"prefill-{self._req}"
        block_ids = self.allocate(T)
        try:
            return self._prefill(tokens, block_ids, req_id, cached_tokens, save, t0)
        except BaseException:
            self.free(block_ids)
            raise

    def _prefill(self, tokens: torch.Tensor, block_ids: list[int], req_id: Hashable,
                 cached_tokens: int | None, save: bool, t0: float) -> PrefillResult:
        core, T = self.core, int(tokens.numel())
        cached = 0
        if core is not None:
            cached = core.lookup(tokens) if cached_tokens is None else int(cached_tokens)
            # The last position's logits need its hidden state: compute at least one block.
            cached = min(cached, (T - 1) // self.block_size * self.block_size)
        nb = cached // self.block_size
        if nb:
            core.start_load(req_id, tokens[:cached], block_ids[:nb])
        save_req = req_id if save and core is not None else None
        start, failed = cached, set()
        logits = self._compute(tokens, block_ids, start, save_req, load_req=req_id if nb else None)
        if logits is None:
            # A load failed: the loads of the other layers finish before anything
            # is overwritten, and every position before the first failed block is
            # good at every layer. Compute again from there, every layer.
            for layer in range(self.model.config.n_layers):
                core.wait_for_layer_load(layer)
            failed = core.failed_blocks(req_id)
            start = min(block_ids.index(b) for b in failed) * self.block_size
            logits = self._compute(tokens, block_ids, start, save_req, load_req=None)
        if save_req is not None:
            core.wait_for_save()
            core.get_finished()
        if core is not None:
            core.release(req_id)
        return PrefillResult(logits=logits, start=start, cached_tokens=cached, block_ids=block_ids,
                             failed_blocks=failed, seconds=time.perf_counter() - t0)

    _CHUNK = 256

    def _compute(self, tokens: torch.Tensor, block_ids: list[int], start: int,
                 save_req: Hashable | None, load_req: Hashable | None) -> torch.Tensor | None:
        """Positions ``start..`` through every layer; None if a load of ``load_req`` failed."""
        m, T = self.model, int(tokens.numel())
        pos = torch.arange(start, T)
        h = m.embed_tokens(tokens[start:])
        for layer in range(m.config.n_layers):
            q, k, v = m.qkv(layer, h, pos)
            if load_req is not None:
                # As vLLM does: this layer's cached blocks must be in before its
                # attention; the later layers' keep loading meanwhile.
                self.core.wait_for_layer_load(layer)
                if self.core.failed_blocks(load_req):
                    return None
            self._write_kv(layer, block_ids, start, k, v)
            K, V = self.gather_kv(layer, block_ids, T)
            kpos = torch.arange(T)
            out = torch.empty_like(q)
            for a in range(0, T - start, self._CHUNK):
                b = min(T - start, a + self._CHUNK)
                end = start + b
                out[a:b], _ = attention(q[a:b], K[:end], V[:end], q_pos=pos[a:b], k_pos=kpos[:end])
            h = m.finish_layer(layer, h, out)
            if save_req is not None:
                self.core.save_layer(layer, save_req, tokens, block_ids)
        return m.logits(h)

    def close(self) -> None:
        """Completes the connector's transfers and frees its staging pool."""
        if self.core is not None:
            self.core.close()
            self.core = None

    def __enter__(self) -> "PagedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- decode: full attention, the reference ---------------------------------


class DenseDecoder:
    """Greedy decode with full attention over a contiguous cache.

    ``kvs`` is each layer's ``(k, v)`` of the prompt, as
    :meth:`LlamaModel.forward` returns them with ``return_kv``.
    """

    def __init__(self, model: LlamaModel, kvs: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.model = model
        self.k = [k.clone() for k, _ in kvs]
        self.v = [v.clone() for _, v in kvs]
        self.n_tokens = int(self.k[0].shape[0])

    def step(self, token: int) -> torch.Tensor:
        """Feeds ``token`` at the next position; returns its logits ``[vocab]``."""
        m = self.model
        pos = torch.tensor([self.n_tokens])
        h = m.embed_tokens([token])
        for l in range(m.config.n_layers):
            q, k, v = m.qkv(l, h, pos)
            self.k[l] = torch.cat([self.k[l], k])
            self.v[l] = torch.cat([self.v[l], v])
            out, _ = attention(q, self.k[l], self.v[l])
            h = m.finish_layer(l, h, out)
        self.n_tokens += 1
        return m.logits(h)[0]


# ---- decode: sparse, through kvc_sparse ---------------------------------------


def block_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, *,
                 mode: str = "softmax", generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores of stored blocks for one query (higher: more attention expected).

    ``q [H, D]``; ``kmin, kmax [n, KVH, D]`` are the blocks' Quest summaries
    (per channel min and max of the keys). Each query head's upper bound
    of ``q.k / sqrt(D)`` over a block is ``sum_d max(q_d min_d, q_d max_d)``.
    ``mode="quest"``: per kv head the max over its query heads, summed over
    kv heads. ``mode="softmax"`` (default): each head's bounds through a
    softmax over the blocks, summed over heads, which weighs every head by
    the share of its attention a block may take instead of by its logit
    scale (a head with large logits would otherwise decide alone).
    ``mode="random"``: uniform noise from ``generator``, the baseline a
    policy has to beat.

    These are :class:`SparseDecoder`'s ``"softmax"`` and ``"random"`` modes.
    Its other modes are :mod:`kvdrive.select`'s methods; note that its
    ``"quest"`` is the kernels' (the max over all query heads), not this
    function's ``mode="quest"`` (summed over kv heads).
    """
    if mode not in ("softmax", "quest", "random"):
        raise InvalidArgument(-22, f"score mode {mode!r}: 'softmax', 'quest' or 'random'")
    n, kvh, D = kmin.shape
    if n == 0:
        return torch.zeros(0)
    if mode == "random":
        return torch.rand(n, generator=generator)
    qg = q.view(kvh, -1, D)                                 # [KVH, G, D]
    ub = (torch.einsum("kgd,nkd->nkg", qg.clamp(min=0), kmax)
          + torch.einsum("kgd,nkd->nkg", qg.clamp(max=0), kmin)) / math.sqrt(D)
    if mode == "quest":
        return ub.max(dim=2).values.sum(dim=1)
    return torch.softmax(ub.reshape(n, -1), dim=0).sum(dim=1)


def _attend(q: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, kt: torch.Tensor | None = None,
            vt: torch.Tensor | None = None):
    """Attention of ``q [H, D]`` over whole blocks ``kb, vb [n, KVH, bs, D]`` and
    optionally a partial tail ``kt, vt [KVH, t, D]``.

    Returns ``out [H, D]``, ``lse [H]``, and each block's own log-sum-exp
    ``[n, H]`` (its attention mass is ``exp(block_lse - lse)`` once ``lse`` is
    the whole layer's).
    """
    H, D = q.shape
    kvh = kb.shape[1]
    qg = q.view(kvh, H // kvh, D) * (1.0 / math.sqrt(D))
    parts_s, parts_v = [], []
    s_blocks = torch.einsum("kgd,nktd->kgnt", qg, kb)      # [KVH, G, n, bs]
    blse = torch.logsumexp(s_blocks, dim=-1).reshape(H, -1).T if kb.shape[0] else \
        torch.zeros(0, H)
    parts_s.append(s_blocks.flatten(2))
    parts_v.append(vb.permute(1, 0, 2, 3).reshape(kvh, -1, D))
    if kt is not None and kt.shape[1]:
        parts_s.append(torch.einsum("kgd,ktd->kgt", qg, kt))
        parts_v.append(vt)
    s = torch.cat(parts_s, dim=-1)                          # [KVH, G, N]
    lse = torch.logsumexp(s, dim=-1)                        # [KVH, G]
    if s.shape[-1] == 0:
        return torch.zeros(H, D), torch.full((H,), float("-inf")), blse
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("kgn,knd->kgd", p, torch.cat(parts_v, dim=1))
    return out.reshape(H, D), lse.reshape(H), blse


class SparseDecoder:
    """Decode through ``kvc_sparse``: the KV blocks live in KVDrive.

    ``topk`` is the share of a layer's stored blocks attention reads (plus
    the first ``sink`` and the last ``local``); ``budget`` the pool slots
    for chosen blocks (default: enough for every layer's choice to stay
    resident, ``layers * (ceil(topk * max_blocks) + sink + local)``).
    ``split``: ``"always"`` attends the resident blocks and the tail while
    the misses land whenever there are misses, then the rest, and merges;
    ``"plan"`` follows the plan's ``two_pass`` advice. ``score`` is a
    method of :mod:`kvdrive.select` (``"quest"``, ``"quest-heads"``,
    ``"rope-bound"``, ``"mean"``, ``"gauss"``, ``"hybrid"``, scored by
    :func:`kvdrive.select.scores` as the C kernels score them) or one of
    :func:`block_scores`' ``"softmax"`` (the default: Quest bounds through a
    softmax per head) and ``"random"`` (the baseline); ``SCORE_MODES``.

    Its namespace is the model's (:func:`fingerprint`) at full budget, so it
    shares prompts with :class:`PagedEngine`; below it, the fingerprint also
    names the policy (``topk``, ``sink``, ``local``, ``score``), because the
    blocks that fill while decoding depend on it.

    The engine keeps, per layer, the summary of each stored block that its
    method needs (``summaries [layers, max_blocks, KVH, rows, D]``,
    :func:`kvdrive.select.summarize`; Quest's min and max for ``"softmax"``
    and ``"random"``), computed in torch when a block is stored. It writes
    each new token's K and V into its layer's tail slot, and hands a full
    tail to the policy (``tail_full``), which Puts it.
    """

    def __init__(self, model: LlamaModel, client: Client, *, max_tokens: int, topk: float = 0.1,
                 budget: int | None = None, sink: int = 1, local: int = 2,
                 split: str = "always", score: str = "softmax", staging_slots: int = 64,
                 report_scores: bool = False, wait_timeout: float = 30.0):
        c = model.config
        if split not in ("always", "plan"):
            raise InvalidArgument(-22, f"split {split!r}: 'always' or 'plan'")
        self.model, self.client = model, client
        if score not in SCORE_MODES:
            raise InvalidArgument(-22, f"score {score!r}: one of {', '.join(SCORE_MODES)}")
        self.bs, self.score_mode, self.split = c.block_size, score, split
        #: the kvdrive.select method whose summaries the engine keeps
        self.method = score if score in select.METHODS else "quest"
        self._rng = torch.Generator().manual_seed(0)
        self.wait_timeout = wait_timeout
        self.max_blocks = -(-max_tokens // c.block_size)
        per_layer = math.ceil(topk * self.max_blocks) + sink + local
        self.budget = budget if budget is not None else c.n_layers * per_layer
        self.fingerprint = fp = sparse_fingerprint(model, topk=topk, sink=sink, local=local,
                                                   score=score)
        # As the connector registers it (name and fingerprint): at full budget it
        # is PagedEngine's namespace, which another fingerprint would conflict with.
        self.namespace = _register(client, fp, layers=c.n_layers, kv_heads=c.n_kv_heads,
                                   head_dim=c.head_dim, block_tokens=c.block_size)
        opts = dict(budget=self.budget, topk=topk, sink=sink, local=local, slot0=staging_slots,
                    report_scores=report_scores)
        self.staging = staging_slots
        n_slots = staging_slots + pool_slots(self.namespace, **opts)
        self.pool = self.namespace.pool(slots=n_slots)
        self.slots = self.pool.tensor().view(torch.float32).view(
            n_slots, 2, c.n_kv_heads, c.block_size, c.head_dim)
        self.sparse = Sparse(client, self.namespace, self.pool, **opts)
        self.seq = None
        self.summaries = torch.zeros(c.n_layers, self.max_blocks, c.n_kv_heads,
                                     select.rows(self.method), c.head_dim)
        self.tokens: list[int] = []
        self.tail_n = 0
        #: per decode: layers run in two passes, layers that lost a block (-EIO)
        self.two_pass_layers = 0
        self.lost_layers = 0

    def _summarise(self, layer: int, b: int, k: torch.Tensor) -> None:
        """Summary of block ``b`` of ``layer`` from its keys ``[KVH, bs, D]``."""
        self.summaries[layer, b] = select.summarize(self.method, k[None])[0]

    def block_scores(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """The scores of ``layer``'s stored blocks for the query ``q [H, D]``."""
        summ = self.summaries[layer, :self.seq.stored(layer)]
        if self.score_mode in ("softmax", "random"):
            return block_scores(q, summ[:, :, 0], summ[:, :, 1], mode=self.score_mode,
                                generator=self._rng)
        return select.scores(self.score_mode, q, summ, self.bs)

    def start(self, prompt, kvs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Stores the prompt: its full blocks (computed ``kvs``, each layer's
        ``(k, v) [T, KVH, D]``) go to KVDrive under the prompt's prefix keys,
        its partial last block into each layer's tail slot. Returns the
        blocks the cache held already (their Puts are ``EXISTS``)."""
        if self.seq is not None:
            raise InvalidArgument(-22, "a sequence is running")
        self.tokens = [int(t) for t in np.asarray(prompt).reshape(-1)]
        T = len(self.tokens)
        if T + 1 > self.max_blocks * self.bs:
            raise InvalidArgument(-22, f"{T} tokens: max_tokens is {self.max_blocks * self.bs}")
        self.seq = self.sparse.sequence(tokens=self.tokens)
        cached = self.seq.cached()
        full, self.tail_n = divmod(T, self.bs)
        chunk = max(1, min(self.staging, self.client.max_items))
        for l, (k, v) in enumerate(kvs):
            kb = k[:full * self.bs].view(full, self.bs, *k.shape[1:]).transpose(1, 2)
            vb = v[:full * self.bs].view(full, self.bs, *v.shape[1:]).transpose(1, 2)
            for b0 in range(0, full, chunk):
                n = min(chunk, full - b0)
                self.slots[:n, 0] = kb[b0:b0 + n]
                self.slots[:n, 1] = vb[b0:b0 + n]
                self.client.put(self.pool, [(self.seq.key(b0 + i), l, i) for i in range(n)]).check()
            self.summaries[l, :full] = select.summarize(self.method, kb)
        self.seq.set_stored(full)
        for l, (k, v) in enumerate(kvs):
            slot = self.seq.tail_slot(l)
            self.slots[slot, 0, :, :self.tail_n] = k[full * self.bs:].transpose(0, 1)
            self.slots[slot, 1, :, :self.tail_n] = v[full * self.bs:].transpose(0, 1)
        return cached

    def step(self, token: int) -> torch.Tensor:
        """Feeds ``token`` at the next position; returns its logits ``[vocab]``."""
        m, seq = self.model, self.seq
        if seq is None:
            raise InvalidArgument(-22, "start() a sequence first")
        pos = torch.tensor([len(self.tokens)])
        self.tokens.append(int(token))
        h = m.embed_tokens([token])
        for l in range(m.config.n_layers):
            q, k, v = m.qkv(l, h, pos)
            tail = seq.tail_slot(l)
            self.slots[tail, 0, :, self.tail_n] = k[0]
            self.slots[tail, 1, :, self.tail_n] = v[0]
            out = self._layer(l, q[0], tail)
            h = m.finish_layer(l, h, out[None])
        self.tail_n += 1
        if self.tail_n == self.bs:
            self._tail_full()
        return m.logits(h)[0]

    def _layer(self, l: int, q: torch.Tensor, tail: int) -> torch.Tensor:
        seq = self.seq
        scores = self.block_scores(l, q)
        plan = seq.begin_layer(l, scores.numpy())
        masses = None
        try:
            slots = torch.as_tensor(plan.slots.astype(np.int64))
            first = torch.as_tensor(plan.resident)
            kt = self.slots[tail, 0, :, :self.tail_n + 1]
            vt = self.slots[tail, 1, :, :self.tail_n + 1]
            two = plan.n_missing > 0 and (self.split == "always" or plan.two_pass)
            if two:
                # The resident blocks and the tail while the misses land.
                s1 = slots[first]
                out, lse, bl1 = _attend(q, self.slots[s1, 0], self.slots[s1, 1], kt, vt)
                self._wait()
                landed = torch.as_tensor(seq.resident()) & ~first
                s2 = slots[landed]
                out2, lse2, bl2 = _attend(q, self.slots[s2, 0], self.slots[s2, 1])
                out, lse = lse_merge(out, lse, out2, lse2)
                blse = torch.full((plan.n, q.shape[0]), float("-inf"))
                blse[first], blse[landed] = bl1, bl2
                self.two_pass_layers += 1
            else:
                self._wait()
                here = torch.as_tensor(seq.resident())
                s = slots[here]
                out, lse, bl = _attend(q, self.slots[s, 0], self.slots[s, 1], kt, vt)
                blse = torch.full((plan.n, q.shape[0]), float("-inf"))
                blse[here] = bl
            # each chosen block's share of the softmax, averaged over query heads
            masses = torch.exp(blse - lse[None, :]).mean(dim=1).numpy()
            return out
        finally:
            seq.end_layer(masses)

    def _wait(self) -> None:
        try:
            self.seq.wait_layer(self.wait_timeout)
        except Error as e:
            if e.code != _EIO:
                raise
            # A block could not be loaded: its resident flag stays 0, the layer
            # attends without it, and the policy fetches it again next time.
            self.lost_layers += 1

    def _tail_full(self) -> None:
        toks = self.tokens[-self.bs:]
        for l in range(self.model.config.n_layers):
            b = self.seq.stored(l)
            slot = self.seq.tail_slot(l)
            self._summarise(l, b, self.slots[slot, 0])
            self.seq.tail_full(l, toks)
        self.tail_n = 0

    @property
    def stats(self) -> dict:
        """The policy's counters (``kvc_sparse_get_stats``)."""
        return self.sparse.stats

    def end(self) -> None:
        """Ends the sequence (waits for its tail Puts; its blocks stay cached)."""
        if self.seq is not None:
            seq, self.seq = self.seq, None
            seq.end()

    def close(self) -> None:
        """Ends the sequence, frees the policy and the pool."""
        self.end()
        if self.sparse is not None:
            self.sparse.close()
            self.sparse = None
        if self.pool is not None:
            self.slots = None
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "SparseDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SparseReport:
    """Sparse decode against full attention over the same tokens."""
    prompt_tokens: int
    steps: int
    topk: float
    budget: int                 #: pool slots for chosen blocks
    kv_blocks: int              #: blocks of the whole KV at the end (all layers)
    agreement: float            #: share of steps whose greedy token is full attention's
    rel_l2_mean: float          #: ||sparse - full|| / ||full|| of the logits, mean over steps
    rel_l2_max: float
    max_abs: float              #: largest |sparse - full| of any logit
    tokens: list[int]           #: the tokens fed (full attention's greedy choices)
    stats: dict                 #: kvc_sparse's counters
    two_pass_layers: int
    lost_layers: int
    seconds: float              #: the sparse decode's time

    def summary(self) -> str:
        """One paragraph for people."""
        s = self.stats
        hits = 100.0 * s["hits"] / s["chosen"] if s["chosen"] else 0.0
        return (f"sparse decode: {self.prompt_tokens}-token prompt, {self.steps} steps, top-k "
                f"{self.topk:g} of the stored blocks, {self.budget} slots for "
                f"{self.kv_blocks} KV blocks: greedy agreement {100 * self.agreement:.1f}%, "
                f"logit error relative L2 mean {self.rel_l2_mean:.2e} max {self.rel_l2_max:.2e}, "
                f"max |diff| {self.max_abs:.2e}; {s['chosen']} blocks chosen, {hits:.1f}% "
                f"resident, {s['misses']} fetched, {self.two_pass_layers} two-pass layers, "
                f"{s['tail_puts']} tail puts; {self.seconds:.2f} s")


def compare_sparse(model: LlamaModel, client: Client, prompt, steps: int, *,
                   kvs: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   first_logits: torch.Tensor | None = None, **sparse_opts) -> SparseReport:
    """Decodes ``steps`` tokens after ``prompt`` with full attention and with a
    :class:`SparseDecoder` (``sparse_opts``), feeding both the full decode's
    greedy tokens (teacher forcing, so one early disagreement does not
    make every later step differ), and compares their logits step by step.

    ``kvs`` and ``first_logits`` (the prompt's KV and its last position's
    logits, :meth:`LlamaModel.forward` with ``return_kv``) skip the prefill.
    """
    if kvs is None or first_logits is None:
        logits, kvs = model.forward(prompt, return_kv=True)
        first_logits = logits[-1]
    T = int(np.asarray(prompt).size)
    dense = DenseDecoder(model, kvs)
    rel, agree, max_abs, fed = [], 0, 0.0, []
    token = int(first_logits.argmax())
    t_sparse = 0.0
    with SparseDecoder(model, client, max_tokens=T + steps, **sparse_opts) as sd:
        sd.start(prompt, kvs)
        for _ in range(steps):
            fed.append(token)
            full = dense.step(token)
            t0 = time.perf_counter()
            sp = sd.step(token)
            t_sparse += time.perf_counter() - t0
            rel.append(float((sp - full).norm() / full.norm()))
            max_abs = max(max_abs, float((sp - full).abs().max()))
            agree += int(sp.argmax() == full.argmax())
            token = int(full.argmax())
        sd.end()
        stats = sd.stats
        report = SparseReport(
            prompt_tokens=T, steps=steps, topk=sparse_opts.get("topk", 0.1), budget=sd.budget,
            kv_blocks=model.config.n_layers * -(-(T + steps) // model.config.block_size),
            agreement=agree / max(steps, 1), rel_l2_mean=float(np.mean(rel)) if rel else 0.0,
            rel_l2_max=max(rel, default=0.0), max_abs=max_abs, tokens=fed, stats=stats,
            two_pass_layers=sd.two_pass_layers, lost_layers=sd.lost_layers, seconds=t_sparse)
    return report

# SPDX-License-Identifier: MIT
"""Block selection methods in torch: the summaries of ``kernels/kernels.h``
("Selection methods") and their scores, on the tensors' own device.

An engine that scores blocks in Python picks a method by name and gets what
the C kernels (``kvk_method_summary``, ``kvk_method_scores``,
``kvk_select_mass``) compute, so a figure measured with one holds for the
other::

    from kvdrive import select
    summ = select.summarize("hybrid", keys)            # keys [n, KVH, T, D], once per block
    masses = select.scores("hybrid", q, summ, T)       # q [H, D]: [n], summing to 1
    idx = select.select_mass(masses, 0.9, k_min=4, k_max=32, sink=1, local=2)

Methods (``METHODS``; summary rows per kv head in brackets):

- ``quest`` [min, max]: Quest's upper bound of ``q.k`` (unscaled), the
  maximum over all query heads. Not a mass: only its order means anything.
- ``quest-heads`` [min, max]: the same bound per query head, taken as the
  head's logit estimate of the block, then the MASS below.
- ``rope-bound`` [min, max, rmax]: ``rmax[i]`` (``i < D/2``; the rest 0) is
  the largest norm over the block's keys of the RoPE pair
  ``(k[i], k[i + D/2])``; per pair the bound is the smaller of the box bound
  of its two dims and ``|q pair| rmax[i]``. Then the MASS.
- ``mean`` [mean]: ``q.mean`` (ShadowKV's landmark). MASS.
- ``gauss`` [mean, var]: the log-mean-exp of the logits of keys drawn from
  ``N(mean, diag var)`` (population variance),
  ``q.mean + sum_d q_d^2 var_d / (2 sqrt(D))``. MASS.
- ``hybrid`` [spike, mean, var]: ``spike`` is the valid key farthest (squared
  L2) from the block's mean, the first of equals; ``mean`` and ``var`` are
  those of the other valid keys (of the one key when only one is valid).
  With ``T = block_tokens``, ``g`` the gauss estimate over the bulk and
  ``p = q.spike``: ``sqrt(D) log(((T - 1) e^(g/sqrt D) + e^(p/sqrt D)) / T)``.
  MASS. The default (``DEFAULT``), as ``KVK_METHOD_DEFAULT``.

MASS: from the per-head estimates ``e[b, h]`` (unscaled, as ``q.k``), head
``h``'s share of attention on block ``b`` is ``softmax_b(e[b, h] / sqrt(D))``;
a block's score is that share averaged over the query heads, so the scores
of the blocks scored together sum to 1. A NaN estimate counts as ``-inf``
(a head whose estimates are all ``-inf`` says nothing: it adds 0), a ``+inf``
one as the largest finite float.

GQA: ``q`` is ``[H, D]`` with ``H = KVH * G``; query head ``h`` reads kv head
``h // G``. Summaries are computed in float64 where they average (mean,
variance, the spike's distance) and returned in the keys' dtype; scores are
computed in the dtype of ``q`` and the summaries (float32 in practice).

This module needs only torch (it uses the package's ``InvalidArgument``, a
``ValueError``, where the package can be imported, plain ``ValueError`` where not).
"""
from __future__ import annotations

import math

import torch

__all__ = ["METHODS", "DEFAULT", "rows", "summarize", "estimates", "scores", "select_mass"]

METHODS = ("quest", "quest-heads", "rope-bound", "mean", "gauss", "hybrid")   #: kvk_method order
DEFAULT = "hybrid"                                                          #: KVK_METHOD_DEFAULT

_ROWS = {"quest": 2, "quest-heads": 2, "rope-bound": 3, "mean": 1, "gauss": 2, "hybrid": 3}


def _invalid(msg: str) -> ValueError:
    try:
        from .errors import InvalidArgument
    except ImportError:             # loaded on its own, without libkvclient
        return ValueError(msg)
    return InvalidArgument(-22, msg)


def _check(method: str) -> str:
    if method not in _ROWS:
        raise _invalid(f"selection method {method!r}: one of {', '.join(METHODS)}")
    return method


def rows(method: str) -> int:
    """Rows of ``head_dim`` floats per kv head in ``method``'s summary."""
    return _ROWS[_check(method)]


# ---- summaries ----------------------------------------------------------------


def _mean_var(k64: torch.Tensor, mask: torch.Tensor, count: torch.Tensor):
    """Mean and population variance over the tokens of ``mask`` (two passes)."""
    mean = torch.where(mask, k64, 0.0).sum(dim=2) / count
    dev = torch.where(mask, k64 - mean[:, :, None], 0.0)
    var = (dev * dev).sum(dim=2) / count
    return mean, var


def summarize(method: str, k: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``method``'s summaries of ``n`` blocks from their keys ``k [n, KVH, T, D]``.

    ``valid`` (``[n]``, default all ``T``) counts each block's valid tokens,
    the first ones; each must be in ``[1, T]``. Returns
    ``[n, KVH, rows(method), D]`` in ``k``'s dtype, on its device.
    """
    _check(method)
    if k.dim() != 4 or not k.is_floating_point():
        raise _invalid(f"keys of shape {tuple(k.shape)} ({k.dtype}): [n, KVH, T, D] floats wanted")
    n, kvh, T, D = k.shape
    if method == "rope-bound" and D % 2:
        raise _invalid(f"rope-bound needs an even head_dim, not {D}")
    if valid is None:
        valid = torch.full((n,), T, dtype=torch.long, device=k.device)
    else:
        valid = torch.as_tensor(valid, dtype=torch.long, device=k.device).reshape(-1)
        if valid.numel() != n:
            raise _invalid(f"{valid.numel()} valid counts for {n} blocks")
        if n and (int(valid.min()) < 1 or int(valid.max()) > T):
            raise _invalid(f"valid token counts must be in [1, {T}]")
    if n == 0:
        return k.new_zeros(0, kvh, _ROWS[method], D)
    mask = (torch.arange(T, device=k.device)[None, :] < valid[:, None])[:, None, :, None]  # [n,1,T,1]
    out = []
    if method in ("quest", "quest-heads", "rope-bound"):
        out += [torch.where(mask, k, math.inf).amin(dim=2), torch.where(mask, k, -math.inf).amax(dim=2)]
    if method == "rope-bound":
        h = D // 2
        r = torch.hypot(k[..., :h], k[..., h:])
        rmax = torch.where(mask, r, 0.0).amax(dim=2)
        out.append(torch.cat([rmax, torch.zeros_like(rmax)], dim=-1))
    if method in ("mean", "gauss", "hybrid"):
        k64 = k.double()
        count = valid.double()[:, None, None]
        if method == "hybrid":
            mean, _ = _mean_var(k64, mask, count)
            # distance to the mean as C has it (the mean rounded to the keys' dtype)
            dev = k64 - mean.to(k.dtype).double()[:, :, None]
            dist = torch.where(mask[..., 0], (dev * dev).sum(dim=-1), -1.0)   # [n, KVH, T]
            spike = dist.argmax(dim=-1)                                       # the first of equals
            out.append(torch.gather(k, 2, spike[:, :, None, None].expand(n, kvh, 1, D))[:, :, 0])
            # the bulk: the other valid keys, or the one key of a block of one
            others = torch.arange(T, device=k.device)[None, None, :] != spike[:, :, None]
            bulk = mask & (others | (valid == 1)[:, None, None])[..., None]
            mean, var = _mean_var(k64, bulk, bulk.sum(dim=2).double())
        else:
            mean, var = _mean_var(k64, mask, count)
        out.append(mean.to(k.dtype))
        if method != "mean":
            out.append(var.to(k.dtype))
    return torch.stack(out, dim=2)


# ---- scores -------------------------------------------------------------------


def _box(qg: torch.Tensor, mn: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """Per dim ``max(q mn, q mx)`` ``[n, KVH, G, D]`` (qg ``[KVH, G, D]``, mn/mx ``[n, KVH, D]``)."""
    a, b = qg[None] * mn[:, :, None], qg[None] * mx[:, :, None]
    return torch.maximum(a, b)


def _dot(qg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("kgd,nkd->nkg", qg, x)


def estimates(method: str, q: torch.Tensor, summaries: torch.Tensor,
              block_tokens: int) -> torch.Tensor:
    """Per query head logit estimates ``e [n, H]`` of the blocks (unscaled, as
    ``q.k``; NaN where the arithmetic gives one). For ``quest`` and
    ``quest-heads`` the Quest bound, for ``rope-bound`` the RoPE-pair bound,
    both at least every valid key's ``q.k``."""
    _check(method)
    if (summaries.dim() != 4 or q.dim() != 2 or q.shape[1] != summaries.shape[3]
            or summaries.shape[1] == 0 or q.shape[0] % summaries.shape[1]
            or summaries.shape[2] != _ROWS[method]):
        raise _invalid(f"q {tuple(q.shape)} and {method} summaries {tuple(summaries.shape)} "
                       "do not match ([H, D] and [n, KVH, rows, D], H a multiple of KVH)")
    if block_tokens < 1:
        raise _invalid(f"block_tokens {block_tokens}")
    n, kvh, _, D = summaries.shape
    H = q.shape[0]
    qg = q.reshape(kvh, H // kvh, D).to(summaries.dtype)
    s = summaries
    sd = math.sqrt(D)
    if method in ("quest", "quest-heads"):
        e = _box(qg, s[:, :, 0], s[:, :, 1]).sum(dim=-1)
    elif method == "rope-bound":
        h = D // 2
        box = _box(qg, s[:, :, 0], s[:, :, 1])
        box = box[..., :h] + box[..., h:]
        disc = torch.hypot(qg[..., :h], qg[..., h:])[None] * s[:, :, 2, None, :h]
        e = torch.minimum(box, disc).sum(dim=-1)
    elif method == "mean":
        e = _dot(qg, s[:, :, 0])
    elif method == "gauss":
        e = _dot(qg, s[:, :, 0]) + _dot(qg * qg, s[:, :, 1]) / (2 * sd)
    else:
        g = _clamp(_dot(qg, s[:, :, 1]) + _dot(qg * qg, s[:, :, 2]) / (2 * sd)) / sd
        p = _clamp(_dot(qg, s[:, :, 0])) / sd
        lrest = math.log(block_tokens - 1) if block_tokens > 1 else -math.inf
        e = sd * (torch.logaddexp(g + lrest, p) - math.log(block_tokens))
    return e.reshape(n, H)


def _clamp(e: torch.Tensor) -> torch.Tensor:
    """NaN as -inf, +inf as the largest finite float (as kvk_method_scores)."""
    big = torch.finfo(e.dtype).max
    return torch.where(torch.isnan(e), -math.inf, torch.clamp(e, max=big))


def scores(method: str, q: torch.Tensor, summaries: torch.Tensor, block_tokens: int) -> torch.Tensor:
    """Scores ``[n]`` of ``n`` blocks for the query ``q [H, D]`` from their
    ``method`` summaries ``[n, KVH, rows, D]`` (:func:`summarize`):
    ``quest``'s unscaled bound (the max over query heads), for every other
    method the estimated attention masses (summing to 1).
    ``block_tokens`` is the blocks' size ``T`` (``hybrid`` weighs its bulk
    by ``T - 1``)."""
    e = estimates(method, q, summaries, block_tokens)
    n, D = summaries.shape[0], summaries.shape[3]
    if n == 0:
        return e.new_zeros(0)
    if method == "quest":
        return e.amax(dim=1)
    sd = math.sqrt(D)
    x = _clamp(e)
    x = torch.where(torch.isposinf(e), x, x / sd) if method != "hybrid" else x / sd
    p = torch.softmax(x, dim=0)                       # per head over the blocks
    p = torch.where(torch.isnan(p), 0.0, p)           # a head with no finite estimate: nothing
    return p.sum(dim=1) / e.shape[1]


# ---- a dynamic budget ---------------------------------------------------------


def select_mass(masses: torch.Tensor, target: float, k_min: int, k_max: int, sink: int = 0,
                local: int = 0) -> torch.Tensor:
    """The blocks to read for a mass ``target`` (``kvk_select_mass``): the first
    ``sink`` and the last ``local`` blocks, then the others in decreasing
    ``masses`` (equal ones: the lower index first; NaN as ``-inf``) until the
    chosen masses (their positive parts) sum to at least ``target``, with at
    least ``k_min`` and at most ``k_max`` blocks in all (forced blocks first
    when they alone exceed ``k_max``: sinks, then the most recent). Returns
    the indices, sorted ascending, as a LongTensor on ``masses``' device."""
    m = torch.as_tensor(masses).reshape(-1)
    n = m.numel()
    dev = m.device
    k = max(0, min(int(k_max), n))
    ns = min(max(int(sink), 0), k)
    nl = min(max(int(local), 0), k - ns)
    key = torch.where(torch.isnan(m), -math.inf, m.double())
    pos = key.clamp(min=0)
    cand = key[ns:n - nl]
    order = torch.sort(cand, descending=True, stable=True).indices[:k - ns - nl] + ns
    total = float(pos[:ns].sum() + pos[n - nl:].sum())
    # take t blocks: the least t with the target reached and k_min met, at most all of order
    run = total + torch.cumsum(pos[order], dim=0)
    reached = torch.cat([torch.tensor([total], dtype=torch.float64, device=dev), run]) >= target
    enough = torch.arange(order.numel() + 1, device=dev) + ns + nl >= int(k_min)
    ok = torch.nonzero(reached & enough)
    take = int(ok[0]) if ok.numel() else order.numel()
    chosen = torch.cat([torch.arange(ns, device=dev), torch.sort(order[:take]).values,
                        torch.arange(n - nl, n, device=dev)])
    return chosen.long()

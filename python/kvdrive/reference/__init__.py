# SPDX-License-Identifier: MIT
"""A PyTorch reference engine on KVDrive: a small Llama and two ways to serve it.

- :mod:`kvdrive.reference.model` — :class:`LlamaModel` (RMSNorm, RoPE, GQA,
  SwiGLU; seeded weights shaped so that attention concentrates as in
  trained models), :func:`attention` and the exact :func:`lse_merge`.
- :mod:`kvdrive.reference.engine` — :class:`PagedEngine` (vLLM's paged KV
  layout, prefix reuse across processes through the connector core),
  :class:`SparseDecoder` (decode through ``kvc_sparse``),
  :class:`DenseDecoder` (full attention, the reference) and
  :func:`compare_sparse`.

CPU and float32 only; it needs torch. ``examples/python/reference.py`` runs it.
"""
from .engine import (MODEL_ID, DenseDecoder, PagedEngine, PrefillResult, SparseDecoder,
                     SparseReport, block_scores, compare_sparse, fingerprint,
                     sparse_fingerprint)
from .model import BOS, LlamaConfig, LlamaModel, apply_rope, attention, lse_merge, rms_norm

__all__ = ["BOS", "LlamaConfig", "LlamaModel", "attention", "lse_merge", "rms_norm", "apply_rope",
           "MODEL_ID", "fingerprint", "sparse_fingerprint", "PagedEngine", "PrefillResult", "DenseDecoder",
           "SparseDecoder", "SparseReport", "compare_sparse", "block_scores"]

# SPDX-License-Identifier: MIT
"""Connectors: an engine's paged KV cache on KVDrive.

- :mod:`kvdrive.connector.core` — engine-independent: :class:`ModelFingerprint`
  (what goes into the namespace name), :class:`KVLayout` (vLLM's and SGLang's
  KV tensors as blocks), :class:`ConnectorCore` (lookup, layer-wise load and
  save through a bounded staging pool, completion bookkeeping).
- :mod:`kvdrive.connector.vllm` — a vLLM v1 ``KVConnectorBase_V1``
  (``kv_connector_module_path="kvdrive.connector.vllm"``).
- :mod:`kvdrive.connector.sglang` — an SGLang HiCache storage backend.

The adapters import their engine only when their classes are used, so this
package imports without vLLM or SGLang (it needs torch).
"""
from .core import (KV_LAYOUT_VERSION, TORCH_DTYPES, ConnectorCore, KVLayout, ModelFingerprint,
                   PrefixIndex)

__all__ = ["KV_LAYOUT_VERSION", "TORCH_DTYPES", "ConnectorCore", "KVLayout", "ModelFingerprint",
           "PrefixIndex"]

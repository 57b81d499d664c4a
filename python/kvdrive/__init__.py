# SPDX-License-Identifier: MIT
"""KVDrive from Python: the whole of libkvclient, through CFFI.

    import kvdrive
    with kvdrive.Client() as c:
        ns = c.namespace("llama-8b", layers=32, kv_heads=8, head_dim=128,
                         dtype="float16", block_tokens=16)
        pool = ns.pool(slots=64)
        keys = kvdrive.prefix_keys(token_ids, block_tokens=16)
        c.put(pool, [(keys[0], 0, 0)]).wait()

Modules: :mod:`kvdrive.client` (connection, namespaces, pools, requests),
:mod:`kvdrive.sparse` (the kvc_sparse decode policy), :mod:`kvdrive.errors`,
:mod:`kvdrive.connector` (the engine-independent connector core, and the
vLLM and SGLang adapters), :mod:`kvdrive.select` (the kernels' block
selection methods in torch; loaded on first use, it needs torch),
:mod:`kvdrive.reference` (a small PyTorch Llama that uses all of it).
docs/python.md is the guide.
"""
from ._lib import library_path
from .client import (DTYPES, FINGERPRINT_MAX, Client, ItemStatus, Key, Namespace, Pool, Request,
                     block_bytes, chain_key, new_sequence, prefix_keys, private_key)
from .errors import (BusyError, ConnectionError, Error, InvalidArgument, ItemError,
                     NamespaceError, PermissionError, QuotaError, TimeoutError, strerror)
from .sparse import Plan, Sparse, SparseSequence

__version__ = "0.1.0"


def __getattr__(name: str):
    # kvdrive.select needs torch, which the rest of the package does not: loaded on first use.
    if name == "select":
        import importlib
        return importlib.import_module(".select", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Client", "Namespace", "Pool", "Request", "Key", "ItemStatus", "DTYPES", "FINGERPRINT_MAX",
    "prefix_keys", "chain_key", "private_key", "new_sequence", "block_bytes", "Sparse",
    "SparseSequence", "Plan", "Error", "ConnectionError", "TimeoutError", "BusyError",
    "InvalidArgument", "NamespaceError", "PermissionError", "QuotaError", "ItemError",
    "strerror", "library_path", "__version__",
]

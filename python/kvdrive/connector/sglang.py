# SPDX-License-Identifier: MIT
"""An SGLang HiCache storage backend on KVDrive (the L3 tier of HiCache).

Written against the ``HiCacheStorage`` interface of SGLang 0.5.x
(``python/sglang/srt/mem_cache/hicache_storage.py``: ``get``, ``batch_get``,
``set``, ``batch_set``, ``exists``, ``batch_exists``, ``register_mem_pool_host``)
and its ``dynamic`` backend loader, which constructs
``cls(storage_config, kwargs)``. SGLang is imported only when
:data:`KVDriveHiCacheStorage` is first used. Use it with::

    python -m sglang.launch_server --model MODEL --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "kvdrive", "module_path": "kvdrive.connector.sglang",
          "class_name": "KVDriveHiCacheStorage", "kvdrive_socket": "/run/kvdrive/kvd.sock"}'

HiCache moves whole pages between its host pool and storage: one value is a
flat page of the host pool (all layers, K and V, ``page_size`` tokens).
:class:`PageStore` stores it as one KVDrive block per layer (the block
layout of :mod:`kvdrive.connector.core`), under a key hashed from SGLang's
string key, in the namespace of the model's :class:`ModelFingerprint`.
Supported: MHA host pools in the ``layer_first`` (page ``[2, layers,
page_size, kv_heads, head_dim]``) and ``page_first`` (``[2, page_size,
layers, kv_heads, head_dim]``) layouts; MLA and ``page_first_direct`` are
refused. SGLang's keys hash its own token chains, so pages stored by SGLang
are found by SGLang, not by the vLLM connector (whose keys are KVDrive's
prefix chains), even where the bytes would agree.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any, List, Optional, Sequence

import torch

from ..client import Client, ItemStatus, Key
from ..errors import InvalidArgument
from .core import TORCH_DTYPES, ModelFingerprint, _register

__all__ = ["PAGE_LAYOUTS", "PageStore", "KVDriveHiCacheStorage"]

#: Host pool layouts a page may have: where the layer axis is in a page.
PAGE_LAYOUTS = ("layer_first", "page_first")


def _bad(msg: str) -> InvalidArgument:
    return InvalidArgument(-22, msg)


class PageStore:
    """Whole pages (all layers) under string keys, one KVDrive block per layer.

    ``set`` and ``get`` are synchronous (HiCache calls them from its own I/O
    threads) and safe from several threads. A page counts as stored only
    when every layer is; ``get`` fills its target only when every layer was
    found, so a partly evicted page is a miss, never a mix.
    """

    def __init__(self, client: Client, fingerprint: ModelFingerprint, *, layers: int,
                 kv_heads: int, head_dim: int, page_size: int,
                 page_layout: str = "layer_first", staging_slots: int = 64,
                 timeout: float | None = 60.0):
        if page_layout not in PAGE_LAYOUTS:
            raise _bad(f"page_layout {page_layout!r}: one of {', '.join(PAGE_LAYOUTS)}")
        self.client = client
        self.fingerprint = fingerprint
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.page_size = page_size
        self.page_layout = page_layout
        self.dtype = TORCH_DTYPES[fingerprint.dtype]
        self.timeout = timeout
        self.namespace = _register(client, fingerprint, layers=layers, kv_heads=kv_heads,
                                   head_dim=head_dim, block_tokens=page_size)
        if page_layout == "layer_first":
            self.page_shape = (2, layers, page_size, kv_heads, head_dim)
        else:
            self.page_shape = (2, page_size, layers, kv_heads, head_dim)
        self.page_numel = 2 * layers * page_size * kv_heads * head_dim
        slots = max(int(staging_slots), layers)        # at least one whole page
        self.pool = self.namespace.pool(slots)
        self._staging = self.pool.tensor().view(self.dtype).view(slots, 2, kv_heads, page_size,
                                                                 head_dim)
        self._pages_per_batch = slots // layers
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str) -> Key:
        """The KVDrive key of an SGLang page key (128 bits of BLAKE2b)."""
        if not isinstance(name, str):
            raise _bad(f"a page key is a str, not {type(name).__name__}")
        return Key.of(hashlib.blake2b(name.encode(), digest_size=16).digest())

    def _page(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a flat page or a page-shaped tensor) as the page shape (a view)."""
        if not isinstance(t, torch.Tensor) or t.dtype != self.dtype or \
                t.numel() != self.page_numel:
            desc = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t)
            raise _bad(f"a page is {self.page_numel} elements of {self.dtype}, not {desc}")
        try:
            return t.view(self.page_shape)
        except RuntimeError:
            raise _bad("a page tensor must be contiguous") from None

    def _layer(self, page: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer`` of a page as ``[2, page_size, kv_heads, head_dim]`` (a view)."""
        return page[:, layer] if self.page_layout == "layer_first" else page[:, :, layer]

    def prefix(self, names: Sequence[str]) -> int:
        """How many leading pages of ``names`` are stored (at every layer)."""
        keys = [self.key(n) for n in names]
        if not keys:
            return 0
        with self._lock:
            # A Lookup counts leading keys cached: exactly batch_exists.
            return min(self.client.lookup(self.namespace, keys))

    def set(self, names: Sequence[str], pages: Sequence[torch.Tensor]) -> List[bool]:
        """Stores ``pages`` under ``names``; per page, whether it is stored now
        (already cached counts)."""
        names, pages = list(names), list(pages)
        if len(names) != len(pages):
            raise _bad(f"{len(names)} keys, {len(pages)} pages")
        views = [self._page(p) for p in pages]
        keys = [self.key(n) for n in names]
        out: List[bool] = []
        with self._lock:
            for off in range(0, len(keys), self._pages_per_batch):
                part = range(off, min(off + self._pages_per_batch, len(keys)))
                items = []
                for j, i in enumerate(part):
                    for layer in range(self.layers):
                        slot = j * self.layers + layer
                        self._staging[slot].copy_(self._layer(views[i], layer)
                                                  .permute(0, 2, 1, 3))
                        items.append((keys[i], layer, slot))
                req = self.client.put(self.pool, items)
                req.wait(self.timeout)
                st = req.status
                for j, _ in enumerate(part):
                    ok = st[j * self.layers:(j + 1) * self.layers]
                    out.append(all(s in (ItemStatus.OK, ItemStatus.EXISTS) for s in ok))
        return out

    def get(self, names: Sequence[str], targets: Sequence[torch.Tensor]) -> List[bool]:
        """Loads pages ``names`` into ``targets``; per page, whether it was found
        (a target of a page not found is left as it was)."""
        names, targets = list(names), list(targets)
        if len(names) != len(targets):
            raise _bad(f"{len(names)} keys, {len(targets)} targets")
        views = [self._page(t) for t in targets]
        keys = [self.key(n) for n in names]
        out: List[bool] = []
        with self._lock:
            for off in range(0, len(keys), self._pages_per_batch):
                part = range(off, min(off + self._pages_per_batch, len(keys)))
                items = [(keys[i], layer, j * self.layers + layer)
                         for j, i in enumerate(part) for layer in range(self.layers)]
                req = self.client.get(self.pool, items)
                req.wait(self.timeout)
                st = req.status
                for j, i in enumerate(part):
                    found = all(s == ItemStatus.OK
                                for s in st[j * self.layers:(j + 1) * self.layers])
                    if found:
                        for layer in range(self.layers):
                            self._layer(views[i], layer).copy_(
                                self._staging[j * self.layers + layer].permute(0, 2, 1, 3))
                    out.append(found)
        return out

    def close(self) -> None:
        """Frees the staging pool."""
        with self._lock:
            self._staging = None
            try:
                self.pool.close()
            except BufferError:
                pass


# -- the SGLang class, built on first use ----------------------------------------------


def _build():
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

    class KVDriveHiCacheStorage(HiCacheStorage):
        """SGLang HiCache's storage tier in kvdrived (see the module's docs)."""

        def __init__(self, storage_config, kwargs: Optional[dict] = None):
            self.storage_config = storage_config
            self._extra = dict(storage_config.extra_config or {})
            if storage_config.is_mla_model:
                raise NotImplementedError("kvdrive: MLA KV pools are not supported")
            self._client = Client(self._extra.get("kvdrive_socket"), name="sglang:hicache")
            self._store: PageStore | None = None

        def register_mem_pool_host(self, mem_pool_host):
            super().register_mem_pool_host(mem_pool_host)
            cfg = self.storage_config
            layout = getattr(mem_pool_host, "layout", "layer_first")
            if layout not in PAGE_LAYOUTS:
                raise NotImplementedError(f"kvdrive: host pool layout {layout!r}")
            dtype = str(mem_pool_host.dtype).replace("torch.", "")
            pp = getattr(cfg, "pp_size", 1)
            fp = ModelFingerprint(model=self._extra.get("kvdrive_model_id") or cfg.model_name
                                  or "unknown", dtype=dtype, tp_rank=cfg.tp_rank,
                                  tp_world=cfg.tp_size,
                                  revision=self._extra.get("kvdrive_revision", ""),
                                  extra=f"pp={pp}/{cfg.pp_rank}" if pp > 1 else "")
            self._store = PageStore(self._client, fp, layers=mem_pool_host.layer_num,
                                    kv_heads=mem_pool_host.head_num,
                                    head_dim=mem_pool_host.head_dim,
                                    page_size=mem_pool_host.page_size, page_layout=layout,
                                    staging_slots=int(self._extra.get("kvdrive_staging_slots",
                                                                      64)))

        def _target(self, t):
            return t if t is not None else self.mem_pool_host.get_dummy_flat_data_page()

        def get(self, key: str, target_location: Optional[Any] = None,
                target_sizes: Optional[Any] = None) -> torch.Tensor | None:
            t = self._target(target_location)
            return t if self._store.get([key], [t])[0] else None

        def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                      target_sizes: Optional[Any] = None) -> List[torch.Tensor | None]:
            ts = [self._target(t) for t in (target_locations or [None] * len(keys))]
            return [t if ok else None for t, ok in zip(ts, self._store.get(keys, ts))]

        def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
                target_sizes: Optional[Any] = None) -> bool:
            return self._store.set([key], [value])[0]

        def batch_set(self, keys: List[str], values: Optional[Any] = None,
                      target_locations: Optional[Any] = None,
                      target_sizes: Optional[Any] = None) -> bool:
            return all(self._store.set(keys, list(values)))

        def exists(self, key: str) -> bool:
            return self._store.prefix([key]) == 1

        def batch_exists(self, keys: List[str], extra_info: Optional[Any] = None) -> int:
            return self._store.prefix(keys)

        def clear(self) -> None:
            # Every page of this model and rank goes; the namespace comes back empty.
            self._store.close()
            self._client.drop_namespace(self._store.namespace)
            self.register_mem_pool_host(self.mem_pool_host)

    KVDriveHiCacheStorage.__module__ = __name__
    KVDriveHiCacheStorage.__qualname__ = "KVDriveHiCacheStorage"
    return KVDriveHiCacheStorage


_built: dict[str, Any] = {}


def __getattr__(name: str):
    # PEP 562: SGLang's loader does getattr(module, class_name); only then is
    # SGLang imported.
    if name == "KVDriveHiCacheStorage":
        if not _built:
            _built[name] = _build()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

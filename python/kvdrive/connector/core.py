# SPDX-License-Identifier: MIT
"""The engine-independent connector: an engine's paged KV cache on KVDrive.

An engine keeps, per layer, K and V for pages ("blocks") of ``block_tokens``
tokens, addressed by block ids from its block table. :class:`KVLayout`
names those tensors; :class:`ConnectorCore` maps a request's token ids to
KVDrive keys and its block ids to the blocks of those tensors, and moves
them layer by layer through a memfd staging pool::

    fp = ModelFingerprint(model="my-llama", dtype="float32", tp_rank=0, tp_world=1)
    layout = KVLayout.vllm(kv_caches, block_size=16)
    core = ConnectorCore(client, fp, layout, staging_slots=64)
    n_tokens = core.lookup(token_ids)                    # cached prefix, whole blocks
    core.start_load(req_id, token_ids[:n_tokens], block_ids)
    for layer in range(layers):
        core.wait_for_layer_load(layer)                  # that layer's blocks are in
        ... attention of the layer ...
        core.save_layer(layer, req_id, token_ids, block_ids)
    core.wait_for_save()
    saved, loaded = core.get_finished()
    failed = core.get_block_ids_with_load_errors()       # recompute these

**The block.** A KVDrive block is one layer's K and V of ``block_tokens``
tokens, all kv heads, in the layout that libkvclient's kernels and
``kvc_sparse`` read (``kernels/kernels.h``)::

    K  [kv_heads][block_tokens][head_dim]   then
    V  [kv_heads][block_tokens][head_dim]   row-major, elements of the dtype

so ``block_bytes = 2 * kv_heads * block_tokens * head_dim * dtype size``.
Every layout here converts to and from exactly these bytes, so a block saved
from vLLM's tensors loads into SGLang's and back, and a C engine or
``kvdrive.Sparse`` reads the same blocks. Changing this is a new
:data:`KV_LAYOUT_VERSION`.

**Keys.** Block ``i`` of a request is stored under the chained prefix key of
its tokens (:func:`kvdrive.prefix_keys`), at each layer, in a namespace whose
name carries the :class:`ModelFingerprint` (model, revision, KV dtype, TP
rank and world size, layout version): equal prompts give equal keys in every
process, and different models, dtypes or TP ranks land in different
namespaces, so they never see each other's blocks.

**Sharing between machines.** The namespace is registered with a fingerprint
too (:meth:`ModelFingerprint.fingerprint_bytes`: BLAKE2b-256 of the same
identity plus the geometry, block size included), which the daemon's remote
tier keys blocks by. Since every block here is a prefix block, the core's
Puts and Gets say ``shared=True``: a daemon with a remote tier writes the
blocks through to it, and a Get that misses on this machine is asked of it,
so machines serving the same model (same fingerprint) reuse each other's
prefixes. ``ConnectorCore(shared=False)`` keeps them on this machine.

**Threads.** A core may be called from several threads (one lock); an
engine's single worker thread is what it is made for.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ..client import Client, ItemStatus, Key, Request, prefix_keys
from ..errors import Error, InvalidArgument, ItemError, TimeoutError

__all__ = ["KV_LAYOUT_VERSION", "TORCH_DTYPES", "ModelFingerprint", "KVLayout", "ConnectorCore",
           "PrefixIndex"]

#: Version of the block byte layout above. Part of every namespace name: bump
#: it whenever the bytes of a block change meaning, so old blocks are not served.
KV_LAYOUT_VERSION = 1

#: KV dtypes a connector moves, by namespace dtype name. (fp8 needs a torch
#: with float8 dtypes; this one has none.)
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

_EINVAL = -22


def _bad(msg: str) -> InvalidArgument:
    return InvalidArgument(_EINVAL, msg)


def _pos_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise _bad(f"{name} must be an integer >= {minimum}, not {v!r}")
    return int(v)


@dataclass(frozen=True)
class ModelFingerprint:
    """Everything that changes the K and V a token gets, or the bytes they are stored as.

    ``model`` is the hub id or path, ``revision`` the weights' commit id (not
    a branch name), ``dtype`` the KV cache's dtype (a namespace dtype name),
    ``tp_rank``/``tp_world`` the tensor-parallel split (each rank stores its
    own kv heads), ``layout_version`` the block layout, and ``extra`` any
    further ``key=value`` lines (RoPE scaling, KV quantisation, pipeline
    stage). Two fingerprints that differ in any field give different
    namespace names, hence no shared blocks; and different
    :meth:`fingerprint_bytes`, the namespace's fingerprint for the daemon,
    by which its remote tier keeps machines from sharing blocks of
    different models.
    """
    model: str
    dtype: str
    tp_rank: int = 0
    tp_world: int = 1
    revision: str = ""
    layout_version: int = KV_LAYOUT_VERSION
    extra: str = ""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise _bad("model must be a non-empty string")
        if self.dtype not in TORCH_DTYPES:
            raise _bad(f"dtype {self.dtype!r}: one of {', '.join(TORCH_DTYPES)}")
        world = _pos_int("tp_world", self.tp_world)
        rank = _pos_int("tp_rank", self.tp_rank, 0)
        if rank >= world:
            raise _bad(f"tp_rank {rank} of a tp_world of {world}")
        _pos_int("layout_version", self.layout_version, 0)
        if not isinstance(self.revision, str) or not isinstance(self.extra, str):
            raise _bad("revision and extra are strings")

    def identity(self) -> str:
        """The canonical text the fingerprint hashes (one ``key=value`` a line)."""
        text = (f"model={self.model}\nrevision={self.revision}\nkv={self.dtype}\n"
                f"tp={self.tp_world}/{self.tp_rank}\nlayout=kvdrive/{self.layout_version}\n")
        extra = self.extra.strip()
        return text + (extra + "\n" if extra else "")

    def digest(self) -> str:
        """128-bit hash of :meth:`identity`, as 32 hex digits."""
        return hashlib.blake2b(self.identity().encode(), digest_size=16).hexdigest()

    def fingerprint_bytes(self, *, layers: int, kv_heads: int, head_dim: int,
                          block_tokens: int) -> bytes:
        """The namespace's fingerprint for the daemon (``Client.namespace(fingerprint=)``,
        kvc_ns_opts): BLAKE2b-256 (32 bytes) of :meth:`identity` followed by a
        ``geometry=<layers>x<kv_heads>x<head_dim>,block_tokens=<n>`` line. The
        remote tier keys shared blocks by it, so it names everything that
        changes a block's bytes: the model and its revision, the KV dtype, the
        TP rank and size, the layout, the extra lines, and the geometry with the
        engine's block size (a wrong ``model`` override on another model still
        differs there)."""
        text = (self.identity() + f"geometry={int(layers)}x{int(kv_heads)}x{int(head_dim)},"
                f"block_tokens={int(block_tokens)}\n")
        return hashlib.blake2b(text.encode(), digest_size=32).digest()

    def namespace_name(self) -> str:
        """``<short model id>@<digest>/kv<layout version>``: the recipe of
        docs/engine-integration.md ("Keys"), at most 127 printable bytes."""
        short = re.sub(r"[^A-Za-z0-9._+-]", "_", self.model.rstrip("/").rsplit("/", 1)[-1])
        return f"{short[:48] or 'model'}@{self.digest()}/kv{self.layout_version}"


def _register(client: Client, fingerprint: ModelFingerprint, *, layers: int, kv_heads: int,
              head_dim: int, block_tokens: int):
    # The scheduler's PrefixIndex and every worker register the same name: they
    # must give the same fingerprint, or the second gets E_NS_CONFLICT.
    fp = fingerprint.fingerprint_bytes(layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                                       block_tokens=block_tokens)
    return client.namespace(fingerprint.namespace_name(), layers=layers, kv_heads=kv_heads,
                            head_dim=head_dim, dtype=fingerprint.dtype, block_tokens=block_tokens,
                            fingerprint=fp)


class PrefixIndex:
    """Lookups without KV tensors: what an engine's scheduler asks before it
    allocates blocks. With several fingerprints (every TP rank of a model), a
    prefix counts only where all of them have it, since every rank must load.
    """

    def __init__(self, client: Client, fingerprints: ModelFingerprint | Sequence[ModelFingerprint],
                 *, layers: int, kv_heads: int, head_dim: int, block_tokens: int):
        if isinstance(fingerprints, ModelFingerprint):
            fingerprints = [fingerprints]
        fingerprints = list(fingerprints)
        if not fingerprints or not all(isinstance(f, ModelFingerprint) for f in fingerprints):
            raise _bad("fingerprints: one or more ModelFingerprint")
        self.client = client
        self.block_tokens = _pos_int("block_tokens", block_tokens)
        self.namespaces = [_register(client, f, layers=layers, kv_heads=kv_heads,
                                     head_dim=head_dim, block_tokens=block_tokens)
                           for f in fingerprints]

    def lookup(self, token_ids) -> int:
        """Tokens of the longest prefix of ``token_ids`` cached at every layer (of
        every namespace), a multiple of ``block_tokens``."""
        keys = prefix_keys(token_ids, self.block_tokens)
        n = len(keys)
        for ns in self.namespaces:
            if n == 0:
                break
            n = min(n, min(self.client.lookup(ns, keys[:n])))
        return n * self.block_tokens


class KVLayout:
    """An engine's KV tensors, seen as per-layer K and V of shape
    ``[num_blocks, block_tokens, kv_heads, head_dim]`` (views, never copies).

    Build one with :meth:`vllm` or :meth:`sglang`. Every layer has the same
    shape, dtype and device. The tensors stay the engine's: the layout only
    reads and writes blocks of them.
    """

    def __init__(self, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], kind: str):
        if len(k) == 0 or len(k) != len(v):
            raise _bad("a layout has one K and one V per layer, and at least one layer")
        ref = k[0]
        if ref.dim() != 4:
            raise _bad(f"{kind}: a layer's K is [num_blocks, block_tokens, kv_heads, head_dim]")
        for i, t in enumerate(itertools.chain(k, v)):
            if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
                raise _bad(f"{kind}: layer {i % len(k)}: {tuple(t.shape)} {t.dtype} on "
                           f"{t.device}, expected {tuple(ref.shape)} {ref.dtype} on {ref.device}")
        dtype_name = next((n for n, d in TORCH_DTYPES.items() if d == ref.dtype), None)
        if dtype_name is None:
            raise _bad(f"{kind}: KV dtype {ref.dtype}: one of "
                       f"{', '.join(str(d) for d in TORCH_DTYPES.values())}")
        self.kind = kind
        self._k = list(k)
        self._v = list(v)
        self.num_layers = len(k)
        self.num_blocks, self.block_tokens, self.kv_heads, self.head_dim = (int(s) for s in
                                                                            ref.shape)
        if min(self.num_blocks, self.block_tokens, self.kv_heads, self.head_dim) <= 0:
            raise _bad(f"{kind}: empty KV tensors {tuple(ref.shape)}")
        self.dtype = ref.dtype
        self.dtype_name = dtype_name
        self.element_size = ref.element_size()
        self.device = ref.device

    @classmethod
    def vllm(cls, kv_caches: Sequence[torch.Tensor], block_size: int) -> "KVLayout":
        """vLLM v1's FlashAttention layout: per layer one tensor
        ``[2, num_blocks, block_size, kv_heads, head_dim]`` whose halves are K and V
        (any strides: vLLM may allocate it in another physical order)."""
        block_size = _pos_int("block_size", block_size)
        kv_caches = list(kv_caches)
        for i, t in enumerate(kv_caches):
            if not isinstance(t, torch.Tensor):
                raise _bad(f"vllm: layer {i} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() != 5 or t.shape[0] != 2:
                raise _bad(f"vllm: layer {i} is {tuple(t.shape)}, expected "
                           "[2, num_blocks, block_size, kv_heads, head_dim]")
            if t.shape[2] != block_size:
                raise _bad(f"vllm: layer {i} has blocks of {t.shape[2]} tokens, "
                           f"block_size is {block_size}")
        return cls([t[0] for t in kv_caches], [t[1] for t in kv_caches], "vllm")

    @classmethod
    def sglang(cls, k_buffers: Sequence[torch.Tensor], v_buffers: Sequence[torch.Tensor],
               page_size: int) -> "KVLayout":
        """SGLang's MHA token pool: per layer K and V buffers ``[num_tokens, kv_heads,
        head_dim]``; block id ``p`` is the page of tokens ``[p*page_size, (p+1)*page_size)``.
        A last partial page (SGLang pads its pools) is not addressable."""
        page_size = _pos_int("page_size", page_size)
        k_buffers, v_buffers = list(k_buffers), list(v_buffers)
        if len(k_buffers) != len(v_buffers):
            raise _bad(f"sglang: {len(k_buffers)} K buffers, {len(v_buffers)} V buffers")
        k, v = [], []
        for i, t in enumerate(itertools.chain(k_buffers, v_buffers)):
            if not isinstance(t, torch.Tensor):
                raise _bad(f"sglang: buffer {i} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() != 3:
                raise _bad(f"sglang: buffer {i} is {tuple(t.shape)}, expected "
                           "[num_tokens, kv_heads, head_dim]")
            pages = t.shape[0] // page_size
            if pages == 0:
                raise _bad(f"sglang: buffer {i} holds {t.shape[0]} tokens, less than a page")
            # view(), not reshape(): a copy would take the writes of a load. (Splitting
            # the first dimension is a view for any strides.)
            paged = t[:pages * page_size].view(pages, page_size, *t.shape[1:])
            (k if i < len(k_buffers) else v).append(paged)
        return cls(k, v, "sglang")

    @property
    def block_bytes(self) -> int:
        """Bytes of one KVDrive block of this layout."""
        return 2 * self.kv_heads * self.block_tokens * self.head_dim * self.element_size

    def gather(self, layer: int, block_ids: torch.Tensor) -> torch.Tensor:
        """Blocks ``block_ids`` of ``layer`` as ``[n, 2, kv_heads, block_tokens, head_dim]``
        (the block layout; a new tensor on the engine's device)."""
        k = self._k[layer].index_select(0, block_ids).permute(0, 2, 1, 3)
        v = self._v[layer].index_select(0, block_ids).permute(0, 2, 1, 3)
        return torch.stack((k, v), dim=1)

    def scatter(self, layer: int, block_ids: torch.Tensor, blocks: torch.Tensor) -> None:
        """Writes ``blocks`` (``[n, 2, kv_heads, block_tokens, head_dim]``, any device)
        into blocks ``block_ids`` of ``layer``."""
        blocks = blocks.to(self.device)
        self._k[layer].index_copy_(0, block_ids, blocks[:, 0].permute(0, 2, 1, 3))
        self._v[layer].index_copy_(0, block_ids, blocks[:, 1].permute(0, 2, 1, 3))

    def __repr__(self) -> str:
        return (f"<KVLayout {self.kind} layers={self.num_layers} blocks={self.num_blocks} "
                f"block_tokens={self.block_tokens} kv_heads={self.kv_heads} "
                f"head_dim={self.head_dim} {self.dtype_name} on {self.device}>")


@dataclass
class _Op:
    """One Put or Get of blocks of one layer of one request, through staging slots."""
    kind: str                       # "put" or "get"
    req_id: Hashable
    layer: int
    positions: list[int]            # block indices in the request
    block_ids: list[int]            # engine block ids
    keys: list[Key]
    seq: int = 0                    # submission order of loads (ties within a layer)
    slots: list[int] = field(default_factory=list)
    request: Request | None = None


@dataclass
class _Load:
    outstanding: int
    blocks: int
    failed: dict[int, int] = field(default_factory=dict)     # block position -> block id


class ConnectorCore:
    """Saves and loads an engine's KV blocks, layer by layer, through KVDrive.

    ``staging_slots`` bounds the host memory in flight: every block moves
    through one slot of a memfd pool of that many blocks; when none is free,
    the oldest transfer is completed first. A slot of a Put is reused only
    once the Put is done; a Get's slot is copied into the engine's tensor
    when the Get completes. ``timeout`` (seconds, None: forever) bounds each
    wait for the daemon; a :class:`kvdrive.TimeoutError` leaves the transfer
    in flight (call again).

    Loads never serve garbage: a block the daemon no longer has (evicted
    between :meth:`lookup` and the load) is left as the engine had it and
    reported by :meth:`failed_blocks` and
    :meth:`get_block_ids_with_load_errors`, so the engine recomputes it.

    Saves skip the blocks this core loaded for the request and the blocks it
    already saved for it; anything else already cached comes back as the
    Put's ``EXISTS`` (the daemon copies nothing), which is cheaper than a
    Lookup round trip before every Put and has no race with other writers.

    ``shared`` (default True): Puts and Gets carry ``shared=True`` (the keys
    are prefix keys), so a daemon with a remote tier shares the blocks with
    other machines of the same namespace fingerprint; False keeps them here.
    """

    def __init__(self, client: Client, fingerprint: ModelFingerprint, layout: KVLayout,
                 staging_slots: int = 64, *, timeout: float | None = 60.0, shared: bool = True):
        if not isinstance(fingerprint, ModelFingerprint):
            raise _bad("fingerprint must be a ModelFingerprint")
        if not isinstance(layout, KVLayout):
            raise _bad("layout must be a KVLayout")
        if fingerprint.dtype != layout.dtype_name:
            raise _bad(f"the fingerprint says {fingerprint.dtype}, the KV tensors are "
                       f"{layout.dtype_name}")
        staging_slots = _pos_int("staging_slots", staging_slots)
        self.client = client
        self.fingerprint = fingerprint
        self.layout = layout
        self.timeout = timeout
        if not isinstance(shared, bool):
            raise _bad(f"shared must be a bool, not {shared!r}")
        self.shared = shared
        self.namespace = _register(client, fingerprint, layers=layout.num_layers,
                                   kv_heads=layout.kv_heads, head_dim=layout.head_dim,
                                   block_tokens=layout.block_tokens)
        if self.namespace.block_bytes != layout.block_bytes:
            raise _bad(f"namespace blocks of {self.namespace.block_bytes} bytes, layout "
                       f"blocks of {layout.block_bytes}")
        self.pool = self.namespace.pool(staging_slots)
        self.staging_slots = staging_slots
        self._staging = self.pool.tensor().view(layout.dtype).view(
            staging_slots, 2, layout.kv_heads, layout.block_tokens, layout.head_dim)
        self._chunk = max(1, min(client.max_items, staging_slots))
        self._lock = threading.RLock()
        self._free: deque[int] = deque(range(staging_slots))
        self._inflight: deque[_Op] = deque()
        self._pending: list[_Op] = []           # loads not yet submitted, by (layer, seq)
        self._pending_keys: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._loads: dict[Hashable, _Load] = {}
        self._saves: dict[Hashable, int] = {}   # req -> Puts in flight
        self._saved_upto: dict[Hashable, list[int]] = {}
        self._finished_saves: set = set()
        self._finished_loads: set = set()
        self._load_errors: set[int] = set()
        self._save_errors: list[tuple[Hashable, int, int, ItemStatus]] = []
        #: Block counts since creation: saved (stored), exists (already cached),
        #: save_failed, loaded, load_failed (missed or failed).
        self.counters = dict(saved=0, exists=0, save_failed=0, loaded=0, load_failed=0)
        self._closed = False

    # -- properties ----------------------------------------------------------

    @property
    def block_tokens(self) -> int:
        """Tokens of one block (the engine's block size)."""
        return self.layout.block_tokens

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    # -- validation ----------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ValueError("the connector core is closed")

    def _check_layer(self, layer: Any) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or \
                not 0 <= int(layer) < self.num_layers:
            raise _bad(f"layer {layer!r} of {self.num_layers}")
        return int(layer)

    def _blocks(self, token_ids, block_ids, exact: bool,
                skip: int = 0) -> tuple[list[Key], list[int]]:
        keys = self.keys(token_ids)
        n_tokens = len(np.asarray(token_ids).reshape(-1))
        if exact and n_tokens % self.block_tokens:
            raise _bad(f"{n_tokens} tokens is not a whole number of {self.block_tokens}-token "
                       "blocks (load the prefix lookup() returned)")
        skip = _pos_int("skip_blocks", skip, 0)
        if skip > len(keys):
            raise _bad(f"skip_blocks {skip} of {len(keys)} blocks")
        ids = np.asarray(block_ids if block_ids is not None else [], dtype=np.int64).reshape(-1)
        if len(ids) < len(keys):
            raise _bad(f"{len(keys)} blocks of tokens, {len(ids)} block ids")
        ids = ids[:len(keys)]
        used = ids[skip:]
        if len(used) and (used.min() < 0 or used.max() >= self.layout.num_blocks):
            raise _bad(f"block ids must be in [0, {self.layout.num_blocks})")
        if len(np.unique(used)) != len(used):
            raise _bad("block ids repeat")
        return keys, [int(b) for b in ids]

    # -- keys and lookup -------------------------------------------------------

    def keys(self, token_ids) -> list[Key]:
        """The keys of the full blocks of ``token_ids`` (a partial last block has none)."""
        return prefix_keys(token_ids, self.block_tokens)

    def lookup(self, token_ids) -> int:
        """Tokens of the longest prefix of ``token_ids`` cached at every layer
        (a multiple of ``block_tokens``)."""
        with self._lock:
            self._check_open()
            keys = self.keys(token_ids)
            if not keys:
                return 0
            return min(self.client.lookup(self.namespace, keys)) * self.block_tokens

    # -- loads -----------------------------------------------------------------

    def start_load(self, req_id: Hashable, token_ids, block_ids: Sequence[int], *,
                   skip_blocks: int = 0) -> int:
        """Starts loading the blocks of ``token_ids`` (whole blocks, usually the prefix
        :meth:`lookup` found) into engine blocks ``block_ids`` (one per block, in
        order), for every layer. The first ``skip_blocks`` blocks are the engine's
        already (its own prefix cache): they are not loaded, and their ids may be
        anything. Returns the number of blocks loaded. Gets go out as staging
        slots allow; :meth:`wait_for_layer_load` completes a layer."""
        with self._lock:
            self._check_open()
            keys, ids = self._blocks(token_ids, block_ids, exact=True, skip=skip_blocks)
            if req_id in self._loads and self._loads[req_id].outstanding:
                raise _bad(f"request {req_id!r} is loading already")
            ops = []
            for layer in range(self.num_layers):
                for off in range(skip_blocks, len(keys), self._chunk):
                    pos = list(range(off, min(off + self._chunk, len(keys))))
                    ops.append(_Op("get", req_id, layer, pos, [ids[p] for p in pos],
                                   [keys[p] for p in pos], seq=next(self._seq)))
            self._loads[req_id] = _Load(outstanding=len(ops), blocks=len(keys))
            if not ops:
                self._finished_loads.add(req_id)
            for op in ops:
                k = (op.layer, op.seq)
                i = bisect.bisect(self._pending_keys, k)
                self._pending_keys.insert(i, k)
                self._pending.insert(i, op)
            self._pump()
            return len(keys) - skip_blocks

    def _pump(self) -> None:
        """Submits pending loads, in layer order, while slots are free (never waits)."""
        while self._pending and len(self._free) >= len(self._pending[0].block_ids):
            self._submit_get(self._pop_pending())

    def _pop_pending(self) -> _Op:
        self._pending_keys.pop(0)
        return self._pending.pop(0)

    def _submit_get(self, op: _Op) -> None:
        op.slots = [self._free.popleft() for _ in op.block_ids]
        try:
            op.request = self.client.get(self.pool, [(k, op.layer, s)
                                                     for k, s in zip(op.keys, op.slots)],
                                         shared=self.shared)
        except BaseException:
            self._free.extend(op.slots)
            self._fail_load(op)
            raise
        self._inflight.append(op)

    def wait_for_layer_load(self, layer: int) -> None:
        """Returns once every load of ``layer`` started so far is in the engine's
        tensors (or reported failed). Blocks of later layers keep loading."""
        with self._lock:
            self._check_open()
            layer = self._check_layer(layer)
            while self._pending and self._pending[0].layer <= layer:
                op = self._pending[0]
                self._acquire(len(op.block_ids))
                self._submit_get(self._pop_pending())
            for op in [o for o in self._inflight if o.kind == "get" and o.layer <= layer]:
                if op in self._inflight:
                    self._retire(op)
            self._pump()

    def failed_blocks(self, req_id: Hashable) -> set[int]:
        """Engine block ids of ``req_id`` whose load failed (so far): recompute them."""
        with self._lock:
            ld = self._loads.get(req_id)
            return set(ld.failed.values()) if ld else set()

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Engine block ids whose load failed since the last call (vLLM's
        ``get_block_ids_with_load_errors``)."""
        with self._lock:
            out, self._load_errors = self._load_errors, set()
            return out

    # -- saves -----------------------------------------------------------------

    def save_layer(self, layer: int, req_id: Hashable, token_ids, block_ids: Sequence[int]) -> int:
        """Stores ``layer`` of the full blocks of ``token_ids`` from engine blocks
        ``block_ids``, asynchronously: the blocks are copied into staging now (the
        engine may overwrite them once this returns) and Put. A partial last
        block is not saved. Returns the number of blocks sent."""
        with self._lock:
            self._check_open()
            layer = self._check_layer(layer)
            keys, ids = self._blocks(token_ids, block_ids, exact=False)
            upto = self._saved_upto.setdefault(req_id, [0] * self.num_layers)
            start = max(upto[layer], self._loaded_prefix(req_id))
            sent = 0
            for off in range(start, len(keys), self._chunk):
                pos = list(range(off, min(off + self._chunk, len(keys))))
                op = _Op("put", req_id, layer, pos, [ids[p] for p in pos], [keys[p] for p in pos])
                self._acquire(len(pos))
                self._submit_put(op)
                sent += len(pos)
                upto[layer] = pos[-1] + 1
            return sent

    def _loaded_prefix(self, req_id: Hashable) -> int:
        # Blocks this core loaded for the request are cached; from the first
        # failed one on, the engine recomputed them, and they are saved again.
        ld = self._loads.get(req_id)
        if ld is None:
            return 0
        return min(ld.failed, default=ld.blocks)

    def _submit_put(self, op: _Op) -> None:
        op.slots = [self._free.popleft() for _ in op.block_ids]
        try:
            ids = torch.tensor(op.block_ids, dtype=torch.long, device=self.layout.device)
            blocks = self.layout.gather(op.layer, ids)
            self._staging.index_copy_(0, torch.tensor(op.slots, dtype=torch.long),
                                      blocks.to("cpu"))
            op.request = self.client.put(self.pool, [(k, op.layer, s)
                                                     for k, s in zip(op.keys, op.slots)],
                                         shared=self.shared)
        except BaseException:
            self._free.extend(op.slots)
            raise
        self._saves[op.req_id] = self._saves.get(op.req_id, 0) + 1
        self._inflight.append(op)

    def wait_for_save(self) -> None:
        """Returns once every Put submitted is done; raises :class:`kvdrive.ItemError`
        (after all are done) if blocks were not stored since the last call
        (no space, quota, copy error), with ``.failed`` as (req_id, layer,
        block id, status) tuples."""
        with self._lock:
            self._check_open()
            for op in [o for o in self._inflight if o.kind == "put"]:
                if op in self._inflight:
                    self._retire(op)
            self._raise_save_errors()

    def _raise_save_errors(self) -> None:
        if not self._save_errors:
            return
        failed, self._save_errors = self._save_errors, []
        st = [f[3] for f in failed]
        err = ItemError(-5, f"save: {len(failed)} blocks not stored (first: request "
                            f"{failed[0][0]!r} layer {failed[0][1]} block {failed[0][2]}: "
                            f"{failed[0][3].name})", st)
        err.failed = failed
        raise err

    # -- completions -----------------------------------------------------------

    def _acquire(self, n: int) -> None:
        """Frees staging slots until ``n`` are free, completing the oldest transfers."""
        while len(self._free) < n:
            self._retire(self._inflight[0])

    def _retire(self, op: _Op) -> None:
        """Waits for ``op``, copies a Get's blocks into the engine, frees its slots."""
        try:
            op.request.wait(self.timeout)
        except Error as e:
            if isinstance(e, TimeoutError):
                raise                   # still in flight: its slots stay taken
            self._inflight.remove(op)
            self._free.extend(op.slots)
            if op.kind == "get":
                self._fail_load(op)
            else:
                self._save_done(op, [ItemStatus.ERROR] * len(op.slots))
            raise
        self._inflight.remove(op)
        try:
            status = op.request.status
            if op.kind == "get":
                self._load_done(op, status)
            else:
                self._save_done(op, status)
        finally:
            self._free.extend(op.slots)

    def _load_done(self, op: _Op, status: list[ItemStatus]) -> None:
        ok = [i for i, s in enumerate(status) if s == ItemStatus.OK]
        if ok:
            slots = torch.tensor([op.slots[i] for i in ok], dtype=torch.long)
            ids = torch.tensor([op.block_ids[i] for i in ok], dtype=torch.long,
                               device=self.layout.device)
            self.layout.scatter(op.layer, ids, self._staging.index_select(0, slots))
        self.counters["loaded"] += len(ok)
        ld = self._loads[op.req_id]
        for i, s in enumerate(status):
            if s != ItemStatus.OK:
                self._mark_failed(ld, op.positions[i], op.block_ids[i])
        self._load_step(op.req_id, ld)

    def _fail_load(self, op: _Op) -> None:
        ld = self._loads[op.req_id]
        for p, b in zip(op.positions, op.block_ids):
            self._mark_failed(ld, p, b)
        self._load_step(op.req_id, ld)

    def _mark_failed(self, ld: _Load, position: int, block_id: int) -> None:
        self.counters["load_failed"] += 1
        ld.failed[position] = block_id
        self._load_errors.add(block_id)

    def _load_step(self, req_id: Hashable, ld: _Load) -> None:
        ld.outstanding -= 1
        if ld.outstanding == 0:
            self._finished_loads.add(req_id)

    def _save_done(self, op: _Op, status: list[ItemStatus]) -> None:
        for i, s in enumerate(status):
            if s == ItemStatus.OK:
                self.counters["saved"] += 1
            elif s == ItemStatus.EXISTS:
                self.counters["exists"] += 1
            else:
                self.counters["save_failed"] += 1
                self._save_errors.append((op.req_id, op.layer, op.block_ids[i], s))
        self._saves[op.req_id] -= 1
        if self._saves[op.req_id] == 0:
            del self._saves[op.req_id]
            self._finished_saves.add(op.req_id)

    def poll(self) -> None:
        """Completes the transfers that are done (never waits), and submits
        pending loads into the slots that frees."""
        with self._lock:
            self._check_open()
            for op in list(self._inflight):
                if op.request.done():
                    self._retire(op)
            self._pump()

    def get_finished(self) -> tuple[set, set]:
        """``(saved, loaded)``: request ids whose Puts, and whose loads, have all
        completed since the last call (polls first; never waits). A load that
        failed in part is finished too: see :meth:`failed_blocks`."""
        with self._lock:
            self.poll()
            saved = {r for r in self._finished_saves if r not in self._saves}
            loaded = {r for r in self._finished_loads
                      if r not in self._loads or not self._loads[r].outstanding}
            self._finished_saves -= saved
            self._finished_loads -= loaded
            return saved, loaded

    def busy(self, req_id: Hashable) -> bool:
        """True while a load or save of ``req_id`` is pending or in flight."""
        with self._lock:
            ld = self._loads.get(req_id)
            return bool(self._saves.get(req_id)) or bool(ld and ld.outstanding)

    def release(self, req_id: Hashable) -> None:
        """Forgets a finished request's bookkeeping (what it loaded and saved).
        Transfers still in flight for it complete as usual."""
        with self._lock:
            self._saved_upto.pop(req_id, None)
            ld = self._loads.get(req_id)
            if ld is not None and not ld.outstanding:
                del self._loads[req_id]

    # -- life ------------------------------------------------------------------

    def close(self) -> None:
        """Completes what is in flight (errors are dropped), then frees the staging
        pool. Pending loads are abandoned. The namespace and its blocks stay."""
        with self._lock:
            if self._closed:
                return
            self._pending.clear()
            self._pending_keys.clear()
            while self._inflight:
                op = self._inflight[0]
                try:
                    self._retire(op)
                except Error:
                    if op in self._inflight:    # a timeout: abandon it
                        self._inflight.remove(op)
            self._save_errors.clear()
            self._closed = True
            self._staging = None
            try:
                self.pool.close()
            except BufferError:
                pass            # a caller still holds a view: the pool unmaps with it

    def __enter__(self) -> "ConnectorCore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<ConnectorCore {self.namespace.name!r} {self.layout!r} "
                f"staging={self.staging_slots}>")

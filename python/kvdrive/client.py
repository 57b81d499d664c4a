# SPDX-License-Identifier: MIT
"""The client: a connection to kvdrived, its namespaces, pools and requests.

Everything here calls libkvclient; nothing speaks the protocol itself.

Threads: a :class:`Client` may be shared by threads (each call takes the
client's lock; a wait gives it up between slices of its timeout), but one
thread at a time is what it is fastest for. Pools are views of shared
memory: a Get's slots must not be read, nor a Put's written, until its
:class:`Request` is done.
"""
from __future__ import annotations

import enum
import os
import sys
import threading
import time
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from ._lib import ffi, lib
from .errors import Error, InvalidArgument, ItemError, TimeoutError, check, error

__all__ = [
    "DTYPES", "FINGERPRINT_MAX", "Client", "Namespace", "Pool", "Request", "Key", "ItemStatus",
    "prefix_keys", "chain_key", "private_key", "new_sequence", "block_bytes",
]

#: Element types a namespace may hold, by name (numpy/torch spelling) and code.
DTYPES = {"float16": 1, "bfloat16": 2, "float32": 3, "fp8": 4}

#: Bytes a namespace fingerprint may have (KVC_FINGERPRINT_MAX).
FINGERPRINT_MAX = 64

# Flags of kvc_put_submit_flags() and kvc_get_submit_flags() (KVC_PUT_*, KVC_GET_*).
_PUT_DURABLE = 1 << 0
_PUT_SHARED = 1 << 1
_GET_SHARED = 1 << 1

_WAIT_SLICE_MS = 50     # a wait gives the client's lock up this often


class ItemStatus(enum.IntEnum):
    """Outcome of one item of a Put, Get or Prefetch (enum kvc_item_status)."""
    OK = 0          #: Put: stored; Get: loaded; Prefetch: in host memory now
    EXISTS = 1      #: Put: already cached, nothing copied
    MISS = 2        #: Get/Prefetch: not cached; the slot is untouched
    NO_SPACE = 3    #: the host tier cannot hold the block
    ERROR = 4       #: the copy failed; nothing stored or loaded
    QUOTA = 5       #: the block does not fit its owner's quota


class Key(NamedTuple):
    """A 128-bit block key (struct kvc_key), opaque to the daemon."""
    hi: int
    lo: int

    @classmethod
    def of(cls, k: Any) -> "Key":
        """A Key from a Key, a (hi, lo) pair, a 128-bit int or 16 bytes (big-endian)."""
        if isinstance(k, Key):
            return k
        if isinstance(k, (bytes, bytearray)):
            if len(k) != 16:
                raise InvalidArgument(-22, f"a key is 16 bytes, not {len(k)}")
            k = int.from_bytes(k, "big")
        if isinstance(k, int):
            if not 0 <= k < 1 << 128:
                raise InvalidArgument(-22, "a key is an unsigned 128-bit number")
            return cls(k >> 64, k & ((1 << 64) - 1))
        hi, lo = k
        return cls(int(hi), int(lo))

    def __int__(self) -> int:
        return (self.hi << 64) | self.lo

    def __str__(self) -> str:
        return f"{self.hi:016x}{self.lo:016x}"


def _ckey(k: Key, out=None):
    out = out if out is not None else ffi.new("struct kvc_key *")
    out.hi, out.lo = k.hi, k.lo
    return out


def _ckeys(keys: Sequence[Key]):
    """keys as a C struct kvc_key array."""
    out = ffi.new("struct kvc_key[]", max(len(keys), 1))
    for i, k in enumerate(keys):
        out[i].hi, out[i].lo = k.hi, k.lo
    return out


def _tokens(tokens) -> Any:
    """token ids as a C uint32 array (kept alive by the caller)."""
    a = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if a.ndim != 1:
        raise InvalidArgument(-22, "token ids are a 1-D sequence")
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise InvalidArgument(-22, "token ids are 32-bit unsigned")
    return a.astype(np.uint32)


def prefix_keys(token_ids, block_tokens: int = 16) -> list[Key]:
    """Chained prefix keys of the full blocks of a token sequence.

    Key i covers tokens ``[i*block_tokens, (i+1)*block_tokens)`` and chains
    every key before it (kvc_key_prefix_chain()), so equal prompts give
    equal keys in every process, in C as in Python. A partial last block has
    no key.
    """
    toks = _tokens(token_ids)
    if block_tokens <= 0:
        raise InvalidArgument(-22, "block_tokens must be > 0")
    n = len(toks) // block_tokens
    out = ffi.new("struct kvc_key[]", max(n, 1))
    rc = lib.kvc_key_prefix_chain(ffi.from_buffer("uint32_t[]", toks), len(toks), block_tokens,
                                  out, n)
    check(rc, "prefix_keys")
    return [Key(out[i].hi, out[i].lo) for i in range(rc)]


def chain_key(parent: Key | None, tokens) -> Key:
    """The key of one block: its parent's key (None for the first) chained with its tokens."""
    toks = _tokens(tokens)
    out = ffi.new("struct kvc_key *")
    lib.kvc_key_chain(_ckey(Key.of(parent)) if parent is not None else ffi.NULL,
                      ffi.from_buffer("uint32_t[]", toks), len(toks), out)
    return Key(out.hi, out.lo)


def new_sequence() -> Key:
    """A fresh random sequence id, for :func:`private_key`."""
    out = ffi.new("struct kvc_key *")
    check(lib.kvc_key_sequence_new(out), "new_sequence")
    return Key(out.hi, out.lo)


def private_key(seq: Key, index: int) -> Key:
    """Key of block ``index`` of a private (unshared) sequence."""
    out = ffi.new("struct kvc_key *")
    lib.kvc_key_private(_ckey(Key.of(seq)), index, out)
    return Key(out.hi, out.lo)


def _geometry(layers, kv_heads, head_dim, dtype, block_tokens):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InvalidArgument(-22, f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    g = ffi.new("struct kvc_geometry *")
    for name, v in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                    ("dtype", dtype), ("block_tokens", block_tokens)):
        if not isinstance(v, (int, np.integer)) or not 0 < int(v) < 1 << 32:
            raise InvalidArgument(-22, f"{name} must be a positive 32-bit integer, not {v!r}")
        setattr(g, name, int(v))
    return g


def block_bytes(layers: int, kv_heads: int, head_dim: int, dtype: str | int = "float16",
                block_tokens: int = 16) -> int:
    """Bytes of one block (K and V of block_tokens tokens of one layer)."""
    b = lib.kvc_block_bytes(_geometry(layers, kv_heads, head_dim, dtype, block_tokens))
    if b == 0:
        raise InvalidArgument(-22, "invalid geometry")
    return int(b)


def _fingerprint(fp) -> bytes:
    """A namespace fingerprint as bytes: None is none (b""), a str is its UTF-8."""
    if fp is None:
        return b""
    if isinstance(fp, str):
        fp = fp.encode()
    elif isinstance(fp, (bytes, bytearray, memoryview)):
        fp = bytes(fp)
    else:
        raise InvalidArgument(-22, f"a fingerprint is bytes or str, not {type(fp).__name__}")
    if len(fp) > FINGERPRINT_MAX:
        raise InvalidArgument(-22, f"a fingerprint is at most {FINGERPRINT_MAX} bytes, not "
                                   f"{len(fp)} (hash what it names)")
    return fp


def _cstr(b) -> str:
    return ffi.string(b).decode(errors="replace")


def _struct_dict(s, ctype: str) -> dict:
    out = {}
    for name, field in ffi.typeof(ctype).fields:
        v = getattr(s, name)
        t = field.type
        if t.kind == "array" and t.item.cname == "char":
            out[name] = _cstr(v)
        elif t.kind == "array":
            out[name] = [v[i] for i in range(t.length)]
        elif t.kind == "struct":
            out[name] = _struct_dict(v, t.cname)
        elif t.kind == "pointer":
            continue
        else:
            out[name] = v
    return out


class _Closing:
    """``with`` support for the binding's objects: leaving the block closes."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Request:
    """An asynchronous Put, Get or Prefetch (one or more daemon requests).

    A batch longer than the daemon's ``max_items`` goes as several requests;
    this handle waits for them all. ``status`` holds one :class:`ItemStatus`
    per item once the request is done.
    """

    def __init__(self, client: "Client", kind: str, n: int):
        self._client = client
        self.kind = kind
        self.n = n
        self._ids: list[int] = []
        self._status = ffi.new("uint8_t[]", max(n, 1))
        self._keep: list[Any] = []      # the C arrays the library reads until completion
        self._result: int | None = None
        self._error: Error | None = None
        self._pending: list[int] = []
        self._done_items = 0

    def done(self) -> bool:
        """True once every part completed (reads replies, never blocks)."""
        if self._result is not None or self._error is not None:
            return True
        c = self._client
        with c._lock:
            check(lib.kvc_poll(c._c), "poll", c._c)
            return all(lib.kvc_done(c._c, i) for i in self._pending)

    def wait(self, timeout: float | None = None) -> int:
        """Waits for completion and returns the number of items done (stored,
        loaded, or staged). Raises :class:`TimeoutError` when ``timeout``
        seconds pass first (the request stays in flight: wait again), or the
        daemon's error if it refused the request."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return self._result
        deadline = None if timeout is None else time.monotonic() + timeout
        c = self._client
        while self._pending:
            slice_ms = _WAIT_SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                slice_ms = max(0, min(slice_ms, int(left * 1000)))
            with c._lock:
                c._check_open()
                rc = lib.kvc_wait(c._c, self._pending[0], slice_ms)
            if rc == -110:  # -ETIMEDOUT: still in flight
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(rc, f"{self.kind}: still in flight after {timeout} s")
                continue
            rid = self._pending.pop(0)
            if rc < 0:
                self._error = error(rc, self.kind, _cstr(lib.kvc_last_error(c._c)))
                self._drain()
                c._requests.pop(rid, None)
                raise self._error
            c._requests.pop(rid, None)
            self._done_items += rc
        self._result = self._done_items
        self._keep.clear()
        return self._result

    def _drain(self):
        # A part failed: the others still must be reaped (their replies
        # would otherwise stay in the library's table until disconnect).
        c = self._client
        for rid in self._pending:
            with c._lock:
                lib.kvc_wait(c._c, rid, -1)
            c._requests.pop(rid, None)
        self._pending.clear()

    @property
    def status(self) -> list[ItemStatus]:
        """Per-item outcome; valid once done (waits for it)."""
        self.wait()
        return [ItemStatus(self._status[i]) for i in range(self.n)]

    def check(self, allowed: Iterable[ItemStatus] = (ItemStatus.OK, ItemStatus.EXISTS)) -> "Request":
        """Waits, then raises :class:`ItemError` if an item's status is not in ``allowed``."""
        st = self.status
        bad = [i for i, s in enumerate(st) if s not in allowed]
        if bad:
            raise ItemError(-5, f"{self.kind}: {len(bad)} of {self.n} items failed "
                            f"(first: item {bad[0]} {st[bad[0]].name})", st)
        return self


class Pool(_Closing):
    """Device slots the daemon copies blocks into and out of.

    A memfd pool (:meth:`Namespace.pool`) lives in host memory: ``array``
    is a numpy ``uint8`` view of shape ``(slots, slot_bytes)`` and
    :meth:`tensor` a torch one. A CUDA pool (:meth:`Namespace.cuda_pool`)
    is GPU memory the caller owns. Views stay valid until :meth:`close`,
    which refuses (``BufferError``, as ``mmap`` does) while views exist.
    """

    def __init__(self, namespace: "Namespace", handle, cuda_tensor=None):
        self.namespace = namespace
        self.client = namespace.client
        self._p = handle
        self.id = int(lib.kvc_pool_id(handle))
        self.slots = int(lib.kvc_pool_slot_count(handle))
        self.slot_bytes = int(lib.kvc_pool_slot_bytes(handle))
        self._cuda = cuda_tensor
        self._buf = None
        self._array = None
        if cuda_tensor is None:
            self._buf = ffi.buffer(lib.kvc_pool_slot(handle, 0), self.slots * self.slot_bytes)
            self._array = np.frombuffer(self._buf, dtype=np.uint8).reshape(self.slots,
                                                                         self.slot_bytes)
            self._base_refs = sys.getrefcount(self._buf)

    @property
    def is_cuda(self) -> bool:
        return self._cuda is not None

    @property
    def array(self) -> np.ndarray:
        """numpy uint8 view ``(slots, slot_bytes)`` of a memfd pool."""
        if self._p is None:
            raise ValueError("pool is closed")
        if self._array is None:
            raise TypeError("a CUDA pool has no host view: use the tensor it was made from")
        return self._array

    def tensor(self):
        """A torch view of the pool: uint8 ``(slots, slot_bytes)`` on the CPU for a
        memfd pool, the caller's own tensor for a CUDA pool."""
        if self._cuda is not None:
            return self._cuda
        import torch
        return torch.frombuffer(self.array, dtype=torch.uint8).view(self.slots, self.slot_bytes)

    def slot(self, i: int) -> np.ndarray:
        """numpy uint8 view of slot i (memfd pools)."""
        if not 0 <= i < self.slots:
            raise IndexError(f"slot {i} of a {self.slots}-slot pool")
        return self.array[i]

    def close(self) -> None:
        """Unmaps the pool (the daemon drops its mapping at the session's end)."""
        if self._p is None:
            return
        if self._buf is not None:
            self._array = None
            if sys.getrefcount(self._buf) > self._base_refs - 1:
                # Restore the view and refuse, as mmap.close() does.
                self._array = np.frombuffer(self._buf, dtype=np.uint8).reshape(
                    self.slots, self.slot_bytes)
                raise BufferError("cannot close a pool while views of it exist")
            self._buf = None
        lib.kvc_pool_free(self._p)
        self._p = None
        self._cuda = None

    def __del__(self):
        # Unmap only when nothing can still read the memory.
        if getattr(self, "_p", None) is not None:
            try:
                self.close()
            except BufferError:
                pass

    def __repr__(self) -> str:
        kind = "cuda" if self.is_cuda else "memfd"
        return f"<kvdrive.Pool {kind} id={self.id} slots={self.slots} slot_bytes={self.slot_bytes}>"


class Namespace:
    """A registered namespace: one model geometry, its fingerprint (bytes, b"" for
    none), its blocks and its pools."""

    def __init__(self, client: "Client", name: str, ns_id: int, geometry: dict, block_bytes: int,
                 fingerprint: bytes = b""):
        self.client = client
        self.name = name
        self.fingerprint = fingerprint
        self.id = ns_id
        self.layers = geometry["layers"]
        self.kv_heads = geometry["kv_heads"]
        self.head_dim = geometry["head_dim"]
        self.dtype = geometry["dtype"]
        self.block_tokens = geometry["block_tokens"]
        self.block_bytes = block_bytes

    def pool(self, slots: int) -> Pool:
        """A memfd pool of ``slots`` slots of one block each."""
        c = self.client
        out = ffi.new("kvc_pool **")
        with c._lock:
            c._check_open()
            check(lib.kvc_pool_create(c._c, slots, self.block_bytes, out), "pool", c._c)
        return Pool(self, out[0])

    def cuda_pool(self, tensor) -> Pool:
        """Registers a contiguous CUDA tensor of ``slots * block_bytes`` bytes as a
        pool (CUDA IPC): the daemon copies straight into and out of it. The
        caller keeps the tensor alive while the client is connected."""
        import torch
        if not tensor.is_cuda or not tensor.is_contiguous():
            raise InvalidArgument(-22, "cuda_pool needs a contiguous CUDA tensor")
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes % self.block_bytes:
            raise InvalidArgument(-22, f"{nbytes} bytes is not a whole number of "
                                       f"{self.block_bytes}-byte blocks")
        storage = tensor.untyped_storage() if hasattr(tensor, "untyped_storage") \
            else tensor.storage()._untyped()
        # The caching allocator's block: its IPC handle and the storage's offset in it.
        _dev, handle, _size, st_off = storage._share_cuda_()[:4]
        off = st_off + tensor.storage_offset() * tensor.element_size()
        alloc = ffi.new("struct kvc_cuda_alloc *")
        ffi.memmove(alloc.ipc_handle, handle, min(len(handle), 64))
        alloc.dev_ptr = ffi.cast("void *", tensor.data_ptr() - off)
        alloc.offset = off
        alloc.slot_count = nbytes // self.block_bytes
        opts = ffi.new("struct kvc_cuda_pool_opts *")
        opts.size = ffi.sizeof("struct kvc_cuda_pool_opts")
        opts.device = tensor.device.index if tensor.device.index is not None \
            else torch.cuda.current_device()
        bus = torch.cuda.get_device_properties(opts.device)
        pci = getattr(bus, "pci_bus_id", None)
        if isinstance(pci, str):
            ffi.memmove(opts.pci_bus_id, pci.encode()[:31], min(len(pci), 31))
        out = ffi.new("kvc_pool **")
        c = self.client
        with c._lock:
            c._check_open()
            check(lib.kvc_pool_register_cuda(c._c, alloc, 1, self.block_bytes, opts, out),
                  "cuda_pool", c._c)
        return Pool(self, out[0], cuda_tensor=tensor)

    def __repr__(self) -> str:
        return (f"<kvdrive.Namespace {self.name!r} id={self.id} layers={self.layers} "
                f"kv_heads={self.kv_heads} head_dim={self.head_dim} "
                f"block_tokens={self.block_tokens} block_bytes={self.block_bytes}>")


class Client(_Closing):
    """A connection to kvdrived.

    ``socket_path`` None searches as libkvclient does: ``$KVDRIVE_SOCKET``,
    then the system socket, then the per-user one. A failed search raises
    :class:`kvdrive.ConnectionError` whose message lists each path tried.
    """

    def __init__(self, socket_path: str | os.PathLike | None = None, name: str | None = None):
        self._lock = threading.RLock()
        self._requests: dict[int, Request] = {}
        self._c = None
        report = ffi.new("char[]", 2048)
        opts = ffi.new("struct kvc_connect_opts *")
        opts.size = ffi.sizeof("struct kvc_connect_opts")
        path = ffi.new("char[]", os.fsencode(socket_path)) if socket_path is not None else ffi.NULL
        cname = ffi.new("char[]", (name or f"python:{os.getpid()}").encode())
        opts.path, opts.name = path, cname
        opts.report, opts.report_size = report, 2048
        out = ffi.new("kvc_client **")
        rc = lib.kvc_connect_opts(opts, out)
        if rc < 0:
            tried = _cstr(report).strip().replace("\n", "; ")
            raise error(rc, "connect", tried)
        self._c = out[0]
        self.version = _cstr(lib.kvc_daemon_version(self._c))
        self.max_items = int(lib.kvc_max_items(self._c))
        self.fd = int(lib.kvc_fd(self._c))

    # -- life --------------------------------------------------------------

    def _check_open(self):
        if self._c is None:
            raise ValueError("the client is closed")

    def close(self) -> None:
        """Disconnects; requests in flight are abandoned (the daemon releases them).
        Pools stay mapped until they are closed."""
        with self._lock:
            if self._c is not None:
                lib.kvc_disconnect(self._c)
                self._c = None

    def __del__(self):
        if getattr(self, "_c", None) is not None:
            self.close()

    @property
    def last_error(self) -> str:
        """The daemon's message for its last error on this connection."""
        with self._lock:
            self._check_open()
            return _cstr(lib.kvc_last_error(self._c))

    # -- namespaces --------------------------------------------------------

    def namespace(self, name: str, *, layers: int, kv_heads: int, head_dim: int,
                  dtype: str | int = "float16", block_tokens: int = 16,
                  fingerprint: bytes | str | None = None) -> Namespace:
        """Registers (or joins, same geometry and fingerprint) namespace ``name``.

        ``fingerprint`` (bytes, or a str taken as UTF-8; at most
        :data:`FINGERPRINT_MAX` bytes; None: none) says what computed the
        blocks: put in it a hash of the model's name and weights' revision,
        the KV dtype, the tensor-parallel rank and size, and anything else
        that changes the KV bytes. It is part of the namespace's identity (the
        same name with another fingerprint raises :class:`NamespaceError`),
        and the remote tier shares blocks (``put``/``get`` with ``shared``)
        only between machines whose fingerprints are equal.
        """
        g = _geometry(layers, kv_heads, head_dim, dtype, block_tokens)
        fp = _fingerprint(fingerprint)
        cname = ffi.new("char[]", name.encode())
        cfp = ffi.new("char[]", fp) if fp else ffi.NULL
        opts = ffi.new("struct kvc_ns_opts *")
        opts.size = ffi.sizeof("struct kvc_ns_opts")
        opts.name, opts.geometry = cname, g
        opts.fingerprint, opts.fingerprint_len = cfp, len(fp)
        ns = ffi.new("uint32_t *")
        bb = ffi.new("uint64_t *")
        with self._lock:
            self._check_open()
            check(lib.kvc_register_namespace_opts(self._c, opts, ns, bb),
                  f"namespace {name!r}", self._c)
        geo = {"layers": g.layers, "kv_heads": g.kv_heads, "head_dim": g.head_dim,
               "dtype": g.dtype, "block_tokens": g.block_tokens}
        return Namespace(self, name, int(ns[0]), geo, int(bb[0]), fp)

    def drop_namespace(self, ns: Namespace | int) -> int:
        """Drops a namespace and all its blocks (owner or admin); returns their count."""
        out = ffi.new("uint64_t *")
        with self._lock:
            self._check_open()
            check(lib.kvc_drop_namespace(self._c, _ns_id(ns), out), "drop_namespace", self._c)
        return int(out[0])

    # -- data --------------------------------------------------------------

    def _refs(self, items, with_slot: bool, pool: Pool | None = None):
        items = list(items)
        refs = ffi.new("struct kvc_block_ref[]", max(len(items), 1))
        for i, it in enumerate(items):
            if with_slot:
                key, layer, slot = it
                if pool is not None and not 0 <= slot < pool.slots:
                    raise InvalidArgument(-22, f"item {i}: slot {slot} of a "
                                               f"{pool.slots}-slot pool")
                refs[i].slot = slot
            else:
                key, layer = it[0], it[1]
            k = Key.of(key)
            refs[i].key.hi, refs[i].key.lo = k.hi, k.lo
            refs[i].layer = layer
        return refs, len(items)

    def _submit(self, kind: str, submit, refs, n: int) -> Request:
        req = Request(self, kind, n)
        req._keep.append(refs)
        step = max(self.max_items, 1)
        rid = ffi.new("uint64_t *")
        with self._lock:
            self._check_open()
            for off in range(0, n, step):
                m = min(step, n - off)
                rc = submit(refs + off, m, req._status + off, rid)
                if rc < 0:
                    err = error(rc, kind, _cstr(lib.kvc_last_error(self._c)))
                    req._drain()
                    raise err
                req._ids.append(int(rid[0]))
                req._pending.append(int(rid[0]))
                self._requests[int(rid[0])] = req
        if n == 0:
            req._result = 0
        return req

    def put(self, pool: Pool, items: Iterable[tuple], *, durable: bool = False,
            shared: bool = False) -> Request:
        """Stores blocks: items are ``(key, layer, slot)``, copied from the pool's
        slots into the cache. ``durable``: completes only once each block is on
        SSD (needs the SSD tier). ``shared``: the keys are prefix keys
        (:func:`prefix_keys`), so the daemon may also write the blocks through
        to its remote tier, for other machines with the same namespace
        fingerprint (never for private keys). Returns a :class:`Request`; do
        not write the slots until it is done."""
        refs, n = self._refs(items, True, pool)
        flags = (_PUT_DURABLE if durable else 0) | (_PUT_SHARED if shared else 0)
        ns = pool.namespace.id
        return self._submit("put", lambda r, m, st, rid: lib.kvc_put_submit_flags(
            self._c, ns, pool._p, r, m, flags, st, rid), refs, n)

    def get(self, pool: Pool, items: Iterable[tuple], *, shared: bool = False) -> Request:
        """Loads blocks: items are ``(key, layer, slot)``. A block not cached is
        ``ItemStatus.MISS`` and leaves its slot untouched. ``shared``: the keys
        are prefix keys, so a block missing here is asked of the remote tier.
        Do not read the slots until the request is done."""
        refs, n = self._refs(items, True, pool)
        flags = _GET_SHARED if shared else 0
        ns = pool.namespace.id
        return self._submit("get", lambda r, m, st, rid: lib.kvc_get_submit_flags(
            self._c, ns, pool._p, r, m, flags, st, rid), refs, n)

    def prefetch(self, ns: Namespace | int, items: Iterable[tuple], *, shared: bool = False) -> Request:
        """Brings blocks ``(key, layer)`` from SSD into host memory ahead of a Get,
        behind Gets in priority. ``shared``: the keys are prefix keys, so a block
        in no local tier is fetched from the remote tier too. Waiting is
        optional."""
        refs, n = self._refs(items, False)
        nid = _ns_id(ns)
        flags = _GET_SHARED if shared else 0
        return self._submit("prefetch", lambda r, m, st, rid: lib.kvc_prefetch_submit_flags(
            self._c, nid, r, m, flags, st, rid), refs, n)

    def lookup(self, ns: Namespace | int, keys: Sequence) -> list[int]:
        """For each layer, how many leading keys of the chain ``keys`` are cached."""
        layers = ns.layers if isinstance(ns, Namespace) else self._layers_of(ns)
        keys = [Key.of(k) for k in keys]
        out = [0] * layers
        step = max(self.max_items, 1)
        # A chain longer than one request goes in parts; a layer counts a part
        # only while every key before it was cached.
        for off in range(0, len(keys), step):
            part = keys[off:off + step]
            ck = _ckeys(part)
            pre = ffi.new("uint32_t[]", layers)
            with self._lock:
                self._check_open()
                check(lib.kvc_lookup(self._c, _ns_id(ns), ck, len(part), pre, layers),
                      "lookup", self._c)
            for l in range(layers):
                if out[l] == off:
                    out[l] += pre[l]
            if all(out[l] < off + len(part) for l in range(layers)):
                break
        return out

    def _layers_of(self, ns_id: int) -> int:
        for n in self.stats()["namespaces"]:
            if n["id"] == ns_id:
                return n["geometry"]["layers"]
        raise error(-(10000 + 7), "lookup")

    def delete(self, ns: Namespace | int, keys: Sequence, layer: int | None = None) -> int:
        """Deletes keys at one layer, or at every layer (``layer`` None); returns
        the number of blocks deleted."""
        keys = [Key.of(k) for k in keys]
        total = 0
        step = max(self.max_items, 1)
        for off in range(0, len(keys), step):
            part = keys[off:off + step]
            ck = _ckeys(part)
            with self._lock:
                self._check_open()
                total += check(lib.kvc_delete(self._c, _ns_id(ns), ck, len(part),
                                              -1 if layer is None else layer), "delete", self._c)
        return total

    def report_scores(self, ns: Namespace | int, scores: Iterable[tuple]) -> None:
        """Reports ``(key, layer, mass)`` attention masses (fire and forget)."""
        scores = list(scores)
        if not scores:
            return
        cs = ffi.new("struct kvc_block_score[]", len(scores))
        for i, (key, layer, mass) in enumerate(scores):
            k = Key.of(key)
            cs[i].key.hi, cs[i].key.lo = k.hi, k.lo
            cs[i].layer, cs[i].mass = layer, mass
        with self._lock:
            self._check_open()
            check(lib.kvc_report_scores(self._c, _ns_id(ns), cs, len(scores)),
                  "report_scores", self._c)

    def set_compute_hint(self, compute_us: int) -> None:
        """Tells the prefetch scheduler how long one layer computes (0: stop)."""
        with self._lock:
            self._check_open()
            check(lib.kvc_set_compute_hint(self._c, compute_us), "set_compute_hint")

    def set_poll_us(self, poll_us: int) -> None:
        """How long a wait for a reply polls before it sleeps (0: never; default 50)."""
        with self._lock:
            self._check_open()
            check(lib.kvc_set_poll_us(self._c, poll_us), "set_poll_us")

    @property
    def prefetch_depth(self) -> int | None:
        """The scheduler's latest prefetch depth (blocks per layer), None before the first."""
        with self._lock:
            self._check_open()
            rc = lib.kvc_prefetch_depth(self._c)
        return None if rc == -61 else check(rc, "prefetch_depth")  # -ENODATA

    def poll(self) -> int:
        """Reads the replies that have arrived; returns how many requests completed."""
        with self._lock:
            self._check_open()
            return check(lib.kvc_poll(self._c), "poll", self._c)

    def stats(self) -> dict:
        """The daemon's statistics (struct kvc_stats as a dict; tiers, namespaces and
        tenants as lists of dicts). ``remote`` is None without a remote tier, else
        struct kvc_remote_stats as a dict (``up`` a bool) with ``nodes`` a list
        of dicts (struct kvc_remote_node_stats)."""
        out = ffi.new("struct kvc_stats **")
        with self._lock:
            self._check_open()
            check(lib.kvc_stats_get(self._c, out), "stats", self._c)
        s = out[0]
        try:
            d = _struct_dict(s, "struct kvc_stats")
            d["tiers"] = [_struct_dict(s.tiers[i], "struct kvc_tier_stats")
                          for i in range(s.n_tiers)]
            d["namespaces"] = [_struct_dict(s.namespaces[i], "struct kvc_ns_stats")
                               for i in range(s.n_namespaces)]
            d["tenants"] = [_struct_dict(s.tenants[i], "struct kvc_tenant_stats")
                            for i in range(s.n_tenants)]
            d["remote"] = _remote_dict(s.remote)
        finally:
            lib.kvc_stats_free(s)
        return d

    def __repr__(self) -> str:
        state = "closed" if self._c is None else f"daemon {self.version}"
        return f"<kvdrive.Client {state}>"


def _remote_dict(r) -> dict | None:
    """struct kvc_remote_stats as a dict with its nodes, None when ``have`` is 0."""
    if not r.have:
        return None
    d = _struct_dict(r, "struct kvc_remote_stats")
    del d["have"]
    nodes = []
    for i in range(r.n_nodes):
        n = _struct_dict(r.nodes[i], "struct kvc_remote_node_stats")
        n["up"] = bool(n["up"])
        nodes.append(n)
    d["nodes"] = nodes
    return d


def _ns_id(ns: Namespace | int) -> int:
    return ns.id if isinstance(ns, Namespace) else int(ns)

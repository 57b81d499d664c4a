# SPDX-License-Identifier: MIT
"""A vLLM v1 KV connector on KVDrive (``KVConnectorBase_V1``).

Written against **vLLM 0.12.0** (the v1 connector API with the
``kv_cache_config`` constructor argument, ``get_block_ids_with_load_errors``
and ``CachedRequestData.resumed_req_ids``); the older two-argument
constructor and ``resumed_from_preemption`` list of 0.10/0.11 are accepted
too. vLLM is not imported until :data:`KVDriveConnector` is first used, so
this module imports without it. Use it with::

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KVDriveConnector",
        "kv_connector_module_path": "kvdrive.connector.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"kvdrive_socket": "/run/kvdrive/kvd.sock"}}'

Extra config keys: ``kvdrive_socket`` (default: libkvclient's search),
``kvdrive_staging_slots`` (64), ``kvdrive_model_id`` (the fingerprint's
model, default the served model), ``kvdrive_revision`` (default the model
config's revision), ``kvdrive_timeout`` (seconds, 60), ``kvdrive_shared``
(true: share blocks through the daemon's remote tier, false: keep them on
this machine).

The namespace fingerprint: each TP rank's namespace is registered with
:meth:`~kvdrive.connector.core.ModelFingerprint.fingerprint_bytes`, a
BLAKE2b-256 of what the connector knows of the model: the model id
(``kvdrive_model_id`` or the served model), the weights' revision, the KV
cache dtype (``cache_dtype``, else the model's dtype), the TP rank and size,
the pipeline-parallel size when above 1, the block layout version, and the
geometry (layers, kv heads, head size) with vLLM's block size. Its blocks
are prefix-chain keys, so every Put and Get of them says ``shared``: a
daemon with a remote tier shares them with every machine whose fingerprint
is the same, and with no other.

What it does: the scheduler side looks up each new request's prompt (all
but its last token: vLLM computes at least one) in KVDrive, in every TP
rank's namespace, and asks vLLM to allocate blocks for the whole blocks
found beyond its own prefix cache. The worker side loads those blocks layer
by layer (``wait_for_layer_load`` before each attention) and saves every
full block of the prompt as it is computed. Loads are synchronous within
the forward pass (``get_num_new_matched_tokens`` returns ``False`` for
async); a block evicted between the lookup and the load is reported through
``get_block_ids_with_load_errors`` and vLLM recomputes it. Saves are copied
into KVDrive's staging pool during ``save_kv_layer``, so the request's
blocks may be freed as soon as it finishes (``request_finished`` returns
``False``).

Only the FlashAttention KV layout (per layer ``[2, num_blocks, block_size,
kv_heads, head_dim]``) and the dtypes of :data:`~kvdrive.connector.core.TORCH_DTYPES`
are supported; others are refused at ``register_kv_caches``. The logic
lives in :class:`SchedulerState` and :class:`WorkerState`, which take plain
lists, so that it is tested without vLLM; the vLLM class only translates.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..errors import ItemError
from .core import ConnectorCore

__all__ = ["VLLM_VERSION", "ReqPlan", "SchedulerState", "WorkerState", "KVDriveConnector"]

#: The vLLM release this adapter was written against.
VLLM_VERSION = "0.12.0"

logger = logging.getLogger("kvdrive.connector.vllm")


@dataclass
class ReqPlan:
    """What the workers do for one request in one step (sent scheduler -> workers).

    ``token_ids`` are the request's tokens whose whole blocks are concerned,
    ``block_ids`` its engine block ids from block 0 on. ``load_tokens`` > 0:
    load blocks ``[skip_blocks, load_tokens // block_size)``. ``save``: save
    the full blocks of ``token_ids`` not saved yet.
    """
    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    load_tokens: int = 0
    skip_blocks: int = 0
    save: bool = False


@dataclass
class _Tracked:
    prompt: list[int]
    blocks: list[int]
    planned_tokens: int = 0         # tokens whose blocks a plan already asked to save


class SchedulerState:
    """The scheduler side, on plain data: lookups, what to load, what to save.

    ``lookup(token_ids) -> tokens`` is a :class:`~kvdrive.connector.core.PrefixIndex`'s.
    """

    def __init__(self, lookup: Callable[[Sequence[int]], int], block_size: int):
        self._lookup = lookup
        self.block_size = block_size
        self._matched: dict[str, tuple[int, int]] = {}   # req -> (local tokens, hit tokens)
        self._to_load: dict[str, tuple[int, int]] = {}   # req -> (local tokens, load tokens)
        self._reqs: dict[str, _Tracked] = {}

    def num_new_matched_tokens(self, req_id: str, prompt: Sequence[int],
                               num_computed_tokens: int) -> int:
        """Tokens KVDrive can supply beyond the ``num_computed_tokens`` vLLM has."""
        # The last prompt token is always computed: its logits are the output.
        hit = self._lookup(list(prompt)[:max(len(prompt) - 1, 0)])
        self._matched[req_id] = (num_computed_tokens, hit)
        return max(0, hit - num_computed_tokens)

    def after_alloc(self, req_id: str, num_external_tokens: int) -> None:
        """vLLM allocated blocks; ``num_external_tokens`` of them come from KVDrive."""
        local, _hit = self._matched.pop(req_id, (0, 0))
        if num_external_tokens > 0:
            self._to_load[req_id] = (local, local + num_external_tokens)

    def new_request(self, req_id: str, prompt: Sequence[int], block_ids: Sequence[int],
                    num_computed_tokens: int, num_scheduled_tokens: int) -> ReqPlan | None:
        """A request scheduled for the first time: its plan for this step."""
        t = _Tracked(list(prompt), list(block_ids))
        self._reqs[req_id] = t
        return self._plan(req_id, t, num_computed_tokens + num_scheduled_tokens)

    def cached_request(self, req_id: str, new_block_ids: Sequence[int] | None, resumed: bool,
                       num_computed_tokens: int, num_scheduled_tokens: int) -> ReqPlan | None:
        """A running (or resumed) request: its new blocks, and its plan for this step."""
        t = self._reqs.get(req_id)
        if t is None:
            return None
        if resumed:
            # A preempted request was given all its blocks anew.
            t.blocks = list(new_block_ids or [])
            t.planned_tokens = 0
        elif new_block_ids:
            t.blocks.extend(new_block_ids)
        return self._plan(req_id, t, num_computed_tokens + num_scheduled_tokens)

    def _plan(self, req_id: str, t: _Tracked, done_tokens: int) -> ReqPlan | None:
        bs = self.block_size
        plan = ReqPlan(req_id, t.prompt, t.blocks)
        load = self._to_load.pop(req_id, None)
        if load is not None:
            local, upto = load
            plan.load_tokens, plan.skip_blocks = upto, local // bs
            t.planned_tokens = max(t.planned_tokens, upto)
        savable = min(done_tokens, len(t.prompt)) // bs * bs
        if savable > t.planned_tokens:
            plan.save = True
            t.planned_tokens = savable
        plan.token_ids = t.prompt[:max(savable, plan.load_tokens)]
        return plan if plan.save or plan.load_tokens else None

    def finished(self, req_id: str) -> None:
        """The request finished: forget it."""
        self._reqs.pop(req_id, None)
        self._matched.pop(req_id, None)
        self._to_load.pop(req_id, None)


class WorkerState:
    """The worker side, on plain data: runs a step's plans on a :class:`ConnectorCore`."""

    def __init__(self, core: ConnectorCore, layer_names: Iterable[str]):
        self.core = core
        self.layers = {name: i for i, name in enumerate(layer_names)}
        if len(self.layers) != core.num_layers:
            raise ValueError(f"{len(self.layers)} layer names for {core.num_layers} layers")
        self.plans: list[ReqPlan] = []

    def start_load(self, plans: list[ReqPlan]) -> None:
        self.plans = plans
        for p in plans:
            if p.load_tokens:
                self.core.start_load(p.req_id, p.token_ids[:p.load_tokens],
                                     p.block_ids, skip_blocks=p.skip_blocks)

    def wait_for_layer_load(self, layer_name: str) -> None:
        self.core.wait_for_layer_load(self.layers[layer_name])

    def save_layer(self, layer_name: str) -> None:
        layer = self.layers[layer_name]
        for p in self.plans:
            if p.save:
                self.core.save_layer(layer, p.req_id, p.token_ids, p.block_ids)

    def wait_for_save(self) -> None:
        try:
            self.core.wait_for_save()
        except ItemError as e:
            # A block not stored is a later miss, not a failed request.
            logger.warning("kvdrive: %s", e)
        self.plans = []

    def finished(self, req_ids: Iterable[str]) -> None:
        for r in req_ids:
            self.core.release(r)


# -- the vLLM class, built on first use -------------------------------------------------


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _flag(name: str, v: Any) -> bool:
    """An extra-config boolean: JSON's true/false, or their spelling as a string."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no",
                                                     "off"):
        return v.strip().lower() in ("true", "1", "yes", "on")
    raise ValueError(f"{name}: true or false, not {v!r}")


def _fingerprints(vllm_config: Any, extra: Callable[[str, Any], Any], ranks: Sequence[int]):
    from .core import ModelFingerprint
    mc, cc, pc = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
    kv = cc.cache_dtype if cc.cache_dtype != "auto" else _torch_dtype_name(mc.dtype)
    model = extra("kvdrive_model_id", None) or mc.model
    revision = extra("kvdrive_revision", None) or getattr(mc, "revision", None) or ""
    pp = getattr(pc, "pipeline_parallel_size", 1)
    return [ModelFingerprint(model=model, dtype=kv, tp_rank=r,
                             tp_world=pc.tensor_parallel_size, revision=revision,
                             extra=f"pp={pp}" if pp > 1 else "") for r in ranks]


def _build():
    import torch
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1,
                                                                   KVConnectorMetadata,
                                                                   KVConnectorRole)

    import kvdrive

    from .core import KVLayout, PrefixIndex

    @dataclass
    class KVDriveConnectorMetadata(KVConnectorMetadata):
        requests: list[ReqPlan] = field(default_factory=list)

    base_takes_kv_cache_config = "kv_cache_config" in inspect.signature(
        KVConnectorBase_V1.__init__).parameters

    class KVDriveConnector(KVConnectorBase_V1):
        """vLLM's KV cache saved to and loaded from kvdrived (see the module's docs)."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            if base_takes_kv_cache_config:
                super().__init__(vllm_config=vllm_config, role=role,
                                 kv_cache_config=kv_cache_config)
            else:
                super().__init__(vllm_config=vllm_config, role=role)
            cfg = self._kv_transfer_config
            self._extra = lambda k, d: cfg.get_from_extra_config(k, d)
            self._block_size = vllm_config.cache_config.block_size
            self._client = kvdrive.Client(self._extra("kvdrive_socket", None),
                                          name=f"vllm:{role.name.lower()}")
            self._scheduler: SchedulerState | None = None
            self._worker: WorkerState | None = None
            if role == KVConnectorRole.SCHEDULER:
                mc, pc = vllm_config.model_config, vllm_config.parallel_config
                index = PrefixIndex(
                    self._client,
                    _fingerprints(vllm_config, self._extra, range(pc.tensor_parallel_size)),
                    layers=mc.get_num_layers(pc), kv_heads=mc.get_num_kv_heads(pc),
                    head_dim=mc.get_head_size(), block_tokens=self._block_size)
                self._scheduler = SchedulerState(index.lookup, self._block_size)

        # -- worker side --------------------------------------------------------------

        def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
            layout = KVLayout.vllm(list(kv_caches.values()), block_size=self._block_size)
            fp = _fingerprints(self._vllm_config, self._extra,
                               [get_tensor_model_parallel_rank()])[0]
            core = ConnectorCore(self._client, fp, layout,
                                 staging_slots=int(self._extra("kvdrive_staging_slots", 64)),
                                 timeout=float(self._extra("kvdrive_timeout", 60.0)),
                                 shared=_flag("kvdrive_shared",
                                              self._extra("kvdrive_shared", True)))
            self._worker = WorkerState(core, kv_caches.keys())
            logger.info("kvdrive: %r", core)

        def start_load_kv(self, forward_context, **kwargs) -> None:
            meta = self._get_connector_metadata()
            self._worker.start_load(list(meta.requests))

        def wait_for_layer_load(self, layer_name: str) -> None:
            if layer_name in self._worker.layers:
                self._worker.wait_for_layer_load(layer_name)

        def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata,
                          **kwargs) -> None:
            # kv_layer is the tensor registered for layer_name: the core has it.
            if layer_name in self._worker.layers:
                self._worker.save_layer(layer_name)

        def wait_for_save(self):
            self._worker.wait_for_save()

        def get_finished(self, finished_req_ids: set[str]):
            self._worker.finished(finished_req_ids)
            return None, None       # loads are synchronous, saves need no held blocks

        def get_block_ids_with_load_errors(self) -> set[int]:
            return self._worker.core.get_block_ids_with_load_errors()

        def shutdown(self):
            if self._worker is not None:
                self._worker.core.close()
            self._client.close()

        # -- scheduler side -----------------------------------------------------------

        def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
            n = self._scheduler.num_new_matched_tokens(
                request.request_id, request.prompt_token_ids or [], num_computed_tokens)
            return n, False

        def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
            self._scheduler.after_alloc(request.request_id, num_external_tokens)

        def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
            meta = KVDriveConnectorMetadata()
            sched = self._scheduler
            n_sched = scheduler_output.num_scheduled_tokens
            for r in scheduler_output.scheduled_new_reqs:
                p = sched.new_request(r.req_id, r.prompt_token_ids or [], r.block_ids[0],
                                      r.num_computed_tokens, n_sched.get(r.req_id, 0))
                if p is not None:
                    meta.requests.append(p)
            cached = scheduler_output.scheduled_cached_reqs
            resumed_ids = getattr(cached, "resumed_req_ids", None)
            resumed_list = getattr(cached, "resumed_from_preemption", None)
            for i, rid in enumerate(cached.req_ids):
                resumed = rid in resumed_ids if resumed_ids is not None else \
                    bool(resumed_list[i]) if resumed_list is not None else False
                new = cached.new_block_ids[i]
                p = sched.cached_request(rid, new[0] if new else None, resumed,
                                         cached.num_computed_tokens[i], n_sched.get(rid, 0))
                if p is not None:
                    meta.requests.append(p)
            return meta

        def request_finished(self, request, block_ids):
            self._scheduler.finished(request.request_id)
            return False, None

    # Pickle finds them by module and qualified name (the metadata travels
    # from the scheduler to the workers): the module's __getattr__ answers.
    for cls in (KVDriveConnector, KVDriveConnectorMetadata):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return KVDriveConnector, KVDriveConnectorMetadata


_built: dict[str, Any] = {}


def __getattr__(name: str):
    # PEP 562: vLLM's factory does getattr(module, "KVDriveConnector"); only
    # then is vLLM imported.
    if name in ("KVDriveConnector", "KVDriveConnectorMetadata"):
        if not _built:
            _built["KVDriveConnector"], _built["KVDriveConnectorMetadata"] = _build()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# SPDX-License-Identifier: MIT
"""A small Llama in torch: RMSNorm, RoPE, GQA, SwiGLU, seeded weights.

Everything runs on the CPU in float32. The model is the Llama
architecture at toy size; its weights are random but shaped so that
attention concentrates as it does in trained models (see
:class:`LlamaConfig` and ``docs/python.md``, "The reference engine"):

- an **attention sink**: the first token (``BOS``, id 0) carries a massive
  activation in one hidden channel, and every query has a component that
  matches the key that channel produces, as in trained Llamas where the
  first token takes a large share of most heads' attention;
- **heavy hitters**: a few vocabulary entries per layer are "salient" and
  their keys carry an outlier in one channel that the queries like, so a
  few tokens of a long prompt take most of the rest (H2O's observation);
- both signals sit in the **lowest-frequency RoPE channels**, which barely
  rotate over a few thousand positions, so they match at any distance, as
  the outlier key channels of trained models do;
- the residual stream keeps those channels (the attention and MLP outputs
  do not write them), so every layer sees them.

Keys are stored after RoPE, as vLLM stores them, so a cached block is
position-bound and needs no rotation when it is read again.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["LlamaConfig", "LlamaModel", "rms_norm", "rope_tables", "apply_rope", "attention",
           "lse_merge", "BOS"]

BOS = 0     #: token id of the attention sink; prompts start with it


@dataclass(frozen=True)
class LlamaConfig:
    """Geometry and weight shaping of :class:`LlamaModel`.

    The shaping knobs (``sink_logit``, ``salient_*``, ``qk_std``) set the
    attention logits a token gets: ``sink_logit`` for the first token,
    up to ``salient_logit`` for a salient one, and a Gaussian spread of
    ``qk_std`` for the others (``concentrate=False``: plain random weights,
    diffuse attention).
    """
    vocab_size: int = 512
    hidden_size: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5
    block_size: int = 16
    seed: int = 0
    concentrate: bool = True
    sink_logit: float = 8.0
    salient_share: float = 1 / 128
    salient_logit: float = 9.0
    qk_std: float = 1.0
    residual_std: float = 0.25

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads (GQA)")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")
        if self.concentrate and self.hidden_size < 2 + self.n_layers + 1:
            raise ValueError("hidden_size too small for the reserved channels")

    @property
    def group(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads

    def fingerprint(self) -> str:
        """32 hex digits naming these weights: everything that changes a token's K and V."""
        text = "\n".join(f"{k}={v!r}" for k, v in sorted(asdict(self).items()))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """cos and sin ``[T, head_dim]`` for Llama's rotate-half RoPE at ``positions``."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x [T, heads, head_dim]``: channel i pairs with i + head_dim/2."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_pos: torch.Tensor | None = None,
              k_pos: torch.Tensor | None = None):
    """Softmax attention with GQA, returning the output and its log-sum-exp.

    ``q [Tq, H, D]``, ``k, v [Tk, KVH, D]``; with ``q_pos`` and ``k_pos``
    (absolute positions) a query sees only keys at or before it. Returns
    ``out [Tq, H, D]`` and ``lse [Tq, H]`` (natural log of the softmax's
    denominator over the scaled logits: ``-inf`` where a query saw no key),
    the pair :func:`lse_merge` combines.
    """
    group = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(group, dim=1)
    vv = v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * (1.0 / math.sqrt(q.shape[-1]))
    if q_pos is not None:
        s = s.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                            # [H, Tq]
    p = torch.exp(s - lse[..., None].clamp(min=torch.finfo(s.dtype).min))
    p = torch.nan_to_num(p, nan=0.0)
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out, lse.transpose(0, 1).contiguous()


def lse_merge(out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor):
    """Exact merge of two partial attentions over disjoint key sets.

    ``out [..., H, D]`` and ``lse [..., H]`` as :func:`attention` returns
    them: the result is attention over the union,
    ``out = (e^lse1 out1 + e^lse2 out2) / (e^lse1 + e^lse2)`` and
    ``lse = log(e^lse1 + e^lse2)``, computed without overflow. A part with
    ``lse = -inf`` (no keys) contributes nothing.
    """
    lse = torch.logaddexp(lse1, lse2)
    # Both parts empty: keep -inf and a zero output rather than NaN.
    safe = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1 - safe)[..., None]
    w2 = torch.exp(lse2 - safe)[..., None]
    return out1 * w1 + out2 * w2, lse


class LlamaModel:
    """The decoder's weights and the pieces of its forward pass.

    An engine drives a layer as ``q, k, v = qkv(l, h, pos)``, attention of
    its own (paged, sparse, cached), then ``h = finish_layer(l, h, out)``;
    :meth:`forward` is the plain full recompute every other path is
    measured against.
    """

    def __init__(self, config: LlamaConfig | None = None):
        self.config = c = config or LlamaConfig()
        g = torch.Generator().manual_seed(c.seed)

        def randn(*shape, std=1.0):
            return torch.randn(*shape, generator=g) * std

        H, KVH, D, E = c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_size
        self.embed = randn(c.vocab_size, E)
        self.layers = []
        for _ in range(c.n_layers):
            self.layers.append({
                "attn_norm": 1.0 + randn(E, std=0.05),
                # q.k of two unrelated tokens: std qk_std after the 1/sqrt(D) scale
                "wq": randn(H * D, E, std=math.sqrt(c.qk_std) / math.sqrt(E)),
                "wk": randn(KVH * D, E, std=math.sqrt(c.qk_std) / math.sqrt(E)),
                "wv": randn(KVH * D, E, std=1 / math.sqrt(E)),
                "wo": randn(E, H * D, std=c.residual_std / math.sqrt(H * D)),
                "mlp_norm": 1.0 + randn(E, std=0.05),
                "w_gate": randn(c.intermediate_size, E, std=1 / math.sqrt(E)),
                "w_up": randn(c.intermediate_size, E, std=1 / math.sqrt(E)),
                "w_down": randn(E, c.intermediate_size,
                                std=c.residual_std / math.sqrt(c.intermediate_size)),
            })
        self.final_norm = 1.0 + randn(E, std=0.05)
        self.lm_head = randn(c.vocab_size, E, std=1 / math.sqrt(E))
        self.salient: list[torch.Tensor] = []
        if c.concentrate:
            self._concentrate(g)

    # Reserved hidden channels of the concentrated model.
    _MASSIVE, _BIAS, _SALIENT0 = 0, 1, 2

    def _concentrate(self, g: torch.Generator) -> None:
        c = self.config
        H, KVH, D = c.n_heads, c.n_kv_heads, c.head_dim
        emb = self.embed
        reserved = 2 + c.n_layers
        emb[:, :reserved] = 0
        # The massive activation: after RMSNorm the first token's hidden state
        # is nearly one-hot on this channel (trained Llamas show the same).
        emb[BOS] *= 0.1
        emb[BOS, self._MASSIVE] = math.sqrt(c.hidden_size) * 4
        emb[:, self._BIAS] = 1.0            # shared by every token: a query's "default" part
        emb[BOS, self._BIAS] = 0.0
        n_sal = max(1, round(c.salient_share * c.vocab_size))
        for l in range(c.n_layers):
            ids = torch.randperm(c.vocab_size - 1, generator=g)[:n_sal] + 1
            # graded strengths, so that some salient tokens matter more than others
            emb[ids, self._SALIENT0 + l] = 0.5 + 0.5 * torch.rand(n_sal, generator=g)
            self.salient.append(ids)
        # The signals ride on the lowest-frequency RoPE pairs (index half-1,
        # half-2): over 10^4 positions at theta 5e5 they turn by < 0.1 rad.
        half = D // 2
        sink_ch, sal_ch = half - 1, half - 2
        scale = math.sqrt(D)
        norm_bos = self._normed_channel(BOS, self._MASSIVE)
        for l, w in enumerate(self.layers):
            for wname in ("wo", "w_down"):
                w[wname][:reserved] = 0      # the residual stream keeps the reserved channels
            wq, wk = w["wq"].view(H, D, -1), w["wk"].view(KVH, D, -1)
            # Unrelated tokens must not light the signal channels up by chance.
            wq[:, [sink_ch, sal_ch, sink_ch + half, sal_ch + half], :] *= 0.1
            wk[:, [sink_ch, sal_ch, sink_ch + half, sal_ch + half], :] *= 0.1
            wq[:, :, :reserved] = 0
            wk[:, :, :reserved] = 0
            for h in range(H):
                # heads differ in how much they like the sink and the heavy hitters
                a = 0.6 + 0.8 * torch.rand(2, generator=g)
                wq[h, sink_ch, self._BIAS] = a[0] * math.sqrt(c.sink_logit * scale)
                wq[h, sal_ch, self._BIAS] = a[1] * math.sqrt(c.salient_logit * scale)
            for kh in range(KVH):
                wk[kh, sink_ch, self._MASSIVE] = math.sqrt(c.sink_logit * scale) / norm_bos
                wk[kh, sal_ch, self._SALIENT0 + l] = math.sqrt(c.salient_logit * scale)

    def _normed_channel(self, token: int, ch: int) -> float:
        x = self.embed[token]
        return float(x[ch] / torch.sqrt(x.pow(2).mean() + self.config.rms_eps))

    # -- the forward pass, in pieces -------------------------------------

    def embed_tokens(self, tokens) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` of token ids."""
        return self.embed[torch.as_tensor(tokens, dtype=torch.long)]

    def qkv(self, layer: int, h: torch.Tensor, positions: torch.Tensor):
        """The layer's query ``[T, H, D]`` and key and value ``[T, KVH, D]``, RoPE applied."""
        c, w = self.config, self.layers[layer]
        x = rms_norm(h, w["attn_norm"], c.rms_eps)
        T = x.shape[0]
        q = (x @ w["wq"].T).view(T, c.n_heads, c.head_dim)
        k = (x @ w["wk"].T).view(T, c.n_kv_heads, c.head_dim)
        v = (x @ w["wv"].T).view(T, c.n_kv_heads, c.head_dim)
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish_layer(self, layer: int, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: output projection, residual, SwiGLU MLP."""
        c, w = self.config, self.layers[layer]
        h = h + attn_out.reshape(h.shape[0], -1) @ w["wo"].T
        x = rms_norm(h, w["mlp_norm"], c.rms_eps)
        gate = torch.nn.functional.silu(x @ w["w_gate"].T)
        return h + (gate * (x @ w["w_up"].T)) @ w["w_down"].T

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[T, vocab]`` of final hidden states."""
        return rms_norm(h, self.final_norm, self.config.rms_eps) @ self.lm_head.T

    def forward(self, tokens, *, return_kv: bool = False):
        """Full recompute: logits ``[T, vocab]`` of every position, causal.

        With ``return_kv`` also each layer's ``(k, v)`` ``[T, KVH, D]``
        (keys after RoPE), what a paged cache or KVDrive stores.
        """
        h = self.embed_tokens(tokens)
        T = h.shape[0]
        pos = torch.arange(T)
        kvs = []
        for l in range(self.config.n_layers):
            q, k, v = self.qkv(l, h, pos)
            out = torch.empty_like(q)
            # Query chunks see only the keys up to their end: half the work of
            # one masked square, and a bounded score matrix.
            for a in range(0, T, self._CHUNK):
                b = min(T, a + self._CHUNK)
                out[a:b], _ = attention(q[a:b], k[:b], v[:b], q_pos=pos[a:b], k_pos=pos[:b])
            h = self.finish_layer(l, h, out)
            kvs.append((k, v))
        return (self.logits(h), kvs) if return_kv else self.logits(h)

    _CHUNK = 256

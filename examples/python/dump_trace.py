#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Dumps a decode trace (docs/trace-format.md) from the PyTorch reference model.

    PYTHONPATH=python /usr/bin/python3 examples/python/dump_trace.py --out /tmp/ref-trace

Builds kvdrive.reference's 4-layer Llama (RoPE, GQA 8 query heads on 2 kv
heads), prefills a seeded random prompt, decodes --steps tokens greedily
with full attention, and records the post-RoPE keys, values and queries
with kvdrive.trace.AttentionRecorder. No daemon is needed to dump it;
`kvdrive-bench decode --trace DIR` replays it against one, and
kvdrive.trace.read_trace reads it back.
"""
from __future__ import annotations

import argparse

import torch

from kvdrive.reference import BOS, DenseDecoder, LlamaModel
from kvdrive.trace import AttentionRecorder, reference_hooks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the trace directory (replaced if it holds a trace)")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="prompt length [1024]")
    p.add_argument("--steps", type=int, default=32, help="greedy decode steps [32]")
    p.add_argument("--seed", type=int, default=1, help="prompt seed [1]")
    args = p.parse_args()
    if args.prompt_tokens < 1 or args.steps < 1:
        p.error("--prompt-tokens and --steps must be at least 1")

    model = LlamaModel()
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(1, model.config.vocab_size, (args.prompt_tokens,), generator=g)
    prompt[0] = BOS

    recorder = AttentionRecorder(model.config.n_layers)
    generated = []
    with reference_hooks(model, recorder):
        logits, kvs = model.forward(prompt, return_kv=True)     # the prompt, prefilled at once
        decoder = DenseDecoder(model, kvs)
        token = int(logits[-1].argmax())
        for _ in range(args.steps):                              # one token per pass: a decode step
            generated.append(token)
            token = int(decoder.step(token).argmax())

    path = recorder.write(args.out, meta_extra=dict(
        model=f"kvdrive.reference.LlamaModel {model.config.fingerprint()}",
        prompt=f"random ids, seed {args.seed}, BOS first", generated=generated))
    k, _, q = recorder.arrays()
    print(f"{path}: k, v {list(k.shape)} (layers, kv_heads, tokens, head_dim), "
          f"q {list(q.shape)} (steps, layers, q_heads, head_dim)")


if __name__ == "__main__":
    main()

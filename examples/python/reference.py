#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The PyTorch reference engine against a running kvdrived.

    PYTHONPATH=python python3 examples/python/reference.py --socket /tmp/kvd.sock

1. Prefix reuse across processes: a child process prefills a prompt and
   saves its blocks; this process prefills the prompt plus a continuation,
   loads the cached prefix layer by layer, computes only the rest, and
   compares its logits with a full recompute.
2. Sparse decode through kvc_sparse: a long prompt's blocks go to the
   daemon, and each decode step attends only the top-k share of them that
   the policy chose (Quest scores), against full attention over the same
   tokens.

The model is a 4-layer Llama with seeded weights (kvdrive.reference); CPU
and float32. Its blocks live in the namespace its fingerprint names, so a
second run finds the first run's prompt cached.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import kvdrive
from kvdrive.reference import BOS, LlamaConfig, LlamaModel, PagedEngine, compare_sparse


def make_prompt(n: int, seed: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(1, vocab, (n,), generator=g)
    p[0] = BOS
    return p


def store(args, config: LlamaConfig) -> None:
    """The child: prefill the prompt with an engine of its own and save it."""
    model = LlamaModel(config)
    prompt = make_prompt(args.reuse_prompt, args.prompt_seed, config.vocab_size)
    with kvdrive.Client(args.socket) as c, \
            PagedEngine(model, client=c, num_blocks=prompt.numel() // 16 + 2) as e:
        r = e.prefill(prompt)
        print(json.dumps(dict(start=r.start, seconds=r.seconds, counters=e.core.counters)))


def prefix_reuse(args, config: LlamaConfig) -> None:
    model = LlamaModel(config)
    env = dict(os.environ)
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--role", "store",
                            *sys.argv[1:]], env=env, check=True, capture_output=True, text=True)
    a = json.loads(child.stdout.strip().splitlines()[-1])
    prompt = make_prompt(args.reuse_prompt, args.prompt_seed, config.vocab_size)
    tokens = torch.cat([prompt, make_prompt(args.continuation + 1, args.prompt_seed + 1,
                                            config.vocab_size)[1:]])
    with kvdrive.Client(args.socket) as c, \
            PagedEngine(model, client=c, num_blocks=tokens.numel() // 16 + 2) as b:
        r = b.prefill(tokens)
        counters = dict(b.core.counters)
    t0 = time.perf_counter()
    full = model.forward(tokens)
    t_full = time.perf_counter() - t0
    diff = float((r.logits - full[r.start:]).abs().max())
    ac = a["counters"]
    print(f"prefix reuse: process A prefilled {prompt.numel()} tokens in {a['seconds']:.2f} s: "
          f"computed {prompt.numel() - a['start']}, loaded {ac['loaded']} blocks (an earlier "
          f"run's), saved {ac['saved']}")
    print(f"  process B: {tokens.numel()} tokens, {r.cached_tokens} cached: loaded "
          f"{counters['loaded']} blocks, computed {tokens.numel() - r.start} tokens in "
          f"{r.seconds:.2f} s (full recompute {t_full:.2f} s); logits vs the recompute: "
          f"max |diff| {diff:.2e} over {r.logits.shape[0]} positions")


def sparse(args, config: LlamaConfig) -> None:
    model = LlamaModel(config)
    prompt = make_prompt(args.prompt_tokens, args.prompt_seed, config.vocab_size)
    t0 = time.perf_counter()
    logits, kvs = model.forward(prompt, return_kv=True)
    print(f"sparse decode: prefill of {prompt.numel()} tokens {time.perf_counter() - t0:.1f} s "
          f"(weights {'shaped' if config.concentrate else 'plain random'})")
    with kvdrive.Client(args.socket) as c:
        for topk in args.topk:
            r = compare_sparse(model, c, prompt, args.steps, kvs=kvs, first_logits=logits[-1],
                               topk=topk, score=args.score)
            print("  " + r.summary())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", help="kvdrived's socket (default: KVDRIVE_SOCKET, then the "
                                    "usual search)")
    p.add_argument("--prompt-tokens", type=int, default=4103, help="sparse decode's prompt")
    p.add_argument("--steps", type=int, default=64, help="sparse decode steps")
    p.add_argument("--topk", type=float, nargs="+", default=[0.1, 1.0],
                   help="shares of the stored blocks to attend (1.0: every block)")
    p.add_argument("--score", choices=("softmax", "quest"), default="softmax")
    p.add_argument("--reuse-prompt", type=int, default=1000, help="prefix reuse's prompt")
    p.add_argument("--continuation", type=int, default=200)
    p.add_argument("--prompt-seed", type=int, default=1)
    p.add_argument("--diffuse", action="store_true",
                   help="plain random weights (diffuse attention) instead of shaped ones")
    p.add_argument("--skip", choices=("reuse", "sparse"), action="append", default=[])
    p.add_argument("--role", choices=("main", "store"), default="main", help=argparse.SUPPRESS)
    args = p.parse_args()
    config = LlamaConfig(concentrate=not args.diffuse)
    try:
        if args.role == "store":
            store(args, config)
            return 0
        if "reuse" not in args.skip:
            prefix_reuse(args, config)
        if "sparse" not in args.skip:
            sparse(args, config)
    except kvdrive.Error as e:
        print(f"reference: {e} (code {e.code}); is kvdrived running (--socket)?",
              file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"reference: the storing process failed:\n{e.stderr}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""KVDrive from Python in thirty lines: two "processes" share a prompt's blocks.

Runs against the daemon the quickstart started (or --socket PATH):

    PYTHONPATH=python /usr/bin/python3 examples/python/hello.py
"""
import argparse
import os

import numpy as np
import torch

import kvdrive

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--socket", help="kvdrived's socket (default: the search libkvclient does)")
args = ap.parse_args()

geo = dict(layers=4, kv_heads=8, head_dim=128, dtype="float16", block_tokens=16)
prompt = np.arange(1000, 1000 + 16 * 8)         # 8 blocks of token ids
keys = kvdrive.prefix_keys(prompt, block_tokens=16)

# "Process A" prefills the prompt and stores each layer's blocks.
with kvdrive.Client(args.socket, name="hello-a") as a:
    ns = a.namespace(f"hello-{os.getuid()}", **geo)
    with ns.pool(slots=len(keys) * geo["layers"]) as pool:
        kv = pool.tensor().view(torch.float16)      # the slots as fp16 K/V
        kv.copy_(torch.randn(kv.shape, dtype=kv.dtype))
        want = pool.array.copy()
        items = [(k, layer, b * geo["layers"] + layer)
                 for b, k in enumerate(keys) for layer in range(geo["layers"])]
        stored = a.put(pool, items).wait()
        del kv
    print(f"A: stored {stored} blocks of {ns.block_bytes} bytes in {ns.name!r} "
          f"(daemon {a.version})")

# "Process B" has the same prompt and a continuation: it finds the prefix and loads it.
with kvdrive.Client(args.socket, name="hello-b") as b:
    ns = b.namespace(f"hello-{os.getuid()}", **geo)
    longer = np.concatenate([prompt, np.arange(40)])
    cached = b.lookup(ns, kvdrive.prefix_keys(longer, 16))
    print(f"B: cached prefix per layer: {cached} blocks of {len(longer) // 16}")
    with ns.pool(slots=len(keys) * geo["layers"]) as pool:
        got = b.get(pool, items)
        got.check()
        same = np.array_equal(pool.array, want)
    print(f"B: loaded {got.wait()} blocks, identical to A's: {same}")
    raise SystemExit(0 if same else 1)

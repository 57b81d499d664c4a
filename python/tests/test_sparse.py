# SPDX-License-Identifier: MIT
"""kvdrive.Sparse (kvc_sparse) through the binding, against a real daemon."""
from __future__ import annotations

import numpy as np
import pytest

import kvdrive
from kvdrive.sparse import pool_slots

GEO = dict(layers=2, kv_heads=1, head_dim=16, dtype="float32", block_tokens=16)
N_BLOCKS = 40


def stored_sequence(client, ns, tokens=None, **more):
    """A Sparse of budget 12 (both layers' 6 chosen blocks) over a pool, and one sequence whose N_BLOCKS blocks per
    layer are stored: block b of layer l holds the byte (7 * b + l) % 251."""
    opts = dict(budget=12, topk=0.15, topk_max=6, sink=1, local=1, **more)
    pool = ns.pool(slots=pool_slots(ns, **opts) + N_BLOCKS)
    sp = kvdrive.Sparse(client, ns, pool, slot0=N_BLOCKS, **opts)
    seq = sp.sequence(tokens)
    items = []
    for b in range(N_BLOCKS):
        pool.array[b] = (7 * b) % 251
        items.append((seq.key(b), 0, b))
    client.put(pool, items).check()
    for b in range(N_BLOCKS):
        pool.array[b] = (7 * b + 1) % 251
    client.put(pool, [(k, 1, s) for k, _, s in items]).check()
    seq.set_stored(N_BLOCKS)
    return pool, sp, seq


def test_a_layer_loads_the_chosen_blocks(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    pool, sp, seq = stored_sequence(client, ns)
    with sp, seq:
        assert seq.stored(0) == N_BLOCKS
        scores = np.zeros(N_BLOCKS, dtype=np.float32)
        scores[[5, 17, 30]] = [3.0, 2.0, 1.0]          # 15% of 40: 6 with the sink and local
        for layer in range(2):
            plan = seq.begin_layer(layer, scores)
            assert plan.layer == layer
            assert {0, 5, 17, 30, N_BLOCKS - 1} <= set(plan.blocks.tolist())
            assert plan.n_missing == plan.n - int(plan.resident.sum())
            seq.wait_layer(timeout=10)
            assert seq.resident().all()
            for b, s in zip(plan.blocks, plan.slots):
                assert (pool.array[s] == (7 * b + layer) % 251).all(), (b, s)
            seq.end_layer(np.full(plan.n, 1.0 / plan.n))
        # the same choice again: every block is resident now
        plan = seq.begin_layer(0, scores)
        assert plan.n_missing == 0 and plan.resident.all()
        seq.end_layer()
        st = sp.stats
        assert st["layers"] == 3 and st["hits"] >= plan.n and st["misses"] >= plan.n


def test_mass_target_takes_what_the_masses_need(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    pool, sp, seq = stored_sequence(client, ns, mass_target=0.9)
    with sp, seq:
        masses = np.full(N_BLOCKS, 0.1 / (N_BLOCKS - 1), dtype=np.float32)
        masses[7] = 0.9                                 # one block holds the target
        plan = seq.begin_layer(0, masses)
        assert set(plan.blocks.tolist()) == {0, 7, N_BLOCKS - 1}
        seq.wait_layer(timeout=10)
        seq.end_layer()
        plan = seq.begin_layer(1, np.full(N_BLOCKS, 1.0 / N_BLOCKS, dtype=np.float32))
        assert plan.n == 6                              # flat: the top-k caps it
        seq.wait_layer(timeout=10)
        seq.end_layer()


def test_prefix_keys_find_another_sequence_blocks(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    tokens = np.arange(N_BLOCKS * 16 + 3)
    pool, sp, seq = stored_sequence(client, ns, tokens)
    with sp:
        assert seq.key(0) == kvdrive.prefix_keys(tokens, 16)[0]
        seq.end()
        again = sp.sequence(tokens)
        assert again.cached() == N_BLOCKS
        again.end()


def test_tail_full_stores_the_tail(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    pool, sp, seq = stored_sequence(client, ns)
    with sp, seq:
        slot = seq.tail_slot(1)
        pool.array[slot] = 99
        seq.tail_full(1)
        assert seq.stored(1) == N_BLOCKS + 1 and seq.stored(0) == N_BLOCKS
        seq.tail_slot(1)                                # waits for the Put
        got = client.get(pool, [(seq.key(N_BLOCKS), 1, 0)])
        got.check()
        assert (pool.array[0] == 99).all()


def test_bad_calls_raise_and_change_nothing(client, ns_name):
    ns = client.namespace(ns_name, **GEO)
    pool, sp, seq = stored_sequence(client, ns)
    with sp, seq:
        with pytest.raises(kvdrive.InvalidArgument):
            seq.begin_layer(0, np.zeros(N_BLOCKS + 1))      # more scores than stored blocks
        with pytest.raises(kvdrive.InvalidArgument):
            seq.end_layer()                                 # no layer begun
        plan = seq.begin_layer(0, np.zeros(N_BLOCKS))
        with pytest.raises(kvdrive.BusyError):
            seq.begin_layer(1, np.zeros(N_BLOCKS))
        with pytest.raises(kvdrive.InvalidArgument):
            seq.end_layer(np.zeros(plan.n + 1))             # masses of another length
        seq.wait_layer(timeout=10)
        seq.end_layer()
    with pytest.raises(kvdrive.InvalidArgument):
        kvdrive.Sparse(client, ns, ns.pool(slots=4), budget=8)   # pool too small

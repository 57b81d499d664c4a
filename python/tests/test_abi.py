# SPDX-License-Identifier: MIT
"""The binding's struct declarations match the C headers, field by field.

CFFI's ABI mode lays structs out from python/kvdrive/_cdef.py, written by
hand. This test generates a C program from those declarations that prints
the offset and size of every field as the compiler sees them through
kvdrive/client.h and sparse.h, and compares: a field added, moved or
retyped in a header and not in _cdef.py fails here (a renamed one fails to
compile). The flags and limits client.py passes as plain numbers are
checked against the header's the same way.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from kvdrive._cdef import STRUCTS
from kvdrive._lib import ffi

ROOT = Path(__file__).resolve().parents[2]


def _run_c(tmp_path, body: list[str]) -> list[str]:
    """Compiles and runs a main() of ``body`` over the headers; its output lines."""
    cc = shlex.split(os.environ.get("KVDRIVE_CC", "cc"))
    include = os.environ.get("KVDRIVE_INCLUDE", str(ROOT / "libkvclient" / "include"))
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <kvdrive/client.h>",
             "#include <kvdrive/sparse.h>", "int main(void) {", *body, "return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    r = subprocess.run([*cc, "-std=c11", "-I", include, str(src), "-o", str(exe)],
                       capture_output=True, text=True)
    if r.returncode != 0 and "No such file" in r.stderr and not os.environ.get("KVDRIVE_CC"):
        pytest.skip(f"no C compiler: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    return [g for g in got if g]


def test_struct_layouts_match_the_headers(tmp_path):
    lines = []
    want = []
    for s in STRUCTS:
        t = ffi.typeof(f"struct {s}")
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
        want.append(f"{s} {ffi.sizeof(t)}")
        for name, field in t.fields:
            lines.append(f'printf("{s}.{name} %zu %zu\\n", offsetof(struct {s}, {name}), '
                         f'sizeof(((struct {s} *)0)->{name}));')
            want.append(f"{s}.{name} {field.offset} {ffi.sizeof(field.type)}")
    assert _run_c(tmp_path, lines) == want


def test_constants_match_the_headers(tmp_path):
    """The flags and limits client.py passes as numbers are the header's."""
    from kvdrive import client
    want = {
        "KVC_FINGERPRINT_MAX": client.FINGERPRINT_MAX,
        "KVC_PUT_DURABLE": client._PUT_DURABLE,
        "KVC_PUT_SHARED": client._PUT_SHARED,
        "KVC_GET_SHARED": client._GET_SHARED,
        "KVC_LOOP_BUCKETS": ffi.typeof("struct kvc_remote_node_stats").fields[-1][1].type.length,
    }
    got = _run_c(tmp_path, [f'printf("{k} %llu\\n", (unsigned long long)({k}));' for k in want])
    assert got == [f"{k} {v}" for k, v in want.items()]

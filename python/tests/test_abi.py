# SPDX-License-Identifier: MIT
"""The binding's struct declarations match the C headers, field by field.

CFFI's ABI mode lays structs out from python/kvdrive/_cdef.py, written by
hand. This test generates a C program from those declarations that prints
the offset and size of every field as the compiler sees them through
kvdrive/client.h and sparse.h, and compares: a field added, moved or
retyped in a header and not in _cdef.py fails here (a renamed one fails to
compile).
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


def test_struct_layouts_match_the_headers(tmp_path):
    cc = shlex.split(os.environ.get("KVDRIVE_CC", "cc"))
    include = os.environ.get("KVDRIVE_INCLUDE", str(ROOT / "libkvclient" / "include"))
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <kvdrive/client.h>",
             "#include <kvdrive/sparse.h>", "int main(void) {"]
    want = []
    for s in STRUCTS:
        t = ffi.typeof(f"struct {s}")
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
        want.append(f"{s} {ffi.sizeof(t)}")
        for name, field in t.fields:
            lines.append(f'printf("{s}.{name} %zu %zu\\n", offsetof(struct {s}, {name}), '
                         f'sizeof(((struct {s} *)0)->{name}));')
            want.append(f"{s}.{name} {field.offset} {ffi.sizeof(field.type)}")
    lines += ["return 0; }"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    r = subprocess.run([*cc, "-std=c11", "-I", include, str(src), "-o", str(exe)],
                       capture_output=True, text=True)
    if r.returncode != 0 and "No such file" in r.stderr and not os.environ.get("KVDRIVE_CC"):
        pytest.skip(f"no C compiler: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert [g for g in got if g] == want

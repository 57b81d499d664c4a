# SPDX-License-Identifier: MIT
"""Loads libkvclient through CFFI's ABI mode (no compiler at import time).

The library is looked for, in this order:
  1. $KVDRIVE_LIBRARY_DIR/libkvclient.so.0, when the variable is set (alone);
  2. the build tree of a checkout: build/libkvclient beside python/;
  3. the system's libkvclient.so.0 (meson install).
"""
from __future__ import annotations

import os
from pathlib import Path

import sys

try:
    import numpy  # noqa: F401  (the binding's arrays; checked here for one clear message)
    from cffi import FFI
except ImportError as e:
    raise ImportError(
        f"kvdrive needs cffi and numpy, which {sys.executable} lacks ({e}); use the "
        "distribution's interpreter, /usr/bin/python3, with python3-cffi and python3-numpy "
        "(tools/deps-debian.txt)") from e

from ._cdef import CDEF

SONAME = "libkvclient.so.0"

ffi = FFI()
ffi.cdef(CDEF)


def _candidates() -> list[str]:
    env = os.environ.get("KVDRIVE_LIBRARY_DIR")
    if env:
        return [str(Path(env) / SONAME)]
    here = Path(__file__).resolve().parent
    tree = here.parent.parent / "build" / "libkvclient" / SONAME
    return [str(tree), SONAME]


def _load():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            errors.append(f"{path}: no such file")
            continue
        try:
            return ffi.dlopen(path), path
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("kvdrive: cannot load libkvclient (build it with meson, or set "
                      "KVDRIVE_LIBRARY_DIR): " + "; ".join(errors))


lib, library_path = _load()

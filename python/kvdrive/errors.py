# SPDX-License-Identifier: MIT
"""Typed exceptions carrying libkvclient's error code.

Every failure of the C library is a negative number: ``-errno`` for system
errors, ``-KVC_E_*`` for errors the daemon reported. :func:`check` turns one
into the matching :class:`Error` subclass, whose ``.code`` is that negative
number and whose message is the library's description plus, for daemon
errors, the daemon's own words (``kvc_last_error()``).
"""
from __future__ import annotations

import builtins as _builtins
import errno as _errno

from ._lib import ffi, lib

E_BASE = 10000
E_MALFORMED = -(E_BASE + 1)
E_TRUNCATED = -(E_BASE + 2)
E_TOO_LARGE = -(E_BASE + 3)
E_UNKNOWN_TYPE = -(E_BASE + 4)
E_VERSION = -(E_BASE + 5)
E_NO_HELLO = -(E_BASE + 6)
E_NO_NAMESPACE = -(E_BASE + 7)
E_NO_POOL = -(E_BASE + 8)
E_OUT_OF_RANGE = -(E_BASE + 9)
E_GEOMETRY = -(E_BASE + 10)
E_NS_CONFLICT = -(E_BASE + 11)
E_LIMIT = -(E_BASE + 12)
E_BAD_ARG = -(E_BASE + 13)
E_NO_SPACE = -(E_BASE + 14)
E_INTERNAL = -(E_BASE + 15)
E_UNSUPPORTED = -(E_BASE + 16)
E_QUOTA = -(E_BASE + 17)
E_DENIED = -(E_BASE + 18)


class Error(Exception):
    """A libkvclient failure. ``code`` is its negative return value.

    ConnectionError, TimeoutError and PermissionError are also the builtin
    exceptions of those names, so ``except TimeoutError`` catches a wait's.
    """

    def __init__(self, code: int, message: str | None = None):
        self.code = code
        if message is None:
            message = strerror(code)
        super().__init__(message)


class ConnectionError(Error, _builtins.ConnectionError):
    """No daemon answered, or the connection broke (-ENOENT, -ECONNREFUSED, ...)."""


class TimeoutError(Error, _builtins.TimeoutError):
    """A wait ran out of time (-ETIMEDOUT); the request is still in flight."""


class BusyError(Error):
    """-EBUSY: every slot is pinned, or a layer is begun and not ended."""


class InvalidArgument(Error, ValueError):
    """-EINVAL or -KVC_E_BAD_ARG: the call was refused and changed nothing."""


class NamespaceError(Error):
    """The namespace is unknown, was dropped, or clashes (-KVC_E_NO_NAMESPACE, -KVC_E_NS_CONFLICT, -KVC_E_GEOMETRY)."""


class PermissionError(Error, _builtins.PermissionError):
    """-KVC_E_DENIED or -EACCES/-EPERM: not allowed for this uid."""


class QuotaError(Error):
    """-KVC_E_QUOTA, -KVC_E_LIMIT or -KVC_E_NO_SPACE: a quota or limit was reached."""


class ItemError(Error):
    """Some items of a Put or Get failed (see ``.status``)."""

    def __init__(self, code: int, message: str, status):
        super().__init__(code, message)
        self.status = status


_CLASSES = {
    -_errno.ENOENT: ConnectionError,
    -_errno.ECONNREFUSED: ConnectionError,
    -_errno.ECONNRESET: ConnectionError,
    -_errno.EPIPE: ConnectionError,
    -_errno.ENOTCONN: ConnectionError,
    -_errno.ETIMEDOUT: TimeoutError,
    -_errno.EBUSY: BusyError,
    -_errno.EINVAL: InvalidArgument,
    -_errno.E2BIG: InvalidArgument,
    -_errno.ERANGE: InvalidArgument,
    E_BAD_ARG: InvalidArgument,
    E_OUT_OF_RANGE: InvalidArgument,
    E_NO_NAMESPACE: NamespaceError,
    E_NS_CONFLICT: NamespaceError,
    E_GEOMETRY: NamespaceError,
    E_DENIED: PermissionError,
    -_errno.EACCES: PermissionError,
    -_errno.EPERM: PermissionError,
    E_QUOTA: QuotaError,
    E_LIMIT: QuotaError,
    E_NO_SPACE: QuotaError,
}


def strerror(code: int) -> str:
    """libkvclient's description of a negative return value."""
    return ffi.string(lib.kvc_strerror(code)).decode(errors="replace")


def error(code: int, what: str = "", detail: str = "") -> Error:
    """The exception for ``code``, its message prefixed with ``what``."""
    msg = strerror(code)
    if detail:
        msg = f"{msg} ({detail})"
    if what:
        msg = f"{what}: {msg}"
    return _CLASSES.get(code, Error)(code, msg)


def check(rc: int, what: str = "", client=None) -> int:
    """Returns rc when it is >= 0, else raises the matching :class:`Error`.

    With the client's handle, a daemon error carries the daemon's message.
    """
    if rc >= 0:
        return rc
    detail = ""
    if client is not None and rc <= -E_BASE:
        detail = ffi.string(lib.kvc_last_error(client)).decode(errors="replace")
    raise error(rc, what, detail)

# SPDX-License-Identifier: MIT
"""pytest fixtures: a real kvdrived per test module, on a temporary socket.

The daemon is the build tree's (``$KVDRIVED``, set by ``meson test``, else
``build/kvdrived/kvdrived``); it is started in the foreground with a
``NOTIFY_SOCKET`` of our own and used once it says ``READY=1``, and it is
stopped (SIGTERM, then SIGKILL) and its directory removed even when a test
fails.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def _exe(env: str, rel: str) -> str:
    path = os.environ.get(env) or str(ROOT / "build" / rel)
    if not os.access(path, os.X_OK):
        pytest.exit(f"{path} is not built (run meson/ninja, or set ${env})", returncode=1)
    return path


class Daemon:
    """A kvdrived process on a temporary socket."""

    def __init__(self, *args: str, ssd_bytes: str | None = None, host_bytes: str = "64M"):
        self.dir = tempfile.mkdtemp(prefix="kvd-py-", dir="/tmp")
        self.socket = os.path.join(self.dir, "kvd.sock")
        self.log = os.path.join(self.dir, "kvdrived.log")
        argv = [_exe("KVDRIVED", "kvdrived/kvdrived"), "--foreground", "--socket", self.socket,
                "--host-bytes", host_bytes, "--host-lock", "off", *args]
        if ssd_bytes:
            ssd = os.path.join(self.dir, "ssd")
            os.mkdir(ssd)
            argv += ["--ssd-dir", ssd, "--ssd-bytes", ssd_bytes]
        notify_path = os.path.join(self.dir, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env.pop("LISTEN_FDS", None)
        env.pop("LISTEN_PID", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(notify)
        except BaseException:
            self.stop()
            raise
        finally:
            notify.close()

    def _wait_ready(self, notify: socket.socket, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvdrived exited with {self.proc.returncode}:\n{self.output()}")
            notify.settimeout(0.2)
            try:
                msg = notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            if "READY=1" in msg.split("\n"):
                return
        raise RuntimeError(f"kvdrived not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        else:
            rc = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    rc = d.stop()
    assert rc == 0, f"kvdrived exited with {rc}:\n{d.output()}"


@pytest.fixture
def fresh_daemon():
    """A daemon of the test's own (for tests that break or fill it)."""
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    import kvdrive
    with kvdrive.Client(daemon.socket) as c:
        yield c


_ns_counter = [0]


@pytest.fixture
def ns_name(request):
    """A namespace name unique to the test."""
    _ns_counter[0] += 1
    return f"py-{request.node.name[:80]}-{_ns_counter[0]}".replace("[", "-").replace("]", "")


def python_env() -> dict:
    """The environment a child Python needs to import kvdrive as this one does."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "python")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env

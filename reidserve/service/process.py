"""Run ``reidserve serve`` in a subprocess on a free loopback port (tests, benchmarks, scripts).

    with ServerProcess(["--model", "m.onnx", "--data-dir", "g/"], tokens=["..."]) as srv:
        httpx.get(srv.url + "/readyz")

The server binds port 0 and reports the port it got through a file, so there is no race for a port. ``start``
waits until ``/readyz`` answers 200 and raises with the tail of the server's log if the process exits first.
``kill()`` sends SIGKILL (a crash), ``stop()`` SIGTERM (a graceful shutdown, which snapshots the index).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from .server import ServerError

__all__ = ["ServerError", "ServerProcess"]


class ServerProcess:
    """A ``python -m reidserve.cli serve`` subprocess (see the module docstring); :class:`ServerError` (its log
    tail in the message) when it does not come up."""

    def __init__(self, args: Sequence[str], *, tokens: Sequence[str] | None = None, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, log_path: str | Path | None = None) -> None:
        self.args = list(args)
        self.host = host
        self.env = dict(os.environ if env is None else env)
        if tokens is not None:
            self.env["REIDSERVE_TOKENS"] = ",".join(tokens)
        self._tmp = Path(tempfile.mkdtemp(prefix="reidserve-srv-"))
        self.log_path = Path(log_path) if log_path else self._tmp / "server.log"
        self.port_file = self._tmp / "port"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("the server is not started")
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 90.0) -> ServerProcess:
        self.port_file.unlink(missing_ok=True)
        self.port = None
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reidserve.cli", "serve", *self.args, "--host", self.host, "--port", "0",
                 "--port-file", str(self.port_file)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            if self.port is None and self.port_file.is_file():
                text = self.port_file.read_text().strip()
                self.port = int(text) if text else None
            if self.port is not None:
                try:
                    if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        self.kill()
        raise ServerError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the server if it runs and remove the temporary folder (port file, default log)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Start a service process for tests and stop it by its PID, never by name.

Every service the tests start goes through `ManagedProcess`: it runs in its own session (so a
stop reaches its children), logs to a file in its temp dir, waits for a readiness check, and is
stopped with SIGTERM, a grace period, then SIGKILL.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import port_for


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, from port_for's good ports (below the kernel's ephemeral range), and never
    one this process handed out before: two picks made before either service binds could otherwise
    give the same port (an OpenBao node's API and cluster ports)."""
    while True:
        port = port_for.select_random()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class PortClash(RuntimeError):
    """A service exited because its port was taken between the pick and its bind: the stages of
    `make test` run side by side, each picking free ports."""


def start_on_free_ports(start_once: Callable[[], None], repick: Callable[[], None] | None,
                        attempts: int = 3) -> None:
    """`start_once()`; when the service lost its port to another process (PortClash) and its ports
    were picked here (`repick` given), pick new ones and start again."""
    for attempt in range(1, attempts + 1):
        try:
            return start_once()
        except PortClash:
            if repick is None or attempt == attempts:
                raise
            repick()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: "ManagedProcess | None" = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.running:
            error = PortClash if proc.lost_its_port() else RuntimeError
            raise error(f"{what}: process exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - readiness probes fail in many ways until ready
            pass
        time.sleep(0.1)
    tail = proc.log_tail() if proc else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


class ManagedProcess:
    def __init__(self, argv: Sequence[str], log_path: Path, *, env: dict | None = None,
                 cwd: Path | None = None, user: str | None = None, stop_grace: float = 10.0):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_grace = stop_grace
        self.popen: subprocess.Popen | None = None
        self._log_start = 0

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._log_start = log.tell()  # what this start logged begins here (the log is appended to)
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, user=self.user, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the process group, wait `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(grace=0)

    def lost_its_port(self) -> bool:
        """This start's log says its listen address was in use (OpenBao, Redis, PostgreSQL and
        uvicorn all say "address already in use", in any case)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return b"address already in use" in log.read().lower()
        except FileNotFoundError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

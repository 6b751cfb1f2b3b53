"""The broker launcher of the process runtime (roles/broker/files/cullis-broker-launch.py).

Runbook section 1 "Broker is down", Exit 137 (OOM killed): with cullis_broker_memory_limit_mb
the broker runs in a memory cgroup and an overrun is SIGKILLed, as under compose's memory limit.
Section 3 "scoped token expired": a VAULT_TOKEN rewritten in .env reaches the broker at its next
start, because the launcher reads .env on every start.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.ansible import COLLECTIONS

LAUNCHER = COLLECTIONS / "ansible_collections/cullis/broker/roles/broker/files/cullis-broker-launch.py"


def launch(tmp_path: Path, code: str, *opts: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), "--env-file", str(tmp_path / ".env"), *opts, "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_env_file_values_become_real_process_environment(tmp_path):
    (tmp_path / ".env").write_text("# comment\nDATABASE_URL=postgresql+asyncpg://atn:pw@127.0.0.1:1/db\n"
                                   "VAULT_TOKEN='s.quoted'\n")
    out = launch(tmp_path, "import os; print(os.environ['DATABASE_URL'], os.environ['VAULT_TOKEN'])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["postgresql+asyncpg://atn:pw@127.0.0.1:1/db", "s.quoted"]
    assert "pw" not in out.stderr  # the launcher never prints .env values


def test_missing_env_file_fails_with_exit_1(tmp_path):
    out = launch(tmp_path, "print('never')")
    assert out.returncode == 1 and "cannot read" in out.stderr and "never" not in out.stdout


def test_memory_limit_stops_a_runaway_broker(tmp_path):
    (tmp_path / ".env").write_text("X=1\n")
    state = tmp_path / "cgroup"
    hog = "a = [bytearray(10 * 1024 * 1024) for _ in range(40)]; print('survived')"
    out = launch(tmp_path, hog, "--memory-limit-mb", "64", "--cgroup-name", f"cullis-test-{tmp_path.name}",
                 "--state-file", str(state))
    try:
        assert "survived" not in out.stdout
        if "via cgroup" not in out.stderr:
            assert "RLIMIT_AS" in out.stderr and "MemoryError" in out.stderr
            pytest.skip("no writable memory cgroup on this machine: the launcher fell back to RLIMIT_AS "
                        "(checked above); the cgroup OOM kill (SIGKILL, exit 137) is not exercised")
        assert out.returncode == -9, out.stderr  # OOM killer: SIGKILL, compose's "Exit 137"
    finally:
        if state.exists():
            Path(state.read_text().strip()).rmdir()

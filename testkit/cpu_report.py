"""Where a pytest session's CPU goes: per test and per test file, printed at the end of the session.

The suite is CPU-bound on its 2-core machine (every stage runs beside the others), so wall time
(`--durations`) says little about what costs: a test waiting on a container costs nothing, one
running playbooks costs both cores. Each test's CPU here is, from its setup to its teardown:
- this pytest process (RUSAGE_SELF);
- every child process it waited for (RUSAGE_CHILDREN: ansible-playbook with its workers and module
  processes, molecule, psql, docker CLI calls; a daemon counts when its fixture stops it), and the
  ansible-playbook runs testkit/playbook_server.py forked for it (as they end);
- for a test that uses the test kit's Docker engine (fixture `docker_engine`, directly or not):
  the CPU of the engine's containers (the test bed hosts run the split stage's modules), from the
  cgroup that parents them. Only for those: that cgroup is the machine's, and the stages of
  `make test` run side by side.
Measurement only: nothing here fails a test. Off with CULLIS_CPU_REPORT=0.
"""
from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import pytest

from testkit import playbook_server

# cgroup v1 (cpuacct, nanoseconds) or v2 (cpu.stat usage_usec) of dockerd's default cgroup parent
_CONTAINER_CPU = (Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage"), Path("/sys/fs/cgroup/docker/cpu.stat"))


def container_cpu_seconds() -> float:
    v1, v2 = _CONTAINER_CPU
    try:
        if v1.exists():
            return int(v1.read_text()) / 1e9
        if v2.exists():
            for line in v2.read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    except (OSError, ValueError):
        pass
    return 0.0


def cpu_seconds() -> tuple[float, float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the playbooks forked by testkit/playbook_server.py are not this process's children
    served = playbook_server.served_cpu_seconds
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime + served, container_cpu_seconds()


class CpuReport:
    def __init__(self) -> None:
        self.tests: dict[str, list[float]] = {}  # nodeid -> [pytest, children, containers] CPU s
        self.walls: dict[str, float] = {}
        self.t0 = time.monotonic()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        containers = "docker_engine" in getattr(item, "fixturenames", ())
        before, t0 = cpu_seconds(), time.monotonic()
        yield
        after = cpu_seconds()
        own = [a - b for a, b in zip(after, before)]
        if not containers:
            own[2] = 0.0
        self.tests[item.nodeid] = own
        self.walls[item.nodeid] = time.monotonic() - t0

    def pytest_terminal_summary(self, terminalreporter):
        cpu = {nodeid: sum(parts) for nodeid, parts in self.tests.items()}
        if not any(c >= 1 for c in cpu.values()):
            return  # nothing worth a table (static checks, unit tests)
        wall = time.monotonic() - self.t0
        totals = [sum(parts[i] for parts in self.tests.values()) for i in range(3)]
        by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for nodeid, c in cpu.items():
            entry = by_file[nodeid.split("::")[0]]
            entry[0] += c
            entry[1] += self.walls[nodeid]
            entry[2] += 1
        tr = terminalreporter
        tr.section("CPU (pytest + waited-for children + test kit containers)")
        tr.write_line(f"session: {sum(totals):.0f} CPU s in {wall:.0f} s (pytest {totals[0]:.0f}, children "
                      f"{totals[1]:.0f}, containers {totals[2]:.0f}); ansible-playbook runs forked warm by "
                      f"testkit/playbook_server.py: {playbook_server.served_runs}")
        tr.write_line("by file (CPU s, wall s, tests):")
        for path, (c, secs, n) in sorted(by_file.items(), key=lambda kv: -kv[1][0])[:40]:
            tr.write_line(f"  {c:7.0f} {secs:7.0f} {n:4d}  {path}")
        tr.write_line("by test (CPU s, wall s):")
        costly = sorted((n for n in cpu if cpu[n] >= 1), key=lambda n: -cpu[n])[:40]
        for nodeid in costly:
            tr.write_line(f"  {cpu[nodeid]:7.0f} {self.walls[nodeid]:7.0f}  {nodeid}")


def pytest_configure(config):
    if os.environ.get("CULLIS_CPU_REPORT", "1") != "0":
        config.pluginmanager.register(CpuReport(), "cullis_cpu_report")

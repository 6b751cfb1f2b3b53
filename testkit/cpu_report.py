"""Where a pytest session's CPU goes: per test and per test file, printed at the end of the session.

The suite is CPU-bound on its 2-core machine (every stage runs beside the others), so wall time
(`--durations`) says little about what costs: a test waiting on a container costs nothing, one
running playbooks costs both cores. Each test's CPU here is, from its setup to its teardown:
- this pytest process (RUSAGE_SELF);
- every child process it waited for (RUSAGE_CHILDREN: ansible-playbook with its workers and module
  processes, molecule, psql, docker CLI calls; a daemon counts when its fixture stops it);
- the containers of the test kit's Docker engines (the test bed hosts run the split stage's
  modules), from the cgroup that parents them, when that cgroup exists.
Measurement only: nothing here fails a test. Off with CULLIS_CPU_REPORT=0.
"""
from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import pytest

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
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, container_cpu_seconds()


class CpuReport:
    def __init__(self) -> None:
        self.tests: dict[str, tuple[float, float]] = {}  # nodeid -> (cpu s, wall s)
        self.start = cpu_seconds()
        self.t0 = time.monotonic()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        before, t0 = cpu_seconds(), time.monotonic()
        yield
        after = cpu_seconds()
        self.tests[item.nodeid] = (sum(after) - sum(before), time.monotonic() - t0)

    def pytest_terminal_summary(self, terminalreporter):
        if not any(cpu >= 1 for cpu, _ in self.tests.values()):
            return  # nothing worth a table (static checks, unit tests)
        end = cpu_seconds()
        wall = time.monotonic() - self.t0
        parts = [e - s for e, s in zip(end, self.start)]
        by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for nodeid, (cpu, secs) in self.tests.items():
            entry = by_file[nodeid.split("::")[0]]
            entry[0] += cpu
            entry[1] += secs
            entry[2] += 1
        tr = terminalreporter
        tr.section("CPU (pytest + waited-for children + test kit containers)")
        tr.write_line(f"session: {sum(parts):.0f} CPU s in {wall:.0f} s (pytest {parts[0]:.0f}, children {parts[1]:.0f}, "
                      f"containers {parts[2]:.0f})")
        tr.write_line("by file (CPU s, wall s, tests):")
        for path, (cpu, secs, n) in sorted(by_file.items(), key=lambda kv: -kv[1][0])[:40]:
            tr.write_line(f"  {cpu:7.0f} {secs:7.0f} {n:4d}  {path}")
        tr.write_line("by test (CPU s, wall s):")
        costly = [(n, v) for n, v in self.tests.items() if v[0] >= 1]
        for nodeid, (cpu, secs) in sorted(costly, key=lambda kv: -kv[1][0])[:40]:
            tr.write_line(f"  {cpu:7.0f} {secs:7.0f}  {nodeid}")


def pytest_configure(config):
    if os.environ.get("CULLIS_CPU_REPORT", "1") != "0":
        config.pluginmanager.register(CpuReport(), "cullis_cpu_report")

#!/usr/bin/env python3
"""Benchmark: sealed -> unsealed on one real OpenBao node, through cullis.broker.vault_unseal versus
the runbook's three `bao operator unseal <key>` commands.

    .venv/bin/python bench/bench_vault_unseal.py             # 5 rounds each
    .venv/bin/python bench/bench_vault_unseal.py --rounds 10

Each round seals the node (`bao operator seal`), then times until the node reports sealed=false:
  module   one `ansible-playbook` task running cullis.broker.vault_unseal with the keys file
           (wait_timeout=0, so like the CLI it stops at sealed=false), Ansible start-up included;
           the task's own duration (json callback) is printed too: inside an incident play the
           start-up is already paid;
  cli      three `bao operator unseal <key>` processes, as the runbook does by hand (the time to
           type or paste the keys is not counted);
  library  the module's own unseal logic called in-process (no Ansible), for reference.
Prints the median of each and the module/cli ratio. Run by hand; not part of the test suite.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "collections"))

from testkit.ansible import run_module  # noqa: E402
from testkit.services import OpenBaoServer  # noqa: E402
from ansible_collections.cullis.broker.plugins.module_utils._vault import (  # noqa: E402
    VaultClient, dedupe_keys, read_keys_file)
from ansible_collections.cullis.broker.plugins.modules.vault_unseal import NodeUnsealer  # noqa: E402


class _Mod:
    check_mode = False


TASK_SECONDS: list[float] = []


def _task_seconds(stdout: str) -> float:
    """Duration of the module task itself, from the json callback (Ansible start-up excluded)."""
    data = json.loads(stdout[stdout.find("{"):])
    dur = data["plays"][0]["tasks"][0]["task"]["duration"]
    start, end = (datetime.datetime.fromisoformat(dur[k].replace("Z", "+00:00")) for k in ("start", "end"))
    return (end - start).total_seconds()


def via_module(node: OpenBaoServer) -> float:
    t0 = time.perf_counter()
    res = run_module("vault_unseal", {"url": node.addr, "ca_cert": str(node.ca_path),
                                      "keys_file": str(node.keys_file), "wait_timeout": 0})
    elapsed = time.perf_counter() - t0
    assert res.rc == 0 and res.changed, res.result.get("msg")
    TASK_SECONDS.append(_task_seconds(res.stdout))
    return elapsed


def via_cli(node: OpenBaoServer) -> float:
    keys = node.unseal_keys[:3]
    t0 = time.perf_counter()
    for key in keys:
        node.cli("operator", "unseal", key)
    elapsed = time.perf_counter() - t0
    return elapsed


def via_library(node: OpenBaoServer) -> float:
    t0 = time.perf_counter()
    unique, _ = dedupe_keys(read_keys_file(str(node.keys_file)))
    client = VaultClient(node.addr, ca_cert=str(node.ca_path))
    rep, _ = NodeUnsealer(_Mod(), client, unique).run()
    elapsed = time.perf_counter() - t0
    assert rep["action"] == "unsealed", rep
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    node = OpenBaoServer().start().initialize()
    times: dict[str, list[float]] = {"module": [], "cli": [], "library": []}
    try:
        for _ in range(args.rounds):
            for name, fn in (("module", via_module), ("cli", via_cli), ("library", via_library)):
                node.seal()
                assert node.status()["sealed"] is True
                times[name].append(fn(node))
                assert node.status()["sealed"] is False, f"{name} left the node sealed"
    finally:
        node.cleanup()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"OpenBao single node, Shamir 5/3, {args.rounds} rounds each (median, sealed -> sealed=false)")
    print(f"  vault_unseal via ansible-playbook : {med['module']:.3f} s")
    print(f"    of which the task itself        : {statistics.median(TASK_SECONDS):.3f} s"
          "  (as a task inside an incident play, Ansible is already running)")
    print(f"  3 x bao operator unseal           : {med['cli']:.3f} s")
    print(f"  unseal logic in-process (no Ansible): {med['library']:.3f} s")
    print(f"ratio module / cli = {med['module'] / med['cli']:.2f}   "
          f"(task / cli = {statistics.median(TASK_SECONDS) / med['cli']:.2f}, "
          f"library / cli = {med['library'] / med['cli']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hands-off MTTR: fault injected -> verified healthy with nobody at the keyboard (Prometheus ->
Alertmanager -> ansible-rulebook -> the incident playbook, issue 17), per incident, next to the
intervals that bound it and to the same incident playbook run by hand.

    .venv/bin/python bench/mttr_handsoff.py                      # runs tests/e2e/test_monitoring.py
    .venv/bin/python bench/mttr_handsoff.py --handsoff F.json    # print a measurement already taken
    .venv/bin/python bench/mttr_handsoff.py --manual M.json      # add bench/mttr.py --json M.json

The hands-off numbers come from the end-to-end test itself (CULLIS_MTTR_OUT): a real fault on a
deployed stack, timed from the injection until the rulebook's remediation wrote the incident record
of a VERIFIED recovery (the incident playbook's verify step passed), split with the record's own
timeline into: detect (injection -> Alertmanager's webhook reached the rulebook; bounded below by
one scrape + one rule evaluation + `for` + group_wait), start (-> the incident playbook started:
ansible-runner, the rulebook's playbook, a queue when remediations of the stack wait for each
other) and playbook (the incident playbook itself, confirm -> recover -> verify: what an operator's
manual run of the same playbook costs, without the time to notice, be paged and open the runbook).
--manual adds bench/mttr.py's own manual playbook runs and bare restarts (a separate stack).
Run by hand (timings belong here, not in assertions).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INCIDENTS = ("broker_down", "redis_down", "postgres_down", "vault_sealed", "tls_expired")
FAULT = {"broker_down": "broker kill -9", "redis_down": "Redis stopped", "postgres_down": "Postgres stopped",
         "vault_sealed": "Vault sealed", "tls_expired": "cert 5 d left (< 14 d)"}


def measure() -> dict:
    out = Path(tempfile.mkdtemp(prefix="cullis-mttr-handsoff-")) / "mttr.json"
    env = dict(os.environ, CULLIS_MTTR_OUT=str(out))
    env.setdefault("EDA_VENV", str(REPO / ".venv-eda"))
    rc = subprocess.call([sys.executable, "-m", "pytest", "tests/e2e/test_monitoring.py", "-p", "no:cacheprovider",
                          "-q", "-s"], cwd=REPO, env=env)
    if not out.exists():
        sys.exit(f"the e2e run wrote no measurement (pytest rc {rc})")
    if rc != 0:
        print(f"WARNING: pytest rc {rc}: some incidents may be missing below", file=sys.stderr)
    return json.loads(out.read_text())


def _when(stamp: str) -> datetime.datetime:
    stamp = stamp.rstrip("Z").replace("+00:00", "")
    head, _, frac = stamp.partition(".")
    return datetime.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def split(row) -> tuple:
    """(total, detect, start, playbook) seconds of one hands-off incident."""
    if not isinstance(row, dict):  # an older measurement: the total only
        return row, None, None, None
    at = {e["event"].split(":")[0].split(" (")[0]: _when(e["at"]) for e in row["timeline"]}
    injected = _when(row["injected_at"])
    fired, started, verified = at.get("alert fired"), at.get("remediation started"), at.get("verified healthy")
    sec = lambda a, b: (b - a).total_seconds() if a and b else None  # noqa: E731
    return row["total_s"], sec(injected, fired), sec(fired, started), sec(started, verified)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handsoff", help="JSON written by tests/e2e/test_monitoring.py (CULLIS_MTTR_OUT)")
    ap.add_argument("--manual", help="JSON written by bench/mttr.py --json")
    args = ap.parse_args()
    data = json.loads(Path(args.handsoff).read_text()) if args.handsoff else measure()
    manual = json.loads(Path(args.manual).read_text()) if args.manual else {}
    iv = data["intervals"]
    print("\nintervals: " + ", ".join(f"{k.replace('cullis_monitoring_', '')}={v}" for k, v in sorted(iv.items())))
    print(f"{'incident':<14} {'fault':<23} {'hands-off':>9} {'detect':>7} {'start':>6} {'playbook':>9}"
          f" {'mttr.py playbook':>17} {'bare':>6}")
    print("-" * 98)
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    for name in INCIDENTS:
        total, detect, start, playbook = split(data["mttr_s"].get(name))
        m = manual.get(name) or {}
        print(f"{name:<14} {FAULT[name]:<23} {fmt(total):>9} {fmt(detect):>7} {fmt(start):>6} {fmt(playbook):>9}"
              f" {fmt(m.get('playbook_s')):>17} {fmt(m.get('bare_s')):>6}")
    print("seconds. hands-off = injection -> incident record of a verified recovery; detect = injection -> the "
          "rulebook got the alert; start = -> the incident playbook started; playbook = the incident playbook "
          "(= a manual run of it, minus noticing and reacting). mttr.py columns: --manual (bench/mttr.py --json).")


if __name__ == "__main__":
    main()

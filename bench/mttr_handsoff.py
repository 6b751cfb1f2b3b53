#!/usr/bin/env python3
"""Hands-off MTTR: fault injected -> verified healthy with nobody at the keyboard (Prometheus ->
Alertmanager -> ansible-rulebook -> the incident playbook, issue 17), per incident, next to the
intervals that bound it and to the same incident playbook run by hand.

    .venv/bin/python bench/mttr_handsoff.py                  # measures both, one after the other
    .venv/bin/python bench/mttr_handsoff.py --handsoff F.json --manual M.json   # print measurements taken
    .venv/bin/python bench/mttr_handsoff.py --no-manual      # the hands-off side only

Hands-off: tests/e2e/test_monitoring.py (CULLIS_MTTR_OUT=F.json). By hand: bench/mttr.py --json M.json
--only <the incidents below> (the same faults on a throw-away stack of its own; the incident
playbook run by hand, then the bare restart an operator would type).

The hands-off numbers come from the end-to-end test itself (CULLIS_MTTR_OUT): a real fault on a
deployed stack, timed from the injection until the rulebook's remediation wrote the incident record
of a VERIFIED recovery (the incident playbook's verify step passed), split with the record's own
timeline into: detect (injection -> Alertmanager's webhook reached the rulebook; bounded below by
one scrape + one rule evaluation + `for` + group_wait), start (-> the incident playbook started:
ansible-runner, the rulebook's playbook, a queue when remediations of the stack wait for each
other) and playbook (the incident playbook itself, confirm -> recover -> verify: what an operator's
manual run of the same playbook costs, without the time to notice, be paged and open the runbook).
The manual columns are bench/mttr.py's: the incident playbook run by hand (fault injected -> the
playbook exited 0 = verified), and the bare restart by hand (-> /readyz all ok, which verifies
less); both start the clock at the keyboard, so a person's time to notice, be paged and open the
runbook comes on top of them, while hands-off starts it at the fault. Run by hand (timings belong
here, not in assertions).
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
         "vault_sealed": "Vault sealed", "tls_expired": "cert 10 d left (< 14 d)"}


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


def measure_manual() -> dict:
    out = Path(tempfile.mkdtemp(prefix="cullis-mttr-manual-")) / "manual.json"
    rc = subprocess.call([sys.executable, str(REPO / "bench/mttr.py"), "--json", str(out), "--only", *INCIDENTS],
                         cwd=REPO)
    if not out.exists():
        sys.exit(f"bench/mttr.py wrote no measurement (rc {rc})")
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
    ap.add_argument("--manual", help="JSON written by bench/mttr.py --json (else measured, unless --no-manual)")
    ap.add_argument("--no-manual", action="store_true", help="leave the manual columns empty")
    args = ap.parse_args()
    data = json.loads(Path(args.handsoff).read_text()) if args.handsoff else measure()
    manual = json.loads(Path(args.manual).read_text()) if args.manual else ({} if args.no_manual else measure_manual())
    iv = data["intervals"]
    print("\nintervals: " + ", ".join(f"{k.replace('cullis_monitoring_', '')}={v}" for k, v in sorted(iv.items())))
    print(f"{'':<14} {'':<23} {'--------- hands-off ---------':>36}  {'---- by hand ----':>17}")
    print(f"{'incident':<14} {'fault':<23} {'total':>9} {'detect':>7} {'start':>6} {'playbook':>9}"
          f"  {'playbook':>9} {'bare':>7}")
    print("-" * 90)
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    for name in INCIDENTS:
        total, detect, start, playbook = split(data["mttr_s"].get(name))
        m = manual.get(name) or {}
        print(f"{name:<14} {FAULT[name]:<23} {fmt(total):>9} {fmt(detect):>7} {fmt(start):>6} {fmt(playbook):>9}"
              f"  {fmt(m.get('playbook_s')):>9} {fmt(m.get('bare_s')):>7}")
    print("seconds. hands-off: total = injection -> incident record of a verified recovery; detect = injection ->"
          " the rulebook got the alert; start = -> the incident playbook started; playbook = the incident playbook"
          " run by the rulebook. by hand (bench/mttr.py): playbook = the incident playbook run at the keyboard ->"
          " verified; bare = the bare restart -> /readyz ok; add the time a person needs to notice and react.")
    notes = {name: (manual.get(name) or {}).get("note") for name in INCIDENTS}
    for name, note in notes.items():
        if note and note != "verified":
            print(f"  {name}: {note}")


if __name__ == "__main__":
    main()

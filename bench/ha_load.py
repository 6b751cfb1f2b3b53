#!/usr/bin/env python3
"""Benchmark: failed client requests while the brokers of a multi-broker stack are restarted.

    .venv/bin/python bench/ha_load.py --inventory INV --url https://PROXY:8443 --ca CA.pem \
        --redis-url redis://:PASS@REDIS:6379/0 --identity-dir IDS [--agents a00,a01] [--duration 90]

IDS is an org identity directory (cullis.broker.org_onboard) with the agents named. For each
scenario a bounded load (testkit/loadgen.py: logins and authenticated calls through the proxy,
within the broker's per-address limits) runs while
  rolling  playbooks/rolling_restart.yml restarts the brokers one at a time behind nginx;
  naive    every broker is restarted at once (cullis.broker.stack_service state=restarted on the
           whole cullis_broker group), as a plain "restart the service" would;
and the failed requests are counted. Prints one JSON object per scenario. Targets must be loopback
or test-bed (private) addresses. Run by hand against a deployed multi-broker stack (the split test
bed, or your staging); `run_scenario()` is meant to be shared with an end-to-end test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.ansible import run_playbook  # noqa: E402
from testkit.broker_orgs import wait_for_rate_budget  # noqa: E402
from testkit.loadgen import LoadGen, budget  # noqa: E402

CALLS_PER_MINUTE = 60  # broker-api.md: federation.agents per client address
NAIVE_PLAYBOOK = """\
- name: Naive restart of every broker at once (bench/ha_load.py)
  hosts: cullis_broker
  gather_facts: false
  tasks:
    - name: Restart the broker
      cullis.broker.stack_service:
        name: broker
        state: restarted
        stack_dir: "{{ cullis_stack_dir }}"
        runtime: "{{ cullis_runtime }}"
    - name: Wait for its /readyz
      ansible.builtin.uri:
        url: "http://{{ cullis_address }}:{{ cullis_broker_port | default(8000) }}/readyz"
      register: ready
      until: ready.status == 200
      retries: 60
      delay: 1
"""


def sized_load(url, ca, redis_url, identity_dir, agents, duration, auth_limit=10) -> LoadGen:
    """A load that fits in the broker's per-address limits over `duration` (waits for the budget first)."""
    calls = int(duration * CALLS_PER_MINUTE / 60 * 0.6)
    logins = max(2, int(duration * auth_limit / 60 / 2 * 0.6))
    need = budget(calls, logins)
    wait_for_rate_budget(redis_url, {"auth.token": (auth_limit, min(need["auth.token"], auth_limit)),
                                     "federation.agents": (CALLS_PER_MINUTE,
                                                           min(need["federation.agents"], CALLS_PER_MINUTE))})
    return LoadGen(url, identity_dir, agents, ca, calls=calls, logins=logins, duration=duration)


def run_scenario(scenario, inventory, gen: LoadGen, workdir: Path, warmup=4.0, tail=4.0) -> dict:
    """Run `scenario` ("rolling" | "naive") under the load `gen`; returns counts and the playbook result."""
    if scenario == "rolling":
        playbook = REPO / "playbooks" / "rolling_restart.yml"
    elif scenario == "naive":
        playbook = Path(workdir) / "naive_restart.yml"
        playbook.write_text(NAIVE_PLAYBOOK)
    else:
        raise ValueError(scenario)
    gen.start()
    time.sleep(warmup)
    t0 = time.monotonic()
    res = run_playbook(playbook, inventory=inventory)
    action_s = time.monotonic() - t0
    time.sleep(tail)
    gen.stop()
    report = gen.join()
    by_status: dict[str, int] = {}
    for f in report.failures:
        by_status[str(f.status)] = by_status.get(str(f.status), 0) + 1
    return {"scenario": scenario, "rc": res.rc, "restart_seconds": round(action_s, 1), "sent": report.sent,
            "failed": report.failed, "failed_by_status": by_status, "load": report.summary(), "result": res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inventory", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--identity-dir", required=True)
    ap.add_argument("--agents", default="a00,a01")
    ap.add_argument("--auth-limit", type=int, default=10)
    ap.add_argument("--duration", type=float, default=90)
    ap.add_argument("--scenarios", default="rolling,naive")
    args = ap.parse_args()
    workdir = Path(args.identity_dir).parent
    for scenario in args.scenarios.split(","):
        gen = sized_load(args.url, args.ca, args.redis_url, args.identity_dir, args.agents.split(","),
                         args.duration, args.auth_limit)
        out = run_scenario(scenario, args.inventory, gen, workdir)
        out.pop("result")
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

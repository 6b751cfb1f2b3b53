#!/usr/bin/env python3
"""Benchmark: failed client requests while the brokers of a multi-broker stack are restarted.

    .venv/bin/python bench/ha_load.py --inventory INV --url https://PROXY:8443 --ca CA.pem \
        --redis-url redis://:PASS@REDIS:6379/0 --identity-dir IDS [--agents a00,a01] [--duration 90] \
        [--scenarios rolling,naive,failover --patroni-members pg1=ADDR,pg2=ADDR]

IDS is an org identity directory (cullis.broker.org_onboard) with the agents named. For each
scenario a bounded load (testkit/loadgen.py: logins and authenticated calls through the proxy,
within the broker's per-address limits) runs while
  rolling  playbooks/rolling_restart.yml restarts the brokers one at a time behind nginx;
  naive    every broker is restarted at once (cullis.broker.stack_service state=restarted on the
           whole cullis_broker group), as a plain "restart the service" would;
  failover the PostgreSQL primary of a Patroni cluster (cullis_postgres_ha: patroni) loses its
           postmaster to SIGKILL (on the member whose Patroni REST API answers GET /primary 200);
           Patroni promotes the synchronous standby and the brokers' pools find it; timed: until
           another member leads, and until /readyz through the proxy is 200 again;
and the failed requests are counted. Prints one JSON object per scenario. Targets must be loopback
or test-bed (private) addresses. Run by hand against a deployed multi-broker stack (the split test
bed, or your staging); `run_scenario()` is meant to be shared with an end-to-end test.
"""
from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
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


KILL_PRIMARY_PLAYBOOK = """\
- name: Kill the Patroni primary's PostgreSQL (bench/ha_load.py failover)
  hosts: cullis_postgres
  gather_facts: false
  tasks:
    - name: Is this member the primary (Patroni REST API)
      ansible.builtin.uri:
        url: "http://{{ cullis_address }}:{{ cullis_patroni_rest_port | default(8008) }}/primary"
        status_code: [200, 503]
      register: primary
    - name: SIGKILL its postmaster (Patroni stays up and sees it die); the time of the kill
      ansible.builtin.shell: kill -9 "$(head -1 {{ cullis_stack_dir }}/postgres/data/postmaster.pid)" && date +%s.%N
      when: primary.status == 200
      changed_when: true
"""
KILL_TASK = "SIGKILL its postmaster (Patroni stays up and sees it die); the time of the kill"


def patroni_leader(members: dict[str, str], port: int = 8008) -> str | None:
    """The running leader's name from the first member REST API that answers ({name: address})."""
    for address in members.values():
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/cluster", timeout=5) as resp:
                cluster = json.load(resp)
        except (OSError, ValueError):
            continue
        return next((m["name"] for m in cluster.get("members", [])
                     if m.get("role") in ("leader", "master", "primary") and m.get("state") == "running"), None)
    return None


def public_readyz(url: str, ca: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def kill_primary_and_wait(inventory, workdir: Path, members: dict[str, str], url: str, ca: str,
                          timeout: float = 180) -> dict:
    """The failover action: kill the primary's postmaster, then time the new leader and /readyz 200."""
    old = patroni_leader(members)
    if old is None:
        raise RuntimeError("no running Patroni leader before the failover")
    playbook = Path(workdir) / "kill_primary.yml"
    playbook.write_text(KILL_PRIMARY_PLAYBOOK)
    res = run_playbook(playbook, inventory=inventory)
    killed = [r for r in res.task_results(KILL_TASK, host=old) if not r.get("skipped")]
    if res.rc != 0 or len(killed) != 1:
        raise RuntimeError(f"killing the primary {old} failed: {res.output[-2000:]}")
    t_kill = float(killed[0]["stdout"].strip())  # the member's clock (the test bed shares the kernel; NTP elsewhere)
    out = {"old_leader": old, "new_leader": None, "new_leader_seconds": None, "broker_back_seconds": None}
    while time.time() - t_kill < timeout:
        if out["new_leader"] is None:
            leader = patroni_leader(members)
            if leader not in (None, old):
                out.update(new_leader=leader, new_leader_seconds=round(time.time() - t_kill, 1))
        if out["new_leader"] is not None and public_readyz(url, ca) == 200:
            out["broker_back_seconds"] = round(time.time() - t_kill, 1)
            break
        time.sleep(0.5)
    return out


def sized_load(url, ca, redis_url, identity_dir, agents, duration, auth_limit=10) -> LoadGen:
    """A load that fits in the broker's per-address limits over `duration` (waits for the budget first)."""
    calls = int(duration * CALLS_PER_MINUTE / 60 * 0.6)
    logins = max(2, int(duration * auth_limit / 60 / 2 * 0.6))
    need = budget(calls, logins)
    wait_for_rate_budget(redis_url, {"auth.token": (auth_limit, min(need["auth.token"], auth_limit)),
                                     "federation.agents": (CALLS_PER_MINUTE,
                                                           min(need["federation.agents"], CALLS_PER_MINUTE))})
    return LoadGen(url, identity_dir, agents, ca, calls=calls, logins=logins, duration=duration)


def run_scenario(scenario, inventory, gen: LoadGen, workdir: Path, warmup=4.0, tail=4.0, *,
                 failover: dict | None = None) -> dict:
    """Run `scenario` ("rolling" | "naive" | "failover") under the load `gen`; returns counts, times and,
    for the restarts, the playbook result. "failover" takes failover={"members": {name: address},
    "url": proxy URL, "ca": CA file} (the Patroni members' REST addresses, the public URL)."""
    gen.start()
    time.sleep(warmup)
    t0 = time.monotonic()
    extra: dict = {}
    if scenario == "failover":
        extra = kill_primary_and_wait(inventory, workdir, **(failover or {}))
        res = None
    else:
        if scenario == "rolling":
            playbook = REPO / "playbooks" / "rolling_restart.yml"
        elif scenario == "naive":
            playbook = Path(workdir) / "naive_restart.yml"
            playbook.write_text(NAIVE_PLAYBOOK)
        else:
            gen.stop()
            gen.join()
            raise ValueError(scenario)
        res = run_playbook(playbook, inventory=inventory)
    action_s = time.monotonic() - t0
    time.sleep(tail)
    gen.stop()
    report = gen.join()
    by_status: dict[str, int] = {}
    for f in report.failures:
        by_status[str(f.status)] = by_status.get(str(f.status), 0) + 1
    return {"scenario": scenario, "rc": res.rc if res is not None else 0, "restart_seconds": round(action_s, 1),
            "sent": report.sent, "failed": report.failed, "failed_by_status": by_status, "load": report.summary(),
            "result": res, **extra}


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
    ap.add_argument("--scenarios", default="rolling,naive", help="comma list of rolling, naive, failover")
    ap.add_argument("--patroni-members", default="",
                    help="failover: the Patroni members' REST addresses, name=address,... (e.g. pg1=10.0.0.5,pg2=10.0.0.6)")
    args = ap.parse_args()
    workdir = Path(args.identity_dir).parent
    members = dict(m.split("=", 1) for m in args.patroni_members.split(",") if "=" in m)
    for scenario in args.scenarios.split(","):
        if scenario == "failover" and not members:
            ap.error("the failover scenario needs --patroni-members")
        gen = sized_load(args.url, args.ca, args.redis_url, args.identity_dir, args.agents.split(","),
                         args.duration, args.auth_limit)
        out = run_scenario(scenario, args.inventory, gen, workdir,
                           failover={"members": members, "url": args.url, "ca": args.ca})
        out.pop("result")
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 18 (N brokers behind nginx): zero failed client requests while a broker goes away.

On the session's split topology (conftest `split_stack`: broker1 and broker2 behind nginx on the
proxy host), a bounded load (testkit/loadgen.py: agent logins with DPoP and authenticated calls,
from the controller through the proxy, within the broker's rate limits) runs while
- playbooks/rolling_restart.yml drains and restarts both brokers one at a time -> 0 failed requests;
- the broker serving the load is killed with SIGKILL -> nginx passes the failed attempt to the
  other broker and marks the dead one down -> 0 failed requests; broker_down.yml then restores it
  (on that host only), and its rerun reports changed=0.
The proxy's access log (upstream_addr) proves the load really moved from one broker to the other.
Every test leaves the topology healthy.
"""
from __future__ import annotations

import re
import secrets
import ssl
import time
import urllib.error
import urllib.request

import pytest

from bench.ha_load import run_scenario, sized_load
from testkit.broker_orgs import auth_limit, onboard_org, wait_for_rate_budget
from testkit.measurements import measured
from tests.e2e_split.test_split_incidents import wait

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"
SUPERVISORCTL = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf"
ACCESS_LOG = f"{STACK_DIR}/logs/nginx-access.log"
BROKERS = ("broker1", "broker2")


def readyz(ha) -> int:
    ctx = ssl.create_default_context(cafile=ha["ca"])
    try:
        with urllib.request.urlopen(f"{ha['url']}/readyz", context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:
        return 0


def broker_pid(split_stack, host: str) -> str:
    return split_stack.sh(host, f"{SUPERVISORCTL} pid broker").strip()


def state(split_stack, host: str, service: str) -> str:
    out = split_stack.sh(host, f"{SUPERVISORCTL} status {service}").split()
    return out[1] if len(out) > 1 else " ".join(out)


def access_lines(split_stack, since: int) -> list[str]:
    """Proxy access-log lines after line number `since` (lines of the load's call path only)."""
    out = split_stack.sh("proxy", f"tail -n +{since + 1} {ACCESS_LOG}")
    return [line for line in out.splitlines() if "/v1/federation/agents" in line or "/v1/auth/token" in line]


def log_length(split_stack) -> int:
    return int(split_stack.sh("proxy", f"wc -l < {ACCESS_LOG}").strip() or 0)


def upstreams(lines: list[str]) -> list[str]:
    """The upstream_addr of each line ("a:8000" or "a:8000, b:8000" after a next-upstream try)."""
    return [m.group(1) for m in (re.search(r"upstream=(\S+(?:, \S+)*) upstream_status", ln) for ln in lines) if m]


@pytest.fixture(scope="module")
def ha(split_stack, tmp_path_factory):
    """An org with two agents, onboarded through the proxy, and what the load needs."""
    env = split_stack.env_of("broker1")
    url, ca = split_stack.public_url, str(split_stack.controller_dir / "ca.pem")
    redis_url = env["REDIS_URL"].replace("@redis:", f"@{split_stack.bed.ip('redis')}:")
    identity_dir = tmp_path_factory.mktemp("ha-ids")
    onboard_org(None, f"split-ha-{secrets.token_hex(4)}", identity_dir, 2, redis_url, url=url,
                admin_secret=env["ADMIN_SECRET"], ca_path=ca)
    ips = {split_stack.bed.ip(h): h for h in BROKERS}
    return dict(url=url, ca=ca, redis_url=redis_url, ids=identity_dir, limit=auth_limit(env), ips=ips)


def load(ha, duration: float):
    """A load that fits in the broker's per-address limits over `duration` (waits for the budget)."""
    return sized_load(ha["url"], ha["ca"], ha["redis_url"], ha["ids"], ["a00", "a01"], duration, ha["limit"])


def assert_no_failure(report) -> None:
    if isinstance(report, dict):  # a LoadReport.summary()
        assert report["failed"] == 0 and report["ok"] == report["sent"], report
    else:
        assert report.failed == 0 and report.ok == report.sent, report.summary()


def test_rolling_restart_under_load(split_stack, ha, tmp_path):
    """rolling_restart.yml under load: every broker restarted (new PIDs), one at a time, 0 failed
    requests, the load served by both brokers in turn; nginx.conf ends as deploy.yml renders it.
    A restart playbook always restarts: each run reports the same changes (stop + start per broker,
    two nginx config renders and reloads per broker on the proxy)."""
    pids = {h: broker_pid(split_stack, h) for h in BROKERS}
    conf_before = split_stack.sh("proxy", f"sha256sum {STACK_DIR}/nginx/nginx.conf")
    since = log_length(split_stack)
    out = run_scenario("rolling", split_stack.inventory, load(ha, 120), tmp_path)
    res, report = out["result"], out["load"]
    measured(f"rolling restart under load: {out['restart_seconds']}s, {out['sent']} requests, {out['failed']} failed")
    assert res.rc == 0, res.output[-4000:]
    assert_no_failure(report)
    # the load kept running through the whole restart (about 0.65 requests/s: at least one every 2 s)
    assert report["seconds"] >= out["restart_seconds"], report
    assert report["sent"] >= out["restart_seconds"] / 2 and report["logins"] >= 2, (out["restart_seconds"], report)
    for h in BROKERS:
        assert broker_pid(split_stack, h) not in ("", "0", pids[h]), f"the broker on {h} was not restarted"
        assert state(split_stack, h, "broker") == "RUNNING"
        assert res.host_stats(h)["changed"] == 3, res.stats  # stop (started, completed) and start
    assert res.host_stats("proxy")["changed"] == 4 * len(BROKERS), res.stats  # out + back, render + reload each
    assert split_stack.sh("proxy", f"sha256sum {STACK_DIR}/nginx/nginx.conf") == conf_before
    served = {ha["ips"].get(u.split(":")[0]) for u in upstreams(access_lines(split_stack, since)) if "," not in u}
    assert served == set(BROKERS), f"the load was not moved between the brokers: {served}"


def test_broker_killed_under_load_then_restored(split_stack, ha):
    """kill -9 of the broker that serves the load: nginx passes the failed attempt on and marks it
    down -> 0 failed requests, the rest served by the other broker; broker_down.yml restores the
    killed one (the other broker's process untouched); rerun changed=0."""
    since = log_length(split_stack)
    gen = load(ha, 40).start()
    wait(lambda: upstreams(access_lines(split_stack, since)), 20, "the load's first requests at the proxy")
    first = upstreams(access_lines(split_stack, since))[0]
    victim = ha["ips"][first.split(":")[0]]
    other = next(h for h in BROKERS if h != victim)
    other_pid, victim_pid = broker_pid(split_stack, other), broker_pid(split_stack, victim)
    time.sleep(3)
    assert split_stack.bed.exec(victim, ["kill", "-9", victim_pid]).rc == 0
    killed_at = log_length(split_stack)  # every request logged from here on ended after the kill
    report = gen.join()
    measured(f"kill -9 of {victim}: load {report.summary()}")
    assert_no_failure(report)
    assert report.sent >= 15, report.summary()
    after = upstreams(access_lines(split_stack, killed_at))
    assert after and {ha["ips"][u.split(", ")[-1].split(":")[0]] for u in after} == {other}, after
    assert state(split_stack, victim, "broker") != "RUNNING"

    wait_for_rate_budget(ha["redis_url"], {"auth.token": (ha["limit"], 4)})  # the verify logins
    res = split_stack.run("playbooks/incidents/broker_down.yml")
    assert res.rc == 0 and res.changed > 0, res.output[-4000:]
    assert state(split_stack, victim, "broker") == "RUNNING"
    assert broker_pid(split_stack, other) == other_pid, "broker_down restarted the healthy broker"
    again = split_stack.run("playbooks/incidents/broker_down.yml")
    assert again.rc == 0 and again.changed == 0, (again.stats, again.output[-3000:])


def test_naive_restart_of_both_brokers_fails_requests(split_stack, ha, tmp_path):
    """bench/ha_load.py's reference: both brokers restarted at once under the same kind of load.
    Requests fail (the load generator sees them: nothing answers for the restart time), where the
    rolling restart above failed none; both brokers serve again afterwards."""
    out = run_scenario("naive", split_stack.inventory, load(ha, 40), tmp_path)
    measured(f"naive restart of both under load: {out['restart_seconds']}s, {out['sent']} requests, "
          f"{out['failed']} failed {out['failed_by_status']}")
    assert out["rc"] == 0, out["result"].output[-3000:]
    assert out["failed"] > 0, out["load"]
    for h in BROKERS:
        assert state(split_stack, h, "broker") == "RUNNING"
    wait(lambda: readyz(ha) == 200, 60, "/readyz 200 through the proxy")

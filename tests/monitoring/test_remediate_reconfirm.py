"""The remediation playbook of the rulebook (extensions/eda/playbooks/remediate.yml) re-confirms an
alert that started while another remediation of the same stack was running (issue 17): in a full
run the vault_sealed recovery's own broker restart raised a BrokerDown whose remediation waited in
the rulebook's queue (one action at a time) and then ran blindly, ahead of the next real incident.

Real Prometheus on loopback (evaluation 1 s) with one alert always firing: RedisDown on host
cache1, nothing on cache2. The stack's last remediation (vault_sealed) is recorded as having run
while both alerts started. cache2's alert is gone when its turn comes: recorded as `cleared`,
nothing run, nobody paged (though cache2's redis_down was remediated 100 s before: inside the
escalation window, a repeat would page). cache1's is still firing after the settle time: remediated.
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
import urllib.parse
import urllib.request

import pytest

from testkit.ansible import REPO, run_playbook
from testkit.process import ManagedProcess, free_port, wait_for

EDA = REPO / "collections/ansible_collections/cullis/broker/extensions/eda"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: scripts/bootstrap.sh installs "
                                                            "Debian's prometheus package")


@pytest.fixture
def prometheus(tmp_dir):
    (tmp_dir / "rules.yml").write_text("""groups:
  - name: test
    rules:
      - alert: RedisDown
        expr: vector(1)
        labels: {incident: redis_down, host: cache1, remediation: auto}
""")
    (tmp_dir / "prometheus.yml").write_text("global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n")
    port = free_port()
    proc = ManagedProcess([PROMETHEUS, f"--config.file={tmp_dir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={tmp_dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                          tmp_dir / "prometheus.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        query = urllib.parse.quote('ALERTS{alertstate="firing",alertname="RedisDown",host="cache1"}')

        def firing() -> bool:
            with urllib.request.urlopen(f"{url}/api/v1/query?query={query}", timeout=2) as resp:
                return len(json.loads(resp.read())["data"]["result"]) == 1
        wait_for(firing, 60, "Prometheus with RedisDown firing on cache1", proc)
        yield url
    finally:
        proc.stop()


def _iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event(host: str, starts_at: str, prom: str) -> dict:
    return {"event": {"meta": {"received_at": _iso(datetime.datetime.now(datetime.timezone.utc))}, "payload": {
        "status": "firing", "commonLabels": {"alertname": "RedisDown", "incident": "redis_down", "host": host,
                                             "remediation": "auto", "severity": "critical"},
        "commonAnnotations": {"runbook": "4. Redis down"},
        # Prometheus's URL comes from the alert itself when cullis_prometheus_url is empty
        "alerts": [{"startsAt": starts_at, "generatorURL": f"{prom}/graph?g0.expr=vector%281%29&g0.tab=1"}]}}}


def test_alert_raised_during_another_remediation_is_reconfirmed(tmp_dir, receiver, make_repo, prometheus):
    url, got = receiver
    repo, runs = make_repo(tmp_dir, "redis_down", "{name: Recover, ansible.builtin.debug: {msg: redis is back}}")
    reports = tmp_dir / "reports"
    (reports / "incidents").mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # the vault_sealed remediation ran from 60 s ago to 5 s ago; both alerts started 30 s ago
    (reports / "incidents/last-stack.json").write_text(json.dumps({
        "incident": "vault_sealed", "host": "localhost", "started_at": _iso(now - datetime.timedelta(seconds=60)),
        "finished_epoch": now.timestamp() - 5}))
    # and cache2's redis_down was remediated 100 s ago: within the escalation window, a repeat would
    # page people; a side effect that went away must not
    last_cache2 = json.dumps({"finished_epoch": now.timestamp() - 100, "outcome": "recovered",
                              "finished_at": (now - datetime.timedelta(seconds=100)).isoformat()})
    (reports / "incidents/last-redis_down-cache2.json").write_text(last_cache2)
    started = _iso(now - datetime.timedelta(seconds=30))
    base = {"cullis_repo_dir": str(repo), "cullis_remediation_inventory": "localhost,",
            "cullis_remediation_reports_dir": str(reports), "cullis_escalation_url": url,
            "cullis_escalate_window_seconds": 900, "cullis_remediation_backend": "playbook",
            "cullis_prometheus_url": "", "cullis_reconfirm_settle_seconds": 4}

    # gone by the time its turn comes: recorded as cleared, nothing run, nobody paged
    t0 = time.monotonic()
    cleared = run_playbook(EDA / "playbooks/remediate.yml", extra_vars=dict(
        base, ansible_eda=_event("cache2", started, prometheus)))
    cleared_s = time.monotonic() - t0
    assert cleared.rc == 0, cleared.explain()
    assert not runs.exists() and got == []
    [rec_file] = sorted((reports / "incidents").glob("2*-redis_down-cache2.json"))
    rec = json.loads(rec_file.read_text())
    assert rec["outcome"] == "cleared" and rec["escalated"] is False, rec
    events = [e["event"] for e in rec["timeline"]]
    assert events[-1] == ("re-confirmed: RedisDown started during the remediation of vault_sealed; "
                          "no longer firing: not remediated"), events
    assert not any(e.startswith("remediation started") for e in events), events
    assert rec_file.with_suffix(".html").read_text().count("cleared") >= 1
    assert (reports / "incidents/last-redis_down-cache2.json").read_text() == last_cache2  # not a remediation

    # still firing after the settle time: a real fault, remediated
    fired = run_playbook(EDA / "playbooks/remediate.yml", extra_vars=dict(
        base, ansible_eda=_event("cache1", started, prometheus)))
    assert fired.rc == 0, fired.explain()
    assert len(runs.read_text().splitlines()) == 1 and got == []
    [rec_file] = sorted((reports / "incidents").glob("2*-redis_down-cache1.json"))
    rec = json.loads(rec_file.read_text())
    assert rec["outcome"] == "recovered", rec
    events = [e["event"] for e in rec["timeline"]]
    assert events[2] == ("re-confirmed: RedisDown started during the remediation of vault_sealed; "
                         "still firing after 4 s: a real fault"), events
    assert events[3] == "remediation started: playbooks/incidents/redis_down.yml", events
    # this remediation is now the stack's last one (the window of the next re-confirmation)
    last = json.loads((reports / "incidents/last-stack.json").read_text())
    assert last["incident"] == "redis_down" and last["host"] == "cache1" and last["finished_epoch"] > now.timestamp()
    print(f"\ncleared case: {cleared_s:.1f} s")

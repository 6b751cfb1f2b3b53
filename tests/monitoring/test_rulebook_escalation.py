"""Escalation with a LIVE rulebook (issue 17): the real extensions/eda/rulebooks/cullis_remediation.yml
in a real ansible-rulebook (.venv-eda, Java 17) on loopback gets Alertmanager webhook posts; the
incident playbook of the stand-in repository fails, as a recovery that cannot work would.

- the failed remediation escalates: the escalation receiver (real HTTP, loopback) gets the JSON
  incident record, outcome `failed`;
- the alert fires again at once (a new start, same incident and host): the rulebook's throttle
  (once within 5 minutes per incident and host) runs nothing: the recovery is not looped;
- a `resolved` post afterwards reaches the rulebook (its debug line in the log): the events before
  it were all processed (one action at a time), so "nothing ran" is not "not yet".
The escalation window's own path (a repeat after the throttle, within 900 s: escalated without a
run) is tests/monitoring/test_remediate_escalation.py.
"""
from __future__ import annotations

import datetime
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO
from testkit.process import ManagedProcess, free_port, port_open, wait_for

EDA_VENV = Path(os.environ.get("EDA_VENV", REPO / ".venv-eda"))
EDA_DIR = REPO / "collections/ansible_collections/cullis/broker/extensions/eda"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
pytestmark = [
    pytest.mark.skipif(not (EDA_VENV / "bin/ansible-rulebook").exists(),
                       reason=f"ansible-rulebook missing in {EDA_VENV}: scripts/bootstrap.sh builds it"),
    pytest.mark.skipif(not Path(JAVA_HOME).is_dir(),
                       reason=f"Java 17 missing ({JAVA_HOME}): scripts/bootstrap.sh installs openjdk-17-jre-headless"),
]


def _post(port: int, status: str, starts_at: str) -> None:
    """An Alertmanager webhook body (version 4) for one alert group."""
    labels = {"alertname": "RedisDown", "incident": "redis_down", "host": "cache1", "remediation": "auto",
              "severity": "critical"}
    body = {"version": "4", "status": status, "receiver": "cullis-rulebook", "groupLabels": labels,
            "commonLabels": labels, "commonAnnotations": {"runbook": "4. Redis down"},
            "alerts": [{"status": status, "labels": labels, "startsAt": starts_at,
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": ""}]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/endpoint", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    # 60 s: in a rehearsal at load ~12 on 2 cores the rulebook's webhook took over 10 s to answer
    # (the port was open); what this test checks is the escalation, not the webhook's latency
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_live_rulebook_escalates_a_failed_remediation_and_does_not_loop(tmp_dir, receiver, make_repo):
    url, got = receiver
    repo, runs = make_repo(tmp_dir, "redis_down",
                           '{name: Recover, ansible.builtin.fail: {msg: redis would not come back}}')
    reports = tmp_dir / "reports"
    port = free_port()
    (tmp_dir / "vars.yml").write_text(yaml.safe_dump({
        "cullis_rulebook_listen_host": "127.0.0.1", "cullis_rulebook_listen_port": port,
        "cullis_remediation_backend": "playbook", "cullis_awx_organization": "Default",
        "cullis_repo_dir": str(repo), "cullis_eda_dir": str(EDA_DIR), "cullis_remediation_inventory": "localhost,",
        "cullis_remediation_reports_dir": str(reports), "cullis_escalation_url": url,
        "cullis_escalate_window_seconds": 900, "cullis_prometheus_url": "",
        "cullis_reconfirm_settle_seconds": 4, "cullis_reconfirm_grace_seconds": 3}))
    (tmp_dir / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": str(REPO / ".venv/bin/python")}}}}))
    env = dict(os.environ, JAVA_HOME=JAVA_HOME, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               PATH=f"{EDA_VENV}/bin:{REPO}/.venv/bin:{os.environ.get('PATH', '')}")
    log = tmp_dir / "rulebook.log"
    rulebook = ManagedProcess([EDA_VENV / "bin/ansible-rulebook", "-r", EDA_DIR / "rulebooks/cullis_remediation.yml",
                               "-i", tmp_dir / "inventory.yml", "--vars", tmp_dir / "vars.yml", "-v"],
                              log, env=env, cwd=REPO, stop_grace=10).start()
    try:
        wait_for(lambda: port_open(port), 120, "ansible-rulebook webhook", rulebook)
        t0 = time.monotonic()
        _post(port, "firing", _now())
        wait_for(lambda: len(got) == 1, 300, "the escalation of the failed remediation", rulebook)
        escalation_s = time.monotonic() - t0
        record = got[0]
        assert record["incident"] == "redis_down" and record["host"] == "cache1", record
        assert record["outcome"] == "failed" and record["escalated"] is True and record["rc"] != 0, record
        events = [e["event"] for e in record["timeline"]]
        assert events[2] == "remediation started: playbooks/incidents/redis_down.yml", events
        assert any(e.startswith("FAILED: Recover") for e in events), events
        # the escalation is posted first, then the record is written
        wait_for(lambda: Path(record["record"]).with_suffix(".html").exists(), 60, "the incident record", rulebook)
        assert json.loads(Path(record["record"]).read_text())["outcome"] == "failed"
        assert len(runs.read_text().splitlines()) == 1

        # it fires again at once: throttled, nothing runs; the resolved post after it proves the
        # rulebook processed it (its actions run one at a time, in order)
        _post(port, "firing", _now())
        _post(port, "resolved", _now())
        wait_for(lambda: "resolved: RedisDown incident=redis_down" in log.read_text(errors="replace"), 120,
                 "the resolved event in the rulebook's log", rulebook)
        assert len(runs.read_text().splitlines()) == 1, "the failed recovery was run again"
        assert len(got) == 1, got
        print(f"\nlive rulebook: alert posted -> escalation received in {escalation_s:.1f} s")
    finally:
        rulebook.stop()

"""The remediation playbook of the rulebook (extensions/eda/playbooks/remediate.yml) when the
recovery fails: it escalates (a real HTTP receiver on loopback gets the JSON incident record), the
record says `failed`, and the same alert again within the window escalates without running the
playbook a second time (no loop). No stack needed: the "repository" handed to it holds an incident
playbook that fails, as a recovery that cannot work would.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from testkit.ansible import REPO, run_playbook

EDA = REPO / "collections/ansible_collections/cullis/broker/extensions/eda"


def _event(now: str, starts_at: str = "2026-01-01T00:00:00Z") -> dict:
    return {"event": {"meta": {"received_at": now}, "payload": {
        "status": "firing", "commonLabels": {"alertname": "RedisDown", "incident": "redis_down", "host": "cache1",
                                             "remediation": "auto", "severity": "critical"},
        "commonAnnotations": {"runbook": "4. Redis down", "playbook": "playbooks/incidents/redis_down.yml"},
        "alerts": [{"startsAt": starts_at}]}}}


def test_failed_recovery_escalates_and_a_repeat_does_not_loop(tmp_dir, receiver, make_repo):
    url, got = receiver
    tmp_path = tmp_dir
    repo, runs = make_repo(tmp_path, "redis_down",
                           '{name: Recover, ansible.builtin.fail: {msg: redis would not come back}}')
    reports = tmp_path / "reports"
    extra = {"ansible_eda": _event("2026-01-01T00:00:01Z"), "cullis_repo_dir": str(repo),
             "cullis_remediation_inventory": "localhost,", "cullis_remediation_reports_dir": str(reports),
             "cullis_escalation_url": url, "cullis_escalate_window_seconds": 900,
             "cullis_remediation_backend": "playbook"}
    first = run_playbook(EDA / "playbooks/remediate.yml", inventory=None, extra_vars=extra)
    assert first.rc != 0  # the rulebook's log shows the failure
    records = sorted((reports / "incidents").glob("2*-redis_down-cache1.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["outcome"] == "failed" and rec["escalated"] is True and rec["rc"] != 0
    events = [e["event"] for e in rec["timeline"]]
    assert events[0].startswith("fault seen") and events[1].startswith("alert fired: RedisDown")
    assert any(e.startswith("FAILED: Recover") for e in events), events
    assert any(e.startswith("escalated to " + url) for e in events), events
    assert Path(str(records[0])[:-5] + ".html").read_text().count("failed") >= 1
    assert len(got) == 1 and got[0]["incident"] == "redis_down" and got[0]["outcome"] == "failed"
    assert len(runs.read_text().splitlines()) == 1

    # a late notification of the same alert (it started before that remediation): nothing runs
    late = run_playbook(EDA / "playbooks/remediate.yml", inventory=None, extra_vars=extra)
    assert late.rc == 0 and len(got) == 1 and len(runs.read_text().splitlines()) == 1

    # the alert fires again (a new start) within the window: escalated, the playbook not run again
    again = dict(extra, ansible_eda=_event(_utc_now(), starts_at=_utc_now()))
    second = run_playbook(EDA / "playbooks/remediate.yml", inventory=None, extra_vars=again)
    assert second.rc != 0
    assert len(runs.read_text().splitlines()) == 1  # not run again
    assert len(got) == 2 and got[1]["outcome"] == "escalated"
    assert any("fired again within 900 s" in e["event"] for e in got[1]["timeline"])


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

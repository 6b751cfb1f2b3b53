"""Alert rules = runbook (issue 17): `promtool test rules` over the rules the monitoring role deploys.

The rules template is rendered with the role's own defaults (the values a deployment gets) and
checked by promtool (syntax), then unit-tested with cullis.rules.test.yml: each incident alert
fires on its fault with incident/host labels and runbook/playbook annotations, stays silent on a
healthy stack, and each security alert fires on the metric name the broker really emits.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

HERE = Path(__file__).parent
ROLE = HERE.parents[1] / "collections/ansible_collections/cullis/broker/roles/monitoring"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/bootstrap.sh installs "
                                                          "Debian's prometheus package")


def render_rules(**overrides) -> str:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    variables = {k: v for k, v in defaults.items() if isinstance(v, (str, int, float)) and "{{" not in str(v)}
    variables.update(ansible_managed="test render", **overrides)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string((ROLE / "templates/cullis.rules.yml.j2").read_text()).render(variables)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rules")
    (d / "cullis.rules.yml").write_text(render_rules())
    shutil.copy(HERE / "cullis.rules.test.yml", d)
    return d


def test_rules_are_valid(rules_dir):
    r = subprocess.run([PROMTOOL, "check", "rules", str(rules_dir / "cullis.rules.yml")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_alert_fires_on_its_fault_and_not_on_a_healthy_stack(rules_dir):
    r = subprocess.run([PROMTOOL, "test", "rules", "cullis.rules.test.yml"], cwd=rules_dir, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_unit_tested_and_labelled(rules_dir):
    rules = [rule for g in yaml.safe_load((rules_dir / "cullis.rules.yml").read_text())["groups"]
             for rule in g["rules"]]
    tests = yaml.safe_load((HERE / "cullis.rules.test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    playbooks = HERE.parents[1] / "playbooks"
    for rule in rules:
        assert rule["alert"] in fired, f"{rule['alert']} has no firing unit test"
        labels, notes = rule["labels"], rule["annotations"]
        assert labels["remediation"] in ("auto", "manual") and labels["severity"] in ("critical", "warning")
        assert notes["runbook"][0].isdigit(), rule["alert"]
        assert (playbooks.parent / notes["playbook"]).is_file(), notes["playbook"]
        if labels["remediation"] == "auto":  # the rulebook runs playbooks/incidents/<incident>.yml
            assert notes["playbook"] == f"playbooks/incidents/{labels['incident']}.yml"
    exprs = " ".join(rule["expr"] for rule in rules)
    assert "atn_" not in exprs


def test_a_broken_expectation_fails(rules_dir, tmp_path):
    """The unit tests can fail: upstream's atn_* names would leave the security alerts silent."""
    (tmp_path / "cullis.rules.yml").write_text((rules_dir / "cullis.rules.yml").read_text()
                                               .replace("cullis_dpop_jti_replay_attempt_total",
                                                        "atn_dpop_jti_replay_attempt_total"))
    shutil.copy(HERE / "cullis.rules.test.yml", tmp_path)
    r = subprocess.run([PROMTOOL, "test", "rules", "cullis.rules.test.yml"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "DPoPReplayAttempt" in r.stdout + r.stderr

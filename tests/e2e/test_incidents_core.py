"""Fault injection on the deployed stack: broker down (SIGKILL, startup failure, OOM), Redis down
(stopped, password changed), admin lockout; triage names the incident, the playbook or
`triage.yml -e remediate=true` recovers it; a healthy stack makes every playbook report changed=0.

Every test leaves the stack healthy (the next test gets the same stack).
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time

import pytest
import yaml

from testkit import scenarios
from testkit.ansible import REPO
from testkit.process import wait_for
from testkit.scenarios import assert_healthy, host_of, named, ready, run_ok, triage

sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.cullis.broker.plugins.module_utils._runtime import (  # noqa: E402
    ProcessRuntime, RuntimeErrorCullis)

pytestmark = pytest.mark.slow

INCIDENT_PLAYBOOKS = ("playbooks/incidents/broker_down.yml", "playbooks/incidents/redis_down.yml",
                      "playbooks/incidents/admin_lockout.yml")


# ---- helpers -----------------------------------------------------------------------------------

def runtime(stack) -> ProcessRuntime:
    return ProcessRuntime(str(stack.dir), timeout=60)


def set_env_value(stack, key: str, value: str) -> None:
    text = stack.env_file.read_text()
    text, n = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
    assert n == 1, f"{key} not in .env"
    stack.env_file.write_text(text)


def restart_quietly(rt: ProcessRuntime, name: str) -> None:
    """Restart a service that is expected NOT to come up (the fault under test)."""
    try:
        rt.restart(name)
    except RuntimeErrorCullis:
        pass


# ---- healthy stack: nothing to do --------------------------------------------------------------

def test_healthy_stack_every_playbook_changes_nothing(stack):
    """Runbook sections 1, 4, 7 (Confirm): on a healthy stack each incident playbook stops after
    confirm with changed=0, and triage names no incident."""
    assert_healthy(stack)
    for playbook in INCIDENT_PLAYBOOKS:
        res = run_ok(stack, playbook)
        assert res.changed == 0, f"{playbook} changed something on a healthy stack"
    res, report = triage(stack)
    assert res.rc == 0
    assert named(report) == []
    assert report["before"]["snapshot"]["redis"]["state"] == "ok"
    assert report["before"]["snapshot"]["postgres"]["ready"] is True
    assert report["before"]["snapshot"]["vault"]["all_unsealed"] is True
    assert report["before"]["snapshot"]["tls"]["days_left"] > 0


# ---- runbook section 1: broker down ------------------------------------------------------------

def test_broker_sigkill_triage_remediates(stack):
    """Runbook section 1 (Exit 137 without OOM): broker killed with SIGKILL; triage names
    broker_down with signal SIGKILL, remediate=true restarts and verifies it."""
    rt = runtime(stack)
    pid = rt.status("broker")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not rt.status("broker")["running"], 30, "broker to die")
    # --check shows the plan and changes nothing (it used to fail verifying a recovery it never did)
    plan = stack.run("playbooks/incidents/broker_down.yml", check=True)
    assert plan.rc == 0, plan.explain()
    assert not rt.status("broker")["running"], "broker_down.yml --check started the broker"

    res, report = triage(stack, remediate=True)
    assert "broker_down" in named(report), report["before"]["incidents"]
    assert host_of(report, "broker_down") == "localhost"  # triage names the host (single-host inventory)
    broker = report["before"]["snapshot"]["services"]["broker"]
    assert broker["signal"] == "SIGKILL" and broker["shell_exit_code"] == 137
    assert broker["exit_class"] == "killed"
    assert res.rc == 0, res.output[-4000:]
    assert named(report, "after") == []
    assert "broker_down" in report["remediated"]
    assert_healthy(stack)


def test_broker_startup_failure_bad_database_url(stack):
    """Runbook section 1 (Exit 3): a bad DATABASE_URL makes the broker fail at startup; triage
    names broker_down with the first real error after the LIFESPAN marker (Postgres);
    broker_down.yml re-applies the declared configuration and verifies."""
    rt = runtime(stack)
    good = stack.env["DATABASE_URL"]
    bad = re.sub(r"://([^:]+):([^@]+)@", lambda m: f"://{m.group(1)}:wrong{secrets.token_hex(6)}@", good)
    set_env_value(stack, "DATABASE_URL", bad)
    restart_quietly(rt, "broker")
    wait_for(lambda: rt.status("broker")["state"] in ("EXITED", "FATAL", "BACKOFF"), 120, "broker to fail")
    wait_for(lambda: rt.status("broker")["state"] in ("EXITED", "FATAL"), 120, "broker to give up")

    _, report = triage(stack)
    assert "broker_down" in named(report)
    broker = report["before"]["snapshot"]["services"]["broker"]
    assert broker["exit_code"] == 3 and broker["exit_class"] == "startup_failure", broker
    assert broker["startup_error_cause"] == "postgres", broker
    assert "password" in broker["startup_error"].lower() or "auth" in broker["startup_error"].lower()

    res = run_ok(stack, "playbooks/incidents/broker_down.yml")
    assert res.changed > 0
    assert stack.env["DATABASE_URL"] == good
    assert_healthy(stack)


def test_broker_oom_raises_memory_limit(stack):
    """Runbook section 1 (Exit 137 OOM): the broker exceeds its memory limit; triage names
    broker_down with exit class oom; broker_down.yml raises cullis_broker_memory_limit_mb,
    redeploys the broker and verifies."""
    rt = runtime(stack)
    conf = stack.dir / "supervisor" / "conf.d" / "broker.conf"
    original = conf.read_text()
    assert "--memory-limit-mb 0" in original
    persisted = stack.inventory / "host_vars" / "localhost" / "cullis_broker_memory.yml"
    assert not persisted.exists()
    conf.write_text(original.replace("--memory-limit-mb 0", "--memory-limit-mb 40"))
    try:
        try:
            rt.apply_config("broker")
        except RuntimeErrorCullis:
            pass
        restart_quietly(rt, "broker")
        wait_for(lambda: rt.status("broker")["state"] in ("EXITED", "FATAL"), 180, "broker to be OOM-killed")

        _, report = triage(stack)
        assert "broker_down" in named(report)
        broker = report["before"]["snapshot"]["services"]["broker"]
        assert broker["exit_class"] == "oom", broker

        res = run_ok(stack, "playbooks/incidents/broker_down.yml")
        assert "--memory-limit-mb 512" in conf.read_text(), res.output[-6000:]
        assert "512 MB" in res.output
        # persisted in the inventory, so the next deploy keeps the raised limit
        assert yaml.safe_load(persisted.read_text()) == {"cullis_broker_memory_limit_mb": 512}
        assert_healthy(stack)
    finally:
        persisted.unlink(missing_ok=True)  # the next tests' deploys expect the inventory's declared state
        if "--memory-limit-mb 0" not in conf.read_text():
            # back to the inventory's declared state (no limit) for the next tests
            conf.write_text(original)
            rt.apply_config("broker")
            rt.start("broker")
            wait_for(lambda: ready(stack), 120, "broker ready again")


# ---- runbook section 4: Redis down -------------------------------------------------------------

def test_redis_stopped_triage_remediates(stack):
    """Runbook section 4 (Recover 1): Redis stopped; triage names redis_down; remediate=true
    restarts it and verifies /readyz redis ok."""
    scenarios.redis_stopped(stack)


def test_redis_password_changed_under_the_broker(stack):
    """Runbook section 4 (Recover 2, password mismatch): Redis boots with another password than
    .env; triage names redis_down (PING wrong_password); redis_down.yml rewrites Redis's config
    from .env WITHOUT rotating any secret, restarts the broker, verifies redis ok."""
    rt = runtime(stack)
    env_before = stack.env
    conf = stack.dir / "redis" / "redis.conf"
    text = conf.read_text()
    conf.write_text(re.sub(r"(?m)^requirepass .*$", f"requirepass other{secrets.token_hex(12)}", text))
    rt.restart("redis")
    wait_for(lambda: stack.get("/readyz", timeout=5)[0] != 200, 60, "broker to notice")

    _, report = triage(stack)
    assert "redis_down" in named(report)
    assert report["before"]["snapshot"]["redis"]["state"] == "wrong_password"

    res = run_ok(stack, "playbooks/incidents/redis_down.yml")
    assert res.changed > 0
    assert stack.env == env_before, "a secret of .env was rotated"
    assert conf.read_text() == text
    assert_healthy(stack)


# ---- runbook section 7: admin lockout ----------------------------------------------------------

def test_admin_secret_lost(stack):
    """Runbook section 7: the ADMIN_SECRET in .env is lost (no longer the broker's); triage names
    admin_lockout; admin_lockout.yml rotates it, resets the Vault admin state by CAS (hash kept),
    restarts, and an x-admin-secret call answers 200 with the new secret."""
    env_before = stack.env
    set_env_value(stack, "ADMIN_SECRET", "lost" + secrets.token_hex(16))

    _, report = triage(stack)
    assert named(report) == ["admin_lockout"]

    res = run_ok(stack, "playbooks/incidents/admin_lockout.yml", verbosity=3)
    assert res.changed > 0
    env_after = stack.env
    new = env_after["ADMIN_SECRET"]
    assert new != env_before["ADMIN_SECRET"] and len(new) >= 32
    assert new not in res.output
    assert {k: v for k, v in env_after.items() if k != "ADMIN_SECRET"} == \
        {k: v for k, v in env_before.items() if k != "ADMIN_SECRET"}
    assert oct(stack.env_file.stat().st_mode & 0o777) == "0o600"
    assert "admin_bootstrap_token" in res.output and str(stack.env_file) in res.output
    import urllib.request
    import ssl
    req = urllib.request.Request(stack.public_url + "/v1/registry/orgs", headers={"x-admin-secret": new})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(stack.public_ca_path))) as r:
        assert r.status == 200
    assert_healthy(stack)

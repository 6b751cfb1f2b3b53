"""Deploy → smoke → second deploy changed=0 → check mode changed=0 → no secret in -vvv → /readyz.

Proves issue 3's "done when" on a stack deployed into a temp dir on free ports (fixture `stack`
in conftest.py), with the real processes. Runs first among the e2e tests (conftest orders it).
"""
from __future__ import annotations

import hashlib
import json
import os
import ssl
import stat
import urllib.request
from pathlib import Path

import pytest


pytestmark = [pytest.mark.stack, pytest.mark.slow]

SERVICES = ("postgres", "redis", "vault", "broker", "nginx")


def _fingerprint(stack_dir: Path) -> dict:
    """Content hash of every config/secret file of the stack (data dirs and logs excluded)."""
    skip = ("logs", "postgres/data", "vault/raft", "broker/venv", "nginx/tmp", "run")
    out = {}
    for path in sorted(stack_dir.rglob("*")):
        rel = path.relative_to(stack_dir).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip) or not path.is_file() or path.is_socket():
            continue
        if rel.endswith((".pid", ".sock")):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _pids(stack) -> dict:
    infos = stack.services()
    for name in SERVICES:
        assert infos[name]["statename"] == "RUNNING", (name, infos[name])
    return {name: infos[name]["pid"] for name in SERVICES}


def test_first_deploy_builds_the_whole_stack(stack):
    res = stack.deploy_result
    assert res.rc == 0 and res.failed == 0
    assert res.changed > 0
    env = stack.env
    for key in ("ADMIN_SECRET", "DASHBOARD_SIGNING_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "VAULT_TOKEN",
                "DATABASE_URL", "REDIS_URL", "VAULT_ADDR", "BROKER_PUBLIC_URL"):
        assert env.get(key), f"{key} missing from .env"
    generated = [env[k] for k in ("ADMIN_SECRET", "DASHBOARD_SIGNING_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD")]
    assert len(set(generated)) == 4, "each secret must be generated on its own"
    for value in generated:
        assert "%" not in value and 20 <= len(value.encode()) <= 72
    assert env["DATABASE_URL"] == (f"postgresql+asyncpg://atn:{env['POSTGRES_PASSWORD']}@127.0.0.1:"
                                   f"{stack.ports['cullis_postgres_port']}/agent_trust")
    assert env["BROKER_PUBLIC_URL"] == stack.public_url
    assert stat.S_IMODE(os.stat(stack.env_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stack.keys_file).st_mode) == 0o600
    keys = stack.vault_keys
    assert len(keys["unseal_keys_b64"]) == 5 and keys["unseal_threshold"] == 3
    assert stack.ca_path.is_file()
    # the broker's scoped token: broker-policy, renewable, 720h
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    req = urllib.request.Request(stack.vault_addr + "/v1/auth/token/lookup-self",
                                 headers={"X-Vault-Token": env["VAULT_TOKEN"]})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        token = json.loads(resp.read())["data"]
    assert "broker-policy" in token["policies"] and "root" not in token["policies"]
    assert token["renewable"] is True and token["creation_ttl"] == 720 * 3600


def test_smoke_passes_on_the_fresh_stack(stack):
    res = stack.run("playbooks/smoke.yml")
    assert res.rc == 0, "\n".join(res.output.splitlines()[-60:])
    # the cross-org message is required by default: a smoke run that skipped it must not pass here
    assert "smoke test PASSED (0 skipped)" in res.output, "\n".join(res.output.splitlines()[-60:])


def test_second_deploy_changes_nothing_and_prints_no_secret(stack):
    pids_before = _pids(stack)
    res = stack.run("playbooks/deploy.yml", verbosity=3)
    assert res.rc == 0, "\n".join(res.output.splitlines()[-60:])
    changed = [t["task"]["name"] for p in res.data.get("plays", []) for t in p.get("tasks", [])
               if t.get("hosts", {}).get("localhost", {}).get("changed")]
    assert res.changed == 0, f"tasks reporting changed on a converged stack: {changed}"
    assert _pids(stack) == pids_before, "a service was restarted by an idempotent run"
    # the secret-generating first run and this run, both at -vvv
    secrets = stack.secret_values()
    assert len(secrets) >= 10
    for output in (stack.deploy_result.output, res.output):
        leaked = [s[:4] + "..." for s in secrets if s in output]
        assert not leaked, f"secret values printed in deploy -vvv output: {leaked}"


def test_check_mode_reports_no_change_and_changes_nothing(stack):
    before, pids_before = _fingerprint(stack.dir), _pids(stack)
    res = stack.run("playbooks/deploy.yml", check=True)
    assert res.rc == 0, "\n".join(res.output.splitlines()[-60:])
    assert res.changed == 0
    assert _fingerprint(stack.dir) == before
    assert _pids(stack) == pids_before


def test_readyz_over_tls_with_the_stack_ca(stack):
    status, body = stack.get("/readyz")
    assert status == 200, body
    assert body["status"] == "ready"
    # an empty report would pass a subset test: every dependency must be there, and ok
    assert {"database", "redis", "kms"} <= set(body.get("checks") or {}), body
    assert set(body["checks"].values()) == {"ok"}, body


def test_metrics_are_served_to_scrapers_not_through_the_public_url(stack):
    """The broker's /metrics has no authentication (broker-api.md section 7): the deploy turns it on
    for Prometheus on the broker's own listener, and nginx does not pass it to the public URL."""
    with urllib.request.urlopen(stack.internal_url + "/metrics", timeout=10) as resp:
        own = resp.read().decode()
    assert "# TYPE cullis_auth_success_total counter" in own, own[:300]
    status, body = stack.get("/metrics")
    assert status == 404, body
    assert "cullis_" not in str(body)

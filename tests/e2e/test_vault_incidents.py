"""Vault incidents on the deployed stack (runbook section 3): Vault sealed, broker token revoked.

Each test injects the fault for real (`bao operator seal`, `bao token revoke`), runs the incident
playbook with --check (nothing may change), then for real with -vvv (recovered; no unseal key,
root token or broker token in the output), then again (changed=0). Every test leaves the stack
healthy for the next one.
"""
from __future__ import annotations

import json
import stat
import sys

import pytest

from testkit import scenarios
from testkit.ansible import REPO
from testkit.process import wait_for

sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.cullis.broker.plugins.module_utils._runtime import ProcessRuntime  # noqa: E402

pytestmark = pytest.mark.slow

SEALED = "playbooks/incidents/vault_sealed.yml"
TOKEN = "playbooks/incidents/vault_token_expired.yml"


bao = scenarios.bao
seal_status = scenarios.seal_status


def token_valid(stack, token: str) -> bool:
    return bao(stack, "token", "lookup", "-format=json", token=token, check=False).returncode == 0


def broker_pid(stack) -> int:
    return stack.services()["broker"]["pid"]


def readyz_ok(stack) -> bool:
    status, body = stack.get("/readyz", timeout=5)
    return status == 200 and isinstance(body, dict) and body.get("checks", {}).get("kms") == "ok"


def assert_no_secret(stack, result, *extra: str) -> None:
    for value in [*stack.secret_values(), *extra]:
        assert value not in result.output, "a Vault key or token appeared in the playbook output"


def keys_file_vars(stack) -> dict:
    # The operator passes the cold-storage copy explicitly; here it is the stack's own file.
    return {"vault_keys_file": str(stack.keys_file)}


def test_healthy_stack_changes_nothing(stack):
    """Both playbooks on a healthy stack: confirm only, stop early, changed=0."""
    for playbook in (SEALED, TOKEN):
        res = stack.run(playbook, extra_vars=keys_file_vars(stack))
        assert res.rc == 0, res.output[-3000:]
        assert res.changed == 0, f"{playbook} changed a healthy stack"
    assert readyz_ok(stack)


def test_vault_sealed_recovered(stack):
    """Runbook 3 Recover (sealed): seal the stack's Vault -> vault_sealed.yml -> recovered."""
    scenarios.vault_sealed(stack, keys_file_vars(stack))


def test_vault_token_expired_recovered(stack):
    """Runbook 3 Recover (scoped token expired): revoke the broker's token -> new scoped token."""
    root = stack.vault_keys["root_token"]
    old_token = stack.env["VAULT_TOKEN"]
    bao(stack, "token", "revoke", old_token, token=root)
    try:
        _token_recovery(stack, old_token)
    finally:
        if not token_valid(stack, stack.env.get("VAULT_TOKEN", "")) or not readyz_ok(stack):
            stack.run(TOKEN, extra_vars=keys_file_vars(stack))  # put the stack back for the next test
            wait_for(lambda: readyz_ok(stack), 120, "broker ready after the test put its token back")


def _token_recovery(stack, old_token):
    assert not token_valid(stack, old_token)
    env_before = stack.env_file.read_text()
    pid = broker_pid(stack)

    check = stack.run(TOKEN, check=True, extra_vars=keys_file_vars(stack))
    assert check.rc == 0, check.output[-3000:]
    assert stack.env_file.read_text() == env_before, "--check changed .env"
    assert broker_pid(stack) == pid, "--check restarted the broker"

    res = stack.run(TOKEN, extra_vars=keys_file_vars(stack), verbosity=3)
    assert res.rc == 0, res.output[-4000:]
    assert res.changed > 0
    new_token = stack.env["VAULT_TOKEN"]
    assert new_token and new_token != old_token
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
    lookup = json.loads(bao(stack, "token", "lookup", "-format=json", token=new_token).stdout)["data"]
    assert "broker-policy" in lookup["policies"] and lookup["renewable"] and lookup["ttl"] > 719 * 3600
    assert lookup["orphan"] is True
    assert broker_pid(stack) != pid
    assert readyz_ok(stack), stack.get("/readyz")
    assert_no_secret(stack, res, old_token, new_token)
    for phase in ("confirm", "recover", "verify"):
        assert f"  vault_token_expired  {phase}  " in res.output, f"timeline lacks the {phase} entry"
    # The rest of .env is untouched: only VAULT_TOKEN changed.
    before = [line for line in env_before.splitlines() if not line.startswith("VAULT_TOKEN=")]
    after = [line for line in stack.env_file.read_text().splitlines() if not line.startswith("VAULT_TOKEN=")]
    assert before == after

    again = stack.run(TOKEN, extra_vars=keys_file_vars(stack))
    assert again.rc == 0 and again.changed == 0


def test_vault_stopped_recovered(stack):
    """Runbook 3 "Vault sealed or unreachable": the stack's Vault process is stopped; the
    playbook starts it (it comes back sealed), unseals it and restarts the broker."""
    rt = ProcessRuntime(str(stack.dir), timeout=60)
    rt.stop("vault")
    try:
        assert bao(stack, "status", check=False).returncode not in (0, 2), "Vault still answers"
        pid = broker_pid(stack)
        res = stack.run(SEALED, extra_vars=keys_file_vars(stack), verbosity=3)
        assert res.rc == 0, res.output[-4000:]
        assert res.changed > 0
        assert seal_status(stack)["sealed"] is False
        assert broker_pid(stack) != pid
        assert readyz_ok(stack), stack.get("/readyz")
        assert "started the vault service" in res.output
        assert_no_secret(stack, res)
    finally:
        if not readyz_ok(stack):
            rt.start("vault")
            stack.run(SEALED, extra_vars=keys_file_vars(stack))
            wait_for(lambda: readyz_ok(stack), 120, "broker ready after the test put Vault back")

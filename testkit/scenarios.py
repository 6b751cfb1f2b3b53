"""The incident scenarios of the runbook, written once, run on every runtime.

Each scenario takes a stack handle (testkit/stacks.py: `Stack` on the process runtime, deployed by
tests/e2e/conftest.py; `ComposeStack` on the compose runtime, tests/e2e_compose/conftest.py),
injects the fault for real through the handle (`stack.runtime()`: a process stopped by its
supervisord or a container stopped on the Docker engine; Vault sealed through its API; files
replaced and nginx reloaded through `cullis.broker.stack_service`), runs the repository's playbook
exactly as an operator does, asserts the runbook's Verify bullets, that no secret of the stack
appears in the output, and that a run on the healthy (or recovered) stack reports changed=0.

Every scenario leaves the stack healthy: the next scenario gets the same stack.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from testkit.ansible import run_module, run_playbook
from testkit.pki import CA, now
from testkit.process import wait_for

POSTGRES_DOWN = "playbooks/incidents/postgres_down.yml"
VAULT_SEALED = "playbooks/incidents/vault_sealed.yml"
TLS_EXPIRED = "playbooks/incidents/tls_expired.yml"
ORG_COMPROMISE = "playbooks/incidents/org_compromise.yml"


# ---- shared assertions -----------------------------------------------------------------------

def assert_no_secret(stack, result, *extra: str) -> None:
    for value in [*stack.secret_values(), *extra]:
        assert value not in result.output, "a secret of the stack appeared in the playbook output"


def ready(stack, check: str = "redis") -> bool:
    """/readyz through nginx answers 200 and names `check` ok."""
    try:
        status, body = stack.get("/readyz", timeout=5)
    except OSError:
        return False
    return status == 200 and isinstance(body, dict) and body.get("checks", {}).get(check) == "ok"


def assert_healthy(stack) -> None:
    assert stack.get("/health")[0] == 200
    assert ready(stack), stack.get("/readyz")


def run_ok(stack, playbook, **kw):
    res = stack.run(playbook, **kw)
    assert res.rc == 0, f"{playbook} failed (rc={res.rc}):\n{res.output[-4000:]}"
    assert_no_secret(stack, res)
    return res


def triage(stack, remediate: bool = False):
    """Run triage.yml; returns (result, report dict) - the report is the JSON the run wrote."""
    reports = stack.dir / "reports"
    before = set(reports.glob("triage-*.json")) if reports.exists() else set()
    res = stack.run("playbooks/triage.yml", extra_vars={"remediate": remediate} if remediate else None)
    new = sorted(set(reports.glob("triage-*.json")) - before)
    assert new, f"triage wrote no report (rc={res.rc}):\n{res.output[-3000:]}"
    report = json.loads(new[-1].read_text())
    md = new[-1].with_suffix(".md").read_text()
    for value in stack.secret_values():
        assert value not in md and value not in new[-1].read_text(), "a secret reached the triage report"
    return res, report


def named(report, when="before") -> list[str]:
    return [i["id"] for i in report[when]["incidents"]]


def host_of(report, incident: str, when="before") -> str:
    return next(i for i in report[when]["incidents"] if i["id"] == incident)["host"]


def broker_pid(stack):
    """The broker's PID as its runtime reports it (supervisord's child, or the container's init)."""
    return stack.runtime().status("broker")["pid"]


# ---- runbook section 2: Postgres down ---------------------------------------------------------

def postgres_down_restart(stack) -> None:
    """§2 Recover 1 + Verify: on a healthy stack postgres_down.yml changes nothing; Postgres stopped
    through the stack's runtime -> pg_isready fails, the playbook starts it, the broker reconnects."""
    healthy = stack.run(POSTGRES_DOWN)
    assert healthy.rc == 0 and healthy.changed == 0, healthy.output[-3000:]
    assert stack.runtime().stop("postgres") is True
    res = stack.run(POSTGRES_DOWN)
    assert res.rc == 0, res.output[-3000:]
    assert res.changed > 0
    assert "class: down" in res.output and "logged in" in res.output
    assert_no_secret(stack, res)
    assert stack.runtime().status("postgres")["running"]
    assert_ready_db(stack)


def assert_ready_db(stack) -> None:
    status, body = stack.get("/readyz")
    assert status == 200 and body["checks"]["database"] == "ok", body


# ---- Backups: backup set, tampered set refused, restore ---------------------------------------

def take_backup(stack):
    res = stack.run("playbooks/backup.yml")
    assert res.rc == 0, res.output[-3000:]
    assert_no_secret(stack, res)
    sets = sorted((stack.dir / "backups").glob("set-*"))
    return res, sets[-1]


def drop_pre_restore(stack) -> None:
    for name in stack.psql("SELECT datname FROM pg_database WHERE datname LIKE 'agent_trust\\_pre\\_restore\\_%'").split():
        stack.psql(f'DROP DATABASE "{name}" WITH (FORCE)', db="postgres")


def tampered_copy(set_dir: Path) -> Path:
    """A copy of a backup set whose encrypted Postgres dump has one byte flipped (the manifests kept)."""
    manifest = json.loads((set_dir / "backup-set.json").read_text())
    copy = set_dir.with_name(set_dir.name.replace("set-", "tampered-", 1))
    shutil.copytree(set_dir, copy)
    dump = copy / manifest["postgres"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    return copy


def backup_tamper_restore(stack, tamper: bool = True) -> None:
    """Backups + §2 Recover 3: a verified set (Postgres, Vault, .env); restore.yml refuses without
    confirmation and (tamper=True) refuses a set whose dump was altered, touching nothing; then it
    restores the set: the row written after the backup is gone, /readyz database ok."""
    _res, set_dir = take_backup(stack)
    manifest = json.loads((set_dir / "backup-set.json").read_text())
    assert manifest["postgres"].endswith(".dump.enc") and manifest["vault"].endswith(".snap.enc")
    assert (set_dir / "env.enc").exists()
    env_plain = stack.env_file.read_bytes()
    assert env_plain not in (set_dir / "env.enc").read_bytes()
    pg_manifest = json.loads((set_dir / (manifest["postgres"] + ".json")).read_text())
    assert pg_manifest["verification"]["status"] == "ok"

    stack.psql("INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
               "VALUES ('after-backup', 'x', 'x', now())")
    refused = stack.run("playbooks/restore.yml")
    assert refused.rc != 0
    assert stack.psql("SELECT count(*) FROM organizations WHERE org_id = 'after-backup'") == "1"

    if tamper:
        bad = tampered_copy(set_dir)
        try:
            pid = broker_pid(stack)
            refused = stack.run("playbooks/restore.yml", extra_vars={"confirm": True, "backup_set": str(bad)})
            assert refused.rc != 0, "restore.yml accepted a backup set whose dump was altered"
            assert refused.changed == 0, refused.output[-3000:]
            assert_no_secret(stack, refused)
            assert stack.psql("SELECT count(*) FROM organizations WHERE org_id = 'after-backup'") == "1"
            assert broker_pid(stack) == pid, "a refused restore stopped the broker"
        finally:
            shutil.rmtree(bad, ignore_errors=True)

    res = stack.run("playbooks/restore.yml", extra_vars={"confirm": True, "backup_set": str(set_dir)})
    assert res.rc == 0, res.output[-3000:]
    assert_no_secret(stack, res)
    assert stack.psql("SELECT count(*) FROM organizations WHERE org_id = 'after-backup'") == "0"
    assert "data-loss window" in res.output
    assert_ready_db(stack)
    drop_pre_restore(stack)


def dr_drill(stack, staging_inventory, staging_dir: Path, extra_vars: dict | None = None) -> None:
    """Backups, the quarterly drill: a fresh backup set of `stack`, then playbooks/dr_drill.yml with
    the staging inventory (same runtime, other ports and state directory): staging deployed, the
    source's Postgres and Vault restored into it, the smoke test passes, staging torn down. The
    source stack is left as it was (ready). `extra_vars` reach the drill's inner plays: a
    command-line APP_VERSION proves it (issue 14)."""
    take_backup(stack)
    extra = dict(extra_vars or {}, dr_source_stack_dir=str(stack.dir))
    version = f"dr-{uuid.uuid4().hex[:8]}"
    extra["cullis_broker_extra_environment"] = dict(extra.get("cullis_broker_extra_environment") or {},
                                                    APP_VERSION=version)
    env = stack.playbook_env()
    try:
        res = run_playbook("playbooks/dr_drill.yml", inventory=staging_inventory, extra_vars=extra, env=env,
                           timeout=3600)
    finally:
        if staging_dir.exists():  # the drill tears staging down itself; this only runs if it could not
            run_playbook("playbooks/down.yml", inventory=staging_inventory, extra_vars=dict(extra, purge=True),
                         env=env, timeout=600)
    report = [r.get("msg") for r in res.task_results("DR drill report")]
    assert res.rc == 0, report or res.output[-4000:]
    assert "DR DRILL PASS" in str(report) and "smoke test passed" in str(report)
    assert f"staging broker: version {version}" in str(report), report  # the -e vars reached the inner runs
    assert_no_secret(stack, res)
    assert not staging_dir.exists()
    assert_ready_db(stack)


# ---- runbook section 3: Vault sealed ----------------------------------------------------------

def bao(stack, *args, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(BAO_ADDR=stack.vault_addr, BAO_CACERT=str(stack.ca_path))
    if token:
        env["BAO_TOKEN"] = token
    binary = os.path.join(os.path.dirname(sys.executable), "bao")
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, check=check, timeout=60)


def seal_status(stack) -> dict:
    return json.loads(bao(stack, "status", "-format=json", check=False).stdout)


def vault_answers(stack) -> bool:
    """Vault answers its status API (sealed or not: `bao status` exits 0 or 2)."""
    return bao(stack, "status", "-format=json", check=False).returncode in (0, 2)


def kms_ready(stack) -> bool:
    return ready(stack, "kms")


def vault_sealed(stack, keys_vars: dict) -> None:
    """Runbook 3 Recover (sealed): seal the stack's Vault -> vault_sealed.yml --check changes nothing
    -> for real with -vvv (unsealed, broker restarted, no key in the output) -> again changed=0."""
    root = stack.vault_keys["root_token"]
    bao(stack, "operator", "seal", token=root)
    try:
        assert seal_status(stack)["sealed"] is True
        pid = broker_pid(stack)

        check = stack.run(VAULT_SEALED, check=True, extra_vars=keys_vars)
        assert check.rc == 0, check.output[-3000:]
        st = seal_status(stack)
        assert st["sealed"] is True and st["progress"] == 0, "--check submitted a key"
        assert broker_pid(stack) == pid, "--check restarted the broker"

        res = stack.run(VAULT_SEALED, extra_vars=keys_vars, verbosity=3)
        assert res.rc == 0, res.output[-4000:]
        assert res.changed > 0
        assert seal_status(stack)["sealed"] is False
        assert broker_pid(stack) != pid, "the broker was not restarted after the unseal"
        assert kms_ready(stack), stack.get("/readyz")
        assert_no_secret(stack, res)
        for phase in ("confirm", "recover", "verify"):
            assert f"  vault_sealed  {phase}  " in res.output, f"timeline lacks the {phase} entry"

        again = stack.run(VAULT_SEALED, extra_vars=keys_vars)
        assert again.rc == 0 and again.changed == 0
    finally:
        if seal_status(stack).get("sealed") or not kms_ready(stack):
            stack.run(VAULT_SEALED, extra_vars=keys_vars)  # put the stack back for the next test
            wait_for(lambda: kms_ready(stack), 120, "broker ready after the test put Vault back")


# ---- runbook section 4: Redis down ------------------------------------------------------------

def redis_stopped(stack, host: str = "localhost") -> None:
    """Runbook section 4 (Recover 1): Redis stopped through the runtime; triage names redis_down on
    `host`; triage -e remediate=true restarts it and verifies /readyz redis ok (after: no incident)."""
    stack.runtime().stop("redis")
    _, report = triage(stack)
    assert "redis_down" in named(report)
    assert host_of(report, "redis_down") == host
    assert report["before"]["snapshot"]["redis"]["state"] == "down"

    res, report = triage(stack, remediate=True)
    assert res.rc == 0, res.output[-4000:]
    assert "redis_down" in report["remediated"] and named(report, "after") == []
    assert_healthy(stack)


# ---- runbook section 5: TLS cert expired ------------------------------------------------------

def served_fingerprint(stack) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    port = stack.ports["cullis_nginx_port"]
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def fingerprint(issued) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding
    return hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).hexdigest()


def health_verified(stack, ca_file) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))  # CA, host name and dates all checked
    with urllib.request.urlopen(stack.public_url + "/health", context=ctx, timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
        return resp.status


def serve_expired(stack):
    """Replace nginx's certificate with an expired one and reload nginx through the stack's
    runtime (cullis.broker.stack_service state=reloaded); returns it."""
    expired = CA.create("Expired Test CA").server_cert("127.0.0.1", "localhost", days=30,
                                                        not_before=now() - dt.timedelta(days=45))
    (stack.dir / "tls" / "nginx.pem").write_bytes(expired.cert_pem)
    (stack.dir / "tls" / "nginx-key.pem").write_bytes(expired.key_pem)
    res = run_module("stack_service", {"name": "nginx", "state": "reloaded", **stack.module_args()},
                     env=stack.playbook_env())
    assert not res.failed, res.output
    wait_for(lambda: served_fingerprint(stack) == fingerprint(expired), 20, "nginx serving the expired cert")
    return expired


def tls_expired_local_ca(stack) -> None:
    """Runbook 5 with the stack's own local CA: nginx serves an expired certificate (verification
    fails), tls_expired.yml re-issues it and reloads nginx, /health verifies; again changed=0."""
    serve_expired(stack)
    with pytest.raises(urllib.error.URLError) as failure:
        health_verified(stack, stack.ca_path)
    assert isinstance(failure.value.reason, ssl.SSLCertVerificationError)
    fixed = stack.run(TLS_EXPIRED, extra_vars={"cullis_tls_mode": "selfsigned"})
    assert fixed.rc == 0, fixed.output[-3000:]
    assert "local CA certificate re-issued; nginx reloaded" in fixed.output
    assert_no_secret(stack, fixed)
    assert health_verified(stack, stack.ca_path) == 200
    again = stack.run(TLS_EXPIRED, extra_vars={"cullis_tls_mode": "selfsigned"})
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


# ---- runbook section 6: org compromise ---------------------------------------------------------

N_AGENTS = 20


def org_compromise(stack, tmp_path, extra_vars: dict | None = None, n_agents: int = N_AGENTS) -> tuple:
    """Runbook section 6 on `stack`: an org of `n_agents` agents onboarded through nginx, holding a
    live token, contained by org_compromise.yml as an operator runs it (-vvv); a second run changes
    nothing. Returns both runs' results."""
    from testkit.broker_orgs import (LOGIN_HITS, admin_client, agent_session, auth_limit, db_query,
                                     login_error, onboard_org, org_secret, wait_for_rate_budget)

    # One run of the playbook logs in 4 times (1 revoked + cullis_compromise_login_sample 3), one
    # auth.token hit each (agent_login seeds the DPoP nonce), two when the nonce must be fetched.
    playbook_hits = 4 * LOGIN_HITS

    def wait_for_logins(env: dict, hits: int) -> float:
        """The broker's real login limit (10/min per client IP) is kept: wait until `hits` fit."""
        return wait_for_rate_budget(env["REDIS_URL"], {"auth.token": (auth_limit(env), hits)})

    extra_vars = extra_vars or {}
    env = stack.env
    url, ca, admin = stack.public_url, str(stack.public_ca_path), env["ADMIN_SECRET"]
    org, identity_dir = f"e2e-compromise-{uuid.uuid4().hex[:8]}", tmp_path / "ids"
    # publish-agent allows 30/min and logins 10/min per client IP; other tests may have used them.
    onboarded = onboard_org(None, org, identity_dir, n_agents, env["REDIS_URL"], url=url, admin_secret=admin,
                            ca_path=ca)
    serials = {a["cert_serial_hex"] for a in onboarded["agents"]}
    assert len(serials) == n_agents

    live_agent = f"a{n_agents - 1:02d}"
    live = agent_session(url, identity_dir, live_agent, ca)  # a token issued before the incident
    live.login()
    assert live.request("GET", "/v1/federation/agents").status == 200
    wait_for_logins(env, playbook_hits)

    first = stack.run(ORG_COMPROMISE, extra_vars={"org_id": org, "identity_dir": str(identity_dir), **extra_vars},
                      verbosity=3)
    assert first.rc == 0 and first.failed == 0, first.output[-4000:]
    for value in [*stack.secret_values(), org_secret(identity_dir)]:
        assert value not in first.output, "a secret appeared in the playbook output"

    client = admin_client(None, admin, url=url, ca_path=ca)
    revoked = client.admin_get("/v1/admin/certs/revoked", query={"org_id": org}).json()
    assert {r["serial_hex"] for r in revoked} == serials
    assert client.admin_get(f"/v1/registry/orgs/{org}").json()["status"] == "suspended"
    assert {s for (s,) in db_query(env["DATABASE_URL"], "SELECT status FROM bindings WHERE org_id = %s",
                                    (org,))} == {"revoked"}
    resp = live.request("GET", "/v1/federation/agents")
    assert (resp.status, resp.detail) == (401, "Token has been revoked")
    wait_for_logins(env, LOGIN_HITS)
    assert login_error(url, identity_dir, "a05", ca) == (403, f"Organisation '{org}' not yet approved")
    wait_for_logins(env, playbook_hits)

    second = stack.run(ORG_COMPROMISE, extra_vars={"org_id": org, "identity_dir": str(identity_dir), **extra_vars},
                       verbosity=3)
    assert second.rc == 0 and second.changed == 0, second.output[-4000:]
    for value in [*stack.secret_values(), org_secret(identity_dir)]:
        assert value not in second.output, "a secret appeared in the playbook output"
    assert stack.get("/readyz")[0] == 200
    return first, second

"""Issue 11: the runbook's incidents on the six-host split topology, each fault injected INTO its
host's container (docker exec), recovered by the incident playbook (or triage -e remediate=true)
run from the controller over SSH, verified, and rerun with changed=0.

Shares the session's deployed split topology (conftest `split_stack`); every test leaves it healthy.
The incident playbooks are those of role cullis.broker.incident (merged from wip-inc).
"""
from __future__ import annotations

import json
import secrets
import ssl
import time
import urllib.error
import urllib.request

import pytest

from testkit.testbed import _tar_of


pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"
SUPERVISORCTL = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf"

def state(split_stack, host: str, service: str) -> str:
    out = split_stack.sh(host, f"{SUPERVISORCTL} status {service}")
    return out.split()[1] if len(out.split()) > 1 else out


def readyz_answer(split_stack, ca=None) -> tuple[int, str]:
    """/readyz through the proxy: (status, the start of the body when it is not 200) (0: no answer)."""
    ctx = ssl.create_default_context(cafile=str(ca or split_stack.controller_dir / "ca.pem"))
    try:
        with urllib.request.urlopen(f"{split_stack.public_url}/readyz", context=ctx, timeout=10) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read(400).decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:  # refused, or a certificate that does not verify (expired)
        return 0, str(e)[:200]


def readyz(split_stack, ca=None) -> int:
    return readyz_answer(split_stack, ca)[0]


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_healthy(split_stack) -> None:
    wait(lambda: readyz(split_stack) == 200, 90, "/readyz 200 through the proxy")
    for host, service in (("postgres", "postgres"), ("redis", "redis"), ("vault", "vault"),
                          ("broker1", "broker"), ("broker2", "broker"), ("proxy", "nginx")):
        assert state(split_stack, host, service) == "RUNNING", (host, service)


def run_twice(split_stack, playbook: str, extra_vars: dict | None = None):
    """The recovery, then the rerun: changed=0."""
    first = split_stack.run(playbook, extra_vars=extra_vars)
    assert first.rc == 0, first.output[-4000:]
    assert first.changed > 0, f"{playbook} changed nothing on a broken stack"
    again = split_stack.run(playbook, extra_vars=extra_vars)
    assert again.rc == 0 and again.changed == 0, (again.stats, again.output[-3000:])
    return first, again


def secret_values(split_stack) -> list[str]:
    env = split_stack.env_of("broker1")
    keys = json.loads((split_stack.controller_dir / "vault-keys.json").read_text())
    return [env[k] for k in ("ADMIN_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "VAULT_TOKEN")] + \
        [keys["root_token"], *keys["unseal_keys_b64"]]


def assert_no_secret(split_stack, *results) -> None:
    values = secret_values(split_stack)
    for res in results:
        for value in values:
            assert value not in res.output, "a secret of the split stack appeared in the playbook output"


def test_postgres_stopped_on_its_host(split_stack):
    """Runbook §2 (Recover 1): Postgres stopped on the db host; postgres_down.yml restarts it there."""
    split_stack.sh("postgres", f"{SUPERVISORCTL} stop postgres")
    first, again = run_twice(split_stack, "playbooks/incidents/postgres_down.yml")
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)


def test_vault_sealed_on_its_host(split_stack, tmp_path):
    """Runbook §3 (sealed): Vault sealed on its host; vault_sealed.yml unseals it with the keys file
    kept on the controller (never copied to a host). A copy of the keys file that others can read is
    refused on the controller before any key is sent: Vault stays sealed, nothing changed."""
    keys_file = split_stack.controller_dir / "vault-keys.json"
    root = json.loads(keys_file.read_text())["root_token"]
    res = split_stack.bed.exec("vault", [f"/opt/cullis/openbao/bin/bao", "operator", "seal"], environment={
        "BAO_ADDR": "https://vault:8200", "BAO_CACERT": f"{STACK_DIR}/tls/ca.pem", "BAO_TOKEN": root})
    assert res.rc == 0, res.output
    # the keys file is checked ON THE CONTROLLER (vault_unseal's action plugin): readable by others -> refused
    loose = tmp_path / "vault-keys.json"
    loose.write_bytes(keys_file.read_bytes())
    loose.chmod(0o644)
    refused = split_stack.run("playbooks/incidents/vault_sealed.yml", extra_vars={"vault_keys_file": str(loose)})
    assert refused.rc != 0 and refused.changed == 0, refused.output[-3000:]
    assert f"keys_file {loose}" in " ".join(refused.output.split()) and "insecure_keys_file" in refused.output
    status = split_stack.bed.exec("vault", ["/opt/cullis/openbao/bin/bao", "status", "-format=json"], environment={
        "BAO_ADDR": "https://vault:8200", "BAO_CACERT": f"{STACK_DIR}/tls/ca.pem"})
    assert json.loads(status.output)["sealed"] is True, status.output
    first, again = run_twice(split_stack, "playbooks/incidents/vault_sealed.yml",
                             {"vault_keys_file": str(keys_file)})
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)


def test_redis_stopped_on_its_host(split_stack):
    """Runbook §4 (Recover 1): Redis stopped on its host; redis_down.yml restarts it there."""
    split_stack.sh("redis", f"{SUPERVISORCTL} stop redis")
    first, again = run_twice(split_stack, "playbooks/incidents/redis_down.yml")
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)


# ---- runbook section 1: broker killed on ONE of the two broker hosts ------------------------------

def broker_pid(split_stack, host: str) -> str:
    return split_stack.sh(host, f"{SUPERVISORCTL} pid broker").strip()


def triage(split_stack, remediate: bool = False):
    """triage.yml from the controller; returns (result, the JSON report it wrote on the controller)."""
    reports = split_stack.controller_dir / "reports"
    before = set(reports.glob("triage-*.json")) if reports.exists() else set()
    res = split_stack.run("playbooks/triage.yml", extra_vars={"remediate": remediate} if remediate else None)
    new = sorted(set(reports.glob("triage-*.json")) - before)
    assert new, f"triage wrote no report (rc={res.rc}):\n{res.output[-3000:]}"
    return res, json.loads(new[-1].read_text())


def test_broker_killed_on_one_broker_host(split_stack):
    """Runbook §1 (Exit 137, no OOM): kill -9 of the broker on broker2 only. Triage names broker_down
    on broker2 (not broker1) with SIGKILL; triage -e remediate=true restarts the broker THERE only
    (broker1's process untouched) and verifies through the proxy; broker_down.yml then changes nothing."""
    pid1, pid2 = broker_pid(split_stack, "broker1"), broker_pid(split_stack, "broker2")
    assert pid1 not in ("", "0") and pid2 not in ("", "0"), (pid1, pid2)
    assert split_stack.bed.exec("broker2", ["kill", "-9", pid2]).rc == 0
    wait(lambda: state(split_stack, "broker2", "broker") != "RUNNING", 30, "the broker on broker2 to die")

    res, report = triage(split_stack, remediate=True)
    assert res.rc == 0, res.output[-4000:]
    found = {i["id"]: i for i in report["before"]["incidents"]}
    assert "broker_down" in found, report["before"]["incidents"]
    assert found["broker_down"]["host"] == "broker2"  # the host whose broker is down, not both
    broker = report["before"]["snapshot"]["services_by_host"]["broker2"]["broker"]
    assert broker["signal"] == "SIGKILL" and broker["exit_class"] == "killed", broker
    assert report["before"]["snapshot"]["services_by_host"]["broker1"]["broker"]["running"] is True
    assert "broker_down" in report["remediated"] and report["after"]["incidents"] == []
    assert broker_pid(split_stack, "broker1") == pid1, "the healthy broker on broker1 was restarted"
    assert broker_pid(split_stack, "broker2") not in ("", "0", pid2)
    assert_healthy(split_stack)
    again = split_stack.run("playbooks/incidents/broker_down.yml")
    assert again.rc == 0 and again.changed == 0, (again.stats, again.output[-3000:])
    assert_no_secret(split_stack, res, again)


# ---- runbook section 5: the proxy's certificate expired ------------------------------------------

def test_tls_certificate_expired_on_the_proxy(split_stack):
    """Runbook §5 (self-signed mode): nginx on the proxy host serves an expired certificate (same key,
    the stack's CA, dates in the past). tls_expired.yml sees it from the controller (served
    certificate) and in nginx's file (read on the proxy, checked on the controller: the bare host's
    cryptography is too old for tls_check), re-issues it ON the proxy, reloads nginx; rerun changed=0."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from testkit.pki import CA, now

    tls = f"{STACK_DIR}/tls"
    read = lambda name: split_stack.bed.exec("proxy", ["cat", f"{tls}/{name}"], check=True).output.encode()  # noqa: E731
    ca = CA(key=serialization.load_pem_private_key(read("ca-key.pem"), None), cert=x509.load_pem_x509_certificate(read("ca.pem")))
    nginx_key = serialization.load_pem_private_key(read("nginx-key.pem"), None)
    host = split_stack.public_url.split("//")[1].rsplit(":", 1)[0]
    expired = ca.issue(host, sans=[host], key=nginx_key, not_before=now() - dt.timedelta(days=45), days=30)
    mode = split_stack.sh("proxy", f"stat -c %a {tls}/nginx.pem").strip()
    split_stack.bed.hosts["proxy"].container.put_archive(tls, _tar_of({"nginx.pem": (expired.cert_pem, int(mode, 8))}))
    split_stack.sh("proxy", f"{SUPERVISORCTL} signal HUP nginx")
    wait(lambda: readyz(split_stack) == 0, 30, "nginx to serve the expired certificate")

    first, again = run_twice(split_stack, "playbooks/incidents/tls_expired.yml")
    assert "nginx_certificate_file | critical" in " ".join(first.output.split()), first.output[-4000:]
    served = ssl.get_server_certificate((host, split_stack.ports["cullis_nginx_port"]))
    new = x509.load_pem_x509_certificate(served.encode())
    assert new.serial_number != expired.cert.serial_number and new.not_valid_after_utc > now() + dt.timedelta(days=30)
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)


# ---- runbook section 7: admin lockout ----------------------------------------------------------

def admin_status(split_stack, secret: str) -> int:
    req = urllib.request.Request(f"{split_stack.public_url}/v1/registry/orgs", headers={"x-admin-secret": secret})
    ctx = ssl.create_default_context(cafile=str(split_stack.controller_dir / "ca.pem"))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_admin_lockout_on_the_broker_hosts(split_stack):
    """Runbook §7: the ADMIN_SECRET in the .env of both broker hosts is no longer the brokers' (lost).
    Triage names admin_lockout on the broker hosts; admin_lockout.yml writes a new one into .env on
    BOTH broker hosts (0600), resets the Vault admin state by CAS from the first broker host,
    restarts both brokers; x-admin-secret answers 200 with the new secret; rerun changed=0."""
    lost = "lost" + secrets.token_hex(16)
    before = {b: split_stack.env_of(b) for b in ("broker1", "broker2")}
    for broker in ("broker1", "broker2"):
        split_stack.sh(broker, f"sed -i 's/^ADMIN_SECRET=.*/ADMIN_SECRET={lost}/' {STACK_DIR}/.env")
    assert admin_status(split_stack, lost) in (401, 403)

    _, report = triage(split_stack)
    found = {i["id"]: i for i in report["before"]["incidents"]}
    assert list(found) == ["admin_lockout"], report["before"]["incidents"]
    assert found["admin_lockout"]["host"] == "broker1, broker2"

    first, again = run_twice(split_stack, "playbooks/incidents/admin_lockout.yml")
    after = {b: split_stack.env_of(b) for b in ("broker1", "broker2")}
    new = after["broker1"]["ADMIN_SECRET"]
    assert after["broker2"]["ADMIN_SECRET"] == new and new not in (lost, before["broker1"]["ADMIN_SECRET"])
    for broker in ("broker1", "broker2"):  # nothing else in .env changed, mode kept
        assert {k: v for k, v in after[broker].items() if k != "ADMIN_SECRET"} == \
            {k: v for k, v in before[broker].items() if k != "ADMIN_SECRET"}
        assert split_stack.sh(broker, f"stat -c %a {STACK_DIR}/.env").strip() == "600"
    assert admin_status(split_stack, new) == 200
    assert new not in first.output and lost not in first.output
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)


# ---- runbook section 6: org compromise ---------------------------------------------------------

def test_org_compromise_on_split(split_stack, tmp_path):
    """Runbook §6: an org onboarded through the proxy, with a live token, is contained by
    org_compromise.yml from the controller (API/database calls from the first broker host, real
    logins from the controller): certificates revoked, bindings revoked, token refused, org
    suspended; rerun changed=0; the stack stays healthy (only this org is suspended)."""
    from testkit.broker_orgs import (LOGIN_HITS, admin_client, agent_session, auth_limit, login_error, onboard_org,
                                    org_secret, wait_for_rate_budget)

    env = split_stack.env_of("broker1")
    url, ca, admin = split_stack.public_url, str(split_stack.controller_dir / "ca.pem"), env["ADMIN_SECRET"]
    # the controller reaches Redis on the test bed network by the redis host's address
    redis_url = env["REDIS_URL"].replace("@redis:", f"@{split_stack.bed.ip('redis')}:")
    org, identity_dir = f"split-compromise-{secrets.token_hex(4)}", tmp_path / "ids"
    onboarded = onboard_org(None, org, identity_dir, 3, redis_url, url=url, admin_secret=admin, ca_path=ca)
    serials = {a["cert_serial_hex"] for a in onboarded["agents"]}
    live = agent_session(url, identity_dir, "a02", ca)
    live.login()
    assert live.request("GET", "/v1/federation/agents").status == 200
    # the broker's real login limit is kept (10 per minute per client address): both runs of the
    # playbook log in (the revoked agent + the sample), so wait until the whole window is free
    limit = auth_limit(env)
    wait_for_rate_budget(redis_url, {"auth.token": (limit, limit)})

    # two agents log in before and after the suspension (the broker allows 10 logins per minute per IP)
    ev = {"org_id": org, "identity_dir": str(identity_dir), "cullis_compromise_login_sample": 2}
    first, again = run_twice(split_stack, "playbooks/incidents/org_compromise.yml", ev)
    client = admin_client(None, admin, url=url, ca_path=ca)
    revoked = client.admin_get("/v1/admin/certs/revoked", query={"org_id": org}).json()
    assert {r["serial_hex"] for r in revoked} == serials
    assert client.admin_get(f"/v1/registry/orgs/{org}").json()["status"] == "suspended"
    bindings = split_stack.bed.exec("postgres", [
        "/usr/lib/postgresql/15/bin/psql", "-h", f"{STACK_DIR}/postgres/sock", "-p",
        str(split_stack.ports["cullis_postgres_port"]), "-d", "agent_trust", "-Atq", "-c",
        f"SELECT DISTINCT status FROM bindings WHERE org_id = '{org}'"], user="postgres")
    assert bindings.rc == 0 and bindings.output.split() == ["revoked"], bindings.output
    resp = live.request("GET", "/v1/federation/agents")
    assert (resp.status, resp.detail) == (401, "Token has been revoked")
    wait_for_rate_budget(redis_url, {"auth.token": (limit, LOGIN_HITS)})
    assert login_error(url, identity_dir, "a01", ca) == (403, f"Organisation '{org}' not yet approved")
    assert_healthy(split_stack)
    assert_no_secret(split_stack, first, again)
    for res in (first, again):
        assert org_secret(identity_dir) not in res.output

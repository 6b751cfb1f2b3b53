"""Operational behaviour on servers of this module's own (they get stopped, sealed, restarted).

Runbook sections proven here: 1 (broker down: exit codes, /readyz), 2 (Postgres down), 3 (Vault
sealed or unreachable), 7 (admin lockout: dashboard setup/login against Vault), plus the
contract's SIGTERM drain and Vault read-merge-CAS rules.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from testkit.broker import BrokerProcess, http_get
from testkit.process import wait_for
from testkit.services import OpenBaoServer, PostgresServer, RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(test_ca):
    pg = PostgresServer().start()
    redis = RedisServer().start()
    bao = OpenBaoServer(ca=test_ca).start().initialize()
    # An operator field written before the broker's first boot: it must survive every broker write.
    bao.cli("kv", "put", "secret/broker", "operator_note=keep-me", token=bao.root_token)
    yield pg, redis, bao
    for s in (bao, redis, pg):
        s.cleanup()


@pytest.fixture(scope="module")
def ops_broker(servers):
    pg, redis, bao = servers
    b = BrokerProcess(pg, redis, bao)
    yield b
    b.cleanup()


def vault_secret(bao) -> dict:
    out = bao.cli("kv", "get", "-format=json", "secret/broker", token=bao.root_token)
    return json.loads(out.stdout)["data"]


def readyz(b):
    return http_get(b.url + "/readyz")


def wait_ready(b, timeout=30):
    wait_for(lambda: readyz(b)[0] == 200, timeout, "broker readyz", b.proc)


def test_first_boot_patches_vault_without_wiping_fields(servers, ops_broker):
    """Contract section 2: first boot stores the signing key by read-merge-CAS, never a blind replace."""
    _pg, _redis, bao = servers
    secret = vault_secret(bao)
    data, version = secret["data"], secret["metadata"]["version"]
    assert data["operator_note"] == "keep-me"
    assert data["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert data["ca_cert_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert data["admin_bootstrap_token"] and version >= 2
    status, jwks = http_get(ops_broker.url + "/.well-known/jwks.json")
    assert status == 200 and jwks["keys"][0]["alg"] == "RS256" and jwks["keys"][0]["kty"] == "RSA"
    token = data["admin_bootstrap_token"]
    assert token not in ops_broker.log() and ops_broker.admin_secret not in ops_broker.log()
    assert "LIFESPAN: startup steps complete" in ops_broker.log()


def _form(b, path, fields, cookie=None):
    import urllib.parse
    import urllib.request
    req = urllib.request.Request(b.url + path, data=urllib.parse.urlencode(fields).encode(), method="POST")
    if cookie:
        req.add_header("Cookie", cookie)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        r = opener.open(req, timeout=10)
        return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _get_html(b, path, cookie):
    import urllib.request
    req = urllib.request.Request(b.url + path, headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def test_dashboard_setup_login_and_suspend(servers, ops_broker, org_cls):
    """Runbook 7 (admin lockout): setup with the Vault bootstrap token, login, suspend via the dashboard."""
    _pg, _redis, bao = servers
    token = vault_secret(bao)["data"]["admin_bootstrap_token"]
    password = "correct horse battery staple"
    assert _form(ops_broker, "/dashboard/setup", {"token": "wrong", "password": password})[0] == 403
    status, headers, _ = _form(ops_broker, "/dashboard/setup", {"token": token, "password": password})
    assert status == 303
    data = vault_secret(bao)["data"]
    assert data["admin_password_user_set"] == "true" and data["admin_bootstrap_token"] == ""
    assert data["admin_secret_hash"].startswith("$2b$12$") and data["operator_note"] == "keep-me"
    status, _, body = _form(ops_broker, "/dashboard/login", {"password": "wrong password!"})
    assert status == 200 and "Invalid credentials." in body
    status, headers, _ = _form(ops_broker, "/dashboard/login", {"password": password})
    assert status == 303
    cookie_header = headers["set-cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=strict" in cookie_header.replace("Strict", "strict")
    cookie = cookie_header.split(";")[0]
    # an org to suspend
    org = org_cls(ops_broker, "dashorg").create()
    html = _get_html(ops_broker, "/dashboard/orgs", cookie)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert _form(ops_broker, f"/dashboard/orgs/{org.org_id}/suspend", {"csrf_token": "bad"}, cookie)[0] == 403
    status, headers, _ = _form(ops_broker, f"/dashboard/orgs/{org.org_id}/suspend", {"csrf_token": csrf}, cookie)
    assert status == 303 and headers["location"] == "/dashboard/orgs"
    assert org.admin.admin_get(f"/v1/registry/orgs/{org.org_id}").json()["status"] == "suspended"
    _form(ops_broker, f"/dashboard/orgs/{org.org_id}/approve", {"csrf_token": csrf}, cookie)
    assert org.admin.admin_get(f"/v1/registry/orgs/{org.org_id}").json()["status"] == "active"
    # dashboard agent registration: agent + approved binding, then a real login
    issued = org.issue("dash")
    status, _, _ = _form(ops_broker, "/dashboard/agents/register", {
        "csrf_token": csrf, "org_id": org.org_id, "agent_name": "dash", "capabilities": "chat, files",
        "cert_pem": issued.cert_pem.decode()}, cookie)
    assert status == 303
    assert org.session(org.identity("dash", issued)).login()["token_type"] == "DPoP"


def _readyz_during_outage(broker, break_it, restore_it):
    """/readyz while a dependency is broken, then wait for 200 after restoring it (no broker restart)."""
    wait_ready(broker)
    break_it()
    try:
        return readyz(broker)
    finally:
        restore_it()
        wait_ready(broker)


def test_readyz_postgres_down_and_back(servers, ops_broker):
    """Runbook 2: Postgres down -> /readyz 503 database error; back -> 200 without a broker restart."""
    pg = servers[0]
    status, body = _readyz_during_outage(ops_broker, pg.stop, pg.start)
    assert status == 503 and body["status"] == "not_ready"
    assert body["checks"]["database"].startswith("error: ")
    assert "READYZ FAIL [database]" in ops_broker.log()


def test_readyz_redis_down_and_back(servers, ops_broker):
    """Runbook 1 verify: /readyz checks Redis; 503 while it is down, 200 once it is back."""
    redis = servers[1]
    status, body = _readyz_during_outage(ops_broker, redis.stop, redis.start)
    assert status == 503 and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")


def test_readyz_vault_sealed_and_unsealed(servers, ops_broker):
    """Runbook 3: a sealed Vault shows as kms error on /readyz (live check) and recovers by itself."""
    bao = servers[2]

    def unseal():
        bao.unseal()
        bao.wait_active()
    status, body = _readyz_during_outage(ops_broker, bao.seal, unseal)
    assert status == 503
    assert body["checks"] == {"database": "ok", "redis": "ok",
                              "kms": "error: Vault returned HTTP 503 — check broker logs for details"}


def test_startup_with_sealed_vault_exits_3_and_writes_nothing(servers):
    """Runbook 1 (exit 3) + 3: Vault sealed at startup -> LIFESPAN FAILED, exit 3, no blind write."""
    pg, redis, bao = servers
    before = vault_secret(bao)["metadata"]["version"]
    b = BrokerProcess(pg, redis, bao, start=False)
    bao.seal()
    try:
        b.start(wait=False)
        b.proc.popen.wait(60)
        assert b.proc.popen.returncode == 3
        log = b.log()
        assert "Vault read returned HTTP 503" in log
        assert "LIFESPAN FAILED: RuntimeError: Failed to write bootstrap token to Vault" in log
    finally:
        b.cleanup()
        bao.unseal()
        bao.wait_active()
    assert vault_secret(bao)["metadata"]["version"] == before


def test_default_admin_secret_refused_at_import(servers):
    """Contract section 1: the default ADMIN_SECRET is rejected at import (exit 1)."""
    pg, redis, bao = servers
    b = BrokerProcess(pg, redis, bao, start=False, env_overrides={"ADMIN_SECRET": "change-me-in-production"})
    try:
        b.start(wait=False)
        b.proc.popen.wait(60)
        assert b.proc.popen.returncode == 1
        assert "ADMIN_SECRET" in b.log()
    finally:
        b.cleanup()


def test_no_redis_extensions_off_and_rate_limit(servers):
    """In-memory fallback is announced; extensions 404 when off; the login rate limit answers 429."""
    pg, _redis, bao = servers
    b = BrokerProcess(pg, None, bao, env_overrides={"CULLIS_EXTENSIONS": "false", "RATE_LIMIT_AUTH_PER_MINUTE": "3"})
    try:
        assert "REDIS_URL is empty" in b.log()
        status, body = readyz(b)
        assert status == 200 and body["checks"]["redis"] == "not_configured"
        from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
        c = BrokerClient(b.url, admin_secret=b.admin_secret)
        assert c.admin_get("/v1/admin/agents").status == 404
        assert c.admin_post("/v1/admin/orgs/x/suspend").status == 404
        assert "/v1/admin/agents" in c.request("GET", "/openapi.json").json()["paths"]  # listed, but disabled
        statuses = [c.request("POST", "/v1/auth/token", body={"client_assertion": "x"},
                              headers={"DPoP": "x"}) for _ in range(4)]
        assert [r.status for r in statuses[:3]] == [401, 401, 401]
        assert statuses[3].status == 429
        assert statuses[3].detail == "Rate limit exceeded for 'auth.token': max 3 req/60s"
        assert statuses[3].headers["retry-after"] == "60"
    finally:
        b.cleanup()


def test_admin_lockout_blank_hash_reopens_setup(servers, ops_broker):
    """Runbook 7 (a): `kv patch admin_secret_hash=""` + restart -> a new bootstrap token, setup works again."""
    bao = servers[2]
    bao.cli("kv", "patch", "secret/broker", "admin_secret_hash=", token=bao.root_token)
    ops_broker.restart()
    data = vault_secret(bao)["data"]
    assert data["admin_password_user_set"] == "false" and data["admin_bootstrap_token"]
    assert data["operator_note"] == "keep-me" and data["private_key_pem"]
    status, _, _ = _form(ops_broker, "/dashboard/setup", {"token": data["admin_bootstrap_token"],
                                                          "password": "a brand new password"})
    assert status == 303
    assert _form(ops_broker, "/dashboard/login", {"password": "a brand new password"})[0] == 303


def test_sigterm_drains_then_exits(servers, ops_broker):
    """Contract section 1 signals: SIGTERM -> /readyz 503 draining, then the process exits within 10 s."""
    wait_ready(ops_broker)
    t0 = time.monotonic()
    ops_broker.proc.signal(signal.SIGTERM)
    wait_for(lambda: readyz(ops_broker) == (503, {"status": "draining", "checks": {}}), 5, "draining")
    assert http_get(ops_broker.url + "/health")[0] == 200  # liveness stays green while draining
    try:
        ops_broker.proc.popen.wait(10 - (time.monotonic() - t0))
    except subprocess.TimeoutExpired:
        pytest.fail("broker still running 10 s after SIGTERM")
    ops_broker.restart()
    wait_ready(ops_broker)

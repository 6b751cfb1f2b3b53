"""The collection against a broker that behaves like deployed real Cullis brokers (`quirks_stack`:
broker_src with CULLIS_REAL_BROKER_QUIRKS, see broker_src/README.md "Quirks mode" and
broker-api.md section 6). Each scenario names the runbook section and the quirk it meets:

- org compromise (runbook 6) with the default settings: per-org write race (point 20), no admin
  extensions (point 1), verbatim serials (point 3); first run passes, rerun changed=0;
- the same with 8 concurrent workers: the race happens and the modules' retries absorb it;
- broker down (runbook 1) because SIGTERM only drained it (point 7);
- Vault sealed (runbook 3) behind a green /readyz (point 8);
- Redis down when the broker started (runbook 4): /readyz green with redis not_configured (point 9);
- admin lockout (runbook 7) after the blank-hash trap of runbook 7a;
- revocation of OpenSSL-style serials (point 3).

One quirks stack for the module; every test leaves it healthy for the next one.
"""
from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from testkit.ansible import run_module
from testkit.broker_orgs import LOGIN_HITS, admin_client, auth_limit, login_error, onboard_org, wait_for_rate_budget
from testkit.process import wait_for

from test_incidents_core import assert_healthy, named, ready, run_ok, runtime, set_env_value, triage  # noqa: E402
from test_org_compromise import contain_an_org  # noqa: E402
from test_vault_incidents import bao, keys_file_vars, seal_status  # noqa: E402

pytestmark = pytest.mark.slow


def broker_log(stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((stack.dir / "logs").glob("broker*")))


def test_the_broker_runs_in_quirks_mode(quirks_stack):
    """The switch reached the deployed broker (else every other test here would prove nothing)."""
    assert "QUIRKS: behaving like deployed real brokers: admin_lockout, no_extensions" in broker_log(quirks_stack)
    admin = admin_client(None, quirks_stack.env["ADMIN_SECRET"], url=quirks_stack.public_url,
                         ca_path=str(quirks_stack.public_ca_path))
    assert admin.admin_get("/v1/admin/agents").status == 404  # extensions off, like a real broker
    assert_healthy(quirks_stack)


def test_org_compromise_default_settings_first_run_and_rerun(quirks_stack, tmp_path):
    """Runbook 6 with the playbook's defaults (writes serialised per org): passes on the first run,
    the rerun reports changed=0; agent discovery and suspension through the database."""
    first, second = contain_an_org(quirks_stack, tmp_path)
    assert "agent_discovery': 'database" in first.output or '"agent_discovery": "database"' in first.output
    assert "was suspended in the database" in first.output


def _module(stack, name, args):
    env = stack.env
    base = {"broker_url": stack.public_url, "ca_path": str(stack.public_ca_path), "admin_secret": env["ADMIN_SECRET"]}
    return run_module(name, dict(base, **args))


def test_concurrent_revocations_race_and_retries_absorb_it(quirks_stack, tmp_path):
    """Point 20: 8 concurrent workers on one org's bindings and certificates. The broker fails
    racing writes with 500 (rolled back); binding_revoke/cert_revoke retry them and finish."""
    env = quirks_stack.env
    org, ids = f"e2e-race-{uuid.uuid4().hex[:8]}", tmp_path / "ids"
    onboard_org(None, org, ids, 12, env["REDIS_URL"], url=quirks_stack.public_url, admin_secret=env["ADMIN_SECRET"],
                ca_path=str(quirks_stack.public_ca_path))
    secret = (ids / "org-secret").read_text().strip()
    bindings = _module(quirks_stack, "binding_revoke", {"org_id": org, "org_secret": secret, "max_workers": 8,
                                                        "retries": 6})
    assert not bindings.failed, bindings.result.get("msg")
    assert len(bindings.result["revoked"]) == 12 and bindings.result["failures"] == []
    certs = _module(quirks_stack, "cert_revoke", {"org_id": org, "all_agents": True, "max_workers": 8,
                                                  "retries": 6, "db_dsn": env["DATABASE_URL"]})
    assert not certs.failed, certs.result.get("msg")
    assert certs.result["counts"]["revoked"] == 12
    retried = bindings.result["retries"]
    for entry in retried:
        assert entry["outcome"].startswith("HTTP 500") and entry["method"] == "POST"
    warned = [w for w in bindings.result.get("warnings", []) + certs.result.get("warnings", []) if "retry" in w]
    print(f"\nwrite race on the quirks broker: {len(retried)} binding retries, {len(warned)} retry warnings in all")
    assert "IntegrityError" in broker_log(quirks_stack) or not warned  # every retry answered a real race


def test_broker_drained_by_sigterm_is_restarted(quirks_stack):
    """Runbook 1 / point 7: SIGTERM only drains the broker (process alive, /readyz 503 draining
    forever); triage names broker_down; broker_down.yml stops it (grace, then SIGKILL) and starts it."""
    rt = runtime(quirks_stack)
    pid = rt.status("broker")["pid"]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: quirks_stack.get("/readyz", timeout=5) == (503, {"status": "draining", "checks": {}}), 30,
             "draining")
    time.sleep(5)
    assert rt.status("broker")["running"] and rt.status("broker")["pid"] == pid  # still there, still serving
    assert quirks_stack.get("/health")[0] == 200

    _, report = triage(quirks_stack)
    assert "broker_down" in named(report), report["before"]["incidents"]
    res = run_ok(quirks_stack, "playbooks/incidents/broker_down.yml")
    assert res.changed > 0
    assert rt.status("broker")["pid"] != pid
    assert_healthy(quirks_stack)


def test_vault_sealed_behind_a_green_readyz(quirks_stack):
    """Runbook 3 / point 8: Vault sealed but the broker's /readyz stays 200 (keys cached); the seal
    status decides: vault_sealed.yml unseals and restarts the broker; a rerun changes nothing."""
    root = quirks_stack.vault_keys["root_token"]
    bao(quirks_stack, "operator", "seal", token=root)
    try:
        assert seal_status(quirks_stack)["sealed"] is True
        status, body = quirks_stack.get("/readyz")
        assert status == 200 and body["checks"]["kms"] == "ok", body  # the quirk: invisible at runtime
        _, report = triage(quirks_stack)
        assert "vault_sealed" in named(report), report["before"]["incidents"]
        res = run_ok(quirks_stack, "playbooks/incidents/vault_sealed.yml", extra_vars=keys_file_vars(quirks_stack))
        assert res.changed > 0
        assert seal_status(quirks_stack)["sealed"] is False
        assert_healthy(quirks_stack)
        again = run_ok(quirks_stack, "playbooks/incidents/vault_sealed.yml", extra_vars=keys_file_vars(quirks_stack))
        assert again.changed == 0
    finally:
        if seal_status(quirks_stack).get("sealed"):
            for key in quirks_stack.vault_keys["unseal_keys_b64"][:3]:
                bao(quirks_stack, "operator", "unseal", key, check=False)
            runtime(quirks_stack).restart("broker")
            wait_for(lambda: ready(quirks_stack), 120, "broker ready again")


def test_redis_down_when_the_broker_started(quirks_stack):
    """Runbook 4 / point 9: the broker started while Redis was down, fell back to memory silently:
    /readyz 200 with redis not_configured although REDIS_URL is set. Redis is back; the broker
    still runs without it. redis_down.yml names it and restarts the broker; redis ok again."""
    rt = runtime(quirks_stack)
    rt.stop("redis")
    try:
        rt.restart("broker")
        # serving = its startup (and the Redis probe in it) is over
        wait_for(lambda: quirks_stack.get("/health", timeout=5)[0] == 200, 120, "broker up")
    finally:
        rt.start("redis")
    status, body = quirks_stack.get("/readyz")
    assert status == 200 and body["checks"]["redis"] == "not_configured", body  # with Redis up again

    _, report = triage(quirks_stack)
    assert "redis_down" in named(report), report["before"]["incidents"]
    res = run_ok(quirks_stack, "playbooks/incidents/redis_down.yml")
    assert res.changed > 0
    assert_healthy(quirks_stack)  # redis "ok", not "not_configured"
    assert run_ok(quirks_stack, "playbooks/incidents/redis_down.yml").changed == 0


def _vault_kv(stack, method="GET", data=None) -> dict:
    req = urllib.request.Request(f"{stack.vault_addr}/v1/secret/data/broker", method=method,
                                 headers={"X-Vault-Token": stack.vault_keys["root_token"]},
                                 data=json.dumps(data).encode() if data is not None else None)
    if data is not None:
        req.add_header("Content-Type", "application/merge-patch+json")
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(stack.ca_path))) as r:
        return json.loads(r.read() or b"{}")


def _dashboard(stack, path, fields) -> int:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(
        context=ssl.create_default_context(cafile=str(stack.public_ca_path))))
    req = urllib.request.Request(stack.public_url + path, data=urllib.parse.urlencode(fields).encode())
    try:
        return opener.open(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code


def test_admin_lockout_after_the_blank_hash_trap(quirks_stack):
    """Runbook 7: the operator followed 7a on a real broker (blanked admin_secret_hash, restarted):
    the dashboard login now answers 500 and setup says it is complete - and the ADMIN_SECRET is
    lost too. admin_lockout.yml rotates the secret and resets the Vault admin state so that setup
    re-opens: a fresh bootstrap token works, the new password logs in."""
    rt = runtime(quirks_stack)
    data = _vault_kv(quirks_stack)["data"]["data"]
    if data.get("admin_password_user_set") != "true":
        assert _dashboard(quirks_stack, "/dashboard/setup", {"token": data["admin_bootstrap_token"],
                                                             "password": "the first password"}) == 303
    _vault_kv(quirks_stack, "PATCH", {"data": {"admin_secret_hash": ""}})
    rt.restart("broker")
    wait_for(lambda: ready(quirks_stack), 120, "broker ready")
    assert _dashboard(quirks_stack, "/dashboard/login", {"password": "the first password"}) == 500  # the trap
    set_env_value(quirks_stack, "ADMIN_SECRET", "lost" + uuid.uuid4().hex)

    _, report = triage(quirks_stack)
    assert "admin_lockout" in named(report)
    res = run_ok(quirks_stack, "playbooks/incidents/admin_lockout.yml")
    assert res.changed > 0
    data = _vault_kv(quirks_stack)["data"]["data"]
    assert data["admin_password_user_set"] == "false" and data["admin_bootstrap_token"]
    assert _dashboard(quirks_stack, "/dashboard/setup", {"token": data["admin_bootstrap_token"],
                                                         "password": "a brand new password"}) == 303
    assert _dashboard(quirks_stack, "/dashboard/login", {"password": "a brand new password"}) == 303
    assert_healthy(quirks_stack)


def test_revoking_openssl_style_serials(quirks_stack, tmp_path):
    """Point 3: the broker stores serials verbatim and matches only format(serial, 'x'); cert_revoke
    given OpenSSL-style serials (uppercase, zero-padded, colons) normalises them, so the logins
    really stop (401 "Certificate has been revoked")."""
    env = quirks_stack.env
    org, ids = f"e2e-serials-{uuid.uuid4().hex[:8]}", tmp_path / "ids"
    agents = onboard_org(None, org, ids, 2, env["REDIS_URL"], url=quirks_stack.public_url,
                         admin_secret=env["ADMIN_SECRET"], ca_path=str(quirks_stack.public_ca_path))["agents"]
    serial = agents[0]["cert_serial_hex"]
    padded = serial.upper().rjust(40, "0")
    openssl_form = ":".join(padded[i:i + 2] for i in range(0, 40, 2))
    # a broker without the admin agent listing: the serials are checked against the org's
    # certificates in its database
    res = _module(quirks_stack, "cert_revoke",
                  {"org_id": org, "serials": [openssl_form], "db_dsn": env["DATABASE_URL"]})
    assert not res.failed, res.result.get("msg")
    assert [r["serial_hex"] for r in res.result["revoked"]] == [serial]
    admin = admin_client(None, env["ADMIN_SECRET"], url=quirks_stack.public_url,
                         ca_path=str(quirks_stack.public_ca_path))
    assert [r["serial_hex"] for r in admin.admin_get("/v1/admin/certs/revoked", query={"org_id": org}).json()] \
        == [serial]
    # two real logins at the broker's real limit: wait until they fit (the counters are never cleared)
    wait_for_rate_budget(env["REDIS_URL"], {"auth.token": (auth_limit(env), 2 * LOGIN_HITS)})
    assert login_error(quirks_stack.public_url, ids, "a00", str(quirks_stack.public_ca_path)) == \
        (401, "Certificate has been revoked")
    assert login_error(quirks_stack.public_url, ids, "a01", str(quirks_stack.public_ca_path)) == (200, "")

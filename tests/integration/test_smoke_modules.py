"""org_onboard, agent_login and playbooks/smoke.yml against a real broker (testkit `broker`).

Proves the runbook's verify steps that every incident section ends with ("Smoke test one agent
login", sections 1-4) and the protocol checks of section 6 (Agent compromise: a revoked cert
-> 401 "Certificate has been revoked", a revoked binding -> 403), on a real broker process with
real PostgreSQL, Redis and OpenBao. No mocks.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from testkit.ansible import run_module, run_playbook
from testkit.broker_orgs import admin_client, new_org_id, org_secret

def conn(broker) -> dict:
    return {"broker_url": broker.url, "admin_secret": broker.admin_secret}


def onboard(broker, org_id: str, identity_dir: Path, agents, **kw):
    args = dict(conn(broker), org_id=org_id, identity_dir=str(identity_dir),
                agents=[{"name": a} if isinstance(a, str) else a for a in agents])
    return run_module("org_onboard", args, **kw)


def login(broker, identity_dir: Path, agent: str, **kw):
    check = kw.pop("check", False)
    verbosity = kw.pop("verbosity", 0)
    args = {"broker_url": broker.url, "identity_dir": str(identity_dir), "agent": agent}
    args.update(kw)
    return run_module("agent_login", args, check=check, verbosity=verbosity)


def assert_no_secrets(output: str, *secrets):
    for s in secrets:
        assert s and s not in output, "a secret appeared in the ansible output"


@pytest.fixture(scope="module")
def org_a(broker, tmp_path_factory):
    """One org with three agents, onboarded once for the module's tests."""
    d = tmp_path_factory.mktemp("ids") / "org-a"
    org_id = new_org_id("it-a")
    r = onboard(broker, org_id, d, ["sender", "to-revoke-cert", "to-revoke-binding",
                                    {"name": "worker", "capabilities": ["orders.read"], "display_name": "Worker"}],
                verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.changed
    return {"id": org_id, "dir": d, "result": r}


@pytest.fixture(scope="module")
def org_b(broker, tmp_path_factory):
    d = tmp_path_factory.mktemp("ids") / "org-b"
    org_id = new_org_id("it-b")
    r = onboard(broker, org_id, d, ["receiver"])
    assert not r.failed, r.result.get("msg")
    return {"id": org_id, "dir": d, "result": r}


def test_onboarding_creates_org_ca_mastio_agents_and_approved_bindings(broker, org_a):
    res = org_a["result"].result
    assert res["org_created"] is True
    assert res["actions"][:5] == [f"create org {org_a['id']}", "generate org CA", "upload org CA",
                                  "generate mastio key", "pin mastio public key"]
    assert [a["binding_status"] for a in res["agents"]] == ["approved"] * 4
    for a in res["agents"]:
        assert a["cert_serial_hex"] == a["cert_serial_hex"].lower().lstrip("0")
        assert Path(a["dir"], "cert.pem").exists()
        assert oct(os.stat(Path(a["dir"], "key.pem")).st_mode & 0o777) == "0o600"
    # The broker agrees: org active, bindings approved (read with the org's own credentials).
    client = admin_client(broker)
    org = client.admin_get(f"/v1/registry/orgs/{org_a['id']}")
    assert org.status == 200 and org.json()["status"] == "active"
    b = client.request("GET", "/v1/registry/bindings", query={"org_id": org_a["id"]},
                       headers={"x-org-id": org_a["id"], "x-org-secret": org_secret(org_a["dir"])})
    assert b.status == 200
    assert sorted(x["status"] for x in b.json()) == ["approved"] * 4
    worker = [x for x in b.json() if x["agent_id"].endswith("::worker")][0]
    assert worker["scope"] == ["orders.read"]
    # -vvv output carries neither the admin secret nor the generated org secret.
    assert_no_secrets(org_a["result"].output, broker.admin_secret, org_secret(org_a["dir"]))


def test_onboarding_again_is_idempotent_and_check_mode_agrees(broker, org_a):
    again = onboard(broker, org_a["id"], org_a["dir"], ["sender", "to-revoke-cert", "to-revoke-binding",
                                                        {"name": "worker", "capabilities": ["orders.read"]}])
    assert not again.failed, again.result.get("msg")
    assert again.changed is False and again.result["actions"] == []
    checked = onboard(broker, org_a["id"], org_a["dir"], ["sender"], check=True)
    assert not checked.failed and checked.changed is False


def test_check_mode_plans_a_new_org_without_creating_it(broker, tmp_path):
    org_id = new_org_id("it-check")
    r = onboard(broker, org_id, tmp_path / "c", ["x"], check=True)
    assert not r.failed, r.result.get("msg")
    assert r.changed and f"create org {org_id}" in r.result["actions"]
    assert admin_client(broker).admin_get(f"/v1/registry/orgs/{org_id}").status == 404
    assert not (tmp_path / "c").exists()


def test_existing_org_with_unknown_secret_is_refused(broker, org_a, tmp_path):
    r = onboard(broker, org_a["id"], tmp_path / "stranger", ["sender"])
    assert r.failed
    assert "no org secret is known" in r.result["msg"]
    wrong = "not-the-org-secret-" + uuid.uuid4().hex
    r = run_module("org_onboard", dict(conn(broker), org_id=org_a["id"], identity_dir=str(tmp_path / "s2"),
                                       org_secret=wrong, agents=[]), verbosity=3)
    assert r.failed and "rejects the org secret" in r.result["msg"]
    assert_no_secrets(r.output, wrong, broker.admin_secret)


def test_wrong_admin_secret_is_reported_without_echoing_it(broker, tmp_path):
    wrong = "wrong-admin-" + uuid.uuid4().hex
    r = run_module("org_onboard", {"broker_url": broker.url, "admin_secret": wrong, "org_id": new_org_id("it-x"),
                                   "identity_dir": str(tmp_path / "x")}, verbosity=3)
    assert r.failed and "HTTP 403" in r.result["msg"] and "Invalid admin secret" in r.result["msg"]
    assert_no_secrets(r.output, wrong)


def token_requests_since(redis_url: str, t0: float) -> int:
    """POST /v1/auth/token hits the broker's rate limiter recorded (contract: ratelimit:<ip>:auth.token)."""
    import redis
    client = redis.Redis.from_url(redis_url)
    try:
        return client.zcount("ratelimit:127.0.0.1:auth.token", t0, "+inf")
    finally:
        client.close()


def test_login_and_authenticated_call_in_check_mode_cost_one_token_request(broker, redis_server, org_a):
    t0 = time.time() - 0.001
    r = login(broker, org_a["dir"], "worker", list_agents=True, check=True, verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.changed is False
    assert r.result["logged_in"] and r.result["status"] == 200
    claims = r.result["claims"]
    assert claims["agent_id"] == f"{org_a['id']}::worker" and claims["org"] == org_a["id"]
    assert claims["scope"] == ["orders.read"] and "cnf" in claims
    listed = {a["agent_id"] for a in r.result["agents"]["agents"]}
    assert {f"{org_a['id']}::sender", f"{org_a['id']}::worker"} <= listed
    # the token never reaches the result or the -vvv output (its claims do)
    assert "access_token" not in r.result and "eyJ" not in r.output
    # the nonce is prefetched: one of the broker's 10 token requests per minute, not two
    assert token_requests_since(redis_server.url, t0) == 1


def test_message_from_org_a_is_delivered_to_org_b(broker, redis_server, org_a, org_b):
    t0 = time.time() - 0.001
    r = login(broker, org_a["dir"], "sender", send_message={
        "peer_identity_dir": str(org_b["dir"]), "peer_agent": "receiver", "payload": {"text": "hello b"}})
    assert not r.failed, r.result.get("msg")
    msg = r.result["send_message"]
    assert msg["result"] == "delivered"
    assert msg["received"]["payload"] == {"text": "hello b"}
    assert msg["received"]["sender_agent_id"] == f"{org_a['id']}::sender"
    assert token_requests_since(redis_server.url, t0) == 2  # sender + peer (which reuses the nonce)


def test_revoked_certificate_login_is_401(broker, org_a):
    agent = [a for a in org_a["result"].result["agents"] if a["name"] == "to-revoke-cert"][0]
    before = login(broker, org_a["dir"], "to-revoke-cert", expect="failure")
    assert before.failed and "expected the broker to reject the login" in before.result["msg"]
    resp = admin_client(broker).admin_post("/v1/admin/certs/revoke", {
        "serial_hex": agent["cert_serial_hex"], "org_id": org_a["id"], "agent_id": agent["agent_id"],
        "reason": "integration test"})
    assert resp.status == 200, resp.detail
    r = login(broker, org_a["dir"], "to-revoke-cert", expect="failure", expect_status=401,
              expect_detail="Certificate has been revoked")
    assert not r.failed, r.result.get("msg")
    assert (r.result["status"], r.result["detail"]) == (401, "Certificate has been revoked")


def test_revoked_binding_login_is_403_and_onboarding_reapproves(broker, org_a):
    agent = [a for a in org_a["result"].result["agents"] if a["name"] == "to-revoke-binding"][0]
    resp = admin_client(broker).request("POST", f"/v1/registry/bindings/{agent['binding_id']}/revoke",
                                   headers={"x-org-id": org_a["id"], "x-org-secret": org_secret(org_a["dir"])})
    assert resp.status == 200, resp.detail
    # default expect=success: the task fails and names the broker's status and detail
    r = login(broker, org_a["dir"], "to-revoke-binding", expect_status=403)
    assert r.failed
    assert "HTTP 403: No approved binding for this agent and organization" in r.result["msg"]
    assert r.result["status"] == 403
    # onboarding again re-approves the revoked binding (status read first, no 500 on approved ones)
    again = onboard(broker, org_a["id"], org_a["dir"], ["to-revoke-binding"])
    assert not again.failed, again.result.get("msg")
    assert again.result["actions"] == [f"approve binding for {agent['agent_id']}"]
    assert login(broker, org_a["dir"], "to-revoke-binding").result["logged_in"]


def smoke(broker, tmp_path, admin_secret=None, verbosity=0, **extra):
    env_file = tmp_path / "broker.env"
    env_file.write_text(f"OTHER=1\nADMIN_SECRET='{admin_secret or broker.admin_secret}'\n")
    env_file.chmod(0o600)
    extra_vars = {"cullis_broker_public_url": broker.url, "cullis_env_file": str(env_file)}
    extra_vars.update(extra)
    r = run_playbook("playbooks/smoke.yml", inventory="inventories/local", extra_vars=extra_vars,
                     verbosity=verbosity)
    report = r.task_results("Smoke test report")
    assert report, r.output[-3000:]
    lines = report[0]["msg"]
    print("\n".join(lines))
    return r, lines, {line[:18].strip(): (line[19:26].strip(), line[27:]) for line in lines[1:]}


ALL_PASS = {"health": "PASS", "readyz": "PASS", "onboard": "PASS", "login": "PASS", "authenticated call": "PASS",
            "message A -> B": "PASS", "revoked cert": "PASS", "revoked binding": "PASS"}


@pytest.mark.slow
def test_smoke_playbook_all_phases_pass_without_leaking_secrets(broker, redis_server, tmp_path):
    ids = tmp_path / "ids"
    t0 = time.time() - 0.001
    r, lines, phases = smoke(broker, tmp_path, verbosity=3, cullis_smoke_identity_root=str(ids),
                             cullis_smoke_message_required=True)
    assert r.rc == 0 and r.failed == 0, "\n".join(lines)
    assert {k: v[0] for k, v in phases.items()} == ALL_PASS, "\n".join(lines)
    # four logins, one token request each: well inside the broker's 10/min/IP
    assert token_requests_since(redis_server.url, t0) == 4
    org_secrets = [p.read_text().strip() for p in ids.glob("*/org-secret")]
    assert len(org_secrets) == 2
    assert_no_secrets(r.output, broker.admin_secret, *org_secrets)


@pytest.fixture(scope="module")
def deny_broker(pg_server, redis_server, bao_server):
    """A second broker (same database) with the defaults of a production broker that matter to the
    smoke test: POLICY_DEFAULT_DECISION=deny and the real login rate limit of 10/min/IP, counted
    in its own Redis database so the other tests' logins do not spend its budget."""
    from testkit.broker import BrokerProcess
    redis_db1 = SimpleNamespace(url=redis_server.url.rsplit("/", 1)[0] + "/1")
    proc = BrokerProcess(pg_server, redis_db1, bao_server, env_overrides={"POLICY_DEFAULT_DECISION": "deny"})
    yield proc
    proc.cleanup()


@pytest.mark.slow
def test_smoke_requires_the_message_unless_told_and_fits_the_real_rate_limit(deny_broker, tmp_path):
    ids = tmp_path / "ids"
    # by default the cross-org message is required: a policy that denies it fails the smoke test
    r, lines, phases = smoke(deny_broker, tmp_path, cullis_smoke_identity_root=str(tmp_path / "ids-default"))
    assert r.rc != 0, "\n".join(lines)
    assert {k: v[0] for k, v in phases.items()} == dict(ALL_PASS, **{"message A -> B": "FAIL"}), "\n".join(lines)
    assert "policy denies a session" in phases["message A -> B"][1]
    assert "smoke test FAILED: message A -> B" in r.output
    # told that the policy denies it on purpose: SKIPPED with the broker's reason
    t0 = time.time() - 0.001
    r, lines, phases = smoke(deny_broker, tmp_path, cullis_smoke_identity_root=str(ids),
                             cullis_smoke_message_required=False)
    assert r.rc == 0, "\n".join(lines)
    assert {k: v[0] for k, v in phases.items()} == dict(ALL_PASS, **{"message A -> B": "SKIPPED"})
    assert "Policy: policy_default_deny" in phases["message A -> B"][1]
    assert token_requests_since(deny_broker.env["REDIS_URL"], t0) == 4


def test_smoke_reports_fail_and_fails_with_a_wrong_admin_secret(broker, tmp_path):
    wrong = "wrong-" + uuid.uuid4().hex
    r, lines, phases = smoke(broker, tmp_path, admin_secret=wrong)
    assert r.rc != 0
    assert phases["health"][0] == "PASS"
    assert phases["onboard"][0] == "FAIL" and "Invalid admin secret" in phases["onboard"][1]
    assert phases["revoked cert"] == ("FAIL", "not reached: onboarding failed")
    assert all(phases[p][0] == "FAIL" for p in ("login", "authenticated call", "message A -> B", "revoked binding"))
    assert "smoke test FAILED: onboard" in r.output
    assert_no_secrets(r.output, wrong)

"""cert_revoke, binding_revoke, org_state, agent_token_invalidate and playbooks/incidents/org_compromise.yml
against real brokers (testkit `broker`, plus one with CULLIS_EXTENSIONS=false like a real Cullis broker)
on real PostgreSQL, Redis and OpenBao. No mocks.

Every test here proves part of runbook section 6 "Agent compromise - revoke everything for one org".
"""
from __future__ import annotations

import time

import pytest

from testkit.ansible import run_module, run_playbook
from testkit.broker import BrokerProcess
from testkit import broker_orgs
from testkit.broker_orgs import (
    LOGIN_HITS, admin_client, auth_limit, db_query, new_org_id, onboard_org, org_secret, wait_for_rate_budget)
from testkit.process import free_port

N_AGENTS = 20
PLAYBOOK = "playbooks/incidents/org_compromise.yml"


@pytest.fixture(scope="module")
def plain_broker(pg_server, redis_server, bao_server):
    """A broker without this project's extension endpoints: no agent listing, no suspend API."""
    proc = BrokerProcess(pg_server, redis_server, bao_server,
                         env_overrides={"CULLIS_EXTENSIONS": "false", "RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    yield proc
    proc.cleanup()


def conn(broker, **extra) -> dict:
    return dict({"broker_url": broker.url, "admin_secret": broker.admin_secret}, **extra)


def revoked_serials(broker, org_id) -> set[str]:
    resp = admin_client(broker).admin_get("/v1/admin/certs/revoked", query={"org_id": org_id})
    assert resp.status == 200, resp.detail
    return {r["serial_hex"] for r in resp.json()}


def org_status(broker, org_id) -> str:
    resp = admin_client(broker).admin_get(f"/v1/registry/orgs/{org_id}")
    assert resp.status == 200, resp.detail
    return resp.json()["status"]


def agent_session(broker, identity_dir, name):
    return broker_orgs.agent_session(broker.url, identity_dir, name)


def login_error(broker, identity_dir, name):
    return broker_orgs.login_error(broker.url, identity_dir, name)


def assert_no_secrets(output: str, *secrets):
    for secret in secrets:
        assert secret and secret not in output, "a secret appeared in the ansible output"


# ---- cert_revoke on a small org ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_org(broker, redis_server, tmp_path_factory):
    identity_dir = tmp_path_factory.mktemp("ids") / "small"
    org_id = new_org_id("it-revoke")
    result = onboard_org(broker, org_id, identity_dir, 6, redis_server)
    serials = {a["name"]: a["cert_serial_hex"] for a in result["agents"]}
    return {"id": org_id, "dir": identity_dir, "serials": serials}


def openssl_form(serial_hex: str) -> str:
    """The way `openssl x509 -serial` / browsers print it: uppercase, zero-padded bytes, colons."""
    padded = serial_hex.zfill(len(serial_hex) + len(serial_hex) % 2).upper()
    return ":".join(["00"] + [padded[i:i + 2] for i in range(0, len(padded), 2)])


def test_cert_revoke_normalises_is_idempotent_and_blocks_login(broker, small_org):
    """Runbook section 6 step 2: the serial reaches the broker in the form logins match."""
    org, serial = small_org["id"], small_org["serials"]["a00"]
    args = conn(broker, org_id=org, serials=[openssl_form(serial)], reason="it test")

    plan = run_module("cert_revoke", args, check=True)
    assert not plan.failed, plan.result.get("msg")
    assert plan.changed and [t["serial_hex"] for t in plan.result["would_revoke"]] == [serial]
    assert serial not in revoked_serials(broker, org), "check mode revoked something"

    first = run_module("cert_revoke", args, verbosity=3)
    assert not first.failed, first.result.get("msg")
    assert first.changed and [t["serial_hex"] for t in first.result["revoked"]] == [serial]
    assert serial in revoked_serials(broker, org)
    assert_no_secrets(first.output, broker.admin_secret)

    again = run_module("cert_revoke", args)
    assert not again.failed and not again.changed
    assert [t["serial_hex"] for t in again.result["already_revoked"]] == [serial]
    assert login_error(broker, small_org["dir"], "a00") == (401, "Certificate has been revoked")


def test_cert_revoke_by_certificate_file(broker, small_org):
    """Runbook section 6 step 2, revoking from the certificate an operator holds."""
    cert = small_org["dir"] / "agents" / "a01" / "cert.pem"
    r = run_module("cert_revoke", conn(broker, certs=[str(cert)]))
    assert not r.failed, r.result.get("msg")
    assert r.result["revoked"] == [{"serial_hex": small_org["serials"]["a01"], "org_id": small_org["id"],
                                    "agent_id": f"{small_org['id']}::a01"}]
    assert login_error(broker, small_org["dir"], "a01") == (401, "Certificate has been revoked")


def test_cert_revoke_typo_in_a_serial_revokes_nothing(broker, small_org):
    """Runbook section 6: a bad entry in the list stops the run before anything is revoked."""
    good = small_org["serials"]["a02"]
    r = run_module("cert_revoke", conn(broker, org_id=small_org["id"], serials=[good, "0a:1g:ff"]))
    assert r.failed
    assert "nothing was revoked" in r.result["msg"] and "'0a:1g:ff'" in r.result["msg"]
    assert good not in revoked_serials(broker, small_org["id"])
    thumb = run_module("cert_revoke", conn(broker, org_id=small_org["id"], serials=["ab" * 32]))
    assert thumb.failed and "thumbprint" in thumb.result["msg"]


def test_cert_revoke_unknown_org_wrong_secret_unreachable(broker, small_org):
    """Runbook section 6 (and 7, admin secret): clear errors, nothing half-done."""
    ghost = new_org_id("it-ghost")
    r = run_module("cert_revoke", conn(broker, org_id=ghost, serials=["0a1b"]))
    assert r.failed and f"organization '{ghost}' not found" in r.result["msg"]
    assert revoked_serials(broker, ghost) == set()

    wrong = "wrong-admin-secret-" + "q" * 12
    r = run_module("cert_revoke", {"broker_url": broker.url, "admin_secret": wrong, "org_id": small_org["id"],
                                   "all_agents": True}, verbosity=3)
    assert r.failed and "rejected the admin secret" in r.result["msg"]
    assert_no_secrets(r.output, wrong)

    r = run_module("cert_revoke", {"broker_url": f"http://127.0.0.1:{free_port()}", "admin_secret": wrong,
                                   "org_id": small_org["id"], "serials": ["0a1b"], "timeout": 3})
    assert r.failed and "unreachable" in r.result["msg"] and "nothing was revoked" in r.result["msg"]


def test_cert_revoke_partial_failure_reports_what_succeeded(broker, pg_server, small_org):
    """Runbook section 6: a revocation the broker cannot store (injected database fault) fails the
    task, and the task still lists the serials that were revoked."""
    org = small_org["id"]
    doomed = "f00d" + small_org["serials"]["a05"][:6]
    fine = ["e1" + small_org["serials"]["a05"][:6], "e2" + small_org["serials"]["a05"][:6]]
    fn = f"it_refuse_{doomed}"
    db_query(pg_server.sqlalchemy_url, f"""
        CREATE FUNCTION {fn}() RETURNS trigger AS $$
        BEGIN IF NEW.serial_hex = '{doomed}' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER {fn} BEFORE INSERT ON revoked_certs FOR EACH ROW EXECUTE FUNCTION {fn}();""")
    try:
        r = run_module("cert_revoke", conn(broker, org_id=org, serials=fine + [doomed], allow_unknown_serials=True))
    finally:
        db_query(pg_server.sqlalchemy_url, f"DROP TRIGGER {fn} ON revoked_certs; DROP FUNCTION {fn}();")
    assert r.failed and r.changed
    assert "1 of 3 revocations failed (2 revoked" in r.result["msg"]
    assert sorted(t["serial_hex"] for t in r.result["revoked"]) == sorted(fine)
    assert [f["serial_hex"] for f in r.result["failures"]] == [doomed]
    assert set(fine) <= revoked_serials(broker, org) and doomed not in revoked_serials(broker, org)


def test_agent_token_invalidate_api_then_database(broker, small_org):
    """Runbook section 6 note: issued tokens outlive revocation; revoke-agent (org creds) or the DB ends them."""
    org, identity_dir = small_org["id"], small_org["dir"]
    secret = org_secret(identity_dir)
    session = agent_session(broker, identity_dir, "a03")
    session.login()
    assert session.request("GET", "/v1/federation/agents").status == 200
    r = run_module("agent_token_invalidate", {"broker_url": broker.url, "org_id": org, "org_secret": secret,
                                              "agent_ids": [f"{org}::a03"]}, verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.changed and r.result["method"] == "api" and r.result["invalidated"] == [f"{org}::a03"]
    assert_no_secrets(r.output, secret)
    resp = session.request("GET", "/v1/federation/agents")
    assert (resp.status, resp.detail) == (401, "Token has been revoked")

    time.sleep(1.1)  # the broker compares whole seconds: a token from the same second is revoked too
    session = agent_session(broker, identity_dir, "a03")
    session.login()
    assert session.request("GET", "/v1/federation/agents").status == 200
    r = run_module("agent_token_invalidate", {"broker_url": broker.url, "org_id": org,
                                              "db_dsn": broker.env["DATABASE_URL"], "agent_ids": [f"{org}::a03"]},
                   verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.result["method"] == "database" and r.result["invalidated"] == [f"{org}::a03"]
    assert_no_secrets(r.output, broker.pg.password)
    resp = session.request("GET", "/v1/federation/agents")
    assert (resp.status, resp.detail) == (401, "Token has been revoked")

    other = run_module("agent_token_invalidate", {"broker_url": broker.url, "org_id": org, "org_secret": secret,
                                                  "agent_ids": ["someone-else::x"]})
    assert other.failed and "agents not of org" in other.result["msg"]


def test_binding_revoke_lists_and_revokes_one_agent(broker, small_org):
    """Runbook section 6 step 3: bindings revoked with the org's credentials block that agent's login."""
    org, identity_dir = small_org["id"], small_org["dir"]
    args = {"broker_url": broker.url, "org_id": org, "org_secret": org_secret(identity_dir),
            "agent_ids": [f"{org}::a04"]}
    plan = run_module("binding_revoke", args, check=True)
    assert not plan.failed, plan.result.get("msg")
    assert len(plan.result["bindings"]) == 6 and len(plan.result["would_revoke"]) == 1 and plan.changed
    r = run_module("binding_revoke", args, verbosity=3)
    assert not r.failed and r.changed and r.result["method"] == "api" and len(r.result["revoked"]) == 1
    assert_no_secrets(r.output, args["org_secret"])
    assert not run_module("binding_revoke", args).changed
    status, detail = login_error(broker, identity_dir, "a04")
    assert status == 403 and "No approved binding" in detail

    bad = run_module("binding_revoke", dict(args, org_secret="not-the-org-secret-xyz"), verbosity=3)
    assert bad.failed and "rejected the credentials" in bad.result["msg"] and "db_dsn" in bad.result["msg"]
    assert_no_secrets(bad.output, "not-the-org-secret-xyz")


def test_binding_revoke_through_the_database_without_org_credentials(broker, small_org):
    """Runbook section 6 step 3 when the org secret is unknown or the org is already suspended."""
    org, identity_dir = small_org["id"], small_org["dir"]
    args = {"broker_url": broker.url, "org_id": org, "db_dsn": broker.env["DATABASE_URL"],
            "agent_ids": [f"{org}::a05"]}
    r = run_module("binding_revoke", args, verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.changed and r.result["method"] == "database" and len(r.result["revoked"]) == 1
    assert any("database" in w for w in r.result.get("warnings", []))
    assert_no_secrets(r.output, broker.pg.password)
    assert not run_module("binding_revoke", args).changed
    status, detail = login_error(broker, identity_dir, "a05")
    assert status == 403 and "No approved binding" in detail


@pytest.mark.parametrize("which", ["extension", "database"])
def test_org_state_suspend_and_reactivate(which, broker, plain_broker, redis_server, tmp_path):
    """Runbook section 6 step 4: suspension (extension or the dashboard's DB change) and reactivation."""
    target = broker if which == "extension" else plain_broker
    org = new_org_id(f"it-state-{which[:3]}")
    onboard_org(target, org, tmp_path / "ids", 1, redis_server)
    args = conn(target, org_id=org, state="suspended", db_dsn=target.env["DATABASE_URL"])
    r = run_module("org_state", args, verbosity=3)
    assert not r.failed, r.result.get("msg")
    assert r.changed and r.result["method"] == which and r.result["status"] == "suspended"
    assert org_status(target, org) == "suspended"
    assert_no_secrets(r.output, target.admin_secret, target.pg.password)
    assert not run_module("org_state", args).changed
    status, detail = login_error(target, tmp_path / "ids", "a00")
    assert (status, detail) == (403, f"Organisation '{org}' not yet approved")

    back = run_module("org_state", dict(args, state="active"))
    assert back.changed and back.result["method"] == "approve" and org_status(target, org) == "active"
    assert login_error(target, tmp_path / "ids", "a00")[0] == 200


def test_plain_broker_needs_db_dsn_for_discovery_and_suspension(plain_broker, redis_server, tmp_path):
    """Runbook section 6 on a real broker: no agent listing, no suspend API - the module says what to do."""
    org = new_org_id("it-nodsn")
    onboard_org(plain_broker, org, tmp_path / "ids", 1, redis_server)
    r = run_module("cert_revoke", conn(plain_broker, org_id=org, all_agents=True))
    assert r.failed and "set db_dsn" in r.result["msg"] and "nothing was revoked" in r.result["msg"]
    r = run_module("org_state", conn(plain_broker, org_id=org, state="suspended"))
    assert r.failed and "set db_dsn" in r.result["msg"]
    assert org_status(plain_broker, org) == "active"


# ---- the incident playbook ---------------------------------------------------------------------

def run_compromise(target, org, identity_dir, env_file, verbosity=0, check=False):
    return run_playbook(PLAYBOOK, inventory="inventories/local", verbosity=verbosity, check=check,
                        extra_vars={"org_id": org, "identity_dir": str(identity_dir),
                                    "cullis_env_file": str(env_file), "cullis_broker_public_url": target.url})


def one(result, name):
    found = result.task_results(name)
    assert len(found) == 1, f"task {name!r} ran {len(found)} times"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["extension", "database"])
def test_org_compromise_playbook(which, broker, plain_broker, redis_server, tmp_path):
    """Runbook section 6 end to end: an org of 20 agents loses everything, in the right order, proven by
    real logins; a second run changes nothing. `database` runs against a broker without the extension
    endpoints (as real brokers are) and must give the same result."""
    target = broker if which == "extension" else plain_broker
    org, identity_dir = new_org_id(f"it-compromise-{which[:3]}"), tmp_path / "ids"
    onboarded = onboard_org(target, org, identity_dir, N_AGENTS, redis_server)
    serials = {a["cert_serial_hex"] for a in onboarded["agents"]}
    assert len(serials) == N_AGENTS
    env_file = tmp_path / ".env"
    env_file.write_text(f"ADMIN_SECRET={target.admin_secret}\nDATABASE_URL={target.env['DATABASE_URL']}\n")
    secrets = (target.admin_secret, org_secret(identity_dir), target.pg.password)

    live = agent_session(target, identity_dir, "a19")  # a token issued before the incident
    live.login()
    assert live.request("GET", "/v1/federation/agents").status == 200
    # the logins of both runs (1 revoked + 3 sampled each) and the 3 below, and the token checks,
    # must fit the broker's windows: wait for them (never clear the broker's counters)
    wait_for_rate_budget(redis_server, {"auth.token": (auth_limit(target.env), 8 + 3 * LOGIN_HITS),
                                        "federation.agents": (60, 10)})

    plan = run_compromise(target, org, identity_dir, env_file, check=True)
    assert plan.rc == 0 and plan.failed == 0, plan.output[-4000:]
    planned = one(plan, "Recover - revoke every agent certificate of the org")["would_revoke"]
    assert {t["serial_hex"] for t in planned} == serials
    assert revoked_serials(target, org) == set() and org_status(target, org) == "active"
    assert live.request("GET", "/v1/federation/agents").status == 200, "check mode invalidated tokens"

    first = run_compromise(target, org, identity_dir, env_file, verbosity=3)
    assert first.rc == 0 and first.failed == 0, first.output[-4000:]
    assert_no_secrets(first.output, *secrets)

    certs = one(first, "Recover - revoke every agent certificate of the org")
    assert certs["discovery"] == ("api" if which == "extension" else "database")
    assert certs["counts"]["revoked"] == N_AGENTS and certs["changed"]
    assert one(first, "Recover - revoke every binding of the org (while its credentials still work)")["method"] == "api"
    assert len(one(first, "Recover - revoke every binding of the org (while its credentials still work)")["revoked"]) \
        == N_AGENTS
    assert one(first, "Recover - invalidate the agents' live tokens")["method"] == "api"
    assert one(first, "Recover - suspend the org")["method"] == which
    before = one(first, 'Verify before suspension - a revoked certificate\'s login gets 401 "Certificate has been '
                        'revoked"')
    assert (before["status"], before["detail"]) == (401, "Certificate has been revoked")
    after = one(first, 'Verify - no agent of the org can log in (403 "not yet approved")')["results"]
    assert [(x["status"], x["detail"]) for x in after] == [(403, f"Organisation '{org}' not yet approved")] * 3

    # The broker's own state, read independently of the playbook.
    assert revoked_serials(target, org) == serials
    assert org_status(target, org) == "suspended"
    assert {s for (s,) in db_query(target.env["DATABASE_URL"], "SELECT status FROM bindings WHERE org_id = %s",
                                    (org,))} == {"revoked"}
    resp = live.request("GET", "/v1/federation/agents")
    assert (resp.status, resp.detail) == (401, "Token has been revoked")
    for name in ("a00", "a07", "a13"):
        assert login_error(target, identity_dir, name) == (403, f"Organisation '{org}' not yet approved")

    second = run_compromise(target, org, identity_dir, env_file, verbosity=3)
    assert second.rc == 0 and second.changed == 0, second.output[-4000:]
    # a contained org stops after confirm: the recovery's tasks are skipped, none of them ran
    recover = second.task_results("Recover - revoke every agent certificate of the org")
    assert all(r.get("skipped") and not r.get("changed") for r in recover), recover
    assert_no_secrets(second.output, *secrets)


def test_org_compromise_unknown_org_stops_at_confirm(broker, tmp_path):
    """Runbook section 6 confirm step: an unknown org is an error before anything is touched."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"ADMIN_SECRET={broker.admin_secret}\nDATABASE_URL={broker.env['DATABASE_URL']}\n")
    ghost = new_org_id("it-ghost")
    r = run_compromise(broker, ghost, tmp_path / "none", env_file)
    assert r.rc != 0 and r.changed == 0
    assert f"organization '{ghost}' not found" in r.output
    assert_no_secrets(r.output, broker.admin_secret, broker.pg.password)

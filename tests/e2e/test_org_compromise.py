"""Org compromise on the deployed stack (runbook section 6 "Agent compromise - revoke everything for
one org"): an org of 20 agents, onboarded through nginx with the org_onboard module, holding a live
token, is contained by `playbooks/incidents/org_compromise.yml` exactly as an operator runs it
(inventory of the stack, secrets from the stack's .env, -vvv). A second run changes nothing.

The stack stays healthy: only the test's own org ends up suspended.
"""
from __future__ import annotations

import uuid

import pytest

from testkit.broker_orgs import (
    LOGIN_HITS, admin_client, agent_session, auth_limit, db_query, login_error, onboard_org, org_secret,
    wait_for_rate_budget)

pytestmark = pytest.mark.slow

PLAYBOOK = "playbooks/incidents/org_compromise.yml"
N_AGENTS = 20
# One run of the playbook logs in 4 times (1 revoked + cullis_compromise_login_sample 3), one
# auth.token hit each (agent_login seeds the DPoP nonce), two when the nonce must be fetched.
PLAYBOOK_LOGIN_HITS = 4 * LOGIN_HITS


def wait_for_logins(env: dict, hits: int) -> float:
    """The broker's real login limit (10/min per client IP) is kept: wait until `hits` fit."""
    return wait_for_rate_budget(env["REDIS_URL"], {"auth.token": (auth_limit(env), hits)})


def test_org_compromise_on_the_stack(stack, tmp_path):
    """Runbook section 6 end to end on the deployed stack (nginx TLS, supervisord, real brokers' rate limits)."""
    contain_an_org(stack, tmp_path)


def contain_an_org(stack, tmp_path, extra_vars: dict | None = None) -> tuple:
    """The scenario on `stack` (also the quirks stack, test_quirks.py); returns both runs' results."""
    extra_vars = extra_vars or {}
    env = stack.env
    url, ca, admin = stack.public_url, str(stack.ca_path), env["ADMIN_SECRET"]
    org, identity_dir = f"e2e-compromise-{uuid.uuid4().hex[:8]}", tmp_path / "ids"
    # publish-agent allows 30/min and logins 10/min per client IP; other tests may have used them.
    onboarded = onboard_org(None, org, identity_dir, N_AGENTS, env["REDIS_URL"], url=url, admin_secret=admin,
                            ca_path=ca)
    serials = {a["cert_serial_hex"] for a in onboarded["agents"]}
    assert len(serials) == N_AGENTS

    live = agent_session(url, identity_dir, "a19", ca)  # a token issued before the incident
    live.login()
    assert live.request("GET", "/v1/federation/agents").status == 200
    wait_for_logins(env, PLAYBOOK_LOGIN_HITS)

    first = stack.run(PLAYBOOK, extra_vars={"org_id": org, "identity_dir": str(identity_dir), **extra_vars},
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
    wait_for_logins(env, PLAYBOOK_LOGIN_HITS)

    second = stack.run(PLAYBOOK, extra_vars={"org_id": org, "identity_dir": str(identity_dir), **extra_vars},
                       verbosity=3)
    assert second.rc == 0 and second.changed == 0, second.output[-4000:]
    for value in [*stack.secret_values(), org_secret(identity_dir)]:
        assert value not in second.output, "a secret appeared in the playbook output"
    assert stack.get("/readyz")[0] == 200
    return first, second

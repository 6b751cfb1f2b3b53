"""Agent login (contract section 4): success, the token, and every rejection we can provoke."""
from __future__ import annotations

import time

import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac


def test_login_success_and_federation_agents(new_org, broker):
    org = new_org()
    agent = org.add_agent("a")
    sess = org.session(agent)
    data = sess.login()
    assert data["token_type"] == "DPoP" and data["expires_in"] == 1800
    header, claims = ac.jws_unverified(data["access_token"])
    status, jwks = broker.get("/.well-known/jwks.json")
    assert header["kid"] == jwks["keys"][0]["kid"]
    assert claims["iss"] == "cullis-broker" and claims["aud"] == "cullis"
    assert claims["agent_id"] == agent.agent_id and claims["org"] == org.org_id
    assert claims["cnf"]["jkt"] == sess.dpop_key.thumbprint and claims["scope"] == ["chat"]
    r = sess.request("GET", "/v1/federation/agents")
    assert r.status == 200, r.body
    assert r.json()["total"] == 1 and r.json()["agents"][0]["agent_id"] == agent.agent_id
    assert r.headers.get("dpop-nonce")

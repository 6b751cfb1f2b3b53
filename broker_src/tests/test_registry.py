"""Operator endpoints of contract section 3 not covered by the login tests."""
from __future__ import annotations

import time

from testkit.pki import CA


def test_org_lifecycle_and_errors(admin, new_org):
    org = new_org("life")
    r = admin.admin_post("/v1/registry/orgs", {"org_id": org.org_id, "display_name": "x", "secret": "s3cret-s3cret"})
    assert (r.status, r.detail) == (409, "org_id already registered")
    r = admin.request("POST", "/v1/registry/orgs", body={"org_id": "x", "display_name": "x", "secret": "y"},
                      headers={"x-admin-secret": "wrong"})
    assert (r.status, r.detail) == (403, "Invalid admin secret")
    r = admin.request("GET", "/v1/registry/orgs")
    assert r.status == 422 and r.json()["detail"][0]["loc"] == ["header", "x-admin-secret"]
    assert admin.admin_get("/v1/registry/orgs/nope").detail == "Organization not found"
    assert org.org_request("GET", "/v1/registry/orgs/me").json()["org_id"] == org.org_id
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/approve")
    assert (r.status, r.detail) == (409, "Organization already active")
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/reject")
    assert r.status == 200 and r.json()["status"] == "rejected"
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/reject")
    assert (r.status, r.detail) == (409, "Organization already in state 'rejected'")
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/approve")
    assert r.json() == {"org_id": org.org_id, "status": "active", "message": f"Organization '{org.org_id}' approved."}


def test_ca_upload_validation(new_org):
    org = new_org("ca")
    leaf = org.ca.issue("not-a-ca", org=org.org_id)
    for pem, detail in ((leaf.cert_pem.decode(), "Certificate is not a CA (BasicConstraints CA=false)"),
                        ("garbage", "Invalid CA certificate")):
        r = org.org_request("POST", f"/v1/registry/orgs/{org.org_id}/certificate", {"ca_certificate": pem})
        assert (r.status, r.detail) == (400, detail)
    r = org.org_request("POST", "/v1/registry/orgs/other/certificate", {"ca_certificate": "x"})
    assert (r.status, r.detail) == (403, "org_id mismatch")


def test_bindings_rules(new_org):
    org, other = new_org("bind"), new_org("bind")
    agent = org.add_agent("a", capabilities=("chat",), approve=False)
    r = org.org_request("POST", "/v1/registry/bindings", {"org_id": org.org_id, "agent_id": agent.agent_id, "scope": []})
    assert (r.status, r.detail) == (409, "Binding already exists for this agent and organization")
    r = org.org_request("POST", "/v1/registry/bindings", {"org_id": other.org_id, "agent_id": "x", "scope": []})
    assert (r.status, r.detail) == (403, "You cannot create a binding for another organization")
    r = org.org_request("POST", "/v1/registry/bindings", {"org_id": org.org_id, "agent_id": "nope", "scope": []})
    assert (r.status, r.detail) == (404, "Agent not found or does not belong to this organization")
    b = org.add_agent("b", capabilities=("chat",), approve=False)
    assert other.org_request("POST", f"/v1/registry/bindings/{b.binding_id}/approve").detail == \
        "You are not the owning organization of this binding"
    assert org.org_request("POST", "/v1/registry/bindings/999999/approve").detail == "Binding not found"
    r = org.org_request("GET", "/v1/registry/bindings", query={"org_id": other.org_id})
    assert (r.status, r.detail) == (403, "You cannot view bindings of another organization")
    rows = org.org_request("GET", "/v1/registry/bindings", query={"org_id": org.org_id}).json()
    assert {r["agent_id"]: r["status"] for r in rows} == {agent.agent_id: "pending", b.agent_id: "pending"}


def test_revoke_agent_tokens(new_org):
    org, other = new_org("rvk"), new_org("rvk")
    agent = org.add_agent("a")
    sess = org.session(agent)
    sess.login()
    assert other.org_request("POST", f"/v1/auth/revoke-agent/{agent.agent_id}").detail == "Agent not found"
    assert org.org_request("POST", f"/v1/auth/revoke-agent/{agent.agent_id}").status == 204
    r = sess.request("GET", "/v1/federation/agents")
    assert (r.status, r.detail) == (401, "Token has been revoked")
    time.sleep(1.1)
    org.session(agent).login()  # revoke-agent does not block new logins


def test_invite_join_attach_and_org_settings(admin, broker):
    r = admin.admin_post("/v1/admin/invites", {"label": "partner", "ttl_hours": 1})
    assert r.status == 201 and r.json()["token"]
    token = r.json()["token"]
    ca = CA.create("joiner CA")
    from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
    client = BrokerClient(broker.url)
    body = {"invite_token": token, "org_id": "joiner", "display_name": "Joiner", "secret": "joiner-secret-1",
            "ca_certificate": ca.cert_pem.decode()}
    r = client.request("POST", "/v1/onboarding/join", body=body)
    assert r.status == 201 and r.json()["status"] == "pending"
    assert client.request("POST", "/v1/onboarding/join", body=dict(body, org_id="joiner2")).status == 403  # single use
    pending = admin.admin_get("/v1/admin/orgs/pending").json()
    assert [p["org_id"] for p in pending if p["org_id"] == "joiner"] == ["joiner"]
    assert admin.admin_post("/v1/admin/orgs/joiner/approve").json()["status"] == "active"
    r = admin.request("PATCH", "/v1/admin/orgs/joiner/mastio-url", body={"mastio_url": "https://m.example"},
                      admin=True)
    assert r.json() == {"org_id": "joiner", "mastio_url": "https://m.example"}
    assert admin.admin_get("/v1/registry/orgs/joiner").json()["mastio_url"] == "https://m.example"
    r = admin.request("PATCH", "/v1/admin/orgs/joiner/require-mtls", body={"require_mastio_mtls": False}, admin=True)
    assert r.status == 200
    token2 = admin.admin_post("/v1/admin/invites", {"label": "attach"}).json()["token"]
    r = client.request("POST", "/v1/onboarding/attach", body={"invite_token": token2, "org_id": "joiner",
                                                             "secret": "joiner-secret-1",
                                                             "ca_certificate": ca.cert_pem.decode()})
    assert r.status == 200 and r.json()["sealed"] is True

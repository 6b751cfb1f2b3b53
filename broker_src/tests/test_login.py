"""Agent login (contract section 4): success, the token, and every rejection we can provoke."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac
from testkit.pki import CA


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
    log = broker.log()
    assert '"logger": "uvicorn.access"' in log  # JSON logs, uvicorn's included
    for secret in (data["access_token"], broker.admin_secret, org.secret, broker.vault_token):
        assert secret not in log


# --- helpers to craft raw login requests -----------------------------------------------------------

def _nonce(org):
    r = org.client.request("GET", "/v1/federation/agents")
    return r.headers["dpop-nonce"]


def _proof(org, key=None, nonce=None, header=None, claims=None, drop=(), htm="POST", path="/v1/auth/token",
           alg="ES256"):
    key = key or ac.DPoPKey.generate()
    h = {"typ": "dpop+jwt", "jwk": key.jwk}
    c = {"jti": str(uuid.uuid4()), "htm": htm,
         "htu": org.broker.url + path, "iat": int(time.time()), "nonce": nonce or _nonce(org)}
    h.update(header or {})
    c.update(claims or {})
    for k in drop:
        h.pop(k, None)
        c.pop(k, None)
    return ac.jws_sign(h, c, key.private_key, alg=alg)


def _login_raw(org, agent, assertion=None, proof=None, mastio=True, sig=None):
    assertion = assertion or ac.make_client_assertion(agent.agent_id, agent.key_pem, [agent.cert_pem])
    headers = {"DPoP": proof or _proof(org)}
    if sig is not None:
        headers["X-Cullis-Mastio-Signature"] = sig
    elif mastio:
        headers["X-Cullis-Mastio-Signature"] = ac.mastio_signature(agent.mastio_key_pem, assertion)
    return org.client.request("POST", "/v1/auth/token", body={"client_assertion": assertion}, headers=headers)


def _expect(resp, status, detail):
    assert (resp.status, resp.detail) == (status, detail), resp.body


@pytest.fixture(scope="module")
def org_a(broker, org_cls):
    return org_cls(broker, "rejections").create()


@pytest.fixture(scope="module")
def agent_a(org_a):
    return org_a.add_agent("alice")


def test_dpop_rejections(org_a, agent_a):
    bad = "Invalid DPoP proof: "
    key = ac.DPoPKey.generate()
    good = _proof(org_a, key)
    head, body, sig = good.split(".")
    _expect(_login_raw(org_a, agent_a, proof="not-a-jwt"), 401, bad + "malformed JWT")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, header={"typ": "JWT"})), 401, bad + "typ must be 'dpop+jwt'")
    hs = ac.b64url(b'{"typ":"dpop+jwt","alg":"HS256"}')
    _expect(_login_raw(org_a, agent_a, proof=f"{hs}.{body}.{sig}"), 401, bad + "unsupported algorithm 'HS256'")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, drop=("jwk",))), 401, bad + "missing jwk in header")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, header={"jwk": dict(key.jwk, d="AAAA")})), 401,
            bad + "jwk contains private key material")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, header={"jwk": {"kty": "EC"}})), 401,
            bad + "cannot compute JWK thumbprint")
    other = ac.DPoPKey.generate()
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, key, header={"jwk": other.jwk})), 401,
            bad + "signature verification failed")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, drop=("jti",))), 401, bad + "missing jti")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, drop=("iat",))), 401, bad + "missing iat")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, claims={"iat": int(time.time()) - 600})), 401,
            bad + "iat out of acceptable window")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, htm="GET")), 401, bad + "htm mismatch")
    _expect(_login_raw(org_a, agent_a, proof=_proof(org_a, path="/v1/other")), 401, bad + "htu mismatch")
    r = _login_raw(org_a, agent_a, proof=_proof(org_a, drop=("nonce",)))
    _expect(r, 401, "use_dpop_nonce")
    assert len(r.headers["dpop-nonce"]) == 32


def test_dpop_proof_replay_rejected(org_a, agent_a):
    proof = _proof(org_a)
    assert _login_raw(org_a, agent_a, proof=proof).status == 200
    _expect(_login_raw(org_a, agent_a, proof=proof), 401, "DPoP proof replay detected")


def test_assertion_and_certificate_rejections(org_a, agent_a, test_ca):
    _expect(_login_raw(org_a, agent_a, assertion="garbage"), 401, "invalid client_assertion")
    no_x5c = ac.jws_sign({"typ": "JWT"}, {"sub": agent_a.agent_id, "exp": int(time.time()) + 60}, agent_a.key_pem)
    _expect(_login_raw(org_a, agent_a, assertion=no_x5c), 401, "x5c header absent or empty")
    bad_x5c = ac.jws_sign({"typ": "JWT", "x5c": ["bm90IGEgY2VydA=="]}, {"sub": "x"}, agent_a.key_pem)
    _expect(_login_raw(org_a, agent_a, assertion=bad_x5c), 401, "Invalid agent certificate")
    # certificate for an org the broker does not know
    stranger = test_ca.issue("ghost::a", org="ghost", server=False, client=True)
    a = ac.make_client_assertion("ghost::a", stranger.key_pem, [stranger.cert_pem])
    _expect(_login_raw(org_a, agent_a, assertion=a), 403, "Organisation 'ghost' not found")
    # signed by a CA that is not the org's
    forged = test_ca.issue(agent_a.agent_id, org=org_a.org_id, server=False, client=True)
    a = ac.make_client_assertion(agent_a.agent_id, forged.key_pem, [forged.cert_pem])
    _expect(_login_raw(org_a, agent_a, assertion=a), 401, "certificate chain verification failed")
    import datetime as dt
    expired = org_a.issue("alice", not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10), days=1)
    a = ac.make_client_assertion(agent_a.agent_id, expired.key_pem, [expired.cert_pem])
    _expect(_login_raw(org_a, agent_a, assertion=a), 401, "certificate in chain is expired or not yet valid")
    server_only = org_a.ca.issue(agent_a.agent_id, org=org_a.org_id, server=True, client=False)
    a = ac.make_client_assertion(agent_a.agent_id, server_only.key_pem, [server_only.cert_pem])
    _expect(_login_raw(org_a, agent_a, assertion=a), 401,
            "Agent certificate EKU does not include clientAuth (1.3.6.1.5.5.7.3.2)")


def test_assertion_claim_rejections(org_a, agent_a):
    cert = [agent_a.cert_pem]
    other_key = org_a.issue("other").key_pem
    mk = ac.make_client_assertion
    _expect(_login_raw(org_a, agent_a, assertion=mk(agent_a.agent_id, other_key, cert)), 401,
            "Invalid client_assertion signature")
    _expect(_login_raw(org_a, agent_a, assertion=mk(agent_a.agent_id, agent_a.key_pem, cert, aud="x")), 401,
            "Invalid client_assertion signature")
    _expect(_login_raw(org_a, agent_a, assertion=mk(agent_a.agent_id, agent_a.key_pem, cert,
                                                     now=time.time() - 1000)), 401,
            "Invalid client_assertion signature")
    _expect(_login_raw(org_a, agent_a, assertion=mk(agent_a.agent_id, agent_a.key_pem, cert, sub="x::y")), 401,
            "'sub' in JWT does not match the agent CN or SPIFFE URI")
    _expect(_login_raw(org_a, agent_a, assertion=mk(agent_a.agent_id, agent_a.key_pem, cert, iss="x::y")), 401,
            "'iss' in JWT is missing or does not match the authenticated agent")
    now = int(time.time())
    no_jti = ac.jws_sign({"typ": "JWT", "x5c": ac.jws_unverified(mk(agent_a.agent_id, agent_a.key_pem, cert))[0]["x5c"]},
                         {"sub": agent_a.agent_id, "iss": agent_a.agent_id, "aud": "agent-trust-broker",
                          "iat": now, "exp": now + 60}, agent_a.key_pem)
    _expect(_login_raw(org_a, agent_a, assertion=no_jti), 401, "client_assertion missing jti")
    a = mk(agent_a.agent_id, agent_a.key_pem, cert)
    assert _login_raw(org_a, agent_a, assertion=a).status == 200
    _expect(_login_raw(org_a, agent_a, assertion=a), 401, "client_assertion already used (replay attack detected)")


def test_mastio_rejections(org_a, agent_a, new_org):
    _expect(_login_raw(org_a, agent_a, mastio=False), 403,
            "organization requires mastio counter-signature but the X-Cullis-Mastio-Signature header is missing")
    _expect(_login_raw(org_a, agent_a, sig="***"), 403, "X-Cullis-Mastio-Signature is not valid base64url")
    _expect(_login_raw(org_a, agent_a, sig=ac.mastio_signature(agent_a.mastio_key_pem, "other")), 403,
            "mastio counter-signature verification failed")
    org = new_org("nomastio")
    agent = org.add_agent("a")
    r = org.admin.request("PATCH", f"/v1/admin/orgs/{org.org_id}/mastio-pubkey", body={}, admin=True)
    assert r.status == 200 and r.json() == {"org_id": org.org_id, "mastio_pubkey_set": False}
    _expect(_login_raw(org, agent), 403,
            "organization has no pinned mastio_pubkey — onboarding incomplete. Admin must PATCH "
            "/v1/admin/orgs/{id}/mastio-pubkey first.")


def test_agent_state_rejections(org_a, new_org, org_cls):
    unbound = org_a.add_agent("unbound", approve=False)
    _expect(_login_raw(org_a, unbound), 403, "No approved binding for this agent and organization")
    ghost = org_a.identity("ghost", org_a.issue("ghost"))
    _expect(_login_raw(org_a, ghost), 401, "Agent not found or org mismatch")
    inactive = org_a.add_agent("inactive")
    r = ac.publish_agent(org_a.client, ac.load_private_key(inactive.mastio_key_pem), inactive.agent_id,
                         inactive.cert_pem.decode(), capabilities=["chat"], revoked=True)
    assert r.status == 200 and r.json()["status"] == "revoked"
    _expect(_login_raw(org_a, inactive), 403, "Agent not active")
    pinned = org_a.add_agent("pinned")
    org_a.session(pinned).login()
    rotated = org_a.identity("pinned", org_a.issue("pinned"))
    _expect(_login_raw(org_a, rotated), 401,
            "Certificate thumbprint mismatch — use the rotate-cert endpoint to update")
    noca = new_org("noca")
    # an org without CA: create a fresh org and skip the CA upload
    bare = org_cls(noca.broker, noca.org_id + "bare")
    r = bare.admin.admin_post("/v1/registry/orgs", {"org_id": bare.org_id, "display_name": "x", "secret": bare.secret})
    assert r.status == 201
    ident = bare.identity("a", bare.issue("a"))
    _expect(_login_raw(bare, ident), 403, f"CA not configured for org '{bare.org_id}'")


def test_revoked_cert_rejected_also_with_openssl_style_serial(org_a, admin):
    agent = org_a.add_agent("revokee")
    org_a.session(agent).login()
    serial = agent.issued.cert.serial_number
    openssl_style = ":".join(f"{serial:040X}"[i:i + 2] for i in range(0, 40, 2))
    r = admin.admin_post("/v1/admin/certs/revoke", {"serial_hex": openssl_style, "org_id": org_a.org_id,
                                                     "agent_id": agent.agent_id, "reason": "test"})
    assert r.status == 200, r.body
    assert r.json()["serial_hex"] == format(serial, "x")
    assert r.json()["message"] == f"Certificate {format(serial, 'x')} revoked."
    with pytest.raises(ac.LoginError) as e:
        org_a.session(agent).login()
    assert (e.value.status, e.value.detail) == (401, "Certificate has been revoked")
    r = admin.admin_post("/v1/admin/certs/revoke", {"serial_hex": format(serial, "x"), "org_id": org_a.org_id})
    _expect(r, 409, "Certificate already revoked")
    listed = admin.admin_get("/v1/admin/certs/revoked", query={"org_id": org_a.org_id}).json()
    assert [x["serial_hex"] for x in listed] == [format(serial, "x")]


def test_revoke_binding_blocks_login_and_kills_tokens(org_a):
    agent = org_a.add_agent("bound")
    sess = org_a.session(agent)
    sess.login()
    r = org_a.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/revoke")
    assert r.status == 200 and r.json()["status"] == "revoked"
    r = sess.request("GET", "/v1/federation/agents")
    _expect(r, 401, "Token has been revoked")
    with pytest.raises(ac.LoginError) as e:
        org_a.session(agent).login()
    assert (e.value.status, e.value.detail) == (403, "No approved binding for this agent and organization")
    # re-approve from revoked works; approving an approved binding is 409 here (500 on real brokers)
    assert org_a.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/approve").status == 200
    _expect(org_a.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/approve"), 409,
            "Binding already approved")
    time.sleep(1.1)  # token_invalidated_at has whole-second precision (contract section 4)
    org_a.session(agent).login()


def test_suspend_and_reactivate_org(new_org, admin):
    org = new_org("susp")
    agent = org.add_agent("a")
    org.session(agent).login()
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/suspend")
    assert r.status == 200 and r.json()["status"] == "suspended"
    with pytest.raises(ac.LoginError) as e:
        org.session(agent).login()
    assert (e.value.status, e.value.detail) == (403, f"Organisation '{org.org_id}' not yet approved")
    assert org.org_id not in [o["org_id"] for o in admin.admin_get("/v1/registry/orgs").json()]
    _expect(org.org_request("GET", "/v1/registry/bindings", query={"org_id": org.org_id}), 403,
            "Invalid organization credentials")
    r = admin.admin_post(f"/v1/admin/orgs/{org.org_id}/reactivate")
    assert r.status == 200 and r.json()["status"] == "active"
    org.session(agent).login()
    events = admin.admin_get("/v1/admin/audit/export", query={"org_id": org.org_id}).body.decode().splitlines()
    assert events, "empty audit export"
    types = [json.loads(line).get("event_type", line) for line in events]
    assert "onboarding.suspended" in types and "onboarding.reactivated" in types


def test_admin_agents_extension(new_org, admin):
    org = new_org("ext")
    agent = org.add_agent("a")
    rows = admin.admin_get("/v1/admin/agents", query={"org_id": org.org_id}).json()
    assert rows == [{"agent_id": agent.agent_id, "org_id": org.org_id,
                     "serial_hex": format(agent.issued.cert.serial_number, "x"),
                     "cert_thumbprint": rows[0]["cert_thumbprint"], "not_after": rows[0]["not_after"],
                     "is_active": True}]
    issued = org.issue("b")
    r = admin.admin_post("/v1/admin/agents", {"org_id": org.org_id, "agent_name": "b", "cert_pem":
                                              issued.cert_pem.decode(), "capabilities": ["chat"],
                                              "create_binding": True})
    assert r.status == 201, r.body
    org.session(org.identity("b", issued)).login()
    spec = admin.request("GET", "/openapi.json").json()
    assert spec["paths"]["/v1/admin/agents"]["get"]["x-cullis-extension"] is True


def test_intermediate_chain_and_tofu_pinning(new_org, admin):
    """Leaf <- intermediate <- org CA (org CA appended and stripped); an agent without a cert is pinned
    on its first login (TOFU), after which another cert with the same CN is refused."""
    org = new_org("chain")
    inter = org.ca.issue(f"{org.org_id} issuing CA", org=org.org_id, ca=True)
    leaf = inter.issue(f"{org.org_id}::deep", org=org.org_id, server=False, client=True)
    r = admin.admin_post("/v1/admin/agents", {"org_id": org.org_id, "agent_name": "deep", "capabilities": ["chat"],
                                              "create_binding": True})
    assert r.status == 201 and r.json()["cert_thumbprint"] is None, r.body
    ident = ac.AgentIdentity(f"{org.org_id}::deep", org.org_id, leaf.cert_pem, leaf.key_pem,
                             [inter.cert_pem, org.ca.cert_pem], org.identity("x", leaf).mastio_key_pem)
    org.session(ident).login()
    rows = admin.admin_get("/v1/admin/agents", query={"org_id": org.org_id}).json()
    assert rows[0]["serial_hex"] == format(leaf.cert.serial_number, "x") and rows[0]["cert_thumbprint"]
    other = inter.issue(f"{org.org_id}::deep", org=org.org_id, server=False, client=True)
    ident2 = ac.AgentIdentity(ident.agent_id, org.org_id, other.cert_pem, other.key_pem, [inter.cert_pem],
                              ident.mastio_key_pem)
    with pytest.raises(ac.LoginError) as e:
        org.session(ident2).login()
    assert e.value.detail == "Certificate thumbprint mismatch — use the rotate-cert endpoint to update"
    # broken chain: leaf presented with the wrong intermediate
    stranger = CA.create("stranger", org=org.org_id)
    ident3 = ac.AgentIdentity(ident.agent_id, org.org_id, leaf.cert_pem, leaf.key_pem, [stranger.cert_pem],
                              ident.mastio_key_pem)
    with pytest.raises(ac.LoginError) as e:
        org.session(ident3).login()
    assert e.value.detail == ("certificate chain broken at position 0 — signature not produced by the next cert "
                              "in the chain")

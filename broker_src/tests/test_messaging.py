"""The contract's smoke test (section 4): session + signed messages between two agents, policy gate,
and WebSocket push across broker processes via Redis pub/sub `ws:agent:<id>`."""
from __future__ import annotations

import json
import time
import uuid

import pytest
from websockets.sync.client import connect

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac
from testkit.broker import BrokerProcess


def _message(sid, agent, text):
    nonce, ts, payload = str(uuid.uuid4()), int(time.time()), {"text": text}
    return {"session_id": sid, "sender_agent_id": agent.agent_id, "payload": payload, "nonce": nonce,
            "timestamp": ts, "signature": ac.sign_message(agent.key_pem, sid, agent.agent_id, nonce, ts, payload)}


def _ws(url, token):
    ws = connect(url.replace("http://", "ws://") + "/v1/broker/ws", open_timeout=10)
    ws.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(ws.recv(timeout=10))["type"] == "auth_ok"
    return ws


def test_session_and_messages_queued_then_pushed_across_workers(broker, new_org, pg_server, redis_server,
                                                               bao_server):
    org = new_org("msg")
    a_id, b_id = org.add_agent("a", key_kind="rsa"), org.add_agent("b")
    a, b = org.session(a_id), org.session(b_id)
    a.login()
    b.login()
    r = a.request("POST", "/v1/broker/sessions", {"target_agent_id": b_id.agent_id, "target_org_id": org.org_id,
                                                  "requested_capabilities": []})
    assert r.status == 201 and r.json()["status"] == "pending", r.body
    sid = r.json()["session_id"]
    r = b.request("POST", f"/v1/broker/sessions/{sid}/accept")
    assert r.status == 200 and r.json()["status"] == "active"
    msg = _message(sid, a_id, "ping")
    r = a.request("POST", f"/v1/broker/sessions/{sid}/messages", msg)
    assert r.status == 202, r.body
    assert r.json() == {"status": "queued", "session_id": sid, "msg_id": r.json()["msg_id"], "deduped": False}
    assert a.request("POST", f"/v1/broker/sessions/{sid}/messages", msg).json()["deduped"] is True
    forged = dict(_message(sid, a_id, "x"), payload={"text": "tampered"})
    assert a.request("POST", f"/v1/broker/sessions/{sid}/messages", forged).status == 401
    got = b.request("GET", f"/v1/broker/sessions/{sid}/messages", query={"after": -1})
    assert got.status == 200 and [m["payload"] for m in got.json()] == [{"text": "ping"}]
    assert set(got.json()[0]) == {"seq", "sender_agent_id", "payload", "nonce", "timestamp", "signature",
                                  "client_seq"}
    # B holds a WebSocket on a SECOND broker process; A posts through the first one.
    second = BrokerProcess(pg_server, redis_server, bao_server, env_overrides={"RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    try:
        ws = _ws(second.url, b.access_token)
        try:
            deadline = time.monotonic() + 10
            status = None
            while status != "accepted" and time.monotonic() < deadline:  # until B's subscriber is live
                r = a.request("POST", f"/v1/broker/sessions/{sid}/messages", _message(sid, a_id, "pong"))
                status = r.json()["status"]
            assert status == "accepted"
            pushed = json.loads(ws.recv(timeout=10))
            assert pushed["type"] == "message" and pushed["payload"] == {"text": "pong"}
        finally:
            ws.close()
    finally:
        second.cleanup()
    assert a.request("POST", f"/v1/broker/sessions/{sid}/close").json()["status"] == "closed"


def test_policy_default_deny(pg_server, redis_server, bao_server, org_cls):
    """Without POLICY_DEFAULT_DECISION=allow, opening a session is denied (403 Policy: ...)."""
    b = BrokerProcess(pg_server, redis_server, bao_server, env_overrides={"POLICY_DEFAULT_DECISION": "deny",
                                                                          "RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    try:
        org = org_cls(b, "denyorg").create()
        x, y = org.add_agent("x"), org.add_agent("y")
        sx = org.session(x)
        sx.login()
        r = sx.request("POST", "/v1/broker/sessions", {"target_agent_id": y.agent_id, "target_org_id": org.org_id,
                                                       "requested_capabilities": []})
        assert r.status == 403 and r.detail.startswith("Policy: policy_default_deny")
    finally:
        b.cleanup()


@pytest.mark.parametrize("header", ["Bearer abc", "DPoP not-a-token"])
def test_resource_call_token_errors(broker, header):
    from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
    r = BrokerClient(broker.url).request("GET", "/v1/federation/agents", headers={"Authorization": header})
    expected = "DPoP token required — plain Bearer is not accepted" if header.startswith("Bearer") \
        else "Token invalid or expired"
    assert (r.status, r.detail) == (401, expected)

"""GET /metrics (contract section 7): the real brokers' switches, and the security counters under
the names real brokers emit (not the `atn_*` names of upstream's alert rules).

One extra broker with OTEL_ENABLED=true and PROMETHEUS_ENABLED=true on the session's servers, in a
database of its own (the audit-chain test appends a forged row, which must not reach the shared
database's chain checks). The session broker (OTEL_ENABLED=false) gives the 404.
"""
from __future__ import annotations

import re
import uuid

import psycopg
import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac
from testkit.broker import BrokerProcess, http_get

from test_login import _login_raw, _proof  # noqa: E402  (same directory, on sys.path under pytest)


@pytest.fixture(scope="module")
def mbroker(pg_server, redis_server, bao_server):
    db = f"metrics_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE DATABASE {db} OWNER {pg_server.user}")
    url = pg_server.sqlalchemy_url.rsplit("/", 1)[0] + "/" + db
    b = BrokerProcess(pg_server, redis_server, bao_server, env_overrides={
        "DATABASE_URL": url, "OTEL_ENABLED": "true", "PROMETHEUS_ENABLED": "true",
        "RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    b.db_dsn = pg_server.dsn.rsplit("/", 1)[0] + "/" + db
    yield b
    b.cleanup()


def scrape(b) -> dict[str, float]:
    status, body = http_get(b.url + "/metrics")
    assert status == 200, body
    values: dict[str, float] = {}
    for line in body.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def total(values: dict, name: str) -> float:
    """Sum of a counter over its label sets."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def test_metrics_off_by_default_like_real_brokers(broker):
    status, body = http_get(broker.url + "/metrics")
    assert (status, body) == (404, {"detail": "Prometheus exporter disabled"})


def test_metrics_names_and_security_counters(mbroker, org_cls):
    before = scrape(mbroker)
    for name in ("cullis_auth_success_total", "cullis_auth_deny_total", "cullis_session_created_total",
                 "cullis_policy_allow_total", "cullis_kms_seal_check_failed_total", "cullis_message_queued_total",
                 "cullis_session_denied_total", "cullis_policy_deny_total", "cullis_message_expired_total"):
        assert name in before, name
    assert "cullis_auth_duration_milliseconds_count" in before
    assert not any(k.startswith("atn_") for k in before)
    org = org_cls(mbroker, f"met{uuid.uuid4().hex[:6]}").create()
    agent = org.add_agent("a")

    sess = org.session(agent)
    sess.login()
    proof = _proof(org)
    assert _login_raw(org, agent, proof=proof).status == 200
    assert _login_raw(org, agent, proof=proof).status == 401  # DPoP proof replay
    r = org.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/revoke")
    assert r.status == 200
    assert sess.request("GET", "/v1/federation/agents").status == 401  # revoked token used
    other = org.issue("a")  # same CN, other key: the pinned thumbprint does not match
    r = org.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/approve")
    assert r.status == 200
    with pytest.raises(ac.LoginError) as e:
        org.session(org.identity("a", other)).login()
    assert e.value.status == 401 and "thumbprint mismatch" in e.value.detail

    after = scrape(mbroker)
    delta = {n: total(after, n) - total(before, n) for n in (
        "cullis_auth_success_total", "cullis_auth_deny_total", "cullis_dpop_jti_replay_attempt_total",
        "cullis_revoked_token_use_attempt_total", "cullis_cert_pinning_mismatch_total")}
    assert delta == {"cullis_auth_success_total": 2, "cullis_auth_deny_total": 2,
                     "cullis_dpop_jti_replay_attempt_total": 1, "cullis_revoked_token_use_attempt_total": 1,
                     "cullis_cert_pinning_mismatch_total": 1}, delta
    assert after['cullis_dpop_jti_replay_attempt_total{kind="dpop_proof"}'] >= 1
    assert after['cullis_revoked_token_use_attempt_total{credential="token"}'] >= 1


def test_audit_chain_verify_failure_is_counted(mbroker, org_cls):
    admin = org_cls(mbroker, f"aud{uuid.uuid4().hex[:6]}").create()
    org_id = admin.org_id
    r = admin.admin.admin_get("/v1/admin/audit/verify", query={"org_id": org_id})
    assert r.status == 200 and r.json()["ok"] is True and r.json()["rows"] >= 1, r.body
    before = total(scrape(mbroker), "cullis_audit_chain_verify_failed_total")
    with psycopg.connect(mbroker.db_dsn, autocommit=True) as conn:  # INSERT passes the append-only trigger
        conn.execute(
            "INSERT INTO audit_log (timestamp, event_type, org_id, details, result, entry_hash, previous_hash,"
            " chain_seq, principal_type, hash_format) SELECT now(), 'forged', org_id, '{}', 'ok', repeat('0', 64),"
            " entry_hash, chain_seq + 1, 'agent', 'v2' FROM audit_log WHERE org_id = %s"
            " ORDER BY chain_seq DESC LIMIT 1", (org_id,))
    r = admin.admin.admin_get("/v1/admin/audit/verify", query={"org_id": org_id})
    assert r.status == 200 and r.json()["ok"] is False, r.body
    assert any("entry_hash mismatch" in p for p in r.json()["problems"])
    assert total(scrape(mbroker), "cullis_audit_chain_verify_failed_total") == before + 1

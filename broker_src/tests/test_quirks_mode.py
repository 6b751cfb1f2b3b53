"""Quirks mode (`CULLIS_REAL_BROKER_QUIRKS`): each documented behaviour of deployed real brokers,
reproduced on demand (README.md "Quirks mode"; contract broker-api.md sections 1, 2, 3, 5, 6).

One quirks broker (`all`) on servers of this module's own: the tests seal Vault, stop Redis,
blank the admin hash and send SIGTERM, and put everything back for the next test.
"""
from __future__ import annotations

import re
import signal
import threading
import time

import psycopg
import pytest

from ansible_collections.cullis.broker.plugins.module_utils._agent_client import LoginError
from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
from testkit.broker import BrokerProcess, http_get
from testkit.process import wait_for
from testkit.services import OpenBaoServer, PostgresServer, RedisServer

from test_ops import _form, vault_secret  # noqa: E402  (same directory, on sys.path under pytest)

pytestmark = pytest.mark.slow

QUIRKS = {"CULLIS_REAL_BROKER_QUIRKS": "all", "RATE_LIMIT_AUTH_PER_MINUTE": "1000"}


@pytest.fixture(scope="module")
def servers(test_ca):
    pg = PostgresServer().start()
    redis = RedisServer().start()
    bao = OpenBaoServer(ca=test_ca).start().initialize()
    yield pg, redis, bao
    for s in (bao, redis, pg):
        s.cleanup()


@pytest.fixture(scope="module")
def qbroker(servers):
    pg, redis, bao = servers
    b = BrokerProcess(pg, redis, bao, env_overrides=QUIRKS)
    yield b
    b.proc.kill()
    b.cleanup()


def readyz(b):
    return http_get(b.url + "/readyz")


def wait_ready(b, timeout=30):
    wait_for(lambda: readyz(b)[0] == 200, timeout, "broker readyz", b.proc)


def restart(b):
    """SIGKILL and start: with sigterm_ignored a SIGTERM would only wait out the stop grace."""
    b.proc.kill()
    return b.start()


def _concurrently(calls):
    """Run the callables at the same instant (one thread each, a barrier); return their results."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, fn):
        barrier.wait()
        results[i] = fn()
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _db(pg):
    return psycopg.connect(pg.dsn, autocommit=True)


def test_startup_announces_quirks_and_unknown_name_is_fatal(servers, qbroker):
    """The switch is visible at startup; a misspelt quirk refuses to start (exit 1), never silently off."""
    assert "QUIRKS: behaving like deployed real brokers: admin_lockout, no_extensions, reapprove_500, " \
           "redis_fallback, sigterm_ignored, vault_cached, verbatim_serials, write_race" in qbroker.log()
    pg, redis, bao = servers
    b = BrokerProcess(pg, redis, bao, start=False, env_overrides={"CULLIS_REAL_BROKER_QUIRKS": "write_rcae"})
    try:
        b.start(wait=False)
        assert b.proc.popen.wait(60) == 1, b.log()
        assert "CULLIS_REAL_BROKER_QUIRKS: unknown quirk(s) ['write_rcae']" in b.log()
    finally:
        b.cleanup()


def test_write_race_concurrent_revocations_500_and_roll_back(servers, qbroker, org_cls):
    """Point 20: concurrent binding and certificate revocations of one org race on federation_events
    (seq = max+1 under the unique (org_id, seq) index): losers get 500, their write is rolled back,
    and a retry of the same call succeeds."""
    pg = servers[0]
    org = org_cls(qbroker, "race").create()
    agents = [org.add_agent(f"a{i}") for i in range(10)]

    def revoke_binding(bid):
        return bid, BrokerClient(qbroker.url).request(
            "POST", f"/v1/registry/bindings/{bid}/revoke", headers=org.org_headers)
    results = _concurrently([lambda a=a: revoke_binding(a.binding_id) for a in agents])
    lost = [bid for bid, r in results if r.status == 500]
    assert {r.status for _, r in results} <= {200, 500}
    assert lost, "no binding revocation lost the race: %s" % [r.status for _, r in results]
    assert all(r.detail == "Internal server error" for bid, r in results if bid in lost)
    with _db(pg) as conn:
        status = dict(conn.execute("SELECT id, status FROM bindings WHERE org_id = 'race'").fetchall())
        assert {bid for bid in lost if status[bid] == "approved"} == set(lost)  # rolled back, not half done
        seqs = [s for (s,) in conn.execute("SELECT seq FROM federation_events WHERE org_id = 'race' ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
    assert "[500] POST /v1/registry/bindings/" in qbroker.log() and "IntegrityError" in qbroker.log()
    for bid in lost:  # the write did not happen: a plain retry is safe
        assert org.org_request("POST", f"/v1/registry/bindings/{bid}/revoke").status == 200

    def revoke_cert(agent):
        serial = format(agent.issued.cert.serial_number, "x")
        return serial, BrokerClient(qbroker.url, admin_secret=qbroker.admin_secret).admin_post(
            "/v1/admin/certs/revoke", {"serial_hex": serial, "org_id": "race", "agent_id": agent.agent_id})
    results = _concurrently([lambda a=a: revoke_cert(a) for a in agents])
    lost = [s for s, r in results if r.status == 500]
    assert {r.status for _, r in results} <= {200, 500} and lost
    with _db(pg) as conn:
        stored = {s for (s,) in conn.execute("SELECT serial_hex FROM revoked_certs WHERE org_id = 'race'")}
    assert stored == {s for s, r in results if r.status == 200}
    for serial in lost:
        assert org.admin.admin_post("/v1/admin/certs/revoke", {"serial_hex": serial, "org_id": "race"}).status == 200


def test_without_quirks_the_same_writes_are_serialised(broker, org_cls):
    """Our default: a per-org lock before max(seq)+1, so the same concurrent revocations all succeed."""
    org = org_cls(broker, "norace").create()
    agents = [org.add_agent(f"a{i}") for i in range(10)]
    results = _concurrently([lambda a=a: BrokerClient(broker.url).request(
        "POST", f"/v1/registry/bindings/{a.binding_id}/revoke", headers=org.org_headers) for a in agents])
    assert [r.status for r in results] == [200] * len(agents)


def test_reapprove_500_verbatim_serials_no_extensions(qbroker, org_cls):
    """Point 11 (re-approve -> 500), point 3 (serials stored verbatim, never match), point 1
    (no admin agent listing, no suspend endpoint)."""
    org = org_cls(qbroker, "plain").create()
    agent = org.add_agent("a")
    r = org.org_request("POST", f"/v1/registry/bindings/{agent.binding_id}/approve")
    assert (r.status, r.detail) == (500, "Internal server error")
    serial = format(agent.issued.cert.serial_number, "x")
    openssl_form = ":".join(re.findall("..", serial.upper().rjust(len(serial) + len(serial) % 2, "0")))
    for given in (openssl_form, "not-a-serial"):
        r = org.admin.admin_post("/v1/admin/certs/revoke", {"serial_hex": given, "org_id": "plain"})
        assert r.status == 200 and r.json()["serial_hex"] == given
    listed = {x["serial_hex"] for x in org.admin.admin_get("/v1/admin/certs/revoked",
                                                           query={"org_id": "plain"}).json()}
    assert listed == {openssl_form, "not-a-serial"}
    assert org.session(agent).login()["token_type"] == "DPoP"  # the OpenSSL form revoked nothing
    assert org.admin.admin_get("/v1/admin/agents", query={"org_id": "plain"}).status == 404
    assert org.admin.admin_post("/v1/admin/orgs/plain/suspend").status == 404


def test_vault_sealed_readyz_stays_green_then_next_start_fails(servers, qbroker, org_cls):
    """Section 2 "At runtime" / point 8: keys cached -> sealed Vault invisible (readyz ready, logins
    work); the next start fails with exit 3."""
    _pg, _redis, bao = servers
    org = org_cls(qbroker, "sealed").create()
    agent = org.add_agent("a")
    wait_ready(qbroker)
    bao.seal()
    try:
        assert readyz(qbroker) == (200, {"status": "ready", "checks": {"database": "ok", "redis": "ok",
                                                                       "kms": "ok"}})
        assert org.session(agent).login()["token_type"] == "DPoP"
        qbroker.proc.kill()
        qbroker.start(wait=False)
        assert qbroker.proc.popen.wait(60) == 3
        assert "LIFESPAN FAILED: RuntimeError: Failed to write bootstrap token to Vault" in qbroker.log()
    finally:
        bao.unseal()
        bao.wait_active()
        if not qbroker.proc.running:
            qbroker.start()
    wait_ready(qbroker)


def test_sigterm_only_drains_process_keeps_serving(qbroker):
    """Section 1 "Signals" / point 7: SIGTERM -> draining, but the process never exits on its own."""
    wait_ready(qbroker)
    qbroker.proc.signal(signal.SIGTERM)
    wait_for(lambda: readyz(qbroker) == (503, {"status": "draining", "checks": {}}), 5, "draining")
    time.sleep(6)  # past our own drain grace (3 s): a real broker is still there
    assert qbroker.proc.running
    assert http_get(qbroker.url + "/health")[0] == 200
    qbroker.proc.signal(signal.SIGINT)
    time.sleep(1)
    assert qbroker.proc.running
    qbroker.proc.kill()  # what a supervisor does after its grace: SIGKILL
    assert qbroker.proc.popen.returncode == -signal.SIGKILL
    qbroker.start()
    wait_ready(qbroker)


def test_redis_down_at_start_readyz_green_production_logins_500(servers, test_ca, org_cls):
    """Section 5 / point 9: Redis unreachable at startup -> silently in memory, /readyz 200 with
    redis not_configured, and in production every login answers 500 until a restart with Redis."""
    pg, redis, bao = servers
    prod = dict(QUIRKS, ENVIRONMENT="production", POLICY_DEFAULT_DECISION="deny")
    redis.stop()
    b = BrokerProcess(pg, redis, bao, env_overrides=prod)
    try:
        assert readyz(b) == (200, {"status": "ready", "checks": {"database": "ok", "redis": "not_configured",
                                                                 "kms": "ok"}})
        org = org_cls(b, "noredis").create()
        agent = org.add_agent("a")
        with pytest.raises(LoginError) as failure:
            org.session(agent).login()
        assert (failure.value.status, failure.value.detail) == (500, "Internal server error")
        redis.start()
        assert readyz(b)[1]["checks"]["redis"] == "not_configured"  # not noticed until a restart
        restart(b)
        assert readyz(b)[1]["checks"]["redis"] == "ok"
        assert org.session(agent).login()["token_type"] == "DPoP"
    finally:
        if not redis.proc.running:
            redis.start()
        b.proc.kill()
        b.cleanup()


def test_admin_lockout_blank_hash_is_a_trap(servers, qbroker):
    """Runbook 7a on a real broker: blanking admin_secret_hash re-opens nothing (user_set stays
    "true", no bootstrap token), the dashboard login answers 500 "Invalid salt"; only resetting
    admin_password_user_set as well re-opens setup."""
    bao = servers[2]
    token = vault_secret(bao)["data"]["admin_bootstrap_token"]
    assert _form(qbroker, "/dashboard/setup", {"token": token, "password": "the first password"})[0] == 303
    bao.cli("kv", "patch", "secret/broker", "admin_secret_hash=", token=bao.root_token)
    restart(qbroker)
    data = vault_secret(bao)["data"]
    assert data["admin_password_user_set"] == "true" and not data["admin_bootstrap_token"]
    assert _form(qbroker, "/dashboard/login", {"password": "the first password"})[0] == 500
    assert "[500] POST /dashboard/login: ValueError: Invalid salt" in qbroker.log()
    assert _form(qbroker, "/dashboard/setup", {"token": "anything", "password": "another password"})[0] == 409
    # the way out (what playbooks/incidents/admin_lockout.yml does): reset the flag too, restart
    bao.cli("kv", "patch", "secret/broker", "admin_password_user_set=false", token=bao.root_token)
    restart(qbroker)
    token = vault_secret(bao)["data"]["admin_bootstrap_token"]
    assert token
    assert _form(qbroker, "/dashboard/setup", {"token": token, "password": "a brand new password"})[0] == 303
    assert _form(qbroker, "/dashboard/login", {"password": "a brand new password"})[0] == 303

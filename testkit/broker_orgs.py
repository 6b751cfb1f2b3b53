"""Orgs with many agents on a test broker, and direct admin/DB access to check what modules did.

`onboard_org()` runs cullis.broker.org_onboard (CA, mastio key, agents published through
publish-agent, approved bindings) into an identity directory. The broker's rate limits are
sliding windows per client IP kept in Redis (broker-api.md: publish-agent 30/min, auth.token
10/min by default). Tests never delete those counters to get through: `wait_for_rate_budget()`
reads the window (read-only) and waits, bounded, until the calls a step is about to make fit, as
any client sharing the broker's IP would have to.
"""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import psycopg2

from testkit.ansible import COLLECTIONS, run_module


def collection_import():
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))


def admin_client(broker, admin_secret: str | None = None, *, url: str | None = None, ca_path: str | None = None):
    collection_import()
    from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
    return BrokerClient(url or broker.url, admin_secret=admin_secret or broker.admin_secret,
                        ca_path=str(ca_path) if ca_path else None)


def new_org_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


PUBLISH_AGENT_LIMIT = 30  # broker-api.md: federation.publish_agent, per client IP and minute
LOGIN_HITS = 2  # a login from the test process: the DPoP nonce round-trip counts as a hit too


def auth_limit(env: dict) -> int:
    """The auth.token limit of a stack (its .env / broker environment), 10 by default."""
    return int(env.get("RATE_LIMIT_AUTH_PER_MINUTE") or 10)


def wait_for_rate_budget(redis_server, budgets: dict, *, window: float = 60.0, max_wait: float = 90.0) -> float:
    """Wait until each bucket's sliding window has room for the hits about to be made.

    `redis_server`: a testkit RedisServer or a redis:// URL (the stack's REDIS_URL).
    `budgets`: {bucket: (limit, hits_needed)}, e.g. {"auth.token": (10, 2)}. Every client subject
    (`ratelimit:<ip>:<bucket>`) is considered, so it does not matter which address the broker saw.
    Only reads the broker's counters (ZRANGEBYSCORE); returns the seconds waited. Fails when the
    wait would exceed `max_wait` (or a need exceeds the limit): a test must not hang on a limit."""
    import redis
    r = redis.Redis.from_url(redis_server if isinstance(redis_server, str) else redis_server.url)
    started = time.monotonic()
    try:
        while True:
            now, pause = time.time(), 0.0
            for bucket, (limit, need) in budgets.items():
                assert need <= limit, f"{need} calls cannot fit in the {bucket} limit of {limit} per window"
                for key in r.scan_iter(f"ratelimit:*:{bucket}"):
                    scores = sorted(s for _m, s in r.zrangebyscore(key, now - window, "+inf", withscores=True))
                    excess = len(scores) + need - limit
                    if excess > 0:  # the excess-th oldest hit must leave the window first
                        pause = max(pause, scores[excess - 1] + window - now + 0.25)
            if pause <= 0:
                return time.monotonic() - started
            waited = time.monotonic() - started
            assert waited + pause <= max_wait, (
                f"the broker's rate-limit windows {sorted(budgets)} need {waited + pause:.0f}s > {max_wait:.0f}s")
            time.sleep(pause)
    finally:
        r.close()


def onboard_org(broker, org_id: str, identity_dir: Path, n_agents: int, redis_server=None, *,
                url: str | None = None, admin_secret: str | None = None, ca_path: str | None = None) -> dict:
    """Onboard `org_id` with agents a00..a{n-1} on `broker` (or `url`/`admin_secret`/`ca_path`).
    With `redis_server` (the broker's Redis), first waits until the n publish-agent calls fit in
    the broker's window (org_onboard would otherwise wait out 429s with the broker's Retry-After)."""
    if redis_server is not None:
        wait_for_rate_budget(redis_server, {"federation.publish_agent": (PUBLISH_AGENT_LIMIT,
                                                                         min(n_agents, PUBLISH_AGENT_LIMIT))})
    args = {"broker_url": url or broker.url, "admin_secret": admin_secret or broker.admin_secret, "org_id": org_id,
            "identity_dir": str(identity_dir), "agents": [{"name": f"a{i:02d}"} for i in range(n_agents)]}
    if ca_path:
        args["ca_path"] = str(ca_path)
    r = run_module("org_onboard", args)
    assert not r.failed, r.result.get("msg") or r.output[-3000:]
    return r.result


def org_secret(identity_dir: Path) -> str:
    return (identity_dir / "org-secret").read_text().strip()


def db_query(dsn: str, sql: str, args=()) -> list[tuple]:
    collection_import()
    from ansible_collections.cullis.broker.plugins.module_utils._broker_db import libpq_dsn
    conn = psycopg2.connect(libpq_dsn(dsn))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def agent_session(url: str, identity_dir: Path, name: str, ca_path: str | None = None):
    """An AgentSession (the collection's agent protocol client) for agent `name` of an identity dir."""
    collection_import()
    from ansible_collections.cullis.broker.plugins.module_utils._agent_client import AgentIdentity, AgentSession
    from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient
    identity = AgentIdentity.load(str(Path(identity_dir) / "agents" / name))
    return AgentSession(BrokerClient(url, ca_path=str(ca_path) if ca_path else None), url, identity)


def login_error(url: str, identity_dir: Path, name: str, ca_path: str | None = None) -> tuple[int, str]:
    """(status, detail) of one real login; (200, '') when it succeeds."""
    collection_import()
    from ansible_collections.cullis.broker.plugins.module_utils._agent_client import LoginError
    try:
        agent_session(url, identity_dir, name, ca_path).login()
    except LoginError as e:
        return e.status, e.detail
    return 200, ""

"""Orgs with many agents on a test broker, and direct admin/DB access to check what modules did.

`onboard_org()` runs cullis.broker.org_onboard (CA, mastio key, agents published through
publish-agent, approved bindings) into an identity directory. publish-agent allows 30 calls per
minute per client IP (kept in Redis); tests that onboard more agents than that in one minute
clear the counters first with `reset_rate_limits()` - setup, not a fault.
"""
from __future__ import annotations

import sys
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


def reset_rate_limits(redis_server) -> int:
    """`redis_server`: a testkit RedisServer or a redis:// URL (the stack's REDIS_URL)."""
    import redis
    r = redis.Redis.from_url(redis_server if isinstance(redis_server, str) else redis_server.url)
    try:
        keys = list(r.scan_iter("ratelimit:*"))
        return r.delete(*keys) if keys else 0
    finally:
        r.close()


def onboard_org(broker, org_id: str, identity_dir: Path, n_agents: int, redis_server=None, *,
                url: str | None = None, admin_secret: str | None = None, ca_path: str | None = None) -> dict:
    """Onboard `org_id` with agents a00..a{n-1} on `broker` (or `url`/`admin_secret`/`ca_path`)."""
    if redis_server is not None:
        reset_rate_limits(redis_server)
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

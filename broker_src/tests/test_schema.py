"""Schema: migrations from empty, idempotent upgrades, concurrent upgrades, the audit chain and its
append-only trigger (contract sections 1 "Migrations" and 5)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

BROKER_SRC = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BROKER_SRC))

from app.audit import verify_rows  # noqa: E402

HEAD = "u1p2q3r4s5t6_user_pubkey"
TABLES = {"organizations", "agents", "bindings", "revoked_certs", "jti_blacklist", "audit_log", "federation_events",
          "invite_tokens", "sessions", "session_messages", "audit_tsa_anchors", "mastio_audit_replica",
          "alembic_version"}


def _alembic(pg, db, *args) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=f"postgresql+asyncpg://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/{db}")
    return subprocess.Popen([str(Path(sys.executable).parent / "alembic"), *args], cwd=BROKER_SRC, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _connect(pg, db):
    return psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname=db,
                           autocommit=True)


def _schema(conn):
    return conn.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema='public' ORDER BY 1, 2").fetchall()


def test_two_concurrent_upgrades_from_empty_then_noop(pg_server):
    pg_server.psql(f"CREATE DATABASE mig_concurrent OWNER {pg_server.user}")
    procs = [_alembic(pg_server, "mig_concurrent", "upgrade", "head") for _ in range(2)]
    outs = [(p.wait(120), p.stdout.read()) for p in procs]
    assert [rc for rc, _ in outs] == [0, 0], outs
    with _connect(pg_server, "mig_concurrent") as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert TABLES <= tables
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        before = _schema(conn)
        p = _alembic(pg_server, "mig_concurrent", "upgrade", "head")
        assert p.wait(120) == 0
        assert _schema(conn) == before
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        # the column set the contract names
        cols = {(t, c) for t, c, _ in before}
        for col in ("cert_pem", "cert_thumbprint", "token_invalidated_at", "capabilities_json", "is_active"):
            assert ("agents", col) in cols
        for col in ("entry_hash", "previous_hash", "chain_seq", "peer_org_id", "principal_type", "hash_format"):
            assert ("audit_log", col) in cols


def test_broker_database_audit_chain_verifies_and_is_append_only(broker, pg_server, new_org):
    org = new_org("audit")
    agent = org.add_agent("a")
    org.session(agent).login()
    with _connect(pg_server, pg_server.database) as conn:
        conn.row_factory = psycopg.rows.dict_row
        rows = conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
        assert {r["event_type"] for r in rows if r["org_id"] == org.org_id} >= {
            "registry.org_created", "registry.binding_approved", "auth.token_issued"}
        assert all(r["hash_format"] == "v2" for r in rows)
        assert verify_rows(rows) == []
        tampered = [dict(r) for r in rows]
        tampered[-1]["details"] = '{"forged": true}'
        assert verify_rows(tampered)
        with pytest.raises(psycopg.errors.RaiseException, match=r"audit_log is append-only \(CRIT-3 Court\): "
                                                                 r"UPDATE is not permitted"):
            conn.execute("UPDATE audit_log SET result='ok' WHERE id=%s", (rows[0]["id"],))
        with pytest.raises(psycopg.errors.RaiseException, match="DELETE is not permitted"):
            conn.execute("DELETE FROM audit_log WHERE id=%s", (rows[0]["id"],))
        trig = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid='audit_log'::regclass "
                            "AND NOT tgisinternal").fetchall()
        assert [t["tgname"] for t in trig] == ["audit_log_no_update_or_delete"]


def test_upgrade_waits_for_the_migration_advisory_lock(pg_server):
    """Replicas serialise on lock 864996388670390494 (pg_locks classid 201397665, objid 4004626654)."""
    import time
    pg_server.psql(f"CREATE DATABASE mig_locked OWNER {pg_server.user}")
    with _connect(pg_server, "mig_locked") as holder:
        holder.execute("SELECT pg_advisory_lock(864996388670390494)")
        p = _alembic(pg_server, "mig_locked", "upgrade", "head")
        waiting = []
        deadline = time.monotonic() + 60
        while not waiting and time.monotonic() < deadline and p.poll() is None:
            waiting = holder.execute("SELECT pid FROM pg_locks WHERE locktype='advisory' AND classid=201397665 "
                                     "AND objid=4004626654 AND NOT granted").fetchall()
            time.sleep(0.1)
        assert waiting, "alembic upgrade did not wait on the migration lock"
        assert p.poll() is None
        assert holder.execute("SELECT to_regclass('public.audit_log')").fetchone() == (None,)
        holder.execute("SELECT pg_advisory_unlock(864996388670390494)")
        assert p.wait(120) == 0, p.stdout.read()
        assert holder.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]

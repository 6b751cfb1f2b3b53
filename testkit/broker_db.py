"""A broker-shaped PostgreSQL database for backup/restore tests.

`migrate()` applies the broker's real Alembic migrations (broker_src/alembic) to a database, so
tests see the real schema with the append-only audit triggers. `seed()` inserts organizations,
agents and hash-chained (v2) audit rows, optionally back-dated, through `psql` + COPY.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from testkit.services import PG_BIN

REPO = Path(__file__).resolve().parent.parent
BROKER_SRC = REPO / "broker_src"
if str(REPO / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.cullis.broker.plugins.module_utils._audit_chain import entry_hash_v2  # noqa: E402


def migrate(server, database: str) -> None:
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgresql+asyncpg://{server.user}:{server.password}@127.0.0.1:{server.port}/{database}"
    subprocess.run([str(Path(sys.executable).parent / "alembic"), "upgrade", "head"], cwd=BROKER_SRC, env=env,
                   check=True, capture_output=True, text=True)


def create_database(server, database: str) -> None:
    server.psql(f'CREATE DATABASE "{database}" OWNER {server.user}')


def copy_in(server, database: str, table: str, columns: list[str], rows: list[list]) -> None:
    def cell(v):
        if v is None:
            return r"\N"
        return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    data = "".join("\t".join(cell(v) for v in r) + "\n" for r in rows)
    subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d",
                    database, "-v", "ON_ERROR_STOP=1", "-q", "-c",
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN"], input=data, text=True, check=True,
                   capture_output=True)


def seed(server, database: str, orgs: int = 2, agents_per_org: int = 3, audit_per_org: int = 20,
         audit_start: dt.datetime | None = None, audit_step: dt.timedelta = dt.timedelta(hours=1),
         prefix: str = "org") -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    org_rows, agent_rows, audit_rows = [], [], []
    for o in range(orgs):
        org = f"{prefix}{o}"
        org_rows.append([org, f"Org {o}", "$2b$12$" + "x" * 53, "active", now.isoformat(), "{}",
                         f"{org}.example", False, False])
        for a in range(agents_per_org):
            agent_rows.append([f"{org}::agent{a}", org, f"agent {a}", "[]", "{}", True, now.isoformat()])
        ts = audit_start or now - audit_per_org * audit_step
        prev = None
        for seq in range(1, audit_per_org + 1):
            details = '{"n": %d}' % seq
            h = entry_hash_v2(ts, "test.event", f"{org}::agent0", None, org, "ok", details, prev, seq, None)
            audit_rows.append([ts.isoformat(), "test.event", f"{org}::agent0", None, org, details, "ok", h, prev,
                               seq, None, "agent", "v2"])
            prev = h
            ts += audit_step
    copy_in(server, database, "organizations", ["org_id", "display_name", "secret_hash", "status", "registered_at",
                                                "metadata_json", "trust_domain", "sealed", "require_mastio_mtls"],
            org_rows)
    copy_in(server, database, "agents", ["agent_id", "org_id", "display_name", "capabilities_json", "metadata_json",
                                         "is_active", "registered_at"], agent_rows)
    copy_in(server, database, "audit_log", ["timestamp", "event_type", "agent_id", "session_id", "org_id", "details",
                                            "result", "entry_hash", "previous_hash", "chain_seq", "peer_org_id",
                                            "principal_type", "hash_format"], audit_rows)


def count(server, database: str, table: str) -> int:
    return int(server.psql(f"SELECT count(*) FROM {table}", db=database))


class BrokerDatabases:
    """A PostgresServer of one's own with a migrated, seeded template database `tpl`; `fresh()`
    gives each test a new copy (CREATE DATABASE ... TEMPLATE), `drop()` removes it and anything
    created beside it (`<name>_...`)."""

    def __init__(self, prefix: str = "t_", **seed_args):
        from testkit.services import PostgresServer
        self.prefix = prefix
        self.server = PostgresServer().start()
        try:
            create_database(self.server, "tpl")
            migrate(self.server, "tpl")
            seed(self.server, "tpl", **seed_args)
        except Exception:
            self.server.cleanup()
            raise

    def fresh(self) -> str:
        import uuid
        name = self.prefix + uuid.uuid4().hex[:8]
        self.server.psql(f'CREATE DATABASE "{name}" TEMPLATE tpl OWNER {self.server.user}')
        return name

    def drop(self, name: str) -> None:
        for other in self.server.psql(
                f"SELECT datname FROM pg_database WHERE starts_with(datname, '{name}')").split():
            self.server.psql(f'DROP DATABASE "{other}" WITH (FORCE)')

    def cleanup(self) -> None:
        self.server.cleanup()


def make_fixtures(prefix: str, **seed_args):
    """pytest fixtures for a test module: `dbs` (a BrokerDatabases, module scope), `pg` (its
    server) and `db` (a fresh copy of the seeded broker database per test). Use as
    `dbs, pg, db = broker_db.make_fixtures("t_", orgs=3)` at module level."""
    import pytest

    @pytest.fixture(scope="module")
    def dbs():
        databases = BrokerDatabases(prefix=prefix, **seed_args)
        yield databases
        databases.cleanup()

    @pytest.fixture(scope="module")
    def pg(dbs):
        return dbs.server

    @pytest.fixture
    def db(dbs):
        name = dbs.fresh()
        yield name
        dbs.drop(name)

    return dbs, pg, db

#!/usr/bin/env python3
"""Benchmark cullis.broker.pg_backup against the raw tools (issue 8). Run by hand, not in CI:

    .venv/bin/python bench/bench_pg_backup.py              # >= 500 MB database (default)
    .venv/bin/python bench/bench_pg_backup.py --size-mb 50 # a quick run

On its own PostgreSQL 15 (testkit.PostgresServer, stopped at the end) it generates a database of
at least --size-mb (pg_database_size), then times in one run:
  backup   pg_backup (custom, -Z6 default)        vs  raw `pg_dump -Fc`
           pg_backup (plain .sql.gz)               vs  raw `pg_dump | gzip`
           pg_backup (custom, AES-256-GCM)
           community.postgresql.postgresql_db state=dump (.sql.gz)
  restore  pg_backup state=restored (checksum, new DB, row counts, swap)  vs  raw `pg_restore -d`
and prints seconds, sizes and the ratios to the raw tools. The module numbers include the
ansible-playbook start-up (about 1-3 s), which is what an operator pays.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.ansible import run_module  # noqa: E402
from testkit.services import PG_BIN, PostgresServer  # noqa: E402

DB = "benchdb"


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def generate(pg: PostgresServer, size_mb: int) -> int:
    pg.psql(f"CREATE DATABASE {DB} OWNER {pg.user}")
    pg.psql(f"CREATE TABLE events (id bigserial PRIMARY KEY, org_id text NOT NULL, ts timestamptz NOT NULL, "
            f"payload text NOT NULL); ALTER TABLE events OWNER TO {pg.user}; "
            f"CREATE TABLE orgs (org_id text PRIMARY KEY, name text); ALTER TABLE orgs OWNER TO {pg.user}; "
            "INSERT INTO orgs SELECT 'org' || g, 'Org ' || g FROM generate_series(1, 1000) g", db=DB)
    batch = 200_000
    while True:
        size = int(pg.psql(f"SELECT pg_database_size('{DB}')"))
        if size >= size_mb * 1024 * 1024:
            break
        pg.psql("INSERT INTO events (org_id, ts, payload) SELECT 'org' || (g % 1000), now() - g * interval '1 second', "
                "md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(g::text) "
                f"FROM generate_series(1, {batch}) g", db=DB)
    pg.psql("VACUUM ANALYZE", db=DB)
    return int(pg.psql(f"SELECT pg_database_size('{DB}')"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cullis-bench-"))
    work.chmod(0o755)
    pg = PostgresServer().start()
    env = dict(os.environ, PGPASSWORD=pg.password)
    conn = dict(login_host="127.0.0.1", login_port=pg.port, login_user=pg.user, login_password=pg.password)
    su = dict(conn, login_user="postgres")
    rows: list[tuple[str, float, int | None]] = []

    def mod(name, args_, **kw):
        res = run_module(name, args_, timeout=7200, **kw)
        if res.failed:
            raise SystemExit(f"{name} failed: {res.result.get('msg')}\n{res.output[-2000:]}")
        return res

    try:
        t, size = timed(lambda: generate(pg, args.size_mb))
        print(f"generated {DB}: {size / 2**20:.0f} MB in {t:.0f} s", flush=True)
        raw = ["-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user]

        t, _ = timed(lambda: subprocess.run([PG_BIN / "pg_dump", "-Fc", "-Z", "6", "-f", work / "raw.dump", *raw, DB],
                                            env=env, check=True))
        rows.append(("raw pg_dump -Fc -Z6", t, (work / "raw.dump").stat().st_size))
        t, res = timed(lambda: mod("pg_backup", dict(conn, database=DB, dest=str(work / "mod"))))
        custom_path = res.result["backup_path"]
        rows.append(("pg_backup custom", t, res.result["size"]))

        t, _ = timed(lambda: subprocess.run(
            f"{PG_BIN}/pg_dump -h 127.0.0.1 -p {pg.port} -U {pg.user} {DB} | gzip -6 > {work}/raw.sql.gz",
            shell=True, env=env, check=True))
        rows.append(("raw pg_dump | gzip", t, (work / "raw.sql.gz").stat().st_size))
        t, res = timed(lambda: mod("pg_backup", dict(conn, database=DB, dest=str(work / "mod"), format="plain")))
        rows.append(("pg_backup plain .sql.gz", t, res.result["size"]))

        key = work / "key"
        key.write_bytes(os.urandom(32))
        t, res = timed(lambda: mod("pg_backup", dict(conn, database=DB, dest=str(work / "enc"),
                                                     encryption_key_file=str(key))))
        rows.append(("pg_backup custom + AES-256-GCM", t, res.result["size"]))

        cp_env = {"PATH": f"{PG_BIN}:{os.environ['PATH']}"}
        t, _ = timed(lambda: mod("community.postgresql.postgresql_db",
                                 dict(name=DB, state="dump", target=str(work / "community.sql.gz"), login_host="127.0.0.1",
                                      port=pg.port, login_user=pg.user, login_password=pg.password), env=cp_env))
        rows.append(("community.postgresql_db dump .sql.gz", t, (work / "community.sql.gz").stat().st_size))

        pg.psql(f"CREATE DATABASE raw_restore OWNER {pg.user}")
        t, _ = timed(lambda: subprocess.run([PG_BIN / "pg_restore", "-d", "raw_restore", *raw, custom_path],
                                            env=env, check=True))
        rows.append(("raw pg_restore -d (custom)", t, None))
        t, _ = timed(lambda: mod("pg_backup", dict(su, state="restored", database="mod_restore", path=custom_path)))
        rows.append(("pg_backup restored (custom)", t, None))
    finally:
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    base = {r[0]: r[1] for r in rows}
    ratio_to = {"pg_backup custom": "raw pg_dump -Fc -Z6", "pg_backup plain .sql.gz": "raw pg_dump | gzip",
                "pg_backup custom + AES-256-GCM": "raw pg_dump -Fc -Z6",
                "community.postgresql_db dump .sql.gz": "raw pg_dump | gzip",
                "pg_backup restored (custom)": "raw pg_restore -d (custom)"}
    print(f"\ndatabase {size / 2**20:.0f} MB\n{'what':42} {'seconds':>8} {'size MB':>8}  ratio")
    for name, secs, nbytes in rows:
        r = f"{secs / base[ratio_to[name]]:.2f}x {ratio_to[name]}" if name in ratio_to else "(baseline)"
        print(f"{name:42} {secs:8.1f} {(nbytes or 0) / 2**20:8.1f}  {r}")


if __name__ == "__main__":
    main()

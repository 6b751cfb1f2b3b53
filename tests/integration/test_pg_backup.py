"""cullis.broker.pg_backup against a real PostgreSQL 15 with the broker's real schema.

Runbook sections proved here: §2 "Postgres down or unreachable" (Recover 3: restore from backup,
data-loss window = last backup) and "Backups — what to save" (daily Postgres dump). The server is
this module's own (tests rename, drop and terminate databases); each test gets a fresh copy of
a migrated, seeded broker database.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testkit import broker_db
from testkit.ansible import run_module
from testkit.services import PG_BIN


dbs, pg, db = broker_db.make_fixtures("t_", orgs=3, agents_per_org=4, audit_per_org=25)


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "backups"
    d.mkdir()
    return d


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "backup.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def conn(pg, **extra):
    return dict(login_host="127.0.0.1", login_port=pg.port, login_user=pg.user, login_password=pg.password, **extra)


def pg_backup(pg, **args):
    res = run_module("pg_backup", conn(pg, **args))
    assert pg.password not in res.output
    return res


def databases(pg, prefix):
    return sorted(pg.psql(f"SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')").split())


def counts(pg, db):
    return {t: broker_db.count(pg, db, t) for t in ("organizations", "agents", "audit_log")}


def listing(directory: Path):
    return sorted(p.name for p in directory.iterdir())


def add_filler(pg, db, megabytes=3):
    pg.psql(f"CREATE TABLE filler (t text); ALTER TABLE filler OWNER TO {pg.user}; "
            f"INSERT INTO filler SELECT repeat(md5(i::text), 32) FROM generate_series(1, {megabytes * 1024}) i",
            db=db)


def bin_dir_with(tmp_path, pg_dump_script: str) -> Path:
    """A pg_bin_dir whose pg_dump is a test wrapper around the real one (the rest are links)."""
    d = tmp_path / "bin"
    d.mkdir()
    for prog in ("psql", "pg_restore"):
        (d / prog).symlink_to(PG_BIN / prog)
    wrapper = d / "pg_dump"
    wrapper.write_text("#!/bin/bash\n" + pg_dump_script.replace("REAL", str(PG_BIN / "pg_dump")) + "\n")
    wrapper.chmod(0o755)
    return d


def test_backup_writes_checksum_and_manifest_with_snapshot_row_counts(pg, db, dest):
    """Backups: a daily dump with a SHA-256 and a manifest an operator can check by hand."""
    res = pg_backup(pg, database=db, dest=str(dest))
    assert not res.failed, res.result.get("msg")
    assert res.changed
    path = Path(res.result["backup_path"])
    manifest = json.loads(Path(str(path) + ".json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["sha256"] == digest == res.result["sha256"]
    assert Path(str(path) + ".sha256").read_text() == f"{digest}  {path.name}\n"
    assert manifest["size"] == path.stat().st_size
    assert manifest["database"] == db and manifest["format"] == "custom"
    assert manifest["server_version"].startswith("15.")
    assert manifest["row_counts"]["public.audit_log"] == 75
    assert manifest["row_counts"]["public.agents"] == 12
    assert manifest["start_time"] <= manifest["end_time"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not [n for n in listing(dest) if ".partial-" in n]
    # the dump is a real pg_dump archive
    toc = subprocess.run([PG_BIN / "pg_restore", "-l", path], capture_output=True, text=True, check=True).stdout
    assert "TRIGGER public audit_log audit_log_no_update_or_delete" in toc


@pytest.mark.parametrize("fmt,encrypted", [("custom", True), ("plain", False), ("directory", False)])
def test_backup_change_restore_brings_data_back(pg, db, dest, key_file, fmt, encrypted):
    """§2 Recover 3: restore after corruption. Broker sessions are terminated, the old DB is kept."""
    extra = dict(encryption_key_file=str(key_file)) if encrypted else {}
    before = counts(pg, db)
    res = pg_backup(pg, database=db, dest=str(dest), format=fmt, jobs=2, **extra)
    assert not res.failed, res.result.get("msg")
    # change data after the backup, and hold a session open like the broker's pool does
    pg.psql("INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
            "VALUES ('late', 'Late', 'x', now()); DELETE FROM agents WHERE org_id = 'org1'", db=db)
    broker_session = subprocess.Popen([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user,
                                       "-d", db, "-Atq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    try:
        broker_session.stdin.write("SELECT 1;\n")
        broker_session.stdin.flush()
        assert broker_session.stdout.readline().strip() == "1"
        res = pg_backup(pg, state="restored", database=db, dest=str(dest), confirm=True, jobs=2, **extra)
        assert not res.failed, res.result.get("msg")
        assert res.result["terminated_connections"] >= 1
        # the broker's pooled connection was closed by the server (it reconnects on next use)
        _out, err = broker_session.communicate("SELECT 2;\n", timeout=30)
        assert "terminat" in err or "closed" in err, err
    finally:
        if broker_session.poll() is None:
            broker_session.kill()
            broker_session.wait()
    assert counts(pg, db) == before
    manifest = res.result["manifest"]
    expected = {k: v for k, v in manifest["row_counts"].items()}
    assert res.result["row_counts"] == expected
    assert pg.psql("SELECT count(*) FROM organizations WHERE org_id = 'late'", db=db) == "0"
    previous = res.result["previous_database"]
    assert previous.startswith(f"{db}_pre_restore_")
    assert pg.psql("SELECT count(*) FROM organizations WHERE org_id = 'late'", db=previous) == "1"
    assert databases(pg, db) == sorted([db, previous])
    assert res.result["backup_time"] == manifest["start_time"]
    # the audit log is append-only again in the restored database
    out = subprocess.run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", db,
                          "-c", "DELETE FROM audit_log"], capture_output=True, text=True)
    assert out.returncode != 0 and "append-only" in out.stderr


def test_restore_over_live_db_needs_confirm_and_check_mode_only_plans(pg, db, dest):
    """§2 Recover 3: replacing the live database is never implicit."""
    assert not pg_backup(pg, database=db, dest=str(dest)).failed
    pg.psql("INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
            "VALUES ('marker', 'M', 'x', now())", db=db)
    plan = run_module("pg_backup", conn(pg, state="restored", database=db, dest=str(dest), confirm=True), check=True)
    assert not plan.failed and plan.changed
    assert any("rename" in step for step in plan.result["plan"])
    refused = pg_backup(pg, state="restored", database=db, dest=str(dest))
    assert refused.failed and "confirm=true" in refused.result["msg"]
    assert databases(pg, db) == [db]
    assert pg.psql("SELECT count(*) FROM organizations WHERE org_id = 'marker'", db=db) == "1"


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "wrong_key"])
def test_damaged_backup_is_refused_and_live_db_untouched(pg, db, dest, key_file, tmp_path, damage):
    """§2 Recover 3: a bad backup is found before anything is touched, not halfway through."""
    res = pg_backup(pg, database=db, dest=str(dest), encryption_key_file=str(key_file))
    assert not res.failed, res.result.get("msg")
    path = Path(res.result["backup_path"])
    data = path.read_bytes()
    use_key = key_file
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped_byte":
        i = len(data) // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    else:
        use_key = tmp_path / "other.key"
        use_key.write_bytes(os.urandom(32))
        use_key.chmod(0o600)  # the key files policy: readable by the owner only
    pg.psql("INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
            "VALUES ('marker', 'M', 'x', now())", db=db)
    before = counts(pg, db)
    res = pg_backup(pg, state="restored", database=db, path=str(path), confirm=True, encryption_key_file=str(use_key))
    assert res.failed
    msg = res.result["msg"]
    if damage == "wrong_key":
        assert "wrong encryption key" in msg
    else:
        assert "checksum mismatch" in msg
    assert counts(pg, db) == before
    assert databases(pg, db) == [db]


def test_damaged_backup_without_checksum_is_refused_by_decryption(pg, db, dest, key_file):
    """§2 Recover 3: even if someone "fixes" the manifest checksum, GCM authentication refuses."""
    res = pg_backup(pg, database=db, dest=str(dest), encryption_key_file=str(key_file))
    path = Path(res.result["backup_path"])
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x80
    path.write_bytes(bytes(data))
    manifest_file = Path(str(path) + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest_file.write_text(json.dumps(manifest))
    res = pg_backup(pg, state="restored", database=db, path=str(path), confirm=True,
                    encryption_key_file=str(key_file))
    assert res.failed and "failed authentication" in res.result["msg"]
    assert databases(pg, db) == [db]


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_fails_without_partial_file_and_keeps_older_backups(pg, db, small_tmpfs):
    """Backups / §2 Recover 2 (disk full): a failed dump leaves nothing behind, older backups intact."""
    older = pg_backup(pg, database=db, dest=str(small_tmpfs), compress_level=0)
    assert not older.failed, older.result.get("msg")
    older_files = {p.name: p.read_bytes() for p in small_tmpfs.iterdir() if p.suffix != ".lock"}
    assert len(older_files) == 3  # dump, .json, .sha256
    add_filler(pg, db, megabytes=3)
    res = pg_backup(pg, database=db, dest=str(small_tmpfs), compress_level=0)
    assert res.failed
    assert "no space left" in res.result["msg"]
    assert {p.name: p.read_bytes() for p in small_tmpfs.iterdir() if p.suffix != ".lock"} == older_files
    verify = pg_backup(pg, state="verified", database=db, path=older.result["backup_path"], quick=True)
    assert not verify.failed, verify.result.get("msg")


def test_pg_dump_killed_mid_run_leaves_no_partial_file(pg, db, dest, tmp_path):
    """Backups: a dump that dies after writing part of its output never becomes a backup."""
    add_filler(pg, db, megabytes=1)
    # the "pg_dump" the module runs streams 64 KiB of the real dump, then is SIGKILLed
    bin_dir = bin_dir_with(tmp_path, 'REAL "$@" | head -c 65536\nkill -9 $$')
    res = pg_backup(pg, database=db, dest=str(dest), compress_level=0, pg_bin_dir=str(bin_dir))
    assert res.failed
    assert "pg_dump" in res.result["msg"] and "no backup was written" in res.result["msg"]
    assert listing(dest) == [f".{db}.lock"]


def test_concurrent_backups_one_fails_clearly(pg, db, dest, tmp_path):
    """Backups: two cron runs at once (overlapping daily jobs) must not interleave."""
    started, go = tmp_path / "started", tmp_path / "go"
    bin_dir = bin_dir_with(tmp_path, f'touch {started}\nwhile [ ! -e {go} ]; do sleep 0.1; done\nexec REAL "$@"')
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "first", pg_backup(pg, database=db, dest=str(dest), pg_bin_dir=str(bin_dir))))
    first.start()
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert started.exists(), "first backup never reached pg_dump"
        second = pg_backup(pg, database=db, dest=str(dest), pg_bin_dir=str(bin_dir))
    finally:
        go.touch()
        first.join(120)
    assert second.failed
    assert "another backup job of this database is running" in second.result["msg"]
    assert not results["first"].failed, results["first"].result.get("msg")
    backups = [n for n in listing(dest) if n.endswith(".dump")]
    assert backups == [Path(results["first"].result["backup_path"]).name]


def test_retention_keeps_exactly_the_right_set(pg, db, dest):
    """Backups: keep_last/keep_days prune, but the newest verified backup always survives."""
    paths = []
    for _ in range(4):
        res = pg_backup(pg, database=db, dest=str(dest))
        assert not res.failed, res.result.get("msg")
        paths.append(res.result["backup_path"])
    now = time.time()
    ages_days = [30, 20, 2, 0]
    for path, age in zip(paths, ages_days):
        mf = Path(path + ".json")
        m = json.loads(mf.read_text())
        m["start_epoch"] = now - age * 86400 - 60
        if age == 30:
            m["verification"] = {"status": "ok", "mode": "restore", "at": "x"}
        mf.write_text(json.dumps(m))
    args = dict(state="pruned", database=db, dest=str(dest), keep_last=1, keep_days=7)
    plan = run_module("pg_backup", conn(pg, **args), check=True)
    assert plan.changed and plan.result["deleted"] == [paths[1]]
    assert Path(paths[1]).exists()
    res = pg_backup(pg, **args)
    assert res.changed
    assert res.result["deleted"] == [paths[1]]
    assert res.result["kept"] == [paths[0], paths[2], paths[3]]
    left = sorted(n for n in listing(dest) if not n.startswith("."))
    expected = sorted(Path(p).name + suffix for p in (paths[0], paths[2], paths[3]) for suffix in ("", ".json", ".sha256"))
    assert left == expected
    again = pg_backup(pg, **args)
    assert not again.failed and not again.changed


def test_runbook_sql_gz_restores_and_sql_errors_fail(pg, db, tmp_path):
    """§2 Recover 3: `scripts/pg-restore.sh <backup.sql.gz>` backups still restore; an SQL error fails."""
    dump = subprocess.run([PG_BIN / "pg_dump", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, db],
                          capture_output=True, check=True).stdout
    good = tmp_path / "agent_trust-2026-04-12.sql.gz"
    good.write_bytes(gzip.compress(dump))
    bad = tmp_path / "broken.sql.gz"
    bad.write_bytes(gzip.compress(dump + b"\nINSERT INTO no_such_table VALUES (1);\n"))
    before = counts(pg, db)
    pg.psql("DELETE FROM agents", db=db)
    res = pg_backup(pg, state="restored", database=db, path=str(bad), confirm=True)
    assert res.failed and "no_such_table" in res.result["msg"]
    assert broker_db.count(pg, db, "agents") == 0 and databases(pg, db) == [db]
    res = pg_backup(pg, state="restored", database=db, path=str(good), confirm=True)
    assert not res.failed, res.result.get("msg")
    assert counts(pg, db) == before
    assert any("no manifest" in step for step in res.result["plan"])


def test_verify_restores_into_scratch_and_catches_row_count_mismatch(pg, db, dest):
    """Backups: a backup is only trusted once it restored; verification is recorded in the manifest."""
    res = pg_backup(pg, database=db, dest=str(dest), format="plain")
    path = res.result["backup_path"]
    quick = pg_backup(pg, state="verified", database=db, dest=str(dest), quick=True)
    assert not quick.failed and quick.result["verification"]["mode"] == "quick"
    full = pg_backup(pg, state="verified", database=db, path=path, record=True)
    assert not full.failed, full.result.get("msg")
    assert full.result["row_counts"]["public.audit_log"] == 75
    manifest = json.loads(Path(path + ".json").read_text())
    assert manifest["verification"]["status"] == "ok" and manifest["verification"]["mode"] == "restore"
    assert databases(pg, db) == [db]  # scratch database dropped
    # a manifest that does not match the dump's content is caught by the scratch restore
    manifest["row_counts"]["public.agents"] += 1
    Path(path + ".json").write_text(json.dumps(manifest))
    bad = pg_backup(pg, state="verified", database=db, path=path, record=True)
    assert bad.failed and "public.agents: manifest 13, restored 12" in bad.result["msg"]
    assert json.loads(Path(path + ".json").read_text())["verification"]["status"] == "failed"
    assert databases(pg, db) == [db]

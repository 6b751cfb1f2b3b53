"""Backups and PostgreSQL recoveries on the deployed stack (runbook §2 and "Backups — what to save").

backup.yml takes a verified, encrypted backup set (Postgres + Vault + .env); restore.yml brings
the data back; postgres_down.yml recovers a stopped Postgres (restart), a full disk (audit rows
archived with their chain anchors) and a corrupt data directory (restore from the newest verified
set, data-loss window reported), and changes nothing on a healthy stack.

Every test leaves the stack healthy (the next test gets the same stack).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from testkit import scenarios
from testkit.ansible import REPO, run_module
from testkit.scenarios import assert_no_secret, assert_ready_db as assert_ready, drop_pre_restore  # noqa: F401 (test_failsafe_playbooks)
from testkit.process import free_port

sys.path.insert(0, str(REPO / "collections"))
from ansible_collections.cullis.broker.plugins.module_utils._audit_chain import entry_hash_v2, verify_chain  # noqa: E402

pytestmark = pytest.mark.slow


def psql(stack, sql: str, db: str = "agent_trust") -> str:
    return stack.psql(sql, db)


def stop_postgres(stack) -> None:
    res = run_module("stack_service", {"name": "postgres", "state": "stopped", **stack.module_args()})
    assert not res.failed, res.result.get("msg")


def backup(stack):
    return scenarios.take_backup(stack)


def test_backup_set_then_restore_brings_data_back(stack):
    """Backups + §2 Recover 3: a verified set (Postgres, Vault, .env), then restore.yml.
    (The tampered-set refusal of the scenario runs on the compose stack, tests/e2e_compose: it is
    checked on the controller, the same code on both runtimes, and this stage must not grow.)"""
    scenarios.backup_tamper_restore(stack, tamper=False)


def test_postgres_down_healthy_changes_nothing_then_restarts_a_stopped_postgres(stack):
    """§2 Recover 1 + Verify: pg_isready, restart, the broker reconnects; healthy -> changed=0."""
    scenarios.postgres_down_restart(stack)


def test_postgres_down_disk_full_archives_audit_rows_with_anchors(stack, tmp_path):
    """§2 Recover 2 (disk full): audit rows archived, archive verified, chain verifies from the anchor.

    The full disk is injected by lowering the threshold (cullis_pg_disk_full_percent=1): filling
    the real filesystem of a shared machine is not an option."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    rows, prev, ts = [], None, now - dt.timedelta(days=200)
    for seq in range(1, 31):
        details = '{"n": %d}' % seq
        h = entry_hash_v2(ts, "test.event", None, None, "old-org", "ok", details, prev, seq, None)
        rows.append(f"('{ts.isoformat()}', 'test.event', 'old-org', '{details}', 'ok', '{h}', "
                    f"{'NULL' if prev is None else repr(prev)}, {seq})")
        prev, ts = h, ts + dt.timedelta(days=5)
    psql(stack, "INSERT INTO audit_log (timestamp, event_type, org_id, details, result, entry_hash, previous_hash, "
                "chain_seq) VALUES " + ", ".join(rows))
    archive_dir = tmp_path / "cold"
    res = stack.run("playbooks/incidents/postgres_down.yml",
                    extra_vars={"cullis_pg_disk_full_percent": 1, "cullis_pg_audit_archive_days": 90,
                                "cullis_pg_audit_archive_dir": str(archive_dir)})
    assert res.rc == 0, res.output[-3000:]
    assert "class: disk_full" in res.output
    archives = list(archive_dir.glob("*.jsonl.gz"))
    assert len(archives) == 1
    assert psql(stack, "SELECT count(*) FROM audit_log WHERE org_id = 'old-org'") == "7"
    anchor = psql(stack, "SELECT chain_seq, entry_hash FROM cullis_ops.audit_anchors WHERE org_id = 'old-org' "
                         "ORDER BY chain_seq DESC LIMIT 1").split("|")
    remaining = [json.loads(line) for line in psql(stack, (
        "SELECT json_build_object('org_id', org_id, 'chain_seq', chain_seq, 'timestamp', "
        "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), 'event_type', event_type, "
        "'agent_id', agent_id, 'session_id', session_id, 'result', result, 'details', details, "
        "'entry_hash', entry_hash, 'previous_hash', previous_hash, 'peer_org_id', peer_org_id, "
        "'principal_type', principal_type, 'hash_format', hash_format) FROM audit_log WHERE org_id = 'old-org'"))
        .splitlines()]
    assert verify_chain(remaining, {"old-org": (int(anchor[0]), anchor[1])})[0] == []
    verify = run_module("audit_archive", {"state": "verified", "path": str(archives[0])})
    assert not verify.failed and verify.result["rows"] == 23
    assert_ready(stack)


def test_postgres_down_corruption_restores_newest_verified_backup(stack):
    """§2 Recover 3 (won't start: corruption): restore from backup, data-loss window = backup time."""
    _res, set_dir = backup(stack)
    psql(stack, "INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                "VALUES ('lost-in-window', 'x', 'x', now())")
    stop_postgres(stack)
    (stack.dir / "postgres" / "data" / "global" / "pg_control").unlink()
    try:
        res = stack.run("playbooks/incidents/postgres_down.yml")
        assert res.rc == 0, res.output[-4000:]
        assert "class: corruption" in res.output
        backup_time = json.loads((set_dir / "backup-set.json").read_text())
        pg_manifest = json.loads((set_dir / (backup_time["postgres"] + ".json")).read_text())
        assert f"changes after {pg_manifest['start_time']} are lost" in res.output
        assert_no_secret(stack, res)
        assert psql(stack, "SELECT count(*) FROM organizations WHERE org_id = 'lost-in-window'") == "0"
        assert list((stack.dir / "postgres").glob("data.corrupt-*"))
        assert_ready(stack)
    finally:
        for d in (stack.dir / "postgres").glob("data.corrupt-*"):
            shutil.rmtree(d, ignore_errors=True)


def test_dr_drill_restores_into_staging_and_smoke_passes(stack, tmp_path):
    """Backups — the quarterly drill: restore Postgres + Vault into staging, smoke test passes
    (the same scenario runs on the compose runtime: tests/e2e_compose/test_compose_dr.py)."""
    base = Path(tempfile.mkdtemp(prefix="cullis-dr-"))
    base.chmod(0o755)  # the postgres OS user must traverse it
    staging_dir = base / "staging"
    ports: set[int] = set(stack.ports.values())
    extra = {}
    for name in stack.ports:  # the same port variables, other free ports
        port = free_port()
        while port in ports:
            port = free_port()
        ports.add(port)
        extra[name] = port
    extra.update(cullis_stack_dir=str(staging_dir), **stack.extra_vars)
    # staging runs the broker from the session stack's venv (read-only use, the same requirements:
    # the role finds its fingerprint and skips pip), as conftest's deployed_stack shares venvs;
    # building a venv is the first deploy's test, not the drill's (saves a pip install of the tree)
    extra["cullis_broker_venv"] = stack.broker_venv
    try:
        scenarios.dr_drill(stack, "inventories/staging-local", staging_dir, extra)
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""cullis.broker.audit_archive on the broker's real schema (append-only trigger) in PostgreSQL 15.

Runbook §2 "Postgres down or unreachable", Recover 2 (disk full): "Rotate/compress old audit rows
(audit_log is append-only; safe to archive rows older than N days to cold storage)" — done so that
the archive verifies on its own and the remaining chain still verifies from the recorded anchor.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from testkit import broker_db
from testkit.ansible import run_module, run_playbook
from testkit.services import PG_BIN

from ansible_collections.cullis.broker.plugins.module_utils._audit_chain import verify_chain  # noqa: E402  (path set by testkit.broker_db)

NOW = dt.datetime.now(dt.timezone.utc)


# 25 entries per org, one every 2 days, from 60 days ago to 12 days ago
dbs, pg, db = broker_db.make_fixtures("a_", orgs=2, audit_per_org=25, audit_start=NOW - dt.timedelta(days=60),
                                      audit_step=dt.timedelta(days=2))


def db_rows(pg, db):
    out = pg.psql("SELECT json_build_object('org_id', org_id, 'chain_seq', chain_seq, 'timestamp', "
                  "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), 'event_type', event_type, "
                  "'agent_id', agent_id, 'session_id', session_id, 'result', result, 'details', details, "
                  "'entry_hash', entry_hash, 'previous_hash', previous_hash, 'peer_org_id', peer_org_id, "
                  "'principal_type', principal_type, 'hash_format', hash_format) FROM audit_log", db=db)
    return [json.loads(line) for line in out.splitlines()]


def archive(pg, db, user="postgres", **args):
    res = run_module("audit_archive", dict(login_host="127.0.0.1", login_port=pg.port, login_user=user,
                                           login_password=pg.password, database=db, **args))
    assert pg.password not in res.output
    return res


def test_archive_keeps_chain_verifiable_and_trigger_in_place(pg, db, tmp_path):
    """§2 Recover 2: archive old audit rows; archive verifies, remaining chain verifies from the anchor."""
    cold = tmp_path / "cold"
    plan = run_module("audit_archive", dict(login_host="127.0.0.1", login_port=pg.port, login_user="postgres",
                                            database=db, older_than_days=31, dest=str(cold)), check=True)
    assert plan.changed and plan.result["rows"] == 30 and not cold.exists()

    res = archive(pg, db, older_than_days=31, dest=str(cold))
    assert not res.failed, res.result.get("msg")
    assert res.changed and res.result["rows"] == 30
    assert res.result["trigger_bypass"] == "session_replication_role"
    for org in ("org0", "org1"):
        info = res.result["orgs"][org]
        assert (info["first_seq"], info["last_seq"], info["rows"]) == (1, 15, 15)
    assert broker_db.count(pg, db, "audit_log") == 20
    anchors = {r.split("|")[0]: (int(r.split("|")[1]), r.split("|")[2]) for r in pg.psql(
        "SELECT org_id, chain_seq, entry_hash FROM cullis_ops.audit_anchors", db=db).splitlines()}
    assert {org: seq for org, (seq, _h) in anchors.items()} == {"org0": 15, "org1": 15}
    problems, _last = verify_chain(db_rows(pg, db), anchors)
    assert problems == []
    # the remaining chain without its anchor does NOT verify: the anchor is what makes it verifiable
    assert verify_chain(db_rows(pg, db))[0]
    # the append-only trigger is back in force
    out = subprocess.run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", db,
                          "-c", "DELETE FROM audit_log WHERE chain_seq = 20"], capture_output=True, text=True)
    assert out.returncode != 0 and "append-only" in out.stderr
    # the archive verifies on its own, and a flipped byte is caught
    path = Path(res.result["archive_path"])
    ok = archive(pg, db, state="verified", path=str(path))
    assert not ok.failed and ok.result["rows"] == 30
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    bad = archive(pg, db, state="verified", path=str(path))
    assert bad.failed and "checksum mismatch" in bad.result["msg"]

    # nothing older left: no change
    again = archive(pg, db, older_than_days=31, dest=str(cold))
    assert not again.failed and not again.changed


def test_second_archive_as_table_owner_continues_from_the_anchor(pg, db, tmp_path):
    """§2 Recover 2: repeated archiving (non-superuser owner) never archives an org's newest entry."""
    cold = tmp_path / "cold"
    first = archive(pg, db, older_than_days=31, dest=str(cold))
    assert not first.failed, first.result.get("msg")
    second = archive(pg, db, user=pg.user, older_than_days=0, dest=str(cold))
    assert not second.failed, second.result.get("msg")
    assert second.result["trigger_bypass"] == "disable_trigger"
    assert second.result["rows"] == 18
    for org in ("org0", "org1"):
        info = second.result["orgs"][org]
        assert (info["first_seq"], info["last_seq"]) == (16, 24)
        assert second.result["manifest"]["anchors_before"][org]["chain_seq"] == 15
    assert pg.psql("SELECT string_agg(org_id || ':' || chain_seq, ',' ORDER BY org_id) FROM audit_log", db=db) \
        == "org0:25,org1:25"
    assert pg.psql("SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_log_no_update_or_delete'", db=db) == "O"
    # the second archive verifies from the first archive's anchor
    verify = archive(pg, db, state="verified", path=second.result["archive_path"])
    assert not verify.failed, verify.result.get("msg")


def chain_info(pg, db):
    res = run_module("audit_chain_info", dict(login_host="127.0.0.1", login_port=pg.port, login_user=pg.user,
                                              login_password=pg.password, database=db))
    assert not res.failed, res.result.get("msg")
    assert not res.changed and pg.password not in res.output
    return res.result


def test_audit_chain_info_verifies_live_chain_from_anchor_and_names_tampering(pg, db, tmp_path):
    """Upgrade verify (runbook §2 Recover 2 archives first): audit_chain_info reads audit_log through
    psycopg2 (server-side cursor), verifies from genesis, then from the anchor audit_archive left,
    and names the row whose hash no longer matches after a superuser edits it behind the trigger."""
    full = chain_info(pg, db)
    assert (full["verified"], full["rows"], full["orgs"], full["problems"]) == (True, 50, 2, [])
    assert not archive(pg, db, older_than_days=31, dest=str(tmp_path / "cold")).failed
    anchored = chain_info(pg, db)
    assert (anchored["verified"], anchored["rows"], anchored["orgs"]) == (True, 20, 2)
    pg.psql("SET session_replication_role = replica; "
            "UPDATE audit_log SET result = 'denied' WHERE org_id = 'org1' AND chain_seq = 20", db=db)
    tampered = chain_info(pg, db)
    assert not tampered["verified"] and tampered["rows"] == 20
    assert any(p.startswith("org1") and "20" in p for p in tampered["problems"]), tampered["problems"]
    assert not any(p.startswith("org0") for p in tampered["problems"]), tampered["problems"]


HOSTILE = "o'rg\"; DELETE FROM audit_log; --"


def test_hostile_org_id_is_bound_not_spliced(pg, db, tmp_path):
    """§2 Recover 2: values reach PostgreSQL as bound parameters (psycopg2): an org id with a quote,
    a semicolon and a comment is archived, deleted and anchored verbatim, and nothing else happens."""
    broker_db.seed(pg, db, orgs=1, agents_per_org=1, audit_per_org=5, audit_start=NOW - dt.timedelta(days=60),
                   audit_step=dt.timedelta(days=2), prefix=HOSTILE)
    org = HOSTILE + "0"
    res = archive(pg, db, older_than_days=31, dest=str(tmp_path / "cold"))
    assert not res.failed, res.result.get("msg")
    assert res.result["orgs"][org]["rows"] == 4 and res.result["rows"] == 34
    stored = pg.psql("SELECT org_id || '|' || chain_seq FROM cullis_ops.audit_anchors ORDER BY org_id", db=db)
    assert sorted(stored.splitlines()) == sorted(["org0|15", "org1|15", org + "|4"])
    # the hostile org keeps only its newest entry; the others keep theirs: nothing ran beyond the plan
    left = pg.psql("SELECT org_id || '|' || count(*) FROM audit_log GROUP BY org_id ORDER BY org_id", db=db)
    assert sorted(left.splitlines()) == sorted(["org0|10", "org1|10", org + "|1"])
    with gzip.open(res.result["archive_path"], "rt") as f:
        archived = [json.loads(line) for line in f]
    assert sum(1 for r in archived if r["org_id"] == org) == 4
    assert not archive(pg, db, state="verified", path=res.result["archive_path"]).failed


SYSTEM_PYTHON = "/usr/bin/python3"


def _imports(python: str, name: str) -> bool:
    return subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode == 0


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists() or _imports(SYSTEM_PYTHON, "psycopg2"),
                    reason="needs a Python without psycopg2 (the system Python of this machine has it)")
def test_missing_psycopg2_is_a_clear_error(pg, tmp_path):
    """On a host whose Python lacks psycopg2 the module fails naming the package, no traceback."""
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": SYSTEM_PYTHON},
             "tasks": [{"name": "archive", "cullis.broker.audit_archive": dict(
                 login_host="127.0.0.1", login_port=pg.port, login_user="postgres", login_password=pg.password,
                 database="tpl", older_than_days=31, dest=str(tmp_path / "cold"))}]}]
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump(play))
    res = run_playbook(book)
    [failed] = res.task_results("archive")
    assert failed.get("failed") and "psycopg2 is missing" in failed["msg"] and "python3-psycopg2" in failed["msg"]
    assert "Traceback" not in res.output and pg.password not in res.output
    assert not (tmp_path / "cold").exists()

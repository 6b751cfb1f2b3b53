"""playbooks/upgrade.yml on the shared e2e stack (issue 19): plan, failed upgrade rolled back, upgrade.

Two copies of broker_src serve as "new releases" (tests and caches left out, the same
requirements.txt, so the broker venv is reused):
- `next`: one extra, harmless migration (a new table) and a visible version change (APP_VERSION
  default 0.1.0 -> 0.2.0-next in app/config.py);
- `broken`: the same first migration plus a second one that fails halfway (creates a table, then
  divides by zero). The first one commits (the broker's env.py runs one transaction per migration),
  so the database HAS changed when the upgrade fails: the rollback must restore the pre-upgrade set.

The stack is left as found: on broker_src at its head revision (the last test downgrades the extra
migration with the next tree's Alembic and upgrades back to broker_src with the playbook).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import ssl
import uuid
from pathlib import Path

import pytest

from testkit.ansible import REPO
from testkit.services import PG_BIN

pytestmark = [pytest.mark.stack, pytest.mark.slow]

BASE_REV = "u1p2q3r4s5t6_user_pubkey"
NEXT_REV = "v2a0upgrade_probe"
BROKEN_REV = "v2b0broken_halfway"

NEXT_MIGRATION = f'''"""Upgrade probe: one harmless table (test release of issue 19).

Revision ID: {NEXT_REV}
Revises: {BASE_REV}
"""
import sqlalchemy as sa
from alembic import op

revision = "{NEXT_REV}"
down_revision = "{BASE_REV}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("cullis_upgrade_probe", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))


def downgrade():
    op.drop_table("cullis_upgrade_probe")
'''

BROKEN_MIGRATION = f'''"""Fails halfway: creates a table, then raises (test release of issue 19).

Revision ID: {BROKEN_REV}
Revises: {NEXT_REV}
"""
import sqlalchemy as sa
from alembic import op

revision = "{BROKEN_REV}"
down_revision = "{NEXT_REV}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("cullis_half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("SELECT 1/0")


def downgrade():
    op.drop_table("cullis_half_done")
'''


def _tree(dest: Path, migrations: dict[str, str]) -> Path:
    shutil.copytree(REPO / "broker_src", dest,
                    ignore=shutil.ignore_patterns("tests", "__pycache__", "*.pyc", "venv", ".venv"))
    config = dest / "app" / "config.py"
    text = config.read_text()
    assert 'g("APP_VERSION") or "0.1.0"' in text
    config.write_text(text.replace('g("APP_VERSION") or "0.1.0"', 'g("APP_VERSION") or "0.2.0-next"'))
    for name, body in migrations.items():
        (dest / "alembic" / "versions" / name).write_text(body)
    return dest


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("upgrade-trees")
    base.chmod(0o755)
    return {
        "next": _tree(base / "broker_next", {f"{NEXT_REV}.py": NEXT_MIGRATION}),
        "broken": _tree(base / "broker_broken", {f"{NEXT_REV}.py": NEXT_MIGRATION, f"{BROKEN_REV}.py": BROKEN_MIGRATION}),
    }


def psql(stack, sql: str, db: str = "agent_trust") -> str:
    out = subprocess.run([PG_BIN / "psql", "-h", str(stack.dir / "postgres" / "sock"), "-p",
                          str(stack.ports["cullis_postgres_port"]), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
                          "-Atq", "-c", sql], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def snapshot(stack) -> dict:
    """{table: (rows, md5 of every row)} of every table of the broker's schema."""
    tables = psql(stack, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").split()
    return {t: psql(stack, f"SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') "
                           f'FROM "{t}" x') for t in tables}


def rows(stack) -> dict:
    """{table: set of md5 of each row} of every table of the broker's schema."""
    tables = psql(stack, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").split()
    return {t: set(psql(stack, f'SELECT md5(x::text) FROM "{t}" x').split()) for t in tables}


def jti_expiry(stack) -> dict:
    """{md5 of the row: its expires_at as epoch seconds} of the replay guard (jti_blacklist)."""
    out = psql(stack, "SELECT md5(x::text) || ' ' || extract(epoch FROM x.expires_at)::bigint FROM jti_blacklist x")
    return {h: int(e) for h, e in (line.split() for line in out.splitlines() if line)}


def expired_jti_rows(stack, expiry: dict) -> set:
    """The rows of `expiry` whose expires_at has passed by the database's clock now."""
    now = int(float(psql(stack, "SELECT extract(epoch FROM now())")))
    return {h for h, e in expiry.items() if e < now}


def revision(stack) -> str:
    return psql(stack, "SELECT string_agg(version_num, ',') FROM alembic_version")


def health(stack) -> dict:
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    with urllib.request.urlopen(stack.public_url + "/health", context=ctx, timeout=10) as resp:
        return json.loads(resp.read())


def add_org(stack) -> str:
    """A row written before the upgrade (admin API: organizations + its audit row)."""
    org = f"upg-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"org_id": org, "display_name": org, "secret": uuid.uuid4().hex, "metadata": {}}).encode()
    req = urllib.request.Request(stack.public_url + "/v1/registry/orgs", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "x-admin-secret": stack.env["ADMIN_SECRET"]})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(stack.ca_path)), timeout=15) as resp:
        assert resp.status == 201
    return org


def running_tree(stack) -> str:
    conf = (stack.dir / "supervisor" / "conf.d" / "broker.conf").read_text()
    return next(line.split("=", 1)[1].strip() for line in conf.splitlines() if line.startswith("directory ="))


def cleanup_restore_leftovers(stack) -> None:
    for name in psql(stack, "SELECT datname FROM pg_database WHERE datname LIKE 'agent_trust\\_pre\\_restore\\_%'").split():
        psql(stack, f'DROP DATABASE "{name}" WITH (FORCE)', db="postgres")
    for d in (stack.dir / "backups").glob("set-*-pre-upgrade"):
        shutil.rmtree(d, ignore_errors=True)


def test_check_mode_prints_the_plan_and_pending_migrations(stack, trees):
    before = snapshot(stack)
    res = stack.run("playbooks/upgrade.yml", check=True, extra_vars={"cullis_broker_src": str(trees["next"])})
    assert res.rc == 0, res.output[-3000:]
    plan = res.task_results("Upgrade plan")
    assert plan, res.output[-2000:]
    text = "\n".join(plan[0]["msg"])
    assert f"Pending:       {NEXT_REV}" in text and str(trees["next"]) in text and "Check mode" in text
    assert revision(stack) == BASE_REV and snapshot(stack) == before
    assert running_tree(stack) == str((REPO / "broker_src").resolve())


def test_failed_migration_rolls_back_to_the_old_version_with_every_row(stack, trees):
    add_org(stack)
    before, version_before = snapshot(stack), health(stack)["version"]
    # -vvv: not even the rollback (restore, .env re-read) prints a secret
    res = stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(trees["broken"])}, verbosity=3)
    try:
        assert res.rc != 0, "a failed upgrade must fail the run"
        report = res.task_results("Upgrade failed and was rolled back")
        assert report, res.output[-4000:]
        text = "\n".join(report[0]["msg"])
        assert "UPGRADE FAILED and was rolled back" in text and "division by zero" in text, text
        assert "restored from the pre-upgrade set" in text and "Data-loss window: from " in text, text
        # the old version serves again, on the old tree, with the old schema and every row
        assert running_tree(stack) == str((REPO / "broker_src").resolve())
        assert revision(stack) == BASE_REV
        assert snapshot(stack) == before
        assert health(stack)["version"] == version_before
        status, body = stack.get("/readyz")
        assert status == 200, body
        for secret in stack.secret_values():
            assert secret not in res.output
    finally:
        cleanup_restore_leftovers(stack)


@pytest.fixture(scope="module")
def back_to_broker_src(stack, trees):
    """After the tests that leave the stack on the `next` tree: the extra migration downgraded by
    its own tree's Alembic, then broker_src running again (upgrade.yml), as the other tests expect."""
    yield
    (trees["next"] / "app" / "main.py").write_text((REPO / "broker_src" / "app" / "main.py").read_text())
    try:
        env = dict(os.environ, **{k: v for k, v in stack.env.items() if k == "DATABASE_URL"})
        venv = stack.broker_venv
        if revision(stack) == NEXT_REV:
            subprocess.run([f"{venv}/bin/alembic", "downgrade", BASE_REV], cwd=trees["next"], env=env, check=True,
                           capture_output=True)
        back = stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(REPO / "broker_src")})
    finally:
        cleanup_restore_leftovers(stack)
    assert back.rc == 0, back.output[-3000:]
    assert running_tree(stack) == str((REPO / "broker_src").resolve()) and revision(stack) == BASE_REV
    assert health(stack)["version"] == "0.1.0"


def test_upgrade_to_a_release_with_one_more_migration_then_rerun_changes_nothing(stack, trees, back_to_broker_src):
    next_tree = str(trees["next"])
    add_org(stack)
    before, before_jti_expiry = rows(stack), jti_expiry(stack)
    res = stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": next_tree}, verbosity=3)  # -vvv: no secret
    assert res.rc == 0, res.output[-4000:]
    assert revision(stack) == NEXT_REV
    assert health(stack)["version"] == "0.2.0-next"
    assert running_tree(stack) == next_tree
    # every row of before is still there (the verify's smoke login adds its own: probe org, audit rows)
    after = rows(stack)
    for table, hashes in before.items():
        if table == "alembic_version":
            continue
        lost = hashes - after[table]
        if table == "jti_blacklist":
            # every login purges the replay guard's expired rows (broker-api: jti_blacklist); rows
            # that expired before the snapshot after the upgrade may go, unexpired ones may not
            lost -= expired_jti_rows(stack, before_jti_expiry)
        assert not lost, f"rows of {table} lost in the upgrade"
    assert "cullis_upgrade_probe" in after
    login = res.task_results("Smoke login - the probe agent logs in through the proxy and makes an authenticated call")
    assert login and login[0]["logged_in"] is True and login[0]["claims"]["agent_id"] == "upgrade-probe::probe", login
    done = "\n".join(res.task_results("Upgrade done")[0]["msg"])
    assert f"{BASE_REV} -> {NEXT_REV}" in done and "Audit chain verified" in done
    for secret in stack.secret_values():
        assert secret not in res.output
    again = stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": next_tree})
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_a_rollback_that_fails_too_reports_the_state_left_and_what_to_do(stack, trees, back_to_broker_src):
    """The old code (the `next` tree the stack runs now) is made unstartable, then an upgrade to
    `broken` fails its migration: the rollback cannot start the old broker. The run must fail with
    a report naming both failures, the state left and what to do."""
    if running_tree(stack) != str(trees["next"]):
        pytest.skip("needs the stack on the `next` tree (left there by the previous test, which failed)")
    main = trees["next"] / "app" / "main.py"
    main.write_text('raise RuntimeError("upgrade test: the old code cannot start")\n' + main.read_text())
    res = stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(trees["broken"]),
                                                         "cullis_broker_health_timeout": 20})
    assert res.rc != 0, "a failed rollback must fail the run"
    report = res.task_results("Upgrade failed and the rollback failed too")
    assert report, res.output[-4000:]
    text = "\n".join(report[0]["msg"])
    assert "UPGRADE FAILED: " in text and "division by zero" in text, text
    assert "ROLLBACK FAILED: localhost: " in text, text
    assert f"configured for the OLD tree {trees['next']}" in text and "NOT verified serving" in text, text
    assert "Database: untouched by the upgrade (no migration had changed it)" in text, text
    assert "What to do: read the broker log" in text and "playbooks/incidents/broker_down.yml" in text, text
    assert not any(r.get("failed") for r in res.task_results("Upgrade failed and was rolled back")), \
        "reported a rollback that failed as done"
    assert revision(stack) == NEXT_REV  # the failing migration rolled itself back; nothing restored
    for secret in stack.secret_values():
        assert secret not in res.output

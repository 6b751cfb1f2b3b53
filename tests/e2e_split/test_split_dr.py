"""Issue 11: the DR drill from the split topology into a SECOND topology; issue 18: that topology is
the HA PostgreSQL one (Patroni), so the drill's restore goes into a Patroni cluster.

- Backups — the quarterly drill ("restore Postgres + Vault from backup into a staging compose,
  re-run the smoke test against it. If smoke passes, DR works."): backup.yml takes a set of the
  split stack onto the controller; playbooks/dr_drill.yml, run with a SECOND inventory (the
  Patroni topology of conftest `patroni_site`: pg1, pg2, app from the prepared image, OS packages
  only, nothing of the stack; its own controller directory), deploys that DR site from scratch,
  restores the set's Postgres dump ON THE PATRONI LEADER (the standby replays it) and the Vault
  snapshot (unsealed with the split cluster's keys, read on the controller), gives the DR broker
  the restored Vault's signing key and token, and passes the smoke test. The drill itself is not
  idempotent (it restores every time); the rerun is deploy.yml on the kept DR site: changed=0
  proves the site the drill left is the declared one, operable with its keys file (replaced by
  the source's: the restored Vault only opens with those) and with key files matching the
  restored Vault.

The drill runs once per session (conftest `patroni_site`); the Patroni tests run on the site it
kept (tests/e2e_split/test_ha_postgres.py, earlier in the session when the whole directory runs),
and this file tears it down last. Works with one or three hosts in the split stack's cullis_vault.
What it compares against on the split stack is the drill's `DrSource` (taken when the set was, in
this session or by the split stage beside it: conftest), so the file needs no split stack of its own.
"""
from __future__ import annotations

import json
import time

import pytest

from testkit.measurements import measured

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"  # = conftest.STACK_DIR


def assert_no_secret(values, result) -> None:
    for value in values:
        assert value not in result.output, "a secret appeared in the playbook output"


def sha256(bed, host: str, path: str) -> str:
    res = bed.exec(host, ["sha256sum", path])
    assert res.rc == 0, res.output
    return res.output.split()[0]


def test_dr_drill_from_the_split_backup_into_a_patroni_site(patroni_site, docker_engine):
    """Backups — the quarterly drill, from the split stack's set into a Patroni DR site deployed from scratch."""
    from testkit.testbed import controller_processes_using

    site = patroni_site
    bed, source = site.bed, site.source
    res = site.drill
    report = [r.get("msg") for r in res.task_results("DR drill report")]
    assert res.rc == 0, report or res.output[-4000:]
    text = " ".join(str(report).split())
    assert "DR DRILL PASS" in text and "smoke test passed against the restored staging stack" in text, text
    assert source.source_set.name in text, text  # the newest verified set of the SPLIT stack
    assert "vault yes" in text and "broker key files replaced by the restored Vault key" in text, text
    assert "replaced by the source's (the restored Vault's keys)" in text, text
    assert "kept (dr_keep=true)" in text, text
    assert_no_secret(source.secret_values, res)
    measured(f"DR drill into the Patroni site (deploy from prepared hosts included): {site.drill_seconds:.0f}s")

    # the split stack's data, on the DR site's Patroni cluster: on the leader and replayed by the standby
    # (take_dr_source checked that the split stack no longer has the marker org)
    org_id = source.marker_org
    for host in ("pg1", "pg2"):
        assert site.psql(host, f"SELECT count(*) FROM organizations WHERE org_id = '{org_id}'") == "1", host
    # the restore ran on the leader the drill found (the standby is read-only)
    restored_on = {h for r in res.data.get("plays", []) for t in r.get("tasks", [])
                   if (t.get("task", {}).get("name") or "").endswith("What the Postgres restore did")
                   for h in t.get("hosts", {})}
    assert len(restored_on) == 1 and restored_on <= {"pg1", "pg2"}, restored_on
    # the DR broker signs with the split stack's key (the restored Vault's), not its deploy's own
    for path, split_sha in source.key_file_sha256.items():
        assert sha256(bed, "app", path) == split_sha, path
    # the DR site's keys file is now the restored Vault's (the split cluster's), still 0600
    dr_keys_file = site.controller_dir / "vault-keys.json"
    assert json.loads(dr_keys_file.read_text()) == json.loads((source.controller_dir / "vault-keys.json").read_text())
    assert dr_keys_file.stat().st_mode & 0o777 == 0o600
    # no unseal key, root token or backup key was written to a DR host
    keys = json.loads((source.controller_dir / "vault-keys.json").read_text())
    backup_key = (source.controller_dir / "backup.key").read_text().strip()
    for host in ("pg1", "pg2", "app"):
        for value in [keys["root_token"], *keys["unseal_keys_b64"], backup_key]:
            left = bed.exec(host, ["grep", "-rlF", value, STACK_DIR, "/tmp", "/root"]).output.strip()
            assert left == "", f"a key reached the DR host {host}: {left}"
        assert bed.exec(host, f"ls -d {STACK_DIR}/backup-scratch-* 2>/dev/null").output.strip() == ""

    # rerun: the DR site the drill left is in its declared state, operable with its (replaced) keys file
    t0 = time.monotonic()
    again = site.run("playbooks/deploy.yml")
    rerun_seconds = time.monotonic() - t0
    assert again.rc == 0, again.output[-3000:]
    changed = {h: s["changed"] for h, s in again.stats.items() if s.get("changed")}
    assert changed == {}, f"deploy after the drill changed something on the DR site: {changed}"
    measured(f"deploy rerun on the kept DR site: {rerun_seconds:.0f}s")
    assert controller_processes_using(STACK_DIR) == []

    down = site.run("playbooks/down.yml", extra_vars={"purge": True})
    assert down.rc == 0, down.output[-3000:]
    for host in ("pg1", "pg2", "app"):
        assert bed.exec(host, ["test", "-e", f"{STACK_DIR}/.env"]).rc != 0, host

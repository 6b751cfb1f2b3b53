"""Issue 11: the DR drill from the split topology into a SECOND topology.

- Backups — the quarterly drill ("restore Postgres + Vault from backup into a staging compose,
  re-run the smoke test against it. If smoke passes, DR works."): backup.yml takes a set of the
  six-host split stack onto the controller; playbooks/dr_drill.yml, run with a SECOND inventory
  (one more bare host, `dr`, in every cullis_* group, its own controller directory), deploys that DR
  site from scratch (a host from the prepared image: OS packages, nothing of the stack), restores the set's Postgres dump and Vault snapshot there (unsealed with the
  split cluster's keys, read on the controller), gives the DR broker the restored Vault's signing
  key and token, and passes the smoke test. The drill itself is not idempotent (it restores every
  time); the rerun is deploy.yml on the kept DR site: changed=0 proves the site the drill left is
  the declared one, operable with its keys file (replaced by the source's: the restored Vault only
  opens with those) and with key files matching the restored Vault.

Shares the session's split topology (conftest `split_stack`) and leaves it healthy; works with one
or three hosts in cullis_vault (only the first one is read). The `dr` host is removed at the end.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from testkit.ansible import run_playbook
from tests.e2e_split.conftest import write_inventory

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"  # = conftest.STACK_DIR
DR_GROUPS = ("cullis_postgres", "cullis_redis", "cullis_vault", "cullis_broker", "cullis_proxy")
KEY_FILES = (f"{STACK_DIR}/broker/certs/broker-ca.pem", f"{STACK_DIR}/broker/certs/broker-ca-key.pem")


def assert_no_secret(values, result) -> None:
    for value in values:
        assert value not in result.output, "a secret appeared in the playbook output"


def flat(result) -> str:
    return " ".join(result.output.split())


def sha256(bed, host: str, path: str) -> str:
    res = bed.exec(host, ["sha256sum", path])
    assert res.rc == 0, res.output
    return res.output.split()[0]


def add_marker_org(split_stack, org_id: str) -> None:
    split_stack.psql(host="postgres", sql="INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                                      f"VALUES ('{org_id}', 'x', 'x', now())")


def drop_marker_org(split_stack, org_id: str) -> None:
    split_stack.psql(host="postgres", sql=f"DELETE FROM organizations WHERE org_id = '{org_id}'")


@pytest.fixture(scope="module")
def marked_backup(split_stack):
    """A backup set of the split stack holding a marker org that the live stack no longer has."""
    org_id = f"dr-marker-{uuid.uuid4().hex[:8]}"
    add_marker_org(split_stack, org_id)
    try:
        res = split_stack.run("playbooks/backup.yml")
        assert res.rc == 0, res.output[-4000:]
    finally:
        drop_marker_org(split_stack, org_id)
    sets = sorted((split_stack.controller_dir / "backups").glob("set-*"))
    return org_id, sets[-1]


def write_dr_inventory(split_stack, base: Path) -> Path:
    """The DR site's inventory: the split stack's settings, the one host `dr` in every group, a
    controller directory of its own (its TLS CA, keys file, backups)."""
    primary = yaml.safe_load(split_stack.inventory.read_text())
    group_vars = dict(primary["all"]["vars"])
    public_host = split_stack.bed.ip("dr")
    group_vars.update(cullis_controller_dir=str(base / "controller"), cullis_public_host=public_host,
                      cullis_broker_public_url=f"https://{public_host}:{group_vars['cullis_nginx_port']}")
    host = split_stack.bed.inventory_data()["all"]["hosts"]["dr"]
    data = {"all": {"vars": group_vars, "hosts": {"dr": host},
                    "children": {"cullis_stack": {"children": {g: {"hosts": {"dr": None}} for g in DR_GROUPS}}}}}
    return write_inventory(base, data)


@pytest.fixture(scope="module")
def dr_inventory(split_stack, testbed_images, tmp_path_factory):
    """One more host on the test bed network, the DR site: a server provisioned from the prepared
    image (the OS packages of the stack's services installed, as a provisioned DR server has them;
    nothing of the stack: no stack directory, no service configured, no key). The bare-host deploy
    path is the split stack's own deploy; starting the DR site prepared saves the package
    installation (minutes) on the suite's longest test."""
    bed = split_stack.bed
    bed.add_host("dr", DR_GROUPS, image=testbed_images["prepared"].tag)
    try:
        bed.wait_ssh("dr")
        yield write_dr_inventory(split_stack, tmp_path_factory.mktemp("split-dr"))
    finally:  # the split bed is left as the session fixture made it
        bed.hosts.pop("dr").container.remove(force=True, v=True)


def test_dr_drill_from_the_split_backup_into_a_second_topology(split_stack, marked_backup, dr_inventory,
                                                                docker_engine):
    """Backups — the quarterly drill, from the split stack's set into a DR site deployed from scratch."""
    from testkit.testbed import controller_processes_using

    bed = split_stack.bed
    org_id, set_dir = marked_backup
    assert bed.exec("dr", ["test", "-e", STACK_DIR]).rc != 0  # nothing of the stack on the DR site
    source = split_stack.controller_dir
    dr_keys_file = dr_inventory.parent.parent / "controller" / "vault-keys.json"
    drill_vars = {"dr_source_backup_dir": str(source / "backups"), "dr_backup_key_file": str(source / "backup.key"),
                  "dr_source_vault_keys_file": str(source / "vault-keys.json"), "dr_keep": True}
    t0 = time.monotonic()
    res = run_playbook("playbooks/dr_drill.yml", inventory=dr_inventory, extra_vars=drill_vars, timeout=3600)
    drill_seconds = time.monotonic() - t0
    report = [r.get("msg") for r in res.task_results("DR drill report")]
    assert res.rc == 0, report or res.output[-4000:]
    text = " ".join(str(report).split())
    assert "DR DRILL PASS" in text and "smoke test passed against the restored staging stack" in text, text
    assert set_dir.name in text, text  # the newest verified set of the SPLIT stack
    assert "vault yes" in text and "broker key files replaced by the restored Vault key" in text, text
    assert "replaced by the source's (the restored Vault's keys)" in text, text
    assert "kept (dr_keep=true)" in text, text
    assert_no_secret(split_stack.secret_values(), res)
    print(f"DR drill into the one-host DR site (deploy from bare included): {drill_seconds:.0f}s")

    # the split stack's data, on the DR site's Postgres
    assert split_stack.psql(host="dr", sql=f"SELECT count(*) FROM organizations WHERE org_id = '{org_id}'") == "1"
    assert split_stack.psql(host="postgres", sql=f"SELECT count(*) FROM organizations WHERE org_id = '{org_id}'") == "0"
    # the DR broker signs with the split stack's key (the restored Vault's), not its deploy's own
    for path in KEY_FILES:
        assert sha256(bed, "dr", path) == sha256(bed, "broker1", path), path
    # the DR site's keys file is now the restored Vault's (the split cluster's), still 0600
    assert json.loads(dr_keys_file.read_text()) == json.loads((source / "vault-keys.json").read_text())
    assert dr_keys_file.stat().st_mode & 0o777 == 0o600
    # no unseal key, root token or backup key was written to the DR host
    keys = json.loads((source / "vault-keys.json").read_text())
    backup_key = (source / "backup.key").read_text().strip()
    for value in [keys["root_token"], *keys["unseal_keys_b64"], backup_key]:
        left = bed.exec("dr", ["grep", "-rlF", value, STACK_DIR, "/tmp", "/root"]).output.strip()
        assert left == "", f"a key reached the DR host: {left}"
    assert bed.exec("dr", f"ls -d {STACK_DIR}/backup-scratch-* 2>/dev/null").output.strip() == ""

    # rerun: the DR site the drill left is in its declared state, operable with its (replaced) keys file
    t0 = time.monotonic()
    again = run_playbook("playbooks/deploy.yml", inventory=dr_inventory)
    rerun_seconds = time.monotonic() - t0
    assert again.rc == 0, again.output[-3000:]
    changed = {h: s["changed"] for h, s in again.stats.items() if s.get("changed")}
    assert changed == {}, f"deploy after the drill changed something on the DR site: {changed}"
    print(f"deploy rerun on the kept DR site: {rerun_seconds:.0f}s")
    assert controller_processes_using(STACK_DIR) == []

    down = run_playbook("playbooks/down.yml", inventory=dr_inventory, extra_vars={"purge": True})
    assert down.rc == 0, down.output[-3000:]
    assert bed.exec("dr", ["test", "-e", f"{STACK_DIR}/.env"]).rc != 0


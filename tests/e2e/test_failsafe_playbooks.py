"""Issue 13 (fail safe) on the deployed stack: restore.yml and tls_expired.yml refuse or fail
without leaving damage behind, and say what state they left.

Runbook sections: §2 "Postgres down or unreachable", Recover 3 (restore from backup) and "Backups -
what to save" for restore.yml; §5 "TLS cert expired (broker public URL)" for tls_expired.yml.
Every test hands the stack back healthy, serving its local-CA certificate.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest

from test_backup_restore import assert_no_secret, assert_ready, drop_pre_restore, psql
from test_tls_incidents import PLAYBOOK as TLS_PLAYBOOK, fingerprint, health_verified, serve_expired, \
    served_fingerprint
from testkit.ansible import run_module
from testkit.pki import CA

pytestmark = pytest.mark.slow

RESTORE = "playbooks/restore.yml"


def broker_info(stack) -> dict:
    return stack.services()["broker"]


def staging_databases(stack) -> list[str]:
    return psql(stack, "SELECT datname FROM pg_database WHERE datname LIKE 'agent\\_trust\\_restore\\_%'").split()


@pytest.fixture(scope="module")
def sets(stack):
    """Two backup sets made by backup.yml (older, newer); removed afterwards."""
    root = stack.dir / "backups"
    before = set(root.glob("set-*"))
    for _ in range(2):
        res = stack.run("playbooks/backup.yml")
        assert res.rc == 0, res.output[-3000:]
        time.sleep(1.1)  # set names have one-second resolution
    made = sorted(set(root.glob("set-*")) - before)
    assert len(made) == 2
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def copy_with_edited_row_count(stack, set_dir, dest_root, reseal: bool):
    """A copy of a set whose Postgres manifest claims one organization more; `reseal` rewrites
    the set manifest over the edit (what someone with the backup key could do)."""
    dest_root.mkdir(exist_ok=True)
    copy = dest_root / set_dir.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(set_dir, copy)
    pg_name = json.loads((copy / "backup-set.json").read_text())["postgres"]
    mf = copy / (pg_name + ".json")
    manifest = json.loads(mf.read_text())
    manifest["row_counts"]["public.organizations"] += 1
    mf.write_text(json.dumps(manifest))
    if reseal:
        res = run_module("backup_set", {"path": str(copy), "encryption_key_file": str(stack.dir / "backup.key")})
        assert not res.failed, res.result.get("msg")
    return copy


@pytest.fixture
def marker(stack):
    """A row written after the backups: it must survive every refused or failed restore."""
    psql(stack, "INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                "VALUES ('failsafe-marker', 'x', 'x', now())")
    yield "failsafe-marker"
    psql(stack, "DELETE FROM organizations WHERE org_id = 'failsafe-marker'")


def marker_present(stack) -> bool:
    return psql(stack, "SELECT count(*) FROM organizations WHERE org_id = 'failsafe-marker'") == "1"


def test_restore_failing_after_the_broker_stopped_starts_it_again(stack, sets, marker):
    """§2 Recover 3: the restore fails on the row-count check after the broker was stopped; the
    broker is started again, /readyz is 200, the live database is untouched, the timeline says so."""
    edited = copy_with_edited_row_count(stack, sets[-1], stack.dir / "failsafe-sets", reseal=True)
    res = stack.run(RESTORE, extra_vars={"confirm": True, "backup_set": str(edited)})
    assert res.rc != 0
    assert "row counts of the restored database differ from the manifest" in res.output
    assert "public.organizations: manifest" in res.output
    assert "broker running, /readyz 200" in res.output, res.output[-4000:]
    assert "database agent_trust untouched (the live database is as it was)" in res.output
    assert "stopped the broker" in res.output  # the failure really came after the stop
    assert_ready(stack)
    assert broker_info(stack)["statename"] == "RUNNING"
    assert marker_present(stack)
    assert staging_databases(stack) == []
    assert_no_secret(stack, res)
    shutil.rmtree(edited.parent, ignore_errors=True)


def test_restore_of_an_edited_manifest_is_refused_before_the_broker_is_touched(stack, sets, marker):
    """§2 Recover 3 / Backups: set verification covers the dump manifest; nothing is stopped."""
    edited = copy_with_edited_row_count(stack, sets[-1], stack.dir / "failsafe-sets", reseal=False)
    pid = broker_info(stack)["pid"]
    res = stack.run(RESTORE, extra_vars={"confirm": True, "backup_set": str(edited)})
    assert res.rc != 0
    assert "failed verification" in res.output and "manifest differs from the one sealed into the set" in res.output
    assert broker_info(stack)["pid"] == pid  # never stopped
    assert res.task_results("Stop the broker while its database is swapped") == []
    assert marker_present(stack)
    assert_ready(stack)
    assert_no_secret(stack, res)
    shutil.rmtree(edited.parent, ignore_errors=True)


def test_declined_restore_changes_nothing_and_reports_changed_0(stack, sets, marker):
    """§2 Recover 3: without confirmation nothing changes, and the run says changed=0."""
    pid = broker_info(stack)["pid"]
    res = stack.run(RESTORE)
    assert res.rc != 0
    assert "not confirmed: nothing was changed" in res.output
    assert res.changed == 0, res.stats
    assert broker_info(stack)["pid"] == pid
    assert marker_present(stack)


def test_restore_picks_the_newest_verified_set(stack, sets):
    """Backups: without -e backup_set the newest VERIFIED set is restored, not the newest set."""
    older, newer = sets
    pg_name = json.loads((newer / "backup-set.json").read_text())["postgres"]
    mf = newer / (pg_name + ".json")
    manifest = json.loads(mf.read_text())
    manifest["verification"] = None  # never verified (not covered by the set digest)
    mf.write_text(json.dumps(manifest))
    pid = broker_info(stack)["pid"]
    res = stack.run(RESTORE, check=True)
    assert res.rc == 0, res.output[-3000:]
    assert f"backup set {older} (the newest verified set)" in res.output
    assert str(newer) + "/" not in res.output
    assert broker_info(stack)["pid"] == pid
    drop_pre_restore(stack)


# ---- tls_expired.yml -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def operator_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("operator-pki")
    root = CA.create("Failsafe Operator Root")
    inter = root.issue("Failsafe Operator Intermediate", ca=True, days=3000)
    good = inter.server_cert("127.0.0.1", "localhost", days=200)
    other = inter.server_cert("127.0.0.1", "localhost", days=200)
    (d / "root.pem").write_bytes(root.cert_pem)
    (d / "chain.pem").write_bytes(inter.cert_pem)
    (d / "good.crt").write_bytes(good.cert_pem)
    (d / "good.key").write_bytes(good.key_pem)
    (d / "other.key").write_bytes(other.key_pem)
    (d / "good.key").chmod(0o600)
    (d / "other.key").chmod(0o600)
    return d, good


@pytest.fixture
def local_ca_back(stack):
    """Hand the stack back serving its local-CA certificate."""
    yield
    try:
        health_verified(stack, stack.ca_path)
    except Exception:  # noqa: BLE001 - any TLS failure means: re-issue from the local CA
        res = stack.run(TLS_PLAYBOOK, extra_vars={"cullis_tls_mode": "selfsigned"})
        assert res.rc == 0, res.output[-3000:]
    assert health_verified(stack, stack.ca_path) == 200


def tls_files(d, key="good.key", **extra):
    return {"tls_cert": str(d / "good.crt"), "tls_key": str(d / key), "tls_chain": str(d / "chain.pem"), **extra}


def test_new_files_are_checked_even_when_the_current_certificate_is_healthy(stack, operator_pki, local_ca_back):
    """§5: given files are validated whatever the current state; a key that does not match fails
    and changes nothing; valid files are reported as checked but not installed."""
    d, good = operator_pki
    served = served_fingerprint(stack)
    nginx_pem = (stack.dir / "tls" / "nginx.pem").read_bytes()
    bad = stack.run(TLS_PLAYBOOK, extra_vars=tls_files(d, key="other.key"))
    assert bad.rc != 0
    assert "the private key does not belong to the certificate" in bad.output
    assert bad.changed == 0
    assert served_fingerprint(stack) == served and (stack.dir / "tls" / "nginx.pem").read_bytes() == nginx_pem

    ok = stack.run(TLS_PLAYBOOK, extra_vars=tls_files(d, tls_ca=str(d / "root.pem")))
    assert ok.rc == 0, ok.output[-3000:]
    assert ok.changed == 0
    assert "checked (valid) but NOT installed" in ok.output
    assert "new files were checked and are valid but were NOT installed" in ok.output  # timeline
    assert served_fingerprint(stack) == served and (stack.dir / "tls" / "nginx.pem").read_bytes() == nginx_pem
    for result in (bad, ok):
        assert good.key_pem.decode().splitlines()[1] not in result.output
        assert_no_secret(stack, result)


def test_tls_ca_never_replaces_the_stacks_internal_ca(stack, operator_pki, local_ca_back):
    """§5 BYOCA on a selfsigned stack: the operator's CA goes to the public CA file; the local CA
    (Vault's CA and the broker's trust for Vault) stays as it was and Vault is still trusted."""
    d, good = operator_pki
    internal_ca = stack.ca_path.read_bytes()
    serve_expired(stack)
    res = stack.run(TLS_PLAYBOOK, extra_vars=tls_files(d, tls_ca=str(d / "root.pem")))
    assert res.rc == 0, res.output[-3000:]
    assert served_fingerprint(stack) == fingerprint(good)
    assert stack.ca_path.read_bytes() == internal_ca
    assert (stack.dir / "tls" / "public-ca.pem").read_bytes() == (d / "root.pem").read_bytes()
    vault = run_module("vault_info", {"url": stack.vault_addr, "ca_cert": str(stack.ca_path)})
    assert not vault.failed and vault.result["all_unsealed"], vault.result.get("msg")
    assert health_verified(stack, d / "root.pem") == 200
    assert_no_secret(stack, res)

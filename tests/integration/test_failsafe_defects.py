"""Issue 13 (fail safe): each defect found by trying the collection as a hostile operator would,
one regression test each, against real services (PostgreSQL 15, OpenBao, a broker_src broker).

Runbook sections: "Backups - what to save" and §2 Recover 3 (restore from backup) for pg_backup /
backup_set; §3 "Vault sealed or unreachable" for the Vault CA; §5 "TLS cert expired" for
tls_install / tls_check; §6 "Agent compromise" for cert_revoke.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testkit import broker_db
from testkit.ansible import run_module
from testkit.broker_orgs import admin_client, new_org_id, onboard_org
from testkit.pki import CA, now

dbs, pg, db = broker_db.make_fixtures("fsd_", orgs=2, agents_per_org=2, audit_per_org=5)


def conn(pg, **extra):
    return dict(login_host="127.0.0.1", login_port=pg.port, login_user=pg.user, login_password=pg.password, **extra)


def pg_backup(pg, **args):
    res = run_module("pg_backup", conn(pg, **args))
    assert pg.password not in res.output
    assert "Traceback" not in res.output, res.output[-3000:]
    return res


def write_key(path: Path, mode=0o600) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(mode)
    return path


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def encrypted_set(pg, db, tmp_path):
    """A sealed backup set: encrypted dump (recorded as verified) + encrypted file + set manifest."""
    key = write_key(tmp_path / "backup.key")
    root = tmp_path / "backups"
    set_dir = root / "set-20260101T000000Z"
    set_dir.mkdir(parents=True)
    res = pg_backup(pg, database=db, dest=str(set_dir), encryption_key_file=str(key))
    assert not res.failed, res.result.get("msg")
    ok = pg_backup(pg, state="verified", database=db, path=res.result["backup_path"], quick=True, record=True,
                   encryption_key_file=str(key))
    assert not ok.failed and ok.changed, ok.result.get("msg")
    env = tmp_path / "dot-env"
    env.write_text("ADMIN_SECRET=not-a-real-secret\n")
    sealed = run_module("backup_set", {"path": str(set_dir), "files": [{"name": "env", "src": str(env)}],
                                       "encryption_key_file": str(key)})
    assert not sealed.failed, sealed.result.get("msg")
    return dict(root=root, dir=set_dir, key=key, dump=Path(res.result["backup_path"]))


# ---- backups ---------------------------------------------------------------------------------

def test_verify_with_a_wrong_key_is_read_only_and_never_marks_the_set_failed(pg, db, encrypted_set, tmp_path):
    """Backups: a wrong key is the operator's error, not evidence that the backup is corrupt."""
    wrong = write_key(tmp_path / "wrong.key")
    before = snapshot(encrypted_set["dir"])
    for record in (False, True):
        res = pg_backup(pg, state="verified", database=db, path=str(encrypted_set["dump"]), record=record,
                        encryption_key_file=str(wrong))
        assert res.failed
        assert "cannot verify with this key" in res.result["msg"], res.result["msg"]
        assert "wrong.key" in res.result["msg"]
        assert res.changed is False
    assert snapshot(encrypted_set["dir"]) == before
    latest = run_module("backup_set", {"state": "latest", "path": str(encrypted_set["root"]), "verified_only": True})
    assert latest.result["set"] == str(encrypted_set["dir"]) and latest.result["verified"] is True


def test_verification_is_read_only_unless_asked_to_record(pg, db, encrypted_set):
    """Backups: `state=verified` reports; only `record=true` writes the result into the manifest."""
    manifest_file = Path(str(encrypted_set["dump"]) + ".json")
    before = manifest_file.read_bytes()
    res = pg_backup(pg, state="verified", database=db, path=str(encrypted_set["dump"]), quick=True,
                    encryption_key_file=str(encrypted_set["key"]))
    assert not res.failed and res.changed is False, res.result.get("msg")
    assert res.result["verification"]["status"] == "ok"
    assert manifest_file.read_bytes() == before


def test_set_verification_covers_the_dump_manifest(pg, db, encrypted_set):
    """§2 Recover 3: an edited dump manifest (a row count) fails set verification, before restore stops anything."""
    manifest_file = Path(str(encrypted_set["dump"]) + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["row_counts"]["public.agents"] += 1
    manifest_file.write_text(json.dumps(manifest))
    res = run_module("backup_set", {"state": "verified", "path": str(encrypted_set["dir"])})
    assert res.failed
    assert f"{encrypted_set['dump'].name}.json" in res.result["msg"] and "manifest" in res.result["msg"]
    assert "altered" in res.result["msg"]


def test_world_readable_backup_key_is_refused_like_the_unseal_keys_file(pg, db, tmp_path):
    """Backups: one permission policy for key files; nothing is written with a key others can read."""
    key = write_key(tmp_path / "loose.key", 0o644)
    dest = tmp_path / "backups"
    dest.mkdir()
    res = pg_backup(pg, database=db, dest=str(dest), encryption_key_file=str(key))
    assert res.failed and res.changed is False
    assert "encryption_key_file" in res.result["msg"] and "chmod 600" in res.result["msg"]
    assert str(key) in res.result["msg"]
    assert list(dest.iterdir()) == []
    out = run_module("backup_set", {"path": str(dest), "files": [{"name": "env", "src": str(key)}],
                                    "encryption_key_file": str(key)})
    assert out.failed and "chmod 600" in out.result["msg"]
    assert list(dest.iterdir()) == []


@pytest.fixture
def read_only_dir(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_read_only_backup_destination_is_a_clear_failure(pg, db, read_only_dir):
    """Backups: a read-only destination is named, with what to do; no traceback."""
    res = pg_backup(pg, database=db, dest=str(read_only_dir))
    assert res.failed and res.changed is False
    assert "read-only" in res.result["msg"] and str(read_only_dir) in res.result["msg"]
    assert "Module failed" not in res.result["msg"] and "Errno" not in res.result["msg"], res.result["msg"]


# ---- TLS ---------------------------------------------------------------------------------------

def test_intermediate_first_certificate_file_is_named_as_an_order_problem(tmp_path):
    """§5 TLS cert expired (BYOCA): a fullchain in the wrong order is refused as such, not as a key/SAN problem."""
    root = CA.create("Order Root")
    inter = root.issue("Order Intermediate", ca=True, days=3000)
    leaf = inter.server_cert("broker.example.com")
    (tmp_path / "ca.pem").write_bytes(root.cert_pem)
    (tmp_path / "wrong-order.pem").write_bytes(inter.cert_pem + leaf.cert_pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    dest = tmp_path / "tls"
    dest.mkdir()
    res = run_module("tls_install", {"cert": str(tmp_path / "wrong-order.pem"), "key": str(tmp_path / "key.pem"),
                                     "ca_path": str(tmp_path / "ca.pem"), "hostnames": ["broker.example.com"],
                                     "dest_cert": str(dest / "nginx.pem"), "dest_key": str(dest / "nginx-key.pem")})
    assert res.failed
    msg = res.result["msg"]
    assert "order" in msg and "the server certificate must come first" in msg, msg
    assert "private key does not belong" not in msg and "does not cover" not in msg
    assert list(dest.iterdir()) == []
    assert leaf.key_pem.decode().splitlines()[1] not in res.output


def test_expired_certificate_says_days_ago_not_negative_days_left(tmp_path):
    """§5 TLS cert expired: the report reads 'expired 2 days ago'."""
    root = CA.create("Expiry Root")
    import datetime as dt
    old = root.server_cert("127.0.0.1", days=10, not_before=now() - dt.timedelta(days=12, hours=1))
    (tmp_path / "old.pem").write_bytes(old.cert_pem)
    (tmp_path / "ca.pem").write_bytes(root.cert_pem)
    res = run_module("tls_check", {"paths": [{"path": str(tmp_path / "old.pem")}], "ca_path": str(tmp_path / "ca.pem"),
                                   "fail_on": "never"})
    assert not res.failed, res.result.get("msg")
    target = res.result["targets"][0]
    assert target["expiry"] == "expired 2 days ago"
    assert any("(expired 2 days ago)" in p for p in target["problems"]), target["problems"]


# ---- broker connection -------------------------------------------------------------------------

def test_missing_ca_path_names_the_option_and_the_path(tmp_path):
    """Errors name the cause: a missing ca_path is not a bare '[Errno 2]'."""
    missing = tmp_path / "no-such-ca.pem"
    res = run_module("cert_revoke", {"broker_url": "https://127.0.0.1:9", "admin_secret": "s3cr3t-admin-value",
                                     "ca_path": str(missing), "org_id": "acme", "serials": ["ab12"]})
    assert res.failed
    assert "ca_path" in res.result["msg"] and str(missing) in res.result["msg"], res.result["msg"]
    assert "s3cr3t-admin-value" not in res.output


# ---- Vault -------------------------------------------------------------------------------------

def test_wrong_vault_ca_is_a_tls_trust_problem_not_unreachable(bao_server, tmp_path):
    """§3 Vault sealed or unreachable: a wrong CA is named as a trust problem; nothing is sent."""
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CA.create("Not Vault's CA").cert_pem)
    for module, extra in (("vault_info", {}), ("vault_unseal", {"keys_file": str(bao_server.keys_file)})):
        res = run_module(module, {"url": bao_server.addr, "ca_cert": str(other), **extra})
        assert res.failed, module
        msg = res.result["msg"]
        assert "TLS trust problem" in msg and "CERTIFICATE_VERIFY_FAILED" in msg and str(other) in msg, msg
        assert "unreachable" not in msg
        node = res.result["nodes"][0]
        assert node["error_kind"] == "tls_trust"
        for secret in [*bao_server.unseal_keys, bao_server.root_token]:
            assert secret not in res.output


# ---- cert_revoke -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def revoke_org(broker, redis_server, tmp_path_factory):
    org_id = new_org_id("fs-revoke")
    result = onboard_org(broker, org_id, tmp_path_factory.mktemp("fs-ids") / "org", 2, redis_server)
    return org_id, {a["name"]: a["cert_serial_hex"] for a in result["agents"]}


def revoked(broker, org_id) -> set[str]:
    resp = admin_client(broker).admin_get("/v1/admin/certs/revoked", query={"org_id": org_id})
    assert resp.status == 200
    return {r["serial_hex"] for r in resp.json()}


def test_unquoted_yaml_serials_are_refused(broker, revoke_org):
    """§6: `0100` / `0x1F` unquoted become 64 / 31 in YAML; they are refused, not revoked as other serials."""
    org_id, _ = revoke_org
    play_args = "serials: [0100, 0x1F, \"0a:1b\"]"
    res = run_module("cert_revoke", {"broker_url": broker.url, "admin_secret": broker.admin_secret, "org_id": org_id,
                                     "serials": [64, 31, "0a:1b"]})
    assert res.failed and res.changed is False, play_args
    msg = res.result["msg"]
    assert "serials[0]" in msg and "serials[1]" in msg and "quote" in msg, msg
    assert "serials[2]" not in msg
    assert revoked(broker, org_id) == set()
    assert broker.admin_secret not in res.output


def test_serial_matching_no_certificate_of_the_org_fails_unless_opted_in(broker, revoke_org):
    """§6: a typo in a serial must not report changed=true and leave the real certificate valid."""
    org_id, serials = revoke_org
    typo = serials["a00"][:-1] + ("0" if serials["a00"][-1] != "0" else "1")
    args = {"broker_url": broker.url, "admin_secret": broker.admin_secret, "org_id": org_id, "serials": [typo]}
    res = run_module("cert_revoke", args)
    assert res.failed and res.changed is False
    assert typo in res.result["msg"] and "no certificate of org" in res.result["msg"], res.result["msg"]
    assert "allow_unknown_serials" in res.result["msg"]
    assert revoked(broker, org_id) == set()
    opted = run_module("cert_revoke", {**args, "allow_unknown_serials": True})
    assert not opted.failed and opted.changed, opted.result.get("msg")
    assert opted.result["unknown_serials"] == [typo]
    assert any(typo in w for w in opted.result.get("warnings", []))
    assert revoked(broker, org_id) == {typo}

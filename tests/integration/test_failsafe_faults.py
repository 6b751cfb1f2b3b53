"""Issue 13 (fail safe): the table-driven bad-input and fault suite, every module of the collection.

Each case is one task with a bad input or a fault (wrong key, wrong CA, missing or too-open file,
unquoted serial, unknown org, refused port...). Every case asserts
  - the error text (it names the cause: option, path, position - never a bare errno or traceback),
  - that nothing changed (`changed` is false, and the state of the real service or directory the
    module works on - rows, files, seal status, revoked list - is the same after the whole batch),
  - that no secret (admin secret, passwords, unseal keys, root token, key material) is in the output.
Cases of one module run as the tasks of ONE ansible-playbook run (`ignore_errors`), so the suite
stays fast; the services are the session's real PostgreSQL, Redis, OpenBao and broker.

Runbook sections: §2 and "Backups" (pg_backup, backup_set, audit_archive), §3 (vault_*), §5
(tls_*), §6 (cert_revoke, binding_revoke, agent_token_invalidate, org_state), §1/§4/§7 and
triage (broker_health, redis_ping, service_info, stack_service, agent_login, org_onboard).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from testkit import broker_db, playbook_server
from testkit.ansible import ansible_env, run_module
from testkit.broker_orgs import admin_client, new_org_id, onboard_org, org_secret
from testkit.pki import CA, now
from testkit.services import OpenBaoServer


@dataclass
class Case:
    id: str
    args: dict
    expect: str | tuple  # substring(s) of the error message
    check: bool = False  # run in check mode
    fails: bool = True  # read-only *_info-style modules report a fault instead of failing


@dataclass
class Batch:
    module: str
    cases: list
    results: dict = field(default_factory=dict)
    output: str = ""


def run_batch(module: str, cases: list[Case], env: dict | None = None) -> Batch:
    """Every case as one task of one playbook (ignore_errors); results by case id."""
    fqcn = module if "." in module else f"cullis.broker.{module}"
    tasks = []
    for c in cases:
        task = {"name": c.id, fqcn: c.args, "ignore_errors": True}
        if c.check:
            task["check_mode"] = True
        tasks.append(task)
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable}, "tasks": tasks}]
    with tempfile.TemporaryDirectory(prefix="cullis-faults-") as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(yaml.safe_dump(play))
        proc = playbook_server.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(pb)],
                                   env=ansible_env(env), timeout=900)
    data = json.loads(proc.stdout[proc.stdout.find("{"):])
    batch = Batch(module, cases, output=proc.stdout + proc.stderr)
    for task in data["plays"][0]["tasks"]:
        batch.results[task["task"]["name"]] = task["hosts"]["localhost"]
    return batch


def assert_cases(batch: Batch, secrets: list[str]):
    """Every case failed with its expected text, reported changed=false, leaked nothing."""
    problems = []
    for c in batch.cases:
        r = batch.results.get(c.id)
        if r is None:
            problems.append(f"{c.id}: no result")
            continue
        msg = str(r.get("msg", "")) if c.fails else json.dumps(r)
        expected = c.expect if isinstance(c.expect, tuple) else (c.expect,)
        if c.fails and not r.get("failed"):
            problems.append(f"{c.id}: did not fail (changed={r.get('changed')})")
        elif not c.fails and r.get("failed"):
            problems.append(f"{c.id}: failed ({r.get('msg')!r}) instead of reporting")
        if r.get("changed"):
            problems.append(f"{c.id}: reported changed=true")
        missing = [e for e in expected if e not in msg]
        if missing:
            problems.append(f"{c.id}: {missing} not in {msg!r}")
        for bad in ("Traceback", "MODULE FAILURE", "Module failed: [Errno"):
            if bad in msg:
                problems.append(f"{c.id}: {bad} in {msg!r}")
    for secret in secrets:
        if secret and secret in batch.output:
            problems.append(f"a secret ({secret[:3]}...) appeared in the output of the {batch.module} batch")
    assert not problems, "\n".join(problems)


def tree(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode) for p in sorted(directory.rglob("*"))
            if p.is_file()}


def refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def private(path: Path, data: bytes | str, mode=0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good input files shared by the batches."""
    d = tmp_path_factory.mktemp("fault-files")
    other_ca = d / "other-ca.pem"
    other_ca.write_bytes(CA.create("Fault Suite Unrelated CA").cert_pem)
    (d / "not-pem.txt").write_text("this is not a certificate\n")
    (d / "empty").write_bytes(b"")
    return d


# ---- vault_unseal, vault_info, vault_token, vault_snapshot (runbook §3) -------------------------

@pytest.fixture(scope="module")
def sealed_node(test_ca):
    server = OpenBaoServer(ca=test_ca).start().initialize()
    server.seal()
    yield server
    server.cleanup()


def vault_secrets(server) -> list[str]:
    return [*server.unseal_keys, *server.init_result["unseal_keys_hex"], server.root_token]


def test_vault_unseal_faults(sealed_node, files, tmp_path):
    s = sealed_node
    conn = {"url": s.addr, "ca_cert": str(s.ca_path)}
    keys_json = json.loads(s.keys_file.read_text())
    loose = private(tmp_path / "loose.json", s.keys_file.read_bytes(), 0o644)
    no_keys = private(tmp_path / "no-keys.json", json.dumps({"root_token": "x"}))
    not_json = private(tmp_path / "not-json.json", "unseal_keys_b64: [a, b]")
    one_key = private(tmp_path / "one-key.json", json.dumps({"unseal_keys_b64": [keys_json["unseal_keys_b64"][0]] * 3}))
    size = len(base64.b64decode(s.unseal_keys[0]))
    cases = [
        Case("world-readable keys file", {**conn, "keys_file": str(loose)}, ("chmod 600", str(loose))),
        Case("missing keys file", {**conn, "keys_file": str(tmp_path / "nope.json")},
             ("cannot read keys_file", "nope.json")),
        Case("keys file not JSON", {**conn, "keys_file": str(not_json)}, "is not valid JSON"),
        Case("keys file without keys", {**conn, "keys_file": str(no_keys)}, "has no unseal keys"),
        Case("keys and keys_file", {**conn, "keys": ["not-a-real-unseal-key-value"], "keys_file": str(s.keys_file)},
             "mutually exclusive"),
        Case("no keys at all", conn, "one of the following is required: keys, keys_file"),
        Case("wrong CA", {"url": s.addr, "ca_cert": str(files / "other-ca.pem"), "keys_file": str(s.keys_file)},
             ("TLS trust problem", "CERTIFICATE_VERIFY_FAILED", "other-ca.pem")),
        Case("missing ca_cert", {"url": s.addr, "ca_cert": str(tmp_path / "ca-nope.pem"),
                                 "keys_file": str(s.keys_file)}, ("ca_cert", "ca-nope.pem", "does not exist")),
        Case("not an http URL", {"url": "ftp://127.0.0.1:8200", "keys_file": str(s.keys_file)},
             "is not an http(s) URL"),
        Case("refused port", {"url": f"https://127.0.0.1:{refused_port()}", "ca_cert": str(s.ca_path),
                              "keys_file": str(s.keys_file), "retries": 0}, "unreachable"),
        Case("one distinct key of three", {**conn, "keys_file": str(one_key)},
             "1 distinct key(s) given, the threshold is 3"),
        Case("malformed keys", {**conn, "keys": ["%%%not-base64-1%%%", "%%%not-base64-2%%%", "%%%not-base64-3%%%"]},
             ("unseal key #1 was rejected", "progress reset to 0/3")),
        Case("well-formed wrong keys",
             {**conn, "keys": [base64.b64encode(bytes([n]) * size).decode() for n in (1, 2, 3)]},
             ("did not unseal", "progress reset to 0/3")),
    ]
    batch = run_batch("vault_unseal", cases)
    assert_cases(batch, vault_secrets(s))
    st = s.status()
    assert st["sealed"] is True and st["progress"] == 0


def test_vault_info_faults(bao_server, files, tmp_path):
    s = bao_server
    cases = [
        Case("wrong CA", {"url": s.addr, "ca_cert": str(files / "other-ca.pem")},
             ("TLS trust problem", "CERTIFICATE_VERIFY_FAILED")),
        Case("missing ca_cert", {"url": s.addr, "ca_cert": str(tmp_path / "nope.pem")}, ("ca_cert", "does not exist")),
        Case("not a PEM ca_cert", {"url": s.addr, "ca_cert": str(files / "not-pem.txt")},
             ("ca_cert", "not a usable PEM CA file")),
        Case("not an http URL", {"url": "vault.example:8200"}, "is not an http(s) URL"),
        Case("refused port, fail_on_unreachable", {"url": f"https://127.0.0.1:{refused_port()}",
                                                   "ca_cert": str(s.ca_path), "retries": 0,
                                                   "fail_on_unreachable": True}, "unreachable"),
        Case("no address", {"url": []}, "no Vault address"),
    ]
    before = s.status()
    assert_cases(run_batch("vault_info", cases, env={"VAULT_ADDR": "", "BAO_ADDR": ""}), vault_secrets(s))
    assert s.status()["sealed"] == before["sealed"]


def test_vault_token_faults(bao_server, files, tmp_path):
    s = bao_server
    conn = {"url": s.addr, "ca_cert": str(s.ca_path)}
    loose = private(tmp_path / "loose.json", s.keys_file.read_bytes(), 0o644)
    cases = [
        Case("world-readable keys file", {**conn, "token": "hvs.invalid", "keys_file": str(loose),
                                          "policies": ["broker-policy"]}, ("chmod 600", str(loose))),
        Case("wrong CA", {"url": s.addr, "ca_cert": str(files / "other-ca.pem"), "token": "hvs.invalid"},
             "TLS trust problem"),
        Case("invalid token, no policies", {**conn, "token": "hvs.not-a-token"}, "no policies were given"),
        Case("invalid token, no admin", {**conn, "token": "hvs.not-a-token", "policies": ["broker-policy"]},
             "give admin_token or keys_file"),
        Case("missing keys file", {**conn, "token": "hvs.invalid", "keys_file": str(tmp_path / "nope.json"),
                                   "policies": ["broker-policy"]}, ("cannot read keys_file", "nope.json")),
        Case("not an http URL", {"url": "127.0.0.1:8200", "token": "hvs.invalid"}, "is not an http(s) URL"),
    ]
    accessors_before = s.cli("list", "-format=json", "auth/token/accessors", token=s.root_token).stdout
    assert_cases(run_batch("vault_token", cases), vault_secrets(s))
    assert s.cli("list", "-format=json", "auth/token/accessors", token=s.root_token).stdout == accessors_before


def test_vault_snapshot_faults(bao_server, files, tmp_path):
    s = bao_server
    conn = {"url": s.addr, "ca_cert": str(s.ca_path)}
    key = private(tmp_path / "backup.key", os.urandom(32))
    loose_key = private(tmp_path / "loose.key", os.urandom(32), 0o644)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    good = snaps / "vault.snap.enc"
    # a real encrypted snapshot to tamper with (the only change this test makes, before the batch)
    made = run_module("vault_snapshot", {**conn, "keys_file": str(s.keys_file), "path": str(good),
                                         "encryption_key_file": str(key)})
    assert not made.failed, made.result.get("msg")
    bad = snaps / "altered.snap.enc"
    shutil.copy(good, bad)
    shutil.copy(str(good) + ".json", str(bad) + ".json")
    with open(bad, "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    before = tree(snaps)
    cases = [
        Case("restore without confirm", {**conn, "state": "restored", "keys_file": str(s.keys_file),
                                         "path": str(good), "encryption_key_file": str(key)},
             ("confirm=true", "Vault was not touched")),
        Case("altered snapshot", {**conn, "state": "restored", "keys_file": str(s.keys_file), "path": str(bad),
                                  "encryption_key_file": str(key), "confirm": True},
             ("checksum mismatch", "Vault was not touched")),
        Case("encrypted, no key", {**conn, "state": "restored", "keys_file": str(s.keys_file), "path": str(good),
                                   "confirm": True}, ("is encrypted", "encryption_key_file")),
        Case("world-readable backup key", {**conn, "keys_file": str(s.keys_file), "path": str(snaps) + "/",
                                           "encryption_key_file": str(loose_key)},
             ("encryption_key_file", "chmod 600")),
        Case("missing snapshot", {**conn, "state": "restored", "keys_file": str(s.keys_file),
                                  "path": str(snaps / "nope.snap"), "confirm": True}, "does not exist"),
        Case("no token", {**conn, "path": str(snaps) + "/"}, "no token"),
        Case("wrong CA", {"url": s.addr, "ca_cert": str(files / "other-ca.pem"), "keys_file": str(s.keys_file),
                          "path": str(snaps) + "/"}, "TLS trust problem"),
    ]
    assert_cases(run_batch("vault_snapshot", cases, env={"VAULT_TOKEN": "", "BAO_TOKEN": ""}),
                 vault_secrets(s) + [key.read_bytes().hex()])
    assert tree(snaps) == before


# ---- pg_backup, backup_set, audit_archive (runbook §2, "Backups") --------------------------------

dbs, pg, db = broker_db.make_fixtures("fsf_", orgs=2, agents_per_org=2, audit_per_org=5)


def pg_conn(pg, **extra):
    return dict(login_host="127.0.0.1", login_port=pg.port, login_user=pg.user, login_password=pg.password, **extra)


def db_state(pg, db) -> tuple:
    names = pg.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
    rows = {t: broker_db.count(pg, db, t) for t in ("organizations", "agents", "audit_log")}
    return names, rows


@pytest.fixture
def backup_dir(pg, db, tmp_path):
    """An encrypted backup (recorded verified) and a key; returns (dir, backup path, key)."""
    key = private(tmp_path / "backup.key", os.urandom(32))
    d = tmp_path / "backups"
    d.mkdir()
    res = run_module("pg_backup", pg_conn(pg, database=db, dest=str(d), encryption_key_file=str(key)))
    assert not res.failed, res.result.get("msg")
    return d, Path(res.result["backup_path"]), key


def test_pg_backup_faults(pg, db, backup_dir, tmp_path):
    d, backup, key = backup_dir
    wrong_key = private(tmp_path / "wrong.key", os.urandom(32))
    loose_key = private(tmp_path / "loose.key", os.urandom(32), 0o644)
    short_key = private(tmp_path / "short.key", "abc")
    truncated = d / ("truncated" + backup.name[len(db):])
    truncated.write_bytes(backup.read_bytes()[:-40])
    (d / (truncated.name + ".json")).write_text((d / (backup.name + ".json")).read_text())
    new_dest = tmp_path / "new-dest"

    def c(**a):
        return pg_conn(pg, database=db, **a)
    cases = [
        Case("world-readable key", c(dest=str(new_dest), encryption_key_file=str(loose_key)),
             ("encryption_key_file", "chmod 600")),
        Case("key of the wrong size", c(dest=str(new_dest), encryption_key_file=str(short_key)),
             "must hold a 256-bit key"),
        Case("missing key file", c(dest=str(new_dest), encryption_key_file=str(tmp_path / "nope.key")),
             ("encryption_key_file", "nope.key")),
        Case("encrypted directory format", c(dest=str(new_dest), format="directory", encryption_key_file=str(key)),
             "directory-format backups cannot be encrypted"),
        Case("jobs 0", c(dest=str(new_dest), jobs=0), "jobs must be >= 1"),
        Case("keep_last 0", c(state="pruned", dest=str(d), keep_last=0), "keep_last must be >= 1"),
        Case("pruned without a rule", c(state="pruned", dest=str(d)), "needs keep_last and/or keep_days"),
        Case("restore over the live db without confirm",
             c(state="restored", path=str(backup), encryption_key_file=str(key)),
             ("confirm=true", "nothing was changed")),
        Case("restore a missing backup", c(state="restored", path=str(d / "nope.dump"), confirm=True),
             "does not exist"),
        Case("restore encrypted without key", c(state="restored", path=str(backup), confirm=True),
             ("is encrypted", "encryption_key_file")),
        Case("restore with the wrong key", c(state="restored", path=str(backup), confirm=True,
                                             encryption_key_file=str(wrong_key)),
             ("not the key it was made with", "wrong.key")),
        Case("verify with the wrong key (record)", c(state="verified", path=str(backup), record=True,
                                                     encryption_key_file=str(wrong_key)),
             ("cannot verify with this key", "Nothing was recorded")),
        Case("restore a truncated backup", c(state="restored", path=str(truncated), confirm=True,
                                             encryption_key_file=str(key)), "checksum mismatch"),
        Case("unknown database role", {**c(dest=str(new_dest)), "login_user": "nosuchrole"},
             'role "nosuchrole" does not exist'),
    ]
    before = db_state(pg, db), tree(d)
    assert_cases(run_batch("pg_backup", cases), [pg.password, key.read_bytes().hex(), wrong_key.read_bytes().hex()])
    assert (db_state(pg, db), tree(d)) == before
    assert not new_dest.exists()


def test_backup_set_faults(pg, db, backup_dir, tmp_path):
    d, backup, key = backup_dir
    env_file = private(tmp_path / "dot-env", "ADMIN_SECRET=fault-suite-admin-secret\n")
    sealed = run_module("backup_set", {"path": str(d), "files": [{"name": "env", "src": str(env_file)}],
                                       "encryption_key_file": str(key)})
    assert not sealed.failed, sealed.result.get("msg")
    wrong_key = private(tmp_path / "wrong.key", os.urandom(32))
    loose_key = private(tmp_path / "loose.key", os.urandom(32), 0o644)
    dest = tmp_path / "restored.env"
    cases = [
        Case("verify a directory that is not a set", {"state": "verified", "path": str(tmp_path)},
             "not a complete backup set"),
        Case("extract without name", {"state": "extracted", "path": str(d), "dest": str(dest)},
             ("state is extracted but all of the following are missing", "name")),
        Case("extract an unknown file", {"state": "extracted", "path": str(d), "name": "nope", "dest": str(dest),
                                         "encryption_key_file": str(key)}, "the set has no file named nope"),
        Case("extract with the wrong key", {"state": "extracted", "path": str(d), "name": "env", "dest": str(dest),
                                            "encryption_key_file": str(wrong_key)}, "failed authentication"),
        Case("extract with a world-readable key", {"state": "extracted", "path": str(d), "name": "env",
                                                   "dest": str(dest), "encryption_key_file": str(loose_key)},
             ("encryption_key_file", "chmod 600")),
        Case("add files without a key", {"path": str(d), "files": [{"name": "env", "src": str(env_file)}]},
             "encryption_key_file is required"),
        Case("seal a missing directory", {"path": str(tmp_path / "nope")}, "does not exist"),
        Case("prune without a rule", {"state": "pruned", "path": str(tmp_path)},
             "state is pruned but any of the following are missing: keep_last, keep_days"),
    ]
    before = tree(d)
    assert_cases(run_batch("backup_set", cases), ["fault-suite-admin-secret", key.read_bytes().hex()])
    assert tree(d) == before
    assert not dest.exists()


def test_audit_archive_faults(pg, db, tmp_path):
    def c(**a):
        return pg_conn(pg, database=db, **a)
    ro_parent = tmp_path / "file-not-dir"
    ro_parent.write_text("x")
    cases = [
        Case("negative older_than_days", c(dest=str(tmp_path / "a"), older_than_days=-1),
             ("older_than_days must be", "nothing was changed")),
        Case("present without dest", c(older_than_days=0), "dest (the archive directory) is required"),
        Case("verify without path", c(state="verified"), "path (the archive file) is required"),
        Case("verify a missing archive", c(state="verified", path=str(tmp_path / "nope.jsonl.gz")), "nope.jsonl.gz"),
        Case("dest under a file", c(dest=str(ro_parent / "sub"), older_than_days=0),
             ("cannot create the archive directory", "nothing was deleted")),
        Case("unknown database role", {**c(dest=str(tmp_path / "a"), older_than_days=0), "login_user": "nosuchrole"},
             'role "nosuchrole" does not exist'),
    ]
    before = db_state(pg, db)
    assert_cases(run_batch("audit_archive", cases), [pg.password])
    assert db_state(pg, db) == before
    assert not (tmp_path / "a").exists()


# ---- tls_check, tls_install (runbook §5) --------------------------------------------------------

@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault-tls")
    root = CA.create("Fault Root")
    inter = root.issue("Fault Intermediate", ca=True, days=3000)
    leaf = inter.server_cert("broker.example.com", "127.0.0.1")
    other = inter.server_cert("broker.example.com")
    expired = inter.server_cert("broker.example.com", days=10, not_before=now() - dt.timedelta(days=13))
    (d / "ca.pem").write_bytes(root.cert_pem)
    (d / "chain.pem").write_bytes(inter.cert_pem)
    (d / "leaf.pem").write_bytes(leaf.cert_pem)
    (d / "fullchain.pem").write_bytes(leaf.cert_pem + inter.cert_pem)
    (d / "wrong-order.pem").write_bytes(inter.cert_pem + leaf.cert_pem)
    (d / "expired.pem").write_bytes(expired.cert_pem)
    private(d / "leaf.key", leaf.key_pem)
    private(d / "other.key", other.key_pem)
    private(d / "expired.key", expired.key_pem)
    return d, [leaf.key_pem, other.key_pem, expired.key_pem]


def key_lines(pems) -> list[str]:
    return [p.decode().splitlines()[1] for p in pems]


def test_tls_check_faults(tls_pki, files, tmp_path):
    d, keys = tls_pki
    cases = [
        Case("missing ca_path", {"paths": [{"path": str(d / "leaf.pem")}], "ca_path": str(tmp_path / "nope.pem")},
             ("cannot load the CA certificates", "nope.pem", "ca_path")),
        Case("ca_path not PEM", {"paths": [{"path": str(d / "leaf.pem")}], "ca_path": str(files / "not-pem.txt")},
             ("cannot load the CA certificates", "not-pem.txt")),
        Case("critical above warn", {"paths": [{"path": str(d / "leaf.pem")}], "warn_days": 5},
             "critical_days (14) must not be larger than warn_days (5)"),
        Case("nothing to check", {}, "nothing to check"),
        Case("wrong order file", {"paths": [{"path": str(d / "wrong-order.pem"), "server_name": "broker.example.com"}],
                                  "ca_path": str(d / "ca.pem")},
             ("certificate order", "the server certificate must come first")),
        Case("expired file", {"paths": [{"path": str(d / "expired.pem")}], "ca_path": str(d / "ca.pem")},
             "(expired 3 days ago)"),
        Case("refused endpoint", {"endpoints": [{"host": "127.0.0.1", "port": refused_port()}], "timeout": 3},
             "unknown"),
        Case("not a certificate file", {"paths": [{"path": str(files / "not-pem.txt")}]}, "not-pem.txt"),
    ]
    assert_cases(run_batch("tls_check", cases), key_lines(keys))


def test_tls_install_faults(tls_pki, tmp_path):
    d, keys = tls_pki
    dest = tmp_path / "tls"
    dest.mkdir()
    (dest / "nginx.pem").write_bytes(b"current certificate\n")
    private(dest / "nginx-key.pem", b"current key\n")

    def args(cert="fullchain.pem", key="leaf.key", **over):
        a = {"cert": str(d / cert), "key": str(d / key), "ca_path": str(d / "ca.pem"),
             "hostnames": ["broker.example.com"], "dest_cert": str(dest / "nginx.pem"),
             "dest_key": str(dest / "nginx-key.pem")}
        a.update(over)
        return a
    cases = [
        Case("key of another certificate", args(key="other.key"), "the private key does not belong"),
        Case("intermediate first", args(cert="wrong-order.pem"),
             ("certificate order", "the current certificate stays in place")),
        Case("expired", args(cert="expired.pem", key="expired.key", chain=str(d / "chain.pem")),
             "(expired 3 days ago)"),
        Case("name not covered", args(hostnames=["other.example.com"]), "does not cover other.example.com"),
        Case("incomplete chain", args(cert="leaf.pem"), "incomplete chain"),
        Case("untrusted CA", args(ca_path=str(tls_pki[0] / "chain.pem").replace("chain.pem", "nope-ca.pem")),
             "nope-ca.pem"),
        Case("hostnames empty", args(hostnames=[]), "hostnames is empty"),
        Case("dest_ca without ca_path", {**args(), "ca_path": None, "dest_ca": str(dest / "ca.pem")},
             "dest_ca needs ca_path"),
        Case("missing dest directory", args(dest_cert=str(tmp_path / "nope" / "nginx.pem")),
             ("does not exist; create it first", "the current files are unchanged")),
        Case("key file is not a key", args(key="leaf.pem"), "private key"),
        Case("missing cert file", args(cert="nope.pem"), ("cannot read the certificate", "nope.pem")),
    ]
    before = tree(dest)
    assert_cases(run_batch("tls_install", cases), key_lines(keys))
    assert tree(dest) == before


# ---- broker modules (runbook §1, §4, §6, §7, triage) --------------------------------------------

@pytest.fixture(scope="module")
def org(broker, redis_server, tmp_path_factory):
    identity_dir = tmp_path_factory.mktemp("fault-ids") / "org"
    org_id = new_org_id("fs-fault")
    result = onboard_org(broker, org_id, identity_dir, 2, redis_server)
    return dict(id=org_id, dir=identity_dir, serials={a["name"]: a["cert_serial_hex"] for a in result["agents"]},
                secret=org_secret(identity_dir))


def broker_secrets(broker, org) -> list[str]:
    return [broker.admin_secret, org["secret"]]


def revoked(broker, org_id) -> set:
    resp = admin_client(broker).admin_get("/v1/admin/certs/revoked", query={"org_id": org_id})
    assert resp.status == 200
    return {r["serial_hex"] for r in resp.json()}


def org_status(broker, org_id) -> str:
    resp = admin_client(broker).admin_get(f"/v1/registry/orgs/{org_id}")
    return resp.json()["status"] if resp.status == 200 else f"HTTP {resp.status}"


def test_cert_revoke_faults(broker, org, files, tmp_path):
    conn = {"broker_url": broker.url, "admin_secret": broker.admin_secret}
    serial = org["serials"]["a00"]
    # one hex digit off the real serial: never the serial itself (`serial[:-2] + "00"` was, for the
    # 1 in 256 serials that end in 00: the module then rightly revoked the agent's certificate)
    typo = serial[:-1] + ("1" if serial[-1] == "0" else "0")
    ca_pem = tmp_path / "ca-cert.pem"
    ca_pem.write_bytes(CA.create("A CA, not an agent").cert_pem)
    cases = [
        Case("unquoted octal-looking serial", {**conn, "org_id": org["id"], "serials": [64]},
             ("serials[0] is 64", "quote")),
        Case("unquoted hex-looking serial", {**conn, "org_id": org["id"], "serials": ["ab", 31]},
             ("serials[1] is 31", "quote")),
        Case("bool serial", {**conn, "org_id": org["id"], "serials": [True]}, ("serials[0] is True", "quote")),
        Case("typo in a serial", {**conn, "org_id": org["id"], "serials": [typo]},
             ("no certificate of org", "allow_unknown_serials")),
        Case("not hexadecimal", {**conn, "org_id": org["id"], "serials": ["0a:1g:ff"]}, "not hexadecimal"),
        Case("a thumbprint", {**conn, "org_id": org["id"], "serials": ["ab" * 32]}, "thumbprint"),
        Case("zero", {**conn, "org_id": org["id"], "serials": ["00"]}, "is zero"),
        Case("serials without org_id", {**conn, "serials": [serial]}, "serials need org_id"),
        Case("nothing to revoke", conn, "nothing to revoke"),
        Case("unknown org", {**conn, "org_id": "no-such-org-fs", "serials": [serial]}, "not found"),
        Case("wrong admin secret", {"broker_url": broker.url, "admin_secret": "wrong-admin-secret-fs-0123456789",
                                    "org_id": org["id"], "all_agents": True}, "rejected the admin secret"),
        Case("missing ca_path", {**conn, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem"),
                                 "org_id": org["id"], "serials": [serial]}, ("ca_path", "nope.pem")),
        Case("max_workers 0", {**conn, "org_id": org["id"], "serials": [serial], "max_workers": 0},
             "max_workers must be at least 1"),
        Case("a CA certificate", {**conn, "org_id": org["id"], "certs": [str(ca_pem)]}, "is a CA certificate"),
        Case("missing certificate file", {**conn, "org_id": org["id"], "certs": [str(tmp_path / "nope.crt")]},
             "neither PEM contents nor an existing file"),
    ]
    assert_cases(run_batch("cert_revoke", cases), broker_secrets(broker, org) + ["wrong-admin-secret-fs-0123456789"])
    assert revoked(broker, org["id"]) == set()


def test_org_state_faults(broker, org, tmp_path):
    conn = {"broker_url": broker.url, "admin_secret": broker.admin_secret}
    cases = [
        Case("unknown org", {**conn, "org_id": "no-such-org-fs", "state": "suspended"}, "not found"),
        Case("wrong admin secret", {"broker_url": broker.url, "admin_secret": "wrong-admin-secret-fs-0123456789",
                                    "org_id": org["id"], "state": "suspended"}, "admin secret"),
        Case("bad state", {**conn, "org_id": org["id"], "state": "deleted"}, "value of state must be one of"),
        Case("missing ca_path", {**conn, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem"),
                                 "org_id": org["id"], "state": "suspended"}, ("ca_path", "nope.pem")),
        Case("unreachable broker", {**conn, "broker_url": f"http://127.0.0.1:{refused_port()}", "org_id": org["id"],
                                    "state": "suspended"}, "unreachable"),
        Case("not an http URL", {**conn, "broker_url": "broker.example", "org_id": org["id"], "state": "suspended"},
             "is not an http(s) URL"),
    ]
    assert_cases(run_batch("org_state", cases, env={"CULLIS_ADMIN_SECRET": ""}),
                 broker_secrets(broker, org) + ["wrong-admin-secret-fs-0123456789"])
    assert org_status(broker, org["id"]) == "active"


def test_binding_revoke_and_token_invalidate_faults(broker, org, tmp_path):
    base = {"broker_url": broker.url, "org_id": org["id"], "org_secret": "wrong-org-secret-fs-0123456789"}
    foreign = "another-org::a00"
    binding_cases = [
        Case("wrong org secret", base, "nothing was revoked"),
        Case("unknown org", {**base, "org_id": "no-such-org-fs"}, "nothing was revoked"),
        Case("unreachable broker", {**base, "broker_url": f"http://127.0.0.1:{refused_port()}"},
             ("nothing was revoked", "unreachable")),
        Case("missing ca_path", {**base, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem")},
             ("ca_path", "nope.pem")),
        Case("no org_id", {k: v for k, v in base.items() if k != "org_id"}, "org_id"),
    ]
    token_cases = [
        Case("agent of another org", {**base, "agent_ids": [foreign]}, ("not of org", foreign)),
        Case("wrong org secret", {**base, "agent_ids": [f"{org['id']}::a00"]}, "nothing was invalidated"),
        Case("unreachable broker", {**base, "broker_url": f"http://127.0.0.1:{refused_port()}",
                                    "agent_ids": [f"{org['id']}::a00"]}, "nothing was invalidated"),
        Case("missing ca_path", {**base, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem"),
                                 "agent_ids": [f"{org['id']}::a00"]}, ("ca_path", "nope.pem")),
        Case("agent id without org prefix", {**base, "agent_ids": ["a00"]}, ("not of org", "a00")),
    ]
    secrets = broker_secrets(broker, org) + ["wrong-org-secret-fs-0123456789"]
    assert_cases(run_batch("binding_revoke", binding_cases), secrets)
    assert_cases(run_batch("agent_token_invalidate", token_cases), secrets)
    assert org_status(broker, org["id"]) == "active"


def test_org_onboard_faults(broker, org, tmp_path):
    conn = {"broker_url": broker.url, "admin_secret": broker.admin_secret}
    other_dir = tmp_path / "new-identity"
    cases = [
        Case("identity_dir of another org", {**conn, "org_id": new_org_id("fs-other"),
                                             "identity_dir": str(org["dir"])}, "belongs to org"),
        Case("bad agent name", {**conn, "org_id": new_org_id("fs-bad"), "identity_dir": str(other_dir),
                                "agents": [{"name": "a b/c"}]}, "use letters, digits"),
        Case("agent listed twice", {**conn, "org_id": new_org_id("fs-twice"), "identity_dir": str(other_dir),
                                    "agents": [{"name": "x"}, {"name": "x"}]}, "is listed twice"),
        Case("no admin secret", {"broker_url": broker.url, "org_id": new_org_id("fs-noadmin"),
                                 "identity_dir": str(other_dir)}, "missing required arguments: admin_secret"),
        Case("existing org, secret unknown", {**conn, "org_id": org["id"], "identity_dir": str(other_dir)},
             "already exists on the broker"),
        Case("missing ca_path", {**conn, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem"),
                                 "org_id": new_org_id("fs-ca"), "identity_dir": str(other_dir)},
             ("ca_path", "nope.pem")),
    ]
    before = tree(org["dir"])
    assert_cases(run_batch("org_onboard", cases, env={"CULLIS_ADMIN_SECRET": ""}), broker_secrets(broker, org))
    assert tree(org["dir"]) == before
    assert not other_dir.exists() or not any(other_dir.rglob("*.key"))


def test_agent_login_faults(broker, org, tmp_path):
    base = {"broker_url": broker.url, "identity_dir": str(org["dir"])}
    cases = [
        Case("unknown agent", {**base, "agent": "no-such-agent"}, "no-such-agent"),
        Case("missing identity dir", {"broker_url": broker.url, "identity_dir": str(tmp_path / "nope"), "agent": "a00"},
             "nope"),
        Case("missing ca_path", {**base, "broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem"),
                                 "agent": "a00"}, ("ca_path", "nope.pem")),
        Case("unreachable broker", {**base, "broker_url": f"http://127.0.0.1:{refused_port()}", "agent": "a00"},
             "unreachable"),
        Case("not an http URL", {**base, "broker_url": "broker.example", "agent": "a00"}, "is not an http(s) URL"),
    ]
    assert_cases(run_batch("agent_login", cases), broker_secrets(broker, org))
    assert revoked(broker, org["id"]) == set()


def test_broker_health_faults(broker, files, tmp_path):
    cases = [
        Case("missing ca_path", {"broker_url": "https://127.0.0.1:9", "ca_path": str(tmp_path / "nope.pem")},
             ("ca_path", "nope.pem")),
        Case("ca_path not PEM", {"broker_url": "https://127.0.0.1:9", "ca_path": str(files / "not-pem.txt")},
             ("ca_path", "not-pem.txt")),
        Case("not an http URL", {"broker_url": "broker.example"}, "is not an http(s) URL"),
        Case("unreachable broker", {"broker_url": f"http://127.0.0.1:{refused_port()}"}, "unreachable", fails=False),
        Case("wrong admin secret", {"broker_url": broker.url, "admin_secret": "wrong-admin-secret-fs-0123456789",
                                    "check_admin": True}, "admin", fails=False),
    ]
    assert_cases(run_batch("broker_health", cases), [broker.admin_secret, "wrong-admin-secret-fs-0123456789"])


def test_redis_ping_faults(redis_server, tmp_path):
    env = private(tmp_path / "dot-env", f"REDIS_PASSWORD=wrong-redis-password-fs\nREDIS_PORT={redis_server.port}\n")
    cases = [
        Case("wrong password", {"port": redis_server.port, "password": "wrong-redis-password-fs"},
             "WRONGPASS", fails=False),
        Case("no password", {"port": redis_server.port}, "NOAUTH", fails=False),
        Case("refused port", {"port": refused_port(), "timeout": 2}, "refused", fails=False),
        Case("wrong password from env_file", {"env_file": str(env), "port": redis_server.port}, "WRONGPASS",
             fails=False),
        Case("missing env_file", {"env_file": str(tmp_path / "nope.env"), "port": redis_server.port},
             ("env_file", "nope.env", "does not exist", "NOAUTH"), fails=False),
    ]
    assert_cases(run_batch("redis_ping", cases), [redis_server.password, "wrong-redis-password-fs"])


def test_service_info_and_stack_service_faults(tmp_path):
    empty = tmp_path / "not-a-stack"
    empty.mkdir()
    info_cases = [
        Case("not a stack dir", {"stack_dir": str(empty)}, '"daemon_running": false', fails=False),
        Case("missing stack dir", {"stack_dir": str(tmp_path / "nope")}, ("stack_dir", "nope", "does not exist"),
             fails=False),
        Case("bad runtime", {"stack_dir": str(empty), "runtime": "k8s"}, "value of runtime must be one of"),
        Case("log_lines not a number", {"stack_dir": str(empty), "log_lines": "many"}, "log_lines"),
        Case("unknown service", {"stack_dir": str(empty), "services": ["nosuch"]}, ('"nosuch"', '"down": ["nosuch"]'),
             fails=False),
    ]
    svc_cases = [
        Case("all, not stopped", {"name": "all", "state": "started", "stack_dir": str(empty)},
             "name=all is only valid with state=stopped"),
        Case("not a stack dir", {"name": "broker", "state": "started", "stack_dir": str(empty)}, "supervisor"),
        Case("missing stack dir", {"name": "broker", "state": "started", "stack_dir": str(tmp_path / "nope")}, "nope"),
        Case("bad state", {"name": "broker", "state": "paused", "stack_dir": str(empty)},
             "value of state must be one of"),
        # the compose runtime exists (issue 12); with no engine at the address it names the engine
        Case("compose runtime, no engine", {"name": "broker", "stack_dir": str(empty), "runtime": "compose",
                                            "docker_host": f"unix://{tmp_path}/no-docker.sock"},
             ("Docker engine", f"unix://{tmp_path}/no-docker.sock", "does not answer")),
    ]
    before = tree(empty)
    assert_cases(run_batch("service_info", info_cases), [])
    assert_cases(run_batch("stack_service", svc_cases), [])
    assert tree(empty) == before and not (tmp_path / "nope").exists()


def test_stack_info_faults(tmp_path):
    """stack_info (issue 11's target-side facts) under bad input: reports absence, never a secret."""
    stack = tmp_path / "stack"
    stack.mkdir()
    secret = "StackInfoFaultSecret" + os.urandom(6).hex()
    private(stack / ".env", f"ADMIN_SECRET={secret}\nBROKER_PUBLIC_URL=https://broker.example\n")
    cases = [
        Case("missing stack dir", {"stack_dir": str(tmp_path / "nope")}, ('"exists": false', '"env_file_exists": false'),
             fails=False),
        Case("missing env file", {"stack_dir": str(stack), "env_file": str(tmp_path / "missing.env")},
             '"env_file_exists": false', fails=False),
        # secrets=true hands the values to the play (the task must set no_log, as documented); without
        # it only the names are reported
        Case("secret names only", {"stack_dir": str(stack)}, ('"ADMIN_SECRET"', "broker.example"), fails=False),
        Case("bad runtime", {"stack_dir": str(stack), "runtime": "k8s"}, "value of runtime must be one of"),
        Case("timeout not a number", {"stack_dir": str(stack), "timeout": "soon"}, "timeout"),
    ]
    before = tree(stack)
    assert_cases(run_batch("stack_info", cases), [secret])
    assert tree(stack) == before and not (tmp_path / "nope").exists()

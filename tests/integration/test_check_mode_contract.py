"""Every module of the collection in check mode against the real services changes nothing (issue 15).

One playbook, every task `check_mode: true`, against the session's real broker (broker_src on
PostgreSQL, Redis and OpenBao), its database and Vault, and temporary files: afterwards the
broker's configuration tables, the Postgres databases, Vault's tokens/seal/secret and every file
are as they were. Each module's check-mode answer is also checked against what it claims to plan
(changed=true where there is work, so the test cannot pass with modules that skip everything).

Declared exceptions: agent_login logs in under --check (its `check_mode` attribute is `partial`:
a login writes audit rows and counts against the rate limit), so audit_log is not compared.
Runbook: every incident's "confirm" step runs modules read-only; this is what makes that true.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from testkit.ansible import run_module, run_playbook
from testkit.broker_orgs import db_query, new_org_id, onboard_org, org_secret

pytestmark = pytest.mark.slow

MODULES_DIR = Path(__file__).parents[2] / "collections/ansible_collections/cullis/broker/plugins/modules"
# keys Ansible adds to every result, and to those holding `path`/`dest` (AnsibleModule.add_path_info)
ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations", "diff", "skipped",
                "exception", "action", "_ansible_no_log", "_ansible_verbose_always", "_ansible_delegated_vars"}
PATH_INFO_KEYS = {"uid", "gid", "owner", "group", "mode", "state", "size", "secontext"}
CONFIG_TABLES = ("organizations", "agents", "bindings", "revoked_certs", "federation_events", "sessions")


def documented_return_keys(module: str) -> set:
    tree_ = ast.parse((MODULES_DIR / f"{module}.py").read_text())
    for node in tree_.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "RETURN":
            return set(yaml.safe_load(node.value.value) or {})
    return set()


def tree(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def vault_state(bao) -> dict:
    import urllib.request
    import ssl
    ctx = ssl.create_default_context(cafile=str(bao.ca_path))

    def get(path, method="GET"):
        req = urllib.request.Request(bao.addr + "/v1/" + path, method=method,
                                     headers={"X-Vault-Token": bao.root_token})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.loads(resp.read())
    return {"sealed": get("sys/seal-status")["sealed"],
            "accessors": sorted(get("auth/token/accessors", "LIST")["data"]["keys"]),
            "raft": sorted(s["node_id"] for s in get("sys/storage/raft/configuration")["data"]["config"]["servers"])}


def broker_state(pg) -> dict:
    state = {t: db_query(pg.dsn, f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t")
             for t in CONFIG_TABLES}
    state["databases"] = db_query(pg.dsn, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
    return state


@pytest.fixture(scope="module")
def org(broker, redis_server, tmp_path_factory):
    identity_dir = tmp_path_factory.mktemp("check-ids") / "org"
    org_id = new_org_id("check")
    onboard_org(broker, org_id, identity_dir, 1, redis_server)
    # the first login pins the agent's certificate (a declared side effect of agent_login, in check
    # mode too): done here, so the check-mode run finds it pinned
    first = run_module("agent_login", {"broker_url": broker.url, "identity_dir": str(identity_dir), "agent": "a00"})
    assert not first.failed, first.result.get("msg")
    return {"id": org_id, "dir": identity_dir, "secret": org_secret(identity_dir)}


def test_every_module_in_check_mode_changes_nothing(broker, pg_server, redis_server, bao_server, test_ca, org,
                                                    tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    key = private(work / "backup.key", os.urandom(32))
    keys_file = private(work / "vault-keys.json", json.dumps(bao_server.init_result).encode())
    env = work / "stack.env"
    env.write_text(f"REDIS_URL={redis_server.url}\nADMIN_SECRET={broker.admin_secret}\n")
    (work / "backups").mkdir()
    (work / "sets" / "set-1").mkdir(parents=True)
    cert_path, key_path = test_ca.server_cert("127.0.0.1", "localhost").write(work, "server")
    ca_path = work / "ca.pem"
    ca_path.write_bytes(test_ca.cert_pem)
    new_ids = tmp_path / "new-org"  # outside `work`: must not even be created
    agent = f"{org['id']}::a00"
    conn = {"broker_url": broker.url, "admin_secret": broker.admin_secret}
    org_creds = {"org_id": org["id"], "org_secret": org["secret"]}
    vault = {"url": [bao_server.addr], "ca_cert": str(bao_server.ca_path)}
    pg = {"login_host": "127.0.0.1", "login_port": pg_server.port, "login_user": pg_server.user,
          "login_password": pg_server.password, "database": pg_server.database}
    # (module, args, expected changed in check mode: True where there is work to plan)
    cases = [
        ("org_onboard", dict(conn, org_id=new_org_id("check-new"), identity_dir=str(new_ids),
                             agents=[{"name": "x"}]), True),
        ("org_state", dict(conn, org_id=org["id"], state="suspended"), True),
        ("cert_revoke", dict(conn, org_id=org["id"], all_agents=True, db_dsn=pg_server.dsn), True),
        ("binding_revoke", dict(conn, **org_creds), True),
        ("agent_token_invalidate", dict(conn, agent_ids=[agent], db_dsn=pg_server.dsn, **org_creds), True),
        ("agent_login", dict(broker_url=broker.url, identity_dir=str(org["dir"]), agent="a00"), False),
        ("broker_health", dict(conn), False),
        ("redis_ping", dict(env_file=str(env)), False),
        ("vault_info", dict(vault), False),
        ("vault_unseal", dict(vault, keys_file=str(keys_file)), False),
        ("vault_token", dict(vault, keys_file=str(keys_file), policies=["broker-policy"]), True),
        ("vault_snapshot", dict(vault, keys_file=str(keys_file), path=str(work / "backups") + "/"), True),
        ("pg_backup", dict(pg, dest=str(work / "backups"), encryption_key_file=str(key)), True),
        ("audit_archive", dict(pg, dest=str(work / "archive"), older_than_days=0), None),
        ("backup_set", dict(path=str(work / "sets" / "set-1"), encryption_key_file=str(key),
                            files=[{"name": "env", "src": str(env)}]), True),
        ("backup_set_info", dict(path=str(work / "sets")), False),
        ("tls_check", dict(paths=[{"path": str(cert_path), "server_name": "localhost"}],
                           ca_path=str(ca_path)), False),
        ("tls_install", dict(cert=str(cert_path), key=str(key_path), ca_path=str(ca_path),
                             hostnames=["localhost"], dest_cert=str(work / "nginx.pem"),
                             dest_key=str(work / "nginx-key.pem")), True),
        ("audit_chain_info", dict(pg), False),
        ("host_preflight_info", dict(ports=[pg_server.port], stack_dir=str(work), paths=[str(work)],
                                     resolve=["localhost"]), False),
        ("stack_info", dict(stack_dir=str(work)), False),
        ("disk_usage_info", dict(paths=[str(work)], directories=[str(work)]), False),
        ("service_info", dict(stack_dir=str(work), log_lines=0), False),
        ("stack_service", dict(stack_dir=str(work), name="broker", state="started"), True),
    ]
    modules = {p.stem for p in MODULES_DIR.glob("*.py")}
    assert modules == {c[0] for c in cases}, "a module of the collection is missing from the check-mode test"
    tasks = [{"name": m, f"cullis.broker.{m}": args, "check_mode": True, "ignore_errors": True}
             for m, args, _ in cases]
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable}, "tasks": tasks}]
    playbook = tmp_path / "check.yml"
    playbook.write_text(yaml.safe_dump(play))

    files_before, broker_before, vault_before = tree(work), broker_state(pg_server), vault_state(bao_server)
    res = run_playbook(playbook, inventory="inventories/local")

    problems = []
    for name, _args, expect_changed in cases:
        found = res.task_results(name)
        if not found:
            problems.append(f"{name}: no result")
            continue
        r = found[0]
        if r.get("failed"):
            problems.append(f"{name}: failed in check mode: {r.get('msg')}")
        elif expect_changed is not None and bool(r.get("changed")) != expect_changed:
            problems.append(f"{name}: changed={r.get('changed')} in check mode, expected {expect_changed}")
        added = PATH_INFO_KEYS if ("path" in r or "dest" in r) else set()
        undocumented = set(r) - ANSIBLE_KEYS - added - documented_return_keys(name)
        if undocumented:  # issue 15: every returned key is documented in RETURN
            problems.append(f"{name}: returns keys its RETURN does not document: {sorted(undocumented)}")
    assert not problems, "\n".join(problems) + "\n" + res.output[-3000:]
    assert tree(work) == files_before, "a module wrote a file in check mode"
    assert not new_ids.exists()
    assert broker_state(pg_server) == broker_before, "a module changed the broker's database in check mode"
    assert vault_state(bao_server) == vault_before, "a module changed Vault in check mode"
    assert org["secret"] not in res.output and broker.admin_secret not in res.output

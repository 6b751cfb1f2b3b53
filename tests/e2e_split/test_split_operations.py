"""Issue 11: operations on the six-host split topology, each part on the host that owns it.

- Backups ("Backups — what to save"): backup.yml dumps Postgres ON the db host, snapshots Vault ON
  the vault host, encrypts the .env ON the first broker host, and keeps the set ON THE CONTROLLER;
  restore.yml (runbook §2 Recover 3) restores it on the db host, brokers stopped/started on both
  broker hosts. No scratch copy and no backup key is left on a host.
- TLS monitor (runbook §5, Prevent): the public URL and Vault's endpoint from the controller, the
  certificate file read on the proxy host (a file about to be served that is expired fails the run).
- The controller runs no stack service meanwhile.

Shares the session's deployed split topology (conftest `split_stack`); every test leaves it healthy.
Fault injection goes through the containers (docker exec), never through the playbooks under test.
"""
from __future__ import annotations

import json
import re
import ssl
import urllib.request

import pytest


pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"  # = conftest.STACK_DIR
SCRATCH_HOSTS = ("postgres", "vault", "broker1")
BROKER_PID = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf pid broker"


def psql(split_stack, sql: str, db: str = "agent_trust") -> str:
    return split_stack.psql(sql, db)


def assert_no_secret(split_stack, result, *extra) -> None:
    for value in [*split_stack.secret_values(), *extra]:
        assert value not in result.output, "a secret of the split stack appeared in the playbook output"


def readyz(split_stack) -> int:
    ctx = ssl.create_default_context(cafile=str(split_stack.controller_dir / "ca.pem"))
    with urllib.request.urlopen(f"{split_stack.public_url}/readyz", context=ctx, timeout=10) as resp:
        return resp.status


def assert_nothing_left_on_hosts(split_stack, key: str) -> None:
    for host in SCRATCH_HOSTS:
        left = split_stack.sh(host, f"ls -d {STACK_DIR}/backup-scratch-* 2>/dev/null; "
                                    f"grep -rl {key} {STACK_DIR} /tmp /root 2>/dev/null")
        assert left.strip() == "", f"{host} keeps backup scratch files or the backup key: {left}"


def flat(result) -> str:
    """The output with line wrapping undone (the default callback folds long messages)."""
    return " ".join(result.output.split())


def ran_on(result, task: str) -> set[str]:
    """The hosts a task's module really ran on (the delegate, for a delegated task; a task of a role
    matched with or without its role prefix), from the default callback's lines `ok: [postgres -> vault(127.0.0.1)]` (the json callback drops delegation)."""
    hosts = set()
    for chunk in result.output.split("\nTASK [")[1:]:
        name, _, body = chunk.partition("]")
        if name.split(" : ", 1)[-1] != task:  # "cullis.broker.incident : <task>" inside a role
            continue
        for m in re.finditer(r"^(?:ok|changed): \[([^\]]+)\]", body, re.M):
            target = m.group(1)
            hosts.add(target.split("-> ", 1)[1].split("(")[0] if "-> " in target else target)
    return hosts


def assert_controller_runs_no_stack(docker_engine) -> None:
    from testkit.testbed import controller_processes_using

    assert controller_processes_using(STACK_DIR) == []


@pytest.fixture(scope="module")
def backup_set(split_stack):
    """backup.yml on the split stack: the newest set on the controller."""
    res = split_stack.run("playbooks/backup.yml", callback="default")
    assert res.rc == 0, res.output[-4000:]
    sets = sorted((split_stack.controller_dir / "backups").glob("set-*"))
    assert sets, "no backup set on the controller"
    return res, sets[-1]


def test_backup_runs_on_the_owning_hosts_and_the_set_lands_on_the_controller(split_stack, backup_set, docker_engine):
    """Backups: Postgres dump on the db host (verified there), Vault snapshot on the vault host,
    .env encrypted on the broker host, set on the controller; nothing left behind on the hosts."""
    res, set_dir = backup_set
    assert_no_secret(split_stack, res)
    on = {t: ran_on(res, t) for t in (
        "Postgres dump, checksummed, encrypted, atomic - agent_trust", "Verify the Postgres dump (full)",
        "Vault raft snapshot (the broker signing key lives in Vault)", "Encrypt the .env on the broker host")}
    assert on == {"Postgres dump, checksummed, encrypted, atomic - agent_trust": {"postgres"},
                  "Verify the Postgres dump (full)": {"postgres"},
                  "Vault raft snapshot (the broker signing key lives in Vault)": {"vault"},
                  "Encrypt the .env on the broker host": {"broker1"}}, on
    manifest = json.loads((set_dir / "backup-set.json").read_text())
    assert manifest["postgres"].endswith(".dump.enc") and manifest["vault"].endswith(".snap.enc")
    assert {i["name"] for i in manifest["items"]} == {manifest["postgres"], manifest["vault"], "env.enc"}
    pg_manifest = json.loads((set_dir / (manifest["postgres"] + ".json")).read_text())
    assert pg_manifest["verification"]["status"] == "ok"  # a scratch restore on the db host
    assert "public.organizations" in pg_manifest["row_counts"]
    env_plain = split_stack.bed.read_file("broker1", f"{STACK_DIR}/.env").encode()
    assert env_plain not in (set_dir / "env.enc").read_bytes()
    key = (split_stack.controller_dir / "backup.key").read_text().strip()
    assert (split_stack.controller_dir / "backup.key").stat().st_mode & 0o777 == 0o600
    assert_nothing_left_on_hosts(split_stack, key)
    assert_controller_runs_no_stack(docker_engine)


def test_restore_on_the_db_host_brings_the_data_back(split_stack, backup_set, docker_engine):
    """§2 Recover 3: refused without confirmation (changed=0); restored with it on the db host,
    both brokers stopped and started again, /readyz 200 from the controller; rerun changed=0."""
    _res, set_dir = backup_set
    psql(split_stack, "INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                      "VALUES ('split-after-backup', 'x', 'x', now())")
    pids = {b: split_stack.sh(b, BROKER_PID).strip() for b in ("broker1", "broker2")}
    refused = split_stack.run("playbooks/restore.yml")
    assert refused.rc != 0 and "not confirmed: nothing was changed" in refused.output
    assert refused.changed == 0, refused.stats
    assert psql(split_stack, "SELECT count(*) FROM organizations WHERE org_id = 'split-after-backup'") == "1"
    try:
        res = split_stack.run("playbooks/restore.yml", extra_vars={"confirm": True, "backup_set": str(set_dir)},
                              callback="default")
        assert res.rc == 0, res.output[-4000:]
        assert_no_secret(split_stack, res)
        assert "data-loss window" in flat(res) and "broker running, /readyz 200" in flat(res)
        assert ran_on(res, "Restore Postgres (new database, row counts checked, swapped in by rename)") == {"postgres"}
        assert ran_on(res, "Stop the broker while its database is swapped") == {"broker1", "broker2"}
        assert ran_on(res, "Start the broker (on every path, also after a failure)") == {"broker1", "broker2"}
        assert ran_on(res, "Verify: the broker is ready (/readyz 200)") == {"localhost"}
        assert psql(split_stack, "SELECT count(*) FROM organizations WHERE org_id = 'split-after-backup'") == "0"
        for broker, pid in pids.items():  # restarted on both broker hosts
            assert split_stack.sh(broker, BROKER_PID).strip() not in ("", pid), broker
        assert readyz(split_stack) == 200
        key = (split_stack.controller_dir / "backup.key").read_text().strip()
        assert_nothing_left_on_hosts(split_stack, key)
    finally:
        kept = psql(split_stack, "SELECT datname FROM pg_database WHERE datname LIKE 'agent_trust\\_pre\\_restore\\_%'",
                    db="postgres")
        for name in kept.split():
            psql(split_stack, f'DROP DATABASE "{name}" WITH (FORCE)', db="postgres")
        psql(split_stack, "DELETE FROM organizations WHERE org_id = 'split-after-backup'")
    assert_controller_runs_no_stack(docker_engine)
    # that the restore left the stack in its declared state (a deploy has nothing to do) is
    # test_second_deploy_changes_nothing, the last test of this file


def test_tls_monitor_checks_each_certificate_where_it_lives(split_stack, docker_engine):
    """§5 Prevent: the public URL and Vault's endpoint checked from the controller, nginx's certificate
    file read on the proxy host; an expired file waiting there fails the run; rerun changed=0."""
    ev = {"cullis_tls_monitor_vault_endpoint": {  # Vault's TLS endpoint, as the controller reaches it
        "name": "vault", "url": f"https://{split_stack.bed.ip('vault')}:{split_stack.ports['cullis_vault_port']}",
        "server_name": "vault", "ca_path": str(split_stack.controller_dir / "ca.pem")}}
    res = split_stack.run("playbooks/tls_monitor.yml", extra_vars=ev, callback="default")
    assert res.rc == 0, res.output[-3000:]
    assert res.changed == 0
    assert "2 certificates checked, 0 to renew within 30 days, certificate files on the proxy hosts: ok" in flat(res)
    placed = res
    assert ran_on(placed, "Check every certificate (warns under warn_days)") == {"localhost"}
    assert ran_on(placed, "Read the certificate file nginx serves after its next reload") == {"proxy"}
    assert ran_on(placed, "Check the certificate file nginx serves after its next reload") == {"localhost"}

    from testkit.pki import CA, now
    import datetime as dt

    expired = CA.create("Expired Split CA").server_cert("proxy", days=30, not_before=now() - dt.timedelta(days=45))
    cert = f"{STACK_DIR}/tls/nginx.pem"
    split_stack.sh("proxy", f"cp -p {cert} {cert}.keep")
    try:
        split_stack.bed.hosts["proxy"].container.put_archive(
            f"{STACK_DIR}/tls", _tar({"nginx.pem": expired.cert_pem}))
        bad = split_stack.run("playbooks/tls_monitor.yml", extra_vars=ev, callback="default")
        assert bad.rc != 0 and bad.changed == 0
        assert "TLS certificates need action now (runbook section 5)" in flat(bad)
        failing = flat(bad).split("TLS certificates need action now (runbook section 5):", 1)[1]
        assert "nginx certificate file on proxy" in failing and "certificate expired on" in failing, failing[:2000]
        assert "broker_public_url" not in failing.split("PLAY RECAP")[0]  # the served one is still good
        assert readyz(split_stack) == 200  # the served certificate is still the good one
    finally:
        split_stack.sh("proxy", f"mv {cert}.keep {cert}")
    again = split_stack.run("playbooks/tls_monitor.yml", extra_vars=ev)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]
    assert_controller_runs_no_stack(docker_engine)


def _tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile
    import time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_second_deploy_changes_nothing(split_stack):
    """The split deploy's rerun reports changed=0 on every host. It runs after the HA broker tests,
    every incident of test_split_incidents.py, the backup, the restore and the TLS monitor above, so
    it also proves each of them left the topology exactly as the deploy declares it. (One deploy for
    both claims: a deploy of six hosts is about 200 s of this 2-core machine's split stage.)"""
    res = split_stack.run("playbooks/deploy.yml")
    assert res.rc == 0, res.explain()
    changed = {h: s["changed"] for h, s in res.stats.items() if s.get("changed")}
    assert changed == {}, f"the second deploy changed something: {changed}: {res.changes()}"

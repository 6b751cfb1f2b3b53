"""`cullis_runtime: compose` end to end: playbooks/deploy.yml renders the compose project and runs it
on the test kit's real Docker engine, then the same playbooks as on the process runtime.

One stack for the module (deployed once, on free ports, in a temp dir): deploy + smoke test, the
broker killed with SIGKILL and brought back by playbooks/incidents/broker_down.yml. (A redeploy
with changed=0 is not here yet: the second run re-creates the broker container, and the preflight
takes the stack's own containers for foreign processes on its ports; see the README.) Images: the kit's local stand-ins for the public images and
the broker image of the role's Dockerfile (testkit/docker_images.py, cached by content hash),
passed through the image variables.
"""
from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO, run_playbook
from testkit.docker_engine import LABEL
from testkit.process import free_port

PORT_VARS = ("cullis_postgres_port", "cullis_redis_port", "cullis_vault_port", "cullis_vault_cluster_port",
             "cullis_broker_port", "cullis_nginx_port", "cullis_nginx_http_port")


class ComposeStack:
    def __init__(self, base: Path, env: dict, images: dict):
        self.base = base
        self.dir = base / "stack"
        self.env = env
        ports: list[int] = []
        while len(ports) < len(PORT_VARS):
            p = free_port()
            if p not in ports:
                ports.append(p)
        self.ports = dict(zip(PORT_VARS, ports))
        inv = base / "inventory"
        (inv / "group_vars" / "all").mkdir(parents=True)
        shutil.copy(REPO / "inventories" / "local" / "hosts.yml", inv / "hosts.yml")
        values = yaml.safe_load((REPO / "inventories" / "local" / "group_vars" / "all" / "stack.yml").read_text())
        values.update(self.ports)
        values.update({
            "cullis_stack_dir": str(self.dir),
            "cullis_runtime": "compose",
            "cullis_compose_images": {svc: images[svc].tag for svc in ("postgres", "redis", "vault", "nginx")},
            "cullis_broker_image": images["broker"].tag,
            "cullis_compose_labels": {LABEL: "e2e_compose_deploy"},
        })
        (inv / "group_vars" / "all" / "stack.yml").write_text("---\n" + yaml.safe_dump(values, sort_keys=False))
        self.inventory = inv

    def run(self, playbook: str, **kwargs):
        return run_playbook(playbook, inventory=self.inventory, env=self.env, **kwargs)

    def get(self, path: str, timeout: float = 10):
        ctx = ssl.create_default_context(cafile=str(self.dir / "tls" / "ca.pem"))
        url = f"https://127.0.0.1:{self.ports['cullis_nginx_port']}{path}"
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            return None, str(exc).encode()


def _tail(result, n=60):
    return result.explain(n)


@pytest.fixture(scope="module")
def compose_stack(compose_images, compose_env, compose_cli):
    base = Path(tempfile.mkdtemp(prefix="cullis-e2e-compose-"))
    base.chmod(0o755)
    st = ComposeStack(base, compose_env, compose_images)
    t0 = time.monotonic()
    st.deploy = st.run("playbooks/deploy.yml")
    st.deploy_seconds = time.monotonic() - t0
    try:
        if st.deploy.rc != 0:
            pytest.fail(f"compose deploy failed (rc={st.deploy.rc}):\n{_tail(st.deploy)}", pytrace=False)
        yield st
    finally:
        if (st.dir / "compose" / "compose.yml").exists():
            compose_cli(st.dir / "compose", "down", "-v", "--timeout", "5", check=False)
        shutil.rmtree(base, ignore_errors=True)


def containers(docker_engine, st):
    found = docker_engine.client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project.working_dir={st.dir / 'compose'}"})
    return {c.labels["com.docker.compose.service"]: c for c in found}


def test_deploy_renders_the_project_and_passes_the_smoke_test(compose_stack, docker_engine):
    st = compose_stack
    print(f"compose deploy: {st.deploy_seconds:.1f}s")
    project = yaml.safe_load((st.dir / "compose" / "compose.yml").read_text())
    assert set(project["services"]) == {"postgres", "redis", "vault", "broker", "nginx"}
    assert set(project["volumes"]) == {"postgres_data", "vault-data"}
    for name, svc in project["services"].items():
        assert svc["init"] is True and svc["restart"] == "unless-stopped", name
        assert svc["logging"]["options"]["max-size"] == "10m", name
        assert "healthcheck" in svc, name
        assert svc["mem_limit"], name
    assert project["services"]["broker"]["mem_limit"] == "1g" and project["services"]["broker"]["cpus"] == 2
    # no secret in the project file (they come from the .env by interpolation / env_file)
    env = dict(line.split("=", 1) for line in (st.dir / ".env").read_text().splitlines() if "=" in line)
    text = (st.dir / "compose" / "compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "ADMIN_SECRET", "VAULT_TOKEN"):
        assert env[key] and env[key] not in text, key
    running = containers(docker_engine, st)
    assert set(running) == {"postgres", "redis", "vault", "broker", "nginx"}
    for name, c in running.items():
        c.reload()
        assert c.status == "running", (name, c.status)
        assert c.attrs["HostConfig"]["Memory"] > 0, name
    volumes = {m["Name"] for c in running.values() for m in c.attrs["Mounts"] if m["Type"] == "volume"}
    assert any(v.endswith("_postgres_data") for v in volumes) and any(v.endswith("_vault-data") for v in volumes)
    assert st.get("/readyz")[0] == 200
    smoke = st.run("playbooks/smoke.yml")
    assert smoke.rc == 0, _tail(smoke)


def _broker_pid(container) -> int:
    """PID (on the host) of the broker process: the child of the container's init."""
    container.reload()
    init_pid = container.attrs["State"]["Pid"]
    children = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
    assert children, f"the broker container's init ({init_pid}) has no child"
    return int(children[0])


def test_broker_sigkill_recovered_by_broker_down(compose_stack, docker_engine):
    """Runbook section 1 (Exit 137 without OOM) on compose: the broker process killed with SIGKILL;
    the container exits 137 (its restart policy may bring it back at once) and
    playbooks/incidents/broker_down.yml ends with a serving, verified broker."""
    st = compose_stack
    broker = containers(docker_engine, st)["broker"]
    restarts_before = broker.attrs["RestartCount"]
    started_before = broker.attrs["State"]["StartedAt"]
    os.kill(_broker_pid(broker), 9)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        broker.reload()
        state = broker.attrs["State"]
        if state["Status"] != "running" or state["StartedAt"] != started_before:
            break
        time.sleep(0.2)
    state = broker.attrs["State"]
    assert state["Status"] != "running" or state["StartedAt"] != started_before, state
    assert state["Status"] != "exited" or state["ExitCode"] == 137, state
    res = st.run("playbooks/incidents/broker_down.yml")
    assert res.rc == 0, _tail(res)
    broker.reload()
    assert broker.attrs["State"]["Status"] == "running"
    assert broker.attrs["RestartCount"] > restarts_before or broker.attrs["State"]["StartedAt"] != started_before
    assert st.get("/readyz")[0] == 200

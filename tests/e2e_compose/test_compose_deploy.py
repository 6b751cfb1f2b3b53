"""`cullis_runtime: compose` end to end: playbooks/deploy.yml renders the compose project and runs it
on the test kit's real Docker engine, then the same playbooks as on the process runtime.

One stack (the session's shared `compose_stack` of conftest.py, deployed once on free ports in a
temp dir, also used by test_compose_incidents.py): deploy + smoke test, the
broker killed with SIGKILL and brought back by playbooks/incidents/broker_down.yml. (A redeploy
with changed=0 is not here yet: the second run re-creates the broker container, and the preflight
takes the stack's own containers for foreign processes on its ports; see the README.) Images: the kit's local stand-ins for the public images and
the broker image of the role's Dockerfile (testkit/docker_images.py, cached by content hash),
passed through the image variables.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import yaml


def _tail(result, n=60):
    return result.explain(n)


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

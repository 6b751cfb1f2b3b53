"""`cullis_runtime: compose` end to end: playbooks/deploy.yml renders the compose project and runs it
on the test kit's real Docker engine, then the same playbooks as on the process runtime.

The session's shared `compose_stack` (conftest.py: deployed once on free ports in a temp dir,
also used by test_compose_incidents.py and test_compose_upstream.py). Here: deploy + smoke test;
the broker killed with SIGKILL and brought back by playbooks/incidents/broker_down.yml; the broker
over its container memory limit (137, OOMKilled) and the recovery raising the limit and persisting
it; a redeploy with changed=0 that keeps the raised limit; and, moved to the very end of the
session (marker `last`, conftest.py), playbooks/down.yml (containers gone, volumes kept) and down
-e purge=true (volumes and stack directory gone). Images: the kit's local stand-ins for the public
images and the broker image of the role's Dockerfile (testkit/docker_images.py, cached by content
hash), passed through the image variables.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from testkit.docker_engine import wait_container


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


def test_broker_oom_raises_and_persists_the_memory_limit(compose_stack, docker_engine, compose_cli):
    """Runbook section 1 (Exit 137: OOM killed; "bump memory in the compose file ... docker compose
    up -d") on compose: the operator's compose file gives the broker 40 MB and keeps the project's
    restart policy (unless-stopped; upstream's prod file says always), so the container flaps: killed
    by the engine (137, OOMKilled=true), restarted, killed again. broker_down.yml classifies it as
    oom in either phase (running but not ready: service_info's oom=container_restarted), raises the
    limit to 512 MB in the compose project (through the broker role's compose path: the container
    re-created with it), persists it in the inventory's host_vars and verifies."""
    st = compose_stack
    project_dir = st.dir / "compose"
    persisted = st.inventory / "host_vars" / "localhost" / "cullis_broker_memory.yml"
    assert not persisted.exists()
    project = yaml.safe_load((project_dir / "compose.yml").read_text())
    assert project["services"]["broker"]["restart"] == "unless-stopped"
    project["services"]["broker"].update({"mem_limit": "40m", "memswap_limit": "40m"})
    (project_dir / "compose.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    compose_cli(project_dir, "up", "-d", "--no-deps", "--no-build", "broker")
    broker = containers(docker_engine, st)["broker"]
    assert broker.attrs["HostConfig"]["Memory"] == 40 * 1024 * 1024
    # flapping: killed and restarted by its policy, at least twice
    killed = wait_container(broker, lambda a: a["RestartCount"] >= 2, 240, "the broker to be restarted twice")
    assert killed["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    ooms = docker_engine.client.events(since=int(time.time()) - 600, until=int(time.time()), decode=True,
                                       filters={"container": broker.id, "event": "oom"})
    # (the engine's event stream has the first kill; a restarted task's kill is not always reported)
    assert list(ooms), "the engine recorded no OOM kill of the broker container"

    t0 = time.monotonic()
    res = st.run("playbooks/incidents/broker_down.yml")
    print(f"broker_down (OOM) on compose: {time.monotonic() - t0:.1f}s")
    assert res.rc == 0, _tail(res)
    assert "40 MB -> 512 MB" in res.output
    broker = containers(docker_engine, st)["broker"]
    broker.reload()
    assert broker.attrs["State"]["Status"] == "running"
    assert broker.attrs["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert broker.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert yaml.safe_load((project_dir / "compose.yml").read_text())["services"]["broker"]["mem_limit"] == "512m"
    # persisted in the inventory, so the next deploy keeps the raised limit (next test)
    assert yaml.safe_load(persisted.read_text()) == {"cullis_broker_memory_limit_mb": 512}
    assert st.get("/readyz")[0] == 200


def test_redeploy_reports_no_change_and_keeps_the_raised_limit(compose_stack, docker_engine):
    """A second deploy.yml on the running compose stack: the preflight counts the project's own
    containers on the stack's ports as the stack's, nothing is re-created (same container ids),
    changed=0; a memory limit raised by the OOM recovery (host_vars) stays."""
    st = compose_stack
    before = {name: c.id for name, c in containers(docker_engine, st).items()}
    t0 = time.monotonic()
    res = st.run("playbooks/deploy.yml")
    print(f"compose redeploy: {time.monotonic() - t0:.1f}s")
    assert res.rc == 0, _tail(res)
    changed = [f"{task['task']['name']}" for play in res.data.get("plays", []) for task in play.get("tasks", [])
               for r in task.get("hosts", {}).values() if r.get("changed")]
    assert res.changed == 0, changed
    after = containers(docker_engine, st)
    assert {name: c.id for name, c in after.items()} == before
    if (st.inventory / "host_vars" / "localhost" / "cullis_broker_memory.yml").exists():
        assert after["broker"].attrs["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert st.get("/readyz")[0] == 200


def _project_volumes(docker_engine, st):
    return [v.name for v in docker_engine.client.volumes.list()
            if (v.attrs.get("Labels") or {}).get("com.docker.compose.project") == st.project]


@pytest.mark.last
def test_down_then_purge(compose_stack, docker_engine):
    """playbooks/down.yml on compose: `docker compose down` (containers and network gone, the named
    volumes with the data kept); -e purge=true also removes the volumes and the stack directory.
    Runs after every other test of the session (marker `last`): the shared stack is gone after it."""
    st = compose_stack
    st.project = yaml.safe_load((st.dir / "compose" / "compose.yml").read_text())["name"]
    assert len(_project_volumes(docker_engine, st)) == 2
    res = st.run("playbooks/down.yml")
    assert res.rc == 0 and res.changed > 0, _tail(res)
    assert containers(docker_engine, st) == {}
    assert len(_project_volumes(docker_engine, st)) == 2
    again = st.run("playbooks/down.yml")
    assert again.rc == 0 and again.changed == 0, _tail(again)
    purge = st.run("playbooks/down.yml", extra_vars={"purge": True})
    assert purge.rc == 0, _tail(purge)
    assert _project_volumes(docker_engine, st) == []
    assert not st.dir.exists()

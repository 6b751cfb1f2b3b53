"""`cullis_runtime: compose` on a real Docker engine: the runtime interface and the modules on it.

The compose project here is written by the test, not rendered by the collection, in the way an
operator's own project would be (the service is called `cullis-broker`, mapped to the collection's
`broker` with `compose_services`): start/stop/restart/reload through `cullis.broker.stack_service`,
and `cullis.broker.service_info` reading the exit classes of runbook section 1 from the container
(State.ExitCode, OOMKilled, RestartCount, Health, redacted `docker logs`).
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from testkit.ansible import run_module
from testkit.docker_engine import LABEL, wait_container

ADMIN_SECRET = "compose-admin-secret-5f1e9c0d7b"
BROKER_SCRIPT = (
    "trap 'echo reloaded' HUP; trap 'echo bye; exit 0' TERM; "
    "echo \"started admin_secret=$ADMIN_SECRET\"; "
    "while :; do sleep 0.2 & wait $!; done"
)


def project_file(base_image: str, marker: str = "1") -> dict:
    labels = {LABEL: "e2e_compose"}
    logging = {"driver": "json-file", "options": {"max-size": "1m", "max-file": "2"}}
    return {
        "services": {
            "cullis-broker": {
                "image": base_image, "init": True, "restart": "no", "labels": labels, "logging": logging,
                "command": ["bash", "-c", BROKER_SCRIPT],
                "environment": {"ADMIN_SECRET": ADMIN_SECRET, "MARKER": marker},
                "stop_grace_period": "5s",
                "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "timeout": "2s", "retries": 3},
            },
            # a process over its container's memory limit (runbook section 1, exit 137)
            "oomhog": {
                "image": base_image, "init": True, "restart": "no", "labels": labels, "logging": logging,
                "mem_limit": "48m", "memswap_limit": "48m",
                "command": ["bash", "-c", "echo allocating; tail /dev/zero"],
            },
            # over its limit once, then (restarted by its policy, the marker kept in its own
            # filesystem) running: a flapping broker caught in its running phase
            "oomonce": {
                "image": base_image, "init": True, "restart": "unless-stopped", "labels": labels,
                "logging": logging, "mem_limit": "48m", "memswap_limit": "48m",
                "command": ["bash", "-c", "if [ -e /oomed ]; then echo running again; exec sleep infinity; fi; "
                                          "touch /oomed; echo allocating; tail /dev/zero"],
            },
        },
        "networks": {"default": {"labels": labels}},
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, base_image, compose_env, compose_cli, docker_engine):
    root = tmp_path_factory.mktemp("compose-rt")
    stack_dir, project_dir = root / "stack", root / "upstream"
    stack_dir.mkdir()
    project_dir.mkdir()
    (stack_dir / ".env").write_text(f"ADMIN_SECRET={ADMIN_SECRET}\n")
    (project_dir / "docker-compose.yml").write_text(yaml.safe_dump(project_file(base_image)))
    args = {"stack_dir": str(stack_dir), "runtime": "compose", "compose_project_dir": str(project_dir),
            "compose_services": {"broker": "cullis-broker"}, "docker_host": docker_engine.host}
    yield args
    compose_cli(project_dir, "down", "-v", "--timeout", "1", check=False)


@pytest.fixture(scope="module")
def run(compose_env):
    def _run(module, args, check=False, **extra):
        return run_module(module, {**args, **extra}, check=check, env=compose_env)
    return _run


def broker_container(docker_engine):
    found = docker_engine.client.containers.list(
        all=True, filters={"label": "com.docker.compose.service=cullis-broker"})
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def test_started_creates_the_container_then_reports_no_change(project, run, docker_engine):
    first = run("stack_service", project, name="broker", state="started")
    assert not first.failed, first.output
    assert first.changed and first.result["config_change"] == "added"
    assert first.result["state"] == "RUNNING" and first.result["status"]["container"].endswith("cullis-broker-1")
    again = run("stack_service", project, name="broker", state="started")
    assert not again.failed and not again.changed, again.output
    assert again.result["config_change"] is None
    info = run("service_info", project, services=["broker"])
    svc = info.result["services"]["broker"]
    assert (svc["state"], svc["exit_class"], svc["restarts"]) == ("RUNNING", "running", 0)
    assert info.result["daemon_running"] is True
    facts = run("stack_info", project)  # every service the project has a container for
    assert not facts.failed, facts.output
    assert facts.result["runtime"] == {"kind": "compose", "daemon_running": True, "error": None}
    logfile = facts.result["services"]["broker"]["logfile"]
    assert logfile.startswith("docker logs ") and logfile.endswith("cullis-broker-1"), logfile
    assert list(facts.result["services"]) == ["broker"]


def test_changed_project_config_recreates_the_container(project, run, docker_engine, base_image):
    before = broker_container(docker_engine).id
    compose_file = os.path.join(project["compose_project_dir"], "docker-compose.yml")
    with open(compose_file, "w") as f:
        yaml.safe_dump(project_file(base_image, marker="2"), f)
    plan = run("stack_service", project, check=True, name="broker", state="started")
    assert plan.changed and plan.result["config_change"] == "changed", plan.output
    assert broker_container(docker_engine).id == before  # check mode changed nothing
    res = run("stack_service", project, name="broker", state="started")
    assert res.changed and res.result["config_change"] == "changed", res.output
    after = broker_container(docker_engine)
    assert after.id != before and after.attrs["Config"]["Env"].count("MARKER=2") == 1


def test_stop_start_reload_restart_through_stack_service(project, run, docker_engine):
    stopped = run("stack_service", project, name="broker", state="stopped")
    assert stopped.changed and stopped.result["state"] == "STOPPED", stopped.output
    assert broker_container(docker_engine).attrs["State"]["ExitCode"] == 0  # its TERM trap exits 0
    assert not run("stack_service", project, name="broker", state="stopped").changed
    started = run("stack_service", project, name="broker", state="started")
    assert started.changed and started.result["state"] == "RUNNING", started.output
    reloaded = run("stack_service", project, name="broker", state="reloaded")
    assert reloaded.changed, reloaded.output
    deadline = time.monotonic() + 10
    while b"reloaded" not in broker_container(docker_engine).logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"reloaded" in broker_container(docker_engine).logs()
    pid_before = broker_container(docker_engine).attrs["State"]["Pid"]
    restarted = run("stack_service", project, name="broker", state="restarted")
    assert restarted.changed and restarted.result["state"] == "RUNNING", restarted.output
    assert restarted.result["pid"] != pid_before


def test_kill_9_is_class_killed_137_with_a_redacted_log_tail(project, run, docker_engine):
    """Runbook section 1: the broker container died of SIGKILL (exit 137) without an OOM kill."""
    pid = broker_container(docker_engine).attrs["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)  # the container's PID 1 (docker-init), as root on the host
    deadline = time.monotonic() + 15
    while broker_container(docker_engine).status != "exited" and time.monotonic() < deadline:
        time.sleep(0.2)
    info = run("service_info", project, services=["broker"], log_lines=20)
    assert not info.failed, info.output
    svc = info.result["services"]["broker"]
    assert (svc["state"], svc["exit_code"], svc["signal"], svc["shell_exit_code"]) == ("EXITED", 137, "SIGKILL", 137)
    assert (svc["exit_class"], svc["oom"]) == ("killed", None)
    assert info.result["down"] == ["broker"]
    assert any("started admin_secret=" in line for line in svc["log_tail"]), svc["log_tail"]
    assert ADMIN_SECRET not in info.output
    back = run("stack_service", project, name="broker", state="started")
    assert back.changed and back.result["state"] == "RUNNING", back.output


def test_over_the_memory_limit_is_137_oomkilled_class_oom(project, run, docker_engine):
    """Runbook section 1, Exit 137 = OOM: the engine's State.OOMKilled is the evidence."""
    res = run("stack_service", project, name="oomhog", state="started")
    if res.failed:  # it reached its limit within the start's settle time
        assert "exit code 137, OOMKilled" in res.result["msg"], res.output
    else:  # a busy machine: it was still allocating after the settle time
        assert res.changed and res.result["config_change"] == "added", res.output
    hog = docker_engine.client.containers.list(all=True, filters={"label": "com.docker.compose.service=oomhog"})[0]
    assert hog.wait(timeout=120)["StatusCode"] == 137
    info = run("service_info", project, services=["oomhog"])
    svc = info.result["services"]["oomhog"]
    assert (svc["exit_code"], svc["signal"], svc["oom"], svc["exit_class"]) == (137, "SIGKILL", "container", "oom")


def test_running_again_after_an_oom_kill_still_reports_the_oom(project, run, docker_engine, compose_cli):
    """Under a restart policy the engine starts an OOM-killed container again; service_info reports
    the recent OOM (`container_restarted`) while the exit class says it runs - the evidence
    broker_down.yml uses for a broker that flaps over its memory limit and is caught running but not
    ready. (This engine keeps State.OOMKilled while the container runs again, with FinishedAt the
    kill's time; engines that clear it are covered by the engine's oom events, unit-tested.)"""
    compose_cli(project["compose_project_dir"], "up", "-d", "--no-deps", "oomonce")
    c = docker_engine.client.containers.list(all=True, filters={"label": "com.docker.compose.service=oomonce"})[0]
    attrs = wait_container(c, lambda a: a["RestartCount"] >= 1 and a["State"]["Running"], 120,
                           "the container to run again after its OOM kill")
    state = attrs["State"]
    print(f"engine state of the restarted container: OOMKilled={state['OOMKilled']}, ExitCode={state['ExitCode']}")
    info = run("service_info", project, services=["oomonce"])
    svc = info.result["services"]["oomonce"]
    assert (svc["running"], svc["exit_class"], svc["oom"]) == (True, "running", "container_restarted"), svc
    assert svc["restarts"] >= 1, svc


def test_an_engine_that_does_not_answer_is_named(project, run, tmp_path):
    gone = {**project, "docker_host": f"unix://{tmp_path}/nothing.sock"}
    info = run("service_info", gone, services=["broker"])
    assert not info.failed, info.output
    assert info.result["daemon_running"] is False and info.result["services"]["broker"]["state"] == "ABSENT"
    res = run("stack_service", gone, name="broker", state="started")
    assert res.failed and f"unix://{tmp_path}/nothing.sock" in res.result["msg"], res.output

"""Preflight (playbooks/preflight.yml) and `deploy.yml --check` on a machine never deployed (issue 19).

No stack is deployed here: a temp inventory (inventories/local on free ports, the e2e conftest's
`write_inventory`) whose stack directory does not exist. Preflight is read-only, so every fault
is injected around it: a real process listening on the broker's port, a free-space threshold
larger than the disk, an inventory without the cullis_redis group, a public host name in the
reserved `.invalid` domain (RFC 2606: never resolves), a stack host reached over SSH on a port
where nothing listens (unreachable), and a stack host whose clock is 10 minutes ahead (its Python,
the one that runs the modules, reads the time through a `sitecustomize` that adds 600 s: the
realtime clock itself cannot be shifted for one process without root-wide effects). One run must
report all six at once.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from testkit.ansible import run_playbook
from tests.e2e.conftest import PORT_VARS, distinct_free_ports, write_inventory

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def fresh():
    """(base dir, inventory, ports) of a stack that was never deployed."""
    base = Path(tempfile.mkdtemp(prefix="cullis-e2e-fresh-"))
    ports = dict(zip(PORT_VARS, distinct_free_ports(len(PORT_VARS))))
    inventory = write_inventory(base, base / "stack", ports)
    yield base, inventory, ports
    shutil.rmtree(base, ignore_errors=True)


def _message(res) -> str:
    """The preflight verdict's message lines (json callback)."""
    for play in res.data.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"] == "Preflight found problems":
                msg = task["hosts"]["localhost"].get("msg")
                return "\n".join(msg) if isinstance(msg, list) else str(msg)
    return ""


def test_preflight_reports_every_problem_at_once_with_what_to_do(fresh):
    base, inventory, ports = fresh
    no_redis = base / "inventory-no-redis"
    shutil.copytree(inventory, no_redis)
    hosts = yaml.safe_load((no_redis / "hosts.yml").read_text())
    del hosts["all"]["children"]["cullis_stack"]["children"]["cullis_redis"]
    hosts["all"]["children"]["cullis_stack"]["children"]["cullis_postgres"]["hosts"]["localhost"][
        "cullis_preflight_min_free_mb"] = 10 ** 9  # a host var: the clock-ahead host keeps the default
    closed_port = distinct_free_ports(1)[0]
    skew = base / "skew"
    skew.mkdir(exist_ok=True)
    (skew / "sitecustomize.py").write_text("import time\n_real = time.time\ntime.time = lambda: _real() + 600\n")
    skewed_python = base / "python-clock-ahead"
    skewed_python.write_text(f'#!/bin/sh\nPYTHONPATH={skew} exec {sys.executable} "$@"\n')
    skewed_python.chmod(0o755)
    hosts["all"]["children"]["cullis_stack"]["hosts"] = {
        "unreachable-host": {"ansible_host": "127.0.0.1", "ansible_port": closed_port, "ansible_connection": "ssh",
                             "ansible_user": "root", "cullis_address": "127.0.0.1",
                             "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"},
        "clock-ahead-host": {"ansible_connection": "local", "ansible_python_interpreter": str(skewed_python),
                             "cullis_address": "127.0.0.1"},
    }
    (no_redis / "hosts.yml").write_text(yaml.safe_dump(hosts))
    port = ports["cullis_broker_port"]
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and squatter.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        assert squatter.poll() is None, "the squatter process could not bind the broker port"
        res = run_playbook("playbooks/preflight.yml", inventory=no_redis, extra_vars={
            "cullis_broker_public_url": f"https://cullis-preflight.invalid:{ports['cullis_nginx_port']}"})
    finally:
        squatter.terminate()
        squatter.wait(timeout=10)
    assert res.rc != 0
    msg = _message(res)
    assert "Preflight found 6 problem(s)" in msg, res.output[-3000:]
    assert "group cullis_redis has no host" in msg and "add one under cullis_redis" in msg
    assert f"port {port} (broker) is already in use by process {squatter.pid}" in msg
    assert "Stop that process or set cullis_broker_port to a free port" in msg
    assert "MB needed (cullis_preflight_min_free_mb)" in msg and "move cullis_stack_dir" in msg
    assert "cullis-preflight.invalid of cullis_broker_public_url does not resolve" in msg
    assert "unreachable-host: unreachable (" in msg and "Check the address, SSH access" in msg
    assert "clock-ahead-host: clock is " in msg and " s ahead of the controller (max 30.0 s)" in msg
    assert "Run NTP" in msg
    assert not (base / "stack").exists(), "preflight must change nothing"


def test_deploy_check_on_a_machine_never_deployed_shows_the_plan_and_changes_nothing(fresh):
    base, inventory, ports = fresh
    res = run_playbook("playbooks/deploy.yml", inventory=inventory, check=True)
    assert res.rc == 0, res.output[-3000:]
    assert res.failed == 0
    assert not (base / "stack").exists(), "check mode created the stack directory"
    plan = res.task_results("Plan of the first deploy (check mode, host never deployed)")
    assert plan, "no plan shown"
    text = "\n".join(plan[0]["msg"])
    for what in (f"PostgreSQL 15 on 127.0.0.1:{ports['cullis_postgres_port']}",
                 f"Redis on 127.0.0.1:{ports['cullis_redis_port']}",
                 f"OpenBao on 127.0.0.1:{ports['cullis_vault_port']}",
                 f"broker from {Path(__file__).resolve().parents[2] / 'broker_src'}",
                 f"nginx on 127.0.0.1:{ports['cullis_nginx_port']} (TLS mode selfsigned)"):
        assert what in text, (what, text)
    passed = res.task_results("Preflight passed")
    assert passed and "Preflight passed on 1 host(s)" in passed[0]["msg"]

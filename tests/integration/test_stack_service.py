"""cullis.broker.stack_service against a real supervisord (the `process` runtime), no stack needed.

A throw-away stack dir gets the supervisor role's layout (rendered here by hand: main config +
one program) and a program that ignores SIGTERM like the real broker (broker-api.md section 1
"Signals"; runbook section 1 "Broker is down" restarts it through the runtime).
"""
from __future__ import annotations

import sys
import textwrap
import time

import pytest

from testkit.ansible import run_module

pytestmark = pytest.mark.slow

IGNORES_TERM = ("import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "signal.signal(signal.SIGHUP, lambda *a: print('HUP', flush=True)); "
                "print('up', flush=True); [time.sleep(0.2) for _ in iter(int, 1)]")


def _write_layout(stack_dir, grace=1, marker="v1"):
    sup = stack_dir / "supervisor"
    (sup / "conf.d").mkdir(parents=True, exist_ok=True)
    (stack_dir / "logs").mkdir(exist_ok=True)
    (sup / "supervisord.conf").write_text(textwrap.dedent(f"""\
        [unix_http_server]
        file = {sup}/supervisor.sock
        chmod = 0700
        [supervisord]
        logfile = {stack_dir}/logs/supervisord.log
        pidfile = {sup}/supervisord.pid
        directory = {sup}
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [include]
        files = {sup}/conf.d/*.conf
        """))
    (sup / "conf.d" / "app.conf").write_text(textwrap.dedent(f"""\
        [program:app]
        command = {sys.executable} -c "{IGNORES_TERM}"
        environment = MARKER="{marker}"
        autostart = false
        autorestart = false
        startsecs = 1
        stopsignal = TERM
        stopwaitsecs = {grace}
        stopasgroup = true
        killasgroup = true
        redirect_stderr = true
        stdout_logfile = {stack_dir}/logs/app.log
        """))


@pytest.fixture()
def stack_dir(tmp_path):
    _write_layout(tmp_path)
    yield tmp_path
    pidfile = tmp_path / "supervisor" / "supervisord.pid"
    if pidfile.exists():  # stop what the test started, by PID
        res = run_module("stack_service", {"name": "all", "state": "stopped", "stack_dir": str(tmp_path)})
        assert not res.failed, res.output


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (our parent may not be an init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def svc(stack_dir, state, name="app", check=False):
    res = run_module("stack_service", {"name": name, "state": state, "stack_dir": str(stack_dir)}, check=check)
    assert not res.failed, res.output
    return res


def test_lifecycle_is_idempotent_and_truthful(stack_dir):
    """started/stopped report changed only when they act; check mode predicts without acting."""
    planned = svc(stack_dir, "started", check=True)
    assert planned.changed and not (stack_dir / "supervisor" / "supervisord.pid").exists()

    first = svc(stack_dir, "started")
    assert first.changed and first.result["state"] == "RUNNING" and first.result["pid"]
    again = svc(stack_dir, "started")
    assert not again.changed and again.result["pid"] == first.result["pid"]
    assert not svc(stack_dir, "started", check=True).changed

    restarted = svc(stack_dir, "restarted")
    assert restarted.changed and restarted.result["pid"] != first.result["pid"]

    assert svc(stack_dir, "stopped", check=True).changed
    assert svc(stack_dir, "started").result["state"] == "RUNNING"  # check mode did not stop it


def test_stop_kills_a_service_that_ignores_sigterm_after_the_grace(stack_dir):
    """The broker ignores SIGTERM: stop = SIGTERM, grace (stopwaitsecs), then SIGKILL."""
    pid = svc(stack_dir, "started").result["pid"]
    t0 = time.monotonic()
    stopped = svc(stack_dir, "stopped")
    assert stopped.changed and stopped.result["state"] == "STOPPED" and stopped.result["pid"] is None
    assert time.monotonic() - t0 >= 1  # it waited for the grace period
    assert gone(pid)
    assert not svc(stack_dir, "stopped").changed


def test_reload_sends_sighup_without_restart(stack_dir):
    pid = svc(stack_dir, "started").result["pid"]
    reloaded = svc(stack_dir, "reloaded")
    assert reloaded.changed and reloaded.result["pid"] == pid
    log = stack_dir / "logs" / "app.log"
    deadline = time.monotonic() + 10
    while "HUP" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "HUP" in log.read_text()


def test_changed_program_config_restarts_the_running_service(stack_dir):
    pid = svc(stack_dir, "started").result["pid"]
    _write_layout(stack_dir, marker="v2")
    planned = svc(stack_dir, "started", check=True)
    assert planned.changed and planned.result["config_change"] == "changed"
    assert planned.result["pid"] == pid  # check mode did not act
    applied = svc(stack_dir, "started")
    assert applied.changed and applied.result["config_change"] == "changed"
    assert applied.result["pid"] != pid
    assert open(f"/proc/{applied.result['pid']}/environ", "rb").read().count(b"MARKER=v2") == 1


def test_all_stopped_shuts_supervisord_down(stack_dir):
    svc(stack_dir, "started")
    daemon = int((stack_dir / "supervisor" / "supervisord.pid").read_text())
    res = svc(stack_dir, "stopped", name="all")
    assert res.changed
    assert gone(daemon)
    assert not svc(stack_dir, "stopped", name="all").changed


def test_unknown_service_fails_with_a_clear_message(stack_dir):
    svc(stack_dir, "started")
    res = run_module("stack_service", {"name": "nope", "state": "started", "stack_dir": str(stack_dir)})
    assert res.failed and "not configured" in res.result["msg"]


def test_stop_runs_in_the_background_with_async(stack_dir, tmp_path_factory):
    """The rolling restart (roles/broker/tasks/drain_restart.yml) stops the broker with async/poll 0
    and watches its drain meanwhile: the module's action plugin must accept async, and the job must
    really stop the service (async_status reports it finished, the process is gone)."""
    import yaml

    from testkit.ansible import run_playbook

    pid = svc(stack_dir, "started").result["pid"]
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable},
             "tasks": [
                 {"name": "stop in the background",
                  "cullis.broker.stack_service": {"name": "app", "state": "stopped", "stack_dir": str(stack_dir)},
                  "async": 60, "poll": 0, "register": "stopping"},
                 {"name": "the stop completes", "ansible.builtin.async_status": {"jid": "{{ stopping.ansible_job_id }}"},
                  "register": "stopped", "until": "stopped.finished", "retries": 30, "delay": 1}]}]
    work = tmp_path_factory.mktemp("async")
    (work / "hosts").write_text("localhost ansible_connection=local\n")
    (work / "play.yml").write_text(yaml.safe_dump(play))
    res = run_playbook(work / "play.yml", inventory=work / "hosts")
    assert res.rc == 0, res.explain()
    done = res.task_results("the stop completes")
    assert done and done[0]["changed"] and done[0]["state"] == "STOPPED", done
    assert gone(pid)

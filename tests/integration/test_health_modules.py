"""Integration tests of the health modules against real processes (no mocks).

- redis_ping against a real redis-server (runbook section 4: confirm Redis and its password).
- broker_health against a real broker process (runbook sections 1 and 8: /health, /readyz).
- service_info against real supervisord-managed processes (runbook section 1: exit class).
"""
from __future__ import annotations

from testkit.ansible import REPO, run_module
from testkit.services import RedisServer


def _write_env(path, **values):
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def test_redis_ping_ok_with_env_password(redis_server, tmp_path):
    env = _write_env(tmp_path / ".env", REDIS_URL=redis_server.url, REDIS_PASSWORD=redis_server.password)
    r = run_module("redis_ping", {"env_file": str(env)}, verbosity=3)
    assert r.result["state"] == "ok", r.output
    assert r.result["pong"] is True
    assert r.result["port"] == redis_server.port
    assert r.result["password_source"] == "REDIS_URL"
    assert not r.changed
    assert redis_server.password not in r.output


def test_redis_ping_wrong_password_is_classified(redis_server, tmp_path):
    bad = "not-the-redis-password-" + "x" * 8
    env = _write_env(tmp_path / ".env", REDIS_URL=f"redis://:{bad}@127.0.0.1:{redis_server.port}/0")
    r = run_module("redis_ping", {"env_file": str(env)}, verbosity=3)
    assert r.result["state"] == "wrong_password", r.output
    assert r.result["pong"] is False
    assert bad not in r.output
    assert redis_server.password not in r.output


def test_redis_ping_down_and_no_password(tmp_path):
    server = RedisServer().start()
    try:
        r = run_module("redis_ping", {"port": server.port})
        assert r.result["state"] == "no_password_configured", r.output
        r = run_module("redis_ping", {"port": server.port, "password": server.password}, check=True)
        assert r.result["state"] == "ok", r.output
    finally:
        server.cleanup()
    r = run_module("redis_ping", {"port": server.port, "password": server.password})
    assert r.result["state"] == "down", r.output
    assert not r.failed


# ---- broker_health against a real broker -------------------------------------------------------

def test_broker_health_healthy_broker(broker):
    """Runbook section 1, Verify: /health 200, /readyz 200 with database, redis and kms ok."""
    r = run_module("broker_health", {"broker_url": broker.url, "admin_secret": broker.admin_secret}, verbosity=3)
    assert not r.failed and not r.changed, r.output
    res = r.result
    assert res["healthy"] and res["ready"] and res["reachable"], res["problems"]
    assert res["health"]["status"] == 200 and res["readyz"]["status"] == 200
    assert {k: v["state"] for k, v in res["components"].items()} == {"database": "ok", "redis": "ok", "kms": "ok"}
    assert res["health"]["latency_ms"] > 0
    assert res["admin"] == {"status": 200, "state": "ok", "detail": None}
    assert res["tls"]["scheme"] == "http" and res["tls"]["verified"] is None
    assert broker.admin_secret not in r.output


def test_broker_health_wrong_admin_secret_and_unreachable(broker):
    """Runbook section 7, Symptoms: /v1/admin calls answer 403 with a wrong x-admin-secret."""
    wrong = "definitely-not-the-admin-secret"
    r = run_module("broker_health", {"broker_url": broker.url, "admin_secret": wrong})
    assert r.result["admin"]["state"] == "rejected" and r.result["admin"]["status"] == 403
    assert not r.result["healthy"] and r.result["ready"]
    assert wrong not in r.output
    from testkit.process import free_port
    r = run_module("broker_health", {"broker_url": f"http://127.0.0.1:{free_port()}", "timeout": 2}, check=True)
    assert not r.failed
    assert r.result["reachable"] is False and r.result["healthy"] is False
    assert r.result["components"]["database"]["state"] == "unchecked"
    assert "unreachable" in r.result["problems"][0]


def test_broker_health_redis_not_configured_is_degraded(pg_server, bao_server):
    """Runbook section 4 / contract 6.9: a broker started without Redis reports ready but degraded."""
    from testkit.broker import BrokerProcess
    b = BrokerProcess(pg_server, None, bao_server)
    try:
        r = run_module("broker_health", {"broker_url": b.url})
        res = r.result
        assert res["ready"] is True, res
        assert res["components"]["redis"]["state"] == "not_configured"
        assert res["degraded"] == ["redis not_configured"]
        assert res["healthy"] is False
    finally:
        b.cleanup()


def test_broker_health_tls_verification(test_ca, tmp_path):
    """TLS verification result: trusted CA verifies; an unknown CA fails verification but health is still read."""
    from testkit.pki import CA
    from testkit.tls_server import TLSServers
    test_ca.write(tmp_path, "ca")
    other = CA.create("Some Other CA")
    other.write(tmp_path, "other")
    with TLSServers(workers=2) as servers:
        port = servers.serve_issued(test_ca.server_cert("127.0.0.1"))
        url = f"https://127.0.0.1:{port}"
        ok = run_module("broker_health", {"broker_url": url, "ca_path": str(tmp_path / "ca.pem")}).result
        assert ok["tls"] == {"scheme": "https", "verified": True, "error": None}
        assert ok["health"]["status"] == 200
        bad = run_module("broker_health", {"broker_url": url, "ca_path": str(tmp_path / "other.pem")}).result
        assert bad["tls"]["verified"] is False and "TLS error" in bad["tls"]["error"]
        assert bad["health"]["status"] == 200
        assert not bad["healthy"] and any("TLS verification failed" in p for p in bad["problems"])


# ---- service_info against real processes under a real supervisord ---------------------------

import os
import signal
import sys
import textwrap
import time

import pytest

from testkit.process import wait_for

SECRET_IN_LOG = "s3cr3t-redis-pw-in-a-log-line"

PROGRAMS = {
    # a healthy long-running service that prints a secret-bearing URL (must come back redacted)
    "steady": f"print('connecting to redis://:{SECRET_IN_LOG}@127.0.0.1:6379/0', flush=True)\n"
              "import time\nwhile True: time.sleep(1)\n",
    # uvicorn-like startup failure: exit 3 after the LIFESPAN marker
    "startfail": textwrap.dedent("""\
        import sys
        print('INFO:     Started server process', flush=True)
        print('INFO:     Waiting for application startup.', flush=True)
        print('LIFESPAN: validate_config', flush=True)
        print('LIFESPAN: init_db', flush=True)
        print('asyncpg.exceptions.InvalidPasswordError: password authentication failed for user "atn"', flush=True)
        print('LIFESPAN FAILED: InvalidPasswordError: password authentication failed for user "atn"', flush=True)
        sys.exit(3)
        """),
    # exceeds its RLIMIT_AS memory limit: MemoryError traceback, exit 1
    "memhog": textwrap.dedent("""\
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (200 * 1024 * 1024, 200 * 1024 * 1024))
        print('INFO:     Started server process', flush=True)
        blob = bytearray(400 * 1024 * 1024)
        """),
    # uncaught exception: exit 1 with a traceback
    "crasher": "print('INFO:     Started server process', flush=True)\nraise KeyError('no such setting')\n",
    # run through the broker role's launcher with a 64 MB memory cgroup, then touches 400 MB:
    # the kernel OOM-kills it (SIGKILL), like a container over its memory limit
    "oomer": "print('INFO:     Started server process', flush=True)\n"
             "blob = bytearray(400 * 1024 * 1024)\nimport time\ntime.sleep(30)\n",
}
LAUNCHER = REPO / "collections/ansible_collections/cullis/broker/roles/broker/files/cullis-broker-launch.py"


@pytest.fixture(scope="module")
def mini_stack(tmp_path_factory):
    """A stack dir laid out like the supervisor role's, with four real programs under supervisord."""
    sys.path.insert(0, str(REPO / "collections"))
    from ansible_collections.cullis.broker.plugins.module_utils._runtime import ProcessRuntime

    stack = tmp_path_factory.mktemp("svcstack")
    sup, confd, logs, progs = stack / "supervisor", stack / "supervisor" / "conf.d", stack / "logs", stack / "progs"
    for d in (confd, logs, progs):
        d.mkdir(parents=True)
    (stack / ".env").write_text(f"REDIS_PASSWORD={SECRET_IN_LOG}\n")
    (sup / "supervisord.conf").write_text(textwrap.dedent(f"""\
        [unix_http_server]
        file={sup}/supervisor.sock
        chmod=0700
        [supervisord]
        pidfile={sup}/supervisord.pid
        logfile={sup}/supervisord.log
        directory={stack}
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [include]
        files = {confd}/*.conf
        """))
    (stack / "run").mkdir()
    cgroup_name = f"cullis-test-oomer-{os.getpid()}"
    for name, code in PROGRAMS.items():
        (progs / f"{name}.py").write_text(code)
        command = f"{sys.executable} {progs}/{name}.py"
        if name == "oomer":
            command = (f"{sys.executable} {LAUNCHER} --env-file {stack}/.env --memory-limit-mb 64 "
                       f"--cgroup-name {cgroup_name} --state-file {stack}/run/oomer.cgroup -- {command}")
        (confd / f"{name}.conf").write_text(textwrap.dedent(f"""\
            [program:{name}]
            command={command}
            autostart={'true' if name == 'steady' else 'false'}
            autorestart=false
            startsecs=0
            startretries=0
            redirect_stderr=true
            stdout_logfile={logs}/{name}.log
            """))
    rt = ProcessRuntime(str(stack), timeout=30)
    rt.ensure_daemon()
    try:
        wait_for(lambda: rt.status("steady")["running"], 20, "steady program")
        failing = ("startfail", "memhog", "crasher", "oomer")
        for name in failing:
            rt._call("supervisor.startProcess", name, False)
        wait_for(lambda: all(rt.status(n)["state"] in ("EXITED", "FATAL") for n in failing), 60,
                 "failing programs to exit")
        yield stack, rt
    finally:
        rt.shutdown()
        cgroup_file = stack / "run" / "oomer.cgroup"
        if cgroup_file.exists():
            try:
                os.rmdir(cgroup_file.read_text().strip())
            except OSError:
                pass


def _info(stack, **kw):
    r = run_module("service_info", dict(stack_dir=str(stack), **kw), verbosity=3)
    assert not r.failed, r.output
    return r


def test_service_info_running_service_redacted(mini_stack):
    """Runbook section 1, Confirm: state, pid, uptime and logs of a running service, secrets redacted."""
    stack, rt = mini_stack
    r = _info(stack, services=["steady"], log_lines=10)
    s = r.result["services"]["steady"]
    assert s["running"] and s["exit_class"] == "running"
    assert s["pid"] == rt.status("steady")["pid"]
    assert s["uptime"] >= 0
    assert any("redis://:********@127.0.0.1" in line for line in s["log_tail"])
    assert SECRET_IN_LOG not in r.output
    assert not r.changed


def test_service_info_exit_classes(mini_stack):
    """Runbook section 1, Recover 1-3: exit 3 startup failure, memory limit exceeded, exit 1 traceback."""
    stack, _ = mini_stack
    r = _info(stack, services=["startfail", "memhog", "crasher"])
    s = r.result["services"]
    assert s["startfail"]["exit_code"] == 3
    assert s["startfail"]["exit_class"] == "startup_failure"
    assert s["startfail"]["startup_error"].startswith("LIFESPAN FAILED: InvalidPasswordError")
    assert s["startfail"]["startup_error_cause"] == "postgres"
    assert s["memhog"]["exit_class"] == "oom" and s["memhog"]["oom"] == "memory_error"
    assert s["crasher"]["exit_code"] == 1 and s["crasher"]["exit_class"] == "crash"
    assert s["crasher"]["traceback"][-1].startswith("KeyError")
    assert sorted(r.result["down"]) == ["crasher", "memhog", "startfail"]


def test_service_info_cgroup_oom_kill_is_oom_not_plain_sigkill(mini_stack):
    """Runbook section 1, Recover 2 (Exit 137 = OOM): a memory-cgroup OOM kill is told apart from SIGKILL."""
    stack, _ = mini_stack
    s = _info(stack, services=["oomer"]).result["services"]["oomer"]
    if not (stack / "run" / "oomer.cgroup").exists():
        # the launcher fell back to RLIMIT_AS: its MemoryError is what test_service_info_exit_classes
        # proves with memhog; the cgroup OOM kill this test is about cannot happen here
        assert s["exit_class"] == "oom" and s["oom"] == "memory_error", s
        pytest.skip("no writable memory cgroup on this machine (the launcher fell back to RLIMIT_AS): "
                    "the cgroup OOM kill is not exercised")
    assert s["signal"] == "SIGKILL" and s["shell_exit_code"] == 137, s
    assert s["exit_class"] == "oom", s
    assert s["oom"] in ("kernel_oom_kill", "cgroup")
    assert s["cgroup_oom_kills"] >= 1


def test_service_info_sigkill_and_restart_count(mini_stack):
    """Runbook section 1, Recover 2: a SIGKILL is 137 and not OOM without evidence; restarts counted."""
    stack, rt = mini_stack
    before = _info(stack, services=["steady"]).result["services"]["steady"]["restarts"]
    pid = rt.status("steady")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not rt.status("steady")["running"], 20, "steady to die")
    s = _info(stack, services=["steady"]).result["services"]["steady"]
    assert s["signal"] == "SIGKILL" and s["shell_exit_code"] == 137
    assert s["exit_class"] == "killed" and s["oom"] is None
    rt.start("steady")
    s = _info(stack, services=["steady"]).result["services"]["steady"]
    assert s["running"] and s["restarts"] == before + 1

"""playbooks/rolling_restart.yml under load, on this machine: two real brokers (broker_src on the
session's Postgres, Redis, OpenBao), each under the supervisord of its own "host" (a stack dir of
its own, local connection), behind a real nginx rendered by the nginx role on a third. The load
(testkit/loadgen.py: agent logins with DPoP and authenticated calls through nginx) sees 0 failed
requests while both brokers are drained and restarted one at a time; a restart playbook always
restarts, so each host's changed count is stated exactly. Everything binds 127.0.0.1 on free ports;
the supervisords are stopped by PID.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO, run_playbook
from testkit.broker import BROKER_SRC, BrokerProcess, _uvicorn
from testkit.broker_orgs import new_org_id, onboard_org, wait_for_rate_budget
from testkit.loadgen import LoadGen
from testkit.process import free_port

pytestmark = [pytest.mark.slow]
# what testkit's BrokerProcess sets for a broker (the rest of its environment is this process's)
BROKER_ENV = ("DATABASE_URL", "REDIS_URL", "KMS_BACKEND", "VAULT_ADDR", "VAULT_TOKEN", "VAULT_CA_CERT", "SSL_CERT_FILE",
              "ADMIN_SECRET", "DASHBOARD_SIGNING_KEY", "OTEL_ENABLED", "POLICY_DEFAULT_DECISION", "LOG_FORMAT",
              "RATE_LIMIT_AUTH_PER_MINUTE")

SETUP = """\
- hosts: cullis_broker
  gather_facts: false
  tasks:
    - ansible.builtin.file: {path: "{{ cullis_stack_dir }}/logs", state: directory, mode: "0755"}
    - ansible.builtin.include_role: {name: cullis.broker.supervisor}
    - ansible.builtin.include_role: {name: cullis.broker.supervisor, tasks_from: program}
      vars:
        cullis_program: {name: broker, command: "{{ uvicorn }} app.main:app --host 127.0.0.1 --port
                           {{ cullis_broker_port }} --workers 1 --proxy-headers --forwarded-allow-ips 127.0.0.1",
                         directory: "{{ broker_src }}", environment: "{{ broker_env }}", stopsignal: TERM,
                         stopwaitsecs: "{{ cullis_broker_stop_grace }}", startsecs: 3}
    - ansible.builtin.uri: {url: "http://127.0.0.1:{{ cullis_broker_port }}/readyz"}
      register: ready
      until: ready.status == 200
      retries: 60
      delay: 1
- hosts: cullis_proxy
  gather_facts: false
  tasks:
    - ansible.builtin.file: {path: "{{ cullis_stack_dir }}/logs", state: directory, mode: "0755"}
    - ansible.builtin.include_role: {name: cullis.broker.supervisor}
    - ansible.builtin.include_role: {name: cullis.broker.nginx}
"""


def supervisor_pid(stack_dir: Path, program: str | None = None) -> int:
    if program is None:
        return int((stack_dir / "supervisor" / "supervisord.pid").read_text())
    out = subprocess.run(["supervisorctl", "-c", str(stack_dir / "supervisor" / "supervisord.conf"), "pid", program],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0


@pytest.fixture
def two_brokers_behind_nginx(pg_server, redis_server, bao_server, test_ca, broker, tmp_path):
    nginx_port = free_port()
    public_url = f"https://127.0.0.1:{nginx_port}"
    cert = test_ca.server_cert("127.0.0.1").write(tmp_path, "nginx")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(test_ca.cert_pem)
    env = dict(BrokerProcess(pg_server, redis_server, bao_server, start=False,
                             env_overrides={"RATE_LIMIT_AUTH_PER_MINUTE": "1000"}).env)
    env = {k: env[k] for k in BROKER_ENV}
    env.update({"BROKER_PUBLIC_URL": public_url, "PATH": os.environ["PATH"]})
    dirs = {h: tmp_path / h for h in ("b1", "b2", "px")}
    inv = {"all": {"vars": {
        "ansible_connection": "local", "ansible_python_interpreter": str(Path(os.sys.executable)),
        "cullis_runtime": "process", "cullis_install_packages": False, "cullis_address": "127.0.0.1",
        "cullis_broker_public_url": public_url, "cullis_nginx_port": nginx_port,
        "cullis_nginx_http_port": free_port(), "cullis_tls_nginx_cert_path": str(cert[0]),
        "cullis_tls_nginx_key_path": str(cert[1]), "cullis_tls_public_ca_path": str(ca_path),
        "cullis_broker_stop_grace": 5, "uvicorn": _uvicorn(), "broker_src": str(BROKER_SRC), "broker_env": env},
        "children": {"cullis_stack": {"children": {
            "cullis_broker": {"hosts": {"b1": {"cullis_stack_dir": str(dirs["b1"]), "cullis_broker_port": free_port()},
                                        "b2": {"cullis_stack_dir": str(dirs["b2"]), "cullis_broker_port": free_port()}}},
            "cullis_proxy": {"hosts": {"px": {"cullis_stack_dir": str(dirs["px"]), "cullis_broker_port": 0}}}}}}}}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(inv))
    (tmp_path / "setup.yml").write_text(SETUP)
    try:
        res = run_playbook(tmp_path / "setup.yml", inventory=inventory)
        assert res.rc == 0, res.output[-4000:]
        ids = tmp_path / "ids"
        onboard_org(broker, new_org_id("it-rolling"), ids, 2, redis_server)
        yield dict(inventory=inventory, url=public_url, ca=str(ca_path), ids=ids, dirs=dirs, redis=redis_server)
    finally:
        for d in dirs.values():
            pidfile = d / "supervisor" / "supervisord.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.5)


def test_rolling_restart_of_two_brokers_under_load_fails_no_request(two_brokers_behind_nginx):
    env = two_brokers_behind_nginx
    pids = {h: supervisor_pid(env["dirs"][h], "broker") for h in ("b1", "b2")}
    assert all(pids.values()), pids
    # federation.agents allows 60 calls per minute per client address (not raised here): 0.5/s
    wait_for_rate_budget(env["redis"], {"federation.agents": (60, 55)})
    gen = LoadGen(env["url"], env["ids"], ["a00", "a01"], env["ca"], calls=55, logins=20, duration=110).start()
    time.sleep(3)
    res = run_playbook(REPO / "playbooks" / "rolling_restart.yml", inventory=env["inventory"])
    time.sleep(3)
    gen.stop()
    report = gen.join()
    print(f"rolling restart (local, two real brokers): {report.summary()}")
    assert res.rc == 0, res.output[-4000:]
    # the load ran through the whole restart: at least one request every 2 s of it (the generator is
    # stopped when the playbook ends, so its count follows the playbook's time, not a fixed number)
    assert report.failed == 0 and report.sent >= report.seconds / 2 and report.logins >= 2, report.summary()
    for h in ("b1", "b2"):
        assert supervisor_pid(env["dirs"][h], "broker") not in (0, pids[h]), f"the broker of {h} was not restarted"
        assert res.host_stats(h)["changed"] == 3, res.stats  # stop (started, completed) and start
    assert res.host_stats("px")["changed"] == 8, res.stats  # per broker: out and back, each render + reload

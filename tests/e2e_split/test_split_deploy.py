"""Issue 11: deploy onto six bare hosts over SSH, smoke; the controller runs no stack service; each
host holds only what its service needs; the unseal keys stay on the controller. (The rerun with
changed=0 is test_split_operations.py's last test: after every incident and the restore.)
"""
from __future__ import annotations

import json

import pytest

from testkit.testbed_fixtures import SPLIT_VAULT_MEMBERS, SPLIT_VAULT_NODES

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"  # = conftest.STACK_DIR (cullis_stack_dir on every host)

SERVICE_HOSTS = {"postgres": "postgres", "redis": "redis", "vault": "vault", "broker": "broker1", "nginx": "proxy"}
# With a raft of several Vault members each broker host also runs the Vault balancer (role vault,
# tasks/balancer.yml: the broker's VAULT_ADDR is HAProxy on 127.0.0.1 in front of the members).
HOST_PROGRAMS = {host: {service} for service, host in SERVICE_HOSTS.items()}
if SPLIT_VAULT_NODES > 1:
    HOST_PROGRAMS["broker1"] = {"broker", "vault-balancer"}
# The raft's other members share the database and cache hosts (testkit/testbed_fixtures.py).
for _host in SPLIT_VAULT_MEMBERS[1:]:
    HOST_PROGRAMS[_host] = HOST_PROGRAMS[_host] | {"vault"}


def test_deploy_installs_the_stack_onto_bare_hosts(split_stack):
    # before: nothing of the stack on any host
    for host, found in split_stack.before.items():
        assert not any(found.values()), f"{host} was not bare: {found}"
    res = split_stack.deploy_result
    assert res.rc == 0 and res.failed == 0 and res.changed > 0
    bed = split_stack.bed
    assert bed.exec("postgres", ["test", "-x", "/usr/lib/postgresql/15/bin/postgres"]).rc == 0
    assert bed.exec("redis", ["test", "-x", "/usr/bin/redis-server"]).rc == 0
    assert bed.exec("proxy", ["test", "-x", "/usr/sbin/nginx"]).rc == 0
    assert bed.exec("vault", ["test", "-x", "/opt/cullis/openbao/bin/bao"]).rc == 0
    for broker in ("broker1", "broker2"):
        assert bed.exec(broker, ["test", "-x", f"{STACK_DIR}/broker/venv/bin/uvicorn"]).rc == 0
    # only what each host's service needs: no redis on the db host, no postgres on the brokers ...
    assert bed.exec("postgres", ["test", "-e", "/usr/bin/redis-server"]).rc != 0
    assert bed.exec("broker1", ["test", "-e", "/usr/lib/postgresql/15/bin/postgres"]).rc != 0


def test_each_host_runs_its_own_service(split_stack):
    for service, host in SERVICE_HOSTS.items():
        out = split_stack.sh(host, f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf status")
        lines = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}
        assert set(lines.values()) == {"RUNNING"}, (host, out)
        assert set(lines) == HOST_PROGRAMS[host], f"{host} runs other than {HOST_PROGRAMS[host]}: {out}"
    out = split_stack.sh("broker2", f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf status")
    assert "broker" in out and "RUNNING" in out, out
    conf = split_stack.bed.read_file("proxy", f"{STACK_DIR}/nginx/nginx.conf")
    port = split_stack.ports["cullis_broker_port"]
    # every broker is an upstream, with passive health (a dead one is skipped without a failed request)
    for broker in ("broker1", "broker2"):
        assert f"server {broker}:{port} max_fails=1 fail_timeout=10s;" in conf, conf
    assert "hash $remote_addr consistent;" in conf  # one client, one broker (per-process DPoP nonces)


def test_secrets_stay_where_they_belong(split_stack):
    full = split_stack.env_of("broker1")
    for key in ("ADMIN_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "VAULT_TOKEN", "DATABASE_URL", "REDIS_URL"):
        assert full.get(key), key
    assert full["DATABASE_URL"].endswith(f"@postgres:{split_stack.ports['cullis_postgres_port']}/agent_trust")
    assert split_stack.env_of("broker2") == full
    # a Vault member's host also gets the Vault's address (cullis_env_keys_by_group), nothing more
    member = {"VAULT_ADDR"}
    assert set(split_stack.env_of("postgres")) == {"POSTGRES_PASSWORD"} | (member if "postgres" in SPLIT_VAULT_MEMBERS else set())
    assert set(split_stack.env_of("redis")) == {"REDIS_PASSWORD"} | (member if "redis" in SPLIT_VAULT_MEMBERS else set())
    assert "ADMIN_SECRET" not in split_stack.env_of("vault") and "ADMIN_SECRET" not in split_stack.env_of("proxy")
    # the unseal keys: on the controller (0600), on no stack host
    keys_file = split_stack.controller_dir / "vault-keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    keys = json.loads(keys_file.read_text())
    for host in split_stack.bed.hosts:
        found = split_stack.sh(host, f"grep -rl {keys['unseal_keys_b64'][0]} {STACK_DIR} /root /tmp 2>/dev/null")
        assert found.strip() == "", f"an unseal key is on {host}: {found}"
    # the CA key stays on the proxy host that issued the certificates
    for host in ("postgres", "redis", "vault", "broker1", "broker2"):
        assert split_stack.bed.exec(host, ["test", "-e", f"{STACK_DIR}/tls/ca-key.pem"]).rc != 0, host
    for member in SPLIT_VAULT_MEMBERS:
        assert split_stack.bed.exec(member, ["test", "-s", f"{STACK_DIR}/tls/vault-key.pem"]).rc == 0, member
    assert split_stack.bed.exec("broker1", ["test", "-e", f"{STACK_DIR}/tls/vault-key.pem"]).rc != 0


def test_smoke_passes_from_the_controller(split_stack):
    res = split_stack.run("playbooks/smoke.yml")
    assert res.rc == 0, res.explain()


def test_no_stack_service_listens_on_the_controller(split_stack, docker_engine):
    from testkit.testbed import stack_listeners_on_controller

    assert stack_listeners_on_controller(split_stack.ports.values(), engine=docker_engine) == {}

"""Issue 18 (part 1): Vault/OpenBao as a raft cluster of three on the split topology.

With CULLIS_SPLIT_VAULT_NODES=3 the session's split topology (conftest `split_stack`) has three Vault
hosts in cullis_vault: `vault` (the first member: initialised once by the deploy, the brokers'
VAULT_ADDR) and `vault2`, `vault3` (retry_join over TLS with the stack CA, joined when the deploy
unsealed them with the keys file read ON THE CONTROLLER). Runbook section 3 "Vault sealed or unreachable" on a cluster:

- one member's process killed (it stays down: supervisord does not restart it), then another member
  sealed (its process restarted: it comes back sealed, as after a reboot). One at a time: two of
  three out at once is a lost quorum, not a one-node fault.
- During each fault a poller records every non-200 /readyz through the proxy and every failed read
  of the broker's Vault secret through the brokers' VAULT_ADDR with the broker's own token: both must
  stay at zero (a cluster that keeps its quorum serves on; /readyz alone would hide an outage, since
  the broker caches its keys after warm-up).
- vault_sealed.yml starts/unseals only the faulty node, touches no other Vault process and restarts
  no broker (an active node stayed); its rerun reports changed=0.

Fault injection goes through the containers (docker exec); every test leaves the topology healthy.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest

from testkit.testbed_fixtures import SPLIT_VAULT_NODES
from tests.e2e_split.test_split_incidents import assert_no_secret, readyz, run_twice, state, wait

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SPLIT_VAULT_NODES < 3, reason=(
        "the split test bed has one Vault member: CULLIS_SPLIT_VAULT_NODES=3 deploys the raft of three "
        "(opt-in until that split run is proven in CI; testkit/testbed_fixtures.py)")),
]

STACK_DIR = "/srv/cullis"
SUPERVISORCTL = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf"
BAO = "/opt/cullis/openbao/bin/bao"
MEMBERS = ("vault", "vault2", "vault3")


def keys(split_stack) -> dict:
    return json.loads((split_stack.controller_dir / "vault-keys.json").read_text())


def bao(split_stack, host: str, *args: str, token: str | None = None):
    env = {"BAO_ADDR": f"https://{host}:{split_stack.ports['cullis_vault_port']}",
           "BAO_CACERT": f"{STACK_DIR}/tls/ca.pem"}
    if token:
        env["BAO_TOKEN"] = token
    return split_stack.bed.exec(host, [BAO, *args], environment=env)


def status(split_stack, host: str) -> dict:
    res = bao(split_stack, host, "status", "-format=json")
    try:
        return json.loads(res.output)
    except ValueError:
        return {"error": res.output.strip()}


def peers(split_stack) -> list[dict]:
    root = keys(split_stack)["root_token"]
    for host in MEMBERS:  # any unsealed member answers (standbys forward)
        res = bao(split_stack, host, "operator", "raft", "list-peers", "-format=json", token=root)
        if res.rc == 0:
            return json.loads(res.output)["data"]["config"]["servers"]
    raise AssertionError("no Vault member listed the raft peers")


def pid(split_stack, host: str, service: str) -> str:
    return split_stack.sh(host, f"{SUPERVISORCTL} pid {service}").strip()


def vault_read(split_stack, token: str) -> int:
    """GET secret/data/broker as the broker does (its VAULT_ADDR `https://vault:8200`, its token),
    from the controller to the first member's address on the test bed network; HTTP status or 0."""
    ctx = ssl.create_default_context(cafile=str(split_stack.controller_dir / "ca.pem"))
    request = (f"GET /v1/secret/data/broker HTTP/1.1\r\nHost: vault:{split_stack.ports['cullis_vault_port']}\r\n"
               f"X-Vault-Token: {token}\r\nConnection: close\r\n\r\n").encode()
    try:
        with socket.create_connection((split_stack.bed.ip("vault"), split_stack.ports["cullis_vault_port"]),
                                      timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="vault") as s:
            s.sendall(request)
            head = s.recv(64).decode(errors="replace")
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class Poller(threading.Thread):
    """Polls /readyz through the proxy and the broker's Vault read every `interval` s until stopped."""

    def __init__(self, split_stack, interval: float = 0.5):
        super().__init__(daemon=True)
        self.split_stack, self.interval = split_stack, interval
        self.token = split_stack.env_of("broker1")["VAULT_TOKEN"]
        self.samples = 0
        self.failures: list[tuple[float, str, int]] = []
        self._stop = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self._stop.is_set():
            for what, code in (("readyz", readyz(self.split_stack)), ("vault", vault_read(self.split_stack, self.token))):
                if code != 200:
                    self.failures.append((round(time.monotonic() - t0, 1), what, code))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> "Poller":
        self._stop.set()
        self.join(30)
        return self


def assert_cluster_healthy(split_stack) -> None:
    servers = peers(split_stack)
    assert sorted(s["node_id"] for s in servers) == ["cullis-vault-1", "cullis-vault-2", "cullis-vault-3"], servers
    assert all(s["voter"] for s in servers), servers
    assert sum(s["leader"] for s in servers) == 1, servers
    for host in MEMBERS:
        assert status(split_stack, host).get("sealed") is False, (host, status(split_stack, host))
        assert state(split_stack, host, "vault") == "RUNNING", host


def test_vault_is_a_raft_cluster_of_three(split_stack):
    """Deploy: three voters, one leader, all unsealed; retry_join over TLS with the stack CA; the keys
    file never on a Vault host; the broker's secret readable on every member."""
    assert_cluster_healthy(split_stack)
    root = keys(split_stack)["root_token"]
    for host in MEMBERS:
        conf = split_stack.sh(host, f"cat {STACK_DIR}/vault/bao.hcl")
        others = [m for m in MEMBERS if m != host]
        for other in others:
            assert f'leader_api_addr     = "https://{other}:8200"' in conf, (host, conf)
        assert conf.count("retry_join {") == 2 and f'leader_ca_cert_file = "{STACK_DIR}/tls/ca.pem"' in conf
        assert f'api_addr = "https://{host}:8200"' in conf
        # cold storage: neither the keys file nor an unseal key on any Vault host
        assert split_stack.sh(host, "find / -xdev -name 'vault-keys*' 2>/dev/null").strip() == "", host
        first_key = keys(split_stack)["unseal_keys_b64"][0]
        found = split_stack.bed.exec(host, ["grep", "-rlF", first_key, STACK_DIR, "/root", "/tmp"]).output
        assert [f for f in found.splitlines() if f and not f.startswith("grep:")] == [], (host, found)
        read = bao(split_stack, host, "kv", "get", "-format=json", "secret/broker", token=root)
        assert read.rc == 0 and "private_key_pem" in json.loads(read.output)["data"]["data"], (host, read.output[-500:])
    # the brokers use the first member; standbys forward to the active node
    for broker in ("broker1", "broker2"):
        assert split_stack.env_of(broker)["VAULT_ADDR"] == "https://vault:8200"


def _recover_only(split_stack, faulty: str, poller: Poller) -> None:
    others = [m for m in MEMBERS if m != faulty]
    vault_pids = {m: pid(split_stack, m, "vault") for m in others}
    broker_pids = {b: pid(split_stack, b, "broker") for b in ("broker1", "broker2")}
    t0 = time.monotonic()
    first, again = run_twice(split_stack, "playbooks/incidents/vault_sealed.yml")
    print(f"vault_sealed on {faulty}: recovery + rerun {time.monotonic() - t0:.1f}s")
    out = " ".join(first.output.split())
    assert f"https://{faulty}:8200" in out
    assert "kept the broker running" in out, first.output[-3000:]
    assert {m: pid(split_stack, m, "vault") for m in others} == vault_pids, "another Vault member was touched"
    assert {b: pid(split_stack, b, "broker") for b in broker_pids} == broker_pids, "a broker was restarted"
    assert_cluster_healthy(split_stack)
    assert_no_secret(split_stack, first, again)
    assert poller.is_alive()


def test_one_member_killed_then_one_sealed_broker_stays_ready(split_stack):
    """Runbook §3 on a raft of three: vault2's process killed (stays down), recovered; then vault3
    restarted sealed, recovered. /readyz and the broker's Vault read never fail meanwhile."""
    assert_cluster_healthy(split_stack)
    poller = Poller(split_stack)
    poller.start()
    try:
        # 1. a member's process killed -9: supervisord leaves it EXITED (autorestart off)
        split_stack.sh("vault2", f"kill -9 {pid(split_stack, 'vault2', 'vault')}")
        wait(lambda: state(split_stack, "vault2", "vault") != "RUNNING", 30, "vault2's vault process down")
        time.sleep(5)  # the fault lasts: the poller samples the cluster with one member gone
        _recover_only(split_stack, "vault2", poller)
        # 2. another member restarted: it comes back sealed (as after a host reboot)
        split_stack.sh("vault3", f"kill -9 {pid(split_stack, 'vault3', 'vault')}")
        wait(lambda: state(split_stack, "vault3", "vault") != "RUNNING", 30, "vault3's vault process down")
        split_stack.sh("vault3", f"{SUPERVISORCTL} start vault")
        wait(lambda: status(split_stack, "vault3").get("sealed") is True, 60, "vault3 up and sealed")
        time.sleep(5)
        _recover_only(split_stack, "vault3", poller)
    finally:
        poller.stop()
    print(f"HA Vault poller: {poller.samples} samples, failures: {poller.failures}")
    assert poller.samples >= 20, poller.samples
    assert poller.failures == [], f"requests failed during the Vault faults: {poller.failures}"
    assert readyz(split_stack) == 200

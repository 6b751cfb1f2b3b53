"""Issue 18: Vault/OpenBao as a raft cluster of three on the split topology.

The session's split topology (conftest `split_stack`) has three Vault
members in cullis_vault: `vault` (the first member: initialised once by the deploy) and the database
and cache hosts `postgres`, `redis` (testkit/testbed_fixtures.py: a member shares its host with
another service; retry_join over TLS with the stack CA, joined when the deploy unsealed them with the
keys file read ON THE CONTROLLER). The brokers' one VAULT_ADDR is the Vault balancer on their own host
(HAProxy on 127.0.0.1:8210 over the three, health-checked). Runbook section 3 "Vault sealed or
unreachable" on a cluster:

- one member's process killed (it stays down: supervisord does not restart it), then another member
  sealed (its host "rebooted": killed, marked down by both balancers, its process started again: it
  comes back sealed); then the FIRST member killed. One at a time: two of three out at once is a
  lost quorum, not a one-node fault.
- During each fault a poller records every non-200 /readyz through the proxy and every failed read
  of the broker's Vault secret, run on broker1 through its VAULT_ADDR with its own token: none may
  fail (a cluster that keeps its quorum serves on; /readyz alone would hide an outage with real
  brokers, which cache their keys after warm-up), except a request in flight at the instant of a
  kill -9, which the TCP balancer cannot replay: counted and reported apart (Poller).
- vault_sealed.yml starts/unseals only the faulty node, touches no other Vault process and restarts
  no broker (an active node stayed); its rerun reports changed=0.
- A lost quorum (two members killed): vault_sealed.yml starts + unseals both, the brokers are ready.
- backup.yml takes the raft snapshot through the leader.

Fault injection goes through the containers (docker exec); every test leaves the topology healthy.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import pytest

from testkit.measurements import measured
from testkit.testbed_fixtures import SPLIT_VAULT_MEMBERS, SPLIT_VAULT_NODES
from tests.e2e_split.test_split_incidents import assert_no_secret, readyz, readyz_answer, run_twice, state, wait

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SPLIT_VAULT_NODES < 3, reason=(
        "the split test bed has one Vault member (CULLIS_SPLIT_VAULT_NODES=1 was set): these tests need "
        "the raft of three, the default of `make test` and `make split`")),
]

STACK_DIR = "/srv/cullis"
SUPERVISORCTL = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf"
BAO = "/opt/cullis/openbao/bin/bao"
MEMBERS = SPLIT_VAULT_MEMBERS  # ("vault", "postgres", "redis"): node ids cullis-vault-1..3 in this order
FIRST, SECOND, THIRD = (MEMBERS + ("", "", ""))[:3]
BALANCER = "https://127.0.0.1:8210"


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


# The broker's own Vault read, run ON broker1 with what its .env gives it (VAULT_ADDR: with a raft
# cluster the local balancer, role cullis.broker.vault tasks/balancer.yml; VAULT_TOKEN; the stack CA):
# GET secret/data/broker as the broker does. read() gives the HTTP status, 0 when no answer came.
VAULT_READ = f"""
import ssl, sys, time, os, urllib.request, urllib.error
env = dict(l.split("=", 1) for l in open("{STACK_DIR}/.env").read().splitlines() if "=" in l and not l.startswith("#"))
req = urllib.request.Request(env["VAULT_ADDR"].rstrip("/") + "/v1/secret/data/broker", headers={{"X-Vault-Token": env["VAULT_TOKEN"]}})
ctx = ssl.create_default_context(cafile="{STACK_DIR}/tls/ca.pem")
def read_why():
    try:
        return urllib.request.urlopen(req, context=ctx, timeout=10).status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read(200).decode(errors="replace")
    except Exception as e:  # no answer: what the client saw (refused, reset, timed out, TLS)
        return 0, (type(e).__name__ + ": " + str(e))[:200]
def read():
    return read_why()[0]
"""
# One read, printed.
VAULT_READ_ONCE = VAULT_READ + "print(read())\n"
# Reads every argv[2] seconds until the file argv[1] exists (or argv[3] seconds passed: it stops by
# itself), one line "<epoch start> <status> <seconds the read took>[ why]" each: ONE process on the
# host for a whole fault, instead of a docker exec and a Python start per sample. Epoch times: the
# containers share the controller's clock, so reads and the test's kills are on one time line.
VAULT_READ_LOOP = VAULT_READ + """
stop, interval, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
while not os.path.exists(stop) and time.monotonic() - t0 < limit:
    start, m = time.time(), time.monotonic()
    code, why = read_why()
    print(f"{start:.3f} {code} {time.monotonic() - m:.3f}", " ".join(why.split()), flush=True)
    time.sleep(interval)
"""


def vault_read(split_stack, host: str = "broker1") -> int:
    """The broker's Vault read from `host` through its VAULT_ADDR; HTTP status or 0."""
    out = split_stack.bed.exec(host, ["python3", "-c", VAULT_READ_ONCE]).output.strip()
    return int(out) if out.isdigit() else 0


@dataclasses.dataclass
class Failure:
    """A request of the poller that did not get 200: when it started (epoch), what it was, the
    status (0: no HTTP answer), how long it took, what came back."""
    start: float
    what: str
    status: int
    took: float
    detail: str

    def overlaps(self, window: tuple[float, float]) -> bool:
        return self.start <= window[1] and self.start + self.took >= window[0]


class Poller(threading.Thread):
    """Until stopped: /readyz through the proxy every `interval` s (from the controller), and the
    broker's Vault read every `interval` s on broker1 (VAULT_READ_LOOP, its output streamed back).
    `failures`: every non-200 answer. `kill(host)` kills a member -9 and records when.

    The balancers pass TLS through to the members (TCP mode, role cullis.broker.vault
    tasks/balancer.yml): a request that is IN FLIGHT on a member at the instant it is killed -9
    loses its connection, which no TCP balancer can replay (README "Vault raft of three"). Such a
    request (no HTTP answer, or /readyz's Vault read unreachable, its lifetime overlapping the kill)
    is counted in `lost_in_flight` and measured; every other failure is `unexplained`, and the
    tests assert there is none: no request STARTED while a member was down, sealed or rejoining
    may fail."""

    LIMIT = 1800  # the loop on broker1 stops by itself after this long

    def __init__(self, split_stack, interval: float = 0.5):
        super().__init__(daemon=True)
        self.split_stack, self.interval = split_stack, interval
        self.readyz_samples = self.vault_samples = 0
        self.failures: list[Failure] = []
        self.kills: list[tuple[float, float]] = []  # each `kill -9`: (epoch, epoch + 0.25)
        self.t0 = time.time()
        self._halt = threading.Event()  # not _stop: Thread.join() calls its own _stop()
        self._stop_file = f"/tmp/cullis-vault-read-poller-{uuid.uuid4().hex[:8]}"
        self._reader = threading.Thread(target=self._vault_reads, daemon=True)

    @property
    def samples(self) -> int:
        return min(self.readyz_samples, self.vault_samples)

    def kill(self, host: str) -> None:
        """`kill -9` of the member's process, the instant taken on the host right before it (a
        docker exec can take seconds under load; `kill` is the shell's builtin, run right after
        `date`); the window allows a quarter second for the signal and the process's exit, which
        closes its connections. A request that starts later and fails is not excused."""
        killed_at = float(self.split_stack.sh(host, f"date +%s.%N; kill -9 {pid(self.split_stack, host, 'vault')}"))
        self.kills.append((killed_at, killed_at + 0.25))
        wait(lambda: state(self.split_stack, host, "vault") != "RUNNING", 30, f"{host}'s vault process down")

    def _in_flight_at_a_kill(self, failure: Failure) -> bool:
        no_answer = failure.status == 0 or (failure.what == "readyz" and "Vault unreachable" in failure.detail)
        return no_answer and any(failure.overlaps(window) for window in self.kills)

    @property
    def lost_in_flight(self) -> list[Failure]:
        return [f for f in self.failures if self._in_flight_at_a_kill(f)]

    @property
    def unexplained(self) -> list[Failure]:
        return [f for f in self.failures if not self._in_flight_at_a_kill(f)]

    def summary(self) -> str:
        def show(failures):
            return [(round(f.start - self.t0, 2), f.what, f.status, f.took, f.detail[:160]) for f in failures]
        kills = [round(before - self.t0, 2) for before, _ in self.kills]
        return (f"{self.samples} samples, kills at {kills} s, in flight at a kill and lost: "
                f"{len(self.lost_in_flight)} {show(self.lost_in_flight)}, other failures: {show(self.unexplained)}")

    def _vault_reads(self):
        container = self.split_stack.bed.hosts["broker1"].container
        res = container.exec_run(["python3", "-u", "-c", VAULT_READ_LOOP, self._stop_file, str(self.interval),
                                  str(self.LIMIT)], stream=True)
        pending = b""
        for chunk in res.output:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                start, code, took, detail = (line.decode(errors="replace").split(" ", 3) + ["", "", "", ""])[:4]
                self.vault_samples += 1
                if code != "200":
                    self.failures.append(Failure(float(start or 0), "vault", int(code) if code.isdigit() else 0,
                                                 float(took or 0), detail))

    def run(self):
        self._reader.start()
        while not self._halt.is_set():
            start, m = time.time(), time.monotonic()
            code, detail = readyz_answer(self.split_stack)
            self.readyz_samples += 1
            if code != 200:  # with what the broker said (which component was not ready)
                self.failures.append(Failure(start, "readyz", code, round(time.monotonic() - m, 3), detail))
            self._halt.wait(self.interval)

    def stop(self) -> "Poller":
        self._halt.set()
        self.join(30)
        self.split_stack.bed.exec("broker1", ["touch", self._stop_file])
        self._reader.join(30)
        self.split_stack.bed.exec("broker1", ["rm", "-f", self._stop_file])
        assert not self._reader.is_alive(), "the Vault read loop on broker1 did not stop"
        return self


def failure_context(split_stack) -> str:
    """For a poller failure's message: broker1's balancer log (which member was marked up or down,
    when) and the end of each member's Vault log, so that a failure under load explains itself."""
    parts = []
    for host, log, lines in [("broker1", "vault-balancer", 40)] + [(m, "vault", 25) for m in MEMBERS]:
        tail = split_stack.sh(host, f"date -u +%T; tail -n {lines} {STACK_DIR}/logs/{log}.log 2>&1")
        parts.append(f"--- {host}: {log}.log (the host's time first)\n{tail}")
    return "\n".join(parts)


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
    measured(f"split deploy with {len(MEMBERS)} Vault members: {split_stack.deploy_seconds:.0f}s")
    assert_cluster_healthy(split_stack)
    root = keys(split_stack)["root_token"]
    for host in MEMBERS:
        conf = split_stack.bed.read_file(host, f"{STACK_DIR}/vault/bao.hcl")
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
    # the brokers' one VAULT_ADDR is the balancer on their own host, over every member (health checked)
    for broker in ("broker1", "broker2"):
        assert split_stack.env_of(broker)["VAULT_ADDR"] == BALANCER, broker
        assert state(split_stack, broker, "vault-balancer") == "RUNNING", broker
        conf = split_stack.bed.read_file(broker, f"{STACK_DIR}/vault-balancer/haproxy.cfg")
        for host in MEMBERS:
            assert f"server {host} {host}:8200 verifyhost {host}" in conf, (broker, conf)
        assert "option httpchk GET /v1/sys/health?standbyok=true" in conf
        assert vault_read(split_stack, broker) == 200, broker


def kill_member(split_stack, host: str) -> None:
    """The member's process killed -9: supervisord leaves it EXITED (autorestart off)."""
    split_stack.sh(host, f"kill -9 {pid(split_stack, host, 'vault')}")
    wait(lambda: state(split_stack, host, "vault") != "RUNNING", 30, f"{host}'s vault process down")


def balancer_downs(split_stack, member: str) -> dict:
    """How many times each broker host's balancer has marked `member` down (its log)."""
    return {b: split_stack.sh(b, f"grep -c 'vault_members/{member} is DOWN' {STACK_DIR}/logs/vault-balancer.log").strip()
            for b in ("broker1", "broker2")}


# The service each member's host runs beside Vault (testkit/testbed_fixtures.py): a Vault recovery
# must leave it alone.
NEIGHBOURS = {"postgres": "postgres", "redis": "redis"}


def _recover_only(split_stack, faulty: str, poller: Poller, rerun: bool = True) -> None:
    """vault_sealed.yml recovers `faulty` and touches nothing else; with `rerun`, its rerun: changed=0."""
    others = [m for m in MEMBERS if m != faulty]
    vault_pids = {m: pid(split_stack, m, "vault") for m in others}
    untouched = {(b, "broker"): pid(split_stack, b, "broker") for b in ("broker1", "broker2")}
    untouched.update({(h, svc): pid(split_stack, h, svc) for h, svc in NEIGHBOURS.items() if h in MEMBERS})
    t0 = time.monotonic()
    if rerun:
        first, again = run_twice(split_stack, "playbooks/incidents/vault_sealed.yml")
        results = (first, again)
    else:
        first = split_stack.run("playbooks/incidents/vault_sealed.yml")
        assert first.rc == 0 and first.changed > 0, first.output[-4000:]
        results = (first,)
    measured(f"vault_sealed on {faulty}: recovery{' + rerun' if rerun else ''} {time.monotonic() - t0:.1f}s")
    out = " ".join(first.output.split())
    assert f"https://{faulty}:8200" in out
    assert "kept the broker running" in out, first.output[-3000:]
    assert {m: pid(split_stack, m, "vault") for m in others} == vault_pids, "another Vault member was touched"
    assert {k: pid(split_stack, *k) for k in untouched} == untouched, "a broker or a member's neighbour was restarted"
    assert_cluster_healthy(split_stack)
    assert_no_secret(split_stack, *results)
    assert poller.is_alive()


def test_one_member_killed_then_one_sealed_broker_stays_ready(split_stack):
    """Runbook §3 on a raft of three: the second member's process killed (stays down), recovered; then
    the third restarted sealed, recovered, and the rerun reports changed=0 (one rerun for the
    scenario: the killed member's start + unseal has its rerun in the first-member test below).
    /readyz and the broker's Vault read never fail meanwhile."""
    assert_cluster_healthy(split_stack)
    poller = Poller(split_stack)
    poller.start()
    try:
        # 1. a member's process killed -9: supervisord leaves it EXITED (autorestart off)
        poller.kill(SECOND)
        time.sleep(5)  # the fault lasts: the poller samples the cluster with one member gone
        _recover_only(split_stack, SECOND, poller, rerun=False)
        # 2. another member's host rebooted: its member comes back sealed. A reboot outlasts the
        # balancers' health check (1 s): they have marked it down before it is back (a process that
        # comes back sealed within one check interval is served to until the next check: README)
        downs = balancer_downs(split_stack, THIRD)
        poller.kill(THIRD)
        wait(lambda: all(int(n) > int(downs[b]) for b, n in balancer_downs(split_stack, THIRD).items()), 30,
             f"both balancers marking {THIRD}'s member down")
        split_stack.sh(THIRD, f"{SUPERVISORCTL} start vault")
        wait(lambda: status(split_stack, THIRD).get("sealed") is True, 60, f"{THIRD}'s member up and sealed")
        time.sleep(5)
        _recover_only(split_stack, THIRD, poller)
    finally:
        poller.stop()
    measured(f"HA Vault poller (one member killed, then one sealed): {poller.summary()}")
    assert poller.samples >= 20, poller.samples
    assert poller.unexplained == [], (
        f"requests failed during the Vault faults: {poller.summary()}\n{failure_context(split_stack)}")
    assert readyz(split_stack) == 200


def test_first_member_killed_broker_reads_through_its_balancer(split_stack):
    """The member cullis_vault_addr names (the first, initialised once, the leader after the deploy)
    killed -9: the brokers' one VAULT_ADDR is the balancer on their host, which takes the member out at
    its first failed health check: the broker's Vault read and /readyz never fail while a new leader is
    elected and the member is down; vault_sealed.yml starts + unseals only it; rerun changed=0."""
    assert_cluster_healthy(split_stack)
    poller = Poller(split_stack)
    poller.start()
    try:
        poller.kill(FIRST)
        time.sleep(8)  # the fault lasts: a leader election, then the two others serve on
        _recover_only(split_stack, FIRST, poller)
    finally:
        poller.stop()
    measured(f"first member killed: poller {poller.summary()}")
    assert poller.samples >= 10, poller.samples
    assert poller.unexplained == [], (
        f"requests failed while the first Vault member was down: {poller.summary()}\n{failure_context(split_stack)}")


def test_lost_quorum_two_members_killed_restored(split_stack):
    """Two of three members killed: no quorum, no active node. vault_sealed.yml starts and unseals
    both (and only them), waits for a leader, restarts the brokers (their Vault had no active node),
    the broker's /readyz is 200 again; rerun changed=0."""
    assert_cluster_healthy(split_stack)
    vault_pid = pid(split_stack, FIRST, "vault")
    neighbours = {h: pid(split_stack, h, svc) for h, svc in NEIGHBOURS.items()}
    for host in (SECOND, THIRD):
        kill_member(split_stack, host)
    # the survivor alone is no quorum: it loses its leadership (no active node anywhere)
    wait(lambda: not any(s["leader"] for s in peers(split_stack)), 60, "no raft leader left")
    measured(f"lost quorum: the broker's Vault read answers {vault_read(split_stack)}")
    t0 = time.monotonic()
    first, again = run_twice(split_stack, "playbooks/incidents/vault_sealed.yml")
    measured(f"vault_sealed on a lost quorum: recovery + rerun {time.monotonic() - t0:.1f}s")
    out = " ".join(first.output.split())
    assert f"https://{SECOND}:8200" in out and f"https://{THIRD}:8200" in out
    assert "restarted the broker" in out, first.output[-3000:]
    assert pid(split_stack, FIRST, "vault") == vault_pid, "the surviving member was restarted"
    assert {h: pid(split_stack, h, svc) for h, svc in NEIGHBOURS.items()} == neighbours, "a member's neighbour was restarted"
    assert_cluster_healthy(split_stack)
    assert readyz(split_stack) == 200
    assert vault_read(split_stack) == 200 and vault_read(split_stack, "broker2") == 200
    assert_no_secret(split_stack, first, again)


def test_member_replaced_by_a_fresh_node_joins_and_is_unsealed(split_stack):
    """README "A member replaced by a fresh host": the third member's server rebuilt (its Vault process
    gone and its raft data with it; same place in cullis_vault, so the same node_id). deploy.yml drops
    the dead raft peer through a live member, starts the fresh node, which retry_joins and is unsealed
    with the keys file read on the controller: three voters again. The broker's Vault read and
    /readyz never fail meanwhile (two members keep the quorum)."""
    assert_cluster_healthy(split_stack)
    old_pid = pid(split_stack, THIRD, "vault")
    split_stack.sh(THIRD, f"{SUPERVISORCTL} stop vault")
    split_stack.sh(THIRD, f"rm -rf {STACK_DIR}/vault/raft")
    assert split_stack.bed.exec(THIRD, ["test", "-e", f"{STACK_DIR}/vault/raft/vault.db"]).rc != 0
    poller = Poller(split_stack)
    poller.start()
    try:
        t0 = time.monotonic()
        first = split_stack.run("playbooks/deploy.yml")
        measured(f"deploy with {THIRD}'s Vault member rebuilt: {time.monotonic() - t0:.1f}s")
        assert first.rc == 0, first.explain()
    finally:
        poller.stop()
    assert pid(split_stack, THIRD, "vault") != old_pid
    assert_cluster_healthy(split_stack)
    assert split_stack.bed.exec(THIRD, ["test", "-s", f"{STACK_DIR}/vault/raft/vault.db"]).rc == 0
    measured(f"member replaced: poller {poller.summary()}")
    assert poller.failures == [], (  # no kill here: every failure counts
        f"requests failed while {THIRD}'s member was replaced: {poller.summary()}\n{failure_context(split_stack)}")
    assert_no_secret(split_stack, first)
    # The changed=0 rerun is test_split_operations.py::test_second_deploy_changes_nothing, later in the
    # session: a deploy of the split hosts takes minutes here, too long to run twice in a row.


def leader_host(split_stack) -> str:
    """The inventory host of the raft leader (node ids cullis-vault-<position in MEMBERS>)."""
    leader = [s["node_id"] for s in peers(split_stack) if s["leader"]]
    assert len(leader) == 1, leader
    return MEMBERS[int(leader[0].rsplit("-", 1)[1]) - 1]


def test_snapshot_is_taken_from_the_leader(split_stack):
    """backup.yml on the raft of three: vault_snapshot gets every member and takes the raft snapshot
    through the active node (the leader, wherever the earlier faults moved it); the set holds it."""
    assert_cluster_healthy(split_stack)
    leader = leader_host(split_stack)
    t0 = time.monotonic()
    res = split_stack.run("playbooks/backup.yml")
    measured(f"backup.yml on the raft of three: {time.monotonic() - t0:.1f}s (leader {leader})")
    assert res.rc == 0, res.explain()
    snaps = [r for play in res.data.get("plays", []) for task in play.get("tasks", [])
             if (task.get("task", {}).get("name") or "").endswith("Vault raft snapshot (the broker signing key lives in Vault)")
             for r in task.get("hosts", {}).values() if not r.get("skipped")]
    assert len(snaps) == 1 and snaps[0].get("changed"), snaps
    assert snaps[0]["node"] == f"https://{leader}:8200", (snaps[0]["node"], leader)
    assert snaps[0]["size"] > 0 and len(snaps[0]["sha256"]) == 64
    sets = sorted((split_stack.controller_dir / "backups").glob("set-*"))
    assert sets and list(sets[-1].glob("vault_*.snap*")), sets
    assert_no_secret(split_stack, res)


"""The split topology: one Cullis stack deployed onto six BARE Debian hosts of the test bed.

`split_stack` (session scope) takes `split_testbed` (testkit/testbed_fixtures.py: postgres, redis,
vault, broker1, broker2, proxy; with CULLIS_SPLIT_VAULT_NODES=3 postgres and redis also in cullis_vault;
sshd on 127.0.0.1 ports, nothing of the stack installed), records
what the hosts had before, writes an inventory built like inventories/example-split (its
group_vars, with the test bed's addresses and a controller dir in a temp dir) and runs
`playbooks/deploy.yml` once. Tests share that deployed topology; a test that breaks a service
must leave it healthy again.

`patroni_site` (session scope, issue 18): the DR site of the quarterly drill IS the HA PostgreSQL
topology. A backup set of the split stack (with a marker org the live stack no longer has) is
restored by playbooks/dr_drill.yml into a second test bed deployed from scratch by the drill
(prepared hosts: pg1, pg2 with Patroni + etcd, app with etcd and the rest), and the site is kept
(dr_keep) for the Patroni tests (tests/e2e_split/test_ha_postgres.py) and the drill's own checks
(test_split_dr.py). One deploy serves both: the drill's restore into a Patroni cluster (on its
leader) and the failover tests on restored data.

What the drill takes from the split stack is a `DrSource` (`take_dr_source`: the backup set, the
backup key, the Vault keys file, and what test_split_dr compares against). In one pytest session
(`make split`) patroni_site takes it from `split_stack` directly. `make test` runs the Patroni files
as a stage of their own next to the split stage (scripts/test.sh: CULLIS_DR_HANDOFF=<dir>): the split
stage gives the DrSource right after its deploy (CULLIS_DR_HANDOFF_ROLE=give, `dr_source_handoff`),
the hapg stage waits for it (=take) on a test bed of its own engine, so the two topologies' tests
run side by side instead of one after the other.

The controller runs no stack service: HTTP checks reach nginx on the proxy container's address on
the test bed network (a network the tests created).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import json
import os
import shutil
import uuid

from testkit.ansible import REPO, PlaybookResult, run_playbook

STACK_DIR = "/srv/cullis"
PORTS = {"cullis_postgres_port": 5432, "cullis_redis_port": 6379, "cullis_vault_port": 8200,
         "cullis_vault_cluster_port": 8201, "cullis_broker_port": 8000, "cullis_nginx_port": 8443,
         "cullis_nginx_http_port": 8080}
# What a bare host must not have before the deploy (the deploy installs it).
PSQL = "/usr/lib/postgresql/15/bin/psql"
STACK_BINARIES = ("/usr/lib/postgresql/15/bin/postgres", "/usr/bin/redis-server", "/usr/sbin/nginx",
                  "/usr/local/bin/supervisord", "/opt/cullis/openbao/bin/bao")


@dataclass
class SplitStack:
    bed: object
    inventory: Path
    controller_dir: Path
    public_url: str
    before: dict = field(default_factory=dict)
    ports: dict = field(default_factory=lambda: dict(PORTS))
    stack_dir: str = STACK_DIR
    deploy_result: PlaybookResult | None = None
    deploy_seconds: float = 0.0

    def run(self, playbook: str, extra_vars: dict | None = None, **kwargs) -> PlaybookResult:
        return run_playbook(playbook, inventory=self.inventory, extra_vars=extra_vars, **kwargs)

    def sh(self, host: str, command: str) -> str:
        res = self.bed.exec(host, command)
        return res.output

    def psql(self, sql: str, db: str = "agent_trust", host: str = "postgres") -> str:
        """One SQL statement as the postgres user on the socket of `host` (the db host, or a DR site)."""
        res = self.bed.exec(host, [PSQL, "-h", f"{STACK_DIR}/postgres/sock", "-p", str(self.ports["cullis_postgres_port"]),
                                   "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql], user="postgres")
        assert res.rc == 0, res.output
        return res.output.strip()

    def secret_values(self) -> list[str]:
        """Every secret of the stack: the .env's, the root token and the unseal keys (controller)."""
        env = self.env_of("broker1")
        keys = json.loads((self.controller_dir / "vault-keys.json").read_text())
        return [env[k] for k in ("ADMIN_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "VAULT_TOKEN")] + [
            keys["root_token"], *keys["unseal_keys_b64"]]

    def env_of(self, host: str) -> dict:
        path = f"{STACK_DIR}/.env"
        if self.bed.exec(host, ["test", "-e", path]).rc != 0:
            return {}  # a host with no secret of the stack's .env
        out = self.bed.read_file(host, path)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#"))


def container_ip(bed, name: str) -> str:
    container = bed.hosts[name].container
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][bed.network_name]["IPAddress"]


def write_split_inventory(bed, base: Path, public_host: str) -> Path:
    """The test bed's inventory with the variables of inventories/example-split at `all` level."""
    template = REPO / "inventories" / "example-split" / "group_vars" / "all" / "stack.yml"
    group_vars = yaml.safe_load(template.read_text())
    group_vars.update(PORTS)
    group_vars.update({
        # Raft timing for a test bed of six "machines" on 2 cores at load ~12: with production timing
        # (1: a 500 ms leader lease) a leader whose one live follower stalled 683 ms stepped down
        # while a member was being replaced, and a request forwarded at that moment failed (a
        # rehearsal; README "High availability: Vault"). 2 doubles the lease; elections stay fast.
        "cullis_vault_raft_performance_multiplier": 2,
        "cullis_stack_dir": STACK_DIR,
        "cullis_controller_dir": str(base / "controller"),
        "cullis_public_host": public_host,
        "cullis_broker_public_url": f"https://{public_host}:{PORTS['cullis_nginx_port']}",
    })
    data = bed.inventory_data()
    data["all"]["vars"] = group_vars
    return write_inventory(base, data)


def write_inventory(base: Path, data: dict) -> Path:
    """`data` as <base>/inventory/hosts.yml (a new directory: group_vars stay in the data)."""
    path = base / "inventory" / "hosts.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def split_stack(split_testbed, tmp_path_factory):
    bed = split_testbed
    base = tmp_path_factory.mktemp("split-stack")
    before = {name: {b: bed.exec(name, ["test", "-e", b]).rc == 0 for b in STACK_BINARIES} for name in bed.hosts}
    public_host = container_ip(bed, "proxy")
    inventory = write_split_inventory(bed, base, public_host)
    st = SplitStack(bed=bed, inventory=inventory, controller_dir=base / "controller",
                    public_url=f"https://{public_host}:{PORTS['cullis_nginx_port']}", before=before)
    t0 = time.monotonic()
    st.deploy_result = st.run("playbooks/deploy.yml")
    st.deploy_seconds = time.monotonic() - t0
    if st.deploy_result.rc != 0:
        tail = "\n".join(st.deploy_result.output.splitlines()[-80:])
        pytest.fail(f"deploy onto the split test bed failed (rc={st.deploy_result.rc}):\n{tail}", pytrace=False)
    yield st
    # the hosts (and everything running on them) go with the test bed at session end


# The HA PostgreSQL topology (issue 18), the DR drill's site: Patroni runs PostgreSQL 15 on pg1 and
# pg2; etcd has three members (pg1, pg2, app); app runs the rest of the stack.
PATRONI_TOPOLOGY = {
    "pg1": ["cullis_postgres", "cullis_etcd"],
    "pg2": ["cullis_postgres", "cullis_etcd"],
    "app": ["cullis_etcd", "cullis_redis", "cullis_vault", "cullis_broker", "cullis_proxy"],
}


@dataclass
class PatroniSite:
    """The DR site the drill deployed and kept: a Patroni cluster holding the split stack's data."""
    bed: object
    inventory: Path
    controller_dir: Path
    public_url: str
    source: "DrSource"  # what the drill restored (the split stack's set and keys)
    drill: PlaybookResult
    drill_seconds: float
    drill_vars: dict

    def run(self, playbook: str, extra_vars: dict | None = None, **kwargs) -> PlaybookResult:
        return run_playbook(playbook, inventory=self.inventory, extra_vars=extra_vars, **kwargs)

    def psql(self, host: str, sql: str) -> str:
        """One SQL statement as the postgres user on the socket of member `host` (pg1 or pg2)."""
        res = self.bed.exec(host, [PSQL, "-h", f"{STACK_DIR}/postgres/sock", "-p", str(PORTS["cullis_postgres_port"]),
                                   "-d", "agent_trust", "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql], user="postgres")
        assert res.rc == 0, res.output
        return res.output.strip()

    def env(self) -> dict:
        out = self.bed.read_file("app", f"{STACK_DIR}/.env")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#"))


# The broker's signing key files (written from Vault by the deploy): the DR site's must be the split stack's.
BROKER_KEY_FILES = (f"{STACK_DIR}/broker/certs/broker-ca.pem", f"{STACK_DIR}/broker/certs/broker-ca-key.pem")
HANDOFF_TIMEOUT = 3600  # the hapg stage's wait for the split stage's DrSource (its deploy + one backup)


@dataclass
class DrSource:
    """What the DR drill takes from the split stack, as files on the controller: `controller_dir`
    holds backups/<the set>, backup.key and vault-keys.json (the split stack's, mode 0600)."""
    controller_dir: Path
    source_set: Path
    marker_org: str  # in the set, deleted from the split stack after its backup (checked there)
    secret_values: list[str]  # SplitStack.secret_values(): none may appear in the drill's output
    key_file_sha256: dict[str, str]  # BROKER_KEY_FILES on broker1 when the set was taken

    def drill_vars(self) -> dict:
        d = self.controller_dir
        return {"dr_source_backup_dir": str(d / "backups"), "dr_backup_key_file": str(d / "backup.key"),
                "dr_source_vault_keys_file": str(d / "vault-keys.json"), "dr_keep": True}


def take_dr_source(split_stack) -> DrSource:
    """A backup set of the split stack holding a marker org the live stack no longer has."""
    marker = f"dr-marker-{uuid.uuid4().hex[:8]}"
    split_stack.psql("INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                     f"VALUES ('{marker}', 'x', 'x', now())")
    try:
        backup = split_stack.run("playbooks/backup.yml")
        assert backup.rc == 0, backup.output[-4000:]
    finally:
        split_stack.psql(f"DELETE FROM organizations WHERE org_id = '{marker}'")
    assert split_stack.psql(f"SELECT count(*) FROM organizations WHERE org_id = '{marker}'") == "0"
    hashes = {}
    for path in BROKER_KEY_FILES:
        res = split_stack.bed.exec("broker1", ["sha256sum", path])
        assert res.rc == 0, res.output
        hashes[path] = res.output.split()[0]
    return DrSource(controller_dir=split_stack.controller_dir,
                    source_set=sorted((split_stack.controller_dir / "backups").glob("set-*"))[-1],
                    marker_org=marker, secret_values=split_stack.secret_values(), key_file_sha256=hashes)


def give_dr_source(source: DrSource, handoff: Path) -> None:
    """Copies the source's files into `handoff` (0700) and publishes it with ready.json (renamed in)."""
    handoff.chmod(0o700)
    controller = handoff / "controller"
    shutil.copytree(source.source_set, controller / "backups" / source.source_set.name)
    for name in ("backup.key", "vault-keys.json"):
        shutil.copy2(source.controller_dir / name, controller / name)
    data = {"source_set": source.source_set.name, "marker_org": source.marker_org,
            "secret_values": source.secret_values, "key_file_sha256": source.key_file_sha256}
    tmp = handoff / "ready.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o600)
    tmp.rename(handoff / "ready.json")


def wait_for_dr_source(handoff: Path, timeout: float = HANDOFF_TIMEOUT) -> DrSource:
    """The DrSource the split stage gave (ready.json), or its reason for giving none (failed.txt)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (handoff / "ready.json").exists():
            data = json.loads((handoff / "ready.json").read_text())
            controller = handoff / "controller"
            return DrSource(controller_dir=controller, source_set=controller / "backups" / data["source_set"],
                            marker_org=data["marker_org"], secret_values=data["secret_values"],
                            key_file_sha256=data["key_file_sha256"])
        if (handoff / "failed.txt").exists():
            reason = (handoff / "failed.txt").read_text()
            if reason.startswith("skipped: "):
                pytest.skip(f"the split stage has no stack to take the DR drill's backup from: {reason[9:]}")
            pytest.fail(f"the split stage gave no backup set for the DR drill: {reason}", pytrace=False)
        time.sleep(5)
    pytest.fail(f"the split stage gave no backup set for the DR drill within {timeout}s ({handoff})", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def dr_source_handoff(request):
    """In the split stage of `make test` (CULLIS_DR_HANDOFF_ROLE=give): the DrSource for the hapg
    stage, as soon as the split stack is deployed; elsewhere nothing."""
    if os.environ.get("CULLIS_DR_HANDOFF_ROLE") != "give":
        yield
        return
    handoff = Path(os.environ["CULLIS_DR_HANDOFF"])
    try:
        give_dr_source(take_dr_source(request.getfixturevalue("split_stack")), handoff)
    except pytest.skip.Exception as e:
        (handoff / "failed.txt").write_text(f"skipped: {e}")
        raise
    except BaseException as e:
        (handoff / "failed.txt").write_text(f"{type(e).__name__}: {str(e)[-2000:]}")
        raise
    yield


@pytest.fixture(scope="session")
def patroni_site(request, tmp_path_factory):
    if os.environ.get("CULLIS_DR_HANDOFF_ROLE") == "take":
        # the hapg stage's engine starts only now: the split stage has passed tests/testbed, whose
        # tests start and stop engines of their own (an engine that stops restores the host's
        # iptables, which a second engine starting at that moment would lose: seen in a rehearsal)
        source = wait_for_dr_source(Path(os.environ["CULLIS_DR_HANDOFF"]))
    else:
        source = take_dr_source(request.getfixturevalue("split_stack"))
    bed = request.getfixturevalue("testbed_factory")(PATRONI_TOPOLOGY, image="prepared", name="hapg")

    base = tmp_path_factory.mktemp("patroni-site")
    public_host = container_ip(bed, "app")
    inventory = write_split_inventory(bed, base, public_host)
    data = yaml.safe_load(inventory.read_text())
    data["all"]["vars"]["cullis_postgres_ha"] = "patroni"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    drill_vars = source.drill_vars()
    t0 = time.monotonic()
    drill = run_playbook("playbooks/dr_drill.yml", inventory=inventory, extra_vars=drill_vars, timeout=3600)
    site = PatroniSite(bed=bed, inventory=inventory, controller_dir=base / "controller",
                       public_url=f"https://{public_host}:{PORTS['cullis_nginx_port']}", source=source,
                       drill=drill, drill_seconds=time.monotonic() - t0, drill_vars=drill_vars)
    print(f"DR drill into the Patroni site (deploy of pg1, pg2, app included): {site.drill_seconds:.0f}s")
    if drill.rc != 0:
        report = [r.get("msg") for r in drill.task_results("DR drill report")]
        pytest.fail(f"DR drill into the Patroni site failed (rc={drill.rc}): {report}\n"
                    + "\n".join(drill.output.splitlines()[-80:]), pytrace=False)
    return site

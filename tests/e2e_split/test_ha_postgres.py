"""Issue 18 (PostgreSQL part): Patroni + etcd, the primary's postgres killed, failover, rejoin;
backups from the standby and a restore into the leader.

The HA PostgreSQL topology is the DR site of the quarterly drill (conftest `patroni_site`: deployed
from scratch by playbooks/dr_drill.yml, the split stack's backup restored into it, kept):
  pg1, pg2: cullis_postgres (Patroni running PostgreSQL 15) and cullis_etcd
  app:      cullis_etcd (the third member), redis, vault, broker, proxy
with `cullis_postgres_ha: patroni`: the broker's DATABASE_URL names pg1 and pg2 with
target_session_attrs=read-write, so its pool finds the primary wherever Patroni put it.

Runbook section 2 "Postgres down or unreachable" on a Patroni cluster:
- rows are written through the broker (orgs onboarded with their agents: real API calls);
- the primary's postmaster is killed with SIGKILL (Patroni itself stays up);
- Patroni fails over (master_start_timeout 0, synchronous_mode: the synchronous standby is
  promoted), the broker answers /readyz 200 and a database-backed API call again within
  FAILOVER_BOUND seconds (the bound the README states), every org written before the kill is on
  the new primary, and the old primary rejoins as a standby (Patroni rewinds/follows it);
- a redeploy after the failover reports changed=0 (the deploy follows the primary it finds);
- playbooks/incidents/postgres_down.yml then reports that failover and changes nothing; with a
  standby's Patroni stopped it starts it on that host only, the member rejoins, rerun changed=0.
"Backups": backup.yml dumps on the streaming standby (the full verify's scratch database on the
leader: a standby is read-only); restore.yml puts that set back on the leader, the standby replays it.
"""
from __future__ import annotations

import json
import re
import secrets
import ssl
import time
import urllib.error
import urllib.request

import pytest

from testkit.measurements import measured
from tests.e2e_split.conftest import PATRONI_TOPOLOGY
from tests.e2e_split.test_split_incidents import triage

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"
SUPERVISORCTL = f"supervisorctl -c {STACK_DIR}/supervisor/supervisord.conf"
PG_DATA = f"{STACK_DIR}/postgres/data"
MEMBERS = ("pg1", "pg2")
REST_PORT = 8008
# README "HA PostgreSQL": the broker serves again within this many seconds of the primary's crash.
FAILOVER_BOUND = 60


class HaPg:
    """The Patroni site with the views the tests need (its REST API, the public URL) and their timings."""

    def __init__(self, site):
        self.site = site
        self.bed, self.inventory, self.public_url, self.controller_dir = (
            site.bed, site.inventory, site.public_url, site.controller_dir)
        self.deploy_result = site.drill
        self.timings: dict[str, float] = {}

    def run(self, playbook, **kwargs):
        return self.site.run(playbook, **kwargs)

    def env(self) -> dict:
        return self.site.env()

    def psql(self, host: str, sql: str) -> str:
        return self.site.psql(host, sql)

    def cluster(self) -> dict:
        """Patroni's GET /cluster from the controller (any member answers; {} when none does)."""
        for host in MEMBERS:
            try:
                with urllib.request.urlopen(f"http://{self.bed.ip(host)}:{REST_PORT}/cluster", timeout=5) as resp:
                    return json.load(resp)
            except (urllib.error.URLError, OSError, ValueError):
                continue
        return {}

    def roles(self) -> dict:
        return {m["name"]: (m.get("role"), m.get("state")) for m in self.cluster().get("members", [])}

    def leader(self) -> str | None:
        return next((n for n, (role, state) in self.roles().items() if role == "leader" and state == "running"), None)

    def get(self, path: str, admin: bool = False) -> int:
        ctx = ssl.create_default_context(cafile=str(self.controller_dir / "ca.pem"))
        req = urllib.request.Request(f"{self.public_url}{path}")
        if admin:
            req.add_header("x-admin-secret", self.env()["ADMIN_SECRET"])
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0


def wait(cond, timeout: float, what: str, step: float = 0.5) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def hapg(patroni_site):
    return HaPg(patroni_site)


def test_patroni_cluster_deployed(hapg):
    """Deploy: etcd of three, one leader and one synchronous standby streaming; the broker reaches it."""
    roles = hapg.roles()
    assert sorted(roles) == ["pg1", "pg2"], roles
    assert sorted(r for r, _ in roles.values()) == ["leader", "sync_standby"], roles
    assert all(state == "running" for _, state in roles.values()), roles
    for host in PATRONI_TOPOLOGY:
        assert "RUNNING" in hapg.bed.exec(host, f"{SUPERVISORCTL} status etcd").output, host
    env = hapg.env()
    assert "target_session_attrs=read-write" in env["DATABASE_URL"] and "host=pg1,pg2" in env["DATABASE_URL"]
    # only the postgres hosts get the cluster's passwords besides the broker host (source of truth)
    assert "PATRONI_SUPERUSER_PASSWORD" in hapg.bed.read_file("pg2", f"{STACK_DIR}/.env")
    assert hapg.get("/readyz") == 200
    for value in (env["PATRONI_SUPERUSER_PASSWORD"], env["PATRONI_REPLICATION_PASSWORD"], env["POSTGRES_PASSWORD"]):
        assert value not in hapg.deploy_result.output


def test_primary_killed_failover_no_row_lost_rejoin(hapg, tmp_path):
    """Runbook §2 on Patroni: primary's postgres kill -9 under load (bench/ha_load.py "failover": agent
    logins and authenticated calls through the proxy) -> failover, broker back within the stated
    bound, no row lost, rejoin. The load's failed requests are recorded (in-flight requests of the
    failover window may fail: README "HA PostgreSQL"), not asserted away."""
    from bench.ha_load import run_scenario, sized_load
    from testkit.broker_orgs import auth_limit, onboard_org

    env = hapg.env()
    old = hapg.leader()
    assert old in MEMBERS
    ca = str(hapg.controller_dir / "ca.pem")
    redis_url = env["REDIS_URL"].replace("@app:", f"@{hapg.bed.ip('app')}:")
    orgs = [f"hapg-{secrets.token_hex(3)}-{i}" for i in range(3)]
    for org in orgs:  # the first org's two agents are the load's
        onboard_org(None, org, tmp_path / org, 2 if org == orgs[0] else 1, redis_url, url=hapg.public_url,
                    admin_secret=env["ADMIN_SECRET"], ca_path=ca)
    in_list = "(" + ",".join(f"'{o}'" for o in orgs) + ")"
    before = hapg.psql(old, f"SELECT count(*) FROM organizations WHERE org_id IN {in_list}")
    assert before == "3"
    agents_before = hapg.psql(old, "SELECT count(*) FROM agents")

    gen = sized_load(hapg.public_url, ca, redis_url, tmp_path / orgs[0], ["a00", "a01"], 60, auth_limit(env))
    members = {m: hapg.bed.ip(m) for m in MEMBERS}
    out = run_scenario("failover", hapg.inventory, gen, tmp_path, tail=2.0,
                       failover={"members": members, "url": hapg.public_url, "ca": ca})
    new = out["new_leader"]
    assert out["old_leader"] == old and new in MEMBERS and new != old, out
    hapg.timings["new_leader"] = hapg.timings["first_failover"] = out["new_leader_seconds"]
    assert out["broker_back_seconds"] is not None, out

    def broker_back() -> bool:
        return hapg.get("/readyz") == 200 and hapg.get("/v1/registry/orgs", admin=True) == 200

    t_ready = time.monotonic()
    wait(broker_back, FAILOVER_BOUND, "the broker's /readyz and an admin DB call", step=1)
    hapg.timings["broker_back"] = out["broker_back_seconds"] + (time.monotonic() - t_ready)
    load = {k: out[k] for k in ("sent", "failed", "failed_by_status")}
    measured(f"hapg: new leader {new} after {out['new_leader_seconds']}s, broker back after "
          f"{hapg.timings['broker_back']:.1f}s; load during the failover: {json.dumps(load)}")
    assert hapg.timings["broker_back"] <= FAILOVER_BOUND, hapg.timings
    assert out["sent"] > 0 and out["load"]["ok"] > 0, out["load"]

    # every row committed before the kill is on the new primary
    assert hapg.psql(new, f"SELECT count(*) FROM organizations WHERE org_id IN {in_list}") == "3"
    assert int(hapg.psql(new, "SELECT count(*) FROM agents")) >= int(agents_before)
    # and the broker writes again (a new org through the API, on the new primary)
    late = f"hapg-{secrets.token_hex(3)}-after"
    onboard_org(None, late, tmp_path / late, 1, url=hapg.public_url, admin_secret=env["ADMIN_SECRET"],
                ca_path=hapg.controller_dir / "ca.pem")
    assert hapg.psql(new, f"SELECT count(*) FROM organizations WHERE org_id = '{late}'") == "1"

    # the old primary rejoins as a standby and replays what was written after the failover
    hapg.timings["rejoined"] = wait(
        lambda: hapg.roles().get(old, (None, None)) in (("sync_standby", "running"), ("replica", "running")),
        180, f"{old} to rejoin as a standby", step=2) + hapg.timings["broker_back"]
    wait(lambda: hapg.psql(old, f"SELECT count(*) FROM organizations WHERE org_id = '{late}'") == "1", 60,
         f"{old} to replay the row written after the failover")
    assert hapg.psql(old, "SELECT pg_is_in_recovery()") == "t"

    # the deploy after the failover follows the new primary: nothing to change
    again = hapg.run("playbooks/deploy.yml")
    assert again.rc == 0 and again.changed == 0, (again.stats, again.output[-3000:])
    measured(f"hapg timings: {json.dumps({k: round(v, 1) for k, v in hapg.timings.items()})}")


def test_postgres_down_reports_failover_and_restores_a_member(hapg):
    """Runbook §2 on Patroni, postgres_down.yml: after the failover above it reports it and changes
    nothing; then a standby whose Patroni is stopped is started on its host, rejoins, rerun changed=0."""
    env = hapg.env()
    secrets_ = [env[k] for k in ("ADMIN_SECRET", "POSTGRES_PASSWORD", "PATRONI_SUPERUSER_PASSWORD",
                                 "PATRONI_REPLICATION_PASSWORD")]
    leader = hapg.leader()
    assert leader in MEMBERS
    # triage on the healthy cluster names no incident: PostgreSQL's program is `patroni` here (it once
    # looked for a `postgres` program and named postgres_down on every Patroni cluster)
    res, report = triage(hapg.site)
    assert res.rc == 0, res.output[-3000:]
    assert report["before"]["incidents"] == [], report["before"]["incidents"]
    assert report["before"]["snapshot"]["services_by_host"][leader]["patroni"]["running"] is True
    healthy = hapg.run("playbooks/incidents/postgres_down.yml")
    assert healthy.rc == 0 and healthy.changed == 0, (healthy.stats, healthy.output[-3000:])
    if "first_failover" in hapg.timings:  # the failover test ran before: the report names it
        assert f"{leader} promoted" in healthy.output, healthy.output[-3000:]

    # the split stack's incidents (test_ha_brokers' broker_down) onboarded their probe org before its
    # backup was restored here: its secret is on the split stack's controller, not this site's
    probe_restored = hapg.psql(leader, "SELECT count(*) FROM organizations WHERE org_id = 'incident-probe'") == "1"

    standby = next(m for m in MEMBERS if m != leader)
    hapg.bed.exec(standby, f"{SUPERVISORCTL} stop patroni", check=True)
    wait(lambda: hapg.roles().get(standby, (None, None))[1] != "running", 60, f"{standby} to be seen down")
    t0 = time.monotonic()
    first = hapg.run("playbooks/incidents/postgres_down.yml")
    hapg.timings["postgres_down_member"] = time.monotonic() - t0
    assert first.rc == 0 and first.changed > 0, (first.stats, first.output[-4000:])
    if probe_restored:  # the verification logged in with a probe org of this controller's own
        assert re.search(r"agent incident-probe-[0-9a-f]{8}::probe logged in", first.output), first.output[-3000:]
    assert "RUNNING" in hapg.bed.exec(standby, f"{SUPERVISORCTL} status patroni").output
    assert hapg.roles().get(standby) in (("sync_standby", "running"), ("replica", "running")), hapg.roles()
    assert hapg.leader() == leader  # the leader was not touched
    again = hapg.run("playbooks/incidents/postgres_down.yml")
    assert again.rc == 0 and again.changed == 0, (again.stats, again.output[-3000:])
    for res in (healthy, first, again):
        for value in secrets_:
            assert value not in res.output, "a secret appeared in the postgres_down output"
    measured(f"hapg timings: {json.dumps({k: round(v, 1) for k, v in hapg.timings.items()})}")


def test_backup_reads_the_standby_and_restore_writes_the_leader(hapg):
    """Backups on Patroni: backup.yml dumps on the streaming standby (the primary's I/O is spared); its
    full verify restores into a scratch database on the leader over TCP (a standby is read-only, so a
    verify that passed on the standby host went there). restore.yml puts the set back ON THE LEADER
    (new database, swapped in by rename) and the standby replays it; the broker serves again."""
    from tests.e2e_split.test_split_operations import ran_on

    env = hapg.env()
    secrets_ = [env[k] for k in ("ADMIN_SECRET", "POSTGRES_PASSWORD", "PATRONI_SUPERUSER_PASSWORD",
                                 "PATRONI_REPLICATION_PASSWORD")]
    leader = hapg.leader()
    assert leader in MEMBERS
    standby = next(m for m in MEMBERS if m != leader)
    wait(lambda: hapg.roles().get(standby, (None, None)) in (("sync_standby", "running"), ("replica", "running")),
         120, f"{standby} streaming")
    t0 = time.monotonic()
    backup = hapg.run("playbooks/backup.yml", callback="default")
    hapg.timings["backup_from_standby"] = time.monotonic() - t0
    assert backup.rc == 0, backup.output[-4000:]
    assert ran_on(backup, "Postgres dump, checksummed, encrypted, atomic - agent_trust") == {standby}
    assert ran_on(backup, "Verify the Postgres dump (full)") == {standby}
    set_dir = sorted((hapg.controller_dir / "backups").glob("set-*"))[-1]
    manifest = json.loads((set_dir / "backup-set.json").read_text())
    pg_manifest = json.loads((set_dir / (manifest["postgres"] + ".json")).read_text())
    assert pg_manifest["verification"]["status"] == "ok", pg_manifest["verification"]
    assert pg_manifest["verification"]["mode"] == "restore", pg_manifest["verification"]
    # the verify's scratch database is gone from the leader again
    assert hapg.psql(leader, "SELECT count(*) FROM pg_database WHERE datname LIKE '%verify%'") == "0"

    late = f"hapg-after-backup-{secrets.token_hex(3)}"
    hapg.psql(leader, "INSERT INTO organizations (org_id, display_name, secret_hash, registered_at) "
                      f"VALUES ('{late}', 'x', 'x', now())")
    t0 = time.monotonic()
    restore = hapg.run("playbooks/restore.yml", extra_vars={"confirm": True, "backup_set": str(set_dir)},
                       callback="default")
    hapg.timings["restore_into_leader"] = time.monotonic() - t0
    assert restore.rc == 0, restore.output[-4000:]
    assert ran_on(restore, "Restore Postgres (new database, row counts checked, swapped in by rename)") == {leader}
    assert "broker running, /readyz 200" in " ".join(restore.output.split()), restore.output[-3000:]
    # the set's data on the leader, replayed by the standby: the late row is gone, the drill's marker is there
    count = ("SELECT count(*) FILTER (WHERE org_id = '{}') || ' ' || count(*) FILTER (WHERE org_id = '{}') "
             "FROM organizations").format(late, hapg.site.source.marker_org)
    assert hapg.psql(leader, count) == "0 1"
    wait(lambda: hapg.psql(standby, count) == "0 1", 60, f"{standby} to replay the restore")
    assert hapg.leader() == leader
    assert hapg.roles().get(standby) in (("sync_standby", "running"), ("replica", "running")), hapg.roles()
    assert hapg.get("/readyz") == 200 and hapg.get("/v1/registry/orgs", admin=True) == 200
    for res in (backup, restore):
        for value in secrets_:
            assert value not in res.output, "a secret appeared in the backup/restore output"
    measured(f"hapg timings: {json.dumps({k: round(v, 1) for k, v in hapg.timings.items()})}")

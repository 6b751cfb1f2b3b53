"""Issue 19 on the split topology: playbooks/upgrade.yml with two brokers on two hosts.

The local e2e stack (tests/e2e/test_upgrade.py) proves the plan, the rollback and the upgrade with
one broker. Here the same `next` release (one extra migration, version 0.2.0-next; built by that
module's `_tree`) goes onto broker1 and broker2 of the shared split stack: the tree is copied from
the controller to each broker host, the brokers are upgraded ONE AT A TIME (one serial batch per
broker, the second stopped only once the first is ready again on the new tree), Alembic runs once
(first broker), both brokers then serve the new version, the organizations written before are all
there, and the rerun reports changed=0. The stack is left as found: the extra migration downgraded
by its own tree's Alembic on broker1, then upgrade.yml back to broker_src.
"""
from __future__ import annotations

import json
import urllib.request

import pytest

from testkit.ansible import REPO
from tests.e2e.test_upgrade import BASE_REV, NEXT_MIGRATION, NEXT_REV, _tree
from tests.e2e_split.conftest import container_ip
from tests.e2e_split.test_split_incidents import assert_healthy, assert_no_secret

pytestmark = [pytest.mark.slow]

STACK_DIR = "/srv/cullis"
BROKERS = ("broker1", "broker2")
BATCH_PLAY = "Upgrade - brokers one at a time"


@pytest.fixture(scope="module")
def next_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("split-upgrade")
    base.chmod(0o755)
    return _tree(base / "broker_next", {f"{NEXT_REV}.py": NEXT_MIGRATION})


def revision(split_stack) -> str:
    return split_stack.psql("SELECT string_agg(version_num, ',') FROM alembic_version")


def org_ids(split_stack) -> set[str]:
    return set(split_stack.psql("SELECT org_id FROM organizations").split())


def version_on(split_stack, host: str) -> str:
    """The version a broker serves on its own host's address (the controller reaches the test bed's
    network), not through the proxy: each broker is checked."""
    url = f"http://{container_ip(split_stack.bed, host)}:{split_stack.ports['cullis_broker_port']}/health"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["version"]


def batches(result) -> list[list[str]]:
    """The hosts of each serial batch of the brokers' play, in the order they ran."""
    return [sorted({h for t in play.get("tasks", []) for h in t.get("hosts", {})})
            for play in result.data.get("plays", []) if play.get("play", {}).get("name") == BATCH_PLAY]


def later_tests_use_the_split_stack(request) -> bool:
    """Whether a test after this module in the session uses the shared split stack."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.module is request.module]
    return any("split_stack" in item.fixturenames for item in items[(max(mine) + 1 if mine else 0):])


@pytest.fixture(scope="module")
def back_to_broker_src(request, split_stack, next_tree):
    """The stack back on broker_src for the tests after this module. When none of them uses the
    split stack (this module runs last of those that do), the restore - a second upgrade, about
    2-3 minutes - buys nothing: the stack is torn down with the test bed."""
    yield
    if not later_tests_use_the_split_stack(request):
        print("\nsplit stack left on the next tree: no later test of this session uses it")
        return
    env = split_stack.env_of("broker1")
    if revision(split_stack) == NEXT_REV:  # the extra migration, downgraded by the tree that has it
        res = split_stack.bed.exec(
            "broker1", f"cd {STACK_DIR}/broker/src && exec {STACK_DIR}/broker/venv/bin/alembic downgrade {BASE_REV}",
            environment={"DATABASE_URL": env["DATABASE_URL"]})
        assert res.rc == 0, res.output
    back = split_stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(REPO / "broker_src")})
    assert back.rc == 0, back.explain()
    assert revision(split_stack) == BASE_REV
    assert {version_on(split_stack, h) for h in BROKERS} == {"0.1.0"}
    assert_healthy(split_stack)


def test_upgrade_two_brokers_one_at_a_time_then_rerun_changes_nothing(split_stack, next_tree, back_to_broker_src):
    assert revision(split_stack) == BASE_REV
    assert {version_on(split_stack, h) for h in BROKERS} == {"0.1.0"}
    orgs_before = org_ids(split_stack)

    res = split_stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(next_tree)})
    assert res.rc == 0, res.explain()
    assert revision(split_stack) == NEXT_REV
    assert {h: version_on(split_stack, h) for h in BROKERS} == {h: "0.2.0-next" for h in BROKERS}
    # one broker per batch, broker1 (which migrates) first: the other kept serving meanwhile
    assert batches(res) == [["broker1"], ["broker2"]], batches(res)
    migrate = "Alembic upgrade to the target tree's head (first broker, under the advisory lock)"
    on_second = res.task_results(migrate, host="broker2")
    assert on_second and all(r.get("skipped") for r in on_second), on_second  # Alembic ran once
    assert orgs_before <= org_ids(split_stack), "organizations lost in the upgrade"
    done = "\n".join(res.task_results("Upgrade done", host="broker1")[0]["msg"])
    assert f"{BASE_REV} -> {NEXT_REV}" in done and "Audit chain verified" in done, done
    assert_no_secret(split_stack, res)

    again = split_stack.run("playbooks/upgrade.yml", extra_vars={"cullis_broker_src": str(next_tree)})
    assert again.rc == 0 and again.changed == 0, (again.stats, again.explain())

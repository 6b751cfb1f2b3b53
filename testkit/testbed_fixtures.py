"""Session fixtures of the multi-host test bed (loaded by the repository's root conftest.py).

- `docker_engine`: the kit's dockerd (testkit.docker_engine), stopped by PID at session end.
- `testbed_images`: {"base", "bare", "prepared"} -> ImageReport, built once, cached by content
  hash in the engine's persistent data root (`prepared` is built on first use only).
- `testbed_factory`: `factory(topology=None, image="bare", name=None) -> Testbed`, started and
  torn down at session end; use it for a second topology (DR drill) or a prepared-host bed.
- `split_testbed`: the issue-11 topology (postgres, redis, vault, broker1, broker2, proxy) with Vault
  as a raft cluster of three (issue 18: vault, postgres, redis in cullis_vault; `vault` is the first
  member, initialised once; CULLIS_SPLIT_VAULT_NODES=1 for one), on bare hosts, shared by the session;
  `split_testbed.write_inventory()` gives the inventory.

Everything is skipped, with the reason, on a machine that cannot run the engine (not root, no
dockerd/debootstrap, no Docker SDK). Tests that break a host must restore it or use a test bed
of their own from `testbed_factory`.
"""
from __future__ import annotations

import os

import pytest

from testkit.testbed import ISSUE11_TOPOLOGY

# Issue 18: the split topology with Vault as a raft cluster of three. The two more members share the
# database and cache hosts (`postgres`, `redis` join cullis_vault): three Vault failure domains
# without two more machines, so every playbook of the split stage still runs on six hosts (with two
# hosts of their own per member the stage measured ~2940 CPU-s against ~2156, and `make test` had no
# room for it). `vault` comes first (the topology's order is the inventory's): the first member,
# initialised once, node cullis-vault-1. The brokers reach the cluster through the balancer on their
# host. CULLIS_SPLIT_VAULT_NODES=1 gives the issue-11 topology with one Vault (test_ha_vault.py then
# skips, saying so).
SPLIT_VAULT_NODES = int(os.environ.get("CULLIS_SPLIT_VAULT_NODES", "3"))
SPLIT_VAULT_MEMBERS: tuple[str, ...] = ("vault", "postgres", "redis")[:max(1, SPLIT_VAULT_NODES)]
SPLIT_TOPOLOGY: dict[str, list[str]] = {"vault": ISSUE11_TOPOLOGY["vault"]}
for _name, _groups in ISSUE11_TOPOLOGY.items():
    if _name != "vault":
        SPLIT_TOPOLOGY[_name] = _groups + (["cullis_vault"] if _name in SPLIT_VAULT_MEMBERS else [])


@pytest.fixture(scope="session")
def docker_engine():
    from testkit.docker_engine import DockerEngine, docker_available

    reason = docker_available()
    if reason:
        pytest.skip(reason)
    engine = DockerEngine().start()
    yield engine
    engine.stop()


class _Images(dict):
    """Lazily built image reports; `images["prepared"]` builds the prepared image on first use."""

    def __init__(self, builder):
        super().__init__()
        self.builder = builder

    def __missing__(self, name):
        self.update(self.builder.ensure_all((name,)))
        return dict.__getitem__(self, name)


@pytest.fixture(scope="session")
def testbed_images(docker_engine):
    from testkit.docker_images import ImageBuilder

    images = _Images(ImageBuilder(docker_engine))
    images["bare"]  # builds base and bare now (or finds them in the cache)
    return images


@pytest.fixture(scope="session")
def testbed_factory(docker_engine, testbed_images, tmp_path_factory):
    from testkit.testbed import Testbed

    beds = []

    def factory(topology=None, image="bare", name=None, **kwargs):
        bed = Testbed(docker_engine, testbed_images[image].tag, name=name,
                      workdir=tmp_path_factory.mktemp(name or "testbed"), **kwargs)
        beds.append(bed)
        return bed.start(topology)

    yield factory
    for bed in beds:
        bed.teardown()


@pytest.fixture(scope="session")
def split_testbed(testbed_factory):
    """The issue-11 topology, postgres and redis also Vault members (CULLIS_SPLIT_VAULT_NODES=1: not), for the session."""
    return testbed_factory(SPLIT_TOPOLOGY, name="split")

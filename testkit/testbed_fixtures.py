"""Session fixtures of the multi-host test bed (loaded by the repository's root conftest.py).

- `docker_engine`: the kit's dockerd (testkit.docker_engine), stopped by PID at session end.
- `testbed_images`: {"base", "bare", "prepared"} -> ImageReport, built once, cached by content
  hash in the engine's persistent data root (`prepared` is built on first use only).
- `testbed_factory`: `factory(topology=None, image="bare", name=None) -> Testbed`, started and
  torn down at session end; use it for a second topology (DR drill) or a prepared-host bed.
- `split_testbed`: the issue-11 topology (postgres, redis, vault, broker1, broker2, proxy) with Vault
  as a raft cluster of three (issue 18: vault, vault2, vault3 in cullis_vault; `vault` is the first
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

# Issue 18: the split topology with Vault as a raft cluster of three: vault2 and vault3 join `vault` in
# cullis_vault (`vault` stays first: the member initialised once; the brokers reach the cluster through
# the balancer on their host). CULLIS_SPLIT_VAULT_NODES=1 gives the issue-11 topology with one Vault
# (a quicker local run); tests/e2e_split/test_ha_vault.py then skips, saying so.
SPLIT_VAULT_NODES = int(os.environ.get("CULLIS_SPLIT_VAULT_NODES", "3"))
SPLIT_TOPOLOGY: dict[str, list[str]] = {}
for _name, _groups in ISSUE11_TOPOLOGY.items():
    SPLIT_TOPOLOGY[_name] = _groups
    if _name == "vault":
        SPLIT_TOPOLOGY.update({f"vault{i}": ["cullis_vault"] for i in range(2, SPLIT_VAULT_NODES + 1)})


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
    """The issue-11 topology plus vault2, vault3 (CULLIS_SPLIT_VAULT_NODES=1: without), for the whole session."""
    return testbed_factory(SPLIT_TOPOLOGY, name="split")

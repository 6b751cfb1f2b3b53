"""testkit/loadgen.py against real brokers (broker_src on the session's Postgres, Redis, OpenBao).

The load generator is what tests/e2e_split/test_ha_brokers.py trusts to say "0 failed requests":
here it must count every request it makes on a healthy broker, and record the failures (with
their status and error) when its broker dies, and stop by itself within its duration.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from testkit.broker import BrokerProcess
from testkit.broker_orgs import new_org_id, onboard_org
from testkit.loadgen import LoadGen


@pytest.fixture(scope="module")
def two_agents(broker, redis_server, tmp_path_factory):
    identity_dir = tmp_path_factory.mktemp("loadgen-ids")
    onboard_org(broker, new_org_id("it-load"), identity_dir, 2, redis_server)
    return identity_dir


def test_healthy_broker_every_request_counted_none_failed(broker, two_agents):
    gen = LoadGen(broker.url, two_agents, ["a00", "a01"], calls=8, logins=2, duration=3)
    t0 = time.monotonic()
    report = gen.start().join()
    assert time.monotonic() - t0 < 3 + 10, "the load did not stop by itself within its duration"
    assert (report.sent, report.ok, report.logins, report.calls) == (10, 10, 2, 8), report.summary()
    assert report.failures == []


def test_broker_dies_failures_recorded(pg_server, redis_server, bao_server, two_agents):
    """A second broker on the same database (the org is there too): the load runs against it and
    it is killed half-way -> the requests after that are recorded as failed (transport errors)."""
    own = BrokerProcess(pg_server, redis_server, bao_server, env_overrides={"RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    try:
        gen = LoadGen(own.url, two_agents, ["a00", "a01"], calls=10, logins=2, duration=4)
        threading.Timer(2.0, own.proc.signal, (signal.SIGKILL,)).start()  # SIGTERM would only drain it
        report = gen.start().join()
    finally:
        own.cleanup()
    assert report.sent == 12 and 0 < report.ok < 12, report.summary()
    assert report.failed == 12 - report.ok
    assert all(f.status == 0 and ("unreachable" in f.detail or "connection lost" in f.detail)
               for f in report.failures), report.summary()


def test_only_loopback_or_test_bed_targets():
    with pytest.raises(ValueError, match="loopback"):
        LoadGen("https://8.8.8.8:8443", "/nonexistent", ["a00"], calls=1, logins=1, duration=1)
    with pytest.raises(ValueError, match="IP address"):
        LoadGen("https://broker.example.com", "/nonexistent", ["a00"], calls=1, logins=1, duration=1)

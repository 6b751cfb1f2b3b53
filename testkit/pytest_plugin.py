"""Session fixtures for real services. Loaded by the repository's root conftest.py.

Each fixture starts one real server on 127.0.0.1 on a free port in a temp dir and stops it by
PID at the end of the session. Tests that break a service (stop, seal) must put it back or use
a function-scoped server of their own (`PostgresServer().start()` etc. with try/finally).
"""
from __future__ import annotations

import pytest

from testkit.pki import CA
from testkit.services import OpenBaoServer, PostgresServer, RedisServer


@pytest.fixture(scope="session")
def test_ca() -> CA:
    return CA.create("Cullis Test Root CA")


@pytest.fixture(scope="session")
def pg_server():
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def bao_server(test_ca):
    """An initialised, unsealed OpenBao with KV v2 at secret/ and broker-policy."""
    server = OpenBaoServer(ca=test_ca).start().initialize()
    yield server
    server.cleanup()

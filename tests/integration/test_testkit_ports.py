"""The test kit's services and a port taken between the pick and the bind.

The stages of `make test` run side by side and each picks free ports: a port can be taken by another
stage after it was picked and before the service binds it. A CI run lost its OpenBao fixture that
way ("openbao: process exited with 1"). A service whose port the kit picked starts again on a new
one; a service given its port fails with the reason (PortClash) instead of a bare exit code.
Real servers (Redis, OpenBao), a real squatter socket.
"""
from __future__ import annotations

import socket

import pytest

from testkit.process import PortClash, free_port
from testkit.services import OpenBaoServer, RedisServer


@pytest.fixture
def squatter():
    """A socket listening on a port the kit handed out: what another stage's service would be."""
    sock = socket.socket()
    port = free_port()
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    yield port
    sock.close()


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_redis_whose_picked_port_was_taken_starts_on_another(squatter, tmp_path):
    server = RedisServer(base=tmp_path)
    server.port = squatter  # as if another stage bound it after the pick
    try:
        server.start()
        assert server.port != squatter and server.proc.running
        assert server.proc.lost_its_port() is False  # this (second) start's log
        assert "address already in use" in (tmp_path / "redis.log").read_text().lower()  # the first's
    finally:
        server.stop()


def test_redis_given_a_taken_port_fails_with_the_reason(squatter, tmp_path):
    server = RedisServer(base=tmp_path, port=squatter)
    try:
        with pytest.raises(PortClash, match="redis: process exited"):
            server.start()
        assert server.port == squatter  # a port the caller chose is never changed behind its back
    finally:
        server.stop()  # a start that wrongly succeeded leaves no server behind


def test_openbao_whose_api_port_was_taken_starts_on_new_ports(squatter):
    server = OpenBaoServer()
    server.port = squatter
    try:
        server.start()
        assert squatter not in (server.port, server.cluster_port) and server.proc.running
        assert server.status()["initialized"] is False
    finally:
        server.cleanup()

# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""BrokerClient retries idempotent writes after a 5xx or a lost connection (contract section 6,
point 20), with bounded backoff, records each retry, and never retries anything else.

A real HTTP server on 127.0.0.1 (http.server in a thread) scripts the answers per path.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import threading

import pytest

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ansible_collections.cullis.broker.plugins.module_utils import _broker
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, is_idempotent_write, retry_delay)


class ScriptedServer(object):
    """Answers each request for a path with the next status of its script (then 200); 'drop'
    closes the connection without an answer. Counts the requests per path."""

    def __init__(self):
        self.scripts = {}
        self.hits = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                script = owner.scripts.get(self.path, [])
                status = script.pop(0) if script else 200
                if status == 'drop':
                    self.close_connection = True
                    self.connection.close()
                    return
                body = json.dumps({'detail': 'Internal server error'} if status >= 500 else {'ok': True}).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(_broker, 'RETRY_BASE_DELAY', 0.01)  # keep the test fast; the bound is tested below
    s = ScriptedServer()
    yield s
    s.close()


def test_idempotent_writes_table():
    assert is_idempotent_write('POST', '/v1/registry/bindings/12/revoke')
    assert is_idempotent_write('POST', '/v1/admin/certs/revoke')
    assert is_idempotent_write('POST', '/v1/auth/revoke-agent/acme%3A%3Aa1')
    assert is_idempotent_write('POST', '/v1/admin/orgs/acme/suspend')
    assert not is_idempotent_write('POST', '/v1/registry/bindings/12/approve')  # 500 on re-approve
    assert not is_idempotent_write('POST', '/v1/registry/orgs')
    assert not is_idempotent_write('GET', '/v1/admin/certs/revoked')


def test_backoff_is_bounded():
    for attempt in range(1, 12):
        assert 0 < retry_delay(attempt) <= _broker.RETRY_MAX_DELAY * 1.5
    assert retry_delay(1) <= _broker.RETRY_BASE_DELAY * 1.5


def test_500_on_a_revocation_is_retried_and_recorded(server):
    warnings = []
    path = '/v1/registry/bindings/7/revoke'
    server.scripts[path] = [500, 503]
    client = BrokerClient(server.url, retries=3, warn=warnings.append)
    resp = client.request('POST', path)
    assert resp.status == 200
    assert server.hits[path] == 3
    assert [(r['retry'], r['outcome']) for r in client.retried] == [
        (1, 'HTTP 500 Internal server error'), (2, 'HTTP 503 Internal server error')]
    assert len(warnings) == 2 and 'retry 1 of 3' in warnings[0] and path in warnings[0]


def test_retries_are_bounded_and_the_last_answer_returned(server):
    path = '/v1/admin/certs/revoke'
    server.scripts[path] = [500] * 10
    client = BrokerClient(server.url, admin_secret='s', retries=2)
    resp = client.admin_post(path, {'serial_hex': 'a', 'org_id': 'o'})
    assert resp.status == 500 and server.hits[path] == 3 and len(client.retried) == 2


def test_lost_connection_is_retried(server):
    path = '/v1/auth/revoke-agent/o%3A%3Aa'
    server.scripts[path] = ['drop', 'drop', 'drop']
    client = BrokerClient(server.url, retries=3)
    assert client.request('POST', path).status == 200
    assert server.hits[path] == 4 and 'connection lost' in client.retried[0]['outcome']


def test_other_calls_and_retries_0_are_never_retried(server):
    server.scripts['/v1/registry/bindings/7/approve'] = [500]
    server.scripts['/v1/admin/certs/revoked'] = [500]
    server.scripts['/v1/registry/bindings/8/revoke'] = [500]
    client = BrokerClient(server.url, admin_secret='s', retries=3)
    assert client.request('POST', '/v1/registry/bindings/7/approve').status == 500
    assert client.admin_get('/v1/admin/certs/revoked').status == 500
    assert BrokerClient(server.url).request('POST', '/v1/registry/bindings/8/revoke').status == 500
    assert client.retried == [] and server.hits['/v1/registry/bindings/8/revoke'] == 1


def test_unreachable_broker_raises_after_the_retries(monkeypatch):
    monkeypatch.setattr(_broker, 'RETRY_BASE_DELAY', 0.01)
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = BrokerClient('http://127.0.0.1:%d' % port, retries=2)
    with pytest.raises(BrokerError) as failure:
        client.request('POST', '/v1/registry/bindings/1/revoke')
    assert 'unreachable' in str(failure.value) and len(client.retried) == 2

# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of _vault.py: keys-file parsing and permissions, key de-duplication, unseal
planning, durations, health summary, and the retry policy of VaultClient (against a refused
local port and a tiny in-process HTTP server answering 503: a faked boundary, no Vault)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import json
import os
import socket
import threading

import pytest

from ansible_collections.cullis.broker.plugins.module_utils._vault import (
    KeysError, VaultClient, VaultError, check_keys_file_mode, dedupe_keys, duration_seconds, health_state,
    normalize_key, parse_keys_document, plan_unseal, read_keys_file, read_root_token)

try:
    from http.server import BaseHTTPRequestHandler, HTTPServer
except ImportError:  # pragma: no cover
    pass

K1 = base64.b64encode(b'\x01' * 33).decode()
K2 = base64.b64encode(b'\x02' * 33).decode()
K3 = base64.b64encode(b'\x03' * 33).decode()


def write_keys(tmp_path, doc, mode=0o600):
    path = tmp_path / 'vault-keys.json'
    path.write_text(json.dumps(doc))
    os.chmod(str(path), mode)
    return str(path)


# ---- keys file -------------------------------------------------------------------------------

def test_parse_operator_init_output():
    doc = {'unseal_keys_b64': [K1, K2], 'unseal_keys_hex': ['aa', 'bb'], 'root_token': 's.x'}
    assert parse_keys_document(json.dumps(doc)) == [K1, K2]


def test_parse_older_vault_keys_base64():
    assert parse_keys_document(json.dumps({'keys_base64': [K3], 'keys': ['03' * 33]})) == [K3]


def test_parse_falls_back_to_hex_keys():
    assert parse_keys_document(json.dumps({'keys': ['03' * 33]})) == ['03' * 33]


@pytest.mark.parametrize('text,fragment', [
    ('not json', 'not valid JSON'),
    ('[1, 2]', 'JSON object'),
    ('{"root_token": "s.x"}', 'has no unseal keys'),
    ('{"unseal_keys_b64": "abc"}', 'list of non-empty strings'),
    ('{"unseal_keys_b64": ["", "x"]}', 'list of non-empty strings'),
])
def test_parse_rejects_bad_documents(text, fragment):
    with pytest.raises(KeysError) as exc:
        parse_keys_document(text)
    assert fragment in str(exc.value)


@pytest.mark.parametrize('mode', [0o640, 0o604, 0o644, 0o660, 0o602])
def test_group_or_world_accessible_keys_file_is_refused(tmp_path, mode):
    path = write_keys(tmp_path, {'unseal_keys_b64': [K1]}, mode)
    with pytest.raises(KeysError) as exc:
        read_keys_file(path)
    msg = str(exc.value)
    assert 'chmod 600' in msg and 'insecure_keys_file' in msg
    assert K1 not in msg


def test_insecure_flag_accepts_readable_keys_file(tmp_path):
    path = write_keys(tmp_path, {'unseal_keys_b64': [K1]}, 0o644)
    assert read_keys_file(path, insecure=True) == [K1]


def test_private_keys_file_is_accepted(tmp_path):
    path = write_keys(tmp_path, {'unseal_keys_b64': [K1, K2]}, 0o400)
    assert check_keys_file_mode(path) == 0o400
    assert read_keys_file(path) == [K1, K2]


def test_missing_keys_file_is_a_clear_error(tmp_path):
    with pytest.raises(KeysError) as exc:
        read_keys_file(str(tmp_path / 'nope.json'))
    assert 'cannot read keys_file' in str(exc.value)


def test_root_token_from_keys_file(tmp_path):
    path = write_keys(tmp_path, {'unseal_keys_b64': [K1], 'root_token': 's.root'})
    assert read_root_token(path) == 's.root'
    with pytest.raises(KeysError) as exc:
        read_root_token(write_keys(tmp_path, {'unseal_keys_b64': [K1]}))
    assert 'no root_token' in str(exc.value)


# ---- de-duplication --------------------------------------------------------------------------

def test_dedupe_keeps_order_and_reports_positions():
    unique, skipped = dedupe_keys([K1, K1, K2, K3, K2])
    assert unique == [(1, K1), (3, K2), (4, K3)]
    assert skipped == [(2, 1), (5, 3)]


def test_same_share_in_hex_and_base64_is_a_duplicate():
    hex_k1 = binascii.hexlify(base64.b64decode(K1)).decode()
    unique, skipped = dedupe_keys([hex_k1, K2, K1])
    assert [pair[0] for pair in unique] == [1, 2]
    assert skipped == [(3, 1)]


def test_whitespace_does_not_hide_a_duplicate():
    unique, skipped = dedupe_keys([K1, ' %s\n' % K1])
    assert len(unique) == 1 and skipped == [(2, 1)]


def test_malformed_key_is_kept_for_vault_to_reject():
    unique, skipped = dedupe_keys(['not a key!', K1])
    assert [pair[0] for pair in unique] == [1, 2] and skipped == []
    assert normalize_key('not a key!') is None


# ---- planning --------------------------------------------------------------------------------

def status(sealed=True, t=3, n=5, progress=0, initialized=True):
    return {'sealed': sealed, 't': t, 'n': n, 'progress': progress, 'initialized': initialized}


def test_unsealed_node_needs_nothing():
    plan = plan_unseal(status(sealed=False), 5)
    assert plan['action'] == 'none' and plan['submit'] == 0


def test_sealed_node_needs_threshold_keys_not_all_keys():
    plan = plan_unseal(status(), 5)
    assert plan == dict(action='unseal', reset=False, submit=3, reason=plan['reason'])


def test_stale_progress_is_reset_first():
    plan = plan_unseal(status(progress=2), 5)
    assert plan['action'] == 'unseal' and plan['reset'] is True and plan['submit'] == 3


def test_too_few_distinct_keys_is_impossible():
    plan = plan_unseal(status(), 2)
    assert plan['action'] == 'impossible' and '2 distinct key(s)' in plan['reason']


def test_uninitialized_node():
    assert plan_unseal(status(initialized=False, t=0, n=0), 5)['action'] == 'uninitialized'


# ---- durations, health -----------------------------------------------------------------------

@pytest.mark.parametrize('value,seconds', [
    (3600, 3600), ('3600', 3600), ('90s', 90), ('30m', 1800), ('72h', 259200), ('1h30m', 5400),
    ('7d', 604800), ('720h', 2592000)])
def test_durations(value, seconds):
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize('value', ['', 'soon', '10x', 'h'])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        duration_seconds(value)


@pytest.mark.parametrize('code,data,state', [
    (200, {'initialized': True, 'sealed': False, 'standby': False}, 'active'),
    (200, {'initialized': True, 'sealed': False, 'standby': True}, 'standby'),
    (200, {'initialized': True, 'sealed': True, 'standby': True}, 'sealed'),
    (200, {'initialized': False, 'sealed': True}, 'uninitialized'),
    (500, {}, 'error'),
])
def test_health_state(code, data, state):
    assert health_state(code, data) == state


# ---- retries ---------------------------------------------------------------------------------

def refused_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return port


def test_connection_refused_is_retried_with_backoff_then_reported():
    sleeps = []
    client = VaultClient('http://127.0.0.1:%d' % refused_port(), retries=3, retry_delay=0.5,
                         sleep=sleeps.append)
    with pytest.raises(VaultError) as exc:
        client.seal_status()
    assert sleeps == [0.5, 1.0, 2.0]
    assert 'unreachable' in str(exc.value)


class _Flaky(BaseHTTPRequestHandler):
    answers = []
    seen = []

    def do_GET(self):
        self.seen.append(self.path)
        code = self.answers.pop(0) if self.answers else 200
        body = json.dumps({'errors': ['busy']} if code >= 500 else {'sealed': False, 't': 3}).encode()
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = HTTPServer(('127.0.0.1', 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.seen[:] = []
    yield server
    server.shutdown()
    server.server_close()


def test_5xx_is_retried_until_success(flaky_server):
    _Flaky.answers[:] = [503, 502]
    sleeps = []
    client = VaultClient('http://127.0.0.1:%d' % flaky_server.server_port, retries=3, retry_delay=0.1,
                         sleep=sleeps.append)
    assert client.seal_status()['sealed'] is False
    assert len(_Flaky.seen) == 3 and sleeps == [0.1, 0.2]


def test_5xx_on_a_key_submission_is_not_resent(flaky_server):
    _Flaky.answers[:] = [500]
    client = VaultClient('http://127.0.0.1:%d' % flaky_server.server_port, retries=3, sleep=lambda s: None)
    resp = client.request('POST', 'sys/unseal', body={'key': K1}, idempotent=False)
    assert resp.status == 500 and len(_Flaky.seen) == 1


def test_retries_zero_fails_at_once():
    sleeps = []
    client = VaultClient('http://127.0.0.1:%d' % refused_port(), retries=0, sleep=sleeps.append)
    with pytest.raises(VaultError):
        client.seal_status()
    assert sleeps == []


@pytest.mark.parametrize('url', ['', 'ftp://x', 'vault:8200', None])
def test_bad_url_is_refused(url):
    with pytest.raises(VaultError) as exc:
        VaultClient(url)
    assert 'VAULT_ADDR' in str(exc.value)


def test_missing_ca_file_is_refused(tmp_path):
    with pytest.raises(VaultError) as exc:
        VaultClient('https://127.0.0.1:8200', ca_cert=str(tmp_path / 'none.pem'))
    assert 'does not exist' in str(exc.value)

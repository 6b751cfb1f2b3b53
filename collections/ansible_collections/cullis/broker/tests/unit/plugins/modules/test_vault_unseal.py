# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unseal logic of vault_unseal against a fake Shamir node (a faked boundary: the real server is
exercised by tests/integration/test_vault_modules.py). The fake behaves like Vault: a malformed or
repeated key is rejected with 400 and keeps the progress; a full set with a wrong share fails with
400 and resets the progress."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json

from ansible_collections.cullis.broker.plugins.module_utils._vault import VaultResponse, dedupe_keys
from ansible_collections.cullis.broker.plugins.modules.vault_unseal import NodeUnsealer

GOOD = [base64.b64encode(bytes([i]) * 33).decode() for i in range(1, 6)]
WRONG = base64.b64encode(b'\xee' * 33).decode()


class FakeNode(object):
    url = 'https://vault.test:8200'

    def __init__(self, threshold=3, progress_keys=None, sealed=True):
        self.t = threshold
        self.given = list(progress_keys or [])
        self.sealed = sealed
        self.submissions = []
        self.resets = 0

    def _status(self):
        return {'type': 'shamir', 'initialized': True, 'sealed': self.sealed, 't': self.t, 'n': 5,
                'progress': len(self.given), 'version': '2.7.2'}

    def seal_status(self):
        return self._status()

    def leader(self):
        return {'ha_enabled': True, 'is_self': True, 'leader_address': self.url}

    def request(self, method, path, body=None, token=None, idempotent=True, retry_5xx=True):
        assert path == 'sys/unseal' and not idempotent
        if body.get('reset'):
            self.resets += 1
            self.given = []
            return VaultResponse(200, json.dumps(self._status()).encode())
        key = body['key']
        self.submissions.append(key)
        if key not in GOOD and key != WRONG:
            return VaultResponse(400, b'{"errors":["\'key\' must be a valid hex or base64 string"]}')
        if key in self.given:
            return VaultResponse(400, b'{"errors":["given key has already been provided"]}')
        self.given.append(key)
        if len(self.given) >= self.t:
            ok = WRONG not in self.given
            self.given = []
            if not ok:
                return VaultResponse(400, b'{"errors":["cipher: message authentication failed"]}')
            self.sealed = False
        return VaultResponse(200, json.dumps(self._status()).encode())


class Mod(object):
    def __init__(self, check_mode=False):
        self.check_mode = check_mode


def run(node, keys, check_mode=False):
    unique = dedupe_keys(keys)[0]
    return NodeUnsealer(Mod(check_mode), node, unique).run()


def test_submits_only_threshold_keys():
    node = FakeNode()
    rep, changed = run(node, GOOD)
    assert changed and rep['action'] == 'unsealed' and rep['sealed'] is False
    assert node.submissions == GOOD[:3] and rep['keys_submitted'] == 3


def test_duplicate_in_input_does_not_waste_a_submission():
    node = FakeNode()
    rep, changed = run(node, [GOOD[0], GOOD[0], GOOD[1], GOOD[2]])
    assert changed and rep['action'] == 'unsealed'
    assert node.submissions == [GOOD[0], GOOD[1], GOOD[2]]
    assert rep['key_positions'] == [1, 3, 4]


def test_unsealed_node_is_left_alone():
    node = FakeNode(sealed=False)
    rep, changed = run(node, GOOD)
    assert not changed and rep['action'] == 'none' and node.submissions == []


def test_check_mode_submits_nothing():
    node = FakeNode()
    rep, changed = run(node, GOOD, check_mode=True)
    assert changed and rep['action'] == 'would_unseal' and rep['key_positions'] == [1, 2, 3]
    assert node.submissions == [] and node.resets == 0 and node.sealed


def test_malformed_key_names_position_and_resets():
    node = FakeNode()
    rep = run(node, [GOOD[0], 'garbage!', GOOD[1], GOOD[2]])[0]
    assert rep['action'] == 'failed'
    assert 'unseal key #2 was rejected' in rep['error'] and 'progress reset to 0/3' in rep['error']
    assert node.resets == 1 and node.given == [] and node.sealed
    assert 'garbage!' not in rep['error'] and GOOD[0] not in rep['error']


def test_wrong_share_at_threshold_names_the_set_and_resets():
    node = FakeNode()
    rep = run(node, [GOOD[0], WRONG, GOOD[2]])[0]
    assert rep['action'] == 'failed' and node.sealed
    assert 'unseal keys #1, #2, #3 did not unseal' in rep['error']
    assert WRONG not in rep['error'] and node.given == []


def test_stale_progress_is_reset_before_submitting():
    node = FakeNode(progress_keys=[GOOD[4]])
    rep, changed = run(node, GOOD[:3])
    assert changed and rep['action'] == 'unsealed' and rep['progress_reset'] is True
    assert node.resets == 1 and node.submissions == GOOD[:3]


def test_not_enough_distinct_keys_submits_nothing():
    node = FakeNode()
    rep, changed = run(node, [GOOD[0], GOOD[1], GOOD[0]])
    assert not changed and rep['action'] == 'impossible' and node.submissions == []
    assert '2 distinct key(s)' in rep['error']

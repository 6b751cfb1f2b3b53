# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit hash chain as the broker computes it (contract section 5, format v2)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.cullis.broker.plugins.module_utils import _audit_chain as ac

TS = '2026-04-12T02:00:00.123456'
# computed with the broker's own app/audit.py entry_hash_v2 (broker_src), so a drift of either side fails
BROKER_LOGIN_HASH = 'f331c174dbe6042942b1198d490910c79df068ca9ff25dd74fe9f7e21485a0d3'
BROKER_ADMIN_HASH = '4b305e7907567d76ba931571d7fd59b7ca731de43087d472103e7af3a77b09ae'


def row(org, seq, previous, event='agent.login', details='{}', principal='agent', peer=None):
    r = dict(org_id=org, chain_seq=seq, previous_hash=previous, timestamp=TS, event_type=event,
             agent_id='%s::a1' % org, session_id=None, result='ok', details=details, peer_org_id=peer,
             principal_type=principal, hash_format='v2')
    r['entry_hash'] = ac.entry_hash_v2(ac.parse_utc(TS), event, r['agent_id'], None, org, 'ok', details,
                                       previous, seq, peer, principal)
    return r


def chain(org, n):
    rows, previous = [], None
    for seq in range(1, n + 1):
        r = row(org, seq, previous)
        rows.append(r)
        previous = r['entry_hash']
    return rows


def test_hash_matches_the_broker():
    ts = datetime.datetime(2026, 4, 12, 2, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    first = ac.entry_hash_v2(ts, 'agent.login', 'acme::a1', None, 'acme', 'ok', '{"ip": "127.0.0.1"}', None, 1, None)
    assert first == BROKER_LOGIN_HASH
    assert ac.entry_hash_v2(ts, 'org.suspended', None, None, 'acme', 'ok', '{}', first, 2, 'beta',
                            principal_type='admin') == BROKER_ADMIN_HASH


def test_intact_chains_of_several_orgs_in_any_order():
    rows = chain('acme', 4) + chain('beta', 3)
    problems, last = ac.verify_chain(list(reversed(rows)))
    assert problems == []
    assert last['acme'] == (4, rows[3]['entry_hash']) and last['beta'][0] == 3


def test_altered_row_missing_row_and_broken_link_are_named():
    rows = chain('acme', 4)
    rows[1]['details'] = '{"edited": true}'
    assert ac.verify_chain(rows)[0] == ['acme: seq 2 entry_hash mismatch']
    rows = chain('acme', 4)
    del rows[2]
    assert ac.verify_chain(rows)[0] == ['acme: gap before seq 4', 'acme: seq 4 previous_hash does not link']
    rows = chain('acme', 3)
    rows[2]['previous_hash'] = 'f' * 64
    problems = ac.verify_chain(rows)[0]
    assert 'acme: seq 3 previous_hash does not link' in problems


def test_chain_continues_from_an_archive_anchor():
    rows = chain('acme', 5)
    anchors = {'acme': (2, rows[1]['entry_hash'])}
    assert ac.verify_chain(rows[2:], anchors)[0] == []
    # without the anchor the remaining rows do not start at genesis
    assert ac.verify_chain(rows[2:])[0][0] == 'acme: gap before seq 3'

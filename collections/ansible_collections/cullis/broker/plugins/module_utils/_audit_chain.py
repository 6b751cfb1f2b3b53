# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the broker's per-org audit hash chain (contract section 5, format v2).

Not a public API of the collection. Recomputes `entry_hash` exactly as the broker does and
verifies chains that may start at an anchor (the last archived entry) instead of genesis.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib

GENESIS = 'genesis'

try:
    UTC = datetime.timezone.utc
except AttributeError:  # pragma: no cover - Python 2
    UTC = None


def parse_utc(text):
    """'YYYY-MM-DDTHH:MM:SS.ffffff' (UTC, as selected with to_char) -> aware datetime."""
    return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=UTC)


def entry_hash_v2(ts, event_type, agent_id, session_id, org_id, result, details, previous_hash, seq,
                  peer_org_id, principal_type='agent'):
    def s(v):
        return '' if v is None else str(v)
    text = 'v2|%s|%s|%s|%s|%s|%s|%s|%s|seq=%d|peer=%s' % (
        ts.isoformat(), s(event_type), s(agent_id), s(session_id), s(org_id), s(result), s(details),
        previous_hash or GENESIS, int(seq), s(peer_org_id))
    if principal_type and principal_type != 'agent':
        text += '|pt=%s' % principal_type
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


class ChainVerifier(object):
    """Verify audit rows streamed in (org_id, chain_seq) order, one org chain after another.

    `anchors` maps org_id -> (chain_seq, entry_hash) of the entry before an org's first row
    (archived earlier); without one a chain must start at seq 1 from genesis. Rows are dicts of
    the audit_log columns with `timestamp` as parse_utc() text."""

    def __init__(self, anchors=None):
        self.anchors = dict(anchors or {})
        self.last = {}
        self.first = {}
        self.problems = []
        self.rows = 0

    def add(self, r):
        org = r['org_id']
        prev_seq, prev_hash = self.last.get(org, self.anchors.get(org, (0, None)))
        seq = int(r['chain_seq'])
        self.first.setdefault(org, seq)
        if seq != prev_seq + 1:
            self.problems.append('%s: gap before seq %d' % (org, seq))
        if (r['previous_hash'] or None) != (prev_hash or None):
            self.problems.append('%s: seq %d previous_hash does not link' % (org, seq))
        if (r.get('hash_format') or 'v2') == 'v2':
            expected = entry_hash_v2(parse_utc(r['timestamp']), r['event_type'], r['agent_id'], r['session_id'], org,
                                     r['result'], r['details'], r['previous_hash'], seq, r['peer_org_id'],
                                     r['principal_type'])
            if expected != r['entry_hash']:
                self.problems.append('%s: seq %d entry_hash mismatch' % (org, seq))
        self.last[org] = (seq, r['entry_hash'])
        self.rows += 1


def verify_chain(rows, anchors=None):
    """Verify a list of rows (any order); returns (problems, last per org)."""
    v = ChainVerifier(anchors)
    for r in sorted(rows, key=lambda r: (r['org_id'], int(r['chain_seq']))):
        v.add(r)
    return v.problems, v.last

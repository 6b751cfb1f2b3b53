#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: audit_chain_info
short_description: Verify the broker's live audit hash chains in PostgreSQL (read-only)
version_added: 0.1.0
description:
  - Reads every row of the broker's C(audit_log) (org by org, in C(chain_seq) order) and recomputes
    each C(entry_hash) (format v2) and each C(previous_hash) link, from genesis or from the anchor
    C(audit_archive) recorded when older rows were archived (C(cullis_ops.audit_anchors)).
  - Reports the number of rows and orgs and the problems found (gaps, broken links, hash mismatches);
    never changes anything. Used after an upgrade to prove the migrations kept the audit history intact.
requirements:
  - psycopg2 (Debian C(python3-psycopg2)) on the host the module runs on; the C(cullis.broker.postgres) role
    installs it on database hosts.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.postgres
  - cullis.broker.info_module
options:
  database:
    description: The broker's database.
    type: str
    default: agent_trust
    aliases: [db]
"""

EXAMPLES = r"""
- name: The audit chain still verifies
  cullis.broker.audit_chain_info:
    login_host: "{{ cullis_stack_dir }}/postgres/sock"
    login_port: "{{ cullis_postgres_port }}"
  register: audit

- name: Stop when it does not
  ansible.builtin.assert:
    that: audit.verified
    fail_msg: "{{ audit.problems | join('; ') }}"
"""

RETURN = r"""
verified:
  description: Every chain verifies (no problem found).
  type: bool
  returned: success
rows:
  description: Audit rows read.
  type: int
  returned: success
orgs:
  description: Number of org chains.
  type: int
  returned: success
problems:
  description: "The first 50 problems: C(<org>: gap before seq N), C(... previous_hash does not link), C(... entry_hash mismatch)."
  type: list
  elements: str
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.cullis.broker.plugins.module_utils._audit_chain import ChainVerifier
from ansible_collections.cullis.broker.plugins.module_utils._postgres import (
    PostgresConnection, PostgresError, postgres_argument_spec, require_psycopg2)

COLUMNS = ['timestamp', 'event_type', 'agent_id', 'session_id', 'org_id', 'details', 'result', 'entry_hash',
           'previous_hash', 'chain_seq', 'peer_org_id', 'principal_type', 'hash_format']
# the timestamp exactly as the broker hashed it (UTC, microseconds)
TIMESTAMP = "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
ANCHORS = ("SELECT DISTINCT ON (org_id) org_id, chain_seq, entry_hash FROM cullis_ops.audit_anchors "
           "ORDER BY org_id, chain_seq DESC")


def audit_rows_query():
    """One JSON object per audit row (psycopg2 decodes it to a dict), org by org in chain order."""
    sql = require_psycopg2().sql
    fields = sql.SQL(', ').join(
        sql.SQL('{}, {}').format(sql.Literal(c), sql.SQL(TIMESTAMP) if c == 'timestamp' else sql.Identifier(c))
        for c in COLUMNS)
    return sql.SQL("SELECT json_build_object({}) FROM audit_log ORDER BY org_id, chain_seq").format(fields)


def verify(conn, db):
    """Stream the audit rows of `db` through a ChainVerifier (rows are never all held in memory)."""
    with conn.pg_session(db) as s:
        anchors = {}
        if s.value("SELECT to_regclass(%s) IS NOT NULL", ('cullis_ops.audit_anchors',)):
            anchors = dict((org, (int(seq), digest)) for org, seq, digest in s.query(ANCHORS))
        verifier = ChainVerifier(anchors)
        for (row,) in s.stream(audit_rows_query()):
            verifier.add(row)
    return verifier


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(database=dict(type='str', default='agent_trust', aliases=['db']))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    conn = PostgresConnection(module.params)
    try:
        verifier = verify(conn, module.params['database'])
    except PostgresError as e:
        module.fail_json(msg=conn.scrub(to_native(e)))
    module.exit_json(changed=False, verified=not verifier.problems, rows=verifier.rows, orgs=len(verifier.last),
                     problems=verifier.problems[:50])


if __name__ == '__main__':
    main()

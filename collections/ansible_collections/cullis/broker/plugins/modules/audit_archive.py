#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: audit_archive
short_description: Archive old audit_log rows to a verified file, then delete them keeping the chain verifiable
description:
  - Runbook section 2, Recover 2 (disk full) says "audit_log is append-only; safe to archive rows
    older than N days to cold storage". Done naively this breaks the per-org hash chain and is
    refused by the append-only trigger. This module does it safely.
  - "V(present): per organisation, the rows older than O(older_than_days) are archived, always a
    prefix of the org's chain and B(never its newest entry), so the broker keeps appending to the
    same chain. The rows are streamed to a gzip JSON-lines file in O(dest) (atomic write, SHA-256,
    manifest). The archive is then re-read and verified (checksum, row count, every v2 C(entry_hash)
    recomputed, every link checked, starting at the previous archive's anchor). Only then the rows
    are deleted in B(one) transaction that lifts the append-only trigger for that transaction alone
    (C(SET LOCAL session_replication_role = replica) as a superuser, else C(ALTER TABLE ... DISABLE
    TRIGGER) and C(ENABLE TRIGGER) inside the transaction, under its exclusive lock), checks the
    deleted count equals the archived count, and records per org the chain anchor (last archived
    C(chain_seq) and C(entry_hash)) in C(cullis_ops.audit_anchors) and in the archive manifest.
    After commit it checks that each org's first remaining row links to its anchor and that the
    trigger is enabled. O(vacuum=true) then runs C(VACUUM) so the space is reusable."
  - V(verified) re-verifies an archive file against its manifest (checksum and chain).
version_added: 0.1.0
requirements:
  - psycopg2 (Debian C(python3-psycopg2)) on the host the module runs on; the C(cullis.broker.postgres) role
    installs it on database hosts.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.postgres
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Reports per org how many rows would be archived; nothing is written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: With nothing older than O(older_than_days) left, nothing changes.
options:
  state:
    description: Archive (V(present)) or verify an archive (V(verified)).
    type: str
    choices: [present, verified]
    default: present
  database:
    description: The broker database.
    type: str
    default: agent_trust
    aliases: [db]
  older_than_days:
    description: Archive rows older than this many days. V(0) archives everything but each org's newest entry.
    type: float
    default: 90
  dest:
    description: Directory for the archive (ideally on another volume than the database). Required for V(present).
    type: path
  path:
    description: Archive file to verify (V(verified)).
    type: path
  vacuum:
    description: Run C(VACUUM audit_log) after the delete so the freed space is reusable.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Disk full - archive audit rows older than 30 days to cold storage
  cullis.broker.audit_archive:
    database: agent_trust
    older_than_days: 30
    dest: /mnt/cold/cullis-audit
    login_host: /srv/cullis/postgres/sock
    login_port: 5432
    login_user: postgres

- name: Prove an archive still verifies
  cullis.broker.audit_archive:
    state: verified
    path: /mnt/cold/cullis-audit/audit_agent_trust_20260412T020000000Z.jsonl.gz
"""

RETURN = r"""
archive_path:
  description: The archive written or verified.
  returned: when an archive was written or verified
  type: str
sha256:
  description: SHA-256 of the archive file.
  returned: when an archive was written or verified
  type: str
rows:
  description: Rows archived (and deleted), or to archive in check mode.
  returned: always
  type: int
orgs:
  description: Per org, C(rows), C(first_seq), C(last_seq) and the anchor C(anchor_seq) / C(anchor_hash).
  returned: always
  type: dict
cutoff:
  description: Rows with a timestamp before this (UTC) were candidates.
  returned: state=present
  type: str
manifest:
  description: The archive manifest.
  returned: when an archive was written or verified
  type: dict
"""

import gzip
import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb
from ansible_collections.cullis.broker.plugins.module_utils._audit_chain import ChainVerifier
from ansible_collections.cullis.broker.plugins.module_utils._postgres import (
    PostgresConnection, PostgresError, postgres_argument_spec, require_psycopg2, sql_identifier)

KIND = 'cullis.broker.audit_archive/v1'
TRIGGER = 'audit_log_no_update_or_delete'
COLUMNS = ['id', 'timestamp', 'event_type', 'agent_id', 'session_id', 'org_id', 'details', 'result', 'entry_hash',
           'previous_hash', 'chain_seq', 'peer_org_id', 'peer_row_hash', 'principal_type', 'hash_format']
# {owner} is composed with psycopg2.sql.Identifier (the owner of audit_log), never formatted in.
ANCHOR_DDL = """
CREATE SCHEMA IF NOT EXISTS cullis_ops AUTHORIZATION {owner};
CREATE TABLE IF NOT EXISTS cullis_ops.audit_anchors (
    id bigserial PRIMARY KEY,
    org_id varchar(128) NOT NULL,
    chain_seq bigint NOT NULL,
    entry_hash varchar(64) NOT NULL,
    archived_rows bigint NOT NULL,
    archive_file text NOT NULL,
    archive_sha256 varchar(64) NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, chain_seq)
);
"""
# A superuser creates them for the owner of audit_log, so the broker's role can archive next time.
ANCHOR_OWNER = "ALTER TABLE cullis_ops.audit_anchors OWNER TO {owner};"
# The per-org bounds travel as two bound arrays: unnest(%s::text[], %s::bigint[]) AS b(org, maxseq).
BOUNDS = "unnest(%s::text[], %s::bigint[]) AS b(org, maxseq)"
EXPORT_COLUMNS = ', '.join("'%s', %s" % (c, "to_char(a.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
                                         if c == 'timestamp' else 'a.' + c) for c in COLUMNS)


def bound_arrays(bounds):
    orgs = sorted(bounds)
    return [orgs, [bounds[org] for org in orgs]]


def read_archive(path):
    with gzip.open(path, 'rt') as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class Archive(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.conn = PostgresConnection(self.p)
        self.result = dict(changed=False, rows=0, orgs={})

    def anchors(self, s):
        if not s.value("SELECT to_regclass('cullis_ops.audit_anchors') IS NOT NULL"):
            return {}
        rows = s.query("SELECT DISTINCT ON (org_id) org_id, chain_seq, entry_hash FROM cullis_ops.audit_anchors "
                       "ORDER BY org_id, chain_seq DESC")
        return dict((org, (int(seq), h)) for org, seq, h in rows)

    @staticmethod
    def bounds(s, cutoff):
        """Per org, the last chain_seq to archive: rows older than the cutoff, never the newest entry."""
        rows = s.query("SELECT org_id, min(chain_seq), max(chain_seq) FILTER (WHERE timestamp < %s::timestamptz), "
                       "max(chain_seq) FROM audit_log GROUP BY org_id ORDER BY org_id", (cutoff,))
        bounds, counts = {}, {}
        for org, first, old_max, last in rows:
            if not old_max:
                continue
            bound = min(int(old_max), int(last) - 1)
            if bound >= int(first):
                bounds[org] = bound
                counts[org] = bound - int(first) + 1
        return bounds, counts

    def present(self):
        db = self.p['database']
        if not self.p['dest']:
            raise pb.BackupError("dest (the archive directory) is required")
        now = time.time()
        cutoff = pb.utc_iso(now - self.p['older_than_days'] * 86400)
        self.result['cutoff'] = cutoff
        with self.conn.pg_session(db) as s:
            anchors = self.anchors(s)
            bounds, counts = self.bounds(s, cutoff)
            self.result['orgs'] = dict((org, dict(rows=counts[org], last_seq=bounds[org])) for org in bounds)
            self.result['rows'] = sum(counts.values())
            if not bounds:
                return
            if self.module.check_mode:
                self.result['changed'] = True
                return
            dest = self.p['dest']
            if not os.path.isdir(dest):
                try:
                    os.makedirs(dest, 0o700)
                except (IOError, OSError) as e:
                    raise pb.BackupError("cannot create the archive directory (nothing was deleted): %s"
                                         % pb.describe_os_error(e, dest))
            path = os.path.join(dest, 'audit_%s_%s.jsonl.gz' % (db, pb.utc_stamp(now)))
            written = self.export(s, path, bounds)
            self.result['changed'] = True  # from here on the archive file exists (removed again on failure)
            try:
                manifest = self.verify_file(path, dict(anchors_before=self.anchor_doc(anchors, bounds)), written)
                manifest.update(kind=KIND, database=db, file=os.path.basename(path), cutoff=cutoff,
                                created=pb.utc_iso(now), older_than_days=self.p['older_than_days'])
                pb.write_sidecars(path, manifest, 'archive')
            except Exception:
                for p in (path, pb.manifest_path(path), pb.checksum_path(path)):
                    pb.remove_path(p)
                self.result['changed'] = False
                raise
            self.result.update(archive_path=path, sha256=manifest['sha256'], manifest=manifest)
            self.delete(s, bounds, manifest)
            self.post_check(s, manifest)
            for org, info in manifest['orgs'].items():
                self.result['orgs'][org].update(info)
            if self.p['vacuum']:
                s.execute("VACUUM audit_log")  # the session is in autocommit mode, as VACUUM needs

    @staticmethod
    def anchor_doc(anchors, bounds):
        return dict((org, dict(chain_seq=anchors[org][0], entry_hash=anchors[org][1]) if org in anchors else None)
                    for org in bounds)

    def export(self, s, path, bounds):
        """Stream the rows to archive (server-side cursor) into a gzip JSON-lines file, atomically."""
        statement = ("SELECT json_build_object(%s)::text FROM audit_log a JOIN %s "
                     "ON a.org_id = b.org AND a.chain_seq <= b.maxseq ORDER BY a.org_id, a.chain_seq"
                     % (EXPORT_COLUMNS, BOUNDS))
        rows = 0
        try:
            with pb.AtomicFile(path) as af:
                gz = gzip.GzipFile(filename='', mode='wb', fileobj=af, mtime=0)
                for (line,) in s.stream(statement, bound_arrays(bounds)):
                    gz.write(line.encode('utf-8') + b'\n')
                    rows += 1
                gz.close()
                af.commit()
        except PostgresError as e:
            raise pb.BackupError("reading audit rows failed (nothing was deleted): %s" % e)
        except (IOError, OSError) as e:
            raise pb.BackupError("writing the archive failed (nothing was deleted): %s"
                                 % pb.describe_os_error(e, os.path.dirname(path)))
        return rows

    def verify_file(self, path, manifest, expected_rows=None):
        """Checksum, gzip integrity, row count, and the chain from the recorded anchors."""
        anchors = dict((org, (a['chain_seq'], a['entry_hash'])) for org, a in manifest['anchors_before'].items() if a)
        verifier = ChainVerifier(anchors)
        try:
            for row in read_archive(path):
                verifier.add(row)
        except (IOError, OSError, EOFError, ValueError) as e:
            raise pb.BackupError("archive %s is unreadable or truncated: %s" % (os.path.basename(path), e))
        if expected_rows is not None and verifier.rows != expected_rows:
            raise pb.BackupError("archive %s holds %d rows, %d were exported" % (path, verifier.rows, expected_rows))
        if verifier.problems:
            raise pb.BackupError("audit chain in archive %s does not verify: %s"
                                 % (os.path.basename(path), '; '.join(verifier.problems[:10])))
        orgs = dict((org, dict(rows=verifier.last[org][0] - verifier.first[org] + 1, first_seq=verifier.first[org],
                               last_seq=verifier.last[org][0], anchor_seq=verifier.last[org][0],
                               anchor_hash=verifier.last[org][1])) for org in verifier.last)
        out = dict(manifest)
        out.update(sha256=pb.sha256_file(path), size=os.path.getsize(path), rows=verifier.rows, orgs=orgs,
                   chain_verified=True)
        return out

    def delete(self, s, bounds, manifest):
        """One transaction: lift the append-only trigger for it alone, delete exactly the archived
        rows (else roll back), record the anchors."""
        sql = require_psycopg2().sql
        superuser = s.value("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        owner = sql_identifier(s.value("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                       "WHERE oid = 'audit_log'::regclass"))
        ddl = sql.SQL(ANCHOR_DDL + (ANCHOR_OWNER if superuser else '')).format(owner=owner)
        trigger = sql_identifier(TRIGGER)
        with s.transaction() as cur:
            s.execute(ddl, cursor=cur)
            if superuser:
                s.execute("SET LOCAL session_replication_role = replica", cursor=cur)
            else:
                s.execute(sql.SQL("ALTER TABLE audit_log DISABLE TRIGGER {}").format(trigger), cursor=cur)
            deleted = s.execute("DELETE FROM audit_log a USING %s WHERE a.org_id = b.org AND a.chain_seq <= b.maxseq"
                                % BOUNDS, bound_arrays(bounds), cursor=cur)
            if deleted != manifest['rows']:
                raise pb.BackupError("deleted %d audit rows but %d were archived; rolled back (nothing was deleted)"
                                     % (deleted, manifest['rows']))
            if not superuser:
                s.execute(sql.SQL("ALTER TABLE audit_log ENABLE TRIGGER {}").format(trigger), cursor=cur)
            for org, info in sorted(manifest['orgs'].items()):
                s.execute("INSERT INTO cullis_ops.audit_anchors (org_id, chain_seq, entry_hash, archived_rows, "
                          "archive_file, archive_sha256) VALUES (%s, %s, %s, %s, %s, %s)",
                          (org, info['anchor_seq'], info['anchor_hash'], info['rows'], manifest['file'],
                           manifest['sha256']), cursor=cur)
        self.result['trigger_bypass'] = 'session_replication_role' if superuser else 'disable_trigger'

    def post_check(self, s, manifest):
        state = s.value("SELECT tgenabled FROM pg_trigger WHERE tgname = %s AND tgrelid = 'audit_log'::regclass",
                        (TRIGGER,))
        if state not in ('O', 'A'):
            raise pb.BackupError("the append-only trigger %s is not enabled after the archive (state %s); enable it: "
                                 "ALTER TABLE audit_log ENABLE TRIGGER %s" % (TRIGGER, state, TRIGGER))
        problems = []
        for org, info in manifest['orgs'].items():
            rows = s.query("SELECT chain_seq, coalesce(previous_hash, '') FROM audit_log WHERE org_id = %s "
                           "ORDER BY chain_seq LIMIT 1", (org,))
            if not rows or int(rows[0][0]) != info['anchor_seq'] + 1 or rows[0][1] != info['anchor_hash']:
                problems.append(org)
        if problems:
            raise pb.BackupError("after the archive the remaining chain of %s does not link to its anchor"
                                 % ', '.join(problems))

    def verified(self):
        path = self.p['path']
        if not path:
            raise pb.BackupError("path (the archive file) is required for state=verified")
        manifest = pb.read_manifest(path)
        if not manifest or manifest.get('kind') != KIND:
            raise pb.BackupError("%s has no audit archive manifest beside it" % path)
        if pb.sha256_file(path) != manifest['sha256']:
            raise pb.BackupError("checksum mismatch for %s: the archive is truncated or altered" % path)
        checked = self.verify_file(path, manifest, manifest['rows'])
        self.result.update(archive_path=path, sha256=checked['sha256'], manifest=manifest, rows=checked['rows'],
                           orgs=checked['orgs'])


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        state=dict(type='str', default='present', choices=['present', 'verified']),
        database=dict(type='str', default='agent_trust', aliases=['db']),
        older_than_days=dict(type='float', default=90),
        dest=dict(type='path'),
        path=dict(type='path'),
        vacuum=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    days = module.params['older_than_days']
    if not days >= 0 or days == float('inf'):  # also refuses NaN
        module.fail_json(msg="older_than_days must be a number of days >= 0 (got %r): a negative value would put the "
                         "cutoff in the future and archive (delete) nearly every audit row; nothing was changed"
                         % days)
    job = Archive(module)
    try:
        job.present() if module.params['state'] == 'present' else job.verified()
    except (pb.BackupError, PostgresError) as e:
        module.fail_json(msg=job.conn.scrub(to_native(e)), **job.result)
    except (IOError, OSError) as e:
        where = getattr(e, 'filename', None) or module.params['dest'] or module.params['path'] or '.'
        msg = "state=%s failed: %s" % (module.params['state'], pb.describe_os_error(e, where))
        module.fail_json(msg=job.conn.scrub(msg), **job.result)
    module.exit_json(**job.result)


if __name__ == '__main__':
    main()

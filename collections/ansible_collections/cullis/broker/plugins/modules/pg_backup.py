#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_backup
short_description: Take, verify, restore and prune checksummed PostgreSQL backups
description:
  - V(present) takes a backup of one database with C(pg_dump) into O(dest), written atomically (a
    hidden temporary file in O(dest), fsync, rename), with a C(.sha256) file and a JSON manifest
    (database, server version, start and end time, size, SHA-256, format, exact row count per table
    taken in the same snapshot as the dump) beside it. A lock file makes a second concurrent backup
    of the same database fail at once.
  - V(restored) checks the checksum (and decrypts) B(before) touching any database, restores into a
    new database with every SQL error fatal, compares the row counts with the manifest, then swaps
    it in by rename, keeping the replaced database as C(<db>_pre_restore_<timestamp>).
  - V(verified) restores into a scratch database and compares row counts (O(quick=true) checks
    only the checksum and the encryption). It is read-only unless O(record=true), which writes the
    result into the manifest (what C(backup_set state=latest verified_only=true) and retention read).
    A key problem (no key, a key file others can read, not the key the backup was made with) fails
    with "cannot verify with this key" and is never recorded.
  - V(pruned) applies O(keep_last) / O(keep_days) and never deletes the newest verified backup.
  - Plain C(.sql.gz) files made by the runbook's C(scripts/pg-backup.sh) (no manifest) restore too.
version_added: 0.1.0
requirements:
  - psycopg2 (Debian C(python3-psycopg2)) on the host the module runs on; the C(cullis.broker.postgres) role
    installs it on database hosts.
  - The PostgreSQL 15 client programs C(pg_dump), C(pg_restore) and C(psql) in O(pg_bin_dir).
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.postgres
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Reports the plan (file name, databases to create, rename or delete). In V(restored)
      and V(verified) the read-only integrity check of the backup file still runs.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: partial
    details: V(pruned) is idempotent. V(present) takes a new backup on every run; V(restored)
      restores on every run.
options:
  state:
    description: What to do.
    type: str
    choices: [present, restored, verified, pruned]
    default: present
  database:
    description:
      - Database to back up; for V(restored) the database to replace (default the manifest's).
    type: str
    required: true
    aliases: [db]
  dest:
    description:
      - Backup directory. Required for V(present) and V(pruned). For V(restored) without O(path) the
        newest verified backup of O(database) in it is used (else the newest); for V(verified) the newest.
    type: path
  path:
    description: A backup file or directory, for V(restored) and V(verified).
    type: path
  format:
    description:
      - V(custom) is C(pg_dump -Fc); V(plain) is SQL compressed with gzip (C(.sql.gz)), what the
        runbook's scripts make; V(directory) is C(pg_dump -Fd) with O(jobs) parallel workers.
      - For V(restored) and V(verified) the format comes from the manifest or the file name.
    type: str
    choices: [custom, plain, directory]
    default: custom
  jobs:
    description: Parallel jobs for V(directory) dumps and for restores of unencrypted V(custom)/V(directory) backups.
    type: int
    default: 1
  compress_level:
    description: Compression level 0-9.
    type: int
    default: 6
  encryption_key_file:
    description:
      - File holding a 256-bit key (32 raw bytes, 64 hex characters or base64). When set, V(custom)
        and V(plain) backups are encrypted with AES-256-GCM in 1 MiB authenticated chunks (memory
        use does not grow with the dump). Needed again to verify or restore them.
      - Like every key file of the collection it must be readable by its owner only (mode 0600);
        a file group or others can read is refused.
    type: path
  keep_last:
    description: With V(pruned) (or after V(present)), keep the newest N backups of O(database).
    type: int
  keep_days:
    description: With V(pruned) (or after V(present)), keep backups younger than N days.
    type: int
  quick:
    description: With V(verified), check checksum and encryption only, no scratch restore.
    type: bool
    default: false
  record:
    description:
      - With V(verified), write the result (C(ok) or C(failed), mode, time, error) into the manifest's
        C(verification). Without it verification changes nothing. Key problems are never recorded.
    type: bool
    default: false
  confirm:
    description:
      - Must be V(true) for V(restored) to replace an existing database (its connections are
        terminated; it is kept as C(<db>_pre_restore_<timestamp>)).
    type: bool
    default: false
  no_owner:
    description: Restore without the dump's ownership (objects owned by O(login_user)).
    type: bool
    default: false
notes:
  - Secrets (the password, the key) are never in argv, output or logs.
  - Directory-format backups cannot be encrypted; encrypt the backup volume instead.
  - Only the owner of the backup lock runs; a killed run leaves at most a hidden C(.*.partial-*)
    file which the next backup of that database removes.
seealso:
  - module: community.postgresql.postgresql_db
"""

EXAMPLES = r"""
- name: Take an encrypted backup and keep the last 7
  cullis.broker.pg_backup:
    database: agent_trust
    dest: /var/backups/cullis
    login_host: 127.0.0.1
    login_port: 55432
    login_user: atn
    login_password: "{{ postgres_password }}"
    encryption_key_file: /etc/cullis/backup.key
    keep_last: 7
  no_log: false

- name: Verify the newest backup by restoring it into a scratch database, and record the result
  cullis.broker.pg_backup:
    state: verified
    database: agent_trust
    dest: /var/backups/cullis
    encryption_key_file: /etc/cullis/backup.key
    record: true

- name: Restore a runbook-made dump over the live database
  cullis.broker.pg_backup:
    state: restored
    database: agent_trust
    path: /var/backups/agent_trust-2026-04-12.sql.gz
    confirm: true

- name: Keep 14 days of backups (the newest verified one always stays)
  cullis.broker.pg_backup:
    state: pruned
    database: agent_trust
    dest: /var/backups/cullis
    keep_days: 14
"""

RETURN = r"""
backup_path:
  description: The backup file or directory taken, verified or restored.
  returned: when a backup was selected
  type: str
manifest:
  description: The backup's manifest (row counts, checksum, times, verification record).
  returned: when a backup was selected
  type: dict
sha256:
  description: SHA-256 of the backup file (for directories, of the sorted per-file checksums).
  returned: when a backup was selected
  type: str
backup_time:
  description: Start time (UTC) of the backup; for a restore this is the end of the data-loss window.
  returned: when a backup was selected
  type: str
size:
  description: Size in bytes of the backup written (for directories, of all its files).
  returned: state=present, when a backup was written
  type: int
verification:
  description:
    - The verification record (also stored in the backup's manifest when O(record=true)) with
      C(status) (V(ok) or V(failed)), C(mode) (V(quick) or V(restore)), C(at) (UTC time) and C(error).
  returned: state=verified
  type: dict
row_counts:
  description: Row count per table (C(schema.table)) found after a restore or verification.
  returned: restored, verified (not quick)
  type: dict
plan:
  description: The steps taken (or, in check mode, that would be taken).
  returned: always
  type: list
  elements: str
restored_database:
  description: Name of the database the backup now lives in.
  returned: state=restored
  type: str
previous_database:
  description: Name the replaced database was renamed to (null when there was none).
  returned: state=restored
  type: str
terminated_connections:
  description: Number of other sessions on the replaced database that were terminated before the swap.
  returned: state=restored
  type: int
kept:
  description: Backups kept by retention.
  returned: state=pruned, or present with keep_last/keep_days
  type: list
  elements: str
deleted:
  description: Backups deleted (or, in check mode, that would be deleted) by retention.
  returned: state=pruned, or present with keep_last/keep_days
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils._postgres import PostgresError, postgres_argument_spec
from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb
from ansible_collections.cullis.broker.plugins.module_utils._pg_backup_job import PgBackup


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        state=dict(type='str', default='present', choices=['present', 'restored', 'verified', 'pruned']),
        database=dict(type='str', required=True, aliases=['db']),
        dest=dict(type='path'),
        path=dict(type='path'),
        format=dict(type='str', default='custom', choices=['custom', 'plain', 'directory']),
        jobs=dict(type='int', default=1),
        compress_level=dict(type='int', default=6),
        encryption_key_file=dict(type='path', no_log=False),
        keep_last=dict(type='int'),
        keep_days=dict(type='int'),
        quick=dict(type='bool', default=False),
        record=dict(type='bool', default=False),
        confirm=dict(type='bool', default=False),
        no_owner=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[('state', 'present', ['dest']), ('state', 'pruned', ['dest']),
                                        ('state', 'restored', ['dest', 'path'], True),
                                        ('state', 'verified', ['dest', 'path'], True)])
    p = module.params
    if p['jobs'] < 1 or not 0 <= p['compress_level'] <= 9:
        module.fail_json(msg="jobs must be >= 1 and compress_level 0-9")
    if (p['keep_last'] is not None and p['keep_last'] < 1) or (p['keep_days'] is not None and p['keep_days'] < 0):
        module.fail_json(msg="keep_last must be >= 1 and keep_days >= 0")
    job = PgBackup(module)
    try:
        {'present': job.backup, 'restored': job.restore, 'verified': job.verify, 'pruned': job.prune}[p['state']]()
    except (pb.BackupError, PostgresError) as e:
        module.fail_json(msg=job.conn.scrub(to_native(e)), **job.result)
    except (IOError, OSError) as e:
        # any file-system error not handled above: named, with the path, never a traceback
        where = getattr(e, 'filename', None) or p.get('dest') or p.get('path') or '.'
        module.fail_json(msg=job.conn.scrub("state=%s failed: %s" % (p['state'], pb.describe_os_error(e, where))),
                         **job.result)
    module.exit_json(**job.result)


if __name__ == '__main__':
    main()

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

import gzip
import os
import socket
import subprocess
import tempfile
import time
import zlib

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils._postgres import (
    PostgresConnection, PostgresError, postgres_argument_spec, quote_ident, quote_literal, row_counts,
    ROW_COUNT_QUERY)
from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb

EXTENSIONS = {'custom': '.dump', 'plain': '.sql.gz', 'directory': '.dir'}
MAX_IDENT = 63


def _stderr_tail(f, conn, limit=2000):
    f.seek(0)
    text = f.read().decode('utf-8', 'replace')
    text = conn.scrub(text).strip()
    return text[-limit:]


def detect_format(path, manifest):
    if manifest and manifest.get('format'):
        return manifest['format']
    if os.path.isdir(path):
        return 'directory'
    name = path[:-4] if path.endswith('.enc') else path
    if name.endswith('.sql.gz') or name.endswith('.gz'):
        return 'plain'
    if name.endswith('.sql'):
        return 'sql'
    return 'custom'


class PgBackup(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.conn = PostgresConnection(self.p)
        self.plan = []
        self.result = dict(changed=False, plan=self.plan)
        self.key = None

    # -- helpers -------------------------------------------------------------------------------
    def get_key(self, required_for=None):
        if self.key is None and self.p['encryption_key_file']:
            self.key = pb.load_key(self.p['encryption_key_file'])
        if self.key is None and required_for:
            raise pb.KeyProblem("%s is encrypted; set encryption_key_file to the key it was made with"
                                % required_for)
        return self.key

    def dest_dir(self):
        dest = self.p['dest']
        if not dest:
            raise pb.BackupError("dest (the backup directory) is required for state=%s" % self.p['state'])
        return dest

    # -- present -------------------------------------------------------------------------------
    def backup(self):
        db = self.p['database']
        fmt = self.p['format']
        dest = self.dest_dir()
        if fmt == 'directory' and self.p['encryption_key_file']:
            raise pb.BackupError("directory-format backups cannot be encrypted; use format=custom with "
                                 "encryption_key_file, or encrypt the backup volume")
        start = time.time()
        name = '%s_%s%s%s' % (db, pb.utc_stamp(start), EXTENSIONS[fmt],
                              '.enc' if self.p['encryption_key_file'] else '')
        final = os.path.join(dest, name)
        self.result['backup_path'] = final
        self.plan.append("dump database %s (%s format%s) to %s" % (
            db, fmt, ', AES-256-GCM encrypted' if self.p['encryption_key_file'] else '', final))
        if self.p['encryption_key_file']:
            self.get_key()
        if self.module.check_mode:
            if not os.path.isdir(dest):
                self.plan.append("create directory %s" % dest)
            self.result['changed'] = True
            return
        version = self.conn.server_version()  # the server answers before anything is written
        if not os.path.isdir(dest):
            os.makedirs(dest, 0o700)
        with pb.BackupLock(dest, db):
            self._remove_stale_partials(dest, db)
            with self.conn.session(db) as s:
                s.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
                snapshot = s.query("SELECT pg_export_snapshot();")[0][0]
                counts = dict((r[0], int(r[1])) for r in s.query(ROW_COUNT_QUERY))
                if fmt == 'directory':
                    self._dump_directory(db, snapshot, final)
                    digest, size = pb.sha256_tree(final), pb.size_of(final)
                else:
                    digest, size = self._dump_stream(db, snapshot, final, fmt)
            end = time.time()
            manifest = dict(
                kind=pb.MANIFEST_KIND, database=db, format=fmt, file=name, size=size, sha256=digest,
                checksum_scope='tree' if fmt == 'directory' else 'file',
                compression='gzip' if fmt == 'plain' else 'pg_dump', compress_level=self.p['compress_level'],
                encrypted=bool(self.p['encryption_key_file']),
                encryption=dict(algorithm='AES-256-GCM', chunk_size=pb.DEFAULT_CHUNK, format='CULLISAES256GCM1')
                if self.p['encryption_key_file'] else None,
                server_version=version, source_host=self.conn.host, source_port=self.conn.port,
                created_by=socket.gethostname(), start_time=pb.utc_iso(start), end_time=pb.utc_iso(end),
                start_epoch=start, end_epoch=end, duration_seconds=round(end - start, 3),
                row_counts=counts, tables=len(counts), verification=None)
            pb.write_sidecars(final, manifest)
        self.result.update(changed=True, manifest=manifest, sha256=digest, backup_time=manifest['start_time'],
                           size=size)
        if self.p['keep_last'] is not None or self.p['keep_days'] is not None:
            self.prune()

    def _remove_stale_partials(self, dest, db):
        prefix = '.%s_' % db
        for name in os.listdir(dest):
            if name.startswith(prefix) and '.partial-' in name:
                pb.remove_path(os.path.join(dest, name))
                self.plan.append("removed stale partial file %s left by an interrupted run" % name)

    def _dump_stream(self, db, snapshot, final, fmt):
        level = self.p['compress_level']
        args = ['--snapshot=' + snapshot, '--no-password']
        args += ['-Fc', '-Z', str(level)] if fmt == 'custom' else ['-Fp']
        args += self.conn.conn_args(db)
        errf = tempfile.TemporaryFile()
        proc = self.conn.popen('pg_dump', args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
        ok = False
        try:
            with pb.AtomicFile(final) as af:
                hw = pb.HashingWriter(af)
                enc = pb.Encryptor(self.key, hw) if self.key else None
                sink = enc or hw
                gz = gzip.GzipFile(filename='', mode='wb', fileobj=sink, compresslevel=level, mtime=0) \
                    if fmt == 'plain' else None
                out = gz or sink
                for block in iter(lambda: proc.stdout.read(pb.READ_SIZE), b''):
                    out.write(block)
                rc = proc.wait()
                if rc != 0:
                    raise pb.BackupError("pg_dump of %s exited with status %s, no backup was written: %s"
                                         % (db, rc, _stderr_tail(errf, self.conn)))
                if gz:
                    gz.close()
                if enc:
                    enc.close()
                af.commit()
                ok = True
        except (IOError, OSError) as e:
            raise pb.BackupError("backup of %s failed, no partial file was left: %s"
                                 % (db, pb.describe_os_error(e, os.path.dirname(final))))
        finally:
            if not ok and proc.poll() is None:
                proc.kill()
            if proc.poll() is None:
                proc.wait()
            errf.close()
        return hw.hash.hexdigest(), hw.size

    def _dump_directory(self, db, snapshot, final):
        tmp = tempfile.mkdtemp(prefix='.%s.partial-' % os.path.basename(final), dir=os.path.dirname(final))
        errf = tempfile.TemporaryFile()
        try:
            args = ['--snapshot=' + snapshot, '--no-password', '-Fd', '-Z', str(self.p['compress_level']),
                    '-j', str(self.p['jobs']), '-f', tmp] + self.conn.conn_args(db)
            proc = self.conn.popen('pg_dump', args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=errf)
            rc = proc.wait()
            if rc != 0:
                raise pb.BackupError("pg_dump of %s exited with status %s, no backup was written: %s"
                                     % (db, rc, _stderr_tail(errf, self.conn)))
            pb.fsync_tree(tmp)
            os.rename(tmp, final)
            pb.fsync_dir(os.path.dirname(final))
        except (IOError, OSError) as e:
            raise pb.BackupError("backup of %s failed, no partial file was left: %s"
                                 % (db, pb.describe_os_error(e, os.path.dirname(final))))
        finally:
            if os.path.exists(tmp):
                pb.remove_path(tmp)
            errf.close()

    # -- selection and integrity ----------------------------------------------------------------
    def select(self, prefer_verified=True):
        path = self.p['path']
        if path:
            path = path.rstrip('/')
            if not os.path.exists(path):
                raise pb.BackupError("backup %s does not exist" % path)
            return path, pb.read_manifest(path)
        backups = [b for b in pb.list_backups(self.dest_dir(), self.p['database']) if b['exists']]
        if not backups:
            raise pb.BackupError("no backup of database %s in %s" % (self.p['database'], self.p['dest']))
        verified = [b for b in backups if pb.is_verified(b)] if prefer_verified else []
        chosen = (verified or backups)[-1]
        self.plan.append("selected the newest %sbackup %s" % ('verified ' if verified else '', chosen['path']))
        return chosen['path'], pb.read_manifest(chosen['path'])

    def check_integrity(self, path, manifest):
        """Read-only: checksum, decryption (all chunks authenticated), compressed-stream test."""
        name = os.path.basename(path)
        fmt = detect_format(path, manifest)
        if manifest:
            if manifest.get('kind') != pb.MANIFEST_KIND:
                raise pb.BackupError("%s is not a cullis.broker.pg_backup manifest" % pb.manifest_path(path))
            actual = pb.checksum(path)
            if actual != manifest.get('sha256'):
                raise pb.BackupError("checksum mismatch for %s (manifest %s, file %s): the file is truncated or "
                                     "altered; nothing was restored, use another backup"
                                     % (name, manifest.get('sha256'), actual))
            self.plan.append("checksum of %s matches the manifest (sha256 %s)" % (name, actual))
            self.result['sha256'] = actual
            self.result['backup_time'] = manifest.get('start_time')
        else:
            self.plan.append("%s has no manifest (runbook-style backup): no checksum or row counts to compare"
                             % name)
            self.result['backup_time'] = pb.utc_iso(os.path.getmtime(path))
        encrypted = (manifest or {}).get('encrypted') or (os.path.isfile(path) and pb.is_encrypted_file(path))
        if encrypted:
            self.get_key(required_for=name)
        if fmt == 'directory':
            return fmt, False
        # full read: authenticates every chunk and checks gzip CRC / length before any restore
        try:
            for _block in self.plain_stream(path, fmt, encrypted):
                pass
        except pb.AuthenticationFailed as e:
            if manifest:
                # the file is byte for byte what was written (its SHA-256 matched): the key is wrong
                raise pb.KeyProblem("%s is intact (its SHA-256 matches the manifest) but does not decrypt with "
                                    "encryption_key_file %s: that is not the key it was made with (%s)"
                                    % (name, self.p['encryption_key_file'], e))
            raise
        if encrypted:
            self.plan.append("decrypted and authenticated every chunk of %s" % name)
        if fmt == 'plain':
            self.plan.append("gzip stream of %s is complete (CRC and length match)" % name)
        return fmt, encrypted

    def plain_stream(self, path, fmt, encrypted):
        """Yield the bytes pg_restore/psql must read (decrypted, gunzipped for plain)."""
        with open(path, 'rb') as f:
            blocks = pb.decrypt_chunks(self.key, f, os.path.basename(path)) if encrypted else \
                iter(lambda: f.read(pb.READ_SIZE), b'')
            if fmt != 'plain':
                yield from blocks
                return
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            for b in blocks:
                while b:
                    out = d.decompress(b)
                    if out:
                        yield out
                    if d.eof:
                        b = d.unused_data
                        if b.strip(b'\0'):
                            d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # concatenated gzip members
                            continue
                    break
            if not d.eof:
                raise pb.BackupError("%s is truncated: the gzip stream ends early" % os.path.basename(path))
            tail = d.flush()
            if tail:
                yield tail

    # -- restore into a database ----------------------------------------------------------------
    def restore_into(self, path, fmt, encrypted, database):
        errf = tempfile.TemporaryFile()
        try:
            if fmt in ('plain', 'sql'):
                args = ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--single-transaction', '--no-password'] + \
                    self.conn.conn_args(database)
                proc = self.conn.popen('psql', args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
                source = self.plain_stream(path, fmt, encrypted) if fmt == 'plain' else \
                    self.plain_stream(path, 'custom', encrypted)
            else:
                args = ['--exit-on-error', '--no-password', '-d', database]
                args += self.conn.conn_args(database)[:-2]
                if self.p['no_owner']:
                    args.append('--no-owner')
                if encrypted:
                    proc = self.conn.popen('pg_restore', args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=errf)
                    source = self.plain_stream(path, fmt, encrypted)
                else:
                    if self.p['jobs'] > 1:
                        args += ['-j', str(self.p['jobs'])]
                    proc = self.conn.popen('pg_restore', args + [path], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=errf)
                    source = None
            if source is not None:
                try:
                    for block in source:
                        proc.stdin.write(block)
                except (IOError, OSError):
                    pass  # the restore program died; its status and stderr tell why
                except Exception:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    try:
                        proc.stdin.close()
                    except (IOError, OSError):
                        pass
            rc = proc.wait()
            if rc != 0:
                raise pb.BackupError("restore of %s into database %s failed (exit %s), every SQL error is fatal: %s"
                                     % (os.path.basename(path), database, rc, _stderr_tail(errf, self.conn)))
        finally:
            errf.close()

    def compare_counts(self, manifest, database):
        counts = row_counts(self.conn, database)
        self.result['row_counts'] = counts
        expected = (manifest or {}).get('row_counts')
        if expected is None:
            self.plan.append("no manifest row counts to compare with (%d tables restored)" % len(counts))
            return
        diff = []
        for table in sorted(set(expected) | set(counts)):
            if expected.get(table) != counts.get(table):
                diff.append("%s: manifest %s, restored %s" % (table, expected.get(table), counts.get(table)))
        if diff:
            raise pb.BackupError("row counts of the restored database differ from the manifest: %s"
                                 % '; '.join(diff[:20]))
        self.plan.append("row counts of %d tables equal the manifest (%d rows)" % (len(counts), sum(counts.values())))

    def drop_database(self, name):
        self.conn.psql("DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(name))

    def create_database(self, name, owner):
        sql = "CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8'" % quote_ident(name)
        if owner:
            sql += " OWNER %s" % quote_ident(owner)
        self.conn.psql(sql + ";")

    def new_name(self, base, tag, stamp):
        name = '%s_%s_%s' % (base, tag, stamp)
        if len(name) > MAX_IDENT:
            raise pb.BackupError("database name %s is too long for a PostgreSQL identifier (63 bytes)" % name)
        return name

    # -- restored ------------------------------------------------------------------------------
    def restore(self):
        path, manifest = self.select()
        self.result['backup_path'] = path
        self.result['manifest'] = manifest
        fmt, encrypted = self.check_integrity(path, manifest)
        target = self.p['database']
        stamp = pb.utc_stamp(time.time())
        staging = self.new_name(target, 'restore', stamp)
        previous = self.new_name(target, 'pre_restore', stamp)
        exists = self.conn.database_exists(target)
        owner = self.conn.database_owner(target) if exists else None
        self.plan.append("create database %s and restore %s into it (%s format, any SQL error is fatal)"
                         % (staging, os.path.basename(path), fmt))
        self.plan.append("compare its row counts with the manifest")
        if exists:
            self.plan.append("terminate the other sessions on %s (broker connections) and rename it to %s"
                             % (target, previous))
        self.plan.append("rename %s to %s" % (staging, target))
        self.result.update(restored_database=target, previous_database=previous if exists else None,
                           terminated_connections=0)
        if exists and not self.p['confirm']:
            if self.module.check_mode:
                self.plan.append("confirm=true is required to replace the live database %s" % target)
                self.result['changed'] = True
                return
            raise pb.BackupError("database %s exists; restoring replaces it (it is kept as %s). Re-run with "
                                 "confirm=true to proceed. The backup %s passed its integrity checks; nothing "
                                 "was changed." % (target, previous, os.path.basename(path)))
        self.result['changed'] = True
        if self.module.check_mode:
            return
        self.create_database(staging, owner)
        try:
            self.restore_into(path, fmt, encrypted, staging)
            self.compare_counts(manifest, staging)
        except Exception:
            self.drop_database(staging)
            # the staging database is gone again and the live one was never touched: no change
            self.result['changed'] = False
            self.plan.append("dropped %s again; %s was not touched" % (staging, target))
            raise
        if exists:
            self.result['terminated_connections'] = self.swap_out(target, previous)
        self.conn.psql("ALTER DATABASE %s RENAME TO %s;" % (quote_ident(staging), quote_ident(target)))
        self.plan.append("database %s now holds the backup of %s" % (target, self.result['backup_time']))

    def swap_out(self, target, previous):
        """Block new sessions, terminate the others, rename the live database away."""
        t = quote_ident(target)
        blocked = self.conn.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false;" % t, check=False) is not None
        if not blocked:
            self.conn.psql("ALTER DATABASE %s CONNECTION LIMIT 0;" % t)
        terminated = 0
        last_err = None
        for _attempt in range(20):
            rows = self.conn.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                                  "AND pid <> pg_backend_pid();" % quote_literal(target))
            terminated += int(rows[0][0])
            try:
                self.conn.psql("ALTER DATABASE %s RENAME TO %s;" % (t, quote_ident(previous)))
                break
            except PostgresError as e:
                last_err = e
                time.sleep(0.25)
        else:
            self.conn.psql("ALTER DATABASE %s %s;" % (t, 'ALLOW_CONNECTIONS true' if blocked else 'CONNECTION LIMIT -1'),
                           check=False)
            raise pb.BackupError("could not rename %s away (sessions keep reconnecting?): %s; the restored copy "
                                 "was left in place for inspection" % (target, last_err))
        self.conn.psql("ALTER DATABASE %s %s;" % (quote_ident(previous),
                                                  'ALLOW_CONNECTIONS true' if blocked else 'CONNECTION LIMIT -1'),
                       check=False)
        self.plan.append("terminated %d other session(s) on %s and kept it as %s" % (terminated, target, previous))
        return terminated

    # -- verified ------------------------------------------------------------------------------
    def verify(self):
        """Read-only unless record=true. A key problem (missing, too open, not the key the backup
        was made with) says "cannot verify with this key" and is never recorded: it is the
        operator's error, not evidence that the backup is corrupt."""
        path, manifest = self.select(prefer_verified=False)
        self.result['backup_path'] = path
        self.result['manifest'] = manifest
        record = dict(status='failed', mode='quick' if self.p['quick'] else 'restore', at=None, error=None)
        try:
            fmt, encrypted = self.check_integrity(path, manifest)
            if not self.p['quick']:
                scratch = self.new_name(self.p['database'][:30], 'verify', pb.utc_stamp(time.time()))
                self.plan.append("restore into scratch database %s, compare row counts, drop it" % scratch)
                if not self.module.check_mode:
                    self.create_database(scratch, None)
                    try:
                        self.restore_into(path, fmt, encrypted, scratch)
                        self.compare_counts(manifest, scratch)
                    finally:
                        self.drop_database(scratch)
            record['status'] = 'ok'
        except pb.KeyProblem as e:
            self.plan.append("not verified and nothing recorded: the key is the problem, not the backup")
            raise pb.KeyProblem("cannot verify with this key: %s. Nothing was recorded in the manifest." % e)
        except (pb.BackupError, PostgresError) as e:
            record['error'] = to_native(e)
            self._record(path, manifest, record)
            raise
        self._record(path, manifest, record)
        self.result['verification'] = record

    def _record(self, path, manifest, record):
        record['at'] = pb.utc_iso(time.time())
        self.result['verification'] = record
        if not (self.p['record'] and manifest):
            return
        self.plan.append("record verification %s in %s" % (record['status'], pb.manifest_path(path)))
        self.result['changed'] = True
        if self.module.check_mode:
            return
        manifest['verification'] = record
        try:
            pb.write_json_atomic(pb.manifest_path(path), manifest)
        except (IOError, OSError) as e:
            self.result['changed'] = False
            raise pb.BackupError("verification %s, but recording it failed: %s"
                                 % (record['status'], pb.describe_os_error(e, pb.manifest_path(path))))
        self.result['manifest'] = manifest

    # -- pruned --------------------------------------------------------------------------------
    def prune(self):
        dest = self.dest_dir()
        if self.p['keep_last'] is None and self.p['keep_days'] is None:
            raise pb.BackupError("state=pruned needs keep_last and/or keep_days")
        backups = pb.list_backups(dest, self.p['database'])
        kept, deleted = pb.select_retention(backups, self.p['keep_last'], self.p['keep_days'])
        self.result.update(kept=kept, deleted=deleted)
        for path in deleted:
            self.plan.append("delete backup %s" % path)
        if deleted:
            self.result['changed'] = True
        if self.module.check_mode or not deleted:
            return
        with pb.BackupLock(dest, self.p['database']):
            for path in deleted:
                for p in (path, pb.checksum_path(path), pb.manifest_path(path)):
                    pb.remove_path(p)
            pb.fsync_dir(dest)


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

# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the work of the pg_backup module (backup, restore, verify, prune).

Not a public API of the collection. plugins/modules/pg_backup.py keeps the documentation and the
argument handling and calls PgBackup(module).<state>(); the low-level pieces (encryption, atomic
writes, manifests, retention) are in module_utils/_pg_backup.py, the byte streams to and from
pg_dump/pg_restore/psql in module_utils/_pg_dump_io.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import time

from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils._postgres import (
    PostgresConnection, PostgresError, compose, row_counts)
from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb
from ansible_collections.cullis.broker.plugins.module_utils import _pg_dump_io as pio

EXTENSIONS = {'custom': '.dump', 'plain': '.sql.gz', 'directory': '.dir'}
MAX_IDENT = 63


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
            with self.conn.pg_session(db) as s, s.snapshot() as (snapshot, cur):
                counts = row_counts(s, cursor=cur)
                if fmt == 'directory':
                    pio.dump_directory(self.conn, db, snapshot, final, self.p['compress_level'], self.p['jobs'])
                    digest, size = pb.sha256_tree(final), pb.size_of(final)
                else:
                    digest, size = pio.dump_stream(self.conn, self.key, db, snapshot, final, fmt,
                                                   self.p['compress_level'])
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
            for _block in pio.plain_stream(self.key, path, fmt, encrypted):
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

    def restore_into(self, path, fmt, encrypted, database):
        pio.restore_into(self.conn, self.key, path, fmt, encrypted, database, jobs=self.p['jobs'],
                         no_owner=self.p['no_owner'])

    def compare_counts(self, manifest, database):
        with self.conn.pg_session(database) as s:
            counts = row_counts(s)
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
        self.conn.execute(compose("DROP DATABASE IF EXISTS {} WITH (FORCE)", name))

    def create_database(self, name, owner):
        if owner:
            self.conn.execute(compose("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' OWNER {}", name, owner))
        else:
            self.conn.execute(compose("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'", name))

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
        self.conn.execute(compose("ALTER DATABASE {} RENAME TO {}", staging, target))
        self.plan.append("database %s now holds the backup of %s" % (target, self.result['backup_time']))

    def swap_out(self, target, previous):
        """Block new sessions, terminate the others, rename the live database away."""
        with self.conn.pg_session() as s:
            try:
                s.execute(compose("ALTER DATABASE {} ALLOW_CONNECTIONS false", target))
                blocked = True
            except PostgresError:
                s.execute(compose("ALTER DATABASE {} CONNECTION LIMIT 0", target))
                blocked = False
            reopen = "ALTER DATABASE {} ALLOW_CONNECTIONS true" if blocked else "ALTER DATABASE {} CONNECTION LIMIT -1"
            terminated = 0
            last_err = None
            for _attempt in range(20):
                terminated += s.value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
                try:
                    s.execute(compose("ALTER DATABASE {} RENAME TO {}", target, previous))
                    break
                except PostgresError as e:
                    last_err = e
                    time.sleep(0.25)
            else:
                self._try(s, compose(reopen, target))
                raise pb.BackupError("could not rename %s away (sessions keep reconnecting?): %s; the restored copy "
                                     "was left in place for inspection" % (target, last_err))
            self._try(s, compose(reopen, previous))
        self.plan.append("terminated %d other session(s) on %s and kept it as %s" % (terminated, target, previous))
        return terminated

    @staticmethod
    def _try(session, statement):
        """Best effort (re-allowing connections): a failure here must not hide the outcome."""
        try:
            session.execute(statement)
        except PostgresError:
            pass

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

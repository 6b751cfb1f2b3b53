# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the byte streams between pg_backup and the PostgreSQL client programs.

Not a public API of the collection. Used by module_utils/_pg_backup_job.py: pg_dump into an
atomic, checksummed (and optionally gzip-compressed and encrypted) file or directory; the backup
back as the plain bytes pg_restore/psql read (decrypted and gunzipped in constant memory); and the
restore itself. The programs run through the connection's executor (module_utils/_postgres.py);
their stderr is scrubbed of the password before it reaches a message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import os
import subprocess
import tempfile
import zlib

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb


def stderr_tail(f, conn, limit=2000):
    """The end of a client program's stderr (file `f`), without the password."""
    f.seek(0)
    text = f.read().decode('utf-8', 'replace')
    text = conn.scrub(text).strip()
    return text[-limit:]


def dump_stream(conn, key, db, snapshot, final, fmt, level):
    """pg_dump (custom or plain format) of `db` as of `snapshot`, streamed through gzip (plain),
    encryption (with `key`) and SHA-256 into `final`, atomically; returns (sha256, size)."""
    args = ['--snapshot=' + snapshot, '--no-password']
    args += ['-Fc', '-Z', str(level)] if fmt == 'custom' else ['-Fp']
    args += conn.conn_args(db)
    errf = tempfile.TemporaryFile()
    proc = conn.popen('pg_dump', args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
    ok = False
    try:
        with pb.AtomicFile(final) as af:
            hw = pb.HashingWriter(af)
            enc = pb.Encryptor(key, hw) if key else None
            sink = enc or hw
            gz = gzip.GzipFile(filename='', mode='wb', fileobj=sink, compresslevel=level, mtime=0) \
                if fmt == 'plain' else None
            out = gz or sink
            for block in iter(lambda: proc.stdout.read(pb.READ_SIZE), b''):
                out.write(block)
            rc = proc.wait()
            if rc != 0:
                raise pb.BackupError("pg_dump of %s exited with status %s, no backup was written: %s"
                                     % (db, rc, stderr_tail(errf, conn)))
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


def dump_directory(conn, db, snapshot, final, level, jobs):
    """pg_dump -Fd with `jobs` workers into a partial directory renamed to `final` when complete."""
    tmp = tempfile.mkdtemp(prefix='.%s.partial-' % os.path.basename(final), dir=os.path.dirname(final))
    errf = tempfile.TemporaryFile()
    try:
        args = ['--snapshot=' + snapshot, '--no-password', '-Fd', '-Z', str(level),
                '-j', str(jobs), '-f', tmp] + conn.conn_args(db)
        proc = conn.popen('pg_dump', args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
        rc = proc.wait()
        if rc != 0:
            raise pb.BackupError("pg_dump of %s exited with status %s, no backup was written: %s"
                                 % (db, rc, stderr_tail(errf, conn)))
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


def plain_stream(key, path, fmt, encrypted):
    """Yield the bytes pg_restore/psql must read (decrypted, gunzipped for plain)."""
    with open(path, 'rb') as f:
        blocks = pb.decrypt_chunks(key, f, os.path.basename(path)) if encrypted else \
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


def restore_into(conn, key, path, fmt, encrypted, database, jobs=1, no_owner=False):
    """Feed the backup (decrypted, gunzipped) to psql (plain/sql) or pg_restore; any SQL error is fatal."""
    errf = tempfile.TemporaryFile()
    try:
        if fmt in ('plain', 'sql'):
            args = ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--single-transaction', '--no-password'] + \
                conn.conn_args(database)
            proc = conn.popen('psql', args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
            source = plain_stream(key, path, fmt, encrypted) if fmt == 'plain' else \
                plain_stream(key, path, 'custom', encrypted)
        else:
            args = ['--exit-on-error', '--no-password', '-d', database]
            args += conn.conn_args(database)[:-2]
            if no_owner:
                args.append('--no-owner')
            if encrypted:
                proc = conn.popen('pg_restore', args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=errf)
                source = plain_stream(key, path, fmt, encrypted)
            else:
                if jobs > 1:
                    args += ['-j', str(jobs)]
                proc = conn.popen('pg_restore', args + [path], stdin=subprocess.DEVNULL,
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
                                 % (os.path.basename(path), database, rc, stderr_tail(errf, conn)))
    finally:
        errf.close()

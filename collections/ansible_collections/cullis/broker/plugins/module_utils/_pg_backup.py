# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the file side of backups (atomic writes, checksums, manifests,
chunked AES-256-GCM encryption, locks, retention). Not a public API of the collection; used by
pg_backup and the other backup modules. Pure Python + `cryptography` (only for encryption).

Encrypted file format (``CULLISAES256GCM1``), streamed so memory use is one chunk:

    header = MAGIC(16) || chunk_size(4, BE) || nonce_prefix(8, random)
    chunk  = length(4, BE) || AES-256-GCM(key, nonce_prefix || counter(4, BE),
                                          plaintext[<= chunk_size],
                                          aad = header || counter(8, BE) || final(1))

The last chunk carries final=1 (it may be empty). A truncated file (no final chunk), reordered,
dropped or altered chunks, trailing data and a wrong key all fail authentication.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time

from ansible_collections.cullis.broker.plugins.module_utils._secret_file import (
    SecretFileError, check_secret_file)

try:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.exceptions import InvalidTag
    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - reported by the module when encryption is asked for
    AESGCM = None
    InvalidTag = Exception
    HAS_CRYPTOGRAPHY = False

MAGIC = b'CULLISAES256GCM1'
HEADER_LEN = len(MAGIC) + 4 + 8
DEFAULT_CHUNK = 1024 * 1024
READ_SIZE = 1024 * 1024
MANIFEST_KIND = 'cullis.broker.pg_backup/v1'


class BackupError(Exception):
    """An operator-facing error (what went wrong and what to do)."""


class KeyProblem(BackupError):
    """The key, not the backup, is the problem (missing, unreadable, too open, or not the key the
    backup was made with). Never evidence that a backup is corrupt: it is never recorded as such."""


class AuthenticationFailed(BackupError):
    """An encrypted stream did not authenticate: wrong key, or altered data."""


# -- keys and encryption -----------------------------------------------------------------------
def load_key(path, option='encryption_key_file'):
    """A 32-byte key from a file holding 32 raw bytes, 64 hex characters or base64 of 32 bytes.
    The file must be private (module_utils._secret_file: the one policy for key files)."""
    try:
        check_secret_file(path, option)
    except SecretFileError as e:
        raise KeyProblem(str(e))
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise KeyProblem("cannot read %s %s: %s" % (option, path, e.strerror))
    if len(data) == 32:
        return data
    text = data.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (TypeError, ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise KeyProblem("encryption key file %s must hold a 256-bit key: 32 raw bytes, 64 hex characters or "
                     "base64 of 32 bytes (e.g. `openssl rand -out KEYFILE 32`)" % path)


def _require_crypto():
    if not HAS_CRYPTOGRAPHY:
        raise BackupError("encryption needs the Python 'cryptography' package on the target host")


class Encryptor(object):
    """File-like sink: `write()` plaintext, `close()` emits the final chunk to `out`."""

    def __init__(self, key, out, chunk_size=DEFAULT_CHUNK):
        _require_crypto()
        self.aes = AESGCM(key)
        self.out = out
        self.chunk_size = chunk_size
        self.header = MAGIC + struct.pack('>I', chunk_size) + os.urandom(8)
        self.counter = 0
        self.buf = bytearray()
        out.write(self.header)

    def _emit(self, data, final):
        nonce = self.header[-8:] + struct.pack('>I', self.counter)
        aad = self.header + struct.pack('>QB', self.counter, 1 if final else 0)
        ct = self.aes.encrypt(nonce, bytes(data), aad)
        self.out.write(struct.pack('>I', len(ct)) + ct)
        self.counter += 1
        if self.counter >= 2 ** 32:
            raise BackupError("file too large for one encryption stream")

    def write(self, data):
        self.buf.extend(data)
        # keep at least one byte back so the final chunk is never emitted early
        while len(self.buf) > self.chunk_size:
            self._emit(self.buf[:self.chunk_size], False)
            del self.buf[:self.chunk_size]

    def close(self):
        self._emit(self.buf, True)
        self.buf = bytearray()


def decrypt_chunks(key, src, name='file'):
    """Yield the plaintext of an encrypted stream chunk by chunk; raises BackupError on any tamper."""
    _require_crypto()
    header = src.read(HEADER_LEN)
    if len(header) != HEADER_LEN or not header.startswith(MAGIC):
        raise BackupError("%s is not an encrypted Cullis backup (bad header)" % name)
    chunk_size = struct.unpack('>I', header[16:20])[0]
    aes = AESGCM(key)
    counter = 0
    while True:
        raw_len = src.read(4)
        if len(raw_len) != 4:
            raise BackupError("%s is truncated: the encrypted stream ends before its final chunk" % name)
        (length,) = struct.unpack('>I', raw_len)
        if length > chunk_size + 16:
            raise BackupError("%s is corrupt: chunk %d has an impossible length" % (name, counter))
        ct = src.read(length)
        if len(ct) != length:
            raise BackupError("%s is truncated inside chunk %d" % (name, counter))
        nonce = header[-8:] + struct.pack('>I', counter)
        plain = None
        for final in (0, 1):
            try:
                plain = aes.decrypt(nonce, ct, header + struct.pack('>QB', counter, final))
            except InvalidTag:
                continue
            break
        if plain is None:
            raise AuthenticationFailed("%s failed authentication at chunk %d: wrong encryption key, or the file "
                                       "was altered" % (name, counter))
        counter += 1
        yield plain
        if final:
            if src.read(1):
                raise BackupError("%s has unexpected data after its final chunk" % name)
            return


def is_encrypted_file(path):
    with open(path, 'rb') as f:
        return f.read(len(MAGIC)) == MAGIC


# -- checksums ---------------------------------------------------------------------------------
def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(READ_SIZE), b''):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path):
    """Checksum of a directory: SHA-256 over sorted `relpath NUL sha256 LF` lines of its files."""
    h = hashlib.sha256()
    for rel in sorted(_tree_files(path)):
        h.update(rel.encode('utf-8') + b'\0' + sha256_file(os.path.join(path, rel)).encode('ascii') + b'\n')
    return h.hexdigest()


def _tree_files(path):
    for root, _dirs, files in os.walk(path):
        for name in files:
            yield os.path.relpath(os.path.join(root, name), path)


def checksum(path):
    return sha256_tree(path) if os.path.isdir(path) else sha256_file(path)


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, rel)) for rel in _tree_files(path))
    return os.path.getsize(path)


# -- atomic writes -----------------------------------------------------------------------------
def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_name(final_path):
    d, base = os.path.split(final_path)
    return tempfile.mkstemp(prefix='.%s.partial-' % base, dir=d)


class AtomicFile(object):
    """Write to a hidden temp file in the target directory; `commit()` fsyncs and renames.
    Leaving the `with` block without commit (any error) removes the temp file."""

    def __init__(self, final_path, mode=0o600):
        self.final_path = final_path
        fd, self.tmp_path = partial_name(final_path)
        os.fchmod(fd, mode)
        self.f = os.fdopen(fd, 'wb')
        self.committed = False

    def write(self, data):
        self.f.write(data)

    def commit(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.rename(self.tmp_path, self.final_path)
        self.committed = True
        fsync_dir(os.path.dirname(self.final_path) or '.')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            try:
                self.f.close()
            except (IOError, OSError):
                pass
            remove_path(self.tmp_path)
        return False


class HashingWriter(object):
    """Passes writes on to `sink`, counting and hashing (SHA-256) what goes to the file."""

    def __init__(self, sink):
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sink.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self):
        pass


def write_stream_atomic(final_path, blocks, key=None, mode=0o600):
    """Write an iterable of byte blocks to `final_path` atomically, AES-256-GCM encrypted when a
    key is given. Returns (sha256 hex, size) of the file as stored. Raises OSError on I/O errors
    (nothing is left behind)."""
    with AtomicFile(final_path, mode) as af:
        hw = HashingWriter(af)
        enc = Encryptor(key, hw) if key else None
        out = enc or hw
        for block in blocks:
            out.write(block)
        if enc:
            enc.close()
        af.commit()
    return hw.hash.hexdigest(), hw.size


def fsync_tree(path):
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def remove_path(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except (IOError, OSError) as e:
        if e.errno != errno.ENOENT:
            raise


def write_json_atomic(path, data, mode=0o600):
    payload = (json.dumps(data, indent=2, sort_keys=True) + '\n').encode('utf-8')
    with AtomicFile(path, mode) as f:
        f.write(payload)
        f.commit()


def write_text_atomic(path, text, mode=0o600):
    with AtomicFile(path, mode) as f:
        f.write(text.encode('utf-8'))
        f.commit()


def describe_os_error(e, where):
    code = getattr(e, 'errno', None)
    if code == errno.ENOSPC:
        return "no space left on the device holding %s; free space or choose another dest (nothing was " \
               "left behind, older backups are untouched)" % where
    if code == errno.EROFS:
        return "%s is on a read-only file system; choose a writable dest or remount it read-write (nothing " \
               "was written)" % where
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied on %s (%s); fix its owner/mode or choose another dest (nothing was written)" \
               % (where, getattr(e, 'filename', None) or where)
    return "%s: %s" % (where, getattr(e, 'strerror', None) or e)


# -- manifest digests --------------------------------------------------------------------------
def manifest_digest(manifest):
    """SHA-256 of an artifact manifest's content, without its `verification` record (verification
    may be recorded after the set was sealed). The set manifest keeps it, so an edited artifact
    manifest (a row count, a checksum) fails set verification."""
    body = dict((k, v) for k, v in (manifest or {}).items() if k != 'verification')
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode('utf-8')).hexdigest()


# -- manifests ---------------------------------------------------------------------------------
def manifest_path(backup_path):
    return backup_path.rstrip('/') + '.json'


def checksum_path(backup_path):
    return backup_path.rstrip('/') + '.sha256'


def read_manifest(backup_path):
    path = manifest_path(backup_path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (IOError, OSError):
        return None
    except ValueError:
        raise BackupError("manifest %s is not valid JSON; the backup cannot be trusted" % path)
    return data


def write_sidecars(artifact, manifest, what='backup'):
    """Write `<artifact>.sha256` (sha256sum format) and `<artifact>.json` atomically; on failure
    remove the artifact too (an artifact without its manifest cannot be trusted)."""
    try:
        write_text_atomic(checksum_path(artifact), '%s  %s\n' % (manifest['sha256'], os.path.basename(artifact)))
        write_json_atomic(manifest_path(artifact), manifest)
    except (IOError, OSError) as e:
        for path in (artifact, checksum_path(artifact), manifest_path(artifact)):
            remove_path(path)
        raise BackupError("writing the manifest failed, the %s was removed: %s"
                          % (what, describe_os_error(e, os.path.dirname(artifact) or '.')))


def list_backups(directory, database):
    """Manifests of this database's backups in `directory`, oldest first (by start time)."""
    found = []
    if not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        if not name.endswith('.json') or name.startswith('.'):
            continue
        backup = os.path.join(directory, name[:-len('.json')])
        try:
            m = read_manifest(backup)
        except BackupError:
            continue
        if not m or m.get('kind') != MANIFEST_KIND or m.get('database') != database:
            continue
        m = dict(m)
        m['path'] = backup
        m['exists'] = os.path.exists(backup)
        found.append(m)
    found.sort(key=lambda m: (m.get('start_epoch', 0), m['path']))
    return found


def is_verified(m):
    v = m.get('verification') or {}
    return v.get('status') == 'ok'


def select_retention(backups, keep_last=None, keep_days=None, now=None):
    """Split backups (oldest first) into (keep, delete) lists of paths.

    A backup is kept if it is among the newest `keep_last`, or younger than `keep_days`, and the
    newest verified backup is always kept. With neither option set nothing is deleted."""
    now = time.time() if now is None else now
    if keep_last is None and keep_days is None:
        return [b['path'] for b in backups], []
    keep = set()
    if keep_last:
        keep.update(b['path'] for b in backups[-keep_last:])
    if keep_days is not None:
        limit = now - keep_days * 86400
        keep.update(b['path'] for b in backups if b.get('start_epoch', 0) >= limit)
    verified = [b for b in backups if is_verified(b) and b.get('exists', True)]
    if verified:
        keep.add(verified[-1]['path'])
    kept = [b['path'] for b in backups if b['path'] in keep]
    deleted = [b['path'] for b in backups if b['path'] not in keep]
    return kept, deleted


# -- lock --------------------------------------------------------------------------------------
class BackupLock(object):
    """flock on `<dir>/.<database>.lock`; a second holder fails at once with a clear message."""

    def __init__(self, directory, database):
        self.path = os.path.join(directory, '.%s.lock' % database)
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except (IOError, OSError) as e:
            raise BackupError("cannot create the lock file %s: %s"
                              % (self.path, describe_os_error(e, os.path.dirname(self.path) or '.')))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (IOError, OSError) as e:
            holder = ''
            try:
                holder = os.read(self.fd, 200).decode('utf-8', 'replace').strip()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BackupError("another backup job of this database is running (lock %s held%s); wait for it "
                                  "to finish, do not delete the lock file" %
                                  (self.path, (' by ' + holder) if holder else ''))
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ('pid %d since %s' % (os.getpid(), utc_iso(time.time()))).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


def utc_iso(epoch):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(epoch)) + ('.%03dZ' % int((epoch % 1) * 1000))


def utc_stamp(epoch):
    return time.strftime('%Y%m%dT%H%M%S', time.gmtime(epoch)) + ('%03dZ' % int((epoch % 1) * 1000))

# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of _pg_backup: retention selection, chunked AES-256-GCM, keys, atomic files, lock."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import io
import os

import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb

DAY = 86400
NOW = 1800000000.0


def backups(*specs):
    """specs: (name, age_days, verified)"""
    out = [dict(path=name, start_epoch=NOW - age * DAY, exists=True,
                verification={'status': 'ok'} if verified else None) for name, age, verified in specs]
    out.sort(key=lambda b: b['start_epoch'])
    return out


def test_retention_keep_last():
    bs = backups(('a', 5, False), ('b', 4, False), ('c', 3, False), ('d', 1, False))
    assert pb.select_retention(bs, keep_last=2, now=NOW) == (['c', 'd'], ['a', 'b'])


def test_retention_keep_days_and_last_is_a_union():
    bs = backups(('a', 30, False), ('b', 10, False), ('c', 3, False), ('d', 0, False))
    assert pb.select_retention(bs, keep_last=1, keep_days=7, now=NOW) == (['c', 'd'], ['a', 'b'])


def test_retention_never_deletes_newest_verified():
    bs = backups(('a', 30, True), ('b', 20, True), ('c', 2, False), ('d', 0, False))
    assert pb.select_retention(bs, keep_last=1, now=NOW) == (['b', 'd'], ['a', 'c'])


def test_retention_ignores_verified_flag_of_missing_files():
    bs = backups(('a', 30, True), ('b', 0, False))
    bs[0]['exists'] = False
    assert pb.select_retention(bs, keep_last=1, now=NOW) == (['b'], ['a'])


def test_retention_without_rules_deletes_nothing():
    bs = backups(('a', 30, False))
    assert pb.select_retention(bs, now=NOW) == (['a'], [])


def encrypt(key, data, chunk=16):
    out = io.BytesIO()
    enc = pb.Encryptor(key, out, chunk_size=chunk)
    for i in range(0, len(data), 7):
        enc.write(data[i:i + 7])
    enc.close()
    return out.getvalue()


def decrypt(key, blob):
    return b''.join(pb.decrypt_chunks(key, io.BytesIO(blob)))


@pytest.mark.parametrize('size', [0, 1, 15, 16, 17, 100])
def test_encryption_roundtrip_any_size(size):
    key = os.urandom(32)
    data = os.urandom(size)
    assert decrypt(key, encrypt(key, data)) == data


def test_encryption_detects_truncation_at_chunk_boundary():
    key = os.urandom(32)
    blob = encrypt(key, os.urandom(64))
    # cut after the header + first chunk: authentic chunks, but no final chunk
    first_len = int(binascii.hexlify(blob[pb.HEADER_LEN:pb.HEADER_LEN + 4]), 16)
    cut = blob[:pb.HEADER_LEN + 4 + first_len]
    with pytest.raises(pb.BackupError, match='truncated'):
        decrypt(key, cut)


def test_encryption_detects_flipped_byte_wrong_key_and_trailing_data():
    key = os.urandom(32)
    blob = encrypt(key, os.urandom(64))
    flipped = bytearray(blob)
    flipped[-5] ^= 1
    with pytest.raises(pb.BackupError, match='failed authentication'):
        decrypt(key, bytes(flipped))
    with pytest.raises(pb.BackupError, match='wrong encryption key'):
        decrypt(os.urandom(32), blob)
    with pytest.raises(pb.BackupError, match='after its final chunk'):
        decrypt(key, blob + b'x')
    with pytest.raises(pb.BackupError, match='bad header'):
        decrypt(key, b'plain text' * 10)


def test_encryption_detects_reordered_chunks():
    key = os.urandom(32)
    blob = encrypt(key, bytes(range(48)))
    body = blob[pb.HEADER_LEN:]
    chunks = []
    while body:
        n = int(binascii.hexlify(body[:4]), 16)
        chunks.append(body[:4 + n])
        body = body[4 + n:]
    swapped = blob[:pb.HEADER_LEN] + chunks[1] + chunks[0] + b''.join(chunks[2:])
    with pytest.raises(pb.BackupError):
        decrypt(key, swapped)


@pytest.mark.parametrize('encode', [lambda k: k, binascii.hexlify, base64.b64encode])
def test_load_key_formats(tmp_path, encode):
    key = os.urandom(32)
    path = tmp_path / 'k'
    path.write_bytes(encode(key) + (b'' if len(encode(key)) == 32 else b'\n'))
    path.chmod(0o600)
    assert pb.load_key(str(path)) == key


def test_load_key_refuses_a_file_others_can_read(tmp_path):
    path = tmp_path / 'k'
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(pb.BackupError, match='readable or writable by group/others'):
        pb.load_key(str(path))


def test_load_key_rejects_short_key(tmp_path):
    path = tmp_path / 'k'
    path.write_bytes(b'short')
    path.chmod(0o600)
    with pytest.raises(pb.BackupError, match='256-bit key'):
        pb.load_key(str(path))


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    final = str(tmp_path / 'backup.dump')
    with pytest.raises(RuntimeError):
        with pb.AtomicFile(final) as f:
            f.write(b'partial')
            raise RuntimeError('boom')
    assert os.listdir(str(tmp_path)) == []
    with pb.AtomicFile(final) as f:
        f.write(b'whole')
        f.commit()
    assert os.listdir(str(tmp_path)) == ['backup.dump']


def test_lock_second_holder_fails(tmp_path):
    with pb.BackupLock(str(tmp_path), 'db'):
        with pytest.raises(pb.BackupError, match='another backup job'):
            with pb.BackupLock(str(tmp_path), 'db'):
                pass
    with pb.BackupLock(str(tmp_path), 'db'):
        pass


def test_tree_checksum_changes_with_any_file(tmp_path):
    (tmp_path / 'a').write_bytes(b'1')
    (tmp_path / 'b').write_bytes(b'2')
    first = pb.sha256_tree(str(tmp_path))
    (tmp_path / 'b').write_bytes(b'3')
    assert pb.sha256_tree(str(tmp_path)) != first

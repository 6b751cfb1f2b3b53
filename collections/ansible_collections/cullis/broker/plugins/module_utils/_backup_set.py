# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: backup sets (one directory per backup run), for backup_set and backup_set_info.

Not a public API of the collection. A set holds artifacts (a pg_backup dump, a vault_snapshot,
files encrypted into it), each with its own JSON manifest, plus the set manifest `backup-set.json`.
The encryption, atomic writes and manifests are those of module_utils/_pg_backup.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import hmac
import json
import os

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb

SET_MANIFEST = 'backup-set.json'
KIND = 'cullis.broker.backup_set/v1'
FILE_KIND = 'cullis.broker.backup_set.file/v1'
KINDS = {pb.MANIFEST_KIND: 'postgres', 'cullis.broker.vault_snapshot/v1': 'vault', FILE_KIND: 'file'}


def scan(path):
    """Artifacts in the set directory: every `<artifact>.json` manifest of a known kind."""
    items = []
    for name in sorted(os.listdir(path)):
        if not name.endswith('.json') or name == SET_MANIFEST or name.startswith('.'):
            continue
        artifact = os.path.join(path, name[:-5])
        try:
            m = pb.read_manifest(artifact)
        except pb.BackupError:
            continue
        if not m or m.get('kind') not in KINDS:
            continue
        items.append(dict(name=name[:-5], kind=KINDS[m['kind']], sha256=m.get('sha256'), size=m.get('size'),
                          time=m.get('start_time'), label=m.get('name'), manifest_sha256=pb.manifest_digest(m)))
    return items


def summary(items):
    def last(kind):
        found = [i['name'] for i in items if i['kind'] == kind]
        return found[-1] if found else None
    return dict(postgres=last('postgres'), vault=last('vault'))


def load_set_manifest(path):
    """The set manifest of `path`, or raise BackupError (missing, not JSON, not a set manifest)."""
    mpath = os.path.join(path, SET_MANIFEST)
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (IOError, OSError):
        raise pb.BackupError("%s has no %s: not a complete backup set" % (path, SET_MANIFEST))
    except ValueError:
        raise pb.BackupError("%s is not valid JSON" % mpath)
    if not isinstance(manifest, dict) or manifest.get('kind') != KIND:
        raise pb.BackupError("%s is not a backup set manifest" % mpath)
    return manifest


def source_mac(key, path):
    """HMAC-SHA256 (keyed with the set's encryption key) of a file's content, streamed.

    Stored in the file's manifest so that adding the same content again is recognised without
    decrypting, and without a plain hash of a secret file that a guess could be checked against."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(pb.READ_SIZE), b''):
            mac.update(block)
    return mac.hexdigest()


def file_is_current(set_dir, name, mac):
    """True when `<name>.enc` is in the set, intact, and holds the content whose MAC is `mac`."""
    artifact = os.path.join(set_dir, name + '.enc')
    if not os.path.isfile(artifact):
        return False
    try:
        own = pb.read_manifest(artifact) or {}
    except pb.BackupError:
        return False
    return (own.get('kind') == FILE_KIND and own.get('source_hmac') == mac
            and pb.sha256_file(artifact) == own.get('sha256'))


def same_items(old, new):
    def key(items):
        return sorted((i.get('name'), i.get('sha256'), i.get('manifest_sha256')) for i in items or [])
    return key(old) == key(new)


def decrypt_to(key, artifact, item_name, dest, check_mode):
    """Stream-decrypt `artifact` to `dest` (mode 0600) unless dest already holds that content.

    Constant memory whatever the size: the plaintext goes to a hidden temporary file beside
    `dest`, hashed on the way, and is renamed over `dest` only once every chunk authenticated and
    only when it differs. In check mode nothing is written (the plaintext is only hashed).
    Returns True when dest changed (or would change)."""
    current = pb.sha256_file(dest) if os.path.isfile(dest) else None
    mode_ok = current is not None and (os.stat(dest).st_mode & 0o777) == 0o600
    digest = hashlib.sha256()
    with open(artifact, 'rb') as src:
        if check_mode:
            for block in pb.decrypt_chunks(key, src, item_name):
                digest.update(block)
            return not (digest.hexdigest() == current and mode_ok)
        directory = os.path.dirname(dest) or '.'
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        with pb.AtomicFile(dest, 0o600) as af:
            for block in pb.decrypt_chunks(key, src, item_name):
                digest.update(block)
                af.write(block)
            if digest.hexdigest() == current:
                changed = not mode_ok
                if changed:
                    os.chmod(dest, 0o600)
                return changed  # leaving without commit removes the temporary file
            af.commit()
    return True


def list_sets(root):
    """Sets under root, oldest first, as dicts for pb.select_retention."""
    sets = []
    if not os.path.isdir(root):
        return sets
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        mpath = os.path.join(d, SET_MANIFEST)
        if not name.startswith('set-') or not os.path.isfile(mpath):
            continue
        try:
            with open(mpath) as f:
                m = json.load(f)
        except (IOError, OSError, ValueError):
            continue
        pg_name = m.get('postgres')
        pg = (pb.read_manifest(os.path.join(d, pg_name)) if pg_name else None) or {}
        sets.append(dict(path=d, start_epoch=m.get('created_epoch', 0), exists=True,
                         verification=pg.get('verification'), backup_time=pg.get('start_time')))
    sets.sort(key=lambda s: (s['start_epoch'], s['path']))
    return sets


def latest_set(root, verified_only=False):
    """(set dict or None, number of sets considered) - the newest set under root."""
    sets = list_sets(root)
    if verified_only:
        sets = [s for s in sets if pb.is_verified(s)]
    return (sets[-1] if sets else None), len(sets)

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_set
short_description: Seal, verify and unpack a backup set (Postgres dump, Vault snapshot, encrypted files)
description:
  - A backup set is one directory holding what the runbook's "Backups" table asks for, taken
    together, such as a M(cullis.broker.pg_backup) dump, a M(cullis.broker.vault_snapshot) and the
    stack's C(.env), each with its own manifest, plus the set's manifest C(backup-set.json).
  - V(present) encrypts O(files) into the set (AES-256-GCM, atomic write; C(.env) holds every
    secret of the stack, so files are never stored in clear) and writes C(backup-set.json) listing
    every artifact with its SHA-256, size and manifest.
  - V(verified) checks every artifact of the set against C(backup-set.json) and each artifact's own
    manifest (read-only). The set manifest also holds a digest of every artifact manifest (all but its
    C(verification) record), so an edited manifest - a row count a restore compares with - fails
    here, before a restore stops anything.
  - V(extracted) decrypts one file of the set (O(name)) to O(dest), mode 0600, after checking its
    checksum; nothing changes when O(dest) already has that content. Decryption is streamed (constant
    memory) into a temporary file renamed over O(dest) once every chunk authenticated.
  - V(pruned) applies O(keep_last) / O(keep_days) to the sets (C(set-*) directories) under O(path),
    never deleting the newest set whose Postgres backup is verified; V(latest) only reports the newest
    set (the newest verified one when O(verified_only=true)). M(cullis.broker.backup_set_info) reports
    the same, as a read-only info module; V(latest) stays for existing playbooks.
version_added: 0.1.0
author: Cullis operations team (!UNKNOWN)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details:
      - V(present) adds a file only when the set does not hold it with that content yet (compared by an
        HMAC keyed with the encryption key, stored in the file's manifest), and rewrites the set manifest
        only when the set's artifacts changed. V(pruned) deletes nothing the second time.
options:
  state:
    description: What to do with the set.
    type: str
    choices: [present, verified, extracted, pruned, latest]
    default: present
  path:
    description: The backup set directory; for V(pruned) and V(latest) the directory holding the sets.
    type: path
    required: true
  files:
    description: With V(present), files to add encrypted, as C(name) (in the set) and C(src).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the file inside the set (C(.enc) is appended).
        type: str
        required: true
      src:
        description: File to add.
        type: path
        required: true
  encryption_key_file:
    description:
      - 256-bit key file (as for M(cullis.broker.pg_backup)). Required to add (O(files)) or
        extract (V(extracted)) files.
      - Must be readable by its owner only (mode 0600); a file group or others can read is refused.
    type: path
  name:
    description: With V(extracted) (required), the O(files[].name) to extract.
    type: str
  dest:
    description: With V(extracted) (required), where to write the file (mode 0600).
    type: path
  label:
    description: Free text stored in the set manifest (for example the stack name).
    type: str
  keep_last:
    description: With V(pruned), keep the newest N sets (V(pruned) needs O(keep_last), O(keep_days) or both).
    type: int
  keep_days:
    description: With V(pruned), keep sets younger than N days.
    type: int
  verified_only:
    description: With V(latest), only consider sets whose Postgres backup is verified.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Add the encrypted .env and seal the set
  cullis.broker.backup_set:
    path: "{{ set_dir }}"
    files:
      - {name: env, src: "{{ cullis_env_file }}"}
    encryption_key_file: /etc/cullis/backup.key

- name: Check every artifact of a set (for example the offsite copy)
  cullis.broker.backup_set:
    state: verified
    path: /mnt/offsite/cullis/set-20260412T020000000Z

- name: Put the .env back
  cullis.broker.backup_set:
    state: extracted
    path: /var/backups/cullis/set-20260412T020000000Z
    name: env
    dest: /srv/cullis/.env
    encryption_key_file: /etc/cullis/backup.key
"""

RETURN = r"""
manifest:
  description: The set manifest (C(backup-set.json)).
  returned: success
  type: dict
items:
  description: Artifacts of the set with C(name), C(kind), C(sha256), C(size).
  returned: success
  type: list
  elements: dict
postgres:
  description: File name of the Postgres backup in the set (null if none).
  returned: success
  type: str
vault:
  description: File name of the Vault snapshot in the set (null if none).
  returned: success
  type: str
dest:
  description: With V(extracted), the file written (or already up to date).
  returned: state=extracted
  type: str
kept:
  description: Sets kept by V(pruned).
  returned: state=pruned
  type: list
  elements: str
deleted:
  description: Sets deleted (or to delete in check mode) by V(pruned).
  returned: state=pruned
  type: list
  elements: str
set:
  description: With V(latest), the newest set directory (null when there is none).
  returned: state=latest
  type: str
backup_time:
  description: With V(latest), start time of the set's Postgres backup (end of the data-loss window).
  returned: state=latest
  type: str
verified:
  description: With V(latest), whether that set's Postgres backup is verified.
  returned: state=latest
  type: bool
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb
from ansible_collections.cullis.broker.plugins.module_utils import _backup_set as bs


class Job(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.result = dict(changed=False)

    def key(self):
        if not self.p['encryption_key_file']:
            raise pb.BackupError("encryption_key_file is required: files of a backup set are always encrypted")
        return pb.load_key(self.p['encryption_key_file'])

    def present(self):
        """Add the files that are not in the set with this content yet; rewrite the set manifest only
        when its artifacts changed (idempotent: a second run reports changed=false)."""
        path = self.p['path']
        if not os.path.isdir(path):
            raise pb.BackupError("backup set directory %s does not exist" % path)
        key = self.key() if self.p['files'] else None
        to_add = []
        for f in self.p['files']:
            try:
                mac = bs.source_mac(key, f['src'])
            except (IOError, OSError) as e:
                raise pb.BackupError("cannot read %s: %s" % (f['src'], pb.describe_os_error(e, f['src'])))
            if not bs.file_is_current(path, f['name'], mac):
                to_add.append((f, mac))
        try:
            old = bs.load_set_manifest(path)
        except pb.BackupError:
            old = None
        if self.module.check_mode:
            items = bs.scan(path)
            self.result['changed'] = bool(to_add) or old is None or not bs.same_items(old.get('items'), items) \
                or old.get('label') != self.p['label']
            return
        for f, mac in to_add:
            self.add_file(path, f['name'], f['src'], key, mac)
        items = bs.scan(path)
        if old is not None and bs.same_items(old.get('items'), items) and old.get('label') == self.p['label']:
            self.result.update(manifest=old, items=old['items'], **bs.summary(old['items']))
            return
        now = time.time()
        manifest = dict(kind=bs.KIND, created=pb.utc_iso(now), created_epoch=now, label=self.p['label'], items=items)
        manifest.update(bs.summary(items))
        try:
            pb.write_json_atomic(os.path.join(path, bs.SET_MANIFEST), manifest)
        except (IOError, OSError) as e:
            raise pb.BackupError("writing the set manifest failed: %s" % pb.describe_os_error(e, path))
        self.result.update(changed=True, manifest=manifest, items=items, **bs.summary(items))

    def add_file(self, path, name, src, key, mac):
        final = os.path.join(path, name + '.enc')
        try:
            with open(src, 'rb') as source:
                sha256, size = pb.write_stream_atomic(final, iter(lambda: source.read(pb.READ_SIZE), b''), key)
            pb.write_json_atomic(pb.manifest_path(final), dict(
                kind=bs.FILE_KIND, name=name, source=src, sha256=sha256, size=size, encrypted=True,
                source_hmac=mac, start_time=pb.utc_iso(time.time())))
        except (IOError, OSError) as e:
            pb.remove_path(final)
            raise pb.BackupError("adding %s to the set failed: %s" % (src, pb.describe_os_error(e, path)))

    def verified(self):
        path = self.p['path']
        manifest = bs.load_set_manifest(path)
        problems, unchecked = [], []
        for item in manifest.get('items', []):
            artifact = os.path.join(path, item['name'])
            if not os.path.exists(artifact):
                problems.append("%s is missing" % item['name'])
                continue
            try:
                own = pb.read_manifest(artifact) or {}
            except pb.BackupError as e:
                problems.append(str(e))
                continue
            actual = pb.checksum(artifact)
            if actual != item.get('sha256') or actual != own.get('sha256'):
                problems.append("%s: checksum mismatch (truncated or altered)" % item['name'])
            if 'manifest_sha256' not in item:
                unchecked.append(item['name'])
            elif pb.manifest_digest(own) != item['manifest_sha256']:
                problems.append("%s.json: the artifact's manifest differs from the one sealed into the set (altered "
                                "row counts, checksum or times); restore checks against it, so the set cannot be "
                                "trusted" % item['name'])
        if not manifest.get('items'):
            problems.append("the set lists no artifacts")
        if problems:
            raise pb.BackupError("backup set %s failed verification: %s" % (path, '; '.join(problems)))
        if unchecked:
            self.module.warn("backup set %s was sealed before set manifests covered artifact manifests: the "
                             "manifests of %s are not checked (their artifacts are)" % (path, ', '.join(unchecked)))
        self.result.update(manifest=manifest, items=manifest['items'], **bs.summary(manifest['items']))

    def extracted(self):
        manifest = bs.load_set_manifest(self.p['path'])
        item_name = self.p['name'] + '.enc'
        items = [i for i in manifest.get('items', []) if i['name'] == item_name and i['kind'] == 'file']
        if not items:
            raise pb.BackupError("the set has no file named %s" % self.p['name'])
        artifact = os.path.join(self.p['path'], item_name)
        if pb.sha256_file(artifact) != items[0]['sha256']:
            raise pb.BackupError("%s: checksum mismatch (truncated or altered); nothing was written" % item_name)
        key = self.key()
        dest = self.p['dest']
        self.result.update(manifest=manifest, items=manifest['items'], dest=dest, **bs.summary(manifest['items']))
        try:
            self.result['changed'] = bs.decrypt_to(key, artifact, item_name, dest, self.module.check_mode)
        except (IOError, OSError) as e:
            raise pb.BackupError("writing %s failed, the file was left as it was: %s"
                                 % (dest, pb.describe_os_error(e, dest)))


def pruned(job):
    p = job.p
    kept, deleted = pb.select_retention(bs.list_sets(p['path']), p['keep_last'], p['keep_days'])
    job.result.update(kept=kept, deleted=deleted, changed=bool(deleted))
    if not job.module.check_mode:
        for d in deleted:
            pb.remove_path(d)


def latest(job):
    chosen, _count = bs.latest_set(job.p['path'], job.p['verified_only'])
    job.result.update(set=chosen['path'] if chosen else None, backup_time=chosen['backup_time'] if chosen else None,
                      verified=pb.is_verified(chosen) if chosen else False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='present', choices=['present', 'verified', 'extracted', 'pruned', 'latest']),
            path=dict(type='path', required=True),
            files=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str', required=True), src=dict(type='path', required=True))),
            encryption_key_file=dict(type='path', no_log=False),
            name=dict(type='str'),
            dest=dict(type='path'),
            label=dict(type='str'),
            keep_last=dict(type='int'),
            keep_days=dict(type='int'),
            verified_only=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
        required_if=[('state', 'extracted', ['name', 'dest', 'encryption_key_file']),
                     ('state', 'pruned', ['keep_last', 'keep_days'], True)],
    )
    job = Job(module)
    actions = dict(present=job.present, verified=job.verified, extracted=job.extracted,
                   pruned=lambda: pruned(job), latest=lambda: latest(job))
    try:
        actions[module.params['state']]()
    except pb.BackupError as e:
        module.fail_json(msg=to_native(e))
    module.exit_json(**job.result)


if __name__ == '__main__':
    main()

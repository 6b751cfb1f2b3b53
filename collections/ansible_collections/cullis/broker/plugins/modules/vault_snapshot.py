#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_snapshot
short_description: Save or restore a Vault/OpenBao raft snapshot, checksummed and optionally encrypted
description:
  - V(present) saves a raft snapshot (C(GET /v1/sys/storage/raft/snapshot)) to O(path), written
    atomically (hidden temporary file, fsync, rename) with a C(.sha256) and a JSON manifest beside it,
    optionally encrypted with AES-256-GCM (same key file and format as M(cullis.broker.pg_backup)).
    The broker's signing key lives in Vault, so this is the backup of the key (runbook "Backups").
  - V(restored) checks the checksum and decrypts B(before) contacting Vault, then restores with
    C(sys/storage/raft/snapshot-force) (works into a fresh cluster, e.g. the DR drill's staging
    Vault). This replaces all Vault data, so it needs O(confirm=true). Afterwards the cluster holds
    the source cluster's data, that is its tokens and, after a restart, its unseal keys.
  - With several nodes in O(url) (the members of a raft cluster), the active node (the leader) is used;
    with none active among them, the first unsealed standby (it forwards to the active node), else
    the first that answers. A single O(url) is used as given.
version_added: 0.1.0
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.vault
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: V(present) reports the file it would write; V(restored) checks the file and reports the plan.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: none
    details: Every run takes a new snapshot or restores again.
options:
  state:
    description: Save (V(present)) or restore (V(restored)) a snapshot.
    type: str
    choices: [present, restored]
    default: present
  path:
    description:
      - Snapshot file. With V(present), a directory is also accepted; the file is then named
        C(vault_<timestamp>.snap) (C(.enc) added when encrypted).
    type: path
    required: true
  token:
    description:
      - Token allowed to use C(sys/storage/raft/snapshot*) (a root token). Never logged.
      - If neither O(token) nor O(keys_file) is set, E(VAULT_TOKEN), then E(BAO_TOKEN), is read when
        the module runs (and masked in its output like the option).
      - Mutually exclusive with O(keys_file).
    type: str
  keys_file:
    description:
      - An C(operator init -format=json) document; its C(root_token) is used (never logged; it is
        masked in everything the module returns).
      - Mutually exclusive with O(token).
    type: path
  encryption_key_file:
    description:
      - 256-bit key file; encrypts the saved snapshot, decrypts it on restore.
      - Must be readable by its owner only (mode 0600); a file group or others can read is refused.
    type: path
  confirm:
    description: Must be V(true) for V(restored) (all Vault data is replaced).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Save an encrypted Vault snapshot into the backup set
  cullis.broker.vault_snapshot:
    url: https://127.0.0.1:8200
    ca_cert: "{{ cullis_tls_ca_path }}"
    keys_file: "{{ cullis_vault_keys_file }}"
    path: /var/backups/cullis/set-20260412T020000Z/
    encryption_key_file: /etc/cullis/backup.key

- name: Restore it into the staging Vault
  cullis.broker.vault_snapshot:
    state: restored
    url: https://127.0.0.1:8210
    ca_cert: /srv/staging/tls/ca.pem
    keys_file: /srv/staging/vault/vault-keys.json
    path: /var/backups/cullis/set-20260412T020000Z/vault_20260412T020001123Z.snap.enc
    encryption_key_file: /etc/cullis/backup.key
    confirm: true
"""

RETURN = r"""
path:
  description: The snapshot file written or restored.
  returned: always
  type: str
sha256:
  description: SHA-256 of the snapshot file (as stored, i.e. encrypted when encrypted).
  returned: success
  type: str
size:
  description: Size in bytes of the snapshot file.
  returned: success
  type: int
manifest:
  description: The snapshot's manifest.
  returned: success
  type: dict
sealed:
  description:
    - Whether Vault was sealed after the restore. A restore from another cluster seals it; unseal it
      with the B(source) cluster's unseal keys (M(cullis.broker.vault_unseal)).
  returned: state=restored
  type: bool
node:
  description: The API address of the Vault node the snapshot was taken from or restored through.
  returned: success
  type: str
plan:
  description: Steps taken (or planned in check mode).
  returned: always
  type: list
  elements: str
"""

import os
import socket
import ssl
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb
from ansible_collections.cullis.broker.plugins.module_utils._vault import (
    VaultClient, VaultError, KeysError, active_client, read_root_token, tls_error, vault_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._redact import protect

KIND = 'cullis.broker.vault_snapshot/v1'
TOKEN_ENV = ('VAULT_TOKEN', 'BAO_TOKEN')


def env_token():
    """VAULT_TOKEN, then BAO_TOKEN: read when neither token nor keys_file is given (not an argspec
    fallback, so that token/keys_file exclusion only concerns what the task sets)."""
    for name in TOKEN_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


class Job(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.plan = []
        self.result = dict(changed=False, plan=self.plan, path=self.p['path'])
        urls = [u for u in self.p['url'] if u and u.strip()]
        if not urls:
            raise VaultError("no Vault address: set url (or VAULT_ADDR / BAO_ADDR)", kind='config')
        self.clients = [VaultClient(url, ca_cert=self.p['ca_cert'], validate_certs=self.p['validate_certs'],
                                    timeout=max(self.p['timeout'], 60), retries=self.p['retries'],
                                    retry_delay=self.p['retry_delay']) for url in urls]
        self._client = None

    @property
    def client(self):
        """The node used: the first of O(url) that answers unsealed (no probe with a single url)."""
        if self._client is None:
            self._client = active_client(self.clients)
        return self._client

    def token(self):
        if self.p['keys_file']:
            return protect(self.module, read_root_token(self.p['keys_file']))
        token = self.p['token'] or protect(self.module, env_token())
        if not token:
            raise pb.BackupError("no token: set token (or VAULT_TOKEN) or keys_file (root token)")
        return token

    def _http(self, method, path, body=None, length=None):
        conn = self.client._connection()
        headers = {'X-Vault-Token': self.token()}
        if length is not None:
            headers['Content-Length'] = str(length)
        try:
            conn.request(method, '%s/v1/%s' % (self.client.prefix, path), body=body, headers=headers)
            return conn, conn.getresponse()
        except ssl.SSLError as e:
            conn.close()
            raise tls_error(self.client.url, e, self.p['ca_cert'])
        except (socket.timeout, OSError) as e:
            conn.close()
            raise VaultError("Vault %s is unreachable: %s" % (self.client.url, e))

    def save(self):
        path = self.p['path']
        key = pb.load_key(self.p['encryption_key_file']) if self.p['encryption_key_file'] else None
        self.token()  # inputs are validated before anything is written
        start = time.time()
        if os.path.isdir(path) or path.endswith('/'):
            path = os.path.join(path, 'vault_%s.snap%s' % (pb.utc_stamp(start), '.enc' if key else ''))
        self.result['path'] = path
        self.plan.append("save a raft snapshot of %s to %s%s" % (self.client.url, path, ' (encrypted)' if key else ''))
        self.result['changed'] = True
        if self.module.check_mode:
            return
        directory = os.path.dirname(path) or '.'
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, 0o700)
            except (IOError, OSError) as e:
                raise pb.BackupError("cannot create the snapshot directory: %s" % pb.describe_os_error(e, directory))
        conn, resp = self._http('GET', 'sys/storage/raft/snapshot')
        try:
            if resp.status != 200:
                raise pb.BackupError("Vault %s refused the snapshot (HTTP %s: %s); the token needs "
                                     "sys/storage/raft/snapshot (use the root token) and Vault must be unsealed"
                                     % (self.client.url, resp.status, resp.read(300).decode('utf-8', 'replace')))
            try:
                sha256, size = pb.write_stream_atomic(path, iter(lambda: resp.read(pb.READ_SIZE), b''), key)
            except (IOError, OSError) as e:
                raise pb.BackupError("saving the snapshot failed, no partial file was left: %s"
                                     % pb.describe_os_error(e, directory))
            if size <= (pb.HEADER_LEN + 40 if key else 0):
                pb.remove_path(path)
                raise pb.BackupError("Vault %s returned an empty snapshot" % self.client.url)
        finally:
            conn.close()
        end = time.time()
        manifest = dict(kind=KIND, file=os.path.basename(path), sha256=sha256, size=size,
                        vault_addr=self.client.url, encrypted=bool(key), start_time=pb.utc_iso(start),
                        end_time=pb.utc_iso(end), start_epoch=start)
        pb.write_sidecars(path, manifest, 'snapshot')
        self.result.update(sha256=sha256, size=size, manifest=manifest)

    def restore(self):
        path = self.p['path']
        if not os.path.isfile(path):
            raise pb.BackupError("snapshot %s does not exist" % path)
        manifest = pb.read_manifest(path)
        actual = pb.sha256_file(path)
        if manifest:
            if manifest.get('sha256') != actual:
                raise pb.BackupError("checksum mismatch for %s: the snapshot is truncated or altered; Vault was "
                                     "not touched" % os.path.basename(path))
            self.plan.append("checksum of %s matches its manifest" % os.path.basename(path))
        else:
            self.plan.append("%s has no manifest: no checksum to compare" % os.path.basename(path))
        self.result.update(sha256=actual, size=os.path.getsize(path), manifest=manifest)
        encrypted = pb.is_encrypted_file(path)
        tmp = None
        try:
            source = path
            if encrypted:
                if not self.p['encryption_key_file']:
                    raise pb.KeyProblem("%s is encrypted; set encryption_key_file" % os.path.basename(path))
                key = pb.load_key(self.p['encryption_key_file'])
                fd, tmp = tempfile.mkstemp(prefix='.vault-restore-', dir=os.path.dirname(path) or '.')
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, 'wb') as out, open(path, 'rb') as src:
                    for block in pb.decrypt_chunks(key, src, os.path.basename(path)):
                        out.write(block)
                source = tmp
                self.plan.append("decrypted and authenticated %s" % os.path.basename(path))
            self.plan.append("restore it into %s with sys/storage/raft/snapshot-force (replaces all Vault data)"
                             % self.client.url)
            self.result['changed'] = True
            if not self.p['confirm']:
                if self.module.check_mode:
                    self.plan.append("confirm=true is required")
                    return
                raise pb.BackupError("restoring a Vault snapshot replaces all data of %s; re-run with confirm=true. "
                                     "The snapshot passed its checks; Vault was not touched." % self.client.url)
            if self.module.check_mode:
                return
            with open(source, 'rb') as body:
                conn, resp = self._http('POST', 'sys/storage/raft/snapshot-force', body=body,
                                        length=os.path.getsize(source))
                try:
                    text = resp.read(500).decode('utf-8', 'replace')
                finally:
                    conn.close()
            if resp.status not in (200, 204):
                raise pb.BackupError("Vault %s refused the snapshot restore (HTTP %s: %s)"
                                     % (self.client.url, resp.status, text))
            sealed = self._wait_sealed()
            self.result['sealed'] = sealed
            if sealed:
                self.plan.append("Vault sealed itself after the restore: unseal it with the unseal keys of the "
                                 "cluster the snapshot came from")
        finally:
            if tmp:
                pb.remove_path(tmp)

    def _wait_sealed(self, seconds=10):
        """OpenBao seals itself shortly after a forced restore from another cluster."""
        deadline = time.time() + seconds
        sealed = False
        while time.time() < deadline:
            try:
                sealed = bool(self.client.seal_status().get('sealed'))
            except VaultError:
                sealed = True
            if sealed:
                break
            time.sleep(0.5)
        return sealed


def main():
    argument_spec = vault_argument_spec()
    argument_spec.update(
        state=dict(type='str', default='present', choices=['present', 'restored']),
        path=dict(type='path', required=True),
        token=dict(type='str', no_log=True),
        keys_file=dict(type='path', no_log=False),
        encryption_key_file=dict(type='path', no_log=False),
        confirm=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('token', 'keys_file')])
    try:
        job = Job(module)
        job.save() if module.params['state'] == 'present' else job.restore()
    except (pb.BackupError, VaultError, KeysError) as e:
        module.fail_json(msg=to_native(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="state=%s failed: %s" % (
            module.params['state'], pb.describe_os_error(e, getattr(e, 'filename', None) or module.params['path'])))
    if job._client is not None:
        job.result['node'] = job._client.url
    module.exit_json(**job.result)


if __name__ == '__main__':
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_unseal
short_description: Unseal every node of a Vault/OpenBao cluster with Shamir unseal keys
description:
  - Reads the seal status of each node first. An unsealed node is left alone (C(changed=false)).
  - For a sealed node, submits exactly as many B(distinct) keys as the node's threshold needs.
    Duplicate keys in the input (the same share, even in another encoding) are skipped before
    anything is sent, so they never waste a submission.
  - A key that Vault rejects, that does not advance the unseal progress, or a set of keys that
    does not unseal the node, fails the task with a message naming the key's position
    (C(#2)), never its value, and resets the node's unseal progress so no half-state is left.
  - A partial unseal left by someone else (progress above 0) is reset before starting, because
    the shares it already holds are unknown.
  - Talks to the Vault HTTP API with the Python standard library; nothing is needed on the target.
  - Runbook section 3, "Vault sealed".
version_added: 0.1.0
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.vault
options:
  keys:
    description:
      - Unseal keys (base64 or hex), in the order they should be tried.
      - Never logged or returned. Prefer O(keys_file).
    type: list
    elements: str
  keys_file:
    description:
      - Path to the JSON written by C(vault operator init -format=json) / C(bao operator init -format=json);
        the keys are read from C(unseal_keys_b64) (or C(keys_base64) of older Vault releases).
      - Read B(on the controller) by the module's action plugin, whatever host the module runs on
        (C(delegate_to) the Vault host). The keys reach the module through its no_log O(keys)
        option; the file is never copied to a target.
      - The file is refused when it is readable or writable by group or others (checked on the
        controller), unless O(insecure_keys_file=true). Nothing is sent to Vault then.
      - In production the keys live in cold storage, not on the broker host; bring the file to the
        controller for the incident and remove it afterwards.
    type: path
  insecure_keys_file:
    description:
      - Accept a O(keys_file) that group or others can read.
    type: bool
    default: false
  wait_timeout:
    description:
      - After unsealing, seconds to wait until each unsealed node reports itself active or standby
        in C(sys/health) (a raft cluster elects its leader after the unseal). V(0) does not wait.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return changed status prediction without modifying target.
    details: Reads the seal status and reports what would be submitted; submits nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: When run twice in a row with the same arguments, the second run reports no change.
    details: An unsealed node is reported and left alone.
notes:
  - Exactly one of O(keys) and O(keys_file) is required.
seealso:
  - module: cullis.broker.vault_info
  - module: cullis.broker.vault_token
"""

EXAMPLES = r"""
- name: Unseal the local Vault with the keys file from cold storage
  cullis.broker.vault_unseal:
    url: https://127.0.0.1:8200
    ca_cert: /opt/cullis/tls/ca.pem
    keys_file: /media/coldstorage/vault-keys.json

- name: Unseal all three raft nodes, reporting each
  cullis.broker.vault_unseal:
    url:
      - https://vault-1.internal:8200
      - https://vault-2.internal:8200
      - https://vault-3.internal:8200
    keys_file: "{{ vault_keys_file }}"
  register: unseal

- name: Show each node
  ansible.builtin.debug:
    msg: "{{ item.url }} sealed={{ item.sealed }} {{ item.progress }}/{{ item.threshold }}"
  loop: "{{ unseal.nodes }}"

- name: Set the connection once for every Vault module of the play
  module_defaults:
    group/cullis.broker.vault:
      url: "{{ cullis_vault_addr }}"
      ca_cert: "{{ cullis_tls_ca_path }}"
  block:
    - name: Unseal
      cullis.broker.vault_unseal:
        keys_file: "{{ vault_keys_file }}"
"""

RETURN = r"""
nodes:
  description: One entry per node of O(url), in the same order, after the module ran.
  returned: always
  type: list
  elements: dict
  contains:
    url: {description: The node address., type: str, sample: https://127.0.0.1:8200}
    reachable: {description: Whether the node answered., type: bool}
    error: {description: "Why the node failed (no secret in it), or null.", type: str}
    error_kind: {description: "V(unreachable), V(tls_trust) (certificate not trusted with O(ca_cert)), V(tls), V(vault) (Vault refused), or null.", type: str}
    action:
      description: >-
        V(none) (already unsealed), V(unsealed), V(would_unseal) (check mode),
        V(failed), V(unreachable), V(tls_untrusted) (wrong CA, no key sent), V(impossible) (not enough distinct keys), V(uninitialized).
      type: str
    initialized: {description: Node initialised., type: bool}
    sealed: {description: Sealed after the run., type: bool}
    progress: {description: Unseal progress after the run., type: int}
    threshold: {description: Keys needed to unseal., type: int, sample: 3}
    shares: {description: Key shares in total., type: int, sample: 5}
    version: {description: Vault/OpenBao version., type: str, sample: 2.7.2}
    cluster_name: {description: Cluster name (unsealed nodes)., type: str}
    seal_type: {description: Seal type., type: str, sample: shamir}
    storage_type: {description: Storage backend., type: str, sample: raft}
    ha_enabled: {description: HA enabled (null when the node could not say)., type: bool}
    is_leader: {description: This node is the active node., type: bool}
    leader_address: {description: API address of the active node., type: str}
    leader_cluster_address: {description: Cluster address of the active node., type: str}
    active_time: {description: When the active node became active., type: str}
    keys_submitted: {description: Keys submitted to this node in this run., type: int}
    key_positions: {description: 1-based positions (in the input) of the keys submitted or planned., type: list, elements: int}
    progress_reset: {description: A stale partial unseal was (or would be) reset., type: bool}
    health: {description: "V(active), V(standby), V(sealed), ... after the wait.", type: str}
duplicate_keys:
  description: Input positions skipped as duplicates, each with the position it duplicates.
  returned: always
  type: list
  elements: dict
  sample: [{position: 3, duplicate_of: 1}]
distinct_keys:
  description: Number of distinct keys given.
  returned: always
  type: int
sealed_nodes:
  description: Addresses still sealed after the run.
  returned: always
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._redact import scrub
from ansible_collections.cullis.broker.plugins.module_utils._vault import (
    KeysError, VaultError, clients_from_module, dedupe_keys, health_state, node_report, plan_unseal,
    read_keys_file, vault_argument_spec)


class NodeUnsealer(object):
    def __init__(self, module, client, unique_keys):
        self.module = module
        self.client = client
        self.keys = unique_keys
        self.secrets = [pair[1] for pair in unique_keys]

    def reset(self):
        try:
            resp = self.client.request('POST', 'sys/unseal', body={'reset': True}, idempotent=False)
            return resp.status == 200
        except VaultError:
            return False

    def run(self):
        c = self.client
        try:
            status = c.seal_status()
        except VaultError as e:
            rep = node_report(c.url, error=str(e), error_kind=e.kind)
            rep.update(action='tls_untrusted' if e.kind == 'tls_trust' else 'unreachable', keys_submitted=0,
                       key_positions=[], progress_reset=False)
            return rep, False
        plan = plan_unseal(status, len(self.keys))
        positions = [pair[0] for pair in self.keys[:plan["submit"]]]
        extra = dict(keys_submitted=0, key_positions=positions, progress_reset=False)
        if plan['action'] == 'none':
            return self._final(status, 'none', None, extra), False
        if plan['action'] in ('impossible', 'uninitialized'):
            return self._final(status, plan['action'], "%s: %s" % (c.url, plan['reason']), extra), False
        if self.module.check_mode:
            extra['progress_reset'] = plan['reset']
            return self._final(status, 'would_unseal', None, extra), True

        changed = False
        if plan['reset']:
            if not self.reset():
                return self._final(status, 'failed', "%s: could not reset the stale unseal progress %s/%s"
                                   % (c.url, status.get('progress'), status.get('t')), extra), False
            extra['progress_reset'] = True
            changed = True
        progress = 0
        threshold = int(status['t'])
        submitted = []
        for pos, key in self.keys:
            try:
                resp = c.request('POST', 'sys/unseal', body={'key': key}, idempotent=False)
            except VaultError as e:
                self.reset()
                extra['keys_submitted'] = len(submitted)
                return self._final(None, 'failed', "%s while submitting unseal key #%d; progress reset"
                                   % (e, pos), extra), changed
            submitted.append(pos)
            extra['keys_submitted'] = len(submitted)
            extra['key_positions'] = list(submitted)
            data = resp.json() if resp.status == 200 else {}
            if resp.status == 200 and data.get('sealed') is False:
                return self._final(data, 'unsealed', None, extra), True
            new_progress = data.get('progress')
            if resp.status == 200 and new_progress == progress + 1 and len(submitted) < threshold:
                progress = new_progress
                continue
            # Failure. Vault keeps the progress after rejecting a single malformed or repeated
            # key, and resets it to 0 after a full set of shares that does not decrypt.
            after = self._status_or_none() or {}
            errors = scrub(resp.errors, self.secrets) if resp.status != 200 else 'still sealed'
            if resp.status == 200 and len(submitted) < threshold:
                why = "unseal key #%d did not advance the unseal progress of %s (still %s/%d)" % (
                    pos, c.url, new_progress, threshold)
            elif len(submitted) < threshold or (threshold > 1 and after.get('progress') == progress):
                why = "unseal key #%d was rejected by %s (HTTP %d: %s)" % (pos, c.url, resp.status, errors)
            else:
                why = ("unseal keys %s did not unseal %s (%s): at least one of them is wrong (not a share "
                       "of this Vault)" % (', '.join('#%d' % p for p in submitted), c.url, errors))
            reset_ok = self.reset()
            why += "; progress reset to 0/%d" % threshold if reset_ok else \
                "; resetting the progress FAILED, run `bao operator unseal -reset`"
            why += ". Check the keys file."
            after = self._status_or_none()
            return self._final(after, 'failed', why, extra), changed
        return self._final(status, 'failed', "%s: ran out of keys" % c.url, extra), changed

    def _status_or_none(self):
        try:
            return self.client.seal_status()
        except VaultError:
            return None

    def _final(self, status, action, error, extra):
        leader = {}
        if status and status.get('sealed') is False:
            try:
                leader = self.client.leader()
            except VaultError:
                leader = {}
        rep = node_report(self.client.url, seal_status=status, leader=leader, error=None)
        rep['reachable'] = status is not None or action != 'unreachable'
        rep['error'] = error
        rep['error_kind'] = None if error is None else 'vault'
        rep['action'] = action
        rep.update(extra)
        return rep


def wait_healthy(client, timeout):
    """Poll until the node is active, or a standby that knows its active node; returns the state."""
    deadline = time.monotonic() + timeout
    state = 'error'
    while True:
        try:
            code, data = client.health()
            state = health_state(code, data)
            if state in ('standby', 'perfstandby'):
                leader = client.leader()
                if leader.get('leader_address') and not leader.get('is_self'):
                    return state
            elif state == 'active':
                return state
        except VaultError:
            state = 'error'
        if time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def main():
    argument_spec = vault_argument_spec()
    argument_spec.update(
        keys=dict(type='list', elements='str', no_log=True),
        keys_file=dict(type='path'),
        insecure_keys_file=dict(type='bool', default=False),
        wait_timeout=dict(type='float', default=30),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('keys', 'keys_file')],
                           required_one_of=[('keys', 'keys_file')])
    p = module.params
    try:
        keys = p['keys'] if p['keys'] else read_keys_file(p['keys_file'], p['insecure_keys_file'])
    except KeysError as e:
        module.fail_json(msg=str(e))
    # Keys read from a file are not module options: register them so Ansible masks them anywhere.
    module.no_log_values.update(k for k in keys if k)
    unique, skipped = dedupe_keys(keys)
    clients = clients_from_module(module)

    nodes, changed = [], False
    for client in clients:
        rep, node_changed = NodeUnsealer(module, client, unique).run()
        changed = changed or node_changed
        nodes.append(rep)
    if not module.check_mode and p['wait_timeout'] > 0:
        for client, rep in zip(clients, nodes):
            if rep['action'] == 'unsealed':
                rep['health'] = wait_healthy(client, p['wait_timeout'])
                if rep['health'] in ('active', 'standby', 'perfstandby'):
                    try:
                        leader = client.leader()
                    except VaultError:
                        leader = {}
                    for k, v in node_report(client.url, leader=leader).items():
                        if k in ('ha_enabled', 'is_leader', 'leader_address', 'leader_cluster_address',
                                 'active_time'):
                            rep[k] = v

    result = dict(
        changed=changed,
        nodes=nodes,
        duplicate_keys=[dict(position=a, duplicate_of=b) for a, b in skipped],
        distinct_keys=len(unique),
        sealed_nodes=[n['url'] for n in nodes if n.get('sealed') is not False],
    )
    errors = [n['error'] for n in nodes if n.get('error')]
    if errors:
        module.fail_json(msg='; '.join(errors), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()

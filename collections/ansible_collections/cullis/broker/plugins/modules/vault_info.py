#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_info
short_description: Report seal status, health and HA leader of each Vault/OpenBao node (read-only)
description:
  - Read-only triage for runbook section 3. For every node of O(url) reads C(sys/seal-status),
    C(sys/health) and C(sys/leader), and reports them. Changes nothing and needs no token.
  - An unreachable node is reported (C(reachable=false)) rather than failing the task, so one
    dead node does not hide the state of the others. Set O(fail_on_unreachable=true) to fail instead.
  - A node whose certificate is not trusted with O(ca_cert) (CERTIFICATE_VERIFY_FAILED) is not
    unreachable - it answered - so the task fails naming the TLS trust problem (RV(untrusted_nodes)).
version_added: 0.1.0
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.vault
options:
  fail_on_unreachable:
    description:
      - Fail the task when a node cannot be reached (after the retries).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return changed status prediction without modifying target.
    details: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: When run twice in a row with the same arguments, the second run reports no change.
seealso:
  - module: cullis.broker.vault_unseal
"""

EXAMPLES = r"""
- name: Is the Vault sealed?
  cullis.broker.vault_info:
    url: "{{ cullis_vault_addr }}"
    ca_cert: "{{ cullis_tls_ca_path }}"
  register: vault

- name: Stop here when every node is unsealed
  ansible.builtin.meta: end_play
  when: vault.all_unsealed

- name: Seal state of a raft cluster
  cullis.broker.vault_info:
    url: [https://vault-1:8200, https://vault-2:8200, https://vault-3:8200]
    retries: 0
  register: cluster
"""

RETURN = r"""
nodes:
  description: One entry per node of O(url), in order.
  returned: always
  type: list
  elements: dict
  contains:
    url: {description: The node address., type: str}
    reachable: {description: The node answered., type: bool}
    error: {description: "Why it could not be read, or null.", type: str}
    error_kind: {description: "V(unreachable), V(tls_trust) (certificate not trusted with O(ca_cert)), V(tls), V(http), or null.", type: str}
    health: {description: "V(active), V(standby), V(perfstandby), V(sealed), V(uninitialized) or V(error).", type: str}
    initialized: {description: Initialised., type: bool}
    sealed: {description: Sealed., type: bool}
    progress: {description: Unseal progress., type: int}
    threshold: {description: Keys needed to unseal., type: int}
    shares: {description: Key shares., type: int}
    version: {description: Server version., type: str}
    cluster_name: {description: Cluster name., type: str}
    seal_type: {description: Seal type., type: str}
    storage_type: {description: Storage backend., type: str}
    ha_enabled: {description: HA enabled., type: bool}
    is_leader: {description: This node is the active node., type: bool}
    leader_address: {description: API address of the active node., type: str}
    leader_cluster_address: {description: Cluster address of the active node., type: str}
    active_time: {description: When the active node became active., type: str}
all_unsealed:
  description: Every node is reachable and unsealed.
  returned: always
  type: bool
sealed_nodes:
  description: Addresses of reachable sealed nodes.
  returned: always
  type: list
  elements: str
unreachable_nodes:
  description: Addresses that did not answer.
  returned: always
  type: list
  elements: str
untrusted_nodes:
  description: Addresses whose certificate is not trusted with O(ca_cert); any makes the task fail
    (a wrong CA is a configuration error, not a Vault outage).
  returned: always
  type: list
  elements: str
active_node:
  description: Address of the node reporting itself active, or null.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._vault import (
    VaultError, clients_from_module, health_state, node_report, vault_argument_spec)


def read_node(client):
    try:
        status = client.seal_status()
    except VaultError as e:
        rep = node_report(client.url, error=str(e), error_kind=e.kind)
        rep['health'] = 'error'
        return rep
    leader, health = {}, 'error'
    try:
        code, data = client.health()
        health = health_state(code, data)
        if not status.get('sealed'):
            leader = client.leader()
    except VaultError:
        pass
    return node_report(client.url, seal_status=status, leader=leader, health=health)


def main():
    argument_spec = vault_argument_spec()
    argument_spec.update(fail_on_unreachable=dict(type='bool', default=False))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    nodes = [read_node(c) for c in clients_from_module(module)]
    result = dict(
        changed=False,
        nodes=nodes,
        all_unsealed=all(n['reachable'] and n['sealed'] is False for n in nodes),
        sealed_nodes=[n['url'] for n in nodes if n['reachable'] and n['sealed']],
        unreachable_nodes=[n['url'] for n in nodes if not n['reachable'] and n['error_kind'] != 'tls_trust'],
        untrusted_nodes=[n['url'] for n in nodes if n['error_kind'] == 'tls_trust'],
        active_node=next((n['url'] for n in nodes if n.get('health') == 'active'), None),
    )
    if result['untrusted_nodes']:
        # A wrong CA is a configuration error, not a state of Vault: reporting such a node as
        # unreachable would send an operator (or a playbook) to restart a healthy service.
        module.fail_json(msg='; '.join(n['error'] for n in nodes if n['error_kind'] == 'tls_trust'), **result)
    if module.params['fail_on_unreachable'] and result['unreachable_nodes']:
        module.fail_json(msg='; '.join(n['error'] for n in nodes if not n['reachable']), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()

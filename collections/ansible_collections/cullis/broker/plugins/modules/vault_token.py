#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_token
short_description: Ensure a scoped Vault/OpenBao token (the broker's VAULT_TOKEN) is valid
description:
  - Looks up O(token) with C(auth/token/lookup-self).
  - Valid with a TTL above O(min_ttl) (or a token that never expires) and holding every policy in
    O(policies) - nothing changes.
  - Valid but missing one of O(policies) (for example a token made without C(broker-policy), which
    lets the broker start and fails its first secret read) - reported in RV(missing_policies) and
    replaced by a new token with O(policies), as an invalid one would be. Without O(policies) the
    policies are not checked.
  - Valid, renewable and below O(min_ttl) - renewed (C(auth/token/renew-self), increment O(ttl)).
    If its max TTL keeps it below O(min_ttl) and an admin token is available, a new one is created.
  - Invalid, expired, not renewable and below O(min_ttl), or O(token) not given - a new token is
    created with O(policies), O(ttl), O(renewable) and O(display_name), using the admin token
    (O(admin_token), or the C(root_token) of O(keys_file)). By default the new token is an
    orphan, so revoking the admin/root token afterwards (as the runbook asks) does not revoke it.
  - A created token is returned in RV(token). Because the result then carries a secret, the module
    marks the whole result C(no_log); Ansible censors it in its output, C(-vvv) included, while the
    registered variable holds every field. Write it with a task that has C(no_log=true).
  - Runbook section 3, "Recover (scoped token expired)".
version_added: 0.1.0
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.vault
options:
  token:
    description:
      - The token to check, for example the broker's E(VAULT_TOKEN). Never logged.
      - When not given, a new token is created.
    type: str
  min_ttl:
    description:
      - A token with less time to live than this is renewed or replaced.
        Seconds, or a duration like V(72h), V(30m), V(7d).
    type: str
    default: 72h
  admin_token:
    description:
      - Token allowed to create tokens with O(policies) (the root token in the runbook). Never logged.
      - Only needed when a token must be created. Mutually exclusive with O(keys_file).
    type: str
  keys_file:
    description:
      - JSON written by C(operator init -format=json); its C(root_token) is used as admin token.
      - Refused when group or others can read it, unless O(insecure_keys_file=true).
    type: path
  insecure_keys_file:
    description:
      - Accept a O(keys_file) readable by group or others.
    type: bool
    default: false
  policies:
    description:
      - Policies of a created token. Required when a token has to be created.
      - A valid O(token) must hold every one of them (as a token or identity policy), else it is replaced.
    type: list
    elements: str
  ttl:
    description:
      - TTL of a created token, and the increment asked for when renewing.
    type: str
    default: 720h
  renewable:
    description:
      - Whether a created token can be renewed.
    type: bool
    default: true
  display_name:
    description:
      - Display name of a created token.
    type: str
    default: cullis-broker
  orphan:
    description:
      - Create the token without a parent, so it survives the revocation of the admin token.
        Needs a root or sudo-capable admin token.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return changed status prediction without modifying target.
    details: Looks the token up and reports whether it would be renewed or replaced; renews and creates nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: When run twice in a row with the same arguments, the second run reports no change.
    details: A valid token with enough TTL and the policies asked for is left alone.
seealso:
  - module: cullis.broker.vault_unseal
"""

EXAMPLES = r"""
- name: Ensure the broker's Vault token is valid for at least 3 more days
  cullis.broker.vault_token:
    url: "{{ cullis_vault_addr }}"
    ca_cert: "{{ cullis_tls_ca_path }}"
    token: "{{ lookup('ansible.builtin.ini', 'VAULT_TOKEN', type='properties', file=cullis_env_file) }}"
    keys_file: "{{ vault_keys_file }}"
    policies: [broker-policy]
    ttl: 720h
    min_ttl: 72h
  register: broker_token
  no_log: true

- name: Write a new token to .env
  ansible.builtin.lineinfile:
    path: "{{ cullis_env_file }}"
    regexp: '^VAULT_TOKEN='
    line: "VAULT_TOKEN={{ broker_token.token }}"
    mode: "0600"
  when: broker_token.outcome == 'created'
  no_log: true
"""

RETURN = r"""
outcome:
  description: "V(unchanged), V(renewed) or V(created) (in check mode: what would be done)."
  returned: always
  type: str
previous_state:
  description:
    - "State of O(token) before the run: V(valid), V(expiring) (below O(min_ttl)), V(invalid), V(missing),
      or V(wrong_policies) (valid, but without some of O(policies))."
  returned: always
  type: str
missing_policies:
  description: Policies of O(policies) that the looked-up O(token) does not hold (empty when it holds them all).
  returned: when O(token) is valid and O(policies) is given
  type: list
  elements: str
  sample: [broker-policy]
token:
  description:
    - The new token, only when RV(outcome=created) and not in check mode.
    - Secret. The result is censored in Ansible's output; use it from the registered variable.
  returned: when created
  type: str
accessor:
  description: Accessor of the resulting token (lets an operator look it up or revoke it without the token).
  returned: success, not in check mode when a token is created
  type: str
ttl:
  description: Seconds to live of the resulting token (0 = never expires).
  returned: success
  type: int
expire_time:
  description: Expiry time of the resulting token, or null.
  returned: success
  type: str
policies:
  description: Policies of the resulting token.
  returned: success
  type: list
  elements: str
renewable:
  description: Whether the resulting token is renewable.
  returned: success
  type: bool
node:
  description: The Vault node that answered.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._vault import (
    KeysError, VaultError, clients_from_module, duration_seconds, read_root_token, vault_argument_spec)


class TokenManager(object):
    def __init__(self, module, clients):
        self.module = module
        self.clients = clients
        self.client = None

    def call(self, method, path, body=None, token=None):
        """First node that answers; fails the module when none does."""
        errors = []
        for client in ([self.client] if self.client else self.clients):
            try:
                resp = client.request(method, path, body=body, token=token,
                                      idempotent=(method == 'GET' or path.endswith('lookup-self')))
                self.client = client
                return resp
            except VaultError as e:
                errors.append(str(e))
        self.module.fail_json(msg='no Vault node answered: ' + '; '.join(errors))

    def fail_status(self, what, resp):
        hint = ''
        if resp.status == 503:
            hint = ' Vault is sealed or has no active node: unseal it first (cullis.broker.vault_unseal).'
        self.module.fail_json(msg="%s failed on %s: HTTP %d: %s.%s"
                              % (what, self.client.url, resp.status, resp.errors, hint))

    def lookup(self, token):
        resp = self.call('GET', 'auth/token/lookup-self', token=token)
        if resp.status == 200:
            return resp.json().get('data') or {}
        if resp.status in (400, 401, 403):
            return None  # invalid, expired or revoked
        self.fail_status('token lookup', resp)

    def renew(self, token, ttl):
        resp = self.call('POST', 'auth/token/renew-self', body={'increment': ttl}, token=token)
        if resp.status != 200:
            self.fail_status('token renewal', resp)
        return self.lookup(token) or {}

    def create(self, admin_token):
        p = self.module.params
        body = dict(policies=p['policies'], ttl=p['ttl'], renewable=p['renewable'],
                    display_name=p['display_name'], no_parent=p['orphan'])
        path = 'auth/token/create-orphan' if p['orphan'] else 'auth/token/create'
        resp = self.call('POST', path, body=body, token=admin_token)
        if resp.status in (401, 403):
            self.module.fail_json(msg="the admin token was refused by %s (HTTP %d): it is invalid, expired or may "
                                      "not create tokens%s; use the root token from the keys file"
                                  % (self.client.url, resp.status, ' without a parent' if p['orphan'] else ''))
        if resp.status != 200:
            self.fail_status('token creation', resp)
        auth = resp.json().get('auth') or {}
        return auth


def describe(data):
    return dict(ttl=int(data.get('ttl') or 0), expire_time=data.get('expire_time'),
                policies=data.get('policies') or [], renewable=bool(data.get('renewable')),
                accessor=data.get('accessor'))


def main():
    argument_spec = vault_argument_spec()
    argument_spec.update(
        token=dict(type='str', no_log=True),
        min_ttl=dict(type='str', default='72h'),
        admin_token=dict(type='str', no_log=True),
        keys_file=dict(type='path'),
        insecure_keys_file=dict(type='bool', default=False),
        policies=dict(type='list', elements='str'),
        ttl=dict(type='str', default='720h'),
        renewable=dict(type='bool', default=True),
        display_name=dict(type='str', default='cullis-broker'),
        orphan=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('admin_token', 'keys_file')])
    p = module.params
    try:
        min_ttl = duration_seconds(p['min_ttl'])
        ttl = duration_seconds(p['ttl'])
    except ValueError as e:
        module.fail_json(msg="min_ttl/ttl: %s" % e)
    if ttl <= min_ttl:
        module.fail_json(msg="ttl (%ss) must be longer than min_ttl (%ss), or every run would replace the token"
                         % (ttl, min_ttl))
    mgr = TokenManager(module, clients_from_module(module))

    def admin_token():
        if p['admin_token']:
            return p['admin_token']
        if p['keys_file']:
            try:
                token = read_root_token(p['keys_file'], p['insecure_keys_file'])
            except KeysError as e:
                module.fail_json(msg=str(e))
            module.no_log_values.add(token)
            return token
        return None

    state, data = 'missing', None
    if p['token']:
        data = mgr.lookup(p['token'])
        if data is None:
            state = 'invalid'
        else:
            current = int(data.get('ttl') or 0)
            never = current == 0 and not data.get('expire_time')
            state = 'valid' if never or current > min_ttl else 'expiring'

    result = dict(changed=False, previous_state=state)
    if data is not None and p['policies']:
        held = set(data.get('policies') or []) | set(data.get('identity_policies') or [])
        result['missing_policies'] = sorted(set(p['policies']) - held)
        if result['missing_policies']:
            state = result['previous_state'] = 'wrong_policies'
            module.warn("the token is valid but lacks the policies %s: it is replaced by a new token with %s; the old "
                        "token is not revoked (revoke it by its accessor %s)"
                        % (', '.join(result['missing_policies']), ', '.join(p['policies']), data.get('accessor')))
    if state == 'valid':
        result.update(outcome='unchanged', **describe(data))
    elif state == 'expiring' and data.get('renewable'):
        result.update(outcome='renewed', changed=True)
        if module.check_mode:
            result.update(describe(data))
        else:
            renewed = mgr.renew(p['token'], p['ttl'])
            result.update(describe(renewed))
            if result['ttl'] <= min_ttl:
                if admin_token():
                    state = 'capped'
                else:
                    module.warn("the token was renewed but its max TTL keeps it at %ss, below min_ttl %ss; "
                                "give admin_token or keys_file to replace it" % (result['ttl'], min_ttl))
    if state in ('missing', 'invalid', 'capped', 'wrong_policies') or \
            (state == 'expiring' and not data.get('renewable')):
        if not p['policies']:
            module.fail_json(msg="a new token is needed (current token: %s) but no policies were given" % state,
                             previous_state=result['previous_state'])
        result.update(outcome='created', changed=True, policies=sorted(set(p['policies']) | {'default'}),
                      renewable=p['renewable'], ttl=ttl, expire_time=None)
        if not module.check_mode:
            admin = admin_token()
            if not admin:
                module.fail_json(msg="a new token is needed (current token: %s): give admin_token or keys_file"
                                 % state, previous_state=result['previous_state'])
            auth = mgr.create(admin)
            new_token = auth.get('client_token')
            if not new_token:
                module.fail_json(msg="Vault %s returned no token" % mgr.client.url)
            result.update(ttl=int(auth.get('lease_duration') or 0), policies=auth.get('policies') or [],
                          renewable=bool(auth.get('renewable')), accessor=auth.get('accessor'))
            looked = mgr.lookup(new_token) or {}
            result['expire_time'] = looked.get('expire_time')
            # The result now carries a secret: the action plugin (plugins/action/vault_token.py)
            # marks it no_log so that every callback, -vvv included, censors it.
            result['token'] = new_token
    result['node'] = mgr.client.url if mgr.client else None
    module.exit_json(**result)


if __name__ == '__main__':
    main()

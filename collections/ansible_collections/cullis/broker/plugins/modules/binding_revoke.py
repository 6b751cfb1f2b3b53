#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: binding_revoke
short_description: List and revoke the agent bindings of a Cullis organization
version_added: 0.1.0
description:
  - Lists the org's bindings (C(GET /v1/registry/bindings?org_id=)) and revokes every one that is not revoked
    yet (C(POST /v1/registry/bindings/{id}/revoke)), or only those of O(agent_ids). A revoked binding blocks the
    agent's logins (403 C(No approved binding ...)), and the broker also invalidates the agent's tokens and
    closes its sessions.
  - These calls take the org's own credentials, which the broker accepts only while the org is C(active),
    so revoke bindings B(before) suspending a compromised org (runbook section 6).
  - When the org credentials are rejected (suspended org, secret unknown) and O(db_dsn) is set, the bindings
    are listed and revoked in the database instead (C(bindings.status='revoked')); that path does not close
    sessions or invalidate tokens, so follow it with M(cullis.broker.agent_token_invalidate).
  - Already revoked bindings are unchanged. In check mode the bindings are listed and nothing is revoked.
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker
  - cullis.broker.org_credentials
  - cullis.broker.broker_db
attributes:
  check_mode:
    support: full
    description: Lists the bindings and returns in RV(would_revoke) the ids that would be revoked.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: A second run with the same options changes nothing.
options:
  agent_ids:
    description:
      - Only revoke the bindings of these agents. Default is every binding of the org.
    type: list
    elements: str
  max_workers:
    description:
      - Concurrent revoke requests. Every binding belongs to O(org_id), and real brokers fail concurrent
        writes for one org with 500 (the write is rolled back; contract section 6, point 20), so the
        default is V(1), so the revocations of the org are sent one after the other. A higher value is only
        worth it against a broker that serialises those writes itself; a 500 is retried either way
        (O(retries)).
    type: int
    default: 1
"""

EXAMPLES = r"""
- name: Revoke every binding of a compromised org while its credentials still work
  cullis.broker.binding_revoke:
    broker_url: https://broker.example.com
    org_id: acme
    org_secret: "{{ acme_org_secret }}"
  no_log: true

- name: List the bindings only
  cullis.broker.binding_revoke:
    broker_url: https://broker.example.com
    org_id: acme
    org_secret: "{{ acme_org_secret }}"
  check_mode: true
  register: acme_bindings
"""

RETURN = r"""
bindings:
  description: The org's bindings before this run (C(id), C(agent_id), C(status)).
  returned: always
  type: list
  elements: dict
revoked:
  description: Ids of the bindings revoked by this run.
  returned: always
  type: list
  elements: int
already_revoked:
  description: Ids of selected bindings that were already revoked.
  returned: always
  type: list
  elements: int
would_revoke:
  description: Ids of selected bindings that were not revoked when the module started.
  returned: always
  type: list
  elements: int
failures:
  description: Bindings whose revocation failed (C(id), C(status), C(error)); non-empty fails the task.
  returned: always
  type: list
  elements: dict
method:
  description: C(api) (org credentials) or C(database) (fallback through O(db_dsn)).
  returned: always
  type: str
retries:
  description:
    - Every retry of an idempotent write after a 5xx answer or a connection error (C(method), C(path),
      C(retry), C(outcome), C(delay)); see O(retries). Empty when every call succeeded first time.
  returned: always
  type: list
  elements: dict
"""

from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, broker_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._broker_db import (
    BrokerDB, BrokerDBError, broker_db_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._org import (
    org_credentials_argument_spec, org_headers)


def run_module():
    argument_spec = broker_argument_spec()
    argument_spec.update(org_credentials_argument_spec())
    argument_spec.update(broker_db_argument_spec())
    argument_spec.update(
        agent_ids=dict(type='list', elements='str'),
        max_workers=dict(type='int', default=1),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    org = p['org_id']
    result = dict(changed=False, bindings=[], revoked=[], already_revoked=[], would_revoke=[], failures=[],
                  method=None)
    client = BrokerClient.from_module(module)
    result['retries'] = client.retried
    headers = org_headers(org, p['org_secret']) if p['org_secret'] else None

    rejected = None
    bindings = None
    if headers:
        try:
            resp = client.request('GET', '/v1/registry/bindings', headers=headers, query={'org_id': org})
        except BrokerError as e:
            module.fail_json(msg="nothing was revoked: %s" % e, **result)
        if resp.status == 200 and isinstance(resp.json(), list):
            bindings = [dict(id=b['id'], org_id=b.get('org_id', org), agent_id=b.get('agent_id'),
                             status=b.get('status')) for b in resp.json()]
            result['method'] = 'api'
        elif resp.status in (401, 403):
            rejected = "the broker rejected the credentials of org %r (%s %s)" % (org, resp.status, resp.detail)
        else:
            module.fail_json(msg="nothing was revoked: listing the bindings of %r: HTTP %s %s"
                             % (org, resp.status, resp.detail), **result)
    else:
        rejected = "no org_secret given"

    db = None
    if bindings is None:
        if not p['db_dsn']:
            module.fail_json(msg="nothing was revoked: %s; the bindings can only be revoked with working org "
                             "credentials (before the org is suspended) or through the database (db_dsn)"
                             % rejected, **result)
        try:
            db = BrokerDB(p['db_dsn'], p['db_connect_timeout'])
            if db.org_status(org) is None:
                module.fail_json(msg="nothing was revoked: organization %r not found in the broker database" % org,
                                 **result)
            bindings = db.org_bindings(org)
        except BrokerDBError as e:
            if db:
                db.close()
            module.fail_json(msg="nothing was revoked: %s (%s)" % (e, rejected), **result)
        result['method'] = 'database'

    result['bindings'] = bindings
    wanted = set(p['agent_ids']) if p['agent_ids'] is not None else None
    selected = [b for b in bindings if wanted is None or b['agent_id'] in wanted]
    result['already_revoked'] = [b['id'] for b in selected if b['status'] == 'revoked']
    todo = [b for b in selected if b['status'] != 'revoked']
    result['would_revoke'] = [b['id'] for b in todo]
    if module.check_mode or not todo:
        if db:
            db.close()
        result['changed'] = bool(todo)
        module.exit_json(**result)

    if db:
        module.warn("%s; bindings are revoked in the database, which does not close sessions or invalidate "
                    "tokens: run cullis.broker.agent_token_invalidate next" % rejected)
        try:
            result['revoked'] = db.revoke_bindings(org, [b['id'] for b in todo])
        except BrokerDBError as e:
            module.fail_json(msg="revoking bindings in the database failed: %s" % e, **result)
        finally:
            db.close()
    else:
        def revoke(binding):
            try:
                resp = client.request('POST', '/v1/registry/bindings/%d/revoke' % binding['id'], headers=headers)
            except BrokerError as e:
                return binding, None, str(e)
            return binding, resp.status, None if resp.status == 200 else resp.detail

        with ThreadPoolExecutor(max_workers=max(1, min(p['max_workers'], len(todo)))) as pool:
            for binding, status, error in pool.map(revoke, todo):
                if error is None:
                    result['revoked'].append(binding['id'])
                else:
                    result['failures'].append(dict(id=binding['id'], agent_id=binding['agent_id'],
                                                   status=status, error=error))
    result['changed'] = bool(result['revoked'])
    if result['failures']:
        module.fail_json(msg="%d of %d binding revocations failed (%d revoked); first: binding %s: %s"
                         % (len(result['failures']), len(todo), len(result['revoked']), result['failures'][0]['id'],
                            result['failures'][0]['error']), **result)
    module.exit_json(**result)


def main():
    run_module()


if __name__ == '__main__':
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: agent_token_invalidate
short_description: Invalidate the access tokens already issued to Cullis agents
version_added: 0.1.0
description:
  - Certificate revocation, binding revocation in the database and org suspension only block B(new) logins;
    tokens already issued stay valid until they expire (30 minutes by default). This module ends them; every
    token of the agent issued up to now gets 401 C(Token has been revoked).
  - Uses C(POST /v1/auth/revoke-agent/{agent_id}) with the org's credentials while the broker accepts them
    (active org). When they are rejected (suspended org) or not given, and O(db_dsn) is set, it makes the same
    change in the database, C(agents.token_invalidated_at = now()).
  - It does not block new logins; combine with M(cullis.broker.cert_revoke), M(cullis.broker.binding_revoke)
    or M(cullis.broker.org_state).
  - The broker compares whole seconds; a token issued in the same second as the invalidation is invalid too.
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker
  - cullis.broker.org_credentials
  - cullis.broker.broker_db
attributes:
  check_mode:
    support: full
    description: Reports the agents whose tokens would be invalidated.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: none
    description: An invalidation is an action at a point in time; every run that names agents invalidates their
      tokens issued so far and reports changed.
options:
  agent_ids:
    description:
      - Agents (C(ORG::name)) of O(org_id) whose tokens to invalidate.
    type: list
    elements: str
    required: true
  max_workers:
    description:
      - Concurrent requests on the API path. Every agent belongs to O(org_id); real brokers can fail
        concurrent writes for one org (contract section 6, point 20), so the default is V(1), one
        after the other. A 5xx is retried either way (O(retries)).
    type: int
    default: 1
"""

EXAMPLES = r"""
- name: End the live tokens of a compromised org's agents
  cullis.broker.agent_token_invalidate:
    broker_url: https://broker.example.com
    org_id: acme
    org_secret: "{{ acme_org_secret }}"
    db_dsn: "{{ cullis_db_dsn }}"
    agent_ids: "{{ revoked.agents | map(attribute='agent_id') | list }}"
  no_log: true
"""

RETURN = r"""
invalidated:
  description: Agents whose tokens were invalidated.
  returned: always
  type: list
  elements: str
failures:
  description: Agents that could not be handled (C(agent_id), C(status), C(error)); non-empty fails the task.
  returned: always
  type: list
  elements: dict
method:
  description: C(api) (org credentials) or C(database).
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
    BrokerClient, BrokerError, broker_argument_spec, path_quote)
from ansible_collections.cullis.broker.plugins.module_utils._broker_db import (
    BrokerDB, BrokerDBError, broker_db_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._org import (
    org_credentials_argument_spec, org_headers)


def via_api(client, headers, agent_id):
    try:
        resp = client.request('POST', '/v1/auth/revoke-agent/%s' % path_quote(agent_id), headers=headers)
    except BrokerError as e:
        return agent_id, None, str(e)
    if resp.status in (200, 204):
        return agent_id, resp.status, None
    return agent_id, resp.status, resp.detail


def run_module():
    argument_spec = broker_argument_spec()
    argument_spec.update(org_credentials_argument_spec())
    argument_spec.update(broker_db_argument_spec())
    argument_spec.update(
        agent_ids=dict(type='list', elements='str', required=True),
        max_workers=dict(type='int', default=1),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    org = p['org_id']
    agents = sorted(set(p['agent_ids']))
    result = dict(changed=False, invalidated=[], failures=[], method=None)
    foreign = [a for a in agents if not a.startswith(org + '::')]
    if foreign:
        module.fail_json(msg="nothing was invalidated: agents not of org %r: %s" % (org, ', '.join(foreign)), **result)
    if not agents:
        module.exit_json(**result)
    if module.check_mode:
        result.update(changed=True, invalidated=agents)
        module.exit_json(**result)

    client = BrokerClient.from_module(module)
    result['retries'] = client.retried
    rejected = "no org_secret given"
    if p['org_secret']:
        headers = org_headers(org, p['org_secret'])
        first = via_api(client, headers, agents[0])
        if first[2] is None:
            result['method'] = 'api'
            with ThreadPoolExecutor(max_workers=max(1, min(p['max_workers'], len(agents) - 1))) as pool:
                outcomes = [first] + list(pool.map(lambda a: via_api(client, headers, a), agents[1:]))
            for agent_id, status, error in outcomes:
                if error is None:
                    result['invalidated'].append(agent_id)
                else:
                    result['failures'].append(dict(agent_id=agent_id, status=status, error=error))
            result['changed'] = bool(result['invalidated'])
            if result['failures']:
                module.fail_json(msg="%d of %d token invalidations failed (%d done); first: %s: %s %s"
                                 % (len(result['failures']), len(agents), len(result['invalidated']),
                                    result['failures'][0]['agent_id'], result['failures'][0]['status'],
                                    result['failures'][0]['error']), **result)
            module.exit_json(**result)
        if first[1] not in (401, 403):
            module.fail_json(msg="nothing was invalidated: revoke-agent %s: %s %s" % first, **result)
        rejected = "the broker rejected the credentials of org %r (%s %s)" % (org, first[1], first[2])

    if not p['db_dsn']:
        module.fail_json(msg="nothing was invalidated: %s; set db_dsn to invalidate the tokens in the database"
                         % rejected, **result)
    db = BrokerDB.from_module(module)
    try:
        hit = db.invalidate_tokens(org, agents)
    except BrokerDBError as e:
        module.fail_json(msg="nothing was invalidated: %s" % e, **result)
    finally:
        db.close()
    result.update(method='database', invalidated=hit, changed=bool(hit))
    result['failures'] = [dict(agent_id=a, status=None, error='agent not found in the broker database')
                          for a in agents if a not in hit]
    if result['failures']:
        module.fail_json(msg="%d agents not found in org %r: %s (the others were invalidated)"
                         % (len(result['failures']), org, ', '.join(f['agent_id'] for f in result['failures'])),
                         **result)
    module.exit_json(**result)


def main():
    run_module()


if __name__ == '__main__':
    main()

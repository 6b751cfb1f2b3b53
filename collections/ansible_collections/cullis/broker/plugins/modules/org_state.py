#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: org_state
short_description: Suspend or reactivate a Cullis organization
version_added: 0.1.0
description:
  - O(state=suspended) makes every login of the org's agents fail with 403 C(Organisation '<org>' not yet
    approved) and every call with its org credentials fail with 403. Tokens already issued stay valid until they
    expire (see M(cullis.broker.agent_token_invalidate)).
  - Real brokers have no suspension API, only a dashboard form. The module uses the admin extension
    C(POST /v1/admin/orgs/{id}/suspend) where the broker has it; otherwise (404/405) it makes the same database
    change the dashboard route makes, C(organizations.status='suspended'), through O(db_dsn). That change
    is not written to the broker's audit log (the module warns).
  - O(state=active) reactivates through C(POST /v1/admin/orgs/{id}/approve), which works from C(suspended),
    C(pending) and C(rejected) on every broker (the dashboard's "Reactivate" is a no-op on real brokers).
  - The current status is read with C(GET /v1/registry/orgs/{id}); an org already in the wanted state is unchanged.
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker.admin_required
  - cullis.broker.broker
  - cullis.broker.broker_db
attributes:
  check_mode:
    support: full
    description: Reports the current status and whether it would change.
  diff_mode:
    support: full
    description: Shows the status before and after.
  idempotent:
    support: full
    description: A second run with the same options changes nothing.
options:
  org_id:
    description:
      - The organization's id.
    type: str
    required: true
  state:
    description:
      - V(suspended) or V(active).
    type: str
    choices: [suspended, active]
    default: suspended
"""

EXAMPLES = r"""
- name: Suspend a compromised org (database path on real brokers)
  cullis.broker.org_state:
    broker_url: https://broker.example.com
    admin_secret: "{{ cullis_admin_secret }}"
    db_dsn: "{{ cullis_db_dsn }}"
    org_id: acme
    state: suspended

- name: Reactivate it after the incident
  cullis.broker.org_state:
    broker_url: https://broker.example.com
    admin_secret: "{{ cullis_admin_secret }}"
    org_id: acme
    state: active

- name: Read the status only
  cullis.broker.org_state:
    org_id: acme
  check_mode: true
  register: acme_state
"""

RETURN = r"""
previous_status:
  description: The org's status before the module ran.
  returned: always
  type: str
  sample: active
status:
  description: The org's status afterwards, as read back from the broker (in check mode, the planned one).
  returned: always
  type: str
  sample: suspended
method:
  description: How the change was made - C(extension), C(database), C(approve), or null when nothing changed.
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, broker_argument_spec, path_quote)
from ansible_collections.cullis.broker.plugins.module_utils._broker_db import (
    BrokerDB, BrokerDBError, broker_db_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._org import (
    OrgError, admin_failure, get_org, is_missing_route)


def suspend(module, client, org):
    """Returns the method used; fails the module with a clear message otherwise."""
    resp = client.admin_post('/v1/admin/orgs/%s/suspend' % path_quote(org))
    if resp.status in (200, 204) or (resp.status == 409 and client.retried):
        return 'extension'  # 409 after a retry: the lost first attempt did it (status is read back)
    if not is_missing_route(resp):
        module.fail_json(msg=admin_failure(resp, "suspending %r" % org))
    if not module.params['db_dsn']:
        module.fail_json(msg="this broker has no suspension API (POST /v1/admin/orgs/{id}/suspend -> %s), as real "
                         "Cullis brokers don't; set db_dsn (the broker's DATABASE_URL) to suspend %r in the "
                         "database the way the dashboard does" % (resp.status, org))
    db = BrokerDB.from_module(module)
    try:
        db.set_org_status(org, 'suspended')
    except BrokerDBError as e:
        module.fail_json(msg="suspending %r in the database failed: %s" % (org, e))
    finally:
        db.close()
    module.warn("org %r was suspended in the database (organizations.status); real brokers have no API for it, "
                "so the broker's audit log has no onboarding.suspended entry for this change" % org)
    return 'database'


def reactivate(module, client, org):
    resp = client.admin_post('/v1/admin/orgs/%s/approve' % path_quote(org))
    if resp.status == 200 or resp.status == 409:
        return 'approve'
    module.fail_json(msg=admin_failure(resp, "reactivating %r" % org))


def run_module():
    argument_spec = broker_argument_spec(admin_secret_required=True)
    argument_spec.update(broker_db_argument_spec())
    argument_spec.update(
        org_id=dict(type='str', required=True),
        state=dict(type='str', choices=['suspended', 'active'], default='suspended'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    org, wanted = module.params['org_id'], module.params['state']
    client = BrokerClient.from_module(module)
    try:
        before = get_org(client, org).get('status')
    except OrgError as e:
        module.fail_json(msg=str(e))
    result = dict(changed=before != wanted, previous_status=before, status=before, method=None,
                  retries=client.retried)
    if module._diff:
        result['diff'] = dict(before=dict(status=before), after=dict(status=wanted))
    if not result['changed'] or module.check_mode:
        if module.check_mode:
            result['status'] = wanted
        module.exit_json(**result)
    try:
        result['method'] = suspend(module, client, org) if wanted == 'suspended' else reactivate(module, client, org)
        result['status'] = get_org(client, org).get('status')
    except (BrokerError, OrgError) as e:
        module.fail_json(msg=str(e), **result)
    if result['status'] != wanted:
        module.fail_json(msg="org %r is %r after the change (%s), not %r"
                         % (org, result['status'], result['method'], wanted), **result)
    module.exit_json(**result)


def main():
    run_module()


if __name__ == '__main__':
    main()

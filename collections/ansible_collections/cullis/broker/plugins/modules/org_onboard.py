#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is in module_utils/_org_onboard.py (Onboarder); this file keeps the documentation,
# the argument spec and the validation of the options.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: org_onboard
short_description: Onboard an organization and its agents on a Cullis broker, ready for agent logins
version_added: "0.1.0"
description:
  - Ensures an organization exists on the broker and that its agents can log in, using only the
    broker's HTTP API (works against any Cullis broker, no database access).
  - "Steps, each done only when needed: the admin creates the org (C(POST /v1/registry/orgs));
    the org uploads its CA (C(POST /v1/registry/orgs/{id}/certificate), org credentials); the admin
    pins the org's mastio public key (C(PATCH /v1/admin/orgs/{id}/mastio-pubkey)); each agent is
    published with C(POST /v1/federation/publish-agent), countersigned with the mastio key; its
    binding is created and approved with the org credentials."
  - Generates what the org needs into O(identity_dir) the first time (EC P-256 org CA, mastio key,
    org secret, one classic-mode certificate per agent) and reuses it afterwards. Private keys and
    the org secret are written with mode C(0600). M(cullis.broker.agent_login) and other playbooks
    log the agents in from that directory.
  - "Layout of O(identity_dir): C(org.json) (what was pushed, no secrets), C(org-secret),
    C(ca.pem), C(ca-key.pem), C(mastio-key.pem), C(agents/<name>/) with C(identity.json),
    C(cert.pem), C(key.pem), C(chain.pem), C(mastio-key.pem)."
  - "Idempotent: an existing org whose credentials match the org secret in O(identity_dir) and
    whose CA and mastio key were already pushed from this directory is left alone; agents with an
    approved binding are left alone. Approving an already approved binding is a 500 on real
    brokers, so binding status is read first."
  - An org that exists on the broker but whose secret is not known (not in O(identity_dir), not
    given in O(org_secret)) or does not match is an error, never overwritten.
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker.admin_required
  - cullis.broker.broker
attributes:
  check_mode:
    support: full
    description:
      - Reads the broker state and reports what would be done; writes nothing to the broker or to
        O(identity_dir).
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: A second run with the same options changes nothing.
options:
  org_id:
    description:
      - Organization id (letters, digits, C(.), C(_), C(-); at most 128 characters).
    type: str
    required: true
  display_name:
    description:
      - Display name used when the org is created. Defaults to O(org_id).
    type: str
  identity_dir:
    description:
      - Directory holding the org's generated identity (created with mode C(0700) if missing).
    type: path
    required: true
  org_secret:
    description:
      - The org secret (C(x-org-secret)), at most 72 bytes (bcrypt's limit).
      - Defaults to the one stored in O(identity_dir); when there is none a random one is
        generated and stored there (mode C(0600)).
    type: str
  agents:
    description:
      - Agents of the org that must be able to log in.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Short agent name; the agent id is C(<org_id>::<name>). C(<org_id>::<name>) is accepted too.
        type: str
        required: true
      display_name:
        description: Display name published for the agent. Defaults to the agent id.
        type: str
      capabilities:
        description: Capabilities published for the agent.
        type: list
        elements: str
        default: []
      scope:
        description: Binding scope; must be a subset of O(agents[].capabilities). Defaults to the capabilities.
        type: list
        elements: str
  rate_limit_wait:
    description:
      - The broker allows 30 C(publish-agent) calls per minute per client IP. On HTTP 429 the
        module waits for C(Retry-After) and retries, for at most this many seconds in total per run.
    type: int
    default: 300
requirements:
  - cryptography
seealso:
  - module: cullis.broker.agent_login
"""

EXAMPLES = r"""
- name: Onboard a demo org with two agents
  cullis.broker.org_onboard:
    broker_url: https://127.0.0.1:8443
    ca_path: "{{ cullis_tls_ca_path }}"
    admin_secret: "{{ cullis_admin_secret }}"
    org_id: demo-acme
    identity_dir: "{{ cullis_stack_dir }}/identities/demo-acme"
    agents:
      - name: buyer
        capabilities: [order.read]
      - name: auditor
  register: acme

- name: The same, with the connection options set once for the play
  module_defaults:
    group/cullis.broker.broker:
      broker_url: "{{ cullis_broker_public_url }}"
      ca_path: "{{ cullis_tls_ca_path }}"
      admin_secret: "{{ cullis_admin_secret }}"
  block:
    - name: Onboard org B
      cullis.broker.org_onboard:
        org_id: demo-globex
        identity_dir: /srv/cullis/identities/demo-globex
        agents:
          - name: seller
"""

RETURN = r"""
org_id:
  description: The org id.
  returned: always
  type: str
identity_dir:
  description: Absolute path of the identity directory.
  returned: always
  type: str
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["create org demo-acme", "upload org CA", "pin mastio public key", "publish agent demo-acme::buyer"]
rate_limit_waited:
  description: Seconds spent waiting for the publish-agent rate limit.
  returned: always
  type: int
org_created:
  description: Whether the org was created by this run.
  returned: always
  type: bool
ca_cert_path:
  description: Path of the org CA certificate.
  returned: always
  type: str
org_secret_path:
  description: Path of the file holding the org secret (mode 0600). The secret itself is never returned.
  returned: always
  type: str
agents:
  description: One entry per agent of O(agents).
  returned: always
  type: list
  elements: dict
  contains:
    agent_id:
      description: Full agent id.
      type: str
    name:
      description: Short agent name.
      type: str
    dir:
      description: Agent identity directory (for M(cullis.broker.agent_login)).
      type: str
    cert_serial_hex:
      description: Serial of the agent certificate as the revocation API wants it (lowercase hex, no leading zeros).
      type: str
    cert_thumbprint:
      description: SHA-256 of the certificate DER (what the broker pins).
      type: str
    binding_id:
      description: Id of the org's binding for the agent (null in check mode before creation).
      type: int
    binding_status:
      description: Binding status after the run (C(approved) unless in check mode).
      type: str
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, broker_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils import _org_identity as oid
from ansible_collections.cullis.broker.plugins.module_utils._org_onboard import OnboardError, Onboarder


def agent_specs(module):
    org_id = module.params['org_id']
    specs, seen = [], set()
    for a in module.params['agents']:
        try:
            agent_id, short = oid.agent_id_for(org_id, a['name'])
        except ValueError as e:
            module.fail_json(msg=str(e))
        if not oid.NAME_RE.match(short):
            module.fail_json(msg="agent name %r: use letters, digits, '.', '_' and '-' only" % a['name'])
        if agent_id in seen:
            module.fail_json(msg="agent %s is listed twice" % agent_id)
        seen.add(agent_id)
        caps = list(a.get('capabilities') or [])
        scope = list(caps if a.get('scope') is None else a['scope'])
        extra = sorted(set(scope) - set(caps))
        if extra:
            module.fail_json(msg="agent %s: scope %s not in its capabilities %s" % (agent_id, extra, caps))
        specs.append({'agent_id': agent_id, 'short': short, 'capabilities': caps, 'scope': scope,
                      'display_name': a.get('display_name') or agent_id})
    return specs


def main():
    argument_spec = broker_argument_spec(admin_secret_required=True)
    argument_spec.update(
        org_id=dict(type='str', required=True),
        display_name=dict(type='str'),
        identity_dir=dict(type='path', required=True),
        org_secret=dict(type='str', no_log=True),
        rate_limit_wait=dict(type='int', default=300),
        agents=dict(type='list', elements='dict', default=[], options=dict(
            name=dict(type='str', required=True),
            display_name=dict(type='str'),
            capabilities=dict(type='list', elements='str', default=[]),
            scope=dict(type='list', elements='str'),
        )),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not oid.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(oid.CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    if not oid.NAME_RE.match(p['org_id']):
        module.fail_json(msg="org_id %r: use 1-128 letters, digits, '.', '_' and '-'" % p['org_id'])
    if p['org_secret'] is not None and len(p['org_secret'].encode('utf-8')) > 72:
        module.fail_json(msg="org_secret is longer than 72 bytes; brokers with bcrypt >= 5 answer 500 to it: "
                             "use a shorter secret")
    specs = agent_specs(module)
    client = BrokerClient.from_module(module)
    result = dict(changed=False, org_id=p['org_id'], identity_dir=os.path.abspath(p['identity_dir']))
    try:
        onboarder = Onboarder(module, client)
        agents = onboarder.run(specs)
    except (OnboardError, BrokerError) as e:
        module.fail_json(msg=str(e), **result)
    except (OSError, ValueError) as e:
        module.fail_json(msg="onboarding org %s failed: %s" % (p['org_id'], e),
                         exception=traceback.format_exc(), **result)
    finally:
        client.close()
    d = onboarder.dir
    result.update(changed=bool(onboarder.actions), actions=onboarder.actions, org_created=onboarder.org_created,
                  rate_limit_waited=onboarder.waited, ca_cert_path=d.file(oid.CA_FILE),
                  org_secret_path=d.file(oid.SECRET_FILE), agents=agents)
    module.exit_json(**result)


if __name__ == '__main__':
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: broker_health
short_description: Probe a Cullis broker's /health and /readyz (read-only)
version_added: 0.1.0
description:
  - Calls C(GET /health) and C(GET /readyz) on a Cullis broker and reports the HTTP status,
    latency, the state of every C(/readyz) component check (C(database), C(redis), C(kms)), and
    whether the TLS certificate verified.
  - A C(redis) check reporting C(not_configured) is flagged as B(degraded) - a broker that started
    while Redis was unreachable silently falls back to in-memory stores, keeps C(/readyz) green
    and fails every production login.
  - If TLS verification fails, the probes are repeated without verification so the report still
    shows the broker's health, and RV(tls.verified) is V(false).
  - With O(admin_secret) set, one admin call (C(GET /v1/registry/orgs)) shows whether the
    C(x-admin-secret) is accepted (runbook section 7).
  - Never fails because the broker is unhealthy or unreachable; use RV(healthy) in C(assert) or
    C(until). Fails only on invalid options.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
  - cullis.broker.broker
options:
  check_admin:
    description:
      - Probe C(GET /v1/registry/orgs) with O(admin_secret). Defaults to V(true) when
        O(admin_secret) is set.
    type: bool
"""

EXAMPLES = r"""
- name: Health of the broker behind nginx
  cullis.broker.broker_health:
    broker_url: https://127.0.0.1:8443
    ca_path: /srv/cullis/.stack/tls/ca.pem
  register: health

- name: Wait until the broker is ready with every component ok
  cullis.broker.broker_health:
    broker_url: http://127.0.0.1:8000
  register: health
  until: health.healthy
  retries: 30
  delay: 2

- name: Is the admin secret accepted?
  cullis.broker.broker_health:
    broker_url: https://127.0.0.1:8443
    ca_path: /srv/cullis/.stack/tls/ca.pem
    admin_secret: "{{ lookup('ansible.builtin.env', 'CULLIS_ADMIN_SECRET') }}"
  register: health
- ansible.builtin.debug:
    msg: "admin auth: {{ health.admin.state }}"
"""

RETURN = r"""
url:
  description: The broker URL that was probed (O(broker_url)).
  returned: always
  type: str
reachable:
  description: The broker answered HTTP on /health.
  type: bool
  returned: always
healthy:
  description: C(/health) 200, C(/readyz) 200 C(ready), every component V(ok), TLS verified (for https).
  type: bool
  returned: always
ready:
  description: C(/readyz) answered 200 with status C(ready).
  type: bool
  returned: always
degraded:
  description: Reasons the broker works only partly (e.g. C(redis not_configured)). Empty when healthy.
  type: list
  elements: str
  returned: always
problems:
  description: Every reason RV(healthy) is false, in words an operator can act on.
  type: list
  elements: str
  returned: always
health:
  description: Result of C(GET /health).
  type: dict
  returned: always
  contains:
    status:
      description: "HTTP status, null when unreachable."
      type: int
      returned: always
    latency_ms:
      description: "Round-trip time in milliseconds."
      type: float
      returned: always
    body:
      description: "Parsed JSON body."
      type: dict
      returned: always
    error:
      description: "Transport error text."
      type: str
      returned: always
  sample: {status: 200, latency_ms: 3.1, body: {status: ok, version: 0.1.0}, error: null}
readyz:
  description: Result of C(GET /readyz).
  type: dict
  returned: always
  contains:
    status:
      description: "HTTP status."
      type: int
      returned: always
    state:
      description: "C(ready), C(not_ready), C(draining) or null."
      type: str
      returned: always
    latency_ms:
      description: "Round-trip time in milliseconds."
      type: float
      returned: always
    checks:
      description: "Raw C(checks) map of the broker."
      type: dict
      returned: always
    error:
      description: "Transport error text."
      type: str
      returned: always
components:
  description:
    - One entry per component (C(database), C(redis), C(kms)).
    - C(state) is V(ok), V(not_configured), V(error), or V(unchecked) (the broker stops at the first
      failing check, so later ones are not run).
  type: dict
  returned: always
  sample:
    database: {state: ok, detail: null}
    redis: {state: not_configured, detail: "broker runs without Redis"}
    kms: {state: error, detail: "Vault returned HTTP 503 - check broker logs for details"}
tls:
  description: TLS verification of the broker URL.
  type: dict
  returned: always
  contains:
    scheme:
      description: "C(http) or C(https)."
      type: str
      returned: always
    verified:
      description: "Certificate verified against O(ca_path) / system trust; null for http or unreachable."
      type: bool
      returned: always
    error:
      description: "Verification error text."
      type: str
      returned: always
admin:
  description: Result of the admin probe (only with O(admin_secret)).
  type: dict
  returned: when admin_secret is set
  contains:
    status:
      description: "HTTP status of C(GET /v1/registry/orgs)."
      type: int
      returned: always
    state:
      description: "V(ok) (200), V(rejected) (403), V(error)."
      type: str
      returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, broker_argument_spec)

COMPONENTS = ('database', 'redis', 'kms')


def classify_checks(checks):
    """Map the broker's /readyz `checks` to {component: {state, detail}}."""
    checks = checks if isinstance(checks, dict) else {}
    out = {}
    for name in list(COMPONENTS) + sorted(k for k in checks if k not in COMPONENTS):
        raw = checks.get(name)
        if raw is None:
            out[name] = {'state': 'unchecked', 'detail': None}
        elif raw == 'ok':
            out[name] = {'state': 'ok', 'detail': None}
        elif raw == 'not_configured':
            out[name] = {'state': 'not_configured', 'detail': 'broker runs without %s' % name}
        else:
            text = str(raw)
            if text.startswith('error:'):
                text = text[len('error:'):].strip()
            out[name] = {'state': 'error', 'detail': text}
    return out


def assess(health, readyz, components, tls, admin=None):
    """Return (healthy, degraded, problems) from the probe results."""
    problems, degraded = [], []
    if health['status'] is None:
        problems.append('broker unreachable: %s' % health.get('error'))
    elif health['status'] != 200:
        problems.append('/health answered HTTP %s' % health['status'])
    if readyz['status'] is not None and readyz['status'] != 200:
        problems.append('/readyz answered HTTP %s (%s)' % (readyz['status'], readyz.get('state')))
    for name, comp in components.items():
        if comp['state'] == 'error':
            problems.append('%s check failed: %s' % (name, comp['detail']))
        elif comp['state'] == 'not_configured':
            degraded.append('%s not_configured' % name)
            problems.append('%s not_configured: the broker started without it; restart the broker once %s is up'
                            % (name, name))
    if readyz.get('state') == 'draining':
        problems.append('broker is draining (received SIGTERM/SIGINT); restart it')
    if tls.get('verified') is False:
        problems.append('TLS verification failed: %s' % tls.get('error'))
    if admin is not None and admin.get('state') != 'ok':
        problems.append('admin secret %s (HTTP %s)' % (admin.get('state'), admin.get('status')))
    return (not problems), degraded, problems


def probe(client, path, **kwargs):
    t0 = time.monotonic()
    try:
        resp = client.request('GET', path, **kwargs)
    except BrokerError as e:
        return None, round((time.monotonic() - t0) * 1000, 1), str(e)
    return resp, round((time.monotonic() - t0) * 1000, 1), None


def run(params):
    url = params['broker_url']
    scheme = url.split('://', 1)[0].lower()
    tls = {'scheme': scheme, 'verified': None, 'error': None}
    kw = dict(admin_secret=params.get('admin_secret'), ca_path=params.get('ca_path'),
              timeout=params.get('timeout') or 10)
    client = BrokerClient(url, validate_certs=params.get('validate_certs', True), **kw)
    resp, ms, err = probe(client, '/health')
    if resp is None and scheme == 'https' and err and err.startswith('TLS error'):
        tls.update(verified=False, error=err)
        client.close()
        client = BrokerClient(url, validate_certs=False, **kw)
        resp, ms, err = probe(client, '/health')
    elif resp is not None and scheme == 'https':
        tls['verified'] = True if params.get('validate_certs', True) else None
        if tls['verified'] is None:
            tls['error'] = 'not verified (validate_certs=false)'
    health = {'status': resp.status if resp else None, 'latency_ms': ms,
              'body': resp.json() if resp else None, 'error': err}
    readyz = {'status': None, 'state': None, 'latency_ms': None, 'checks': {}, 'error': None}
    admin = None
    if resp is not None:
        r, ms, err = probe(client, '/readyz')
        body = r.json() if r is not None else None
        body = body if isinstance(body, dict) else {}
        readyz = {'status': r.status if r else None, 'state': body.get('status'), 'latency_ms': ms,
                  'checks': body.get('checks') or {}, 'error': err}
        check_admin = params.get('check_admin')
        if check_admin is None:
            check_admin = bool(params.get('admin_secret'))
        if check_admin:
            if not params.get('admin_secret'):
                admin = {'status': None, 'state': 'error', 'detail': 'no admin_secret given'}
            else:
                r, ms, err = probe(client, '/v1/registry/orgs', admin=True)
                if r is None:
                    admin = {'status': None, 'state': 'error', 'detail': err}
                else:
                    state = 'ok' if r.status == 200 else ('rejected' if r.status in (401, 403) else 'error')
                    admin = {'status': r.status, 'state': state,
                             'detail': None if r.status == 200 else r.detail[:200]}
    client.close()
    components = classify_checks(readyz['checks']) if readyz['status'] is not None else dict(
        (c, {'state': 'unchecked', 'detail': None}) for c in COMPONENTS)
    healthy, degraded, problems = assess(health, readyz, components, tls, admin)
    result = dict(changed=False, reachable=health['status'] is not None, healthy=healthy,
                  ready=readyz['status'] == 200 and readyz['state'] == 'ready',
                  degraded=degraded, problems=problems, health=health, readyz=readyz,
                  components=components, tls=tls, url=url)
    if admin is not None:
        result['admin'] = admin
    return result


def main():
    argument_spec = broker_argument_spec()
    argument_spec.update(check_admin=dict(type='bool'))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = run(module.params)
    except BrokerError as e:
        module.fail_json(msg=str(e))
    module.exit_json(**result)


if __name__ == '__main__':
    main()

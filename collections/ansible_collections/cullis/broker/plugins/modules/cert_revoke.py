#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Why this file is ~420 lines: about 175 of them are DOCUMENTATION/EXAMPLES/RETURN; the code
# (~210 lines) selects, de-duplicates and revokes this module's targets. Broker and database
# access, org discovery and serial normalisation are in module_utils (_broker, _broker_db, _org,
# _serials).

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cert_revoke
short_description: Revoke agent certificates on a Cullis broker, by serial, by certificate or for a whole org
version_added: 0.1.0
description:
  - Puts certificate serials on the broker's revocation list (C(POST /v1/admin/certs/revoke)), so that
    logins presenting those certificates get 401 C(Certificate has been revoked).
  - Serials are always sent in the only form the broker matches, lowercase hex without leading zeros or
    colons; OpenSSL forms (V(0A:1B:FF), V(0A1BFF)) are converted. Anything that is not a serial - including a
    64-digit SHA-256 thumbprint, which the runbook's old listing returned - is rejected naming the entry,
    before anything is revoked.
  - With O(org_id) and O(all_agents=true) every agent certificate of the org is found, through the broker's
    admin agent listing where it exists (an extension of this project's broker), else from the broker
    database's C(agents.cert_pem) through O(db_dsn) (real brokers have no such listing).
  - Idempotent - a serial already on the revoked list (or answered with 409) counts as unchanged.
    Requests run concurrently over keep-alive connections (O(max_workers)).
  - A revocation blocks new logins only; tokens already issued stay valid until they expire. Use
    M(cullis.broker.agent_token_invalidate) to end them, M(cullis.broker.binding_revoke) and
    M(cullis.broker.org_state) for the rest of an org compromise (runbook section 6).
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker.admin_required
  - cullis.broker.broker
  - cullis.broker.broker_db
attributes:
  check_mode:
    support: full
    description: Returns in RV(would_revoke) the serials that would be revoked, without revoking.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: A second run with the same options changes nothing.
options:
  serials:
    description:
      - Certificate serial numbers in hex. Case, colons, a V(0x) prefix and leading zeros do not matter.
      - Quote them in YAML. Unquoted, YAML turns V(0100) into 64 and V(0x1F) into 31 before the module sees
        them; entries that are not strings are refused, naming their position, and nothing is revoked.
      - Requires O(org_id). Each serial must be the certificate of an agent of the org (or already on its
        revoked list), unless O(allow_unknown_serials=true).
    type: list
    elements: raw
    default: []
  allow_unknown_serials:
    description:
      - Revoke serials of O(serials) that match no certificate of O(org_id) (for example a certificate that is
        no longer pinned to an agent), with a warning listing them (RV(unknown_serials)).
      - Without it such a serial fails the task before anything is revoked, so a typo cannot report
        V(changed) while the real certificate stays valid. The check reads the org's agents through the admin
        listing, else through O(db_dsn).
    type: bool
    default: false
  certs:
    description:
      - Certificates, each as PEM contents or the path of a PEM file. Only the first certificate of each entry
        (the leaf of a chain) is revoked; CA certificates are refused.
      - The org is taken from the certificate's O attribute unless O(org_id) is set (then they must agree).
    type: list
    elements: str
    default: []
  org_id:
    description:
      - The organization the certificates belong to. It must exist on the broker.
    type: str
  all_agents:
    description:
      - Revoke the certificate of every agent of O(org_id).
      - Agents without a pinned certificate have no serial to revoke; they are returned in
        RV(unpinned_agents) with a warning.
    type: bool
    default: false
  reason:
    description:
      - Reason stored with each revocation.
    type: str
    default: revoked by cullis.broker.cert_revoke
  revoked_by:
    description:
      - Who revoked, stored with each revocation.
    type: str
    default: admin
  max_workers:
    description:
      - Concurrent revoke requests.
    type: int
    default: 8
requirements:
  - cryptography (to read certificates)
"""

EXAMPLES = r"""
- name: Revoke two certificates by serial (OpenSSL form is fine)
  cullis.broker.cert_revoke:
    broker_url: https://broker.example.com
    admin_secret: "{{ cullis_admin_secret }}"
    org_id: acme
    serials:
      - "0A:1B:2C:3D"
      - "5f00aa"
    reason: laptop stolen

- name: Revoke a certificate file
  cullis.broker.cert_revoke:
    broker_url: https://broker.example.com
    admin_secret: "{{ cullis_admin_secret }}"
    certs:
      - /etc/cullis/agents/acme-billing.pem

- name: Revoke every agent certificate of a compromised org (database discovery on real brokers)
  cullis.broker.cert_revoke:
    broker_url: https://broker.example.com
    admin_secret: "{{ cullis_admin_secret }}"
    db_dsn: "{{ cullis_db_dsn }}"
    org_id: acme
    all_agents: true
    reason: org compromise
  register: revoked

- name: Only list what would be revoked
  cullis.broker.cert_revoke:
    org_id: acme
    all_agents: true
  check_mode: true
  register: plan
"""

RETURN = r"""
revoked:
  description: Certificates revoked by this run.
  returned: always
  type: list
  elements: dict
  sample: [{"serial_hex": "a1bff", "org_id": "acme", "agent_id": "acme::billing"}]
already_revoked:
  description: Certificates that were already on the revoked list (unchanged).
  returned: always
  type: list
  elements: dict
failures:
  description: Certificates whose revocation failed, with C(status) and C(error). Non-empty fails the task.
    (Named C(failures) because Ansible reserves C(failed).)
  returned: always
  type: list
  elements: dict
would_revoke:
  description: Certificates that were not yet revoked when the module started (in check mode, the plan).
  returned: always
  type: list
  elements: dict
agents:
  description: With O(all_agents), every agent of the org with C(agent_id), C(serial_hex), C(is_active).
  returned: always
  type: list
  elements: dict
unpinned_agents:
  description: Agent ids of the org that have no pinned certificate, so no serial to revoke.
  returned: always
  type: list
  elements: str
unknown_serials:
  description: Serials of O(serials) that match no certificate of the org (revoked only with O(allow_unknown_serials)).
  returned: always
  type: list
  elements: str
discovery:
  description: How agents were found - C(api) (admin listing), C(database), or null without O(all_agents).
  returned: always
  type: str
counts:
  description: Number of entries in each list above.
  returned: always
  type: dict
  sample: {"targets": 20, "revoked": 20, "already_revoked": 0, "failures": 0}
"""

from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cullis.broker.plugins.module_utils._broker import (
    BrokerClient, BrokerError, broker_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._broker_db import (
    BrokerDB, BrokerDBError, broker_db_argument_spec)
from ansible_collections.cullis.broker.plugins.module_utils._org import (
    OrgError, admin_failure, discover_org_agents, get_org)
from ansible_collections.cullis.broker.plugins.module_utils._serials import (
    HAS_CRYPTOGRAPHY, SerialError, cert_info_from_entry, isoformat_utc, normalize_serial)


def collect_targets(params):
    """Targets from serials and certs, normalised; raises SerialError naming every bad entry."""
    targets, errors = [], []
    org_id = params.get('org_id')
    for index, raw in enumerate(params['serials']):
        if not isinstance(raw, str):
            errors.append("serials[%d] is %r, a YAML %s, not a string: YAML reads unquoted serials as numbers "
                          "(0100 becomes 64, 0x1F becomes 31), so it would revoke another serial; quote every "
                          "serial (\"0100\")" % (index, raw, type(raw).__name__))
            continue
        try:
            targets.append(dict(serial_hex=normalize_serial(raw), org_id=org_id, agent_id=None, not_after=None,
                                source='serials'))
        except SerialError as e:
            errors.append("serials[%d]: %s" % (index, e))
    for index, entry in enumerate(params['certs']):
        try:
            info = cert_info_from_entry(entry, index)
        except SerialError as e:
            errors.append(str(e))
            continue
        if info.is_ca:
            errors.append("certs[%d] is a CA certificate (serial %s); revoke agent certificates, not the org CA"
                          % (index, info.serial_hex))
            continue
        cert_org = info.org_id
        if org_id and cert_org and cert_org != org_id:
            errors.append("certs[%d] belongs to org %r (subject O), not to org_id %r" % (index, cert_org, org_id))
            continue
        if not (org_id or cert_org):
            errors.append("certs[%d] names no org (no O attribute); set org_id" % index)
            continue
        targets.append(dict(serial_hex=info.serial_hex, org_id=org_id or cert_org, agent_id=info.agent_id,
                            not_after=isoformat_utc(info.not_after)))
    if errors:
        raise SerialError('; '.join(errors))
    return targets


def dedupe(targets):
    seen, out = set(), []
    for t in targets:
        if t['serial_hex'] not in seen:
            seen.add(t['serial_hex'])
            out.append(t)
    return out


def public(target):
    return dict(serial_hex=target['serial_hex'], org_id=target['org_id'], agent_id=target.get('agent_id'))


def revoked_serials(client, org_id):
    resp = client.admin_get('/v1/admin/certs/revoked', query={'org_id': org_id})
    if resp.status != 200 or not isinstance(resp.json(), list):
        raise OrgError(admin_failure(resp, "reading the revoked list of %r" % org_id))
    return set(item.get('serial_hex') for item in resp.json())


def revoke_one(client, target, reason, revoked_by):
    body = dict(serial_hex=target['serial_hex'], org_id=target['org_id'], reason=reason, revoked_by=revoked_by)
    if target.get('agent_id'):
        body['agent_id'] = target['agent_id']
    if target.get('not_after'):
        body['cert_not_after'] = target['not_after']
    try:
        resp = client.request('POST', '/v1/admin/certs/revoke', body=body, admin=True)
    except BrokerError as e:
        return 'failed', dict(public(target), status=None, error=str(e))
    if resp.status in (200, 201):
        return 'revoked', public(target)
    if resp.status == 409:
        return 'already_revoked', public(target)
    return 'failed', dict(public(target), status=resp.status, error=admin_failure(resp, "revoke"))


def run_module():
    argument_spec = broker_argument_spec(admin_secret_required=True)
    argument_spec.update(broker_db_argument_spec())
    argument_spec.update(
        serials=dict(type='list', elements='raw', default=[]),
        allow_unknown_serials=dict(type='bool', default=False),
        certs=dict(type='list', elements='str', default=[]),
        org_id=dict(type='str'),
        all_agents=dict(type='bool', default=False),
        reason=dict(type='str', default='revoked by cullis.broker.cert_revoke'),
        revoked_by=dict(type='str', default='admin'),
        max_workers=dict(type='int', default=8),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[('all_agents', True, ['org_id'])],
    )
    p = module.params
    result = dict(changed=False, revoked=[], already_revoked=[], failures=[], would_revoke=[], agents=[],
                  unpinned_agents=[], unknown_serials=[], discovery=None, counts={})
    if not (p['serials'] or p['certs'] or p['all_agents']):
        module.fail_json(msg="nothing to revoke: give serials, certs, or org_id with all_agents: true", **result)
    if p['serials'] and not p['org_id']:
        module.fail_json(msg="serials need org_id (the broker stores the org with each revocation)", **result)
    if p['certs'] and not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), **result)
    if p['max_workers'] < 1:
        module.fail_json(msg="max_workers must be at least 1", **result)

    try:
        targets = collect_targets(p)
    except SerialError as e:
        module.fail_json(msg="nothing was revoked: %s" % e, **result)

    client = BrokerClient.from_module(module)
    db_holder = []

    def db_factory():
        if not p.get('db_dsn'):
            return None
        if not db_holder:
            db_holder.append(BrokerDB(p['db_dsn'], p['db_connect_timeout']))
        return db_holder[0]

    try:
        orgs = sorted(set(t['org_id'] for t in targets) | (set([p['org_id']]) if p['all_agents'] else set()))
        for org in orgs:
            get_org(client, org)
        if p['all_agents']:
            agents, result['discovery'] = discover_org_agents(client, p['org_id'], db_factory)
            result['agents'] = [dict(agent_id=a['agent_id'], serial_hex=a['serial_hex'], is_active=a['is_active'])
                                for a in agents]
            bad = [a['error'] for a in agents if a.get('error')]
            if bad:
                module.fail_json(msg="nothing was revoked: unreadable agent certificates: %s" % '; '.join(bad),
                                 **result)
            for a in agents:
                if a['serial_hex']:
                    targets.append(dict(serial_hex=a['serial_hex'], org_id=p['org_id'], agent_id=a['agent_id'],
                                        not_after=a.get('not_after')))
                else:
                    result['unpinned_agents'].append(a['agent_id'])
            if result['unpinned_agents']:
                module.warn("agents without a pinned certificate have no serial to revoke: %s. Revoke their "
                            "bindings or suspend the org to block them." % ', '.join(result['unpinned_agents']))
        targets = dedupe(targets)
        done = set()
        for org in sorted(set(t['org_id'] for t in targets)):
            done |= revoked_serials(client, org)
        result['unknown_serials'] = unknown_serials(module, client, db_factory, targets, done, result)
    except (OrgError, BrokerError, BrokerDBError) as e:
        module.fail_json(msg="nothing was revoked: %s" % e, **result)
    finally:
        for db in db_holder:
            db.close()

    todo = [t for t in targets if t['serial_hex'] not in done]
    result['already_revoked'] = [public(t) for t in targets if t['serial_hex'] in done]
    result['would_revoke'] = [public(t) for t in todo]
    if module.check_mode or not todo:
        result['changed'] = bool(todo)
        result['counts'] = counts(targets, result)
        module.exit_json(**result)

    workers = min(p['max_workers'], len(todo))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda t: revoke_one(client, t, p['reason'], p['revoked_by']), todo))
    for kind, entry in outcomes:
        result['failures' if kind == 'failed' else kind].append(entry)
    result['changed'] = bool(result['revoked'])
    result['counts'] = counts(targets, result)
    if result['failures']:
        first = result['failures'][0]
        module.fail_json(msg="%d of %d revocations failed (%d revoked, %d already revoked); first failure: %s %s"
                         % (len(result['failures']), len(todo), len(result['revoked']),
                            len(result['already_revoked']), first['serial_hex'], first['error']), **result)
    module.exit_json(**result)


def unknown_serials(module, client, db_factory, targets, done, result):
    """Serials given in `serials` that match no certificate of the org (nor its revoked list).

    A typo must not be "revoked" with changed=true while the real certificate stays valid: fail,
    unless allow_unknown_serials=true (then warn and list them)."""
    p = module.params
    wanted = [t for t in targets if t.get('source') == 'serials' and t['serial_hex'] not in done]
    if not wanted:
        return []
    org = p['org_id']
    if result['agents']:
        known = set(a['serial_hex'] for a in result['agents'] if a['serial_hex'])
    else:
        try:
            agents, _source = discover_org_agents(client, org, db_factory)
        except OrgError as e:
            if p['allow_unknown_serials']:
                module.warn("could not check that the serials belong to org %r (%s); revoking them as given"
                            % (org, e))
                return []
            raise OrgError("cannot check that the serials belong to org %r: %s. Set db_dsn, or "
                           "allow_unknown_serials: true to revoke them unchecked" % (org, e))
        known = set(a['serial_hex'] for a in agents if a['serial_hex'])
    unknown = [t['serial_hex'] for t in wanted if t['serial_hex'] not in known]
    if unknown and not p['allow_unknown_serials']:
        raise OrgError("serial(s) %s match no certificate of org %r (nor its revoked list): a typo would leave the "
                       "real certificate valid. Check the serials (openssl x509 -noout -serial -in CERT), or set "
                       "allow_unknown_serials: true to revoke them anyway (a certificate no longer pinned to an agent)"
                       % (', '.join(unknown), org))
    if unknown:
        module.warn("serial(s) %s match no certificate of org %r; revoked anyway (allow_unknown_serials=true)"
                    % (', '.join(unknown), org))
    return unknown


def counts(targets, result):
    c = dict((k, len(result[k])) for k in ('revoked', 'already_revoked', 'failures', 'would_revoke', 'unpinned_agents'))
    c['targets'] = len(targets)
    return c


def main():
    run_module()


if __name__ == '__main__':
    main()

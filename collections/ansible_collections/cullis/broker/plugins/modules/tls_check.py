#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Why this file is ~490 lines: about 310 of them are DOCUMENTATION/EXAMPLES/RETURN (every
# finding an operator can get is documented); the code is ~150 lines of argument handling and
# target/threshold glue. The X.509 and TLS work is in module_utils/_tls.py.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: tls_check
short_description: Check TLS certificates of endpoints and files for expiry, host name and chain
description:
  - Read-only. Retrieves the certificate (and the chain the server presents) of every TLS
    endpoint and every PEM file given, concurrently, and reports per target its subject, issuer,
    SANs, serial, fingerprint, validity dates, days left, whether it covers the host name, whether
    its chain leads to a trusted CA, and a status C(ok), C(warn), C(critical) or C(unknown).
  - Certificates that are expired, not yet valid, self-signed or issued for another host are
    still retrieved and reported, because the handshake is made without verification and the checks are
    done afterwards.
  - Implements the prevention of runbook section 5 (TLS cert expired), monitor notAfter
    30 days ahead, rotate before 14 days.
  - When the task does not fail, every target that is not C(ok) is also reported as a warning.
  - The chain is validated with the Web PKI rules of C(cryptography.x509.verification) against
    O(ca_path) or the system trust store. On Python 3.10 to 3.13 the intermediates the server
    presents are used; where Python cannot return the peer chain only the leaf is known
    (RV(targets[].chain_source=leaf-only)) and intermediates must be in O(ca_path).
version_added: 0.1.0
author:
  - Cullis operations team (!UNKNOWN)
requirements:
  - cryptography >= 45 (on the host that runs the module)
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
  idempotent:
    support: full
    description: Never changes anything, always returns C(changed=false).
options:
  endpoints:
    description:
      - TLS endpoints to check. Give O(endpoints[].host) (and O(endpoints[].port)) or
        O(endpoints[].url).
    type: list
    elements: dict
    default: []
    suboptions:
      host:
        description: Host name or IP address to connect to. Also the name checked against the SANs
          unless O(endpoints[].server_name) is set.
        type: str
      port:
        description: TCP port.
        type: int
        default: 443
      url:
        description: An C(https://host:port/...) URL instead of O(endpoints[].host) and O(endpoints[].port).
        type: str
      server_name:
        description: Name sent as SNI and checked against the certificate, when it differs from the host.
        type: str
      name:
        description: Label of the target in the results (default C(host:port)).
        type: str
      ca_path:
        description: Overrides O(ca_path) for this endpoint.
        type: path
      warn_days:
        description: Overrides O(warn_days) for this endpoint.
        type: int
      critical_days:
        description: Overrides O(critical_days) for this endpoint.
        type: int
  paths:
    description:
      - PEM certificate files to check. The first certificate of a file is the one checked; the
        others are used as intermediates (a fullchain file).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The PEM file.
        type: path
        required: true
      server_name:
        description: A host name the certificate must cover; not checked when omitted.
        type: str
      name:
        description: Label of the target in the results (default the path).
        type: str
      ca_path:
        description: Overrides O(ca_path) for this file.
        type: path
      warn_days:
        description: Overrides O(warn_days) for this file.
        type: int
      critical_days:
        description: Overrides O(critical_days) for this file.
        type: int
  ca_path:
    description:
      - PEM file (or directory of C(.pem)/C(.crt) files) with the CA certificates the chains must
        lead to. The system trust store when omitted.
    type: path
  warn_days:
    description: A certificate with fewer days left than this has status C(warn).
    type: int
    default: 30
  critical_days:
    description:
      - A certificate with fewer days left than this has status C(critical). Expired, not yet
        valid, wrong host and untrusted chain are C(critical) too.
    type: int
    default: 14
  fail_on:
    description:
      - Fail the task when a target has this status or worse. An unreachable target
        (C(unknown)) fails the task unless V(never).
    type: str
    choices: [critical, warn, never]
    default: critical
  no_path_status:
    description:
      - Status of a target whose chain has no path to a trusted CA (every client fails it,
        RV(targets[].chain_scope=all)).
    type: str
    choices: [critical, warn]
    default: critical
  strict_only_status:
    description:
      - Status of a target whose chain only strict clients reject (RV(targets[].chain_scope=strict)),
        for example a certificate without an Authority Key Identifier. V(ok) accepts it (the
        finding stays in RV(targets[].problems)).
    type: str
    choices: [critical, warn, ok]
    default: critical
  max_workers:
    description: How many targets are checked at the same time.
    type: int
    default: 32
  timeout:
    description: Seconds to wait for the connection and the TLS handshake of one endpoint.
    type: float
    default: 10
notes:
  - Only the server certificate is checked; revocation (OCSP/CRL) is not.
seealso:
  - module: cullis.broker.tls_install
  - module: community.crypto.get_certificate
'''

EXAMPLES = r'''
- name: Check the broker, Vault and a certificate file (fails under 14 days)
  cullis.broker.tls_check:
    endpoints:
      - url: "{{ cullis_broker_public_url }}"
      - host: 127.0.0.1
        port: "{{ cullis_vault_port }}"
        name: vault
    paths:
      - path: "{{ cullis_stack_dir }}/tls/fullchain.pem"
        server_name: "{{ cullis_public_host }}"
    ca_path: "{{ cullis_tls_ca_path }}"
  register: tls

- name: Confirm only - never fail, decide later from the status
  cullis.broker.tls_check:
    endpoints:
      - host: broker.example.com
    fail_on: never
  register: tls

- name: Show the earliest expiry
  ansible.builtin.debug:
    msg: "{{ tls.summary.earliest_expiry.name }} expires {{ tls.summary.earliest_expiry.not_after }}"
'''

RETURN = r'''
targets:
  description: One entry per target, in the order given (endpoints first, then paths).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Label of the target.
      type: str
      sample: 127.0.0.1:8443
    kind:
      description: C(endpoint) or C(path).
      type: str
    host:
      description: Host connected to (endpoints).
      type: str
    port:
      description: Port connected to (endpoints).
      type: int
    path:
      description: File read (paths).
      type: str
    hostname:
      description: The name checked against the SANs, or null when none was checked.
      type: str
    status:
      description: C(ok), C(warn), C(critical) or C(unknown) (could not be retrieved).
      type: str
      sample: ok
    problems:
      description: Why the status is not C(ok), one sentence each.
      type: list
      elements: str
    error:
      description: Why the certificate could not be retrieved (status C(unknown) only).
      type: str
    subject:
      description: Subject DN (RFC 4514).
      type: str
      sample: CN=broker.example.com
    issuer:
      description: Issuer DN (RFC 4514).
      type: str
    sans:
      description: Subject alternative names, C(DNS:...), C(IP:...), C(URI:...).
      type: list
      elements: str
      sample: ["DNS:broker.example.com", "IP:127.0.0.1"]
    serial_hex:
      description: Serial number in lowercase hexadecimal.
      type: str
    fingerprint_sha256:
      description: SHA-256 fingerprint of the DER certificate, colon separated.
      type: str
    not_before:
      description: Start of validity, UTC, ISO 8601.
      type: str
      sample: "2026-01-01T00:00:00Z"
    not_after:
      description: End of validity, UTC, ISO 8601.
      type: str
    days_left:
      description: Whole days until RV(targets[].not_after); negative once expired.
      type: int
    expiry:
      description: The same in words, for reports - C(expires in 12 days), C(expires today), C(expired today),
        C(expired 2 days ago).
      type: str
      sample: expired 2 days ago
    expired:
      description: Whether notAfter is in the past.
      type: bool
    not_yet_valid:
      description: Whether notBefore is in the future.
      type: bool
    self_signed:
      description: Whether issuer and subject are the same.
      type: bool
    hostname_match:
      description: Whether the SANs cover RV(targets[].hostname); null when no name was checked.
      type: bool
    chain_valid:
      description: Whether the certificate chains to a CA of O(ca_path) or the system trust.
      type: bool
    chain_error:
      description:
        - Why the chain is not valid, null when it is. X.509 extensions are named in words
          (C(missing Authority Key Identifier extension)), not by OID.
        - Starts with C(rejected by strict clients only) when signatures do lead to a trusted CA
          but the chain breaks the profile strict verifiers enforce (RV(targets[].chain_scope=strict)).
      type: str
      sample: 'incomplete chain: the issuer "CN=Intermediate" of "CN=broker" is neither presented nor in /etc/ca.pem'
    chain_scope:
      description:
        - Who rejects an invalid chain. V(all) - there is no path to a trusted CA, every client
          fails (verdict O(no_path_status)). V(strict) - lenient clients (OpenSSL defaults, curl,
          Python up to 3.12) accept it, strict ones (Python 3.13+ default context, CA/Browser Forum
          profile) reject it (verdict O(strict_only_status)). Null when the chain is valid.
      type: str
    chain_length:
      description: Number of certificates presented by the server or found in the file.
      type: int
    chain_source:
      description: C(peer) (chain as presented), C(leaf-only) (Python could not return the chain) or C(file).
      type: str
    tls_version:
      description: Negotiated protocol version (endpoints).
      type: str
      sample: TLSv1.3
    cipher:
      description: Negotiated cipher suite (endpoints).
      type: str
summary:
  description: Counts by status and the earliest expiry.
  returned: always
  type: dict
  contains:
    total:
      description: Number of targets.
      type: int
    ok:
      description: Targets with status C(ok).
      type: int
    warn:
      description: Targets with status C(warn).
      type: int
    critical:
      description: Targets with status C(critical).
      type: int
    unknown:
      description: Targets with status C(unknown).
      type: int
    worst_status:
      description: The most severe status of all targets (C(unknown) counts as most severe).
      type: str
    earliest_expiry:
      description: C(name), C(not_after) and C(days_left) of the certificate that expires first; null without any.
      type: dict
'''

import traceback
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.six.moves.urllib.parse import urlsplit

from ansible_collections.cullis.broker.plugins.module_utils import _tls

THRESHOLD_OPTIONS = dict(
    name=dict(type='str'),
    ca_path=dict(type='path'),
    warn_days=dict(type='int'),
    critical_days=dict(type='int'),
)


def argument_spec():
    endpoint = dict(host=dict(type='str'), port=dict(type='int', default=443), url=dict(type='str'),
                    server_name=dict(type='str'), **THRESHOLD_OPTIONS)
    path = dict(path=dict(type='path', required=True), server_name=dict(type='str'), **THRESHOLD_OPTIONS)
    return dict(
        endpoints=dict(type='list', elements='dict', default=[], options=endpoint,
                       mutually_exclusive=[('host', 'url')], required_one_of=[('host', 'url')]),
        paths=dict(type='list', elements='dict', default=[], options=path),
        ca_path=dict(type='path'),
        warn_days=dict(type='int', default=30),
        critical_days=dict(type='int', default=14),
        fail_on=dict(type='str', default='critical', choices=['critical', 'warn', 'never']),
        no_path_status=dict(type='str', default='critical', choices=['critical', 'warn']),
        strict_only_status=dict(type='str', default='critical', choices=['critical', 'warn', 'ok']),
        max_workers=dict(type='int', default=32),
        timeout=dict(type='float', default=10),
    )


def build_targets(params):
    """Normalise endpoints and paths into one list of plain dicts (thresholds resolved)."""
    targets = []
    for ep in params['endpoints']:
        host, port = ep['host'], ep['port']
        if ep['url']:
            parts = urlsplit(ep['url'] if '://' in ep['url'] else 'https://' + ep['url'])
            if not parts.hostname:
                raise ValueError('endpoint url %r has no host name' % ep['url'])
            host, port = parts.hostname, parts.port or 443
        label = '[%s]:%s' % (host, port) if ':' in host else '%s:%s' % (host, port)
        targets.append(dict(kind='endpoint', host=host, port=port, server_name=ep['server_name'],
                            name=ep['name'] or label, hostname=ep['server_name'] or host,
                            **_thresholds(ep, params)))
    for p in params['paths']:
        targets.append(dict(kind='path', path=p['path'], name=p['name'] or p['path'],
                            hostname=p['server_name'], **_thresholds(p, params)))
    return targets


VERDICT_OPTIONS = ('no_path_status', 'strict_only_status')


def _thresholds(entry, params):
    out = {}
    for key in ('ca_path', 'warn_days', 'critical_days'):
        out[key] = entry[key] if entry.get(key) is not None else params[key]
    if out['critical_days'] > out['warn_days']:
        raise ValueError('critical_days (%d) must not be larger than warn_days (%d)'
                         % (out['critical_days'], out['warn_days']))
    for key in VERDICT_OPTIONS:
        out[key] = params.get(key) or 'critical'
    return out


def check_target(target, timeout):
    """Result dict of one target; never raises (an unexpected error becomes status unknown)."""
    result = dict(name=target['name'], kind=target['kind'], hostname=target['hostname'])
    if target['kind'] == 'endpoint':
        result.update(host=target['host'], port=target['port'])
    else:
        result['path'] = target['path']
    try:
        if target['kind'] == 'endpoint':
            certs, source, version, cipher = _tls.fetch_endpoint(
                target['host'], target['port'], target['server_name'], timeout)
            result.update(tls_version=version, cipher=cipher)
        else:
            certs, source = _tls.read_pem_file(target['path']), 'file'
            result.update(tls_version=None, cipher=None)
        now = _tls.utcnow()
        leaf = certs[0]
        result.update(_tls.cert_facts(leaf, now))
        result.update(chain_length=len(certs), chain_source=source)
        if target['hostname']:
            result['hostname_match'] = _tls.hostname_matches(leaf, target['hostname'])
        else:
            result['hostname_match'] = None
        trust, description = _tls.load_trust(target['ca_path'])
        valid, error, scope = _tls.verify_chain_scope(leaf, certs[1:], trust, description, now)
        result.update(chain_valid=valid, chain_error=error, chain_scope=scope)
        status, problems = _tls.evaluate(result, target['warn_days'], target['critical_days'],
                                         target.get('no_path_status', 'critical'),
                                         target.get('strict_only_status', 'critical'))
        order = _tls.order_problem(certs, target.get('path') or source) if target['kind'] == 'path' else None
        if order:
            status = 'critical'
            problems.insert(0, order)
        result.update(status=status, problems=problems, error=None)
    except _tls.TLSCheckError as exc:
        result.update(status='unknown', error=str(exc), problems=[str(exc)])
    except Exception as exc:  # noqa: BLE001 - one odd target must not hide the others
        result.update(status='unknown', error='unexpected error: %s' % exc, problems=[str(exc)],
                      exception=traceback.format_exc())
    return result


def summarize(results):
    summary = dict(total=len(results), ok=0, warn=0, critical=0, unknown=0, earliest_expiry=None)
    worst = 'ok'
    for r in results:
        summary[r['status']] += 1
        if _tls.SEVERITY[r['status']] > _tls.SEVERITY[worst]:
            worst = r['status']
        if r.get('not_after') and (summary['earliest_expiry'] is None
                                   or r['not_after'] < summary['earliest_expiry']['not_after']):
            summary['earliest_expiry'] = dict(name=r['name'], not_after=r['not_after'], days_left=r['days_left'])
    summary['worst_status'] = worst if results else 'ok'
    return summary


def failure_message(results, fail_on):
    if fail_on == 'never':
        return None
    failing = ('warn', 'critical', 'unknown') if fail_on == 'warn' else ('critical', 'unknown')
    bad = [r for r in results if r['status'] in failing]
    if not bad:
        return None
    lines = ['%s: %s (%s)' % (r['name'], r['status'], '; '.join(r['problems'])) for r in bad]
    return ('%d of %d TLS target(s) at fail_on=%s or worse - renew or replace the certificate '
            '(runbook section 5), or fix the endpoint: %s' % (len(bad), len(results), fail_on, ' | '.join(lines)))


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not _tls.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(_tls.CRYPTOGRAPHY_IMPORT_ERROR))
    try:
        targets = build_targets(module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if not targets:
        module.fail_json(msg='nothing to check: give endpoints and/or paths')
    # Trust stores are loaded once up front so that a bad ca_path fails clearly, not per target.
    for ca_path in set(t['ca_path'] for t in targets):
        try:
            _tls.load_trust(ca_path)
        except _tls.TLSCheckError as exc:
            module.fail_json(msg='cannot load the CA certificates: %s; check ca_path' % exc)
    workers = max(1, min(module.params['max_workers'], len(targets)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda t: check_target(t, module.params['timeout']), targets))
    summary = summarize(results)
    msg = failure_message(results, module.params['fail_on'])
    if not msg:
        for r in results:
            if r['status'] != 'ok':
                module.warn('TLS %s %s: %s' % (r['name'], r['status'], '; '.join(r['problems'])))
    if msg:
        module.fail_json(msg=msg, changed=False, targets=results, summary=summary)
    module.exit_json(changed=False, targets=results, summary=summary)


if __name__ == '__main__':
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: tls_install
short_description: Validate an operator-provided certificate, key and chain, then install them atomically
description:
  - Bring-your-own-CA installation of a server certificate (runbook section 5, BYOCA recovery),
    for example the one nginx serves on the broker's public URL.
  - Before anything is written the module checks that the private key matches the certificate,
    that the chain is complete up to the given CA (O(ca_path), or the system trust), that every
    name of O(hostnames) is in the certificate's SANs, that the certificate is valid now and that
    it does not expire within O(critical_days). If any check fails the task fails with every
    reason and the installed certificate and key stay untouched.
  - The certificate followed by the intermediates (a fullchain file) is written to O(dest_cert) and
    the key to O(dest_key) (mode 0600), each by an atomic rename. Files already identical are not
    rewritten, so C(changed) tells whether the served certificate changed (reload the server then).
version_added: 0.1.0
author:
  - Cullis operations team (!UNKNOWN)
requirements:
  - cryptography >= 45
attributes:
  check_mode:
    support: full
    description: Validates and reports whether the files would change, without writing.
  diff_mode:
    support: full
    description: Shows subject, SANs, expiry and fingerprint of the old and the new certificate (never the key).
  idempotent:
    support: full
    description: A second run with the same files writes nothing and reports C(changed=false).
options:
  cert:
    description: PEM file with the server certificate (intermediates may follow it in the same file).
    type: path
    required: true
  key:
    description: PEM file with the certificate's private key (unencrypted).
    type: path
    required: true
  chain:
    description: PEM file with the intermediate certificates, when not appended to O(cert).
    type: path
  ca_path:
    description:
      - PEM file (or directory) with the CA the chain must lead to. When it is a root that is
        not in the system trust, clients need it too (see O(dest_ca)). The system trust when omitted.
    type: path
  hostnames:
    description: Names (DNS names or IP addresses) the certificate must cover.
    type: list
    elements: str
    required: true
  critical_days:
    description: Refuse a certificate that expires in fewer days than this.
    type: int
    default: 14
  dest_cert:
    description: Where to write the certificate followed by the intermediates.
    type: path
    required: true
  dest_key:
    description:
      - Where to write the private key. Always mode C(0600) (O(mode) does not apply to it); O(owner)
        and O(group) do.
    type: path
    required: true
  dest_ca:
    description: Optionally, where to copy O(ca_path) (a file) for the clients of the server.
    type: path
  mode:
    description:
      - Mode of O(dest_cert) and O(dest_ca), as for M(ansible.builtin.file). Default C(0644).
      - The private key O(dest_key) is always C(0600).
      - O(owner), O(group) and the SELinux options apply to every file written.
      - Files are written to a temporary file beside the destination and moved into place
        (C(atomic_move)); a changed mode, owner or group alone counts as a change.
    type: raw
extends_documentation_fragment:
  - ansible.builtin.files
seealso:
  - module: cullis.broker.tls_check
'''

EXAMPLES = r'''
- name: Install the certificate the operator got from the company CA
  cullis.broker.tls_install:
    cert: /root/new/broker.crt
    key: /root/new/broker.key
    chain: /root/new/intermediate.crt
    ca_path: /root/new/company-root.crt
    hostnames: [broker.example.com]
    dest_cert: "{{ cullis_stack_dir }}/tls/nginx.pem"
    dest_key: "{{ cullis_stack_dir }}/tls/nginx-key.pem"
  register: installed

- name: Make nginx serve it
  cullis.broker.stack_service:
    name: nginx
    state: reloaded
    stack_dir: "{{ cullis_stack_dir }}"
  when: installed is changed
'''

RETURN = r'''
subject:
  description: Subject of the installed certificate.
  returned: success
  type: str
sans:
  description: SANs of the installed certificate.
  returned: success
  type: list
  elements: str
not_after:
  description: Expiry of the installed certificate (UTC, ISO 8601).
  returned: success
  type: str
days_left:
  description: Whole days until expiry.
  returned: success
  type: int
fingerprint_sha256:
  description: SHA-256 fingerprint of the installed certificate.
  returned: success
  type: str
chain_length:
  description: Certificates written to O(dest_cert) (leaf and intermediates).
  returned: success
  type: int
previous_fingerprint_sha256:
  description: Fingerprint of the certificate that was at O(dest_cert) before, null when there was none.
  returned: success
  type: str
problems:
  description: Every reason the certificate was refused (on failure).
  returned: failure
  type: list
  elements: str
'''

import errno
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.cullis.broker.plugins.module_utils import _tls


def _read(module, path, what):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except (IOError, OSError) as exc:
        module.fail_json(msg='cannot read the %s %s: %s' % (what, path, exc.strerror or exc))


def validate(cert_pem, key_pem, chain_pem, trust, trust_description, hostnames, critical_days, source):
    """(leaf, intermediates, problems) - problems is empty when the bundle may be installed."""
    problems = []
    certs = _tls.load_pem_certificates(cert_pem, source)
    if chain_pem:
        certs += _tls.load_pem_certificates(chain_pem, 'the chain file')
    order = _tls.order_problem(certs, source)
    if order:
        # a misordered file would otherwise be blamed on the key and the SANs of the intermediate
        return certs[0], certs[1:], [order]
    leaf, intermediates = certs[0], certs[1:]
    now = _tls.utcnow()
    facts = _tls.cert_facts(leaf, now)
    try:
        if not _tls.private_key_matches(key_pem, leaf):
            problems.append('the private key does not belong to the certificate %s' % facts['subject'])
    except _tls.TLSCheckError as exc:
        problems.append(str(exc))
    valid, error = _tls.verify_chain(leaf, intermediates, trust, trust_description, now)
    if not valid and not (facts['expired'] or facts['not_yet_valid']):
        problems.append('chain: %s' % error)
    for name in hostnames:
        if not _tls.hostname_matches(leaf, name):
            problems.append('the certificate does not cover %s (SANs: %s)' % (name, ', '.join(facts['sans']) or 'none'))
    if facts['expired']:
        problems.append('the certificate expired on %s (%s)' % (facts['not_after'], facts['expiry']))
    elif facts['not_yet_valid']:
        problems.append('the certificate is not valid before %s' % facts['not_before'])
    elif facts['days_left'] < critical_days:
        problems.append('the certificate expires in %d days, under critical_days=%d'
                        % (facts['days_left'], critical_days))
    return leaf, intermediates, problems


def _summary(cert):
    if cert is None:
        return {}
    f = _tls.cert_facts(cert)
    return dict(subject=f['subject'], sans=f['sans'], not_after=f['not_after'],
                fingerprint_sha256=f['fingerprint_sha256'])


def _current_leaf(path):
    try:
        return _tls.read_pem_file(path)[0]
    except _tls.TLSCheckError:
        return None


def _install(module, pending):
    """Write every pending file to a temp file beside it first, then move them all into place with
    module.atomic_move: a failure while writing (full or read-only disk, missing directory) leaves
    every current file as it was, never a new certificate with the old key. Files are created
    owner-only (umask 077) and only then given their mode, owner and group, so a key is never
    readable by others, not even for an instant."""
    staged = []
    dest = None
    try:
        for dest, data, _mode in pending:
            dest_dir = os.path.dirname(dest) or '.'
            if not os.path.isdir(dest_dir):
                raise OSError(errno.ENOENT, 'the directory %s does not exist; create it first' % dest_dir, dest)
            fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix='.tls_install-')
            staged.append((tmp, dest))
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except (IOError, OSError) as exc:
        for tmp, _dest in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        module.fail_json(msg='cannot write %s: %s; nothing was installed, the current files are unchanged'
                         % (getattr(exc, 'filename', None) or dest, exc.strerror or exc))
    umask = os.umask(0o077)
    try:
        for tmp, dest in staged:
            module.atomic_move(tmp, dest, unsafe_writes=module.params['unsafe_writes'], keep_dest_attrs=False)
    finally:
        os.umask(umask)


def _differs(path, data):
    try:
        with open(path, 'rb') as f:
            return f.read() != data
    except (IOError, OSError):
        return True


def _set_attributes(module, writes, pending):
    """Mode, owner and group of every destination (in check mode: of those that exist already)."""
    changed = False
    for dest, _data, mode in writes:
        if module.check_mode and any(dest == w[0] for w in pending):
            continue  # would be written, so it counts as changed already
        args = module.load_file_common_arguments(module.params, path=dest)
        args['mode'] = mode
        changed = module.set_fs_attributes_if_different(args, changed)
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cert=dict(type='path', required=True),
            key=dict(type='path', required=True),
            chain=dict(type='path'),
            ca_path=dict(type='path'),
            hostnames=dict(type='list', elements='str', required=True),
            critical_days=dict(type='int', default=14),
            dest_cert=dict(type='path', required=True),
            dest_key=dict(type='path', required=True),
            dest_ca=dict(type='path'),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    if not _tls.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(_tls.CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    if not p['hostnames']:
        module.fail_json(msg='hostnames is empty: give the names clients use to reach the server')
    if p['dest_ca'] and (not p['ca_path'] or os.path.isdir(p['ca_path'])):
        module.fail_json(msg='dest_ca needs ca_path to be a CA certificate file; nothing was installed')
    cert_pem = _read(module, p['cert'], 'certificate')
    key_pem = _read(module, p['key'], 'private key')
    chain_pem = _read(module, p['chain'], 'chain') if p['chain'] else None
    try:
        trust, trust_description = _tls.load_trust(p['ca_path'])
        leaf, intermediates, problems = validate(cert_pem, key_pem, chain_pem, trust, trust_description,
                                                 p['hostnames'], p['critical_days'], p['cert'])
    except _tls.TLSCheckError as exc:
        module.fail_json(msg='%s; nothing was installed' % exc)
    if problems:
        module.fail_json(msg='refusing to install %s (the current certificate stays in place): %s'
                         % (p['cert'], '; '.join(problems)), problems=problems)

    fullchain = b''.join(_tls.cert_pem(c) for c in [leaf] + intermediates)
    if not key_pem.endswith(b'\n'):
        key_pem += b'\n'
    public_mode = p['mode'] if p['mode'] is not None else '0644'
    writes = [(p['dest_cert'], fullchain, public_mode), (p['dest_key'], key_pem, '0600')]
    if p['dest_ca']:
        writes.append((p['dest_ca'], _read(module, p['ca_path'], 'CA certificate'), public_mode))
    pending = [w for w in writes if _differs(w[0], w[1])]
    previous = _current_leaf(p['dest_cert'])
    if pending and not module.check_mode:
        _install(module, pending)
    attributes_changed = _set_attributes(module, writes, pending)
    facts = _tls.cert_facts(leaf)
    result = dict(changed=bool(pending) or attributes_changed, subject=facts['subject'], sans=facts['sans'],
                  not_after=facts['not_after'], days_left=facts['days_left'],
                  fingerprint_sha256=facts['fingerprint_sha256'], chain_length=1 + len(intermediates),
                  previous_fingerprint_sha256=(_tls.fingerprint_sha256(previous) if previous else None))
    if module._diff:
        result['diff'] = dict(before=_summary(previous), after=_summary(leaf),
                              before_header=p['dest_cert'], after_header=p['dest_cert'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()

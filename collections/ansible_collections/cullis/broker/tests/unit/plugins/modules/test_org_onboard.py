# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of org_onboard's planning logic against an in-memory fake of the broker's HTTP API.

The fake is a boundary stand-in (unit tests only); the real broker is exercised by
tests/integration/test_smoke_modules.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.cullis.broker.plugins.module_utils._agent_client import AgentIdentity, b64url_decode
from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerResponse
from ansible_collections.cullis.broker.plugins.module_utils import _org_identity as oid
from ansible_collections.cullis.broker.plugins.modules.org_onboard import OnboardError, Onboarder


class FakeBroker(object):
    """Just enough of the contract's registry/admin/federation routes, with its traps."""

    def __init__(self, admin='adm1n'):
        self.admin = admin
        self.orgs = {}
        self.agents = {}
        self.bindings = []
        self.calls = []
        self.publish_429 = 0

    @staticmethod
    def resp(status, body):
        return BrokerResponse(status, {}, json.dumps(body).encode('utf-8'))

    def request(self, method, path, body=None, headers=None, admin=False, query=None):
        headers = headers or {}
        self.calls.append((method, path))
        if admin and self.admin != 'adm1n':
            return self.resp(403, {'detail': 'Invalid admin secret'})
        parts = path.strip('/').split('/')
        org_hdr = headers.get('x-org-id')
        org_ok = org_hdr in self.orgs and self.orgs[org_hdr]['secret'] == headers.get('x-org-secret')
        if method == 'GET' and path == '/v1/registry/orgs/me':
            return self.resp(200, {'org_id': org_hdr}) if org_ok else self.resp(403, {'detail': 'Invalid organization credentials'})
        if method == 'GET' and parts[:3] == ['v1', 'registry', 'orgs']:
            org = self.orgs.get(parts[3])
            return self.resp(200, {'org_id': parts[3], 'status': org['status']}) if org else \
                self.resp(404, {'detail': 'Organization not found'})
        if method == 'POST' and path == '/v1/registry/orgs':
            assert len(body['secret'].encode()) <= 72
            if body['org_id'] in self.orgs:
                return self.resp(409, {'detail': 'org_id already registered'})
            self.orgs[body['org_id']] = {'secret': body['secret'], 'status': 'active', 'ca': None, 'mastio': None}
            return self.resp(201, {'org_id': body['org_id'], 'status': 'active'})
        if path.endswith('/certificate'):
            assert org_ok
            self.orgs[parts[3]]['ca'] = body['ca_certificate']
            return self.resp(200, {'org_id': parts[3], 'ca_certificate_loaded': True})
        if path.endswith('/mastio-pubkey'):
            assert admin and body.get('mastio_pubkey'), 'an empty PATCH would clear the pin'
            self.orgs[parts[3]]['mastio'] = body['mastio_pubkey']
            return self.resp(200, {'org_id': parts[3], 'mastio_pubkey_set': True})
        if path == '/v1/federation/publish-agent' and self.publish_429:
            self.publish_429 -= 1
            return BrokerResponse(429, {'retry-after': '60'}, b'{"detail": "Rate limit exceeded"}')
        if path == '/v1/federation/publish-agent':
            org = self.orgs[body['agent_id'].split('::')[0]]
            pub = serialization.load_pem_public_key(org['mastio'].encode())
            pub.verify(b64url_decode(headers['X-Cullis-Mastio-Signature']), json.dumps(body).encode(),
                       ec.ECDSA(hashes.SHA256()))
            status = 'updated' if body['agent_id'] in self.agents else 'created'
            self.agents[body['agent_id']] = body
            return self.resp(200, {'agent_id': body['agent_id'], 'status': status})
        if method == 'GET' and path == '/v1/registry/bindings':
            assert org_ok and query == {'org_id': org_hdr}
            return self.resp(200, [b for b in self.bindings if b['org_id'] == org_hdr])
        if method == 'POST' and path == '/v1/registry/bindings':
            assert org_ok and body['agent_id'] in self.agents
            b = {'id': len(self.bindings) + 1, 'org_id': body['org_id'], 'agent_id': body['agent_id'],
                 'status': 'pending', 'scope': body['scope']}
            self.bindings.append(b)
            return self.resp(201, b)
        if path.endswith('/approve'):
            b = self.bindings[int(parts[3]) - 1]
            if b['status'] == 'approved':
                return self.resp(500, {'detail': 'Internal server error'})
            b['status'] = 'approved'
            return self.resp(200, b)
        raise AssertionError('unexpected call %s %s' % (method, path))


class FakeModule(object):
    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode
        self.no_log_values = set()


def specs(org, *names):
    return [{'agent_id': '%s::%s' % (org, n), 'short': n, 'capabilities': [], 'scope': [],
             'display_name': n} for n in names]


def onboard(broker, tmp_path, org='acme', agents=('a1', 'a2'), check=False, secret=None):
    params = {'org_id': org, 'display_name': None, 'identity_dir': str(tmp_path / org), 'org_secret': secret}
    ob = Onboarder(FakeModule(params, check), broker)
    return ob, ob.run(specs(org, *agents))


def test_fresh_org_is_fully_onboarded(tmp_path):
    broker = FakeBroker()
    ob, agents = onboard(broker, tmp_path)
    assert ob.org_created
    assert ob.actions[:3] == ['create org acme', 'generate org CA', 'upload org CA']
    org = broker.orgs['acme']
    assert org['ca'] and org['mastio']
    assert [b['status'] for b in broker.bindings] == ['approved', 'approved']
    assert [a['binding_status'] for a in agents] == ['approved', 'approved']
    ident = AgentIdentity.load(agents[0]['dir'])
    assert ident.agent_id == 'acme::a1' and ident.mastio_key_pem
    assert ob.secret and ob.secret in ob.module.no_log_values  # a generated secret is masked by Ansible
    assert agents[0]['cert_serial_hex'] == format(oid.load_cert(ident.cert_pem).serial_number, 'x')


def test_secret_and_keys_are_private_files(tmp_path):
    broker = FakeBroker()
    ob, agents = onboard(broker, tmp_path)
    for name in (oid.SECRET_FILE, oid.CA_KEY_FILE, oid.MASTIO_KEY_FILE):
        assert stat.S_IMODE(os.stat(ob.dir.file(name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(os.path.join(agents[0]['dir'], 'key.pem')).st_mode) == 0o600
    assert broker.orgs['acme']['secret'] == ob.dir.load_secret()
    assert broker.orgs['acme']['secret'] not in open(ob.dir.file(oid.ORG_FILE)).read()


def test_second_run_changes_nothing_and_never_reapproves(tmp_path):
    broker = FakeBroker()
    onboard(broker, tmp_path)
    before = len(broker.calls)
    ob, agents = onboard(broker, tmp_path)
    assert ob.actions == []
    assert not ob.org_created
    new_calls = broker.calls[before:]
    assert all(call[0] == 'GET' for call in new_calls), new_calls
    assert [a['binding_status'] for a in agents] == ['approved', 'approved']


def test_new_agent_on_existing_org_only_adds_that_agent(tmp_path):
    broker = FakeBroker()
    onboard(broker, tmp_path)
    ob, agents = onboard(broker, tmp_path, agents=('a1', 'a2', 'a3'))
    assert ob.actions == ['issue certificate for acme::a3', 'publish agent acme::a3',
                          'create binding for acme::a3', 'approve binding for acme::a3']


def test_revoked_binding_is_approved_again(tmp_path):
    broker = FakeBroker()
    onboard(broker, tmp_path)
    broker.bindings[0]['status'] = 'revoked'
    ob, agents = onboard(broker, tmp_path)
    assert ob.actions == ['approve binding for acme::a1']
    assert agents[0]['binding_status'] == 'approved'


def test_check_mode_plans_without_writing(tmp_path):
    broker = FakeBroker()
    ob, agents = onboard(broker, tmp_path, check=True)
    assert 'create org acme' in ob.actions and 'approve binding for acme::a2' in ob.actions
    assert broker.orgs == {} and all(call[0] == 'GET' for call in broker.calls)
    assert not (tmp_path / 'acme').exists()


def test_check_mode_on_onboarded_org_reports_no_change(tmp_path):
    broker = FakeBroker()
    onboard(broker, tmp_path)
    ob, _agents = onboard(broker, tmp_path, check=True)
    assert ob.actions == []


def test_existing_org_with_unknown_secret_is_refused(tmp_path):
    broker = FakeBroker()
    broker.orgs['acme'] = {'secret': 'someone-elses', 'status': 'active', 'ca': None, 'mastio': None}
    with pytest.raises(OnboardError, match='no org secret is known'):
        onboard(broker, tmp_path)
    with pytest.raises(OnboardError, match='rejects the org secret') as err:
        onboard(broker, tmp_path, secret='wrong-secret')
    assert 'wrong-secret' not in str(err.value)
    assert broker.orgs['acme']['ca'] is None


def test_existing_org_with_known_secret_is_adopted(tmp_path):
    broker = FakeBroker()
    broker.orgs['acme'] = {'secret': 'known-secret', 'status': 'active', 'ca': None, 'mastio': None}
    ob, agents = onboard(broker, tmp_path, secret='known-secret')
    assert not ob.org_created
    assert 'upload org CA' in ob.actions and 'pin mastio public key' in ob.actions
    assert ob.dir.load_secret() == 'known-secret'


def test_suspended_org_is_reported(tmp_path):
    broker = FakeBroker()
    broker.orgs['acme'] = {'secret': 's', 'status': 'suspended', 'ca': None, 'mastio': None}
    with pytest.raises(OnboardError, match="'suspended', not active"):
        onboard(broker, tmp_path, secret='s')


def test_identity_dir_of_another_org_is_refused(tmp_path):
    broker = FakeBroker()
    onboard(broker, tmp_path)
    params = {'org_id': 'other', 'display_name': None, 'identity_dir': str(tmp_path / 'acme'), 'org_secret': None}
    with pytest.raises(OnboardError, match="belongs to org 'acme'"):
        Onboarder(FakeModule(params), broker)


def test_agent_id_for():
    assert oid.agent_id_for('acme', 'a1') == ('acme::a1', 'a1')
    assert oid.agent_id_for('acme', 'acme::a1') == ('acme::a1', 'a1')
    with pytest.raises(ValueError):
        oid.agent_id_for('acme', 'other::a1')


def test_generated_certificates_follow_the_contract():
    ca_key, ca = oid.make_org_ca('acme')
    key, cert = oid.issue_agent_cert(ca_key, ca, 'acme', 'acme::a1')
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from cryptography import x509
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == 'acme::a1'
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == 'acme'
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert oid.serial_hex(cert) == format(cert.serial_number, 'x')
    assert len(oid.new_org_secret().encode()) <= 72


def test_publish_agent_rate_limit_is_waited_out(tmp_path):
    broker = FakeBroker()
    broker.publish_429 = 2
    params = {'org_id': 'acme', 'display_name': None, 'identity_dir': str(tmp_path / 'acme'), 'org_secret': None,
              'rate_limit_wait': 300}
    ob = Onboarder(FakeModule(params), broker)
    slept = []
    ob.sleep = slept.append
    agents = ob.run(specs('acme', 'a1'))
    assert slept == [60, 60] and ob.waited == 120
    assert agents[0]['binding_status'] == 'approved'


def test_publish_agent_rate_limit_gives_up_after_the_budget(tmp_path):
    broker = FakeBroker()
    broker.publish_429 = 5
    params = {'org_id': 'acme', 'display_name': None, 'identity_dir': str(tmp_path / 'acme'), 'org_secret': None,
              'rate_limit_wait': 90}
    ob = Onboarder(FakeModule(params), broker)
    slept = []
    ob.sleep = slept.append
    with pytest.raises(OnboardError, match='publishing agent acme::a1 failed: HTTP 429'):
        ob.run(specs('acme', 'a1'))
    assert slept == [60, 30]

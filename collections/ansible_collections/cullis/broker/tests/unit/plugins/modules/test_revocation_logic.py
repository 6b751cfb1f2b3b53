# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of cert_revoke and its helpers; the broker is faked at the HTTP-response boundary."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerError, BrokerResponse
from ansible_collections.cullis.broker.plugins.module_utils import _broker_db as bdb
from ansible_collections.cullis.broker.plugins.module_utils import _org
from ansible_collections.cullis.broker.plugins.module_utils._serials import SerialError
from ansible_collections.cullis.broker.plugins.modules import cert_revoke as cr


class FakeClient(object):
    """Answers (method, path) with canned (status, body); records what was sent."""

    base_url = 'http://broker.test'

    def __init__(self, answers):
        self.answers = answers
        self.sent = []

    def request(self, method, path, body=None, headers=None, admin=False, query=None):
        self.sent.append((method, path, body, query))
        answer = self.answers.get((method, path))
        if isinstance(answer, Exception):
            raise answer
        status, payload = answer if answer else (404, {'detail': 'Not Found'})
        return BrokerResponse(status, {}, json.dumps(payload).encode('utf-8'))

    def admin_get(self, path, query=None):
        return self.request('GET', path, admin=True, query=query)

    def admin_post(self, path, body=None):
        return self.request('POST', path, body=body, admin=True)


def params(**kw):
    base = dict(serials=[], certs=[], org_id=None)
    base.update(kw)
    return base


def test_targets_are_normalised_and_org_checked(make_cert):
    pem = make_cert('acme::billing', 'acme', 0x00BEEF)
    targets = cr.collect_targets(params(serials=['0A:0B'], certs=[pem], org_id='acme'))
    assert [(t['serial_hex'], t['org_id'], t['agent_id']) for t in targets] == [
        ('a0b', 'acme', None), ('beef', 'acme', 'acme::billing')]
    assert targets[1]['not_after']


def test_cert_of_another_org_and_ca_certs_are_refused(make_cert):
    certs = [make_cert('evil::x', 'evil', 5), make_cert('acme CA', 'acme', 6, ca=True)]
    with pytest.raises(SerialError) as e:
        cr.collect_targets(params(certs=certs, org_id='acme'))
    assert "certs[0] belongs to org 'evil'" in str(e.value)
    assert 'certs[1] is a CA certificate' in str(e.value)


def test_typo_anywhere_means_nothing_is_collected():
    with pytest.raises(SerialError, match="'0a1q'"):
        cr.collect_targets(params(serials=['0a1b', '0a1q'], org_id='acme'))


def test_dedupe_keeps_first():
    got = cr.dedupe([dict(serial_hex='a', agent_id=None), dict(serial_hex='a', agent_id='x'), dict(serial_hex='b')])
    assert [t['serial_hex'] for t in got] == ['a', 'b'] and got[0]['agent_id'] is None


@pytest.mark.parametrize('status, kind', [(200, 'revoked'), (409, 'already_revoked'), (500, 'failed'),
                                          (403, 'failed')])
def test_revoke_one_classifies_answers(status, kind):
    client = FakeClient({('POST', '/v1/admin/certs/revoke'): (status, {'detail': 'x'})})
    target = dict(serial_hex='abc', org_id='acme', agent_id='acme::a', not_after='2030-01-01T00:00:00+00:00')
    got_kind, entry = cr.revoke_one(client, target, 'compromise', 'admin')
    assert got_kind == kind and entry['serial_hex'] == 'abc'
    body = client.sent[0][2]
    assert body == dict(serial_hex='abc', org_id='acme', reason='compromise', revoked_by='admin', agent_id='acme::a',
                        cert_not_after='2030-01-01T00:00:00+00:00')


def test_revoke_one_reports_transport_errors_as_failed():
    client = FakeClient({('POST', '/v1/admin/certs/revoke'): BrokerError('broker http://x is unreachable')})
    kind, entry = cr.revoke_one(client, dict(serial_hex='abc', org_id='acme'), 'r', 'admin')
    assert kind == 'failed' and 'unreachable' in entry['error']


def test_get_org_errors_are_operator_messages():
    with pytest.raises(_org.OrgError, match="organization 'ghost' not found"):
        _org.get_org(FakeClient({('GET', '/v1/registry/orgs/ghost'): (404, {'detail': 'Organization not found'})}),
                     'ghost')
    with pytest.raises(_org.OrgError, match='rejected the admin secret'):
        _org.get_org(FakeClient({('GET', '/v1/registry/orgs/a'): (403, {'detail': 'Invalid admin secret'})}), 'a')


def test_discovery_prefers_the_extension_listing():
    listing = [{'agent_id': 'acme::a', 'org_id': 'acme', 'serial_hex': '0A:FF', 'is_active': True},
               {'agent_id': 'acme::b', 'org_id': 'acme', 'serial_hex': None, 'is_active': True}]
    client = FakeClient({('GET', '/v1/admin/agents'): (200, listing)})
    agents, source = _org.discover_org_agents(client, 'acme', db_factory=lambda: pytest.fail('no DB expected'))
    assert source == 'api'
    assert [(a['agent_id'], a['serial_hex']) for a in agents] == [('acme::a', 'aff'), ('acme::b', None)]


class FakeDB(object):
    def __init__(self, rows):
        self.rows = rows

    def org_agents(self, org_id):
        return self.rows


def test_discovery_falls_back_to_the_database_on_real_brokers(make_cert):
    rows = [dict(agent_id='acme::a', org_id='acme', cert_pem=make_cert('acme::a', 'acme', 0x1F), is_active=True,
                 cert_thumbprint='t'),
            dict(agent_id='acme::b', org_id='acme', cert_pem=None, is_active=True, cert_thumbprint=None)]
    client = FakeClient({})
    agents, source = _org.discover_org_agents(client, 'acme', db_factory=lambda: FakeDB(rows))
    assert source == 'database'
    assert [(a['agent_id'], a['serial_hex']) for a in agents] == [('acme::a', '1f'), ('acme::b', None)]


def test_discovery_without_listing_or_dsn_says_what_to_do():
    with pytest.raises(_org.OrgError, match='set db_dsn'):
        _org.discover_org_agents(FakeClient({}), 'acme', db_factory=lambda: None)
    with pytest.raises(_org.OrgError, match='rejected the admin secret'):
        _org.discover_org_agents(FakeClient({('GET', '/v1/admin/agents'): (403, {'detail': 'Invalid admin secret'})}),
                                 'acme')


def test_missing_route_is_told_apart_from_missing_org():
    assert _org.is_missing_route(BrokerResponse(404, {}, b'{"detail":"Not Found"}'))
    assert _org.is_missing_route(BrokerResponse(405, {}, b'{"detail":"Method Not Allowed"}'))
    assert not _org.is_missing_route(BrokerResponse(404, {}, b'{"detail":"Organization not found"}'))


def test_database_url_of_the_broker_is_accepted_and_passwords_redacted():
    assert bdb.libpq_dsn('postgresql+asyncpg://u:pw@h:5432/db') == 'postgresql://u:pw@h:5432/db'
    assert bdb.libpq_dsn('host=h dbname=db') == 'host=h dbname=db'
    msg = bdb.redact('could not connect to postgresql://u:s3cr3t@h/db: s3cr3t wrong', 'postgresql://u:s3cr3t@h/db')
    assert 's3cr3t' not in msg
    assert 'hunter2' not in bdb.redact('bad password=hunter2', 'host=h password=hunter2')

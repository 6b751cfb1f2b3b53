# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serials reach the broker only as format(serial, 'x'); anything else is refused naming the entry."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _serials as s


@pytest.mark.parametrize('raw', ['0A:1B:FF', '0a1bff', 'A1BFF', '0x0A1BFF', ' 0a:1b:ff\n', '000A1BFF', 'a:1b:ff'])
def test_openssl_forms_become_what_the_broker_matches(raw):
    assert s.normalize_serial(raw) == format(0x0A1BFF, 'x') == 'a1bff'


@pytest.mark.parametrize('raw, words', [
    ('0a1g', 'not hexadecimal (bad characters: g)'),
    ('', 'empty'),
    ('0:0', 'zero'),
    ('0a:1b2:ff', 'colons must separate single bytes'),
    ('ab' * 32, 'thumbprint'),
    ('1' * 41, 'at most 40'),
])
def test_non_serials_are_refused_with_the_reason(raw, words):
    with pytest.raises(s.SerialError) as e:
        s.normalize_serial(raw)
    assert words in str(e.value)
    assert repr(raw) in str(e.value)


def test_yaml_numbers_are_refused_with_advice():
    with pytest.raises(s.SerialError, match='quote it'):
        s.normalize_serial(1234)


def test_normalize_serials_names_every_bad_entry():
    with pytest.raises(s.SerialError) as e:
        s.normalize_serials(['0A', 'zz', '0B', 'x:y'])
    assert "'zz'" in str(e.value) and "'x:y'" in str(e.value) and "'0A'" not in str(e.value)
    assert s.normalize_serials(['0A', '0B']) == ['a', 'b']


def test_cert_info_reads_serial_org_agent_and_expiry(make_cert):
    info = s.cert_info_from_pem(make_cert('acme::billing', 'acme', serial=0x00FF00))
    assert info.serial_hex == 'ff00'
    assert info.org_id == 'acme' and info.agent_id == 'acme::billing' and not info.is_ca
    assert info.not_after > datetime.datetime.now(datetime.timezone.utc)
    assert s.isoformat_utc(info.not_after).endswith('+00:00')


def test_cert_info_takes_the_leaf_of_a_chain_and_flags_cas(make_cert):
    chain = make_cert('acme::a', 'acme', serial=0x11) + make_cert('acme CA', 'acme', serial=0x22, ca=True)
    assert s.cert_info_from_pem(chain).serial_hex == '11'
    assert s.cert_info_from_pem(make_cert('acme CA', 'acme', serial=0x22, ca=True)).is_ca


def test_cert_entry_from_path_and_errors(tmp_path, make_cert):
    path = tmp_path / 'agent.pem'
    path.write_text(make_cert('acme::a', 'acme', serial=0xABC))
    assert s.cert_info_from_entry(str(path), 0).serial_hex == 'abc'
    with pytest.raises(s.SerialError, match=r'certs\[3\] is neither PEM contents nor an existing file'):
        s.cert_info_from_entry(str(tmp_path / 'missing.pem'), 3)
    with pytest.raises(s.SerialError, match=r'certs\[1\] is not a valid PEM certificate'):
        s.cert_info_from_entry('-----BEGIN CERTIFICATE-----\nnotbase64\n-----END CERTIFICATE-----', 1)
    with pytest.raises(s.SerialError, match='does not contain a PEM certificate'):
        s.cert_info_from_entry('-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----', 2)

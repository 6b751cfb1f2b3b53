# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cullis.broker.plugins.module_utils._redact import (
    MASK, Redactor, secret_values_from_env)

ENV = {
    'ADMIN_SECRET': 'Adm1nSecretValue42',
    'REDIS_URL': 'redis://:r3disPassw0rd@127.0.0.1:56379/0',
    'DATABASE_URL': 'postgresql+asyncpg://atn:pgPassw0rdXY@127.0.0.1:55432/agent_trust',
    'VAULT_TOKEN': 's.AbCdEfGhIjKlMnOpQrStUvWx',
    'BROKER_PUBLIC_URL': 'https://127.0.0.1:8443',
    'ENVIRONMENT': 'production',
}


def test_env_values_collected_with_url_passwords():
    values = secret_values_from_env(ENV)
    assert 'Adm1nSecretValue42' in values
    assert 'r3disPassw0rd' in values
    assert 'pgPassw0rdXY' in values
    assert 'https://127.0.0.1:8443' not in values
    assert 'production' not in values


def test_known_values_masked_anywhere():
    r = Redactor(secret_values_from_env(ENV))
    line = 'auth failed for pgPassw0rdXY and Adm1nSecretValue42 (token s.AbCdEfGhIjKlMnOpQrStUvWx)'
    out = r(line)
    for v in ('pgPassw0rdXY', 'Adm1nSecretValue42', 's.AbCdEfGhIjKlMnOpQrStUvWx'):
        assert v not in out
    assert out.count(MASK) == 3


def test_patterns_without_known_values():
    r = Redactor()
    cases = [
        ('Error connecting to redis://:hunter2hunter@127.0.0.1:6379/0', 'hunter2hunter'),
        ("headers={'x-admin-secret': 'zzzSECRETzzz'}", 'zzzSECRETzzz'),
        ('x-org-secret: orgsecret123', 'orgsecret123'),
        ('ADMIN_SECRET=plainvalue99', 'plainvalue99'),
        ('Authorization: Bearer abcdef123456', 'abcdef123456'),
        ('token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl issued', 'eyJzdWIiOiJ4In0'),
        ('VAULT token hvs.CAESIJabcdefghijklmnopqrstu', 'hvs.CAESIJabcdefghijklmnopqrstu'),
        ('postgresql+asyncpg://atn:dbpw42xx@127.0.0.1:5432/db', 'dbpw42xx'),
    ]
    for line, secret in cases:
        out = r(line)
        assert secret not in out, (line, out)
        assert MASK in out


def test_innocent_lines_untouched():
    r = Redactor(secret_values_from_env(ENV))
    for line in ('LIFESPAN: ensure_bootstrapped (admin_secret)',
                 'READYZ FAIL [redis]: Connection refused',
                 'INFO:     Waiting for application startup.',
                 'GET https://127.0.0.1:8443/health 200',
                 'asyncpg.exceptions.InvalidPasswordError: password authentication failed for user "atn"'):
        assert r(line) == line


def test_short_values_ignored_and_url_encoded_masked():
    r = Redactor(['ab', 'p@ss/word!'])
    assert r('ab cd') == 'ab cd'
    assert 'p%40ss%2Fword%21' not in r('url has p%40ss%2Fword%21 in it')


class _Module(object):
    def __init__(self):
        self.no_log_values = set()


def test_protect_registers_values_and_url_passwords():
    from ansible_collections.cullis.broker.plugins.module_utils._redact import protect
    m = _Module()
    assert protect(m, 'root-token-1234', None, b'-----BEGIN PRIVATE KEY-----\nabc\n') == 'root-token-1234'
    protect(m, 'redis://:s3cretPw@127.0.0.1:6379/0')
    assert {'root-token-1234', 's3cretPw', 'redis://:s3cretPw@127.0.0.1:6379/0',
            '-----BEGIN PRIVATE KEY-----\nabc\n'} == m.no_log_values


def test_scrub_masks_dsn_whole_and_its_password_alone():
    from ansible_collections.cullis.broker.plugins.module_utils._redact import scrub
    dsn = 'postgresql://u:s3cr3t@h/db'
    out = scrub('cannot connect to %s: password s3cr3t rejected; key abc' % dsn, [dsn, 'abc'], min_length=1)
    assert 's3cr3t' not in out and dsn not in out and 'abc' not in out
    assert out.count(MASK) == 3
    assert scrub(None, ['x']) is None

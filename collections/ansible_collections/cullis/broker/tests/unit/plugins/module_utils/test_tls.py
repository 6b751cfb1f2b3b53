# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress

import pytest

from ansible_collections.cullis.broker.plugins.module_utils import _tls

x509 = pytest.importorskip('cryptography.x509')
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


def _cert(cn, sans=(), issuer=None, issuer_key=None, days=100, start=None, ca=False, aki=True):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = start or NOW - datetime.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer is not None else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    signer = issuer_key or key
    if aki:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    entries = []
    for s in sans:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            entries.append(x509.DNSName(s))
    if entries:
        b = b.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256()), key


@pytest.mark.parametrize('name, expected', [
    ('broker.example.com', True),
    ('BROKER.example.com.', True),
    ('a.wild.example.com', True),
    ('x.a.wild.example.com', False),
    ('wild.example.com', False),
    ('10.0.0.1', True),
    ('10.0.0.2', False),
    ('other.example.com', False),
])
def test_hostname_matching(name, expected):
    cert = _cert('x', sans=['broker.example.com', '*.wild.example.com', '10.0.0.1'])[0]
    assert _tls.hostname_matches(cert, name) is expected


def test_no_san_never_matches_even_with_matching_cn():
    cert = _cert('broker.example.com')[0]
    assert _tls.hostname_matches(cert, 'broker.example.com') is False


def test_days_left_is_floor_and_negative_when_expired():
    cert = _cert('x', days=10, start=NOW - datetime.timedelta(days=1))[0]
    assert _tls.days_left(cert, NOW) == 9
    assert _tls.days_left(cert, NOW + datetime.timedelta(days=8, hours=23)) == 0
    assert _tls.days_left(cert, NOW + datetime.timedelta(days=10)) == -1


def _facts(**over):
    f = dict(expired=False, not_yet_valid=False, days_left=100, not_after='X', not_before='Y',
             hostname_match=True, hostname='h', sans=['DNS:h'], chain_valid=True, chain_error=None)
    f.update(over)
    # what cert_facts reports beside days_left (the wording of _tls.expiry_text)
    f.setdefault('expiry', 'expired %d days ago' % -f['days_left'] if f['expired'] else 'expires in %d days' % f['days_left'])
    return f


@pytest.mark.parametrize('over, status', [
    ({}, 'ok'),
    ({'days_left': 29}, 'warn'),
    ({'days_left': 30}, 'ok'),
    ({'days_left': 13}, 'critical'),
    ({'days_left': 14}, 'warn'),
    ({'expired': True, 'days_left': -1, 'chain_valid': False, 'chain_error': 'expired'}, 'critical'),
    ({'hostname_match': False}, 'critical'),
    ({'hostname_match': None}, 'ok'),
    ({'chain_valid': False, 'chain_error': 'self-signed'}, 'critical'),
])
def test_evaluate_thresholds(over, status):
    got, problems = _tls.evaluate(_facts(**over), 30, 14)
    assert got == status
    assert bool(problems) == (status != 'ok')


def test_expired_reports_one_problem_not_a_duplicate_chain_error():
    facts = _facts(expired=True, days_left=-3, chain_valid=False, chain_error='certificate expired on X')
    problems = _tls.evaluate(facts, 30, 14)[1]
    assert problems == ['certificate expired on X (expired 3 days ago)']


def test_verify_chain_reasons():
    root, root_key = _cert('Root', ca=True, days=1000)
    leaf = _cert('leaf', sans=['h.example.com'], issuer=root, issuer_key=root_key)[0]
    assert _tls.verify_chain(leaf, [], [root], 'ca.pem', NOW) == (True, None)
    ok, err = _tls.verify_chain(root, [], [leaf], 'ca.pem', NOW)
    assert not ok and 'self-signed certificate (CN=Root) is not in ca.pem' == err
    ok, err = _tls.verify_chain(leaf, [], [], 'ca.pem', NOW)
    assert not ok and 'no trusted CA certificate' in err
    ok, err = _tls.verify_chain(leaf, [], [root], 'ca.pem', NOW + datetime.timedelta(days=200))
    assert not ok and err.startswith('certificate expired on')
    other_root = _cert('Other', ca=True, days=1000)[0]
    ok, err = _tls.verify_chain(leaf, [], [other_root], 'ca.pem', NOW)
    assert not ok and 'the issuer "CN=Root" of "CN=leaf" is neither presented nor in ca.pem' in err
    nosan = _cert('nosan', issuer=root, issuer_key=root_key)[0]
    ok, err = _tls.verify_chain(nosan, [], [root], 'ca.pem', NOW)
    assert not ok and 'no DNS or IP subjectAltName' in err


def test_strict_only_rejection_is_told_apart_from_no_path_and_named_in_words():
    root, root_key = _cert('Root', ca=True, days=1000)
    no_aki = _cert('leaf', sans=['h.example.com'], issuer=root, issuer_key=root_key, aki=False)[0]
    ok, err, scope = _tls.verify_chain_scope(no_aki, [], [root], 'ca.pem', NOW)
    assert not ok and scope == 'strict'
    assert err.startswith('rejected by strict clients only') and 'missing Authority Key Identifier extension' in err
    assert '2.5.29.35' not in err
    other_root, other_key = _cert('Root', ca=True, days=1000)  # same name, other key: no path at all
    ok, err, scope = _tls.verify_chain_scope(no_aki, [], [other_root], 'ca.pem', NOW)
    assert not ok and scope == 'all' and not err.startswith('rejected by strict')
    good = _cert('leaf', sans=['h.example.com'], issuer=root, issuer_key=root_key)[0]
    assert _tls.verify_chain_scope(good, [], [root], 'ca.pem', NOW) == (True, None, None)


@pytest.mark.parametrize('scope, no_path, strict_only, status', [
    ('strict', 'critical', 'critical', 'critical'),
    ('strict', 'critical', 'warn', 'warn'),
    ('strict', 'critical', 'ok', 'ok'),
    ('all', 'warn', 'ok', 'warn'),
    ('all', 'critical', 'ok', 'critical'),
])
def test_chain_verdicts_are_configurable(scope, no_path, strict_only, status):
    facts = _facts(chain_valid=False, chain_error='x', chain_scope=scope)
    got, problems = _tls.evaluate(facts, 30, 14, no_path, strict_only)
    assert got == status and problems and problems[0].startswith('untrusted chain: x')


def test_x509_errors_name_extensions_in_words():
    assert _tls.describe_x509_error('invalid extension: 2.5.29.35: Certificate is missing required extension') == \
        'missing Authority Key Identifier extension'
    assert _tls.describe_x509_error('invalid extension: 2.5.29.15: key usage forbids x') == \
        'Key Usage extension: key usage forbids x'
    assert _tls.describe_x509_error('bad 2.5.29.19 here') == 'bad Basic Constraints here'


def test_clean_error_strips_noise():
    msg = 'validation failed: cert is not valid (encountered processing <Certificate(subject=...)>)'
    assert _tls._clean_error(msg) == 'cert is not valid'


def test_load_pem_certificates_rejects_non_pem():
    with pytest.raises(_tls.TLSCheckError, match='contains no PEM certificate'):
        _tls.load_pem_certificates(b'hello', 'x.pem')


def test_private_key_matches():
    from cryptography.hazmat.primitives import serialization
    cert, key = _cert('k', sans=['k'])
    other = _cert('o', sans=['o'])[0]
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    assert _tls.private_key_matches(pem, cert) is True
    assert _tls.private_key_matches(pem, other) is False
    with pytest.raises(_tls.TLSCheckError, match='cannot be loaded'):
        _tls.private_key_matches(b'-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', cert)

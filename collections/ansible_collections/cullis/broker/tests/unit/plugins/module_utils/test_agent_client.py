# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the agent protocol client: JWS encodings and signatures verify as the broker does."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import json
import os
import stat

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(key, cn):
    import datetime
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), cert


def _verify_es256(token, public_key):
    head, body, sig = token.split('.')
    raw = ac.b64url_decode(sig)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], 'big'), int.from_bytes(raw[32:], 'big'))
    public_key.verify(der, (head + '.' + body).encode('ascii'), ec.ECDSA(hashes.SHA256()))


def test_b64url_has_no_padding_and_round_trips():
    for n in range(0, 7):
        data = os.urandom(n)
        enc = ac.b64url(data)
        assert '=' not in enc and '+' not in enc and '/' not in enc
        assert ac.b64url_decode(enc) == data


def test_dpop_proof_structure_and_signature():
    key = ac.DPoPKey.generate()
    proof = key.proof('post', 'HTTPS://Broker.Example.com:8443/v1/auth/token?x=1', nonce='n1', access_token='tok')
    header, claims = ac.jws_unverified(proof)
    assert header['typ'] == 'dpop+jwt' and header['alg'] == 'ES256'
    assert set(header['jwk']) == {'kty', 'crv', 'x', 'y'}
    assert claims['htm'] == 'POST'
    assert claims['htu'] == 'https://broker.example.com:8443/v1/auth/token'
    assert claims['nonce'] == 'n1'
    assert claims['ath'] == ac.b64url(hashlib.sha256(b'tok').digest())
    assert claims['jti'] and isinstance(claims['iat'], int)
    _verify_es256(proof, key.private_key.public_key())
    assert ac.jws_unverified(key.proof('GET', 'http://h/p'))[1]['jti'] != claims['jti']


def test_thumbprint_matches_rfc7638_example():
    # RFC 7638 section 3.1 example RSA key -> NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs
    jwk = {'kty': 'RSA', 'e': 'AQAB', 'n': (
        '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV'
        '4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7'
        'd0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF4'
        '4-csFCur-kEgU8awapJzKnqDKgw')}
    assert ac.jwk_thumbprint(jwk) == 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs'


def test_client_assertion_ec_and_rsa():
    for key, alg in ((ec.generate_private_key(ec.SECP256R1()), 'ES256'),
                     (rsa.generate_private_key(public_exponent=65537, key_size=2048), 'RS256')):
        cert_pem, cert = _self_signed(key, 'org::a')
        token = ac.make_client_assertion('org::a', _pem(key), [cert_pem], now=1000)
        header, claims = ac.jws_unverified(token)
        assert header['alg'] == alg
        assert base64.b64decode(header['x5c'][0]) == cert.public_bytes(serialization.Encoding.DER)
        assert header['x5c'][0].endswith('=') or len(header['x5c'][0]) % 4 == 0
        assert claims == dict(claims, sub='org::a', iss='org::a', aud='agent-trust-broker', iat=1000, exp=1300)
        head, body, sig = token.split('.')
        if alg == 'ES256':
            _verify_es256(token, key.public_key())
        else:
            key.public_key().verify(ac.b64url_decode(sig), (head + '.' + body).encode('ascii'),
                                    padding.PKCS1v15(), hashes.SHA256())


def test_mastio_signature_is_der_over_exact_bytes():
    key = ec.generate_private_key(ec.SECP256R1())
    sig = ac.mastio_signature(_pem(key), 'abc.def.ghi')
    der = ac.b64url_decode(sig)
    assert der[0] == 0x30  # DER SEQUENCE, not raw r||s
    key.public_key().verify(der, b'abc.def.ghi', ec.ECDSA(hashes.SHA256()))


def test_sign_message_canonical_form_rsa_pss_and_ec():
    payload = {'text': 'pïng', 'a': 1}
    canon = ac.canonical_message('s1', 'o::a', 'n', 123, payload)
    assert canon == 's1|o::a|n|123|{"a":1,"text":"p\\u00efng"}'
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sig = ac.sign_message(rkey, 's1', 'o::a', 'n', 123, payload)
    rkey.public_key().verify(ac.b64url_decode(sig), canon.encode(), padding.PSS(
        mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO), hashes.SHA256())
    ekey = ec.generate_private_key(ec.SECP256R1())
    sig = ac.sign_message(_pem(ekey), 's1', 'o::a', 'n', 123, payload)
    ekey.public_key().verify(ac.b64url_decode(sig), canon.encode(), ec.ECDSA(hashes.SHA256()))


def test_identity_save_load_modes(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem, _cert = _self_signed(key, 'org::a')
    ca_pem, _ca = _self_signed(ec.generate_private_key(ec.SECP256R1()), 'ca')
    ident = ac.AgentIdentity('org::a', 'org', cert_pem, _pem(key), [ca_pem], _pem(key))
    d = str(tmp_path / 'id')
    ident.save(d)
    assert stat.S_IMODE(os.stat(os.path.join(d, 'key.pem')).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(d, 'mastio-key.pem')).st_mode) == 0o600
    back = ac.AgentIdentity.load(d)
    assert (back.agent_id, back.org_id, back.cert_pem, back.key_pem) == ('org::a', 'org', cert_pem, _pem(key))
    assert back.chain_pems == [ca_pem] and back.mastio_key_pem == _pem(key)


class _FakeClient(object):
    """Stands in for BrokerClient at the HTTP boundary: answers use_dpop_nonce once, then 200."""

    def __init__(self):
        self.calls = []

    def request(self, method, path, body=None, headers=None, query=None):
        from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerResponse
        self.calls.append((method, path, body, dict(headers or {})))
        proof_claims = ac.jws_unverified(headers['DPoP'])[1]
        if proof_claims.get('nonce') != 'N2':
            return BrokerResponse(401, {'dpop-nonce': 'N2'}, b'{"detail":"use_dpop_nonce"}')
        if path == '/v1/auth/token':
            return BrokerResponse(200, {'dpop-nonce': 'N2'},
                                  json.dumps({'access_token': 'T', 'token_type': 'DPoP', 'expires_in': 1800}).encode())
        return BrokerResponse(401, {'dpop-nonce': 'N2'}, b'{"detail":"Token invalid or expired"}')


def test_session_login_does_nonce_round_trip_and_countersigns():
    key = ec.generate_private_key(ec.SECP256R1())
    mastio = ec.generate_private_key(ec.SECP256R1())
    cert_pem, _cert = _self_signed(key, 'org::a')
    client = _FakeClient()
    identity = ac.AgentIdentity('org::a', 'org', cert_pem, _pem(key), mastio_key_pem=_pem(mastio))
    sess = ac.AgentSession(client, 'http://127.0.0.1:1/', identity)
    data = sess.login()
    assert data['access_token'] == 'T' and sess.access_token == 'T'
    assert len(client.calls) == 2
    first, second = client.calls
    assert first[2]['client_assertion'] == second[2]['client_assertion']  # assertion reused on retry
    sig = ac.b64url_decode(second[3]['X-Cullis-Mastio-Signature'])
    mastio.public_key().verify(sig, second[2]['client_assertion'].encode(), ec.ECDSA(hashes.SHA256()))
    assert ac.jws_unverified(second[3]['DPoP'])[1]['htu'] == 'http://127.0.0.1:1/v1/auth/token'
    resp = sess.request('GET', '/v1/federation/agents')
    assert resp.status == 401 and resp.detail == 'Token invalid or expired'
    assert client.calls[-1][3]['Authorization'] == 'DPoP T'


def test_login_error_carries_status_and_detail():
    err = ac.LoginError(403, 'Agent not active')
    assert err.status == 403 and err.detail == 'Agent not active' and 'Agent not active' in str(err)
    assert err.headers == {}
    assert ac.LoginError(429, 'Rate limit', {'retry-after': '60'}).headers['retry-after'] == '60'

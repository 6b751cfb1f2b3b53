# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the Cullis agent-side protocol as a client.

Not a public API of the collection. Implements what an agent (and its Mastio) does against a
broker (contract section 4): the x5c client assertion, DPoP proofs (RFC 9449) with the nonce
round-trip, the Mastio countersignature, DPoP-bound resource calls, message signatures and
`publish-agent`. Standard library + `cryptography` only: compact JWS (ES256/RS256/PS256) is
implemented here, no PyJWT on targets.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import json
import os
import time
import uuid

try:
    from urllib.parse import urlsplit
except ImportError:  # pragma: no cover
    urlsplit = None

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as _imp_err:  # pragma: no cover - reported by the modules
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = _imp_err

DEFAULT_AUDIENCE = 'agent-trust-broker'


def b64url(data):
    """base64url without padding (JWS / DPoP / countersignature encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def b64url_decode(text):
    if isinstance(text, str):
        text = text.encode('ascii')
    return base64.urlsafe_b64decode(text + b'=' * (-len(text) % 4))


def _to_bytes(value):
    if isinstance(value, bytes):
        return value
    return value.encode('utf-8')


def load_private_key(key):
    """Accept a private key object or PEM (str/bytes)."""
    if isinstance(key, (bytes, str)):
        return serialization.load_pem_private_key(_to_bytes(key), password=None)
    return key


def _json_b64(obj):
    return b64url(json.dumps(obj, separators=(',', ':'), sort_keys=True).encode('utf-8'))


def jws_sign(header, claims, key, alg=None):
    """Compact JWS. alg defaults to ES256 for EC P-256 keys and RS256 for RSA keys."""
    key = load_private_key(key)
    if alg is None:
        alg = 'ES256' if isinstance(key, ec.EllipticCurvePrivateKey) else 'RS256'
    header = dict(header)
    header['alg'] = alg
    signing_input = (_json_b64(header) + '.' + _json_b64(claims)).encode('ascii')
    if alg == 'ES256':
        der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, 'big') + s.to_bytes(32, 'big')
    elif alg == 'RS256':
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == 'PS256':
        sig = key.sign(signing_input, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                       hashes.SHA256())
    else:
        raise ValueError('unsupported JWS algorithm %r' % alg)
    return signing_input.decode('ascii') + '.' + b64url(sig)


def jws_unverified(token):
    """(header, claims) of a compact JWS, without verification (for inspection in tests/modules)."""
    head, body, _sig = token.split('.')
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))


def _pem_to_der_b64(pem):
    cert = x509.load_pem_x509_certificate(_to_bytes(pem))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode('ascii')


def make_client_assertion(agent_id, key, x5c_pems, aud=DEFAULT_AUDIENCE, lifetime=300, sub=None, iss=None,
                          jti=None, alg=None, now=None):
    """The client_assertion JWT: x5c = standard padded base64 DER, leaf first."""
    now = int(time.time() if now is None else now)
    header = {'typ': 'JWT', 'x5c': [_pem_to_der_b64(p) for p in x5c_pems]}
    claims = {
        'sub': sub or agent_id,
        'iss': iss or agent_id,
        'aud': aud,
        'iat': now,
        'exp': now + int(lifetime),
        'jti': jti or str(uuid.uuid4()),
    }
    return jws_sign(header, claims, key, alg=alg)


def ec_public_jwk(public_key):
    nums = public_key.public_numbers()
    return {'kty': 'EC', 'crv': 'P-256', 'x': b64url(nums.x.to_bytes(32, 'big')),
            'y': b64url(nums.y.to_bytes(32, 'big'))}


def jwk_thumbprint(jwk):
    """RFC 7638 SHA-256 thumbprint (base64url) of an EC or RSA public JWK."""
    if jwk['kty'] == 'EC':
        members = {'crv': jwk['crv'], 'kty': 'EC', 'x': jwk['x'], 'y': jwk['y']}
    else:
        members = {'e': jwk['e'], 'kty': 'RSA', 'n': jwk['n']}
    return b64url(hashlib.sha256(json.dumps(members, separators=(',', ':'), sort_keys=True)
                                 .encode('utf-8')).digest())


def normalize_htu(url):
    """htu as the broker compares it: no query/fragment, lowercase scheme and host."""
    parts = urlsplit(url)
    return '%s://%s%s' % (parts.scheme.lower(), parts.netloc.lower(), parts.path)


class DPoPKey(object):
    """An EC P-256 DPoP key: makes proofs and knows its JWK thumbprint (`cnf.jkt`)."""

    def __init__(self, private_key):
        self.private_key = load_private_key(private_key)
        self.jwk = ec_public_jwk(self.private_key.public_key())

    @classmethod
    def generate(cls):
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def thumbprint(self):
        return jwk_thumbprint(self.jwk)

    def proof(self, htm, htu, nonce=None, access_token=None, iat=None, jti=None):
        claims = {'jti': jti or str(uuid.uuid4()), 'htm': htm.upper(), 'htu': normalize_htu(htu),
                  'iat': int(time.time() if iat is None else iat)}
        if nonce:
            claims['nonce'] = nonce
        if access_token:
            claims['ath'] = b64url(hashlib.sha256(access_token.encode('ascii')).digest())
        return jws_sign({'typ': 'dpop+jwt', 'jwk': self.jwk}, claims, self.private_key, alg='ES256')


def mastio_signature(mastio_key, data):
    """The X-Cullis-Mastio-Signature value: DER ECDSA P-256/SHA-256 over `data`, base64url."""
    key = load_private_key(mastio_key)
    return b64url(key.sign(_to_bytes(data), ec.ECDSA(hashes.SHA256())))


def canonical_message(session_id, agent_id, nonce, timestamp, payload):
    body = json.dumps(payload, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return '%s|%s|%s|%s|%s' % (session_id, agent_id, nonce, timestamp, body)


def sign_message(key, session_id, agent_id, nonce, timestamp, payload):
    """Message signature: RSA-PSS-SHA256 (max salt) or DER ECDSA-SHA256, base64url."""
    key = load_private_key(key)
    data = canonical_message(session_id, agent_id, nonce, timestamp, payload).encode('utf-8')
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
                       hashes.SHA256())
    else:
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return b64url(sig)


def publish_agent(client, mastio_key, agent_id, cert_pem, capabilities=(), display_name='', revoked=False):
    """POST /v1/federation/publish-agent, countersigned over the raw body bytes."""
    body = {'agent_id': agent_id, 'cert_pem': cert_pem if isinstance(cert_pem, str) else cert_pem.decode('ascii'),
            'capabilities': list(capabilities), 'display_name': display_name, 'revoked': bool(revoked)}
    # BrokerClient serialises with json.dumps(body); sign exactly those bytes.
    raw = json.dumps(body).encode('utf-8')
    return client.request('POST', '/v1/federation/publish-agent', body=body,
                          headers={'X-Cullis-Mastio-Signature': mastio_signature(mastio_key, raw)})


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, _to_bytes(data))
    finally:
        os.close(fd)
    os.chmod(path, mode)


class AgentIdentity(object):
    """What an agent needs to log in: id, org, leaf cert + key, chain, and its Mastio key."""

    def __init__(self, agent_id, org_id, cert_pem, key_pem, chain_pems=(), mastio_key_pem=None):
        self.agent_id = agent_id
        self.org_id = org_id
        self.cert_pem = _to_bytes(cert_pem)
        self.key_pem = _to_bytes(key_pem)
        self.chain_pems = [_to_bytes(p) for p in chain_pems]
        self.mastio_key_pem = _to_bytes(mastio_key_pem) if mastio_key_pem else None

    @property
    def key(self):
        return load_private_key(self.key_pem)

    def save(self, directory):
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        _write(os.path.join(directory, 'identity.json'),
               json.dumps({'agent_id': self.agent_id, 'org_id': self.org_id}), 0o644)
        _write(os.path.join(directory, 'cert.pem'), self.cert_pem, 0o644)
        _write(os.path.join(directory, 'key.pem'), self.key_pem, 0o600)
        _write(os.path.join(directory, 'chain.pem'), b''.join(self.chain_pems), 0o644)
        if self.mastio_key_pem:
            _write(os.path.join(directory, 'mastio-key.pem'), self.mastio_key_pem, 0o600)
        return directory

    @classmethod
    def load(cls, directory):
        def read(name):
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                return None
            with open(path, 'rb') as f:
                return f.read()
        meta = json.loads(read('identity.json').decode('utf-8'))
        chain = read('chain.pem') or b''
        marker = b'-----BEGIN CERTIFICATE-----'
        chain_pems = [marker + part for part in chain.split(marker)[1:]]
        return cls(meta['agent_id'], meta['org_id'], read('cert.pem'), read('key.pem'), chain_pems,
                   read('mastio-key.pem'))


class LoginError(Exception):
    """The broker rejected a login: `.status` and `.detail` are the broker's."""

    def __init__(self, status, detail, headers=None):
        super(LoginError, self).__init__('login rejected: HTTP %s: %s' % (status, detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}  # lower-case names, e.g. 'retry-after' on a 429


class AgentSession(object):
    """An agent's DPoP-bound session against one broker (`client` is a _broker.BrokerClient)."""

    def __init__(self, client, public_url, identity, dpop_key=None):
        self.client = client
        self.public_url = public_url.rstrip('/')
        self.identity = identity
        self.dpop_key = dpop_key or DPoPKey.generate()
        self.nonce = None
        self.access_token = None
        self.token_response = None

    def _remember_nonce(self, resp):
        nonce = resp.headers.get('dpop-nonce')
        if nonce:
            self.nonce = nonce

    def _htu(self, path):
        return self.public_url + path.split('?', 1)[0]

    def assertion(self, **kw):
        return make_client_assertion(self.identity.agent_id, self.identity.key_pem,
                                     [self.identity.cert_pem] + list(self.identity.chain_pems), **kw)

    def login_request(self, assertion=None, mastio_sig=True, proof=None):
        """One POST /v1/auth/token (no retry). Returns the BrokerResponse."""
        assertion = assertion or self.assertion()
        headers = {'DPoP': proof or self.dpop_key.proof('POST', self._htu('/v1/auth/token'), nonce=self.nonce)}
        if mastio_sig and self.identity.mastio_key_pem:
            headers['X-Cullis-Mastio-Signature'] = mastio_signature(self.identity.mastio_key_pem, assertion)
        resp = self.client.request('POST', '/v1/auth/token', body={'client_assertion': assertion}, headers=headers)
        self._remember_nonce(resp)
        return resp

    def login(self, assertion=None):
        """Full login with the nonce round-trip. Returns the token response; raises LoginError."""
        assertion = assertion or self.assertion()
        resp = self.login_request(assertion)
        if resp.status == 401 and resp.detail == 'use_dpop_nonce':
            resp = self.login_request(assertion)
        if resp.status != 200:
            raise LoginError(resp.status, resp.detail, headers=resp.headers)
        data = resp.json()
        self.access_token = data['access_token']
        self.token_response = data
        return data

    def request(self, method, path, body=None, query=None):
        """A DPoP-bound call; retries once when the broker asks for a fresh nonce."""
        if not self.access_token:
            raise LoginError(0, 'not logged in')
        resp = None
        for _attempt in (1, 2):
            headers = {'Authorization': 'DPoP ' + self.access_token,
                       'DPoP': self.dpop_key.proof(method, self._htu(path), nonce=self.nonce,
                                                   access_token=self.access_token)}
            resp = self.client.request(method, path, body=body, headers=headers, query=query)
            self._remember_nonce(resp)
            if not (resp.status == 401 and resp.detail == 'use_dpop_nonce'):
                break
        return resp

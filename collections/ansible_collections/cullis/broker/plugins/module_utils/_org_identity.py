# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the on-disk identity of an onboarded org (CA, mastio key, agents).

Not a public API of the collection. `cullis.broker.org_onboard` writes an identity directory and
`cullis.broker.agent_login` (and any playbook that must log those agents in later) reads it:

    <identity_dir>/
      org.json          org id, display name, what was pushed to the broker (no secrets), 0644
      org-secret        the org secret (x-org-secret), 0600
      ca.pem            org CA certificate (uploaded to the broker)
      ca-key.pem        org CA private key, 0600
      mastio-key.pem    org mastio EC P-256 key (its public key is pinned by the admin), 0600
      agents/<name>/    one agent, written by _agent_client.AgentIdentity.save()

Keys are generated with `cryptography`: EC P-256 everywhere, SHA-256 signatures; agent
certificates are classic-mode (CN = ``ORG::name``, O = ``ORG``, EKU clientAuth).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import json
import os
import re
import secrets
import tempfile

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as _e:  # pragma: no cover - reported by the modules with missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = _e

ORG_FILE = 'org.json'
SECRET_FILE = 'org-secret'
CA_FILE = 'ca.pem'
CA_KEY_FILE = 'ca-key.pem'
MASTIO_KEY_FILE = 'mastio-key.pem'
AGENTS_DIR = 'agents'

# org ids and agent names end up in file names and URLs; keep them to a safe alphabet.
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def sha256_hex(data):
    if not isinstance(data, bytes):
        data = data.encode('utf-8')
    return hashlib.sha256(data).hexdigest()


def write_private(path, data):
    """Atomically write `data` to `path` with mode 0600 (the file never exists with wider mode)."""
    if not isinstance(data, bytes):
        data = data.encode('utf-8')
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.rename(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_public(path, data):
    if not isinstance(data, bytes):
        data = data.encode('utf-8')
    write_private(path, data)
    os.chmod(path, 0o644)


def read_text(path):
    with open(path) as f:
        return f.read()


def new_ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode('ascii')


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')


def load_key(pem):
    return serialization.load_pem_private_key(pem.encode('ascii') if not isinstance(pem, bytes) else pem,
                                              password=None)


def load_cert(pem):
    return x509.load_pem_x509_certificate(pem.encode('ascii') if not isinstance(pem, bytes) else pem)


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


def serial_hex(cert):
    """The serial as the broker's revocation list stores it: lowercase hex, no leading zeros."""
    return format(cert.serial_number, 'x')


def cert_thumbprint(cert):
    """What the broker pins: lowercase hex SHA-256 of the leaf DER."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(cn, org):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def make_org_ca(org_id, days=3650):
    """Self-signed EC P-256 org CA; returns (key, cert)."""
    key = new_ec_key()
    start = _now() - datetime.timedelta(minutes=5)
    name = _name('%s CA' % org_id, org_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_agent_cert(ca_key, ca_cert, org_id, agent_id, days=365):
    """Classic-mode agent certificate (CN = agent id, O = org id, clientAuth); returns (key, cert)."""
    key = new_ec_key()
    start = _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(agent_id, org_id)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def new_org_secret():
    """43 URL-safe characters: well under bcrypt's 72-byte limit, no character needing quoting."""
    return secrets.token_urlsafe(32)


def agent_id_for(org_id, name):
    """`name` may be the short name or the full `ORG::name`; returns (agent_id, short name)."""
    if '::' in name:
        prefix, _sep, short = name.partition('::')
        if prefix != org_id:
            raise ValueError("agent %r does not belong to org %r" % (name, org_id))
        return name, short
    return '%s::%s' % (org_id, name), name


class OrgIdentityDir(object):
    """Read/write access to one identity directory. Nothing is written until a `save_*` call."""

    def __init__(self, path):
        self.path = path

    def file(self, name):
        return os.path.join(self.path, name)

    def agent_dir(self, short_name):
        return os.path.join(self.path, AGENTS_DIR, short_name)

    def exists(self, name):
        return os.path.exists(self.file(name))

    def ensure_dirs(self):
        for d in (self.path, os.path.join(self.path, AGENTS_DIR)):
            if not os.path.isdir(d):
                os.makedirs(d, 0o700)

    # --- state file (no secrets) -------------------------------------------------------
    def load_state(self):
        if not self.exists(ORG_FILE):
            return {}
        try:
            with open(self.file(ORG_FILE)) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except ValueError:
            return {}

    def save_state(self, state):
        write_public(self.file(ORG_FILE), json.dumps(state, indent=2, sort_keys=True) + '\n')

    # --- secrets and keys ----------------------------------------------------------------
    def load_secret(self):
        if not self.exists(SECRET_FILE):
            return None
        return read_text(self.file(SECRET_FILE)).strip() or None

    def save_secret(self, secret):
        write_private(self.file(SECRET_FILE), secret + '\n')

    def load_ca(self):
        """(key, cert) or None when the directory holds no CA yet."""
        if not (self.exists(CA_FILE) and self.exists(CA_KEY_FILE)):
            return None
        return load_key(read_text(self.file(CA_KEY_FILE))), load_cert(read_text(self.file(CA_FILE)))

    def save_ca(self, key, cert):
        write_private(self.file(CA_KEY_FILE), private_pem(key))
        write_public(self.file(CA_FILE), cert_pem(cert))

    def load_mastio_key(self):
        if not self.exists(MASTIO_KEY_FILE):
            return None
        return load_key(read_text(self.file(MASTIO_KEY_FILE)))

    def save_mastio_key(self, key):
        write_private(self.file(MASTIO_KEY_FILE), private_pem(key))

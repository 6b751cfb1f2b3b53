# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: certificate serial numbers in the one form a Cullis broker matches.

Not a public API of the collection. The broker stores `serial_hex` verbatim and compares it with
Python's `format(cert.serial_number, 'x')`: lowercase hex, no leading zeros, no colons. OpenSSL
prints `0A:1B:...` and `serial=0A1B...`; both are accepted by the revoke API and then never match
a login. Every serial a module sends to the broker goes through `normalize_serial()`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import re

try:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_CRYPTOGRAPHY = False

# RFC 5280 4.1.2.2: at most 20 octets.
MAX_SERIAL_HEX_DIGITS = 40
_HEX = re.compile(r'^[0-9a-f]+$')
_PEM_CERT = re.compile(r'-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----', re.S)


class SerialError(ValueError):
    """A value that is not a certificate serial; the message names the entry and says why."""


def normalize_serial(value):
    """'0A:1B:FF' / '0x0a1bff' / ' 0A1BFF ' -> 'a1bff'. Raises SerialError naming the bad entry."""
    if isinstance(value, bool) or value is None:
        raise SerialError("serial %r is not a hex serial number" % (value,))
    if isinstance(value, int):
        raise SerialError("serial %r is a YAML number, not a hex serial: quote it (\"%s\") so it is read "
                          "as hex digits" % (value, value))
    raw = str(value)
    text = raw.strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    if ':' in text:
        groups = text.split(':')
        if any(not (1 <= len(g) <= 2) for g in groups):
            raise SerialError("serial %r: colons must separate single bytes (like 0a:1b:ff)" % raw)
        text = ''.join(g.zfill(2) for g in groups)
    if not text:
        raise SerialError("serial %r is empty" % raw)
    if not _HEX.match(text):
        bad = sorted(set(c for c in text if c not in '0123456789abcdef'))
        raise SerialError("serial %r is not hexadecimal (bad characters: %s)" % (raw, ''.join(bad)))
    if len(text) == 64:
        raise SerialError("serial %r has 64 hex digits: that is a SHA-256 certificate thumbprint "
                          "(agents.cert_thumbprint), not a serial; revoke by serial or pass the certificate"
                          % raw)
    stripped = text.lstrip('0')
    if not stripped:
        raise SerialError("serial %r is zero, which no certificate has" % raw)
    if len(stripped) > MAX_SERIAL_HEX_DIGITS:
        raise SerialError("serial %r has %d hex digits; certificate serials have at most %d (20 bytes)"
                          % (raw, len(stripped), MAX_SERIAL_HEX_DIGITS))
    return stripped


def normalize_serials(values):
    """Normalise a list; collects every bad entry into one SerialError."""
    good, errors = [], []
    for value in values:
        try:
            good.append(normalize_serial(value))
        except SerialError as e:
            errors.append(str(e))
    if errors:
        raise SerialError('; '.join(errors))
    return good


def serial_of_int(number):
    return format(number, 'x')


class CertInfo(object):
    """What revocation needs from one certificate."""

    def __init__(self, serial_hex, org_id=None, agent_id=None, not_after=None, is_ca=False):
        self.serial_hex = serial_hex
        self.org_id = org_id
        self.agent_id = agent_id
        self.not_after = not_after
        self.is_ca = is_ca


def _first_pem_block(text, where):
    match = _PEM_CERT.search(text)
    if not match:
        raise SerialError("%s does not contain a PEM certificate (-----BEGIN CERTIFICATE-----)" % where)
    return match.group(0)


def _not_after(cert):
    value = getattr(cert, 'not_valid_after_utc', None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def cert_info_from_pem(pem, where='certificate'):
    """Parse the FIRST certificate of a PEM text (the leaf of a chain) -> CertInfo."""
    if not HAS_CRYPTOGRAPHY:  # pragma: no cover
        raise SerialError("the python 'cryptography' library is needed to read certificates")
    block = _first_pem_block(pem, where)
    try:
        cert = x509.load_pem_x509_certificate(block.encode('ascii'))
    except (ValueError, UnicodeEncodeError) as e:
        raise SerialError("%s is not a valid PEM certificate: %s" % (where, e))
    org = cn = None
    try:
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        org = orgs[0].value if orgs else None
        cn = cns[0].value if cns else None
    except ValueError:
        pass
    is_ca = False
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        pass
    agent_id = cn if cn and '::' in cn else None
    if agent_id and not org:
        org = agent_id.split('::', 1)[0]
    return CertInfo(serial_of_int(cert.serial_number), org_id=org, agent_id=agent_id,
                    not_after=_not_after(cert), is_ca=is_ca)


def cert_info_from_entry(entry, index):
    """`certs` option entry: PEM contents, or a path to a PEM file."""
    text = str(entry)
    if '-----BEGIN' in text:
        return cert_info_from_pem(text, where='certs[%d]' % index)
    path = os.path.expanduser(text.strip())
    if not os.path.isfile(path):
        raise SerialError("certs[%d] is neither PEM contents nor an existing file: %s" % (index, path))
    with open(path, 'rb') as f:
        data = f.read().decode('ascii', 'replace')
    return cert_info_from_pem(data, where='certs[%d] (%s)' % (index, path))


def isoformat_utc(value):
    """datetime -> '2027-01-01T00:00:00+00:00' (the broker's cert_not_after format)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).isoformat()

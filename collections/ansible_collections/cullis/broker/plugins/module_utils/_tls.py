# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: X.509 certificate facts, chain and hostname validation, TLS fetching.

Not a public API of the collection; `tls_check` and `tls_install` import it. It needs
`cryptography` (>= 45, for `x509.verification` with extension policies) and the standard
library only.

Design notes:
- Certificates are fetched with verification OFF, so expired, not-yet-valid, self-signed and
  wrong-host certificates are still retrieved and reported; validation happens afterwards, here.
- The peer chain: Python 3.13 has `SSLSocket.get_unverified_chain()`; Python 3.10-3.12 have the
  same call on the internal `SSLSocket._sslobj`. When neither exists only the leaf is available
  (`chain_source: leaf-only`) and intermediates must come from `ca_path`.
- Chain validity follows the Web PKI rules of `cryptography.x509.verification` (what browsers and
  modern TLS clients enforce), against `ca_path` or the system trust store. The host name check
  is done separately (`hostname_matches`) so a wrong-host certificate and a broken chain are
  reported as two different problems.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import threading

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import verification as x509_verification
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the modules with missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc

SEVERITY = {'ok': 0, 'warn': 1, 'critical': 2, 'unknown': 3}
DAY = 86400.0

_TRUST_CACHE = {}
_TRUST_LOCK = threading.Lock()


class TLSCheckError(Exception):
    """A certificate or trust store could not be read; the message is meant for the operator."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def _not_before(cert):
    return cert.not_valid_before_utc


def _not_after(cert):
    return cert.not_valid_after_utc


def load_pem_certificates(data, source):
    """All certificates of a PEM bundle (leaf first, as in a fullchain file)."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    if b'-----BEGIN CERTIFICATE-----' not in data:
        raise TLSCheckError('%s contains no PEM certificate' % source)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    # One malformed block must not hide the others (system bundles carry odd certificates).
    certs = []
    for block in data.split(b'-----END CERTIFICATE-----'):
        start = block.find(b'-----BEGIN CERTIFICATE-----')
        if start < 0:
            continue
        try:
            certs.append(x509.load_pem_x509_certificate(block[start:] + b'-----END CERTIFICATE-----\n'))
        except ValueError:
            continue
    if not certs:
        raise TLSCheckError('%s: no certificate in it could be parsed' % source)
    return certs


def read_pem_file(path):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except (IOError, OSError) as exc:
        raise TLSCheckError('cannot read %s: %s' % (path, exc.strerror or exc))
    return load_pem_certificates(data, path)


def _system_trust_files():
    paths = ssl.get_default_verify_paths()
    files = []
    for cafile in (os.environ.get('SSL_CERT_FILE'), paths.cafile, paths.openssl_cafile,
                   '/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt'):
        if cafile and os.path.isfile(cafile):
            return [cafile]
    for capath in (os.environ.get('SSL_CERT_DIR'), paths.capath, paths.openssl_capath):
        if capath and os.path.isdir(capath):
            files = [os.path.join(capath, n) for n in sorted(os.listdir(capath))]
            return [f for f in files if os.path.isfile(f)]
    return files


def load_trust(ca_path=None):
    """(certificates, description) of the trust anchors: `ca_path` (file or directory) or the system."""
    key = ca_path or ''
    with _TRUST_LOCK:
        if key in _TRUST_CACHE:
            return _TRUST_CACHE[key]
        if ca_path:
            if os.path.isdir(ca_path):
                files = [os.path.join(ca_path, n) for n in sorted(os.listdir(ca_path))
                         if n.endswith(('.pem', '.crt'))]
            else:
                files = [ca_path]
            description = ca_path
        else:
            files = _system_trust_files()
            description = 'the system trust store'
        certs = []
        for path in files:
            try:
                certs.extend(read_pem_file(path))
            except TLSCheckError:
                if ca_path and not os.path.isdir(ca_path):
                    raise
        if ca_path and not certs:
            raise TLSCheckError('no CA certificate found in %s' % ca_path)
        _TRUST_CACHE[key] = (certs, description)
        return _TRUST_CACHE[key]


def sans(cert):
    """SAN entries in openssl's notation: DNS:name, IP:address, URI:uri, email:addr."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = ['DNS:%s' % n for n in ext.get_values_for_type(x509.DNSName)]
    out += ['IP:%s' % n for n in ext.get_values_for_type(x509.IPAddress)]
    out += ['URI:%s' % n for n in ext.get_values_for_type(x509.UniformResourceIdentifier)]
    out += ['email:%s' % n for n in ext.get_values_for_type(x509.RFC822Name)]
    return out


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint_sha256(cert):
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))


def days_left(cert, now=None):
    """Whole days until notAfter (floor; negative once expired)."""
    seconds = (_not_after(cert) - (now or utcnow())).total_seconds()
    return int(seconds // DAY)


def expiry_text(cert, now=None):
    """'expires in 12 days', 'expires today', 'expired today', 'expired 2 days ago' (never '-2 days left')."""
    seconds = (_not_after(cert) - (now or utcnow())).total_seconds()
    if seconds < 0:
        ago = int(-seconds // DAY)
        return 'expired today' if ago == 0 else 'expired %d day%s ago' % (ago, '' if ago == 1 else 's')
    left = int(seconds // DAY)
    return 'expires today' if left == 0 else 'expires in %d day%s' % (left, '' if left == 1 else 's')


def is_self_issued(cert):
    return cert.issuer == cert.subject


def is_ca(cert):
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def order_problem(certs, source):
    """A message when a PEM bundle does not start with the server certificate (an intermediate or
    root first, the leaf later), else None. Such a file would be blamed on the key and the SANs."""
    if len(certs) < 2 or not is_ca(certs[0]):
        return None
    leaves = [i for i, c in enumerate(certs) if not is_ca(c)]
    if not leaves:
        return None
    return ('certificate order: %s starts with the CA certificate "%s" and holds the server certificate "%s" at '
            'position %d - the server certificate must come first, then its intermediates (leaf, intermediate, ...); '
            'reorder the file' % (source, certs[0].subject.rfc4514_string(),
                                  certs[leaves[0]].subject.rfc4514_string(), leaves[0] + 1))


def cert_facts(cert, now=None):
    now = now or utcnow()
    return dict(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans(cert),
        serial_hex=format(cert.serial_number, 'x'),
        fingerprint_sha256=fingerprint_sha256(cert),
        not_before=_not_before(cert).strftime('%Y-%m-%dT%H:%M:%SZ'),
        not_after=_not_after(cert).strftime('%Y-%m-%dT%H:%M:%SZ'),
        days_left=days_left(cert, now),
        expiry=expiry_text(cert, now),
        expired=_not_after(cert) < now,
        not_yet_valid=_not_before(cert) > now,
        self_signed=is_self_issued(cert),
    )


def _wildcard_match(pattern, hostname):
    p_labels, h_labels = pattern.split('.'), hostname.split('.')
    if len(p_labels) != len(h_labels) or len(p_labels) < 3:
        return False
    return p_labels[0] == '*' and p_labels[1:] == h_labels[1:]


def hostname_matches(cert, hostname):
    """RFC 6125 matching against the SAN only (no CN fallback, like every modern client)."""
    hostname = hostname.strip().rstrip('.').lower()
    if hostname.startswith('[') and hostname.endswith(']'):
        hostname = hostname[1:-1]
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in ext.get_values_for_type(x509.IPAddress)
    for name in ext.get_values_for_type(x509.DNSName):
        name = name.rstrip('.').lower()
        if name == hostname or ('*' in name and _wildcard_match(name, hostname)):
            return True
    return False


def _verification_subject(leaf):
    """A subject the leaf certainly covers, so the verifier checks the chain and not the name."""
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for name in ext.get_values_for_type(x509.DNSName):
        return x509_verification.DNSName(name.replace('*', 'wildcard', 1) if name.startswith('*.') else name)
    for ip in ext.get_values_for_type(x509.IPAddress):
        return x509_verification.IPAddress(ip)
    return None


def _missing_issuer(leaf, intermediates, trust):
    """The first issuer name on the path from the leaf that is neither presented nor trusted."""
    by_subject = {}
    for c in list(intermediates) + list(trust):
        by_subject.setdefault(c.subject, c)
    trusted = set(c.subject for c in trust)
    current, seen = leaf, set()
    while current is not None and current.subject not in seen:
        seen.add(current.subject)
        if current.issuer in trusted:
            return None
        nxt = by_subject.get(current.issuer)
        if nxt is None or nxt is current:
            return current
        current = nxt
    return None


# X.509 extensions by OID, so that findings name them in words ("missing Authority Key Identifier")
EXTENSION_NAMES = {
    '2.5.29.14': 'Subject Key Identifier',
    '2.5.29.15': 'Key Usage',
    '2.5.29.17': 'Subject Alternative Name',
    '2.5.29.19': 'Basic Constraints',
    '2.5.29.30': 'Name Constraints',
    '2.5.29.31': 'CRL Distribution Points',
    '2.5.29.32': 'Certificate Policies',
    '2.5.29.35': 'Authority Key Identifier',
    '2.5.29.37': 'Extended Key Usage',
    '1.3.6.1.5.5.7.1.1': 'Authority Information Access',
}
STRICT_CLIENTS = ('strict clients only (for example Python 3.13+ default TLS context, '
                  'which verifies the CA/Browser Forum profile)')


def _clean_error(message):
    message = str(message)
    if message.startswith('validation failed: '):
        message = message[len('validation failed: '):]
    cut = message.find(' (encountered processing')
    message = message[:cut] if cut > 0 else message
    return describe_x509_error(message)


def _extension_name(oid):
    return EXTENSION_NAMES.get(oid, 'extension %s' % oid)


def describe_x509_error(message):
    """A verifier message with X.509 extension OIDs named in words."""
    m = re.match(r'^invalid extension: ([0-9.]+): (.*)$', message)
    if m:
        name, detail = _extension_name(m.group(1)), m.group(2)
        if 'missing required extension' in detail.lower():
            return 'missing %s extension' % name
        return '%s extension: %s' % (name, detail[:1].lower() + detail[1:])
    return re.sub(r'\b(?:[0-9]+\.){3,}[0-9]+\b', lambda o: EXTENSION_NAMES.get(o.group(0), o.group(0)), message)


def lenient_path_exists(leaf, intermediates, trust, now=None, max_depth=8):
    """True when signatures chain the leaf to a trusted CA (names, signatures, validity dates only).

    What lenient TLS clients (OpenSSL without X509_V_FLAG_X509_STRICT: curl, Python up to 3.12, most
    agents) check. When this holds but the strict verifier refuses the chain, only strict clients
    reject the certificate."""
    now = now or utcnow()
    trusted = [c.public_bytes(serialization.Encoding.DER) for c in trust]
    pool = list(intermediates) + list(trust)
    current = leaf
    for _depth in range(max_depth):
        if current.public_bytes(serialization.Encoding.DER) in trusted:
            return True
        issuer = None
        for cand in pool:
            if cand.subject != current.issuer or cand is current:
                continue
            try:
                current.verify_directly_issued_by(cand)
            except Exception:  # signature, algorithm or name mismatch
                continue
            if _not_before(cand) <= now <= _not_after(cand):
                issuer = cand
                break
        if issuer is None:
            return False
        if issuer.public_bytes(serialization.Encoding.DER) in trusted:
            return True
        current = issuer
    return False


def verify_chain(leaf, intermediates, trust, trust_description, now=None):
    """(chain_valid, chain_error) for the leaf with the presented intermediates against `trust`."""
    valid, error, _scope = verify_chain_scope(leaf, intermediates, trust, trust_description, now)
    return valid, error


def verify_chain_scope(leaf, intermediates, trust, trust_description, now=None):
    """(chain_valid, chain_error, scope): scope says who rejects an invalid chain.

    V(all): there is no path to a trusted CA (every client fails); V(strict): signatures lead to a
    trusted CA but the chain breaks the profile strict verifiers enforce, so only strict clients
    reject it; None when the chain is valid."""
    now = now or utcnow()
    valid, error = _verify_chain(leaf, intermediates, trust, trust_description, now)
    if valid:
        return True, None, None
    others = [c for c in intermediates
              if c.public_bytes(serialization.Encoding.DER) != leaf.public_bytes(serialization.Encoding.DER)]
    if (trust and _not_before(leaf) <= now <= _not_after(leaf) and _verification_subject(leaf) is not None
            and lenient_path_exists(leaf, others, trust, now)):
        return False, 'rejected by %s: %s' % (STRICT_CLIENTS, error), 'strict'
    return False, error, 'all'


def _verify_chain(leaf, intermediates, trust, trust_description, now):
    now = now or utcnow()
    if not trust:
        return False, 'no trusted CA certificate in %s' % trust_description
    if _not_after(leaf) < now:
        return False, 'certificate expired on %s' % _not_after(leaf).strftime('%Y-%m-%dT%H:%M:%SZ')
    if _not_before(leaf) > now:
        return False, 'certificate is not valid before %s' % _not_before(leaf).strftime('%Y-%m-%dT%H:%M:%SZ')
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    trusted_leaf = any(t.public_bytes(serialization.Encoding.DER) == leaf_der for t in trust)
    if is_self_issued(leaf) and not trusted_leaf:
        return False, 'self-signed certificate (%s) is not in %s' % (leaf.subject.rfc4514_string(),
                                                                     trust_description)
    subject = _verification_subject(leaf)
    if subject is None:
        return False, 'the certificate has no DNS or IP subjectAltName; TLS clients reject it'
    others = [c for c in intermediates if c.public_bytes(serialization.Encoding.DER) != leaf_der]
    try:
        verifier = (x509_verification.PolicyBuilder()
                    .store(x509_verification.Store(list(trust)))
                    .time(now)
                    .build_server_verifier(subject))
        verifier.verify(leaf, others)
    except x509_verification.VerificationError as exc:
        message = _clean_error(exc)
        if 'candidates exhausted' in message:
            missing = _missing_issuer(leaf, others, trust)
            if missing is not None:
                return False, ('incomplete chain: the issuer "%s" of "%s" is neither presented nor in %s'
                               % (missing.issuer.rfc4514_string(), missing.subject.rfc4514_string(),
                                  trust_description))
            return False, 'no path to a trusted CA in %s (%s)' % (trust_description, message)
        return False, message
    except ValueError as exc:
        return False, str(exc)
    return True, None


def evaluate(facts, warn_days, critical_days, no_path_status='critical', strict_only_status='critical'):
    """(status, problems) of a checked certificate, from its facts and the thresholds.

    An invalid chain gets `no_path_status` when no client can build a path to a trusted CA
    (facts chain_scope V(all)), `strict_only_status` when only strict clients reject it (V(strict))."""
    problems = []
    status = 'ok'

    def raise_to(level, text):
        problems.append(text)
        return level if SEVERITY[level] > SEVERITY[status] else status

    if facts['expired']:
        status = raise_to('critical', 'certificate expired on %s (%s)' % (facts['not_after'], facts['expiry']))
    elif facts['not_yet_valid']:
        status = raise_to('critical', 'certificate is not valid before %s' % facts['not_before'])
    elif facts['days_left'] < critical_days:
        status = raise_to('critical', 'certificate expires in %d days (critical under %d)'
                          % (facts['days_left'], critical_days))
    elif facts['days_left'] < warn_days:
        status = raise_to('warn', 'certificate expires in %d days (warning under %d)'
                          % (facts['days_left'], warn_days))
    if facts.get('hostname_match') is False:
        status = raise_to('critical', 'certificate does not cover %s (SANs: %s)'
                          % (facts['hostname'], ', '.join(facts['sans']) or 'none'))
    if facts.get('chain_valid') is False and not (facts['expired'] or facts['not_yet_valid']):
        level = strict_only_status if facts.get('chain_scope') == 'strict' else no_path_status
        text = 'untrusted chain: %s' % facts['chain_error']
        if level == 'ok':
            problems.append(text + ' (accepted: strict_only_status=ok)')
        else:
            status = raise_to(level, text)
    return status, problems


def _peer_chain_der(sock):
    """DER certificates the peer presented, leaf first, or None when Python cannot tell."""
    getter = getattr(sock, 'get_unverified_chain', None)  # Python >= 3.13
    if getter is None:
        sslobj = getattr(sock, '_sslobj', None)
        getter = getattr(sslobj, 'get_unverified_chain', None)  # Python 3.10 - 3.12
    if getter is None:
        return None
    chain = getter() or []
    out = []
    for c in chain:
        if isinstance(c, bytes):
            out.append(c)
        else:
            out.append(c.public_bytes(getattr(ssl, '_ssl').ENCODING_DER))
    return out


def _is_ip(host):
    try:
        ipaddress.ip_address(host.strip('[]'))
        return True
    except ValueError:
        return False


def fetch_endpoint(host, port, server_name=None, timeout=10.0):
    """Handshake WITHOUT verification and return (certificates leaf first, chain_source, version, cipher).

    Raises TLSCheckError with an operator-readable reason when there is no TLS to talk to.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    except (AttributeError, ValueError):  # pragma: no cover - depends on the OpenSSL build
        pass
    sni = server_name or (None if _is_ip(host) else host)
    where = '%s:%s' % (host, port)
    try:
        with socket.create_connection((host.strip('[]'), port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                leaf_der = tls.getpeercert(binary_form=True)
                chain_der = _peer_chain_der(tls)
                version = tls.version()
                cipher = (tls.cipher() or (None,))[0]
    except socket.timeout:
        raise TLSCheckError('no TLS handshake with %s within %ss' % (where, timeout))
    except ssl.SSLError as exc:
        raise TLSCheckError('TLS handshake with %s failed: %s' % (where, exc.reason or exc))
    except socket.gaierror as exc:
        raise TLSCheckError('cannot resolve %s: %s' % (host, exc.strerror or exc))
    except (IOError, OSError) as exc:
        raise TLSCheckError('cannot connect to %s: %s' % (where, exc.strerror or exc))
    if not leaf_der:
        raise TLSCheckError('%s presented no certificate' % where)
    source = 'peer'
    if not chain_der:
        chain_der, source = [leaf_der], 'leaf-only'
    certs = [x509.load_der_x509_certificate(d) for d in chain_der]
    return certs, source, version, cipher


def private_key_matches(key_pem, cert, password=None):
    """True when the PEM private key is the key of `cert`. Raises TLSCheckError if unreadable."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (TypeError, ValueError) as exc:
        # The message of cryptography never contains key material, but keep ours generic anyway.
        raise TLSCheckError('the private key cannot be loaded (%s)' % type(exc).__name__)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)

"""Agent certificate checks of the login (contract section 4, "Certificate")."""
from __future__ import annotations

import base64
import hashlib
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.deps import utcnow

STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
MAX_INTERMEDIATES = 6


class CertError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_x5c(x5c) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not x5c:
        raise CertError(401, "x5c header absent or empty")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(item, validate=True)) for item in x5c]
    except (ValueError, TypeError):
        raise CertError(401, "Invalid agent certificate")


def _attr(cert: x509.Certificate, oid) -> str | None:
    vals = cert.subject.get_attributes_for_oid(oid)
    return vals[0].value if vals else None


def spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def parse_spiffe(uri: str) -> tuple[str, list[str]]:
    p = urlsplit(uri)
    segs = [s for s in p.path.split("/") if s != ""] if p.path else []
    if p.scheme != "spiffe" or not p.netloc or p.query or p.fragment or not segs or "" in p.path.split("/")[1:]:
        raise CertError(401, "Malformed SPIFFE URI in SAN")
    return p.netloc.lower(), segs


def leaf_identity(leaf: x509.Certificate):
    """Returns (mode, cn, org) for classic, or (mode, uri, None) for SVID mode."""
    cn, org = _attr(leaf, NameOID.COMMON_NAME), _attr(leaf, NameOID.ORGANIZATION_NAME)
    if cn and org:
        return "classic", cn, org
    uris = spiffe_uris(leaf)
    if not uris:
        raise CertError(401, "Cert missing CN/O and no SPIFFE SAN URI present")
    return "svid", uris[0], None


def _sig_hash_ok(cert: x509.Certificate) -> bool:
    algo = cert.signature_hash_algorithm
    return isinstance(algo, STRONG_HASHES)


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    pub = issuer.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), child.signature_hash_algorithm)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
        else:
            return False
        return child.issuer == issuer.subject
    except (InvalidSignature, ValueError, TypeError):
        return False


def _in_validity(cert: x509.Certificate) -> bool:
    now = utcnow()
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def verify_chain(chain: list[x509.Certificate], org_ca: x509.Certificate) -> None:
    ca_der = org_ca.public_bytes(serialization.Encoding.DER)
    chain = list(chain)
    if len(chain) > 1 and chain[-1].public_bytes(serialization.Encoding.DER) == ca_der:
        chain = chain[:-1]
    for c in chain:
        if not _sig_hash_ok(c):
            raise CertError(401, "Agent certificate uses a weak signature algorithm — SHA-256 or stronger required")
    leaf, inters = chain[0], chain[1:]
    if len(inters) > MAX_INTERMEDIATES:
        raise CertError(401, "certificate chain too long (max 6 intermediates)")
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    if len(set(ders)) != len(ders):
        raise CertError(401, "certificate chain contains a duplicate entry")
    for c in chain:
        if not _in_validity(c):
            raise CertError(401, "certificate in chain is expired or not yet valid")
    for depth, c in enumerate(inters):
        try:
            bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise CertError(401, "intermediate certificate lacks BasicConstraints")
        if not bc.ca:
            raise CertError(401, "intermediate certificate is not a CA")
        try:
            ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                raise CertError(401, "intermediate KeyUsage missing keyCertSign")
        except x509.ExtensionNotFound:
            raise CertError(401, "intermediate KeyUsage missing keyCertSign")
        # number of non-leaf intermediates below this one
        below = depth
        if bc.path_length is not None and below > bc.path_length:
            raise CertError(401, f"certificate chain violates pathLenConstraint (pathLen={bc.path_length}, "
                                 f"depth={below})")
    for i in range(len(chain) - 1):
        if not _signed_by(chain[i], chain[i + 1]):
            raise CertError(401, f"certificate chain broken at position {i} — signature not produced by the "
                                 f"next cert in the chain")
    if not _signed_by(chain[-1], org_ca):
        raise CertError(401, "certificate chain verification failed")
    pub = leaf.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < 2048:
            raise CertError(401, f"Agent RSA key too small ({pub.key_size} bits) — minimum 2048 required")
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise CertError(401, f"Agent EC curve '{pub.curve.name}' not allowed — use P-256, P-384, or P-521")
    else:
        raise CertError(401, "Invalid agent certificate")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise CertError(401, "Agent certificate EKU does not include clientAuth (1.3.6.1.5.5.7.3.2)")
    except x509.ExtensionNotFound:
        pass


def signed_directly_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    return _signed_by(cert, ca)

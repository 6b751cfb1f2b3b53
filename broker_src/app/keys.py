"""The broker signing key (= broker CA key), its JWKS, and first-boot key generation."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(length, "big"))


def public_jwk(pub) -> dict:
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        return {"e": _int_b64(nums.e), "kty": "RSA", "n": _int_b64(nums.n)}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
        nums = pub.public_numbers()
        return {"crv": crv, "kty": "EC", "x": _int_b64(nums.x, size), "y": _int_b64(nums.y, size)}
    raise ValueError("unsupported key type")


def jwk_thumbprint(jwk: dict) -> str:
    if jwk["kty"] == "EC":
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    elif jwk["kty"] == "RSA":
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    else:
        raise ValueError("unsupported kty")
    return b64url(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


class SigningKeys:
    def __init__(self, private_pem: str, ca_cert_pem: str | None = None, public_pem: str | None = None):
        self.private_key = serialization.load_pem_private_key(private_pem.encode(), password=None)
        if ca_cert_pem:
            self.public_key = x509.load_pem_x509_certificate(ca_cert_pem.encode()).public_key()
        elif public_pem:
            self.public_key = serialization.load_pem_public_key(public_pem.encode())
        else:
            self.public_key = self.private_key.public_key()
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            self.alg = "RS256"
        else:
            self.alg = {256: "ES256", 384: "ES384", 521: "ES512"}[self.private_key.curve.key_size]
        self.jwk = public_jwk(self.public_key)
        self.kid = jwk_thumbprint(self.jwk)

    def jwks(self) -> dict:
        return {"keys": [dict(self.jwk, use="sig", alg=self.alg, kid=self.kid)]}


def generate_broker_ca(common_name: str = "Cullis Broker CA") -> tuple[str, str]:
    """First boot: RSA 2048 signing key + a self-signed CA certificate (PEM strings)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cullis")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()

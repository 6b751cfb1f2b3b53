"""DPoP proof verification (RFC 9449) and the in-process nonce (contract section 4)."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from app.keys import b64url, jwk_thumbprint

NONCE_ROTATE_SECONDS = 300
IAT_PAST = 60
IAT_FUTURE = 5
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class DPoPError(Exception):
    def __init__(self, detail: str, nonce_required: bool = False):
        super().__init__(detail)
        self.detail = detail
        self.nonce_required = nonce_required


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "+/="):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NonceManager:
    """Current + previous nonce, rotated every 300 s, in process memory."""

    def __init__(self):
        self.current = secrets.token_hex(16)
        self.previous: str | None = None
        self.rotated_at = time.monotonic()

    def get(self) -> str:
        if time.monotonic() - self.rotated_at >= NONCE_ROTATE_SECONDS:
            self.previous, self.current = self.current, secrets.token_hex(16)
            self.rotated_at = time.monotonic()
        return self.current

    def valid(self, nonce) -> bool:
        current = self.get()
        return isinstance(nonce, str) and nonce in (current, self.previous)


def normalize_htu(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme.lower()}://{p.netloc.lower()}{p.path}"


def _public_key(jwk: dict):
    kty = jwk.get("kty")
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError("curve")
        x = int.from_bytes(b64url_decode(jwk["x"]), "big")
        y = int.from_bytes(b64url_decode(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "RSA":
        n = int.from_bytes(b64url_decode(jwk["n"]), "big")
        e = int.from_bytes(b64url_decode(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError("kty")


def _verify_sig(alg: str, pub, signing_input: bytes, sig: bytes) -> None:
    if alg == "ES256":
        if not isinstance(pub, ec.EllipticCurvePublicKey) or len(sig) != 64:
            raise InvalidSignature()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        pub.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    else:  # PS256
        if not isinstance(pub, rsa.RSAPublicKey):
            raise InvalidSignature()
        pub.verify(sig, signing_input, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                   salt_length=padding.PSS.AUTO), hashes.SHA256())


def verify_proof(proof: str, htm: str, htu: str, nonces: NonceManager, access_token: str | None = None) -> dict:
    """Check a proof up to (not including) JTI consumption. Returns claims + `_jkt`."""
    bad = "Invalid DPoP proof: "
    try:
        head_b64, body_b64, sig_b64 = proof.split(".")
        header = json.loads(b64url_decode(head_b64))
        claims = json.loads(b64url_decode(body_b64))
        sig = b64url_decode(sig_b64)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise DPoPError(bad + "malformed JWT")
    if header.get("typ") != "dpop+jwt":
        raise DPoPError(bad + "typ must be 'dpop+jwt'")
    alg = header.get("alg")
    if alg not in ("ES256", "PS256"):
        raise DPoPError(bad + f"unsupported algorithm '{alg}'")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or not jwk:
        raise DPoPError(bad + "missing jwk in header")
    if any(m in jwk for m in PRIVATE_MEMBERS):
        raise DPoPError(bad + "jwk contains private key material")
    try:
        jkt = jwk_thumbprint(jwk)
        pub = _public_key(jwk)
    except (KeyError, ValueError, TypeError):
        raise DPoPError(bad + "cannot compute JWK thumbprint")
    try:
        _verify_sig(alg, pub, f"{head_b64}.{body_b64}".encode("ascii"), sig)
    except (InvalidSignature, ValueError):
        raise DPoPError(bad + "signature verification failed")
    if not claims.get("jti"):
        raise DPoPError(bad + "missing jti")
    iat = claims.get("iat")
    if iat is None:
        raise DPoPError(bad + "missing iat")
    now = time.time()
    if not isinstance(iat, (int, float)) or iat < now - IAT_PAST or iat > now + IAT_FUTURE:
        raise DPoPError(bad + "iat out of acceptable window")
    if claims.get("htm") != htm:
        raise DPoPError(bad + "htm mismatch")
    if not isinstance(claims.get("htu"), str) or normalize_htu(claims["htu"]) != normalize_htu(htu):
        raise DPoPError(bad + "htu mismatch")
    if access_token is not None:
        expected = b64url(hashlib.sha256(access_token.encode("ascii")).digest())
        if claims.get("ath") != expected:
            raise DPoPError(bad + "ath mismatch")
    if not nonces.valid(claims.get("nonce")):
        raise DPoPError("use_dpop_nonce", nonce_required=True)
    claims["_jkt"] = jkt
    return claims

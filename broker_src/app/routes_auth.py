"""POST /v1/auth/token: the agent login of contract section 4, rejections in contract order."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid

import jwt
from sqlalchemy.dialects.postgresql import insert as pg_insert
import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app import audit
from app.certs import CertError, leaf_identity, parse_spiffe, parse_x5c, spiffe_uris, thumbprint, verify_chain
from app.deps import AgentPrincipal, check_dpop, client_ip, fail, require_agent, utcnow
from app.metrics import metrics
from app.models import agents, bindings, jti_blacklist, organizations
from app.state import state

router = APIRouter()

NO_MASTIO = ("organization has no pinned mastio_pubkey — onboarding incomplete. Admin must PATCH "
             "/v1/admin/orgs/{id}/mastio-pubkey first.")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


class TokenRequest(BaseModel):
    client_assertion: str


def strict_b64url(text: str) -> bytes:
    """Strict, canonical base64url (padding optional)."""
    if not text or not _B64URL.match(text):
        raise ValueError("not base64url")
    bare = text.rstrip("=")
    raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != bare:
        raise ValueError("not canonical")
    return raw


def verify_mastio(org, assertion: str, header: str | None) -> None:
    if not org.mastio_pubkey:
        fail(403, NO_MASTIO)
    if not header:
        fail(403, "organization requires mastio counter-signature but the X-Cullis-Mastio-Signature header is "
                  "missing")
    try:
        sig = strict_b64url(header)
    except (ValueError, binascii.Error):
        fail(403, "X-Cullis-Mastio-Signature is not valid base64url")
    try:
        pub = serialization.load_pem_public_key(org.mastio_pubkey.encode())
    except (ValueError, TypeError):
        fail(500, "pinned mastio_pubkey is unreadable — contact the admin")
    if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
        fail(500, "pinned mastio_pubkey is not EC P-256")
    try:
        pub.verify(sig, assertion.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        metrics.inc("cullis.cert.pinning_mismatch", kind="mastio_signature")
        fail(403, "mastio counter-signature verification failed")


def issue_token(agent_id: str, org_id: str, spiffe_id: str, scope: list, jkt: str) -> tuple[str, int]:
    keys = state.keys
    now = int(utcnow().timestamp())
    lifetime = state.settings.jwt_expire_minutes * 60
    claims = {"iss": "cullis-broker", "aud": "cullis", "sub": spiffe_id, "agent_id": agent_id, "org": org_id,
              "scope": scope, "principal_type": "agent", "iat": now, "exp": now + lifetime,
              "jti": str(uuid.uuid4()), "cnf": {"jkt": jkt}}
    return jwt.encode(claims, keys.private_key, algorithm=keys.alg, headers={"kid": keys.kid}), lifetime


async def _denied(org_id: str, agent_id: str | None, detail: str):
    async with state.engine.begin() as conn:
        await audit.append(conn, "auth.token_request", "denied", org_id=org_id, agent_id=agent_id,
                           details={"reason": detail})


@router.post("/v1/auth/token")
async def token(request: Request, body: TokenRequest, dpop: str = Header(...),
                x_cullis_mastio_signature: str | None = Header(None)):
    with metrics.timed("cullis.auth.duration"):
        try:
            response = await _token(request, body, dpop, x_cullis_mastio_signature)
        except HTTPException as e:
            # the DPoP nonce challenge (401 use_dpop_nonce) is a protocol step of every login, not a denial
            if 400 <= e.status_code < 500 and e.detail != "use_dpop_nonce":
                metrics.inc("cullis.auth.deny")
            raise
    metrics.inc("cullis.auth.success")
    return response


async def _token(request: Request, body: TokenRequest, dpop: str, x_cullis_mastio_signature: str | None):
    s = state.settings
    limit = s.rate_limit_auth_per_minute
    if not await state.store.hit(client_ip(request), "auth.token", limit):
        metrics.inc("cullis.ratelimit.reject", bucket="auth.token")
        fail(429, f"Rate limit exceeded for 'auth.token': max {limit} req/60s", headers={"Retry-After": "60"})
    proof = await check_dpop(request, dpop)
    assertion = body.client_assertion
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        fail(401, "invalid client_assertion")
    try:
        chain = parse_x5c(header.get("x5c"))
        leaf = chain[0]
        mode, ident, cert_org = leaf_identity(leaf)
        async with state.engine.connect() as conn:
            if mode == "classic":
                agent_id, org_id = ident, cert_org
            else:
                td, segs = parse_spiffe(ident)
                org_row = (await conn.execute(sa.select(organizations).where(organizations.c.trust_domain == td))).first()
                if org_row is None and td == s.trust_domain.lower() and segs:
                    org_row = (await conn.execute(sa.select(organizations)
                                                  .where(organizations.c.org_id == segs[0]))).first()
                if org_row is None:
                    fail(403, f"No organization registered for trust domain '{td}'")
                if len(segs) == 2:
                    path_org, name = segs
                elif len(segs) == 3 and segs[1] in ("agent", "user", "workload"):
                    path_org, name = segs[0], segs[2]
                else:
                    raise CertError(401, "SPIFFE SAN principal format invalid")
                if path_org != org_row.org_id:
                    fail(403, f"SPIFFE SAN org '{path_org}' does not match trust-domain-resolved org "
                              f"'{org_row.org_id}'")
                org_id, agent_id = org_row.org_id, f"{org_row.org_id}::{name}"
                if len(segs) == 3 and segs[1] == "workload":
                    mode = "workload"
            org = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id))).first()
            if org is None:
                fail(403, f"Organisation '{org_id}' not found")
            if org.status != "active":
                fail(403, f"Organisation '{org_id}' not yet approved")
            if not org.ca_certificate:
                fail(403, f"CA not configured for org '{org_id}'")
            try:
                org_ca = x509.load_pem_x509_certificate(org.ca_certificate.encode())
            except ValueError:
                fail(500, "Broker configuration error: invalid org CA certificate")
            with metrics.timed("cullis.x509.verify_duration"):
                verify_chain(chain, org_ca)
            revoked = (await conn.execute(sa.text("SELECT 1 FROM revoked_certs WHERE serial_hex = :s"),
                                          {"s": format(leaf.serial_number, "x")})).first()
    except CertError as e:
        fail(e.status, e.detail)
    if revoked:
        metrics.inc("cullis.revoked_token.use_attempt", credential="certificate")
        fail(401, "Certificate has been revoked")
    td = (org.trust_domain or s.trust_domain)
    name = agent_id.split("::", 1)[1] if "::" in agent_id else agent_id
    spiffe_id = f"spiffe://{td}/{org_id}/{name}"
    pub = leaf.public_key()
    alg = "RS256" if isinstance(pub, rsa.RSAPublicKey) else "ES256"
    try:
        claims = jwt.decode(assertion, pub, algorithms=[alg], audience="agent-trust-broker",
                            options={"require": ["exp"], "verify_iat": True})
    except jwt.PyJWTError:
        fail(401, "Invalid client_assertion signature")
    if claims.get("sub") not in (agent_id, spiffe_id):
        fail(401, "'sub' in JWT does not match the agent CN or SPIFFE URI")
    if claims.get("iss") not in (agent_id, spiffe_id):
        fail(401, "'iss' in JWT is missing or does not match the authenticated agent")
    if mode == "classic":
        uris = spiffe_uris(leaf)
        if uris and uris[0] != spiffe_id:
            fail(401, "SPIFFE ID in SAN does not match the registered agent")
        if not uris and s.require_spiffe_san:
            fail(401, "Certificate missing SPIFFE SAN URI (require_spiffe_san=true)")
    jti = claims.get("jti")
    if not jti:
        fail(401, "client_assertion missing jti")
    now = utcnow()
    async with state.engine.begin() as conn:
        await conn.execute(jti_blacklist.delete().where(jti_blacklist.c.expires_at < now))
        res = await conn.execute(
            pg_insert(jti_blacklist)
            .values(jti=str(jti)[:128], expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.timezone.utc))
            .on_conflict_do_nothing())
        if res.rowcount == 0:
            metrics.inc("cullis.dpop.jti_replay_attempt", kind="client_assertion")
            fail(401, "client_assertion already used (replay attack detected)")
    if mode == "workload":
        detail = ("/v1/auth/token does not apply to workload principals; workloads use /v1/principals/csr to mint "
                  "user certs.")
        await _denied(org_id, agent_id, detail)
        fail(400, detail)
    try:
        verify_mastio(org, assertion, x_cullis_mastio_signature)
        async with state.engine.begin() as conn:
            agent = (await conn.execute(sa.select(agents).where(agents.c.agent_id == agent_id)
                                        .with_for_update())).first()
            if agent is None or agent.org_id != org_id:
                fail(401, "Agent not found or org mismatch")
            if not agent.is_active:
                fail(403, "Agent not active")
            binding = (await conn.execute(sa.select(bindings).where(bindings.c.agent_id == agent_id)
                                          .where(bindings.c.org_id == org_id)
                                          .where(bindings.c.status == "approved"))).first()
            if binding is None:
                fail(403, "No approved binding for this agent and organization")
            tp = thumbprint(leaf)
            if mode == "classic" and agent.cert_thumbprint and agent.cert_thumbprint != tp:
                metrics.inc("cullis.cert.pinning_mismatch", kind="thumbprint")
                fail(401, "Certificate thumbprint mismatch — use the rotate-cert endpoint to update")
            leaf_pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
            if agent.cert_thumbprint != tp or agent.cert_pem != leaf_pem:
                await conn.execute(agents.update().where(agents.c.agent_id == agent_id)
                                   .values(cert_pem=leaf_pem, cert_thumbprint=tp))
            scope = json.loads(binding.scope_json or "[]")
            access_token, lifetime = issue_token(agent_id, org_id, spiffe_id, scope, proof["_jkt"])
            await audit.append(conn, "auth.token_issued", "ok", org_id=org_id, agent_id=agent_id,
                               details={"cert_thumbprint": tp})
    except Exception as e:  # audit the denial of every row from "workload" on, then re-raise
        if isinstance(e, HTTPException):
            await _denied(org_id, agent_id, str(e.detail))
        raise
    sunset = (utcnow() + dt.timedelta(days=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return JSONResponse({"access_token": access_token, "token_type": "DPoP", "expires_in": lifetime}, headers={
        "Deprecation": "true", "Sunset": sunset,
        "Link": '<https://cullis.io/docs/migration/from-direct-login>; rel="sunset"; type="text/html"',
        "Cache-Control": "no-store"})


@router.post("/v1/auth/revoke", status_code=204)
async def self_logout(agent: AgentPrincipal = Depends(require_agent)):
    async with state.engine.begin() as conn:
        await conn.execute(agents.update().where(agents.c.agent_id == agent.agent_id)
                           .values(token_invalidated_at=utcnow().replace(microsecond=0)))
    return Response(status_code=204)

"""Auth dependencies: admin (x-admin-secret), org (x-org-id + x-org-secret), agent (DPoP token)."""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json

import bcrypt
import jwt
import sqlalchemy as sa
from fastapi import Header, HTTPException, Request

from app.dpop import DPoPError, verify_proof
from app.metrics import metrics
from app.models import agents, organizations
from app.state import state

ORG_BCRYPT_ROUNDS = 10


def fail(status: int, detail: str, headers: dict | None = None):
    raise HTTPException(status_code=status, detail=detail, headers=headers)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


async def hash_secret(secret: str, rounds: int = ORG_BCRYPT_ROUNDS) -> str:
    data = secret.encode("utf-8")
    if len(data) > 72:
        fail(400, "secret is longer than 72 bytes (bcrypt limit): choose a shorter secret")
    return (await asyncio.to_thread(bcrypt.hashpw, data, bcrypt.gensalt(rounds))).decode()


async def check_secret(secret: str, hashed: str | None) -> bool:
    data = secret.encode("utf-8")
    if not hashed or len(data) > 72:
        return False
    try:
        return await asyncio.to_thread(bcrypt.checkpw, data, hashed.encode())
    except ValueError:
        return False


async def require_admin(x_admin_secret: str = Header(...)) -> None:
    if not hmac.compare_digest(x_admin_secret.encode(), state.settings.admin_secret.encode()):
        fail(403, "Invalid admin secret")


async def _org_creds(org_id: str, secret: str, active_only: bool):
    async with state.engine.connect() as conn:
        row = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id))).first()
    if row is None or not await check_secret(secret, row.secret_hash):
        fail(403, "Invalid organization credentials")
    if active_only and row.status != "active":
        fail(403, "Invalid organization credentials")
    return row


async def require_org(x_org_id: str = Header(...), x_org_secret: str = Header(...)):
    return await _org_creds(x_org_id, x_org_secret, active_only=True)


async def require_org_any_status(x_org_id: str = Header(...), x_org_secret: str = Header(...)):
    return await _org_creds(x_org_id, x_org_secret, active_only=False)


def public_htu(request: Request) -> str:
    s = state.settings
    if s.broker_public_url:
        return s.broker_public_url + request.url.path
    proto = request.headers.get("x-forwarded-proto")
    host = request.headers.get("x-forwarded-host")
    if proto and host:
        return f"{proto}://{host}{request.url.path}"
    return f"{request.url.scheme}://{request.url.netloc}{request.url.path}"


async def check_dpop(request: Request, proof: str, access_token: str | None = None) -> dict:
    try:
        claims = verify_proof(proof, request.method, public_htu(request), state.nonces, access_token)
    except DPoPError as e:
        fail(401, e.detail)
    if not await state.store.consume_dpop_jti(str(claims["jti"])):
        metrics.inc("cullis.dpop.jti_replay_attempt", kind="dpop_proof")
        fail(401, "DPoP proof replay detected")
    return claims


class AgentPrincipal:
    def __init__(self, claims: dict):
        self.claims = claims
        self.agent_id = claims["agent_id"]
        self.org_id = claims["org"]
        self.scope = claims.get("scope", [])


def decode_token(token: str) -> dict:
    keys = state.keys
    return jwt.decode(token, keys.public_key, algorithms=[keys.alg], audience="cullis", issuer="cullis-broker",
                      options={"require": ["exp", "iat", "sub"]})


async def require_agent(request: Request, authorization: str = Header(...)) -> AgentPrincipal:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "dpop" or not token:
        fail(401, "DPoP token required — plain Bearer is not accepted")
    try:
        claims = decode_token(token.strip())
    except jwt.PyJWTError:
        fail(401, "Token invalid or expired")
    jkt = (claims.get("cnf") or {}).get("jkt")
    if not jkt:
        fail(401, "Token is not DPoP-bound (missing cnf.jkt)")
    proof = request.headers.get("dpop")
    if not proof:
        fail(401, "DPoP proof header required")
    pclaims = await check_dpop(request, proof, token.strip())
    if pclaims["_jkt"] != jkt:
        fail(401, "DPoP proof key does not match token binding")
    async with state.engine.connect() as conn:
        inv = (await conn.execute(sa.select(agents.c.token_invalidated_at)
                                  .where(agents.c.agent_id == claims.get("agent_id")))).scalar()
    if inv is not None and int(claims["iat"]) <= int(inv.timestamp()):
        metrics.inc("cullis.revoked_token.use_attempt", credential="token")
        fail(401, "Token has been revoked")
    return AgentPrincipal(claims)


def loads(text: str | None, default):
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"

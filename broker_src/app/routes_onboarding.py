"""The remaining admin org settings and invite-gated onboarding (contract section 3, "Also admin")."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app import audit
from app.deps import client_ip, fail, hash_secret, check_secret, iso, require_admin, utcnow
from app.models import invite_tokens, organizations
from app.routes_registry import validate_ca
from app.state import state

router = APIRouter()


class RequireMtls(BaseModel):
    require_mastio_mtls: bool = False


class MastioUrl(BaseModel):
    mastio_url: str | None = Field(None, max_length=512)


async def _update_org(org_id: str, event: str, **values) -> None:
    async with state.engine.begin() as conn:
        res = await conn.execute(organizations.update().where(organizations.c.org_id == org_id).values(**values))
        if res.rowcount == 0:
            fail(404, "Organization not found")
        await audit.append(conn, event, "ok", org_id=org_id, principal_type="admin",
                           details={k: v for k, v in values.items()})


@router.patch("/v1/admin/orgs/{org_id}/require-mtls", dependencies=[Depends(require_admin)])
async def require_mtls(org_id: str, body: RequireMtls):
    await _update_org(org_id, "onboarding.require_mtls_set", require_mastio_mtls=body.require_mastio_mtls)
    return {"org_id": org_id, "require_mastio_mtls": body.require_mastio_mtls}


@router.patch("/v1/admin/orgs/{org_id}/mastio-url", dependencies=[Depends(require_admin)])
async def mastio_url(org_id: str, body: MastioUrl):
    await _update_org(org_id, "onboarding.mastio_url_set", mastio_url=body.mastio_url)
    return {"org_id": org_id, "mastio_url": body.mastio_url}


class InviteCreate(BaseModel):
    label: str = Field("", max_length=256)
    ttl_hours: int = Field(72, ge=1, le=24 * 30)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@router.post("/v1/admin/invites", status_code=201, dependencies=[Depends(require_admin)])
async def create_invite(body: InviteCreate):
    token = secrets.token_urlsafe(32)
    now = utcnow()
    expires = now + dt.timedelta(hours=body.ttl_hours)
    async with state.engine.begin() as conn:
        row = (await conn.execute(invite_tokens.insert().values(token_hash=_token_hash(token), label=body.label,
                                                                created_at=now, expires_at=expires)
                                  .returning(invite_tokens.c.id))).first()
        await audit.append(conn, "onboarding.invite_created", "ok", principal_type="admin",
                           details={"invite_id": row.id, "label": body.label})
    return {"id": row.id, "label": body.label, "token": token, "expires_at": iso(expires)}


def _check_mastio(pem: str | None) -> None:
    if pem is None:
        return
    try:
        pub = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        fail(400, "mastio_pubkey: invalid PEM")
    if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
        fail(400, "mastio_pubkey: must be an EC P-256 public key (ES256)")


async def _consume_invite(conn, token: str, org_id: str) -> None:
    row = (await conn.execute(sa.select(invite_tokens).where(invite_tokens.c.token_hash == _token_hash(token))
                              .with_for_update())).first()
    if row is None or row.used_at is not None or row.expires_at < utcnow():
        fail(403, "Invalid or expired invite token")
    await conn.execute(invite_tokens.update().where(invite_tokens.c.id == row.id)
                       .values(used_at=utcnow(), used_by_org_id=org_id))


async def _rate(request: Request, bucket: str) -> None:
    if not await state.store.hit(client_ip(request), bucket, 10):
        fail(429, f"Rate limit exceeded for '{bucket}': max 10 req/60s", headers={"Retry-After": "60"})


class Join(BaseModel):
    invite_token: str
    org_id: str = Field(..., max_length=128, min_length=1)
    display_name: str = Field(..., max_length=256)
    secret: str
    ca_certificate: str
    contact_email: str | None = None
    mastio_pubkey: str | None = Field(None, max_length=1024)
    webhook_url: str | None = None
    trust_domain: str | None = None


@router.post("/v1/onboarding/join", status_code=201)
async def join(request: Request, body: Join):
    await _rate(request, "onboarding.join")
    validate_ca(body.ca_certificate)
    _check_mastio(body.mastio_pubkey)
    secret_hash = await hash_secret(body.secret)
    async with state.engine.begin() as conn:
        await _consume_invite(conn, body.invite_token, body.org_id)
        if (await conn.execute(sa.select(organizations.c.org_id).where(organizations.c.org_id == body.org_id))).first():
            fail(409, "org_id already registered")
        if body.trust_domain and (await conn.execute(sa.select(organizations.c.org_id).where(
                organizations.c.trust_domain == body.trust_domain))).first():
            fail(409, "trust_domain already registered")
        await conn.execute(organizations.insert().values(
            org_id=body.org_id, display_name=body.display_name, secret_hash=secret_hash, status="pending",
            contact_email=body.contact_email, registered_at=utcnow(), metadata_json=json.dumps({}),
            ca_certificate=body.ca_certificate, mastio_pubkey=body.mastio_pubkey, webhook_url=body.webhook_url,
            trust_domain=body.trust_domain))
        await audit.append(conn, "onboarding.join_requested", "ok", org_id=body.org_id, principal_type="org")
    return {"org_id": body.org_id, "status": "pending"}


class Attach(BaseModel):
    invite_token: str
    org_id: str
    secret: str
    ca_certificate: str
    mastio_pubkey: str | None = Field(None, max_length=1024)


@router.post("/v1/onboarding/attach")
async def attach(request: Request, body: Attach):
    await _rate(request, "onboarding.attach")
    validate_ca(body.ca_certificate)
    _check_mastio(body.mastio_pubkey)
    async with state.engine.begin() as conn:
        org = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == body.org_id)
                                  .with_for_update())).first()
        if org is None or not await check_secret(body.secret, org.secret_hash):
            fail(403, "Invalid organization credentials")
        await _consume_invite(conn, body.invite_token, body.org_id)
        values = {"ca_certificate": body.ca_certificate, "sealed": True}
        if body.mastio_pubkey:
            values["mastio_pubkey"] = body.mastio_pubkey
        await conn.execute(organizations.update().where(organizations.c.org_id == body.org_id).values(**values))
        await audit.append(conn, "onboarding.attached", "ok", org_id=body.org_id, principal_type="org")
    return {"org_id": body.org_id, "ca_certificate_loaded": True, "sealed": True}

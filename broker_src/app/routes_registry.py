"""Organizations, bindings, admin org actions, revocation and audit export (contract section 3)."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app import audit
from app.agents import drop_agent
from app.federation import EXT, extension_enabled, federation_event
from app.deps import fail, hash_secret, iso, loads, require_admin, require_org, require_org_any_status, utcnow
from app.models import agents, audit_log, audit_tsa_anchors, bindings, organizations, \
    revoked_certs, sessions
from app.metrics import metrics
from app.state import state

router = APIRouter()


def org_out(row) -> dict:
    return {"org_id": row.org_id, "display_name": row.display_name, "status": row.status,
            "registered_at": iso(row.registered_at), "mastio_url": row.mastio_url}


class OrgCreate(BaseModel):
    org_id: str = Field(..., max_length=128, min_length=1)
    display_name: str = Field(..., max_length=256)
    secret: str
    metadata: dict = Field(default_factory=dict)
    contact_email: str | None = None


@router.post("/v1/registry/orgs", status_code=201, dependencies=[Depends(require_admin)])
async def create_org(body: OrgCreate):
    secret_hash = await hash_secret(body.secret)
    async with state.engine.begin() as conn:
        exists = (await conn.execute(sa.select(organizations.c.org_id)
                                     .where(organizations.c.org_id == body.org_id))).first()
        if exists:
            fail(409, "org_id already registered")
        await conn.execute(organizations.insert().values(
            org_id=body.org_id, display_name=body.display_name, secret_hash=secret_hash, status="active",
            contact_email=body.contact_email, registered_at=utcnow(), metadata_json=json.dumps(body.metadata)))
        await audit.append(conn, "registry.org_created", "ok", org_id=body.org_id, principal_type="admin")
        row = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == body.org_id))).first()
    return org_out(row)


@router.get("/v1/registry/orgs", dependencies=[Depends(require_admin)])
async def list_orgs():
    async with state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(organizations).where(organizations.c.status == "active")
                                   .order_by(organizations.c.org_id))).all()
    return [org_out(r) for r in rows]


@router.get("/v1/registry/orgs/me")
async def org_me(org=Depends(require_org_any_status)):
    return org_out(org)


@router.get("/v1/registry/orgs/{org_id}", dependencies=[Depends(require_admin)])
async def get_org(org_id: str):
    async with state.engine.connect() as conn:
        row = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id))).first()
    if row is None:
        fail(404, "Organization not found")
    return org_out(row)


def validate_ca(pem: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError):
        fail(400, "Invalid CA certificate")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        fail(400, "Certificate is not a CA (BasicConstraints CA=false)")
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 2048:
        fail(400, f"CA RSA key too small ({pub.key_size} bits) — minimum 2048")
    now = utcnow()
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc < now:
        fail(400, "CA certificate is expired or not yet valid")
    return cert


class CAUpload(BaseModel):
    ca_certificate: str


@router.post("/v1/registry/orgs/{org_id}/certificate")
async def upload_ca(org_id: str, body: CAUpload, org=Depends(require_org)):
    if org.org_id != org_id:
        fail(403, "org_id mismatch")
    validate_ca(body.ca_certificate)
    async with state.engine.begin() as conn:
        if org.ca_certificate and org.ca_certificate.strip() != body.ca_certificate.strip():
            await conn.execute(agents.update().where(agents.c.org_id == org_id)
                               .values(cert_pem=None, cert_thumbprint=None, token_invalidated_at=utcnow()))
        await conn.execute(organizations.update().where(organizations.c.org_id == org_id)
                           .values(ca_certificate=body.ca_certificate))
    return {"org_id": org_id, "ca_certificate_loaded": True}


@router.get("/v1/admin/orgs/pending", dependencies=[Depends(require_admin)])
async def pending_orgs():
    async with state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(organizations).where(organizations.c.status == "pending"))).all()
    return [{"org_id": r.org_id, "display_name": r.display_name, "status": r.status,
             "contact_email": r.contact_email, "registered_at": iso(r.registered_at)} for r in rows]


async def set_org_status(org_id: str, new: str, allowed_from: tuple[str, ...] | None, event: str,
                         conflict_same: str | None = None) -> None:
    async with state.engine.begin() as conn:
        row = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id)
                                  .with_for_update())).first()
        if row is None:
            fail(404, "Organization not found")
        if row.status == new and conflict_same:
            fail(409, conflict_same)
        if allowed_from is not None and row.status not in allowed_from:
            fail(409, f"Organization already in state '{row.status}'")
        await conn.execute(organizations.update().where(organizations.c.org_id == org_id).values(status=new))
        await audit.append(conn, event, "ok", org_id=org_id, principal_type="admin",
                           details={"from": row.status, "to": new})


@router.post("/v1/admin/orgs/{org_id}/approve", dependencies=[Depends(require_admin)])
async def approve_org(org_id: str):
    await set_org_status(org_id, "active", None, "onboarding.approved", conflict_same="Organization already active")
    return {"org_id": org_id, "status": "active", "message": f"Organization '{org_id}' approved."}


@router.post("/v1/admin/orgs/{org_id}/reject", dependencies=[Depends(require_admin)])
async def reject_org(org_id: str):
    await set_org_status(org_id, "rejected", ("pending", "active"), "onboarding.rejected")
    return {"org_id": org_id, "status": "rejected", "message": f"Organization '{org_id}' rejected."}


@router.post("/v1/admin/orgs/{org_id}/suspend", openapi_extra=EXT,
             dependencies=[Depends(extension_enabled), Depends(require_admin)])
async def suspend_org(org_id: str):
    """Extension: suspend an org (its agents get 403 at login). Audit-logged."""
    await set_org_status(org_id, "suspended", None, "onboarding.suspended",
                         conflict_same="Organization already suspended")
    return {"org_id": org_id, "status": "suspended", "message": f"Organization '{org_id}' suspended."}


@router.post("/v1/admin/orgs/{org_id}/reactivate", openapi_extra=EXT,
             dependencies=[Depends(extension_enabled), Depends(require_admin)])
async def reactivate_org(org_id: str):
    """Extension: reactivate a suspended org. Audit-logged."""
    await set_org_status(org_id, "active", ("suspended",), "onboarding.reactivated",
                         conflict_same="Organization already active")
    return {"org_id": org_id, "status": "active", "message": f"Organization '{org_id}' reactivated."}


class MastioPubkey(BaseModel):
    mastio_pubkey: str | None = Field(None, max_length=1024)


@router.patch("/v1/admin/orgs/{org_id}/mastio-pubkey", dependencies=[Depends(require_admin)])
async def set_mastio_pubkey(org_id: str, body: MastioPubkey):
    if body.mastio_pubkey is not None:
        try:
            pub = serialization.load_pem_public_key(body.mastio_pubkey.encode())
        except (ValueError, TypeError):
            fail(400, "mastio_pubkey: invalid PEM")
        if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
            fail(400, "mastio_pubkey: must be an EC P-256 public key (ES256)")
    async with state.engine.begin() as conn:
        res = await conn.execute(organizations.update().where(organizations.c.org_id == org_id)
                                 .values(mastio_pubkey=body.mastio_pubkey))
        if res.rowcount == 0:
            fail(404, "Organization not found")
        await audit.append(conn, "onboarding.mastio_pubkey_set", "ok", org_id=org_id, principal_type="admin",
                           details={"set": body.mastio_pubkey is not None})
    return {"org_id": org_id, "mastio_pubkey_set": body.mastio_pubkey is not None}


# --- bindings ------------------------------------------------------------------------------------

def binding_out(r) -> dict:
    return {"id": r.id, "org_id": r.org_id, "agent_id": r.agent_id, "status": r.status,
            "scope": loads(r.scope_json, []), "approved_at": iso(r.approved_at), "approved_by": r.approved_by,
            "created_at": iso(r.created_at)}


class BindingCreate(BaseModel):
    org_id: str
    agent_id: str
    scope: list[str] = Field(default_factory=list)


@router.post("/v1/registry/bindings", status_code=201)
async def create_binding(body: BindingCreate, org=Depends(require_org)):
    if body.org_id != org.org_id:
        fail(403, "You cannot create a binding for another organization")
    async with state.engine.begin() as conn:
        agent = (await conn.execute(sa.select(agents).where(agents.c.agent_id == body.agent_id))).first()
        if agent is None or agent.org_id != org.org_id:
            fail(404, "Agent not found or does not belong to this organization")
        caps = loads(agent.capabilities_json, [])
        extra = [s for s in body.scope if s not in caps]
        if extra:
            fail(400, f"Scope {extra} not in agent capabilities: {caps}")
        try:
            async with conn.begin_nested():
                res = await conn.execute(bindings.insert().values(
                    org_id=org.org_id, agent_id=body.agent_id, status="pending", scope_json=json.dumps(body.scope),
                    created_at=utcnow()).returning(bindings))
                row = res.first()
        except sa.exc.IntegrityError:
            fail(409, "Binding already exists for this agent and organization")
        await federation_event(conn, "binding.created", org.org_id, body.agent_id, binding_id=row.id)
        await audit.append(conn, "registry.binding_created", "ok", org_id=org.org_id, agent_id=body.agent_id)
    return binding_out(row)


async def _owned_binding(conn, binding_id: int, org_id: str):
    row = (await conn.execute(sa.select(bindings).where(bindings.c.id == binding_id).with_for_update())).first()
    if row is None:
        fail(404, "Binding not found")
    if row.org_id != org_id:
        fail(403, "You are not the owning organization of this binding")
    return row


@router.post("/v1/registry/bindings/{binding_id}/approve")
async def approve_binding(binding_id: int, org=Depends(require_org)):
    async with state.engine.begin() as conn:
        row = await _owned_binding(conn, binding_id, org.org_id)
        if row.status == "approved":
            if state.settings.quirk("reapprove_500"):
                # Real brokers: the approval path dereferences state that only a pending/revoked
                # binding has; the exception surfaces as a bare 500 (contract section 6, point 11).
                raise RuntimeError(f"binding {binding_id} is already approved")
            # Real brokers answer 500 here; we say what happened (documented in README.md).
            fail(409, "Binding already approved")
        res = await conn.execute(bindings.update().where(bindings.c.id == binding_id).values(
            status="approved", approved_at=utcnow(), approved_by=org.org_id).returning(bindings))
        row = res.first()
        await federation_event(conn, "binding.approved", org.org_id, row.agent_id, binding_id=row.id)
        await audit.append(conn, "registry.binding_approved", "ok", org_id=org.org_id, agent_id=row.agent_id)
    return binding_out(row)


@router.post("/v1/registry/bindings/{binding_id}/revoke")
async def revoke_binding(binding_id: int, org=Depends(require_org)):
    async with state.engine.begin() as conn:
        row = await _owned_binding(conn, binding_id, org.org_id)
        res = await conn.execute(bindings.update().where(bindings.c.id == binding_id)
                                 .values(status="revoked").returning(bindings))
        row = res.first()
        await conn.execute(agents.update().where(agents.c.agent_id == row.agent_id)
                           .values(token_invalidated_at=utcnow()))
        await conn.execute(sessions.update().where(sa.or_(sessions.c.initiator_agent_id == row.agent_id,
                                                          sessions.c.target_agent_id == row.agent_id))
                           .where(sessions.c.status != "closed").values(status="closed", updated_at=utcnow()))
        await federation_event(conn, "binding.revoked", org.org_id, row.agent_id, binding_id=row.id)
        await audit.append(conn, "registry.binding_revoked", "ok", org_id=org.org_id, agent_id=row.agent_id)
    await drop_agent(row.agent_id)
    return binding_out(row)


@router.get("/v1/registry/bindings")
async def list_bindings(org_id: str = Query(...), org=Depends(require_org)):
    if org_id != org.org_id:
        fail(403, "You cannot view bindings of another organization")
    async with state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(bindings).where(bindings.c.org_id == org_id)
                                   .order_by(bindings.c.id))).all()
    return [binding_out(r) for r in rows]


# --- revocation ----------------------------------------------------------------------------------

_SERIAL_RE = re.compile(r"^[0-9a-f]+$")


def normalize_serial(value: str) -> str:
    """Store serials in the form logins match: lowercase hex, no colons/spaces/0x, no leading zeros."""
    s = value.strip().lower().replace(":", "").replace(" ", "")
    if s.startswith("0x"):
        s = s[2:]
    if not s or not _SERIAL_RE.match(s):
        fail(400, "serial_hex is not a hexadecimal certificate serial")
    return format(int(s, 16), "x")


class CertRevoke(BaseModel):
    serial_hex: str
    org_id: str
    reason: str | None = None
    revoked_by: str = "admin"
    cert_not_after: dt.datetime | None = None
    agent_id: str | None = None


@router.post("/v1/admin/certs/revoke", dependencies=[Depends(require_admin)])
async def revoke_cert(body: CertRevoke):
    # Quirk verbatim_serials (real brokers, contract section 3): nothing validated, stored as given.
    serial = body.serial_hex if state.settings.quirk("verbatim_serials") else normalize_serial(body.serial_hex)
    now = utcnow()
    not_after = body.cert_not_after or now + dt.timedelta(days=365)
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=dt.timezone.utc)
    async with state.engine.begin() as conn:
        await conn.execute(revoked_certs.delete().where(revoked_certs.c.cert_not_after < now - dt.timedelta(minutes=30)))
        try:
            async with conn.begin_nested():
                await conn.execute(revoked_certs.insert().values(
                    serial_hex=serial, org_id=body.org_id, revoked_at=now, revoked_by=body.revoked_by,
                    reason=body.reason, cert_not_after=not_after, agent_id=body.agent_id))
        except sa.exc.IntegrityError:
            fail(409, "Certificate already revoked")
        await federation_event(conn, "cert.revoked", body.org_id, body.agent_id, serial_hex=serial)
        await audit.append(conn, "admin.cert_revoked", "ok", org_id=body.org_id, agent_id=body.agent_id,
                           principal_type="admin", details={"serial_hex": serial, "reason": body.reason})
    return {"serial_hex": serial, "org_id": body.org_id, "revoked_at": iso(now), "agent_id": body.agent_id,
            "reason": body.reason, "message": f"Certificate {serial} revoked."}


@router.get("/v1/admin/certs/revoked", dependencies=[Depends(require_admin)])
async def list_revoked(org_id: str | None = None):
    q = sa.select(revoked_certs).order_by(revoked_certs.c.revoked_at)
    if org_id:
        q = q.where(revoked_certs.c.org_id == org_id)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [{"serial_hex": r.serial_hex, "org_id": r.org_id, "revoked_at": iso(r.revoked_at),
             "revoked_by": r.revoked_by, "reason": r.reason, "agent_id": r.agent_id} for r in rows]


@router.post("/v1/auth/revoke-agent/{agent_id}", status_code=204)
async def revoke_agent(agent_id: str, org=Depends(require_org)):
    async with state.engine.begin() as conn:
        res = await conn.execute(agents.update().where(agents.c.agent_id == agent_id)
                                 .where(agents.c.org_id == org.org_id)
                                 .values(token_invalidated_at=utcnow().replace(microsecond=0)))
        if res.rowcount == 0:
            fail(404, "Agent not found")
        await audit.append(conn, "auth.agent_tokens_revoked", "ok", org_id=org.org_id, agent_id=agent_id)
    return Response(status_code=204)


# --- audit export --------------------------------------------------------------------------------

AUDIT_FIELDS = ("id", "timestamp", "event_type", "agent_id", "session_id", "org_id", "result", "details",
                "entry_hash", "previous_hash", "chain_seq", "peer_org_id", "peer_row_hash", "principal_type",
                "hash_format")
CSV_FIELDS = ("id", "timestamp", "event_type", "agent_id", "session_id", "org_id", "result", "details",
              "entry_hash", "previous_hash")


@router.get("/v1/admin/audit/export", dependencies=[Depends(require_admin)])
async def audit_export(start: dt.datetime | None = None, end: dt.datetime | None = None, org_id: str | None = None,
                       event_type: str | None = None, format: str = "ndjson",
                       limit: int = Query(10000, ge=1, le=50000)):
    q = sa.select(audit_log).order_by(audit_log.c.id).limit(limit)
    if start is not None:
        q = q.where(audit_log.c.timestamp >= start)
    if end is not None:
        q = q.where(audit_log.c.timestamp <= end)
    if org_id is not None:
        q = q.where(audit_log.c.org_id == org_id)
    if event_type is not None:
        q = q.where(audit_log.c.event_type == event_type)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
        aq = sa.select(audit_tsa_anchors).order_by(audit_tsa_anchors.c.id)
        if org_id:
            aq = aq.where(audit_tsa_anchors.c.org_id == org_id)
        anchors = (await conn.execute(aq)).mappings().all()
    if format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_FIELDS)
        for r in rows:
            w.writerow([iso(r[f]) if f == "timestamp" else r[f] for f in CSV_FIELDS])
        return Response(buf.getvalue(), media_type="text/csv")
    lines = [json.dumps(dict({"kind": "entry"}, **{f: iso(r[f]) if f == "timestamp" else r[f] for f in AUDIT_FIELDS}))
             for r in rows]
    lines += [json.dumps({"kind": "anchor", "org_id": a["org_id"], "chain_seq": a["chain_seq"],
                          "row_hash": a["entry_hash"], "tsa_token_b64": a["token"], "tsa_url": None,
                          "created_at": iso(a["created_at"])}) for a in anchors]
    return Response("".join(line + "\n" for line in lines), media_type="application/x-ndjson")




@router.get("/v1/admin/audit/verify", openapi_extra=EXT, dependencies=[Depends(extension_enabled), Depends(require_admin)])
async def audit_verify(org_id: str | None = None):
    """Verify the hash chains (one org or all) from each chain's first present row. A broken chain
    counts cullis_audit_chain_verify_failed_total (contract section 7)."""
    q = sa.select(audit_log)
    if org_id is not None:
        q = q.where(audit_log.c.org_id == org_id)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
    problems = audit.verify_rows(rows, from_first_present=True)
    if problems:
        metrics.inc("cullis.audit.chain_verify_failed")
    return {"ok": not problems, "rows": len(rows), "problems": problems[:100]}

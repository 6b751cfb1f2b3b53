"""Agents (publish-agent, federation list, admin extensions) and the session/message broker."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import audit
from app.agents import _close_local
from app.federation import EXT, extension_enabled, federation_event
from app.certs import signed_directly_by, thumbprint
from app.deps import AgentPrincipal, client_ip, decode_token, fail, iso, loads, require_admin, require_agent, utcnow
from app.logs import event
from app.metrics import metrics
from app.models import agents, bindings, organizations, session_messages, sessions
from app.routes_auth import verify_mastio
from app.state import state

router = APIRouter()


def agent_public(r) -> dict:
    name = r.agent_id.split("::", 1)[-1]
    return {"agent_id": r.agent_id, "org_id": r.org_id, "display_name": r.display_name,
            "description": r.description, "capabilities": loads(r.capabilities_json, []), "is_active": r.is_active,
            "agent_uri": f"spiffe://{state.settings.trust_domain}/{r.org_id}/{name}",
            "registered_at": iso(r.registered_at)}


@router.get("/v1/federation/agents")
async def federation_agents(request: Request, agent: AgentPrincipal = Depends(require_agent)):
    if not await state.store.hit(client_ip(request), "federation.agents", 60):
        metrics.inc("cullis.ratelimit.reject", bucket="federation.agents")
        fail(429, "Rate limit exceeded for 'federation.agents': max 60 req/60s", headers={"Retry-After": "60"})
    async with state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(agents).where(agents.c.org_id == agent.org_id)
                                   .order_by(agents.c.agent_id))).all()
    return {"agents": [agent_public(r) for r in rows], "total": len(rows)}


def load_agent_cert(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError):
        fail(400, "cert_pem: malformed PEM")


async def upsert_agent(conn, org, agent_id: str, cert: x509.Certificate | None, cert_pem: str | None,
                       capabilities: list, display_name: str, description: str | None = None,
                       active: bool = True, repin: bool = False) -> str:
    existing = (await conn.execute(sa.select(agents).where(agents.c.agent_id == agent_id))).first()
    tp = thumbprint(cert) if cert is not None else None
    if existing is None:
        await conn.execute(agents.insert().values(
            agent_id=agent_id, org_id=org.org_id, display_name=display_name or agent_id.split("::", 1)[-1],
            description=description, capabilities_json=json.dumps(list(capabilities)), metadata_json="{}",
            is_active=active, registered_at=utcnow(), cert_pem=cert_pem, cert_thumbprint=tp))
        return "created"
    values = {"capabilities_json": json.dumps(list(capabilities)), "is_active": active}
    if display_name:
        values["display_name"] = display_name
    if repin or existing.cert_thumbprint is None:
        values.update(cert_pem=cert_pem, cert_thumbprint=tp)
    await conn.execute(agents.update().where(agents.c.agent_id == agent_id).values(**values))
    return "updated"


@router.post("/v1/federation/publish-agent")
async def publish_agent(request: Request):
    if not await state.store.hit(client_ip(request), "federation.publish_agent", 30):
        metrics.inc("cullis.ratelimit.reject", bucket="federation.publish_agent")
        fail(429, "Rate limit exceeded for 'federation.publish_agent': max 30 req/60s", headers={"Retry-After": "60"})
    raw = await request.body()
    try:
        body = json.loads(raw)
        agent_id = body["agent_id"]
        cert_pem = body["cert_pem"]
        if "::" not in agent_id:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        fail(422, "body must be JSON with agent_id 'ORG::name' and cert_pem")
    org_id = agent_id.split("::", 1)[0]
    async with state.engine.begin() as conn:
        org = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id))).first()
        if org is None:
            fail(404, "organization not found")
        if not org.mastio_pubkey:
            from app.routes_auth import NO_MASTIO
            fail(403, NO_MASTIO)
        verify_mastio(org, raw.decode("utf-8"), request.headers.get("x-cullis-mastio-signature"))
        if not org.ca_certificate:
            fail(409, "organization has no CA attached — cannot validate agent cert")
        cert = load_agent_cert(cert_pem)
        ca = x509.load_pem_x509_certificate(org.ca_certificate.encode())
        if not signed_directly_by(cert, ca):
            fail(400, "cert_pem is not signed by the organization's CA")
        revoked = bool(body.get("revoked"))
        status = await upsert_agent(conn, org, agent_id, cert, cert_pem, body.get("capabilities") or [],
                                    body.get("display_name") or "", active=not revoked)
        if revoked:
            status = "revoked"
        row = (await conn.execute(sa.select(agents.c.cert_thumbprint).where(agents.c.agent_id == agent_id))).first()
        await federation_event(conn, f"agent.{status}", org_id, agent_id)
        await audit.append(conn, f"federation.agent_{status}", "ok", org_id=org_id, agent_id=agent_id,
                           principal_type="mastio")
    return {"agent_id": agent_id, "org_id": org_id, "status": status, "cert_thumbprint": row.cert_thumbprint}


# --- admin extensions ----------------------------------------------------------------------------

@router.get("/v1/admin/agents", openapi_extra=EXT, dependencies=[Depends(extension_enabled), Depends(require_admin)])
async def admin_list_agents(org_id: str | None = None):
    """Extension: every agent (optionally of one org) with its pinned certificate's serial and expiry."""
    q = sa.select(agents).order_by(agents.c.agent_id)
    if org_id:
        q = q.where(agents.c.org_id == org_id)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    out = []
    for r in rows:
        serial = not_after = None
        if r.cert_pem:
            try:
                c = x509.load_pem_x509_certificate(r.cert_pem.encode())
                serial, not_after = format(c.serial_number, "x"), iso(c.not_valid_after_utc)
            except ValueError:
                pass
        out.append({"agent_id": r.agent_id, "org_id": r.org_id, "serial_hex": serial,
                    "cert_thumbprint": r.cert_thumbprint, "not_after": not_after, "is_active": r.is_active})
    return out


class AdminAgentCreate(BaseModel):
    agent_id: str | None = None
    org_id: str
    agent_name: str | None = None
    cert_pem: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    display_name: str = ""
    description: str | None = None
    create_binding: bool = False


@router.post("/v1/admin/agents", status_code=201, openapi_extra=EXT,
             dependencies=[Depends(extension_enabled), Depends(require_admin)])
async def admin_create_agent(body: AdminAgentCreate):
    """Extension: register (or update) an agent with its certificate; optionally an approved binding."""
    agent_id = body.agent_id or (f"{body.org_id}::{body.agent_name}" if body.agent_name else None)
    if not agent_id or not agent_id.startswith(body.org_id + "::"):
        fail(400, "agent_id must be '<org_id>::<name>' (or give agent_name)")
    async with state.engine.begin() as conn:
        org = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == body.org_id))).first()
        if org is None:
            fail(404, "Organization not found")
        cert = None
        if body.cert_pem:
            cert = load_agent_cert(body.cert_pem)
            if org.ca_certificate:
                ca = x509.load_pem_x509_certificate(org.ca_certificate.encode())
                if not signed_directly_by(cert, ca):
                    fail(400, "cert_pem is not signed by the organization's CA")
        status = await upsert_agent(conn, org, agent_id, cert, body.cert_pem, body.capabilities, body.display_name,
                                    body.description, repin=cert is not None)
        binding_id = None
        if body.create_binding:
            b = (await conn.execute(sa.select(bindings).where(bindings.c.agent_id == agent_id)
                                    .where(bindings.c.org_id == body.org_id))).first()
            values = dict(status="approved", scope_json=json.dumps(body.capabilities), approved_at=utcnow(),
                          approved_by="admin")
            if b is None:
                b = (await conn.execute(bindings.insert().values(org_id=body.org_id, agent_id=agent_id,
                                                                 created_at=utcnow(), **values)
                                        .returning(bindings))).first()
            elif b.status != "approved":
                await conn.execute(bindings.update().where(bindings.c.id == b.id).values(**values))
            binding_id = b.id
        row = (await conn.execute(sa.select(agents).where(agents.c.agent_id == agent_id))).first()
        await federation_event(conn, f"agent.{status}", body.org_id, agent_id)
        await audit.append(conn, f"admin.agent_{status}", "ok", org_id=body.org_id, agent_id=agent_id,
                           principal_type="admin", details={"binding_id": binding_id})
    return {"agent_id": agent_id, "org_id": body.org_id, "status": status, "cert_thumbprint": row.cert_thumbprint,
            "is_active": row.is_active, "binding_id": binding_id}


# --- sessions and messages -----------------------------------------------------------------------

class SessionCreate(BaseModel):
    target_agent_id: str
    target_org_id: str
    requested_capabilities: list[str] = Field(default_factory=list)


def session_out(r) -> dict:
    return {"session_id": r.session_id, "status": r.status, "initiator_agent_id": r.initiator_agent_id,
            "initiator_org_id": r.initiator_org_id, "target_agent_id": r.target_agent_id,
            "target_org_id": r.target_org_id, "requested_capabilities": loads(r.requested_capabilities_json, []),
            "created_at": iso(r.created_at)}


def policy_allows() -> tuple[bool, str]:
    s = state.settings
    if not s.policy_enforcement:
        return True, "policy enforcement disabled"
    if s.policy_default_decision == "allow":
        return True, "policy_default_allow"
    return False, ("policy_default_deny: no PDP configured for this organization and POLICY_DEFAULT_DECISION "
                   "is deny")


async def _rate_agent(agent: AgentPrincipal, bucket: str, limit: int = 120):
    if not await state.store.hit(agent.agent_id, bucket, limit):
        metrics.inc("cullis.ratelimit.reject", bucket=bucket)
        fail(429, f"Rate limit exceeded for '{bucket}': max {limit} req/60s", headers={"Retry-After": "60"})


@router.post("/v1/broker/sessions", status_code=201)
async def open_session(body: SessionCreate, agent: AgentPrincipal = Depends(require_agent)):
    await _rate_agent(agent, "broker.sessions")
    async with state.engine.begin() as conn:
        target = (await conn.execute(sa.select(agents).where(agents.c.agent_id == body.target_agent_id))).first()
        if target is None or target.org_id != body.target_org_id or not target.is_active:
            fail(404, "Target agent not found")
        allowed, reason = policy_allows()
        metrics.inc("cullis.policy.allow" if allowed else "cullis.policy.deny")
        if not allowed:
            metrics.inc("cullis.session.denied")
            await audit.append(conn, "broker.session_denied", "denied", org_id=agent.org_id, agent_id=agent.agent_id,
                               peer_org_id=body.target_org_id, details={"reason": reason})
            fail(403, f"Policy: {reason}")
        sid = str(uuid.uuid4())
        now = utcnow()
        row = (await conn.execute(sessions.insert().values(
            session_id=sid, initiator_agent_id=agent.agent_id, initiator_org_id=agent.org_id,
            target_agent_id=body.target_agent_id, target_org_id=body.target_org_id, status="pending",
            requested_capabilities_json=json.dumps(body.requested_capabilities), created_at=now, updated_at=now)
            .returning(sessions))).first()
        await audit.append(conn, "broker.session_created", "ok", org_id=agent.org_id, agent_id=agent.agent_id,
                           session_id=sid, peer_org_id=body.target_org_id)
    metrics.inc("cullis.session.created")
    await notify(body.target_agent_id, {"type": "session_request", "session_id": sid, "from": agent.agent_id})
    return session_out(row)


async def _session_for(conn, sid: str, agent: AgentPrincipal, lock: bool = False):
    q = sa.select(sessions).where(sessions.c.session_id == sid)
    row = (await conn.execute(q.with_for_update() if lock else q)).first()
    if row is None or agent.agent_id not in (row.initiator_agent_id, row.target_agent_id):
        fail(404, "Session not found")
    return row


@router.post("/v1/broker/sessions/{sid}/accept")
async def accept_session(sid: str, agent: AgentPrincipal = Depends(require_agent)):
    async with state.engine.begin() as conn:
        row = await _session_for(conn, sid, agent, lock=True)
        if row.target_agent_id != agent.agent_id:
            fail(403, "Only the target agent can accept this session")
        if row.status != "pending":
            fail(409, f"Session is {row.status}")
        row = (await conn.execute(sessions.update().where(sessions.c.session_id == sid)
                                  .values(status="active", updated_at=utcnow()).returning(sessions))).first()
        await audit.append(conn, "broker.session_accepted", "ok", org_id=agent.org_id, agent_id=agent.agent_id,
                           session_id=sid, peer_org_id=row.initiator_org_id)
    return session_out(row)


@router.post("/v1/broker/sessions/{sid}/close")
async def close_session(sid: str, agent: AgentPrincipal = Depends(require_agent)):
    async with state.engine.begin() as conn:
        await _session_for(conn, sid, agent, lock=True)
        row = (await conn.execute(sessions.update().where(sessions.c.session_id == sid)
                                  .values(status="closed", updated_at=utcnow()).returning(sessions))).first()
        await audit.append(conn, "broker.session_closed", "ok", org_id=agent.org_id, agent_id=agent.agent_id,
                           session_id=sid)
    return session_out(row)


class MessageIn(BaseModel):
    session_id: str
    sender_agent_id: str
    payload: dict
    nonce: str
    timestamp: int
    signature: str
    client_seq: int | None = None


def canonical(sid, aid, nonce, ts, payload) -> bytes:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{sid}|{aid}|{nonce}|{ts}|{body}".encode("utf-8")


def verify_message_signature(cert_pem: str | None, data: bytes, signature: str) -> bool:
    if not cert_pem:
        return False
    try:
        sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        pub = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                       hashes.SHA256())
        else:
            pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


@router.post("/v1/broker/sessions/{sid}/messages", status_code=202)
async def send_message(sid: str, body: MessageIn, agent: AgentPrincipal = Depends(require_agent)):
    await _rate_agent(agent, "broker.messages", 600)
    if body.session_id != sid or body.sender_agent_id != agent.agent_id:
        fail(400, "session_id / sender_agent_id do not match the request")
    if abs(time.time() - body.timestamp) > 60:
        fail(400, "Message timestamp outside the ±60 s window")
    async with state.engine.begin() as conn:
        row = await _session_for(conn, sid, agent, lock=True)
        if row.status != "active":
            fail(409, f"Session is {row.status}")
        cert_pem = (await conn.execute(sa.select(agents.c.cert_pem)
                                       .where(agents.c.agent_id == agent.agent_id))).scalar()
        if not verify_message_signature(cert_pem, canonical(sid, agent.agent_id, body.nonce, body.timestamp,
                                                             body.payload), body.signature):
            fail(401, "Invalid message signature")
        dup = (await conn.execute(sa.select(session_messages.c.msg_id).where(session_messages.c.session_id == sid)
                                  .where(session_messages.c.nonce == body.nonce))).first()
        if dup:
            return JSONResponse({"status": "queued", "session_id": sid, "msg_id": dup.msg_id, "deduped": True},
                                status_code=202)
        seq = (await conn.execute(sa.select(sa.func.coalesce(sa.func.max(session_messages.c.seq), -1) + 1)
                                  .where(session_messages.c.session_id == sid))).scalar()
        msg_id = str(uuid.uuid4())
        await conn.execute(session_messages.insert().values(
            session_id=sid, seq=seq, msg_id=msg_id, sender_agent_id=agent.agent_id,
            payload_json=json.dumps(body.payload), nonce=body.nonce, timestamp=body.timestamp,
            signature=body.signature, client_seq=body.client_seq, created_at=utcnow()))
        peer = row.target_agent_id if agent.agent_id == row.initiator_agent_id else row.initiator_agent_id
    metrics.inc("cullis.message.queued")
    message = {"type": "message", "session_id": sid, "msg_id": msg_id, "seq": seq, "sender_agent_id": agent.agent_id,
               "payload": body.payload, "nonce": body.nonce, "timestamp": body.timestamp, "signature": body.signature}
    delivered = await notify(peer, message)
    return JSONResponse({"status": "accepted" if delivered else "queued", "session_id": sid, "msg_id": msg_id,
                         "deduped": False}, status_code=202)


@router.get("/v1/broker/sessions/{sid}/messages")
async def list_messages(sid: str, after: int = -1, agent: AgentPrincipal = Depends(require_agent)):
    async with state.engine.connect() as conn:
        await _session_for(conn, sid, agent)
        rows = (await conn.execute(sa.select(session_messages).where(session_messages.c.session_id == sid)
                                   .where(session_messages.c.seq > after).order_by(session_messages.c.seq))).all()
    return [{"seq": r.seq, "sender_agent_id": r.sender_agent_id, "payload": json.loads(r.payload_json),
             "nonce": r.nonce, "timestamp": r.timestamp, "signature": r.signature, "client_seq": r.client_seq}
            for r in rows]


# --- WebSocket push (cross-worker via Redis pub/sub `ws:agent:<id>`) --------------------------------

async def deliver_local(agent_id: str, message: dict) -> bool:
    if message.get("type") == "_drop":
        await _close_local(agent_id)
        return False
    delivered = False
    for ws in list(state.websockets.get(agent_id, ())):
        try:
            await ws.send_json(message)
            delivered = True
        except Exception:  # noqa: BLE001 - a dead socket is dropped
            state.websockets.get(agent_id, set()).discard(ws)
    return delivered


async def notify(agent_id: str, message: dict) -> bool:
    if state.store.configured:
        try:
            return await state.store.publish(f"ws:agent:{agent_id}", json.dumps(message)) > 0
        except Exception:  # noqa: BLE001 - pub/sub loss is safe: clients poll
            return await deliver_local(agent_id, message)
    return await deliver_local(agent_id, message)


async def pubsub_loop() -> None:
    """Forward Redis `ws:agent:<id>` messages to this worker's sockets; reconnect on errors.

    A worker subscribes to an agent's channel only while it holds that agent's socket, so the
    PUBLISH receiver count tells the sender whether the message was pushed ("accepted").
    """
    while True:
        try:
            state.pubsub = state.store.redis.pubsub()
            for agent_id in list(state.websockets):
                await state.pubsub.subscribe(f"ws:agent:{agent_id}")
            while True:
                if not state.pubsub.subscribed:
                    await asyncio.sleep(0.1)
                    continue
                msg = await state.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if not msg or msg.get("type") != "message":
                    continue
                channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                await deliver_local(channel[len("ws:agent:"):], json.loads(msg["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            event("websocket pub/sub listener error; retrying", error=type(e).__name__)
            state.pubsub = None
            await asyncio.sleep(1)


async def _subscribe(agent_id: str, on: bool) -> None:
    pubsub = getattr(state, "pubsub", None)
    if pubsub is None:
        return
    try:
        if on:
            await pubsub.subscribe(f"ws:agent:{agent_id}")
        else:
            await pubsub.unsubscribe(f"ws:agent:{agent_id}")
    except Exception as e:  # noqa: BLE001 - the listener reconnects and resubscribes
        event("websocket subscribe failed", error=type(e).__name__)


@router.websocket("/v1/broker/ws")
async def websocket(ws: WebSocket):
    """Push channel. Auth: first text frame `{"type":"auth","token":...}` (token verified, no DPoP)."""
    await ws.accept()
    try:
        first = await asyncio.wait_for(ws.receive_json(), timeout=10)
        claims = decode_token(first.get("token", ""))
        agent_id = claims["agent_id"]
    except Exception:  # noqa: BLE001
        await ws.close(code=1008)
        return
    if state.draining:
        await ws.close(code=1012)
        return
    first = not state.websockets.get(agent_id)
    state.websockets.setdefault(agent_id, set()).add(ws)
    if first:
        await _subscribe(agent_id, True)
    await ws.send_json({"type": "auth_ok", "agent_id": agent_id})
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        sockets = state.websockets.get(agent_id, set())
        sockets.discard(ws)
        if not sockets:
            state.websockets.pop(agent_id, None)
            await _subscribe(agent_id, False)

"""A small server-rendered admin dashboard (contract section 5 "Suspending an org", section 2 admin_*).

First run: /dashboard/setup with the bootstrap token from Vault sets the password (bcrypt hash,
`admin_password_user_set="true"` and a blank token in ONE read-merge-CAS write). Then
/dashboard/login -> HttpOnly SameSite=Strict cookie `cullis_session` (HMAC-signed, 8 h) and a
CSRF token in every form.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

import bcrypt
import sqlalchemy as sa
from cryptography import x509
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, select_autoescape

from app import audit
from app.certs import signed_directly_by
from app.deps import client_ip, utcnow
from app.models import bindings, organizations
from app.routes_broker import load_agent_cert, upsert_agent
from app.state import state
from app.vault import VaultError

router = APIRouter(prefix="/dashboard", include_in_schema=False)
COOKIE = "cullis_session"
SESSION_SECONDS = 8 * 3600
ADMIN_BCRYPT_ROUNDS = 12

env = Environment(autoescape=select_autoescape(default=True))
PAGE = env.from_string("""<!doctype html><html><head><meta charset="utf-8"><title>Cullis broker — {{ title }}</title>
</head><body><h1>{{ title }}</h1>{% if message %}<p class="message">{{ message }}</p>{% endif %}
{% if form == 'setup' %}
<form method="post" action="/dashboard/setup">
<label>Bootstrap token <input name="token" type="password" autocomplete="off"></label>
<label>New password <input name="password" type="password" autocomplete="new-password"></label>
<button type="submit">Set password</button></form>
{% elif form == 'login' %}
<form method="post" action="/dashboard/login">
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Log in</button></form>
{% elif form == 'orgs' %}
<table><tr><th>org_id</th><th>display_name</th><th>status</th><th>actions</th></tr>
{% for o in orgs %}<tr><td>{{ o.org_id }}</td><td>{{ o.display_name }}</td><td>{{ o.status }}</td><td>
<form method="post" action="/dashboard/orgs/{{ o.org_id }}/suspend"><input type="hidden" name="csrf_token" value="{{ csrf }}"><button>Suspend</button></form>
<form method="post" action="/dashboard/orgs/{{ o.org_id }}/approve"><input type="hidden" name="csrf_token" value="{{ csrf }}"><button>Approve</button></form>
</td></tr>{% endfor %}</table>
<form method="post" action="/dashboard/admin/settings/password"><input type="hidden" name="csrf_token" value="{{ csrf }}">
<label>New password <input name="password" type="password"></label><button>Change password</button></form>
<form method="post" action="/dashboard/logout"><input type="hidden" name="csrf_token" value="{{ csrf }}"><button>Log out</button></form>
{% endif %}</body></html>""")


def page(title: str, form: str, message: str = "", status: int = 200, **kw) -> HTMLResponse:
    return HTMLResponse(PAGE.render(title=title, form=form, message=message, **kw), status_code=status)


def _signing_key() -> bytes:
    if state.settings.dashboard_signing_key:
        return state.settings.dashboard_signing_key.encode()
    path = Path("certs/.dashboard_signing_key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def _sign(payload: bytes) -> str:
    return hmac.new(_signing_key(), payload, hashlib.sha256).hexdigest()


def make_cookie() -> str:
    payload = base64.urlsafe_b64encode(json.dumps(
        {"sub": "admin", "exp": int(time.time()) + SESSION_SECONDS, "csrf": secrets.token_urlsafe(24)}).encode())
    return payload.decode() + "." + _sign(payload)


def read_session(request: Request) -> dict | None:
    raw = request.cookies.get(COOKIE, "")
    payload, _, sig = raw.rpartition(".")
    if not payload or not hmac.compare_digest(sig, _sign(payload.encode())):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except ValueError:
        return None
    return data if data.get("exp", 0) > time.time() else None


def _to_login() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303)


async def _vault_admin() -> dict:
    data, _ = await state.kv.read()
    return data or {}


@router.get("/setup")
async def setup_form():
    return page("First-run setup", "setup")


@router.post("/setup")
async def setup(request: Request, token: str = Form(...), password: str = Form(...)):
    if not await state.store.hit(client_ip(request), "dashboard.setup", 5, 300):
        return page("First-run setup", "setup", "Too many attempts; wait 5 minutes.", status=429)
    try:
        data = await _vault_admin()
    except VaultError:
        return page("First-run setup", "setup", "Vault is unavailable; try again later.", status=503)
    if data.get("admin_password_user_set") == "true":
        return page("First-run setup", "login", "Setup is already complete; log in.", status=409)
    expected = data.get("admin_bootstrap_token") or ""
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        return page("First-run setup", "setup", "Invalid bootstrap token.", status=403)
    if len(password) < 12 or len(password.encode()) > 72:
        return page("First-run setup", "setup", "Password must be 12 to 72 bytes.", status=400)
    hashed = (await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(ADMIN_BCRYPT_ROUNDS))).decode()
    await state.kv.patch({"admin_secret_hash": hashed, "admin_password_user_set": "true",
                          "admin_bootstrap_token": ""})
    async with state.engine.begin() as conn:
        await audit.append(conn, "dashboard.setup_complete", "ok", principal_type="admin")
    return RedirectResponse("/dashboard/login", status_code=303)


@router.get("/login")
async def login_form():
    return page("Log in", "login")


@router.post("/login")
async def login(request: Request, password: str = Form(...)):
    if not await state.store.hit(client_ip(request), "dashboard.login", 5, 300):
        return page("Log in", "login", "Too many login attempts; wait 5 minutes.", status=429)
    try:
        hashed = (await _vault_admin()).get("admin_secret_hash") or ""
    except VaultError:
        return page("Log in", "login", "Vault is unavailable; try again later.", status=503)
    ok = False
    if state.settings.quirk("admin_lockout"):
        # Real brokers hand any stored value to bcrypt: a blank or non-bcrypt hash -> 500 "Invalid salt".
        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed.encode())
    elif hashed.startswith("$2") and len(password.encode()) <= 72:
        try:
            ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed.encode())
        except ValueError:
            ok = False
    if not ok:
        return page("Log in", "login", "Invalid credentials.")
    resp = RedirectResponse("/dashboard/orgs", status_code=303)
    resp.set_cookie(COOKIE, make_cookie(), max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                    secure=state.settings.broker_public_url.startswith("https"), path="/")
    return resp


@router.get("/orgs")
async def orgs_page(request: Request):
    sess = read_session(request)
    if sess is None:
        return _to_login()
    async with state.engine.connect() as conn:
        rows = (await conn.execute(sa.select(organizations).order_by(organizations.c.org_id))).all()
    return page("Organizations", "orgs", orgs=rows, csrf=sess["csrf"])


def _csrf_ok(sess: dict | None, csrf_token: str) -> bool:
    return sess is not None and hmac.compare_digest(sess["csrf"].encode(), csrf_token.encode())


async def _org_action(request: Request, org_id: str, csrf_token: str, new: str, event: str):
    sess = read_session(request)
    if sess is None:
        return _to_login()
    if not _csrf_ok(sess, csrf_token):
        return page("Organizations", "", "Invalid CSRF token.", status=403)
    async with state.engine.begin() as conn:
        row = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id)
                                  .with_for_update())).first()
        if row is not None and row.sealed:
            return HTMLResponse("Organization is tenant-sealed. Complete the per-org re-auth challenge before "
                                "retrying this action.", status_code=403)
        if row is not None and row.status != new:
            await conn.execute(organizations.update().where(organizations.c.org_id == org_id).values(status=new))
            await audit.append(conn, event, "ok", org_id=org_id, principal_type="admin",
                               details={"from": row.status, "to": new, "via": "dashboard"})
    return RedirectResponse("/dashboard/orgs", status_code=303)


@router.post("/orgs/{org_id}/suspend")
async def suspend(request: Request, org_id: str, csrf_token: str = Form(...)):
    return await _org_action(request, org_id, csrf_token, "suspended", "onboarding.suspended")


@router.post("/orgs/{org_id}/approve")
async def approve(request: Request, org_id: str, csrf_token: str = Form(...)):
    return await _org_action(request, org_id, csrf_token, "active", "onboarding.approved")


@router.post("/admin/settings/password")
async def change_password(request: Request, csrf_token: str = Form(...), password: str = Form(...)):
    sess = read_session(request)
    if sess is None:
        return _to_login()
    if not _csrf_ok(sess, csrf_token):
        return page("Organizations", "", "Invalid CSRF token.", status=403)
    if len(password) < 12 or len(password.encode()) > 72:
        return page("Organizations", "", "Password must be 12 to 72 bytes.", status=400)
    hashed = (await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(ADMIN_BCRYPT_ROUNDS))).decode()
    await state.kv.patch({"admin_secret_hash": hashed, "admin_password_user_set": "true"})
    return RedirectResponse("/dashboard/orgs", status_code=303)


@router.post("/agents/register")
async def register_agent(request: Request, csrf_token: str = Form(...), org_id: str = Form(...),
                         agent_name: str = Form(...), display_name: str = Form(""), description: str = Form(""),
                         capabilities: str = Form(""), cert_pem: str = Form("")):
    """Create (or update) an agent and an approved binding with scope = capabilities (contract section 3)."""
    sess = read_session(request)
    if sess is None:
        return _to_login()
    if not _csrf_ok(sess, csrf_token):
        return page("Organizations", "", "Invalid CSRF token.", status=403)
    caps = [c.strip() for c in capabilities.split(",") if c.strip()]
    agent_id = f"{org_id}::{agent_name}"
    async with state.engine.begin() as conn:
        org = (await conn.execute(sa.select(organizations).where(organizations.c.org_id == org_id))).first()
        if org is None:
            return page("Organizations", "", "Organization not found.", status=404)
        cert = None
        if cert_pem.strip():
            cert = load_agent_cert(cert_pem)
            if org.ca_certificate and not signed_directly_by(
                    cert, x509.load_pem_x509_certificate(org.ca_certificate.encode())):
                return page("Organizations", "", "cert_pem is not signed by the organization's CA", status=400)
        await upsert_agent(conn, org, agent_id, cert, cert_pem.strip() or None, caps, display_name,
                           description or None, repin=cert is not None)
        b = (await conn.execute(sa.select(bindings).where(bindings.c.agent_id == agent_id)
                                .where(bindings.c.org_id == org_id))).first()
        values = dict(status="approved", scope_json=json.dumps(caps), approved_at=utcnow(), approved_by="admin")
        if b is None:
            await conn.execute(bindings.insert().values(org_id=org_id, agent_id=agent_id, created_at=utcnow(),
                                                        **values))
        else:
            await conn.execute(bindings.update().where(bindings.c.id == b.id).values(**values))
        await audit.append(conn, "dashboard.agent_registered", "ok", org_id=org_id, agent_id=agent_id,
                           principal_type="admin")
    return RedirectResponse("/dashboard/orgs", status_code=303)


@router.post("/logout")
async def logout():
    resp = _to_login()
    resp.delete_cookie(COOKIE, path="/")
    return resp

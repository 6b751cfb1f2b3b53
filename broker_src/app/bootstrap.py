"""Startup steps: migrations, Vault bootstrap (signing key, admin bootstrap token), Redis."""
from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import settings
from app.keys import SigningKeys, generate_broker_ca
from app.logs import event, stderr
from app.state import state
from app.store import Store
from app.vault import VaultError, make_kv

ROOT = Path(__file__).resolve().parent.parent


def async_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def alembic_config() -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = async_url(settings.database_url)
    return cfg


async def run_migrations() -> None:
    """`alembic upgrade head` under the advisory lock (taken in alembic/env.py), in a worker thread."""
    await asyncio.to_thread(command.upgrade, alembic_config(), "head")


def _file_keys() -> tuple[str | None, str | None]:
    key_path, cert_path = Path(settings.broker_ca_key_path), Path(settings.broker_ca_cert_path)
    return (key_path.read_text() if key_path.is_file() else None,
            cert_path.read_text() if cert_path.is_file() else None)


async def ensure_bootstrapped() -> None:
    kv = make_kv(settings)
    state.kv = kv
    try:
        data, _version = await kv.read()
    except VaultError as e:
        # Never write blindly after a failed read: startup fails (exit 3), restart with backoff.
        raise RuntimeError(f"Failed to write bootstrap token to Vault ({e}; {e.body.strip()})") from None
    data = data or {}
    patch: dict[str, str] = {}
    private_pem, ca_pem = data.get("private_key_pem"), data.get("ca_cert_pem")
    if not private_pem:
        file_key, file_cert = _file_keys()
        if file_key:
            private_pem, ca_pem = file_key, ca_pem or file_cert
            event("broker signing key taken from BROKER_CA_KEY_PATH (Vault has no private_key_pem)")
        else:
            private_pem, ca_pem = generate_broker_ca()
            patch.update(private_key_pem=private_pem, ca_cert_pem=ca_pem)
            event("first boot: generated the broker signing key (RSA 2048) and CA certificate; stored in Vault")
    state.keys = SigningKeys(private_pem, ca_pem, data.get("public_key_pem"))
    user_set = data.get("admin_password_user_set") == "true"
    # Quirk admin_lockout (real brokers): a blanked hash with user_set="true" re-opens nothing; the
    # dashboard login then fails with 500 "Invalid salt" and /dashboard/setup says it is complete.
    if user_set and not settings.quirk("admin_lockout") and not (data.get("admin_secret_hash") or "").startswith("$2"):
        # Runbook "Admin lockout" (a): the operator blanked admin_secret_hash. Re-open first-run setup
        # instead of leaving a dashboard nobody can log in to (real brokers stay locked out).
        patch["admin_password_user_set"] = "false"
        user_set = False
        event("admin_secret_hash is empty or not bcrypt: dashboard first-run setup re-opened")
    if not user_set and not data.get("admin_bootstrap_token"):
        patch["admin_bootstrap_token"] = secrets.token_urlsafe(32)
    if patch:
        try:
            await kv.patch(patch)
        except VaultError as e:
            raise RuntimeError(f"Failed to write bootstrap token to Vault ({e})") from None
    if "admin_bootstrap_token" in patch:
        stderr("ADMIN BOOTSTRAP: dashboard first-run token stored in the Vault field admin_bootstrap_token "
               f"({settings.vault_secret_path}); open /dashboard/setup with it")


async def check_kms() -> None:
    """Live KMS check for /readyz: the secret must be readable and hold the signing key.

    Quirk vault_cached (real brokers, contract section 2 "At runtime"): the keys fetched once are
    cached for the process lifetime and the check only looks at the cache, so a sealed Vault or a
    revoked token stays invisible (`kms: ok`) until the next start, which then fails (exit 3).
    """
    if settings.quirk("vault_cached") and state.keys is not None:
        return
    try:
        data, _ = await state.kv.read(quiet=True)
    except VaultError as e:
        if e.status:
            raise RuntimeError(f"Vault returned HTTP {e.status} — check broker logs for details") from None
        raise RuntimeError(str(e)) from None
    if not (data or {}).get("private_key_pem") and not _file_keys()[0]:
        raise RuntimeError(f"Vault secret at '{settings.vault_secret_path}' missing 'private_key_pem'")


async def init_redis() -> None:
    state.store = Store(settings.redis_url, environment=settings.environment)
    if not state.store.configured:
        event("REDIS_URL is empty: DPoP replay store and rate limits are in memory (single process only)",
              level=30)
        stderr("WARNING: REDIS_URL is empty: using the in-memory DPoP replay store and rate limiter")
        return
    try:
        await state.store.ping()
    except Exception as e:  # noqa: BLE001 - reported, not silently replaced by memory (see README)
        if settings.quirk("redis_fallback"):
            # Real brokers (contract section 5): silently in memory for the process lifetime;
            # /readyz then says redis "not_configured" and production logins answer 500.
            await state.store.close()
            state.store = Store("", environment=settings.environment)
            return
        stderr(f"WARNING: Redis is unreachable at startup ({type(e).__name__}); /readyz reports it until it is back")

"""Vault KV v2 access (contract section 2) and the local-KMS stand-in.

Writes are always read-merge-CAS: read the whole map and its version, change fields, post the
full map with `options.cas=<version>` (cas=0 when the secret does not exist yet). A CAS conflict
is retried on a fresh read. Never a blind replace.
"""
from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import httpx

from app.config import Settings
from app.logs import stderr


class VaultError(RuntimeError):
    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class VaultKV:
    def __init__(self, settings: Settings):
        self.s = settings
        self.url = f"{settings.vault_addr}/v1/{settings.vault_secret_path}"

    def _verify(self):
        ca = self.s.vault_ca_cert or os.environ.get("SSL_CERT_FILE")
        if ca:
            return ssl.create_default_context(cafile=ca)
        return True

    def _check_addr(self):
        if not self.s.vault_addr:
            raise VaultError("VAULT_ADDR is not set")
        if self.s.vault_addr.startswith("http://") and not self.s.vault_allow_http:
            raise VaultError("Vault address must use https:// (set VAULT_ALLOW_HTTP=true for development only)")

    async def read(self, quiet: bool = False) -> tuple[dict | None, int]:
        """Return (data, version); (None, 0) when the secret does not exist. Raises VaultError."""
        self._check_addr()
        try:
            async with httpx.AsyncClient(verify=self._verify(), timeout=10) as c:
                r = await c.get(self.url, headers={"X-Vault-Token": self.s.vault_token})
        except httpx.HTTPError as e:
            if not quiet:
                stderr(f"Vault read failed: {type(e).__name__}: {e}")
            raise VaultError(f"Vault unreachable: {type(e).__name__}") from e
        if r.status_code == 404:
            return None, 0
        if r.status_code != 200:
            if not quiet:
                stderr(f"Vault read returned HTTP {r.status_code}")
            raise VaultError(f"Vault returned HTTP {r.status_code}", r.status_code, r.text[:300])
        body = r.json()["data"]
        return dict(body.get("data") or {}), int(body["metadata"]["version"])

    async def patch(self, fields: dict[str, str], attempts: int = 5) -> dict:
        """Read-merge-CAS write of `fields`; returns the merged map."""
        for _ in range(attempts):
            data, version = await self.read()
            merged = dict(data or {})
            merged.update({k: str(v) for k, v in fields.items()})
            payload = {"options": {"cas": version}, "data": merged}
            try:
                async with httpx.AsyncClient(verify=self._verify(), timeout=10) as c:
                    r = await c.post(self.url, headers={"X-Vault-Token": self.s.vault_token}, json=payload)
            except httpx.HTTPError as e:
                stderr(f"Vault write failed: {type(e).__name__}: {e}")
                raise VaultError(f"Vault unreachable: {type(e).__name__}") from e
            if r.status_code in (200, 204):
                return merged
            if r.status_code == 400 and "check-and-set" in r.text:
                continue  # somebody wrote meanwhile: merge again on a fresh read
            stderr(f"Vault write returned HTTP {r.status_code}: {r.text.strip()[:300]}")
            raise VaultError(f"Vault write returned HTTP {r.status_code}", r.status_code, r.text[:300])
        raise VaultError("Vault write kept losing the check-and-set race")


class LocalKV:
    """KMS_BACKEND=local: the same interface on a 0600 JSON file under certs/ (development only)."""

    def __init__(self, settings: Settings):
        self.path = Path("certs/.admin_local_kms.json")

    async def read(self, quiet: bool = False):
        if not self.path.exists():
            return None, 0
        doc = json.loads(self.path.read_text())
        return doc["data"], doc["version"]

    async def patch(self, fields: dict[str, str]) -> dict:
        data, version = await self.read()
        merged = dict(data or {})
        merged.update({k: str(v) for k, v in fields.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"data": merged, "version": version + 1}))
        tmp.chmod(0o600)
        tmp.replace(self.path)
        return merged


def make_kv(settings: Settings):
    return LocalKV(settings) if settings.kms_backend == "local" else VaultKV(settings)

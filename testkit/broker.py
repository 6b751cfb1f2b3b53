"""Run the repository's broker (broker_src/) with uvicorn against test PostgreSQL/Redis/OpenBao.

`BrokerProcess(pg, redis, bao)` creates a broker-policy Vault token, starts
`uvicorn app.main:app` from broker_src/ as a ManagedProcess with the contract's environment,
waits for /health, and stops it by PID. The `broker` session fixture (registered from the root
conftest.py) gives one such broker on the shared `pg_server`/`redis_server`/`bao_server`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from testkit.process import ManagedProcess, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
BROKER_SRC = REPO / "broker_src"


def _uvicorn() -> str:
    candidate = Path(sys.executable).parent / "uvicorn"
    return str(candidate) if candidate.exists() else (shutil.which("uvicorn") or "uvicorn")


def http_get(url: str, timeout: float = 5) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


class BrokerProcess:
    """One broker process. `.url`, `.admin_secret`, `.env`, `.proc`, `.restart()`, `.stop()`."""

    def __init__(self, pg, redis, bao, env_overrides: dict | None = None, port: int | None = None,
                 vault_token: str | None = None, workdir: Path | None = None, start: bool = True):
        self.pg, self.redis, self.bao = pg, redis, bao
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_secret = secrets.token_urlsafe(24)
        self.vault_token = vault_token or bao.create_token()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cullis-broker-"))
        self.log_path = self.workdir / "broker.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        base.update({
            "DATABASE_URL": pg.sqlalchemy_url,
            "REDIS_URL": redis.url if redis is not None else "",
            "KMS_BACKEND": "vault",
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": self.vault_token,
            "VAULT_CA_CERT": str(bao.ca_path),
            "SSL_CERT_FILE": str(bao.ca_path),
            "ADMIN_SECRET": self.admin_secret,
            "DASHBOARD_SIGNING_KEY": secrets.token_hex(32),
            "BROKER_PUBLIC_URL": self.url,
            "OTEL_ENABLED": "false",
            "POLICY_DEFAULT_DECISION": "allow",
            "LOG_FORMAT": "json",
        })
        base.update(env_overrides or {})
        self.env = base
        self.proc: ManagedProcess | None = None
        if start:
            self.start()

    def start(self, wait: bool = True) -> "BrokerProcess":
        self.proc = ManagedProcess(
            [_uvicorn(), "app.main:app", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            self.log_path, env=self.env, cwd=BROKER_SRC, stop_grace=15).start()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        wait_for(lambda: http_get(self.url + "/health", 1)[0] == 200, timeout, "broker", self.proc)

    def get(self, path: str) -> tuple[int, dict | str]:
        return http_get(self.url + path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def restart(self) -> "BrokerProcess":
        self.stop()
        return self.start()

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(pg_server, redis_server, bao_server):
    """A running broker_src broker on the shared session servers (POLICY_DEFAULT_DECISION=allow)."""
    proc = BrokerProcess(pg_server, redis_server, bao_server,
                         env_overrides={"RATE_LIMIT_AUTH_PER_MINUTE": "1000"})
    yield proc
    proc.cleanup()

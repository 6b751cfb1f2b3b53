"""Handles of a deployed end-to-end stack, one per runtime, with one interface for the scenarios.

`Stack` is a stack deployed with `cullis_runtime: process` (tests/e2e/conftest.py deploys it);
`ComposeStack` one deployed with `cullis_runtime: compose` on the test kit's Docker engine
(tests/e2e_compose/conftest.py). The incident scenarios (testkit/scenarios.py) only use what both
provide:

- `run(playbook, ...)`: a repository playbook against the stack's inventory (the compose stack adds
  the engine's DOCKER_HOST / DOCKER_CONFIG to the environment);
- `env`, `env_file`, `ca_path` (the stack's own CA: Vault, and the public URL unless told
  otherwise), `public_ca_path` (what verifies the public URL: Pebble's root on an ACME stack),
  `public_url`, `vault_addr`, `keys_file`, `vault_keys`, `secret_values()`, `get(path)` (through
  nginx over TLS, JSON decoded);
- `runtime()`: the collection's own runtime object for the stack (module_utils `ProcessRuntime` or
  `ComposeRuntime`): this is how a fault is injected - a process stopped by its supervisord, or a
  container stopped on the engine;
- `module_args()`: the runtime options a module of the collection needs for this stack
  (`stack_dir`, plus `runtime`, `compose_project_dir`, `docker_host` on compose);
- `psql(sql, db)`: one SQL statement as the database superuser (the stack's socket on process; the
  container's published port with the password of .env on compose).
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

from testkit.ansible import REPO, PlaybookResult, run_playbook
from testkit.services import PG_BIN

SECRET_ENV_KEYS = ("ADMIN_SECRET", "DASHBOARD_SIGNING_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD",
                   "VAULT_TOKEN", "DATABASE_URL", "REDIS_URL")


def _collection_path() -> None:
    path = str(REPO / "collections")
    if path not in sys.path:
        sys.path.insert(0, path)


def read_env(path: Path) -> dict:
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass
class Stack:
    """A deployed stack (process runtime). `env` is re-read on every access (incident tests rotate secrets)."""

    dir: Path
    inventory: Path
    ports: dict
    vars: dict
    deploy_result: PlaybookResult | None = None
    deploy_seconds: float = 0.0
    extra_vars: dict = field(default_factory=dict)
    runtime_kind = "process"

    @property
    def env_file(self) -> Path:
        return self.dir / ".env"

    @property
    def env(self) -> dict:
        return read_env(self.env_file)

    @property
    def public_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['cullis_nginx_port']}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['cullis_broker_port']}"

    @property
    def vault_addr(self) -> str:
        return f"https://127.0.0.1:{self.ports['cullis_vault_port']}"

    @property
    def ca_path(self) -> Path:
        return self.dir / "tls" / "ca.pem"

    @property
    def public_ca_path(self) -> Path:
        """What verifies the certificate nginx serves on the public URL: the deployment's
        cullis_tls_public_ca_path when given (an ACME CA's root, an operator's bundle), else the
        stack's CA (self-signed mode)."""
        given = self.extra_vars.get("cullis_tls_public_ca_path")
        return Path(given) if given else self.ca_path

    @property
    def keys_file(self) -> Path:
        return self.dir / "vault" / "vault-keys.json"

    @property
    def broker_venv(self) -> str:
        """The broker's venv: the one given (cullis_broker_venv), else the broker role's default."""
        return str(self.extra_vars.get("cullis_broker_venv") or self.dir / "broker" / "venv")

    @property
    def vault_keys(self) -> dict:
        return json.loads(self.keys_file.read_text())

    def secret_values(self) -> list[str]:
        """Every secret of the stack (.env secrets, unseal keys, root token): for no-leak asserts."""
        env = self.env
        values = [env[k] for k in SECRET_ENV_KEYS if env.get(k)]
        keys = self.vault_keys
        values += list(keys.get("unseal_keys_b64", [])) + list(keys.get("unseal_keys_hex", []))
        values.append(keys["root_token"])
        return [v for v in values if v]

    def playbook_env(self) -> dict | None:
        return None

    def run(self, playbook: str | Path, check: bool = False, extra_vars: dict | None = None,
            verbosity: int = 0, **kwargs) -> PlaybookResult:
        """Run a repository playbook against this stack (its temp inventory)."""
        merged = dict(self.extra_vars)
        merged.update(extra_vars or {})
        if self.playbook_env() and "env" not in kwargs:
            kwargs["env"] = self.playbook_env()
        return run_playbook(playbook, inventory=self.inventory, extra_vars=merged or None, check=check,
                            verbosity=verbosity, **kwargs)

    def get(self, path: str, timeout: float = 10) -> tuple[int, dict | str]:
        """GET a broker path through nginx over TLS, verified with the public URL's CA."""
        ctx = ssl.create_default_context(cafile=str(self.public_ca_path))
        req = urllib.request.Request(self.public_url + path)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    # ---- runtime-specific: fault injection and direct access --------------------------------
    def runtime(self):
        """The collection's runtime object for this stack (module_utils ProcessRuntime)."""
        _collection_path()
        from ansible_collections.cullis.broker.plugins.module_utils._runtime import ProcessRuntime
        return ProcessRuntime(str(self.dir), timeout=60)

    def module_args(self) -> dict:
        """Runtime options of the collection's modules (stack_service, service_info, ...) for this stack."""
        return {"stack_dir": str(self.dir)}

    def psql(self, sql: str, db: str = "agent_trust") -> str:
        out = subprocess.run([PG_BIN / "psql", "-h", str(self.dir / "postgres" / "sock"), "-p",
                              str(self.ports["cullis_postgres_port"]), "-U", "postgres", "-d", db, "-v",
                              "ON_ERROR_STOP=1", "-Atq", "-c", sql], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def services(self) -> dict:
        """{service: supervisord process info} straight from the stack's supervisord (read-only)."""
        from supervisor.xmlrpc import SupervisorTransport
        sock = self.dir / "supervisor" / "supervisor.sock"
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1",
                                          transport=SupervisorTransport(None, None, f"unix://{sock}"))
        return {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}

    def supervisord_pid(self) -> int | None:
        try:
            return int((self.dir / "supervisor" / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None


@dataclass
class ComposeStack(Stack):
    """A stack deployed with `cullis_runtime: compose`: its services are the containers of the compose
    project `<dir>/compose` (or `project_dir`, for a project the collection did not create) on the
    engine of `docker_env` (DOCKER_HOST, DOCKER_CONFIG)."""

    docker_env: dict = field(default_factory=dict)
    project_dir: Path | None = None
    service_map: dict = field(default_factory=dict)
    runtime_kind = "compose"

    @property
    def compose_dir(self) -> Path:
        return Path(self.project_dir) if self.project_dir else self.dir / "compose"

    def playbook_env(self) -> dict | None:
        return dict(self.docker_env)

    def runtime(self):
        _collection_path()
        from ansible_collections.cullis.broker.plugins.module_utils._runtime_compose import ComposeRuntime
        return ComposeRuntime(str(self.dir), timeout=60, project_dir=str(self.compose_dir),
                              services=self.service_map, docker_host=self.docker_env.get("DOCKER_HOST"))

    def module_args(self) -> dict:
        return {"stack_dir": str(self.dir), "runtime": "compose", "compose_project_dir": str(self.compose_dir),
                "compose_services": dict(self.service_map), "docker_host": self.docker_env.get("DOCKER_HOST")}

    def psql(self, sql: str, db: str = "agent_trust") -> str:
        """As the image's superuser (POSTGRES_USER) over the published port, password from .env."""
        user = self.vars.get("cullis_postgres_user", "atn")
        out = subprocess.run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(self.ports["cullis_postgres_port"]),
                              "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PGPASSWORD": self.env["POSTGRES_PASSWORD"]})
        return out.stdout.strip()

    def services(self) -> dict:  # pragma: no cover - supervisord only exists on the process runtime
        raise NotImplementedError("a compose stack has no supervisord; use runtime().status(name)")

    def supervisord_pid(self) -> int | None:
        return None

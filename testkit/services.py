"""Real PostgreSQL 15, Redis and OpenBao servers for tests, on 127.0.0.1, free ports, temp dirs.

Each class starts one server (`start()`), exposes what a client needs (port, DSN/URL, tokens,
CA file) and stops it by PID (`stop()`). `testkit.pytest_plugin` wraps them as fixtures.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from testkit.pki import CA
from testkit.process import ManagedProcess, free_port, start_on_free_ports, wait_for

PG_BIN = Path(os.environ.get("CULLIS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _which(name: str) -> str:
    """Find a binary in the venv of the running interpreter first, then on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make venv` / scripts/bootstrap.sh")
    return found


def make_tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the postgres user must traverse it
    return path


class PostgresServer:
    """A PostgreSQL 15 cluster run as the `postgres` OS user (initdb refuses root)."""

    user = "atn"
    database = "agent_trust"

    def __init__(self, base: Path | None = None, port: int | None = None):
        self.base = base or make_tempdir("cullis-pg-")
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.port = port or free_port()
        self._port_picked = port is None  # picked here: picked again if taken before the first bind
        self.password = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
        self.proc: ManagedProcess | None = None
        self._os_user = "postgres" if os.geteuid() == 0 else None

    def _chown(self, path: Path):
        if self._os_user:
            pw = pwd.getpwnam(self._os_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self):
        for d in (self.datadir, self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        self.datadir.chmod(0o700)
        subprocess.run([PG_BIN / "initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--no-sync"], check=True, user=self._os_user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PostgresServer":
        if not (self.datadir / "PG_VERSION").exists():
            self.init()
            first = True
        else:
            first = False
        log = self.base / "postgres.log"

        def start_once():
            self.proc = ManagedProcess(
                [PG_BIN / "postgres", "-D", self.datadir, "-p", self.port, "-k", self.sockdir,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
                log, user=self._os_user, stop_grace=15).start()
            # SIGTERM = smart shutdown: waits for clients; use SIGINT (fast) via stop_fast().
            wait_for(lambda: subprocess.run([PG_BIN / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                                            capture_output=True).returncode == 0, 30, "postgres", self.proc)

        start_on_free_ports(start_once, self._repick if self._port_picked else None)
        self._port_picked = False  # clients know the port now: a restart keeps it
        if first:
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}' CREATEDB")
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def _repick(self):
        self.port = free_port()

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def stop(self):
        if self.proc and self.proc.running:
            self.proc.signal(signal.SIGINT)  # fast shutdown: disconnects clients, checkpoints
            try:
                self.proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class RedisServer:
    def __init__(self, base: Path | None = None, port: int | None = None, password: str | None = None):
        self.base = base or make_tempdir("cullis-redis-")
        self.port = port or free_port()
        self._port_picked = port is None  # picked here: picked again if taken before the first bind
        self.password = password if password is not None else secrets.token_hex(16)
        self.proc: ManagedProcess | None = None

    def start(self) -> "RedisServer":
        def start_once():
            argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1",
                    "--port", self.port, "--dir", self.base, "--save", "", "--appendonly", "no",
                    "--protected-mode", "yes"]
            if self.password:
                argv += ["--requirepass", self.password]
            self.proc = ManagedProcess(argv, self.base / "redis.log", stop_grace=10).start()
            wait_for(self._answers, 20, "redis", self.proc)

        start_on_free_ports(start_once, self._repick if self._port_picked else None)
        self._port_picked = False  # clients know the port now: a restart keeps it
        return self

    def _repick(self):
        self.port = free_port()

    def _answers(self) -> bool:
        """PONG to a PING (after AUTH): this server answers, not whatever else holds the port."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall((f"AUTH {self.password}\r\n" if self.password else "").encode() + b"PING\r\n")
            answer = b""
            while b"PONG" not in answer and b"-" not in answer:
                chunk = conn.recv(256)
                if not chunk:
                    break
                answer += chunk
            return b"+PONG" in answer

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0" if self.password \
            else f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        if self.proc:
            self.proc.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


BROKER_POLICY = """
path "secret/data/broker" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/broker" {
  capabilities = ["read"]
}
"""


class OpenBaoServer:
    """One OpenBao node: raft storage, TLS listener from a test CA, real Shamir seal.

    `start()` runs the server; `initialize()` does `operator init` (5 shares, threshold 3),
    unseals, mounts KV v2 at secret/ and writes broker-policy. Use `cli()` for any other `bao`
    command; tokens and keys are attributes, never printed.
    """

    def __init__(self, ca: CA | None = None, base: Path | None = None, port: int | None = None,
                 node_id: str = "node1", retry_join: list[str] | None = None):
        self.base = base or make_tempdir("cullis-bao-")
        self.port = port or free_port()
        self._port_picked = port is None  # picked here: picked again if taken before the first bind
        self.cluster_port = free_port()
        self.node_id = node_id
        self.ca = ca or CA.create("Cullis Test Vault CA")
        self.ca_path = self.base / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem)
        self.cert_path, self.key_path = self.ca.server_cert("127.0.0.1", "localhost").write(self.base, "tls")
        self.retry_join = retry_join or []
        self.proc: ManagedProcess | None = None
        self.init_result: dict | None = None

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        return self.init_result["root_token"]

    @property
    def unseal_keys(self) -> list[str]:
        return self.init_result["unseal_keys_b64"]

    def write_config(self) -> Path:
        (self.base / "raft").mkdir(exist_ok=True)
        joins = "".join(
            f'\n  retry_join {{\n    leader_api_addr = "{a}"\n    leader_ca_cert_file = "{self.ca_path}"\n  }}'
            for a in self.retry_join)
        cfg = f"""
ui = false
disable_mlock = true
api_addr = "{self.addr}"
cluster_addr = "https://127.0.0.1:{self.cluster_port}"
storage "raft" {{
  path = "{self.base / 'raft'}"
  node_id = "{self.node_id}"{joins}
}}
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_cert_file = "{self.cert_path}"
  tls_key_file = "{self.key_path}"
}}
"""
        path = self.base / "bao.hcl"
        path.write_text(cfg)
        return path

    def start(self) -> "OpenBaoServer":
        def start_once():
            config = self.write_config()
            self.proc = ManagedProcess([_which("bao"), "server", f"-config={config}"],
                                       self.base / "bao.log", stop_grace=15).start()
            wait_for(self._answers, 60, "openbao", self.proc)

        start_on_free_ports(start_once, self._repick if self._port_picked else None)
        self._port_picked = False  # clients know the port now: a restart keeps it
        return self

    def _repick(self):
        """New API and cluster ports, before this node was ever started with the old ones (a
        restarted node keeps its addresses: its raft peers know them)."""
        self.port, self.cluster_port = free_port(), free_port()

    def _answers(self) -> bool:
        """/v1/sys/health answered over TLS with this node's certificate (any status: 501 not
        initialised, 503 sealed): this node, not whatever else holds the port."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", context=ctx, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True

    def env(self, token: str | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update({"BAO_ADDR": self.addr, "BAO_CACERT": str(self.ca_path)})
        if token:
            env["BAO_TOKEN"] = token
        return env

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_which("bao"), *args], env=self.env(token), capture_output=True, text=True,
                              check=check, timeout=60)

    def status(self) -> dict:
        out = self.cli("status", "-format=json", check=False)
        return json.loads(out.stdout)

    def initialize(self, shares: int = 5, threshold: int = 3, setup_kv: bool = True) -> "OpenBaoServer":
        out = self.cli("operator", "init", f"-key-shares={shares}", f"-key-threshold={threshold}",
                       "-format=json")
        self.init_result = json.loads(out.stdout)
        keys_file = self.base / "vault-keys.json"
        keys_file.write_text(out.stdout)
        keys_file.chmod(0o600)
        self.keys_file = keys_file
        self.unseal()
        if setup_kv:
            self.wait_active()
            self.cli("secrets", "enable", "-path=secret", "-version=2", "kv", token=self.root_token)
            policy = self.base / "broker-policy.hcl"
            policy.write_text(BROKER_POLICY)
            self.cli("policy", "write", "broker-policy", str(policy), token=self.root_token)
        return self

    def unseal(self, keys: list[str] | None = None):
        for key in (keys or self.unseal_keys)[:3]:
            self.cli("operator", "unseal", key)

    def seal(self):
        self.cli("operator", "seal", token=self.root_token)

    def wait_active(self, timeout: float = 30):
        def active():
            st = self.status()
            return not st.get("sealed") and st.get("ha_enabled") is not None and \
                self.cli("read", "-format=json", "sys/health", token=self.root_token, check=False).returncode == 0
        wait_for(active, timeout, "openbao active", self.proc)

    def create_token(self, policy: str = "broker-policy", ttl: str = "720h", renewable: bool = True) -> str:
        out = self.cli("token", "create", f"-policy={policy}", f"-ttl={ttl}",
                       f"-renewable={'true' if renewable else 'false'}", "-display-name=cullis-broker",
                       "-format=json", token=self.root_token)
        return json.loads(out.stdout)["auth"]["client_token"]

    def stop(self):
        if self.proc:
            self.proc.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


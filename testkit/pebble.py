"""Debian's Pebble (Let's Encrypt's test ACME server) on 127.0.0.1, for the ACME tests.

`PebbleServer(http_port=...)` writes a config and a TLS certificate for Pebble's own HTTPS API
(from a `testkit.pki.CA`; `api_ca_path` is what ACME clients must trust), starts `/usr/bin/pebble`
on free loopback ports and stops it by PID. HTTP-01 is validated for real: Pebble's VA connects to
`http_port` on the identifier's address (127.0.0.1), i.e. to whatever serves
`/.well-known/acme-challenge/` there (nginx of the stack, or `ChallengeServer` below).
`issuer_root_pem()` returns the root Pebble signs certificates with (random at each start), the
CA that clients of an ACME-issued certificate must trust in tests.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import ssl
import threading
import urllib.request
from pathlib import Path

from testkit.pki import CA
from testkit.process import ManagedProcess, free_port, port_open, wait_for
from testkit.services import make_tempdir

PEBBLE = "/usr/bin/pebble"


class PebbleServer:
    def __init__(self, http_port: int, base: Path | None = None, validity_days: int = 90):
        self.base = base or make_tempdir("cullis-pebble-")
        self.port = free_port()
        self.mgmt_port = free_port()
        self.tls_port = free_port()
        self.http_port = http_port
        self.validity_days = validity_days
        self.ca = CA.create("Pebble API Test CA")
        self.api_ca_path = self.base / "pebble-api-ca.pem"
        self.api_ca_path.write_bytes(self.ca.cert_pem)
        self.cert_path, self.key_path = self.ca.server_cert("127.0.0.1", "localhost").write(self.base, "api")
        self.proc: ManagedProcess | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> "PebbleServer":
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.cert_path), "privateKey": str(self.key_path),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "certificateValidityPeriod": self.validity_days * 86400,
        }}
        cfg = self.base / "pebble-config.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.proc = ManagedProcess([PEBBLE, "-config", str(cfg)], self.base / "pebble.log", env=env).start()
        wait_for(lambda: port_open(self.port) and port_open(self.mgmt_port), 30, "pebble", self.proc)
        return self

    def _mgmt_get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.api_ca_path))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}{path}", context=ctx, timeout=10) as r:
            return r.read()

    def issuer_root_pem(self) -> bytes:
        return self._mgmt_get("/roots/0")

    def log(self) -> str:
        return self.proc.log_tail(200) if self.proc else ""

    def stop(self):
        if self.proc:
            self.proc.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class ChallengeServer:
    """Plain HTTP on 127.0.0.1:`port` answering `/.well-known/acme-challenge/<token>` with the file
    `<challenge_dir>/<token>` (nginx's `alias` layout), in a thread of this process."""

    def __init__(self, challenge_dir: Path, port: int | None = None):
        self.challenge_dir = Path(challenge_dir)
        self.port = port or free_port()
        handler = functools.partial(_ChallengeHandler, self.challenge_dir)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.requests: list[str] = []
        self.httpd.requests = self.requests

    def start(self) -> "ChallengeServer":
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _ChallengeHandler(http.server.BaseHTTPRequestHandler):
    PREFIX = "/.well-known/acme-challenge/"

    def __init__(self, challenge_dir: Path, *args, **kwargs):
        self.challenge_dir = challenge_dir
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 - http.server naming
        self.server.requests.append(self.path)
        token = self.path[len(self.PREFIX):] if self.path.startswith(self.PREFIX) else ""
        path = self.challenge_dir / token
        if not token or "/" in token or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

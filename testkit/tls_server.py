"""Tiny TLS servers on 127.0.0.1 presenting crafted certificates (tls_check tests and bench).

`TLSServers` runs any number of listening sockets in this process: one selector thread accepts,
a small thread pool does the handshakes and answers a minimal HTTP 200. Each endpoint presents
the PEM chain it was given (leaf first), so tests can serve expired, not-yet-valid, wrong-host,
self-signed or incomplete-chain certificates. Everything stops with `close()` (or the context
manager); no process is started.
"""
from __future__ import annotations

import selectors
import socket
import ssl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}"


class TLSServers:
    def __init__(self, workers: int = 16):
        self._dir = tempfile.TemporaryDirectory(prefix="cullis-tls-")
        self._sel = selectors.DefaultSelector()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._listeners: list[socket.socket] = []
        self._count = 0
        self._lock = threading.Lock()
        self._thread.start()

    def serve(self, chain_pem: bytes, key_pem: bytes) -> int:
        """Listen on a free loopback port presenting `chain_pem` (leaf first); returns the port."""
        with self._lock:
            self._count += 1
            n = self._count
        cert_path = Path(self._dir.name) / f"chain-{n}.pem"
        key_path = Path(self._dir.name) / f"key-{n}.pem"
        cert_path.write_bytes(chain_pem)
        key_path.write_bytes(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._listeners.append(sock)
        self._sel.register(sock, selectors.EVENT_READ, ctx)
        return sock.getsockname()[1]

    def serve_issued(self, issued, *intermediates) -> int:
        """Serve a `testkit.pki.Issued` with optional intermediate `Issued`/CA objects."""
        chain = issued.cert_pem + b"".join(i.cert_pem for i in intermediates)
        return self.serve(chain, issued.key_pem)

    def _loop(self):
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                try:
                    conn, _ = key.fileobj.accept()
                except (BlockingIOError, OSError):
                    continue
                self._pool.submit(self._handle, conn, key.data)

    @staticmethod
    def _handle(conn: socket.socket, ctx: ssl.SSLContext):
        conn.setblocking(True)
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                try:
                    tls.recv(4096)
                    tls.sendall(_RESPONSE)
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError):
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._listeners:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""`ansible-playbook` runs without paying for the interpreter's start and ansible's imports each time.

Why: the suite's pytest sessions run ansible-playbook hundreds of times on a 2-core machine (308
in the modules stage and 84 in e2e in the rehearsal of 2026-12-01, plus the split stage's), and
about 1.4 CPU-s of every run is Python starting and importing ansible-core before the playbook is
even read: a one-task playbook costs about 2.5 CPU-s as a plain command, 1.0 forked warm
(measured by bench/bench_playbook_server.py on this machine).

How: one server process per environment imports `ansible.cli.playbook` once (ansible reads its
configuration, ansible.cfg and ANSIBLE_* variables, at import: that is why the environment is part
of the server's identity), then, per run, forks a child that is from there on exactly the
`ansible-playbook` command: the same `main()` with the run's argv, working directory and the
caller's stdin/stdout/stderr (passed over a Unix socket). Nothing of the playbook, the modules or
their hosts runs differently; only the controller process starts warm. The fork start method is
the one ansible itself uses for its workers.

What a warm start cannot see: a change to a configuration file (ansible.cfg) after its server
started. The suite never edits one; a test that must would pass its own ANSIBLE_CONFIG (another
environment, another server).

Protocol (one connection per run): the client sends its three file descriptors (SCM_RIGHTS) and a
JSON request {argv, env, cwd}; the server forks a monitor, the monitor forks the run, sends back
{"pid": ...}, waits for it and sends {"rc": ..., "cpu": ...} (the run's CPU seconds with its
children's, for testkit/cpu_report.py, which cannot see grandchildren of another process).

Off unless `enabled` is set: the pytest sessions of the suite set it (conftest.py, this module's
pytest_configure), CULLIS_PLAYBOOK_SERVER=0 keeps it off there too. Scripts such as the benchmarks
of bench/, which time the collection as an operator starts it, run the plain command. Runs in more
than MAX_SERVERS environments also run the plain command.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_SERVER_CODE = r"""
import json, os, shutil, signal, socket, sys, tempfile
import ansible.cli.playbook  # the import this server exists for (reads the configuration)
from ansible import constants as C

# ansible made its per-process local temp dir at import (removed at exit): each run gets its own,
# as a fresh ansible-playbook does; the server's is not used
LOCAL_TMP_PARENT = os.path.dirname(C.DEFAULT_LOCAL_TMP)
shutil.rmtree(C.DEFAULT_LOCAL_TMP, ignore_errors=True)

path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(16)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
print("ready", flush=True)


def recv_request(conn):
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    data = msg
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            break
        data += more
    return json.loads(data), fds


def run(conn, request, fds):
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])  # the run's own (PYTEST_CURRENT_TEST and the like differ)
    sys.argv = request["argv"]
    C.DEFAULT_LOCAL_TMP = tempfile.mkdtemp(prefix=f"ansible-local-{os.getpid()}", dir=LOCAL_TMP_PARENT)
    code = 0
    try:
        code = ansible.cli.playbook.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        shutil.rmtree(C.DEFAULT_LOCAL_TMP, ignore_errors=True)  # what ansible's atexit would do
    os._exit(code or 0)


while True:
    conn, _ = listener.accept()
    if os.fork() == 0:  # the monitor of this run
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request, fds = recv_request(conn)
        pid = os.fork()
        if pid == 0:
            conn.close()
            run(conn, request, fds)
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            pass  # the client is gone; the run still ends and is reaped here
        _, status, usage = os.wait4(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(json.dumps({"rc": rc, "cpu": usage.ru_utime + usage.ru_stime}).encode() + b"\n")
        except OSError:
            pass  # the client gave up on the run (its timeout) and killed it
        os._exit(0)
    conn.close()
"""

enabled = False
# CPU seconds of the runs served so far (the runs are not children of the pytest process)
served_cpu_seconds = 0.0
served_runs = 0
_lock = threading.Lock()
_servers: dict[tuple, "PlaybookServer"] = {}


class PlaybookServer:
    def __init__(self, env: dict) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cullis-pbserver-"))
        self.path = str(self.dir / "socket")
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER_CODE, self.path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"playbook server did not start (rc {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.path)
            self.dir.rmdir()
        except OSError:
            pass

    def run(self, argv: list[str], *, env: dict, cwd: str | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """What subprocess.run(argv, capture_output=True, text=True, ...) returns. The output goes
        through pipes, as with subprocess.run (never through a file: -vvv runs print secrets)."""
        global served_cpu_seconds, served_runs
        stdin_r, stdin_w = os.pipe()  # an empty stdin: nothing here answers a prompt
        os.close(stdin_w)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

        def drain(fd: int) -> None:
            with os.fdopen(fd, "rb") as stream:
                for block in iter(lambda: stream.read1(1 << 16), b""):
                    chunks[fd].append(block)

        readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_r, err_r)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            try:
                conn.connect(self.path)
                request = json.dumps({"argv": argv, "env": env, "cwd": cwd or os.getcwd()}).encode() + b"\n"
                socket.send_fds(conn, [request], [stdin_r, out_w, err_w])
            finally:
                for fd in (stdin_r, out_w, err_w):  # the run holds its own copies
                    os.close(fd)
            for reader in readers:
                reader.start()
            replies = conn.makefile("rb")
            pid = json.loads(replies.readline())["pid"]
            conn.settimeout(timeout)
            try:
                done = json.loads(replies.readline())
            except BaseException as exc:  # timeout, or the session interrupted: the run goes too
                os.kill(pid, signal.SIGKILL)
                if isinstance(exc, (socket.timeout, TimeoutError)):
                    raise subprocess.TimeoutExpired(argv, timeout) from None
                raise
        for reader in readers:
            reader.join()
        with _lock:
            served_cpu_seconds += done["cpu"]
            served_runs += 1
        stdout, stderr = (b"".join(chunks[fd]).decode(errors="replace") for fd in (out_r, err_r))
        return subprocess.CompletedProcess(argv, done["rc"], stdout, stderr)


# what may differ between runs of one server: the child takes the run's environment, and ansible
# reads none of these at import
_VOLATILE = {"PYTEST_CURRENT_TEST"}
MAX_SERVERS = 6


def server_for(env: dict) -> PlaybookServer | None:
    """The server of this environment (started on first use); None when disabled or when too many
    environments were seen (those runs start a plain ansible-playbook)."""
    if not enabled:
        return None
    key = tuple(sorted((k, v) for k, v in env.items() if k not in _VOLATILE))
    with _lock:
        server = _servers.get(key)
        if server is not None and server.proc.poll() is None:
            return server
        if len(_servers) >= MAX_SERVERS:
            return None
        server = _servers[key] = PlaybookServer(env)
    return server


def run(argv: list[str], *, env: dict, cwd: str | None = None, timeout: float | None = None) \
        -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout) for an
    ansible-playbook command line, through this environment's server when there is one."""
    server = server_for(env)
    if server is None:
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return server.run(argv, env=env, cwd=cwd, timeout=timeout)


@atexit.register
def stop_all() -> None:
    for server in list(_servers.values()):
        server.stop()
    _servers.clear()


def pytest_configure(config) -> None:
    global enabled
    enabled = os.environ.get("CULLIS_PLAYBOOK_SERVER", "1") != "0"


def pytest_unconfigure(config) -> None:
    stop_all()  # by PID, at the end of the session


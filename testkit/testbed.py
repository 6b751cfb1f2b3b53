"""Multi-host test bed: separate Debian hosts (containers) that Ansible reaches over SSH.

Usage (pytest: the session fixtures of `testkit.testbed_fixtures` do all of this)::

    engine = DockerEngine().start()
    images = ImageBuilder(engine).ensure_all(("bare",))
    bed = Testbed(engine, images["bare"].tag, workdir=tmp_path)
    bed.start(ISSUE11_TOPOLOGY)           # six hosts: postgres redis vault broker1 broker2 proxy
    inv = bed.write_inventory()           # YAML inventory, groups cullis_* under cullis_stack
    # ansible-playbook -i inv ...         # SSH as root with the per-run key on 127.0.0.1:<port>
    bed.exec("broker1", ["pgrep", "-a", "uvicorn"])   # docker exec, for fault injection
    bed.kill("postgres"); bed.start_host("postgres")  # host down / back (same SSH port)
    bed.teardown(); engine.stop()

Every host is a container of the bare image: sshd, python3, nothing of the stack. Its hostname and
its name on the test bed's own docker network are the short host name (`postgres`, `broker1`),
so hosts reach each other by name and two test beds in one session do not collide; the
inventory gives it as `cullis_address`. Containers, network and key carry/live under the kit's
label and temp dirs, and `teardown()` removes them.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testkit.docker_engine import LABEL
from testkit.process import free_port

# Issue 11 topology: host name -> groups. Every group is a child of cullis_stack.
ISSUE11_TOPOLOGY: dict[str, list[str]] = {
    "postgres": ["cullis_postgres"],
    "redis": ["cullis_redis"],
    "vault": ["cullis_vault"],
    "broker1": ["cullis_broker"],
    "broker2": ["cullis_broker"],
    "proxy": ["cullis_proxy"],
}
STACK_GROUP = "cullis_stack"
SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def make_ssh_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair for this run: (private key path, mode 0600; public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode() + " cullis-testbed\n"
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    (directory / "id_ed25519.pub").write_text(public)
    return path, public


def _tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ssh_banner(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """True when an SSH server answers with its banner (a published port alone is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


@dataclass
class Host:
    name: str
    groups: list[str]
    container_name: str
    ssh_port: int
    container: object = field(repr=False, default=None)

    @property
    def address(self) -> str:
        """The host's name on the test bed network (what other hosts use to reach it)."""
        return self.name


@dataclass
class ExecResult:
    rc: int
    output: str


class Testbed:
    """N named hosts on one user-defined docker network, each with sshd on 127.0.0.1:<port>."""

    def __init__(self, engine, image: str, *, workdir: Path | None = None, name: str | None = None,
                 memory: str | None = None, log=print):
        self.engine = engine
        self.client = engine.client
        self.image = image
        self.id = name or f"tb{uuid.uuid4().hex[:8]}"
        self._own_workdir = workdir is None  # a temp dir of its own goes at teardown (key included)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"cullis-{self.id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory = memory
        self.log = log
        self.hosts: dict[str, Host] = {}
        self.network = None
        keydir = self.workdir / "ssh"
        keydir.mkdir(mode=0o700, exist_ok=True)
        self.ssh_key, self._public_key = make_ssh_key(keydir)

    @property
    def network_name(self) -> str:
        return f"cullis-{self.id}"

    def _labels(self, **extra) -> dict:
        return {LABEL: "1", f"{LABEL}.bed": self.id, **extra}

    def start(self, topology: dict[str, list[str]] | None = None, timeout: float = 60) -> "Testbed":
        """Create the network and start every host of `topology` (host -> groups), SSH ready."""
        t0 = time.monotonic()
        topology = ISSUE11_TOPOLOGY if topology is None else topology
        if self.network is None:
            from testkit.docker_engine import network_create_lock

            with network_create_lock():  # another engine of this machine may be creating one too
                self.network = self.client.networks.create(self.network_name, driver="bridge",
                                                           labels=self._labels())
        for name, groups in topology.items():
            self.add_host(name, groups)
        for name in topology:
            self.wait_ssh(name, timeout)
        self.log(f"test bed {self.id}: {len(topology)} hosts up in {time.monotonic() - t0:.1f}s "
                 f"({', '.join(f'{h.name}:{h.ssh_port}' for h in self.hosts.values())})")
        return self

    def add_host(self, name: str, groups: list[str] | tuple[str, ...] = (), image: str | None = None) -> Host:
        """One more host on this bed's network; `image` defaults to the bed's own (a DR site may
        start from the prepared image: packages installed, nothing of the stack)."""
        if name in self.hosts:
            raise ValueError(f"host {name} already exists in test bed {self.id}")
        port = free_port()
        container_name = f"{self.id}-{name}"
        from docker.types import EndpointConfig

        container = self.client.containers.create(
            image or self.image, name=container_name, hostname=name, init=True, detach=True,
            labels=self._labels(**{f"{LABEL}.host": name}),
            ports={"22/tcp": ("127.0.0.1", port)}, network=self.network_name,
            # network alias = short host name, so hosts reach each other by name on this network
            networking_config={self.network_name: EndpointConfig(self.client.api.api_version, aliases=[name])},
            mem_limit=self.memory,
        )
        # the per-run public key, before sshd starts (no bind mount: works on any engine)
        container.put_archive("/root/.ssh", _tar_of({"authorized_keys": (self._public_key.encode(), 0o600)}))
        container.start()
        host = Host(name, list(groups), container_name, port, container)
        self.hosts[name] = host
        return host

    def wait_ssh(self, name: str, timeout: float = 60) -> None:
        host = self.hosts[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ssh_banner(host.ssh_port):
                return
            host.container.reload()
            if host.container.status == "exited":
                raise RuntimeError(f"test bed host {name} exited:\n{host.container.logs(tail=30).decode()}")
            time.sleep(0.2)
        raise TimeoutError(f"sshd of test bed host {name} not ready on 127.0.0.1:{host.ssh_port} after {timeout}s")

    # -- inventory
    def inventory_data(self, host_vars: dict | None = None, group_vars: dict | None = None) -> dict:
        """The YAML inventory as a dict: every group of the topology a child of cullis_stack."""
        groups: dict[str, dict] = {}
        for host in self.hosts.values():
            for group in host.groups:
                groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = None
        all_hosts = {}
        for host in self.hosts.values():
            all_hosts[host.name] = {
                "ansible_host": "127.0.0.1",
                "ansible_port": host.ssh_port,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.ssh_key),
                "ansible_ssh_common_args": SSH_COMMON_ARGS,
                "ansible_python_interpreter": "/usr/bin/python3",
                "cullis_address": host.address,
                **((host_vars or {}).get(host.name, {})),
            }
        children = {g: groups[g] for g in sorted(groups) if g != STACK_GROUP}
        for g, extra in (group_vars or {}).items():
            if g in children:
                children[g]["vars"] = extra
        stack = {"children": children}
        if STACK_GROUP in (group_vars or {}):
            stack["vars"] = group_vars[STACK_GROUP]
        return {"all": {"hosts": all_hosts, "children": {STACK_GROUP: stack}}}

    def write_inventory(self, path: Path | None = None, **kwargs) -> Path:
        """Write the inventory (see `inventory_data`) to `path` (default: <workdir>/inventory.yml)."""
        path = Path(path) if path else self.workdir / "inventory.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.inventory_data(**kwargs), sort_keys=False))
        return path

    # -- fault injection and host control
    # Under full load `docker exec` has answered rc 0 with NO output for a fast-exiting command (CI
    # rehearsals: a `cat` of the split stack's .env read as b'', a `stat -c %a` as ''). So each command
    # runs ONCE with its output kept in a file on the host (0600) and then printed with an end mark:
    # an answer without the mark lost its output on the way, which is then read from the file through
    # the archive API (no exec). The wrapper drops its files older than a minute.
    EXEC_END = "\n@@cullis-testbed-exec-end@@"
    EXEC_WRAPPER = (
        'out="$1"; shift; find /tmp -maxdepth 1 -name ".cullis-exec-*" -mmin +1 -delete 2>/dev/null; '
        'umask 077; "$@" > "$out" 2>&1; rc=$?; cat "$out"; printf "%s" "$CULLIS_EXEC_END"; exit $rc')

    def exec(self, name: str, argv: list[str] | str, *, user: str | None = None, check: bool = False,
             environment: dict | None = None) -> ExecResult:
        """`docker exec` on a host (not through Ansible): for fault injection and evidence."""
        argv = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
        container = self.hosts[name].container
        out_file = f"/tmp/.cullis-exec-{uuid.uuid4().hex}"
        rc, out = container.exec_run(["/bin/sh", "-c", self.EXEC_WRAPPER, "sh", out_file, *argv], user=user or "",
                                     environment={**(environment or {}), "CULLIS_EXEC_END": self.EXEC_END})
        text = out.decode(errors="replace")
        if text.endswith(self.EXEC_END):
            text = text[:-len(self.EXEC_END)]
        else:
            text = self._kept_output(container, out_file, text)
        result = ExecResult(rc, text)
        if check and rc != 0:
            raise RuntimeError(f"{argv} on {name} failed with rc {rc}:\n{result.output}")
        return result

    @staticmethod
    def _kept_output(container, out_file: str, received: str) -> str:
        """The output a command left in `out_file` on its host, read through the archive API; what
        was received when the file is not there (a command that stopped the host, say)."""
        try:
            stream, _ = container.get_archive(out_file)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                return tar.extractfile(member).read().decode(errors="replace")
        except Exception:  # noqa: BLE001 - docker.errors.NotFound, a stopped host: keep what came
            return received

    def read_file(self, name: str, path: str, attempts: int = 3) -> str:
        """A file that must not be empty, read on host `name` (docker exec `cat`). Under full load
        docker exec has returned rc 0 with NO output for a fast-exiting `cat` of a non-empty file (a
        CI rehearsal: the split stack's .env read as b''); a read is idempotent, so an empty answer
        is read again, and never returned."""
        for attempt in range(attempts):
            res = self.exec(name, ["cat", path])
            if res.rc == 0 and res.output:
                return res.output
            if attempt + 1 < attempts:
                time.sleep(1 + attempt)
        raise AssertionError(f"{path} on {name}: empty or unreadable after {attempts} reads (rc {res.rc}: {res.output!r})")

    def kill(self, name: str, signal: str = "SIGKILL") -> None:
        """The host dies (power cut): every process of the container gets `signal`."""
        self.hosts[name].container.kill(signal=signal)

    def stop(self, name: str, timeout: int = 10) -> None:
        """Clean shutdown of the host (SIGTERM, then SIGKILL after `timeout`)."""
        self.hosts[name].container.stop(timeout=timeout)

    def start_host(self, name: str, timeout: float = 60) -> None:
        """Boot a stopped/killed host again (same name, address and SSH port) and wait for sshd."""
        self.hosts[name].container.start()
        self.wait_ssh(name, timeout)

    def ip(self, name: str) -> str:
        """The host's IP on the test bed network: the controller reaches it there too (any port)."""
        container = self.hosts[name].container
        container.reload()
        return container.attrs["NetworkSettings"]["Networks"][self.network_name]["IPAddress"]

    def running(self, name: str) -> bool:
        container = self.hosts[name].container
        container.reload()
        return container.status == "running"

    def teardown(self) -> None:
        """Remove the hosts (containers and their volumes) and the network."""
        for host in self.hosts.values():
            try:
                host.container.remove(force=True, v=True)
            except Exception as exc:  # noqa: BLE001 - keep removing the others
                self.log(f"test bed {self.id}: removing {host.container_name}: {exc}")
        self.hosts.clear()
        if self.network is not None:
            self.network.remove()
            self.network = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


# -- the controller side


def listening_ports_on_controller() -> dict[int, list[dict]]:
    """TCP ports listening on this machine (the controller): port -> [{address, pid, name, cmdline}]."""
    import psutil

    found: dict[int, list[dict]] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN:
            continue
        info = {"address": conn.laddr.ip, "pid": conn.pid, "name": None, "cmdline": []}
        if conn.pid:
            try:
                proc = psutil.Process(conn.pid)
                info["name"], info["cmdline"] = proc.name(), proc.cmdline()
            except psutil.Error:
                pass
        found.setdefault(conn.laddr.port, []).append(info)
    return found


def stack_listeners_on_controller(ports, *, engine=None) -> dict[int, list[dict]]:
    """The listeners among `ports` on the controller that are not the engine's own SSH/port proxies.

    A test proves the controller runs no stack service with
    `assert stack_listeners_on_controller(STACK_PORTS, engine=engine) == {}`.
    """
    listening = listening_ports_on_controller()
    result = {}
    for port in ports:
        owners = [i for i in listening.get(port, []) if i["name"] != "docker-proxy"
                  or (engine is not None and engine.pid not in _ancestors(i["pid"]))]
        if owners:
            result[port] = owners
    return result


def controller_processes_using(path: str) -> list[dict]:
    """Processes of the controller that run from or with `path` (e.g. the split stack's directory).

    A process counts when its command line or working directory, or those of one of its parents,
    mention `path`; each comes with the TCP ports it listens on. Processes inside the test bed's
    containers are not the controller's (other network namespace) and are left out. When the local
    stack runs on this machine at the same time (same ports), this tells the two apart:
    `assert controller_processes_using("/srv/cullis") == []`.
    """
    import psutil

    own_netns = os.readlink("/proc/self/ns/net")
    listening: dict[int, list[int]] = {}
    for port, infos in listening_ports_on_controller().items():
        for info in infos:
            listening.setdefault(info["pid"], []).append(port)
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cwd"]):
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != own_netns:
                continue
            chain = [proc, *proc.parents()]
            if not any(path in " ".join(p.cmdline()) or path in (p.cwd() or "") for p in chain):
                continue
        except (psutil.Error, OSError):
            continue
        found.append({"pid": proc.pid, "name": proc.info["name"], "cmdline": proc.info["cmdline"],
                      "listening": sorted(listening.get(proc.pid, []))})
    return found


def _ancestors(pid: int | None) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).parents()] if pid else []
    except psutil.Error:
        return []

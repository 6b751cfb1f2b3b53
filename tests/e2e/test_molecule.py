"""The molecule scenarios of molecule/ (default driver, localhost), on the shared e2e stack.

Each incident scenario injects its fault (prepare), recovers with the incident playbook
(converge), proves a second run changes nothing (idempotence) and checks the runbook's Verify
bullets (verify). They all act on this session's stack: the extra-vars file $CULLIS_MOLECULE_VARS
carries its directory and ports.

Cost (the suite has a 60-minute budget): every incident scenario runs in ONE `molecule test -s A
-s B ...` process (one molecule start-up, one report), and each test below reads its scenario's
steps from that run. The `default` scenario is the deploy itself: here its converge is the stack
fixture's deploy (the same playbooks/deploy.yml) and its idempotence the second deploy of
test_deploy.py (changed=0, also in check mode), so only its `verify` runs (`molecule verify -s
default`); `molecule test` runs all its steps on a machine without a stack.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO, ansible_env

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
INCIDENTS = [s for s in SCENARIOS if s != "default"]
MOLECULE = str(Path(sys.executable).parent / "molecule")


@pytest.fixture(scope="module")
def molecule_vars(stack, tmp_path_factory):
    path = tmp_path_factory.mktemp("molecule") / "stack-vars.yml"
    path.write_text(yaml.safe_dump({"cullis_stack_dir": str(stack.dir), **stack.ports, **stack.extra_vars}))
    return path


def molecule(molecule_vars, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, str, float]:
    env = ansible_env({"CULLIS_MOLECULE_VARS": str(molecule_vars), "MOLECULE_NO_LOG": "false"},
                      callback="ansible.builtin.default")
    env.pop("ANSIBLE_CONFIG", None)  # molecule.yml sets it relative to the scenario
    t0 = time.monotonic()
    # one pipe for both: molecule's step lines (stderr) stay in order with the playbooks' output
    proc = subprocess.run([MOLECULE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                          env=env, timeout=timeout)
    return proc, re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout), time.monotonic() - t0


def step_ran(out: str, scenario: str, step: str) -> bool:
    # the scenario recap: "name > step: Executed: Successful" ("➜" instead of ">" on a terminal)
    return re.search(rf"{scenario} (➜|>) {step}: Executed: Successful", out) is not None


def step_output(out: str, scenario: str, step: str) -> str:
    """What ansible-playbook printed during one step of one scenario."""
    head = rf"(?:\[{scenario} > {step}\]|{scenario} ➜ {step}:) "
    m = re.search(head + r"Executing(.*?)" + head + "Executed", out, re.S)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def incidents_run(molecule_vars):
    """Every incident scenario, one after the other, in one molecule process."""
    scenarios = [a for s in INCIDENTS for a in ("-s", s)]
    # molecule keeps "prepared" in its ephemeral state (~/.ansible/tmp/molecule.*) and would skip
    # prepare (the fault) on a second session: start from a clean state
    reset, out, _ = molecule(molecule_vars, "reset", *scenarios, timeout=300)
    assert reset.returncode == 0, out[-3000:]
    proc, out, seconds = molecule(molecule_vars, "test", *scenarios, timeout=2400)
    print(f"\nmolecule test of {len(INCIDENTS)} incident scenarios: {seconds:.0f} s, rc {proc.returncode}")
    return proc, out


def test_default_scenario_verifies_the_deployed_stack(molecule_vars):
    proc, out, _ = molecule(molecule_vars, "verify", "-s", "default", timeout=600)
    assert proc.returncode == 0, out[-6000:]
    assert step_ran(out, "default", "verify"), out[-3000:]


def test_every_incident_of_the_runbook_has_a_scenario():
    assert set(INCIDENTS) == {p.stem for p in (REPO / "playbooks" / "incidents").glob("*.yml")}


@pytest.mark.parametrize("scenario", INCIDENTS)
def test_incident_scenario(scenario, incidents_run):
    proc, out = incidents_run
    for step in ("prepare", "converge", "idempotence", "verify"):  # none may be skipped
        assert step_ran(out, scenario, step), (
            f"{scenario}: {step} did not run successfully (molecule rc {proc.returncode}; the scenarios run "
            f"in the order {INCIDENTS} and stop at the first failure):\n{out[-6000:]}")
    assert f"[{scenario} > prepare] Skipping" not in out, f"{scenario}: molecule skipped prepare (the fault)"
    # the fault was really there: the recovery changed something (and idempotence, nothing)
    changed = [int(n) for n in re.findall(r"changed=(\d+)", step_output(out, scenario, "converge"))]
    assert changed and sum(changed) > 0, f"{scenario}: the converge changed nothing, so prepare injected no fault"

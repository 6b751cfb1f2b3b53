"""A release an operator can install: the collection tarball, installed into an empty collections
path, runs the smoke test against the deployed stack. The source tree is not on the collection
search path (ANSIBLE_COLLECTIONS_PATH is the install dir only; the dependencies are the `ansible`
package's), so every cullis.broker module comes from the installed tarball.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.ansible import ansible_env, run_playbook
from testkit.release import build_tarball, install_tarball


def test_smoke_from_the_installed_tarball(stack, tmp_path):
    tarball = build_tarball(tmp_path / "dist")
    installed = install_tarball(tarball, tmp_path / "cols")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "cols")}

    doc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-j", "cullis.broker.agent_login"],
                         capture_output=True, text=True, env=ansible_env(env), cwd=tmp_path, check=True)
    filename = next(iter(json.loads(doc.stdout).values()))["doc"]["filename"]
    assert filename.startswith(str(installed)), f"agent_login resolved to {filename}, not the installed tarball"

    res = run_playbook("playbooks/smoke.yml", inventory=stack.inventory, extra_vars=stack.extra_vars or None, env=env)
    assert res.rc == 0, res.output[-4000:]
    verdict = res.task_results("Every phase passed")
    assert verdict and not verdict[0].get("failed"), res.output[-4000:]
    assert not [s for s in stack.secret_values() if s in res.output]

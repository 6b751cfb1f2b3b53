"""Run collection modules and playbooks from pytest, the way an operator runs them.

`run_module()` writes a one-task playbook and runs it with `ansible-playbook` and the json
callback, so a module goes through the real Ansible executor (argument_spec, no_log, check
mode). `run_playbook()` runs a repository playbook and returns the per-host stats. Both keep the
full stdout so tests can assert that no secret was printed. Both start ansible-playbook through
testkit/playbook_server.py (the same command, without paying Python's start and ansible's imports
each time).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testkit import playbook_server

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "collections"


def ansible_env(extra: dict | None = None, callback: str = "json") -> dict:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_STDOUT_CALLBACK": callback,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    })
    if os.environ.get("CULLIS_PROFILE_MODULE_RUNS"):  # module runs per task (testkit/module_runs.py)
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(Path(__file__).parent / "callback_plugins")
        env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(filter(None, [env.get("ANSIBLE_CALLBACKS_ENABLED"), "module_runs"]))
    if extra:
        env.update(extra)
    return env


@dataclass
class ModuleResult:
    rc: int
    stdout: str
    stderr: str
    result: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _json_from_stdout(stdout: str) -> dict:
    start = stdout.find("{")
    return json.loads(stdout[start:]) if start >= 0 else {}


def run_module(module: str, args: dict, *, check: bool = False, diff: bool = False, verbosity: int = 0,
               env: dict | None = None, timeout: float = 600) -> ModuleResult:
    """Run one module task on localhost; `module` may be short (`vault_unseal`) or a FQCN."""
    fqcn = module if "." in module else f"cullis.broker.{module}"
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable},
             "tasks": [{"name": "module under test", fqcn: args, "register": "out"}]}]
    with tempfile.TemporaryDirectory(prefix="cullis-mod-") as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(yaml.safe_dump(play))
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(pb)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        proc = playbook_server.run(argv, env=ansible_env(env), timeout=timeout)
    result: dict = {}
    try:
        data = _json_from_stdout(proc.stdout)
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pass
    return ModuleResult(proc.returncode, proc.stdout, proc.stderr, result)


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    stats: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def host_stats(self, host: str = "localhost") -> dict:
        return self.stats.get(host, {})

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())

    @property
    def failed(self) -> int:
        return sum(s.get("failures", 0) + s.get("unreachable", 0) for s in self.stats.values())

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def failures(self) -> list[str]:
        """'host | task | msg' of every failed or unreachable task result (json callback only)."""
        found = []
        for host, name, res in self._results():
            if res.get("failed") or res.get("unreachable"):
                msg = res.get("msg", "")
                found.append(f"{host} | {name} | {json.dumps(msg) if not isinstance(msg, str) else msg}")
        return found

    def changes(self) -> list[str]:
        """'host | task' of every result that reported changed (json callback only): what a rerun
        that should report changed=0 did."""
        return [f"{host} | {name}" for host, name, res in self._results() if res.get("changed")]

    def _results(self):
        """(host, task name, result) of every task result, in order (json callback only)."""
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for host, res in task.get("hosts", {}).items():
                    yield host, task.get("task", {}).get("name"), res

    def explain(self, lines: int = 40) -> str:
        """For an assertion message: the failed tasks' messages, then the end of the output."""
        return "\n".join(["failed tasks:", *self.failures(), "--- output tail:",
                           *self.output.splitlines()[-lines:]])

    def task_results(self, name: str, host: str = "localhost") -> list[dict]:
        """Results of every task with this name (json callback only). A task of a role is reported
        as "<role> : <name>" (an incident playbook's work lives in role cullis.broker.incident)."""
        found = []
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                task_name = task.get("task", {}).get("name") or ""
                if (task_name == name or task_name.endswith(" : " + name)) and host in task.get("hosts", {}):
                    found.append(task["hosts"][host])
        return found


def run_playbook(playbook: str | Path, *, inventory: str | Path | None = None, extra_vars: dict | None = None,
                 check: bool = False, diff: bool = False, verbosity: int = 0, callback: str = "json",
                 env: dict | None = None, timeout: float = 1800) -> PlaybookResult:
    """Run a playbook (path relative to the repo root allowed) from the repo root."""
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(REPO / playbook)]
    if inventory:
        argv += ["-i", str(REPO / inventory)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if verbosity:
        argv.append("-" + "v" * verbosity)
    proc = playbook_server.run(argv, env=ansible_env(env, callback), cwd=str(REPO), timeout=timeout)
    stats, data = {}, {}
    if callback == "json":
        try:
            data = _json_from_stdout(proc.stdout)
            stats = data.get("stats", {})
        except ValueError:
            pass
    else:
        stats = _parse_recap(proc.stdout)
    return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, stats, data)


def _parse_recap(stdout: str) -> dict:
    stats = {}
    in_recap = False
    for line in stdout.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, rest = line.partition(":")
            stats[host.strip()] = {k: int(v) for k, v in (p.split("=") for p in rest.split())}
    return stats

# Test kit only: counts module runs per task, for finding where make test's CPU goes (a module run is
# one Python process on a host or the controller: ~0.16-0.36 CPU-s each here, and make test's time is
# mostly their number). Enabled by testkit.ansible.ansible_env when CULLIS_PROFILE_MODULE_RUNS names a
# file: one JSON line per playbook run, {"playbook", "tasks": {"<role : task> (<action>)": runs}}.
# Summarise with `python -m testkit.module_runs FILE`.
from __future__ import annotations

import json
import os
from collections import Counter

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: module_runs
type: aggregate
short_description: count module runs per task (test kit)
description: Appends one JSON line per playbook run to the file named by CULLIS_PROFILE_MODULE_RUNS.
requirements: [CULLIS_PROFILE_MODULE_RUNS in the environment]
"""

# Actions that run on the controller without starting a module process.
NO_PROCESS = {"set_fact", "debug", "assert", "fail", "meta", "include_tasks", "import_tasks", "include_role",
              "import_role", "include_vars", "add_host", "group_by", "set_stats", "pause", "validate_argument_spec",
              "ansible.builtin.set_fact", "ansible.builtin.debug", "ansible.builtin.assert", "ansible.builtin.fail",
              "ansible.builtin.meta", "ansible.builtin.include_tasks", "ansible.builtin.import_tasks",
              "ansible.builtin.include_role", "ansible.builtin.import_role", "ansible.builtin.include_vars",
              "ansible.builtin.add_host", "ansible.builtin.group_by", "ansible.builtin.set_stats",
              "ansible.builtin.pause", "ansible.builtin.validate_argument_spec"}


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "module_runs"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.path = os.environ.get("CULLIS_PROFILE_MODULE_RUNS")
        self.runs: Counter = Counter()
        self.playbook = ""

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.relpath(playbook._file_name)

    def _count(self, result):
        task = result._task
        if task.action in NO_PROCESS:
            return
        self.runs[f"{task.get_name()} ({task.action})"] += 1

    def _on_result(self, result, *args, **kwargs):
        if not result._result.get("results"):  # a loop's items were counted one by one
            self._count(result)

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_unreachable = _on_result
    # every attempt of an `until` loop but the last is a module run too (the last is the result)
    v2_runner_item_on_ok = v2_runner_item_on_failed = v2_runner_retry = _count

    def v2_playbook_on_stats(self, stats):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"playbook": self.playbook, "tasks": dict(self.runs)}) + "\n")

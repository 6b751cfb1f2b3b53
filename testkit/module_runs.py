"""Summary of a CULLIS_PROFILE_MODULE_RUNS file (testkit/callback_plugins/module_runs.py): module runs
per playbook and per task, the largest first.

    CULLIS_PROFILE_MODULE_RUNS=/tmp/runs.jsonl make test
    python -m testkit.module_runs /tmp/runs.jsonl [top]
"""
from __future__ import annotations

import json
import sys
from collections import Counter


def summarise(path: str, top: int = 40) -> str:
    by_playbook: Counter = Counter()
    playbook_runs: Counter = Counter()
    by_task: Counter = Counter()
    for line in open(path):
        rec = json.loads(line)
        n = sum(rec["tasks"].values())
        by_playbook[rec["playbook"]] += n
        playbook_runs[rec["playbook"]] += 1
        for task, runs in rec["tasks"].items():
            by_task[task] += runs
    total = sum(by_playbook.values())
    out = [f"{total} module runs in {sum(playbook_runs.values())} playbook runs", "", "per playbook:"]
    out += [f"{n:7d}  {pb} ({playbook_runs[pb]} runs)" for pb, n in by_playbook.most_common(top)]
    out += ["", "per task:"]
    out += [f"{n:7d}  {task}" for task, n in by_task.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))

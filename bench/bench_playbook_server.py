#!/usr/bin/env python3
"""Benchmark: the test kit's ansible-playbook runs, plain versus through testkit/playbook_server.py.

    .venv/bin/python bench/bench_playbook_server.py            # 20 runs each
    .venv/bin/python bench/bench_playbook_server.py --runs 50

The same one-task playbook (a collection module on localhost, as every run_module() of the
integration tests runs it) is run `--runs` times as a plain `ansible-playbook` process and
`--runs` times forked by the playbook server. Prints CPU seconds (the runs with their workers and
module processes) and wall seconds per run for both, and the ratios, and checks that both print
the same result. Run by hand; not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit import playbook_server  # noqa: E402
from testkit.ansible import ansible_env  # noqa: E402

PLAY = """
- hosts: localhost
  gather_facts: false
  connection: local
  vars: {ansible_python_interpreter: %s}
  tasks:
    - name: module under test
      cullis.broker.tls_check:
        paths: [{path: %s}]
        fail_on: never
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(run, runs: int) -> tuple[float, float, dict]:
    cpu0, served0, t0 = children_cpu(), playbook_server.served_cpu_seconds, time.monotonic()
    for _ in range(runs):
        proc = run()
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cpu = children_cpu() - cpu0 + playbook_server.served_cpu_seconds - served0
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return cpu / runs, (time.monotonic() - t0) / runs, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cullis-bench-pbserver-") as tmp:
        cert = Path(tmp) / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(Path(tmp) / "key.pem"), "-out", str(cert), "-days", "30", "-subj", "/CN=bench"],
                       check=True, capture_output=True)
        play = Path(tmp) / "play.yml"
        play.write_text(PLAY % (sys.executable, cert))
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play)]
        env = ansible_env()
        plain = measure(lambda: subprocess.run(argv, capture_output=True, text=True, env=env), args.runs)
        playbook_server.run(argv, env=env)  # the server's own start (one import of ansible) is not a run
        served = measure(lambda: playbook_server.run(argv, env=env), args.runs)
        playbook_server.stop_all()
    assert plain[2] == served[2], "the two ways printed different results"
    print(f"{args.runs} runs each of a one-task playbook (cullis.broker.tls_check)")
    print(f"  plain ansible-playbook : {plain[0]:.2f} CPU-s, {plain[1]:.2f} s wall per run")
    print(f"  playbook server        : {served[0]:.2f} CPU-s, {served[1]:.2f} s wall per run")
    print(f"  ratio plain/server     : CPU {plain[0] / served[0]:.2f}x, wall {plain[1] / served[1]:.2f}x")


if __name__ == "__main__":
    playbook_server.enabled = True
    main()

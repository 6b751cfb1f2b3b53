#!/usr/bin/env python3
"""Benchmark: cullis.broker.tls_check over N local TLS endpoints in ONE task, versus a loop of
community.crypto.get_certificate over the same endpoints (the usual Ansible way).

    .venv/bin/python bench/bench_tls_check.py            # 500 endpoints
    .venv/bin/python bench/bench_tls_check.py --count 100 --max-workers 16

Both run through real `ansible-playbook` on localhost; the endpoints are loopback TLS listeners
(testkit.tls_server) presenting certificates from a test CA. Prints both wall times and the ratio.
Run by hand (not part of the test suite: timings belong here, not in assertions).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.ansible import ansible_env, run_module  # noqa: E402
from testkit.pki import CA  # noqa: E402
from testkit.tls_server import TLSServers  # noqa: E402


def run_loop(ports: list[int]) -> tuple[float, int]:
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable, "ports": ports},
             "tasks": [{"name": "get_certificate loop",
                        "community.crypto.get_certificate": {"host": "127.0.0.1", "port": "{{ item }}"},
                        "loop": "{{ ports }}", "register": "certs"},
                       {"name": "count", "ansible.builtin.debug": {
                           "msg": "{{ certs.results | selectattr('not_after', 'defined') | list | length }}"}}]}]
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "loop.yml"
        pb.write_text(yaml.safe_dump(play))
        start = time.monotonic()
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(pb)],
                              capture_output=True, text=True, env=ansible_env(callback="json"))
        elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("get_certificate loop failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    return elapsed, len(ports)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--max-workers", type=int, default=32)
    args = ap.parse_args()

    ca = CA.create("Bench CA")
    with tempfile.TemporaryDirectory() as tmp, TLSServers(workers=32) as servers:
        ca_file = Path(tmp) / "ca.pem"
        ca_file.write_bytes(ca.cert_pem)
        # A handful of distinct certificates, shared round-robin (issuing 500 keys adds nothing).
        issued = [ca.server_cert("127.0.0.1", "localhost", days=d) for d in (20, 90, 200, 365)]
        ports = [servers.serve_issued(issued[i % len(issued)]) for i in range(args.count)]

        start = time.monotonic()
        res = run_module("tls_check", {
            "endpoints": [{"host": "127.0.0.1", "port": p} for p in ports],
            "ca_path": str(ca_file), "fail_on": "never", "max_workers": args.max_workers})
        t_check = time.monotonic() - start
        if res.failed or res.result["summary"]["total"] != args.count or res.result["summary"]["unknown"]:
            raise SystemExit("tls_check failed: " + res.output[-3000:])
        summary = res.result["summary"]

        t_loop, n = run_loop(ports)

    print(f"endpoints:                         {args.count}")
    print(f"tls_check (1 task, {args.max_workers} workers):     {t_check:8.1f} s   "
          f"(ok={summary['ok']} warn={summary['warn']} critical={summary['critical']}, with chain+host checks)")
    print(f"get_certificate loop ({n} items):  {t_loop:8.1f} s   (no thresholds, no chain/host check)")
    print(f"ratio loop / tls_check:            {t_loop / t_check:8.1f} x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark: revoke 5,000 certificates through cullis.broker.cert_revoke versus the runbook's
sequential curl loop (runbook section 6, step 2), against the same real broker.

    .venv/bin/python bench/bench_cert_revoke.py                 # 5,000 serials each
    .venv/bin/python bench/bench_cert_revoke.py --count 1000 --workers 16

Starts its own PostgreSQL, Redis, OpenBao and broker_src broker (testkit), creates two orgs and
5,000 random serials for each (the revoke API does not need the certificates), then times:
  curl     the runbook loop: one `curl -X POST .../v1/admin/certs/revoke` process per serial, in
           sequence, from bash (new process and TCP connection each time);
  module   one `ansible-playbook` task running cullis.broker.cert_revoke with the 5,000 serials
           (Ansible start-up, org check, revoked-list read and concurrent keep-alive requests included).
Checks afterwards that each org has exactly its 5,000 serials on the revoked list, prints both
times, the rates and the curl/module ratio. Run by hand; not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.ansible import run_module  # noqa: E402
from testkit.broker import BrokerProcess  # noqa: E402
from testkit.broker_orgs import admin_client, new_org_id  # noqa: E402
from testkit.pki import CA  # noqa: E402
from testkit.services import OpenBaoServer, PostgresServer, RedisServer  # noqa: E402

# The runbook's loop, with the serials from a file instead of the (broken) listing.
CURL_LOOP = r"""
for serial in $(cat "$SERIALS"); do
    curl -s -o /dev/null -X POST -H "x-admin-secret: $ADMIN" -H "Content-Type: application/json" \
         -d "{\"serial_hex\":\"$serial\",\"org_id\":\"$ORG\",\"reason\":\"compromise\"}" \
         "$BROKER/v1/admin/certs/revoke"
done
"""


def serials(n: int) -> list[str]:
    return [format(secrets.randbits(159) | (1 << 158), "x") for _ in range(n)]


def create_org(broker, org_id: str) -> None:
    req = urllib.request.Request(broker.url + "/v1/registry/orgs", method="POST",
                                 data=json.dumps({"org_id": org_id, "display_name": org_id,
                                                  "secret": secrets.token_urlsafe(16), "metadata": {}}).encode(),
                                 headers={"x-admin-secret": broker.admin_secret, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.status


def revoked_count(broker, org_id: str) -> set[str]:
    resp = admin_client(broker).admin_get("/v1/admin/certs/revoked", query={"org_id": org_id})
    return {r["serial_hex"] for r in resp.json()}


def via_curl(broker, org_id: str, batch: list[str], workdir: Path) -> float:
    path = workdir / "serials.txt"
    path.write_text("\n".join(batch) + "\n")
    env = dict(os.environ, SERIALS=str(path), ADMIN=broker.admin_secret, ORG=org_id, BROKER=broker.url)
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", CURL_LOOP], env=env, check=True)
    return time.perf_counter() - t0


def via_module(broker, org_id: str, batch: list[str], workers: int) -> float:
    t0 = time.perf_counter()
    res = run_module("cert_revoke", {"broker_url": broker.url, "admin_secret": broker.admin_secret,
                                     "org_id": org_id, "serials": batch, "reason": "compromise",
                                     "max_workers": workers})
    elapsed = time.perf_counter() - t0
    assert res.rc == 0 and not res.failed, res.result.get("msg") or res.output[-2000:]
    assert res.result["counts"]["revoked"] == len(batch), res.result["counts"]
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    pg, redis, bao, broker = PostgresServer().start(), RedisServer().start(), None, None
    try:
        bao = OpenBaoServer(ca=CA.create("bench CA")).start().initialize()
        broker = BrokerProcess(pg, redis, bao)
        org_curl, org_mod = new_org_id("bench-curl"), new_org_id("bench-module")
        create_org(broker, org_curl)
        create_org(broker, org_mod)
        batch_curl, batch_mod = serials(args.count), serials(args.count)

        t_curl = via_curl(broker, org_curl, batch_curl, workdir)
        t_mod = via_module(broker, org_mod, batch_mod, args.workers)
        assert revoked_count(broker, org_curl) == set(batch_curl), "the curl loop missed serials"
        assert revoked_count(broker, org_mod) == set(batch_mod), "cert_revoke missed serials"
    finally:
        for server in (broker, bao, redis, pg):
            if server is not None:
                server.cleanup()
    print(f"revoke {args.count} certificates on one broker_src broker (1 uvicorn worker, real PG/Redis/OpenBao)")
    print(f"  runbook curl loop (sequential)        : {t_curl:8.2f} s  ({args.count / t_curl:7.1f} /s)")
    print(f"  cert_revoke via ansible-playbook ({args.workers:>2}w): {t_mod:8.2f} s  ({args.count / t_mod:7.1f} /s)")
    print(f"ratio curl / cert_revoke = {t_curl / t_mod:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Mean time to recovery of every incident playbook, next to a bare restart by hand.

    .venv/bin/python bench/mttr.py                       # deploys a throw-away stack on free ports
    .venv/bin/python bench/mttr.py --inventory DIR       # an already deployed stack (its inventory dir)
    .venv/bin/python bench/mttr.py --only broker_down redis_down

For each playbook in playbooks/incidents/ that has a fault injector below: inject the fault, run the
playbook, and take the wall time from the end of the injection until the playbook exits 0 - that
includes its confirm and verify steps (/health, /readyz, one agent login), i.e. time to VERIFIED
recovery. Then inject the same fault again and time the bare operator fix - restart the affected
service through the runtime (plus the minimal manual step the runbook needs, e.g. unseal) - until
/readyz answers 200 with every component ok (which verifies less). One table at the end.
Playbooks without an injector are listed with the reason. Run by hand; not part of `make test`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "collections"))

from testkit.ansible import run_playbook  # noqa: E402
from testkit.process import wait_for  # noqa: E402
from ansible_collections.cullis.broker.plugins.module_utils._runtime import (  # noqa: E402
    ProcessRuntime, RuntimeErrorCullis)


def _e2e():
    spec = importlib.util.spec_from_file_location("cullis_e2e_conftest", REPO / "tests" / "e2e" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


class Bench:
    def __init__(self, stack):
        self.stack = stack
        self.rt = ProcessRuntime(str(stack.dir), timeout=120)

    # ---- probes ---------------------------------------------------------------------------------
    def http(self, path, headers=None, timeout=5):
        ctx = ssl.create_default_context(cafile=str(self.stack.ca_path))
        req = urllib.request.Request(self.stack.public_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return None, b""

    def ready(self):
        status, body = self.http("/readyz")
        try:
            checks = json.loads(body).get("checks", {})
        except ValueError:
            return False
        return status == 200 and all(v == "ok" for v in checks.values()) and len(checks) == 3

    def admin_ok(self):
        return self.http("/v1/registry/orgs", {"x-admin-secret": self.stack.env["ADMIN_SECRET"]})[0] == 200

    def wait_ready(self, timeout=300, admin=False):
        wait_for(lambda: self.ready() and (not admin or self.admin_ok()), timeout, "stack ready")

    # ---- helpers --------------------------------------------------------------------------------
    def set_env(self, key, value):
        text = self.stack.env_file.read_text()
        self.stack.env_file.write_text(re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", text))

    def restart_quietly(self, name):
        try:
            self.rt.restart(name)
        except RuntimeErrorCullis:
            pass

    def vault(self, method, path, body=None, token=None):
        ctx = ssl.create_default_context(cafile=str(self.stack.ca_path))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.stack.vault_addr + path, data=data, method=method,
                                     headers={"X-Vault-Token": token or self.stack.vault_keys["root_token"]})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else {}

    # ---- faults (inject, bare fix) ------------------------------------------------------------------
    def inject_broker_down(self):
        os.kill(self.rt.status("broker")["pid"], signal.SIGKILL)
        wait_for(lambda: not self.rt.status("broker")["running"], 30, "broker dead")

    def bare_broker_down(self):
        self.rt.start("broker")

    def inject_redis_down(self):
        self.rt.stop("redis")

    def bare_redis_down(self):
        self.rt.start("redis")

    def inject_admin_lockout(self):
        self.set_env("ADMIN_SECRET", "lost" + secrets.token_hex(16))

    def bare_admin_lockout(self):
        # the runbook's recipe b): new secret in .env, restart the broker
        self.set_env("ADMIN_SECRET", secrets.token_hex(20))
        self.rt.restart("broker")

    def inject_vault_sealed(self):
        self.vault("PUT", "/v1/sys/seal")
        self.restart_quietly("broker")  # the fault becomes real at the next broker start

    def bare_vault_sealed(self):
        for key in self.stack.vault_keys["unseal_keys_b64"][:3]:
            self.vault("PUT", "/v1/sys/unseal", {"key": key})
        self.rt.restart("broker")

    def inject_vault_token_expired(self):
        self.vault("POST", "/v1/auth/token/revoke", {"token": self.stack.env["VAULT_TOKEN"]})
        self.restart_quietly("broker")

    def bare_vault_token_expired(self):
        tok = self.vault("POST", "/v1/auth/token/create-orphan",
                         {"policies": ["broker-policy"], "ttl": "720h", "renewable": True})["auth"]["client_token"]
        self.set_env("VAULT_TOKEN", tok)
        self.rt.restart("broker")

    def inject_tls_expired(self):
        """The public certificate inside its critical window: one of the stack's own CA (trusted,
        right host) with 10 days left, served by nginx (what the hands-off e2e test injects too)."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from testkit.pki import CA
        tls = self.stack.dir / "tls"
        ca = CA(key=load_pem_private_key((tls / "ca-key.pem").read_bytes(), None),
                cert=x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes()))
        short = ca.server_cert("127.0.0.1", "localhost", days=10)
        (tls / "nginx.pem").write_bytes(short.cert_pem)
        (tls / "nginx-key.pem").write_bytes(short.key_pem)
        self.rt.reload("nginx")

    def inject_postgres_down(self):
        self.rt.stop("postgres")

    def bare_postgres_down(self):
        self.rt.start("postgres")
        self.rt.restart("broker")


NO_BARE_FIX = {
    "tls_expired": "no bare restart fixes a certificate: re-issuing it is the playbook's work",
}
NOT_INJECTED = {
    "org_compromise": "containment of an org, not an outage: no service to restart",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inventory", help="inventory dir of an already deployed stack (else a throw-away one)")
    ap.add_argument("--only", nargs="*", help="incident names to run")
    ap.add_argument("--json", help="also write the rows to this JSON file (bench/mttr_handsoff.py reads it)")
    args = ap.parse_args()
    e2e = _e2e()
    base = None
    if args.inventory:
        inv = Path(args.inventory)
        vars_ = __import__("yaml").safe_load((inv / "group_vars" / "all" / "stack.yml").read_text())
        stack = e2e.Stack(dir=Path(vars_["cullis_stack_dir"]), inventory=inv,
                          ports={k: vars_[k] for k in e2e.PORT_VARS}, vars={})
    else:
        base = Path(tempfile.mkdtemp(prefix="cullis-mttr-"))
        base.chmod(0o755)
        ports = dict(zip(e2e.PORT_VARS, e2e.distinct_free_ports(len(e2e.PORT_VARS))))
        inv = e2e.write_inventory(base, base / "stack", ports)
        stack = e2e.Stack(dir=base / "stack", inventory=inv, ports=ports, vars={})
        if os.environ.get("CULLIS_E2E_BROKER_VENV"):
            stack.extra_vars["cullis_broker_venv"] = os.environ["CULLIS_E2E_BROKER_VENV"]
        print(f"deploying a throw-away stack in {stack.dir} ...", flush=True)
        t0 = time.monotonic()
        res = stack.run("playbooks/deploy.yml")
        if res.rc != 0:
            print(res.output[-3000:])
            sys.exit("deploy failed")
        print(f"deployed in {time.monotonic() - t0:.0f} s", flush=True)
    bench = Bench(stack)
    rows = []
    try:
        bench.wait_ready()
        # warm-up: the verification's demo org is onboarded once, not inside the first measurement
        stack.run("playbooks/incidents/broker_down.yml")
        for pb in sorted((REPO / "playbooks" / "incidents").glob("*.yml")):
            name = pb.stem
            if args.only and name not in args.only:
                continue
            inject = getattr(bench, "inject_" + name, None)
            if inject is None:
                rows.append((name, None, None, NOT_INJECTED.get(name, "no fault injector in bench/mttr.py")))
                continue
            print(f"-- {name}: inject, recover with {pb.relative_to(REPO)}", flush=True)
            inject()
            t0 = time.monotonic()
            res = stack.run(pb.relative_to(REPO))
            t_playbook = time.monotonic() - t0
            note = "verified" if res.rc == 0 else f"playbook FAILED rc={res.rc}"
            if res.rc != 0:
                print(res.output[-2500:])
            bench.wait_ready(admin=True)
            if name in NO_BARE_FIX:
                rows.append((name, t_playbook, None, f"{note}; {NO_BARE_FIX[name]}"))
                continue
            print(f"-- {name}: inject, bare restart by hand", flush=True)
            inject()
            t0 = time.monotonic()
            try:
                getattr(bench, "bare_" + name)()
                bench.wait_ready(admin=(name == "admin_lockout"))
                t_bare = time.monotonic() - t0
            except Exception as exc:  # noqa: BLE001 - report, then restore with the playbook
                t_bare = None
                note += f"; bare fix failed: {exc}"
            if not (bench.ready() and bench.admin_ok()):
                stack.run(pb.relative_to(REPO))  # leave the stack healthy for the next row
            rows.append((name, t_playbook, t_bare, note))
    finally:
        if base is not None and os.environ.get("CULLIS_E2E_KEEP") != "1":
            pid = stack.supervisord_pid()
            stack.run("playbooks/down.yml", extra_vars={"purge": True}, timeout=300)
            e2e._stop_by_pid(pid)
            shutil.rmtree(base, ignore_errors=True)

    if args.json:
        Path(args.json).write_text(json.dumps({name: {"playbook_s": tp, "bare_s": tb, "note": note}
                                               for name, tp, tb, note in rows}, indent=2))
    print()
    print(f"{'incident playbook':<22} {'verified recovery (s)':>22} {'bare restart (s)':>17} {'overhead':>9}  note")
    print("-" * 100)
    for name, tp, tb, note in rows:
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        over = f"{tp / tb:.1f}x" if tp and tb else "-"
        print(f"{name:<22} {fmt(tp):>22} {fmt(tb):>17} {over:>9}  {note}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# Managed by cullis.broker.monitoring. A Prometheus exporter run on each broker host for what the
# broker does not check by itself. It reads the stack's .env afresh each time (rotated secrets are
# seen at once); no secret ever leaves the host (not in the metrics, not in a log).
#
# 1. The broker's Vault token (the broker never renews or looks it up, broker-api.md section 2: once
#    it expires the broker fails at its next start): VAULT_TOKEN looked up with itself
#    (auth/token/lookup-self at VAULT_ADDR) at most once per --cache-seconds.
#      cullis_vault_token_lookup_success  1 Vault answered (valid or refused); 0 unreachable/sealed
#      cullis_vault_token_valid           1 valid; 0 refused (expired, revoked, missing). Only when Vault answered
#      cullis_vault_token_expires         1 the token has an expiry; 0 it has none
#      cullis_vault_token_ttl_seconds     remaining TTL (a valid token that expires)
#      cullis_vault_token_renewable       1/0
# 2. The audit hash chains, verified every --audit-verify-seconds (0 = never) by the broker itself
#    (GET /v1/admin/audit/verify on its own listener, with ADMIN_SECRET): a broken chain makes the
#    broker count cullis_audit_chain_verify_failed_total, which alert AuditChainVerificationFailed
#    watches. Brokers without that endpoint (404): cullis_audit_chain_verify_supported 0.
#      cullis_audit_chain_verify_ok                     1 the last verification passed, 0 it failed
#      cullis_audit_chain_verify_last_run_timestamp_seconds
#      cullis_audit_chain_verify_supported              1/0 (0 also: the broker refused or did not answer)
import argparse
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def read_env(path):
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    values[key.strip()] = value.strip().strip("'\"")
    except OSError:
        pass
    return values


def token_metrics(args):
    env = read_env(args.env_file)
    token, addr = env.get("VAULT_TOKEN", ""), (env.get("VAULT_ADDR") or args.vault_addr).rstrip("/")
    data, answered = None, True  # no token at all: as bad as a refused one
    if token:
        req = urllib.request.Request(addr + "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})
        try:
            ctx = ssl.create_default_context(cafile=args.ca_file or None)
            with urllib.request.urlopen(req, context=ctx, timeout=args.timeout) as resp:
                data = json.loads(resp.read())["data"]
        except urllib.error.HTTPError as exc:
            answered = exc.code in (400, 401, 403)  # refused: the token is bad (503 = sealed)
        except (OSError, ValueError, KeyError):
            answered = False
    lines = ["cullis_vault_token_lookup_success %d" % answered]
    if answered:
        lines.append("cullis_vault_token_valid %d" % (data is not None))
    if data is not None:
        ttl = int(data.get("ttl") or 0)
        expires = bool(data.get("expire_time")) or ttl > 0
        lines.append("cullis_vault_token_expires %d" % expires)
        lines.append("cullis_vault_token_renewable %d" % bool(data.get("renewable")))
        if expires:
            lines.append("cullis_vault_token_ttl_seconds %d" % ttl)
    return lines


def audit_loop(args, state, lock):
    while True:
        req = urllib.request.Request(args.broker_url.rstrip("/") + "/v1/admin/audit/verify",
                                     headers={"x-admin-secret": read_env(args.env_file).get("ADMIN_SECRET", "")})
        result = {"supported": 0}
        try:
            with urllib.request.urlopen(req, timeout=max(args.timeout, 60)) as resp:
                result = {"supported": 1, "ok": int(bool(json.loads(resp.read()).get("ok")))}
        except (OSError, ValueError):  # 404 (no such endpoint), 403 (secret), broker down
            pass
        with lock:
            state.update(result, at=time.time())
        time.sleep(args.audit_verify_seconds)


def main():
    ap = argparse.ArgumentParser(description="Prometheus exporter of a Cullis broker host's Vault token and audit chains")
    ap.add_argument("--env-file", required=True)
    ap.add_argument("--vault-addr", required=True, help="used when the .env has no VAULT_ADDR")
    ap.add_argument("--ca-file", default="")
    ap.add_argument("--broker-url", required=True, help="the broker's own listener, e.g. http://127.0.0.1:8000")
    ap.add_argument("--listen", default="127.0.0.1:9199")
    ap.add_argument("--cache-seconds", type=float, default=30.0)
    ap.add_argument("--audit-verify-seconds", type=float, default=900.0)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    cache = {"at": 0.0, "lines": []}
    audit = {}
    lock = threading.Lock()
    if args.audit_verify_seconds > 0:
        threading.Thread(target=audit_loop, args=(args, audit, lock), daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            with lock:
                if time.monotonic() - cache["at"] >= args.cache_seconds or not cache["lines"]:
                    cache["lines"] = token_metrics(args)
                    cache["at"] = time.monotonic()
                lines = list(cache["lines"])
                if audit:
                    lines.append("cullis_audit_chain_verify_supported %d" % audit["supported"])
                    lines.append("cullis_audit_chain_verify_last_run_timestamp_seconds %.0f" % audit["at"])
                    if "ok" in audit:
                        lines.append("cullis_audit_chain_verify_ok %d" % audit["ok"])
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # no access log
            pass

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()

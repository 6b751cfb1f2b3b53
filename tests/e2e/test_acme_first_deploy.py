"""First deploy in ACME mode (issue 19, "First deploy in every TLS mode"; runbook section 5, ACME).

A fresh stack is deployed ONCE with cullis_tls_mode=acme against Debian's Pebble on loopback,
whose VA validates HTTP-01 for real on the stack's nginx HTTP port. That single run must end with
Pebble's certificate served on the public URL (before issue 19 a local placeholder stayed until
the next run), the challenge answered by nginx and cleaned up; the rerun reports changed=0 and
serves the same certificate. The deploy itself already checks /readyz through the public URL
verified with Pebble's root (cullis_tls_public_ca_path), so a placeholder would fail it.

The stack is conftest's `quirks_stack`, deployed in ACME mode for this test and serving
test_quirks.py too: its broker's quirks do not touch TLS, and a second first deploy would cost
about 4 CPU-minutes. The rerun runs after whatever the other tests of the session did to that
stack (each leaves it healthy), so changed=0 also says their recoveries left it as declared.
"""
from __future__ import annotations

import hashlib
import json
import socket
import ssl
import urllib.error
import urllib.request

import pytest

from testkit.scenarios import named, triage

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def acme_stack(quirks_stack):
    return quirks_stack, quirks_stack.pebble, quirks_stack.pebble_root


def changed_tasks(result) -> list[str]:
    return [task["task"]["name"] for play in result.data.get("plays", []) for task in play.get("tasks", [])
            if any(h.get("changed") for h in task.get("hosts", {}).values())]


def served_cert(stack) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", stack.ports["cullis_nginx_port"]), timeout=10)) as s:
        return s.getpeercert(binary_form=True)


def verified_health(stack, ca_file) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))  # chain, host name (IP 127.0.0.1) and dates
    with urllib.request.urlopen(stack.public_url + "/health", context=ctx, timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
        return resp.status


def test_first_acme_deploy_serves_the_acme_certificate_and_rerun_changes_nothing(acme_stack):
    stack, pebble, root = acme_stack
    first = stack.deploy_result
    # served after ONE run: verifies with Pebble's root, not with the stack's local CA
    assert verified_health(stack, root) == 200
    with pytest.raises(urllib.error.URLError) as local:
        verified_health(stack, stack.ca_path)
    assert isinstance(local.value.reason, ssl.SSLCertVerificationError)
    assert served_cert(stack) != (stack.dir / "tls" / "nginx-local.pem").read_bytes()
    # the order was placed by the nginx role once nginx answered HTTP-01, and nginx answered it
    issued = [r for r in first.task_results("ACME validation and certificate") if r.get("changed")]
    assert len(issued) == 1, first.output[-3000:]
    reloaded = first.task_results("Reload nginx for its first ACME certificate")
    assert reloaded and reloaded[0].get("changed"), first.output[-3000:]
    access = (stack.dir / "logs" / "nginx-access.log").read_text()
    assert any("/.well-known/acme-challenge/" in line and '" 200 ' in line for line in access.splitlines()), \
        access[-2000:] + pebble.log()
    assert not list((stack.dir / "acme-challenge").iterdir()), "HTTP-01 responses left behind"
    for secret in stack.secret_values():
        assert secret not in first.output
    fingerprint = hashlib.sha256(served_cert(stack)).hexdigest()

    again = stack.run("playbooks/deploy.yml")
    assert again.rc == 0, again.output[-3000:]
    assert again.changed == 0, changed_tasks(again)
    assert hashlib.sha256(served_cert(stack)).hexdigest() == fingerprint
    assert verified_health(stack, root) == 200


def test_triage_and_smoke_verify_the_public_url_with_the_acme_root(acme_stack):
    """From the controller, triage, the incident playbooks and the smoke test verify the public URL
    with cullis_tls_public_ca_path in ACME mode, never with the stack's own CA: a healthy ACME stack
    has no incident (triage named tls_expired, "chain invalid", before this was fixed) and passes
    the smoke test."""
    stack, _pebble, _root = acme_stack
    _res, report = triage(stack)
    assert named(report) == [], report["before"]["incidents"]
    tls = report["before"]["snapshot"]["tls"]
    assert tls["chain_valid"] is True and tls["status"] == "ok", tls
    smoke = stack.run("playbooks/smoke.yml")
    assert smoke.rc == 0, smoke.failures() or smoke.output[-3000:]

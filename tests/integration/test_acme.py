"""ACME issuance and renewal (role cullis.broker.tls_acme) against Debian's Pebble on loopback.

Runbook section 5 (TLS cert expired), ACME recovery: "re-runs certbot" - here the role issues the
nginx certificate through an ACME directory with real HTTP-01 validation (Pebble's VA fetches the
token from a loopback HTTP server laid out like nginx's challenge location), then renews it.
"""
from __future__ import annotations

import pytest
import yaml

from testkit.ansible import run_module, run_playbook
from testkit.pebble import ChallengeServer, PebbleServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    base = tmp_path_factory.mktemp("acme")
    stack = base / "stack"
    challenge_dir = stack / "acme-challenge"
    challenge_dir.mkdir(parents=True)
    http = ChallengeServer(challenge_dir).start()
    pebble = PebbleServer(http_port=http.port).start()
    root = base / "pebble-root.pem"
    root.write_bytes(pebble.issuer_root_pem())
    yield base, stack, pebble, http, root
    pebble.cleanup()
    http.stop()


def _play(base, stack, pebble, root, **extra):
    variables = {
        "cullis_stack_dir": str(stack), "cullis_public_host": "127.0.0.1",
        "cullis_tls_acme_directory": pebble.directory_url,
        "cullis_tls_acme_directory_ca": str(pebble.api_ca_path),
        "cullis_tls_public_ca_path": str(root),
        "cullis_tls_acme_email": "ops@example.com",
    }
    variables.update(extra)
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": variables,
             "tasks": [{"name": "ACME", "ansible.builtin.include_role": {"name": "cullis.broker.tls_acme"}}]}]
    path = base / "acme-play.yml"
    path.write_text(yaml.safe_dump(play))
    return run_playbook(path, inventory=None, extra_vars={"ansible_python_interpreter": __import__("sys").executable})


def _check(stack, root):
    res = run_module("tls_check", {"paths": [{"path": str(stack / "tls" / "nginx.pem"), "server_name": "127.0.0.1"}],
                                   "ca_path": str(root), "fail_on": "never"})
    assert not res.failed, res.output
    return res.result["targets"][0]


def test_issue_with_http01_then_no_op_then_renew(acme):
    base, stack, pebble, http, root = acme
    first = _play(base, stack, pebble, root)
    assert first.rc == 0, first.output + pebble.log()
    assert first.changed > 0
    assert any(p.startswith("/.well-known/acme-challenge/") for p in http.requests), "HTTP-01 was not validated"
    assert list((stack / "acme-challenge").iterdir()) == []  # responses cleaned up
    issued = _check(stack, root)
    assert issued["status"] == "ok", issued
    assert issued["chain_valid"] is True and issued["hostname_match"] is True
    assert "IP:127.0.0.1" in issued["sans"]
    assert issued["chain_length"] >= 2
    assert (stack / "tls" / "nginx-key.pem").stat().st_mode & 0o777 == 0o600

    again = _play(base, stack, pebble, root)
    assert again.rc == 0, again.output
    assert again.changed == 0, again.output  # enough days left: nothing ordered
    assert _check(stack, root)["serial_hex"] == issued["serial_hex"]

    # Renewal: the certificate has fewer days left than asked for, so a new one is ordered.
    renew_days = issued["days_left"] + 1
    renewed = _play(base, stack, pebble, root, cullis_tls_acme_renew_days=renew_days)
    assert renewed.rc == 0, renewed.output + pebble.log()
    assert renewed.changed > 0
    new = _check(stack, root)
    assert new["status"] == "ok" and new["serial_hex"] != issued["serial_hex"]

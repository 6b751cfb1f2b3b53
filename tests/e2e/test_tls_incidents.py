"""TLS incidents on the deployed stack (runbook section 5 "TLS cert expired (broker public URL)").

Each test makes nginx serve an EXPIRED certificate for real (files replaced, nginx reloaded), runs
playbooks/incidents/tls_expired.yml with --check (nothing may change), then for real (recovered:
a valid certificate is served and /health passes with full verification against the right CA),
then again (healthy: changed=0). Recovery paths: BYOCA (the operator's new certificate, after a
refused wrong-host bundle left the old one in place), ACME (Pebble validating HTTP-01 through the
stack's nginx) and the stack's own local CA, which also puts the stack back as the other e2e tests
expect it.
"""
from __future__ import annotations


import pytest
import yaml

from testkit import scenarios
from testkit.pebble import PebbleServer
from testkit.pki import CA
from testkit.process import wait_for

pytestmark = pytest.mark.slow

PLAYBOOK = "playbooks/incidents/tls_expired.yml"


served_fingerprint = scenarios.served_fingerprint
fingerprint = scenarios.fingerprint
health_verified = scenarios.health_verified
serve_expired = scenarios.serve_expired


def assert_clean(stack, result, *extra):
    for value in [*stack.secret_values(), *extra]:
        assert value not in result.output, "a secret appeared in the playbook output"


@pytest.fixture(scope="module", autouse=True)
def restore_local_ca(stack):
    """Whatever happens here, hand the stack back serving its local-CA certificate."""
    yield
    try:
        health_verified(stack, stack.ca_path)
    except Exception:  # noqa: BLE001 - any TLS failure means: restore
        stack.run(PLAYBOOK, extra_vars={"cullis_tls_mode": "selfsigned"})


def test_byoca_refuses_a_bad_bundle_then_installs_the_operators_certificate(stack, tmp_path):
    expired = serve_expired(stack)
    root = CA.create("Operator Root CA")
    inter = root.issue("Operator Intermediate CA", ca=True, days=3000)
    good = inter.server_cert("127.0.0.1", "localhost", days=200)
    wrong = inter.server_cert("broker.other.example", days=200)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "chain.pem").write_bytes(inter.cert_pem)
    for name, issued in (("good", good), ("wrong", wrong)):
        (tmp_path / f"{name}.crt").write_bytes(issued.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(issued.key_pem)

    def files(name):
        return {"cullis_tls_mode": "byoca", "tls_cert": str(tmp_path / f"{name}.crt"),
                "tls_key": str(tmp_path / f"{name}.key"), "tls_chain": str(tmp_path / "chain.pem"),
                "tls_ca": str(tmp_path / "root.pem")}

    refused = stack.run(PLAYBOOK, extra_vars=files("wrong"))
    assert refused.rc != 0
    assert "does not cover 127.0.0.1" in refused.output
    assert "the current certificate stays in place" in refused.output
    assert served_fingerprint(stack) == fingerprint(expired)

    check = stack.run(PLAYBOOK, extra_vars=files("good"), check=True)
    assert check.rc == 0, check.output[-3000:]
    assert served_fingerprint(stack) == fingerprint(expired)
    assert (stack.dir / "tls" / "nginx.pem").read_bytes() == expired.cert_pem

    fixed = stack.run(PLAYBOOK, extra_vars=files("good"), verbosity=3)
    assert fixed.rc == 0, fixed.output[-3000:]
    assert fixed.changed > 0
    assert served_fingerprint(stack) == fingerprint(good)
    assert health_verified(stack, tmp_path / "root.pem") == 200
    assert "operator certificate validated and installed; nginx reloaded" in fixed.output
    assert_clean(stack, fixed, good.key_pem.decode().splitlines()[1])

    again = stack.run(PLAYBOOK, extra_vars=files("good"))
    assert again.rc == 0, again.output[-3000:]
    assert again.changed == 0


def test_acme_renews_through_nginx_http01(stack, tmp_path):
    serve_expired(stack)
    with PebbleServer(http_port=stack.ports["cullis_nginx_http_port"]) as pebble:
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(pebble.issuer_root_pem())
        acme = {"cullis_tls_mode": "acme", "cullis_tls_acme_directory": pebble.directory_url,
                "cullis_tls_acme_directory_ca": str(pebble.api_ca_path), "cullis_tls_public_ca_path": str(root)}
        fixed = stack.run(PLAYBOOK, extra_vars=acme)
        assert fixed.rc == 0, fixed.output[-3000:] + pebble.log()
        assert "new ACME certificate ordered; nginx reloaded" in fixed.output
        assert health_verified(stack, root) == 200
        assert not list((stack.dir / "acme-challenge").iterdir())
        again = stack.run(PLAYBOOK, extra_vars=acme)
        assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_tls_role_byoca_mode_installs_and_reloads_nginx(stack, tmp_path):
    """The deploy's `tls` role with cullis_tls_mode=byoca: validated install, nginx reloaded by the
    role's handler, then idempotent."""
    root = CA.create("Deploy Operator Root")
    leaf = root.server_cert("127.0.0.1", "localhost", days=300)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "leaf.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    play = tmp_path / "tls-role.yml"
    play.write_text(yaml.safe_dump([{
        "name": "tls role in byoca mode", "hosts": "cullis_stack", "gather_facts": False,
        "roles": [{"role": "cullis.broker.tls"}],
    }]))
    byoca = {"cullis_tls_mode": "byoca", "cullis_tls_byoca_cert": str(tmp_path / "leaf.crt"),
             "cullis_tls_byoca_key": str(tmp_path / "leaf.key"), "cullis_tls_byoca_ca": str(tmp_path / "root.pem")}
    first = stack.run(play, extra_vars=byoca)
    assert first.rc == 0, first.output[-3000:]
    assert "Reload nginx for new TLS material" in first.output
    wait_for(lambda: served_fingerprint(stack) == fingerprint(leaf), 20, "nginx serving the operator's cert")
    assert health_verified(stack, stack.dir / "tls" / "public-ca.pem") == 200
    assert health_verified(stack, tmp_path / "root.pem") == 200
    again = stack.run(play, extra_vars=byoca)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_monitor_renews_an_acme_certificate_under_warn_days(stack, tmp_path):
    """playbooks/tls_monitor.yml -e renew=true (runbook section 5, Prevent: ACME renewal cron)."""
    with PebbleServer(http_port=stack.ports["cullis_nginx_http_port"], validity_days=20) as pebble:
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(pebble.issuer_root_pem())
        acme = {"cullis_tls_mode": "acme", "cullis_tls_acme_directory": pebble.directory_url,
                "cullis_tls_acme_directory_ca": str(pebble.api_ca_path), "cullis_tls_public_ca_path": str(root)}
        expired = serve_expired(stack)
        plain = stack.run("playbooks/tls_monitor.yml", extra_vars=acme, callback="default")
        assert plain.rc != 0  # expired: the scheduler must alert
        assert "TLS certificates need action now (runbook section 5)" in plain.output
        assert "broker_public_url: ['certificate expired on" in plain.output
        assert served_fingerprint(stack) == fingerprint(expired) and plain.changed == 0

        renewed = stack.run("playbooks/tls_monitor.yml", extra_vars={**acme, "renew": True}, callback="default")
        assert renewed.rc == 0, renewed.output[-3000:]
        first = served_fingerprint(stack)
        assert first != fingerprint(expired)
        assert health_verified(stack, root) == 200
        # Pebble issues for 20 days: under warn_days (30), so a warning, not a failure...
        assert "TLS broker_public_url warn: certificate expires in 19 days" in renewed.output

        # ...and the next scheduled run with renew=true renews it again.
        again = stack.run("playbooks/tls_monitor.yml", extra_vars={**acme, "renew": True}, callback="default")
        assert again.rc == 0, again.output[-3000:]
        assert served_fingerprint(stack) not in (first, fingerprint(expired))
        assert health_verified(stack, root) == 200


def test_local_ca_reissues_and_the_stack_is_back_to_normal(stack):
    scenarios.tls_expired_local_ca(stack)

"""cullis.broker.tls_install: the BYOCA path of runbook section 5 (TLS cert expired, "BYOCA: get a
fresh cert from your CA, drop it in nginx/certs/ ... reload"), with the validation the runbook
leaves to the operator done before anything is replaced.
"""
from __future__ import annotations

import datetime as dt

import pytest

from testkit.ansible import run_module
from testkit.pki import CA, now


@pytest.fixture(scope="module")
def pki():
    root = CA.create("BYOCA Root")
    inter = root.issue("BYOCA Intermediate", ca=True, days=3000)
    return root, inter


@pytest.fixture
def bundle(pki, tmp_path):
    """Writes operator files for an issued cert; returns a function giving module args."""
    root, inter = pki
    (tmp_path / "ca.pem").write_bytes(root.cert_pem)
    (tmp_path / "chain.pem").write_bytes(inter.cert_pem)
    dest = tmp_path / "tls"
    dest.mkdir()

    def make(issued, stem="new", key=None, **over):
        (tmp_path / f"{stem}.crt").write_bytes(issued.cert_pem)
        (tmp_path / f"{stem}.key").write_bytes(key or issued.key_pem)
        args = {"cert": str(tmp_path / f"{stem}.crt"), "key": str(tmp_path / f"{stem}.key"),
                "chain": str(tmp_path / "chain.pem"), "ca_path": str(tmp_path / "ca.pem"),
                "hostnames": ["broker.example.com", "127.0.0.1"],
                "dest_cert": str(dest / "nginx.pem"), "dest_key": str(dest / "nginx-key.pem"),
                "dest_ca": str(dest / "public-ca.pem")}
        args.update(over)
        return args
    return make, dest, root, inter


def test_valid_bundle_installs_atomically_then_is_idempotent(bundle):
    make, dest, root, inter = bundle
    issued = inter.server_cert("broker.example.com", "127.0.0.1")
    args = make(issued)
    check = run_module("tls_install", args, check=True, diff=True)
    assert not check.failed, check.output
    assert check.changed and not (dest / "nginx.pem").exists()
    res = run_module("tls_install", args, diff=True)
    assert not res.failed and res.changed, res.output
    assert (dest / "nginx.pem").read_bytes() == issued.cert_pem + inter.cert_pem
    assert (dest / "nginx-key.pem").read_bytes() == issued.key_pem
    assert (dest / "nginx-key.pem").stat().st_mode & 0o777 == 0o600
    assert (dest / "public-ca.pem").read_bytes() == root.cert_pem
    assert res.result["chain_length"] == 2 and res.result["previous_fingerprint_sha256"] is None
    assert res.result["sans"] == ["DNS:broker.example.com", "IP:127.0.0.1"]
    assert issued.key_pem.decode().splitlines()[1] not in res.output  # the key never printed
    again = run_module("tls_install", args)
    assert not again.failed and again.changed is False
    assert again.result["previous_fingerprint_sha256"] == res.result["fingerprint_sha256"]


@pytest.mark.parametrize("case, expected", [
    ("key_mismatch", "the private key does not belong to the certificate"),
    ("wrong_host", "does not cover broker.example.com"),
    ("incomplete_chain", 'incomplete chain: the issuer "CN=BYOCA Intermediate"'),
    ("expired", "the certificate expired on"),
    ("expiring", "expires in 9 days, under critical_days=14"),
    ("other_ca", "incomplete chain"),
])
def test_invalid_bundle_is_refused_and_old_certificate_stays(bundle, case, expected):
    make, dest, _, inter = bundle
    good = inter.server_cert("broker.example.com", "127.0.0.1")
    assert not run_module("tls_install", make(good, stem="old")).failed
    old = (dest / "nginx.pem").read_bytes(), (dest / "nginx-key.pem").read_bytes()
    if case == "key_mismatch":
        args = make(inter.server_cert("broker.example.com", "127.0.0.1"), key=good.key_pem)
    elif case == "wrong_host":
        args = make(inter.server_cert("other.example.com", "127.0.0.1"))
    elif case == "incomplete_chain":
        args = make(inter.server_cert("broker.example.com", "127.0.0.1"))
        del args["chain"]
    elif case == "expired":
        args = make(inter.server_cert("broker.example.com", "127.0.0.1", days=10,
                                      not_before=now() - dt.timedelta(days=20)))
    elif case == "expiring":
        args = make(inter.server_cert("broker.example.com", "127.0.0.1", days=10))
    else:
        args = make(CA.create("Another CA").issue("broker.example.com", sans=["broker.example.com", "127.0.0.1"]))
    res = run_module("tls_install", args)
    assert res.failed
    assert expected in res.result["msg"], res.result["msg"]
    assert "the current certificate stays in place" in res.result["msg"]
    assert ((dest / "nginx.pem").read_bytes(), (dest / "nginx-key.pem").read_bytes()) == old

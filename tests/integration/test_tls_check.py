"""cullis.broker.tls_check against real TLS servers on loopback presenting crafted certificates.

Runbook section 5 (TLS cert expired): "monitor notAfter 30 days ahead; rotate before 14 days" -
every certificate state an operator can meet is served by a real TLS listener and checked through
the real Ansible executor.
"""
from __future__ import annotations

import datetime as dt

import pytest

from testkit.ansible import run_module
from testkit.pki import CA, now
from testkit.process import free_port
from testkit.tls_server import TLSServers

DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def pki():
    root = CA.create("TLS Check Root CA")
    inter = root.issue("TLS Check Intermediate", ca=True, days=3000)
    return root, inter


@pytest.fixture(scope="module")
def farm(pki, tmp_path_factory):
    """One listener per certificate state; returns (servers, ports by case, ca file, paths)."""
    root, inter = pki
    tmp = tmp_path_factory.mktemp("tls-check")
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(root.cert_pem)
    cases = {
        "valid": (inter.server_cert("127.0.0.1", "localhost"), [inter]),
        "expired": (inter.server_cert("127.0.0.1", days=30, not_before=now() - 40 * DAY), [inter]),
        "not_yet_valid": (inter.server_cert("127.0.0.1", days=365, not_before=now() + 2 * DAY), [inter]),
        "wrong_host": (inter.server_cert("other.example.com"), [inter]),
        "self_signed": (CA.create("127.0.0.1"), []),
        "incomplete_chain": (inter.server_cert("127.0.0.1"), []),
        "days_10": (inter.server_cert("127.0.0.1", days=10), [inter]),
        "days_20": (inter.server_cert("127.0.0.1", days=20), [inter]),
    }
    servers = TLSServers()
    ports = {name: servers.serve_issued(issued, *chain) for name, (issued, chain) in cases.items()}
    fullchain = tmp / "fullchain.pem"
    fullchain.write_bytes(cases["valid"][0].cert_pem + inter.cert_pem)
    leaf_only = tmp / "leaf-only.pem"
    leaf_only.write_bytes(cases["days_20"][0].cert_pem)
    yield servers, ports, ca_file, {"fullchain": fullchain, "leaf_only": leaf_only}, cases
    servers.close()


def _endpoints(ports, names):
    return [{"host": "127.0.0.1", "port": ports[n], "name": n} for n in names]


@pytest.fixture(scope="module")
def all_results(farm):
    _, ports, ca_file, paths, _ = farm
    closed = free_port()
    endpoints = _endpoints(ports, ports) + [{"host": "127.0.0.1", "port": closed, "name": "unreachable"}]
    res = run_module("tls_check", {
        "endpoints": endpoints,
        "paths": [{"path": str(paths["fullchain"]), "server_name": "localhost", "name": "file_fullchain"},
                  {"path": str(paths["leaf_only"]), "name": "file_leaf_only"}],
        "ca_path": str(ca_file), "fail_on": "never",
    })
    assert not res.failed, res.output
    assert res.changed is False
    return res.result, {t["name"]: t for t in res.result["targets"]}


def test_valid_certificate_is_ok_with_all_fields(all_results, farm):
    _, by_name = all_results
    issued = farm[4]["valid"][0]
    t = by_name["valid"]
    assert t["status"] == "ok", t
    assert t["problems"] == []
    assert t["subject"] == "CN=127.0.0.1"
    assert t["issuer"] == "CN=TLS Check Intermediate"
    assert t["sans"] == ["DNS:localhost", "IP:127.0.0.1"]
    assert t["serial_hex"] == issued.serial_hex
    assert t["fingerprint_sha256"].replace(":", "").lower() == issued.cert.fingerprint(
        __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex()
    assert t["not_after"] == issued.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert t["not_before"] == issued.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert t["days_left"] == 364
    assert t["expired"] is False and t["not_yet_valid"] is False and t["self_signed"] is False
    assert t["hostname"] == "127.0.0.1" and t["hostname_match"] is True
    assert t["chain_valid"] is True and t["chain_error"] is None
    assert t["chain_length"] == 2 and t["chain_source"] == "peer"
    assert t["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert t["cipher"]


def test_expired_certificate_is_critical(all_results):
    t = all_results[1]["expired"]
    assert t["status"] == "critical"
    assert t["expired"] is True
    assert t["days_left"] <= -10
    assert t["chain_valid"] is False and "expired" in t["chain_error"]
    assert any("expired on" in p for p in t["problems"])
    assert t["hostname_match"] is True


def test_not_yet_valid_certificate_is_critical(all_results):
    t = all_results[1]["not_yet_valid"]
    assert t["status"] == "critical"
    assert t["not_yet_valid"] is True and t["expired"] is False
    assert t["chain_valid"] is False and "not valid before" in t["chain_error"]


def test_wrong_host_is_critical_but_chain_valid(all_results):
    t = all_results[1]["wrong_host"]
    assert t["status"] == "critical"
    assert t["hostname_match"] is False
    assert t["chain_valid"] is True
    assert t["sans"] == ["DNS:other.example.com"]
    assert any("does not cover 127.0.0.1" in p for p in t["problems"])


def test_self_signed_is_critical(all_results):
    t = all_results[1]["self_signed"]
    assert t["status"] == "critical"
    assert t["self_signed"] is True
    assert t["chain_valid"] is False
    assert "self-signed" in t["chain_error"]
    assert t["subject"] == t["issuer"] == "CN=127.0.0.1"


def test_incomplete_chain_is_critical_and_names_missing_issuer(all_results):
    t = all_results[1]["incomplete_chain"]
    assert t["status"] == "critical"
    assert t["chain_length"] == 1
    assert t["chain_valid"] is False
    assert "incomplete chain" in t["chain_error"] and "CN=TLS Check Intermediate" in t["chain_error"]
    assert t["hostname_match"] is True and t["expired"] is False


def test_expiring_in_10_days_is_critical(all_results):
    t = all_results[1]["days_10"]
    assert t["status"] == "critical"
    assert t["days_left"] == 9
    assert t["chain_valid"] is True and t["hostname_match"] is True
    assert t["problems"] == ["certificate expires in 9 days (critical under 14)"]


def test_expiring_in_20_days_is_warn(all_results):
    t = all_results[1]["days_20"]
    assert t["status"] == "warn"
    assert t["days_left"] == 19
    assert t["problems"] == ["certificate expires in 19 days (warning under 30)"]


def test_unreachable_is_unknown_with_reason(all_results):
    t = all_results[1]["unreachable"]
    assert t["status"] == "unknown"
    assert "cannot connect to 127.0.0.1:" in t["error"]
    assert "subject" not in t


def test_paths_fullchain_and_leaf_only(all_results):
    by_name = all_results[1]
    full = by_name["file_fullchain"]
    assert full["status"] == "ok" and full["chain_valid"] is True
    assert full["chain_source"] == "file" and full["chain_length"] == 2
    assert full["hostname"] == "localhost" and full["hostname_match"] is True
    leaf = by_name["file_leaf_only"]
    assert leaf["hostname_match"] is None  # no server_name given: not checked
    assert leaf["chain_valid"] is False and "incomplete chain" in leaf["chain_error"]
    assert leaf["status"] == "critical"


def test_summary_counts_and_earliest_expiry(all_results):
    result, by_name = all_results
    s = result["summary"]
    assert s["total"] == 11
    assert (s["ok"], s["warn"], s["critical"], s["unknown"]) == (2, 1, 7, 1)
    assert s["worst_status"] == "unknown"
    assert s["earliest_expiry"]["name"] == "expired"
    assert s["earliest_expiry"]["not_after"] == by_name["expired"]["not_after"]
    # fail_on=never: every target that is not ok is also an Ansible warning
    warnings = result.get("warnings", [])
    assert len(warnings) == 9, warnings
    assert "TLS days_20 warn: certificate expires in 19 days (warning under 30)" in warnings


def test_fail_on_critical_fails_with_reasons_and_still_reports(farm):
    _, ports, ca_file, _, _ = farm
    res = run_module("tls_check", {"endpoints": _endpoints(ports, ["valid", "days_20", "days_10"]),
                                   "ca_path": str(ca_file)})
    assert res.failed
    assert "1 of 3 TLS target(s)" in res.result["msg"]
    assert "days_10: critical" in res.result["msg"] and "days_20" not in res.result["msg"]
    assert res.result["summary"]["critical"] == 1 and len(res.result["targets"]) == 3


def test_fail_on_warn_and_per_target_override(farm):
    _, ports, ca_file, _, _ = farm
    ep = _endpoints(ports, ["valid", "days_20"])
    res = run_module("tls_check", {"endpoints": ep, "ca_path": str(ca_file), "fail_on": "warn"})
    assert res.failed and "days_20: warn" in res.result["msg"]
    ep[1]["warn_days"] = 15  # 19 days left is fine for this endpoint
    res = run_module("tls_check", {"endpoints": ep, "ca_path": str(ca_file), "fail_on": "warn"})
    assert not res.failed, res.result
    assert [t["status"] for t in res.result["targets"]] == ["ok", "ok"]


def test_check_mode_url_form_and_system_trust(farm):
    """No ca_path: the test CA is not in the system trust, so the chain is reported untrusted."""
    _, ports, _, _, _ = farm
    res = run_module("tls_check", {"endpoints": [{"url": f"https://localhost:{ports['valid']}/health"}],
                                   "fail_on": "never"}, check=True)
    assert not res.failed and res.changed is False
    t = res.result["targets"][0]
    assert t["name"] == f"localhost:{ports['valid']}" and t["hostname_match"] is True
    assert t["chain_valid"] is False and "the system trust store" in t["chain_error"]
    assert t["status"] == "critical"


def test_bad_ca_path_and_thresholds_are_clear_errors(farm, tmp_path):
    _, ports, _, _, _ = farm
    res = run_module("tls_check", {"endpoints": _endpoints(ports, ["valid"]), "ca_path": str(tmp_path / "nope.pem")})
    assert res.failed and "cannot load the CA certificates" in res.result["msg"]
    res = run_module("tls_check", {"endpoints": _endpoints(ports, ["valid"]), "warn_days": 5})
    assert res.failed and "critical_days (14) must not be larger than warn_days (5)" in res.result["msg"]

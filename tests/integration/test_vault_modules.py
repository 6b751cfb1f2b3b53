"""cullis.broker.vault_unseal / vault_info / vault_token against real OpenBao servers.

Runbook section 3 (Vault sealed or unreachable; scoped token expired): a single node sealed by
the test, a 3-node raft cluster on 127.0.0.1 brought back sealed, and every fault an operator
meets on the way (wrong key, duplicate key, unreachable node, wrong CA, a keys file others can
read). Every run goes through the real Ansible executor; outputs are grepped for secrets.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket

import pytest

from testkit.ansible import run_module
from testkit.pki import CA
from testkit.services import OpenBaoServer
from testkit.vault_cluster import OpenBaoCluster


@pytest.fixture(scope="module")
def node(test_ca):
    """A single OpenBao node of this module's own: the tests seal it."""
    server = OpenBaoServer(ca=test_ca).start().initialize()
    yield server
    server.cleanup()


@pytest.fixture
def sealed(node):
    """The node, sealed; unsealed again afterwards so every test starts from a known state."""
    node.seal()
    assert node.status()["sealed"] is True
    yield node
    if node.status().get("sealed"):
        node.cli("operator", "unseal", "-reset", check=False)
        node.unseal()
    node.wait_active()


def conn(server) -> dict:
    return {"url": server.addr, "ca_cert": str(server.ca_path)}


def assert_no_secret(output: str, server):
    for secret in [*server.unseal_keys, *server.init_result["unseal_keys_hex"], server.root_token]:
        assert secret not in output


def wrong_key(server) -> str:
    """A well-formed share (right length, valid base64) that is not one of this Vault's."""
    size = len(base64.b64decode(server.unseal_keys[0]))
    return base64.b64encode(bytes([0x5A]) * size).decode()


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"https://127.0.0.1:{port}"


# ---- vault_unseal, single node ---------------------------------------------------------------

def test_unseal_from_keys_file_then_unchanged(sealed):
    """Runbook 3 Recover (sealed): unseal with the keys file; a second run changes nothing."""
    res = run_module("vault_unseal", {**conn(sealed), "keys_file": str(sealed.keys_file)}, verbosity=3)
    assert res.rc == 0, res.output
    assert res.changed
    (rep,) = res.result["nodes"]
    assert rep["action"] == "unsealed" and rep["sealed"] is False
    assert rep["keys_submitted"] == 3 and rep["threshold"] == 3 and rep["shares"] == 5
    assert rep["health"] == "active" and rep["is_leader"] is True and rep["version"]
    assert sealed.status()["sealed"] is False
    assert_no_secret(res.output, sealed)

    again = run_module("vault_unseal", {**conn(sealed), "keys_file": str(sealed.keys_file)})
    assert again.rc == 0 and not again.changed
    assert again.result["nodes"][0]["action"] == "none"
    assert again.result["nodes"][0]["keys_submitted"] == 0


def test_check_mode_submits_nothing(sealed):
    """Runbook 3: --check reports the plan and leaves the node sealed at progress 0."""
    res = run_module("vault_unseal", {**conn(sealed), "keys_file": str(sealed.keys_file)}, check=True)
    assert res.rc == 0 and res.changed
    assert res.result["nodes"][0]["action"] == "would_unseal"
    assert res.result["nodes"][0]["key_positions"] == [1, 2, 3]
    st = sealed.status()
    assert st["sealed"] is True and st["progress"] == 0


def test_wrong_key_fails_naming_positions_and_resets(sealed):
    """Runbook 3: a key that is not a share of this Vault fails cleanly, no half-state left."""
    keys = [sealed.unseal_keys[0], wrong_key(sealed), sealed.unseal_keys[2]]
    res = run_module("vault_unseal", {**conn(sealed), "keys": keys}, verbosity=3)
    assert res.rc != 0 and res.failed
    assert "#1, #2, #3 did not unseal" in res.result["msg"]
    assert "progress reset to 0/3" in res.result["msg"]
    st = sealed.status()
    assert st["sealed"] is True and st["progress"] == 0
    assert wrong_key(sealed) not in res.output
    assert_no_secret(res.output, sealed)


def test_malformed_key_is_named_by_position(sealed):
    keys = [sealed.unseal_keys[0], "this-is-not-a-key", sealed.unseal_keys[1], sealed.unseal_keys[2]]
    res = run_module("vault_unseal", {**conn(sealed), "keys": keys})
    assert res.failed
    assert "unseal key #2 was rejected" in res.result["msg"]
    assert sealed.status()["progress"] == 0
    assert "this-is-not-a-key" not in res.output


def test_duplicate_key_does_not_waste_a_submission(sealed):
    """A key listed twice is skipped before submission: three distinct keys still unseal."""
    k = sealed.unseal_keys
    hex_k0 = sealed.init_result["unseal_keys_hex"][0]
    res = run_module("vault_unseal", {**conn(sealed), "keys": [k[0], hex_k0, k[0], k[1], k[2]]}, verbosity=3)
    assert res.rc == 0, res.result.get("msg")
    assert res.result["duplicate_keys"] == [{"position": 2, "duplicate_of": 1}, {"position": 3, "duplicate_of": 1}]
    rep = res.result["nodes"][0]
    assert rep["action"] == "unsealed" and rep["keys_submitted"] == 3 and rep["key_positions"] == [1, 4, 5]
    assert_no_secret(res.output, sealed)


def test_too_few_distinct_keys_fails_without_submitting(sealed):
    k = sealed.unseal_keys
    res = run_module("vault_unseal", {**conn(sealed), "keys": [k[0], k[1], k[0]]})
    assert res.failed and "2 distinct key(s) given, the threshold is 3" in res.result["msg"]
    assert not res.changed
    assert sealed.status()["progress"] == 0


def test_world_readable_keys_file_is_refused(sealed, tmp_path):
    loose = tmp_path / "vault-keys.json"
    shutil.copy(sealed.keys_file, loose)
    loose.chmod(0o644)
    res = run_module("vault_unseal", {**conn(sealed), "keys_file": str(loose)})
    assert res.failed and "chmod 600" in res.result["msg"]
    assert sealed.status()["sealed"] is True
    ok = run_module("vault_unseal", {**conn(sealed), "keys_file": str(loose), "insecure_keys_file": True})
    assert ok.rc == 0 and ok.changed and sealed.status()["sealed"] is False


def test_bad_ca_fails_before_any_key_is_sent(sealed, tmp_path):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(CA.create("Some Other CA").cert_pem)
    res = run_module("vault_unseal", {"url": sealed.addr, "ca_cert": str(other),
                                      "keys_file": str(sealed.keys_file)})
    assert res.failed
    assert "TLS trust problem" in res.result["msg"] and "ca_cert" in res.result["msg"]
    assert res.result["nodes"][0]["action"] == "tls_untrusted"
    st = sealed.status()
    assert st["sealed"] is True and st["progress"] == 0


def test_unreachable_node_is_reported_others_unsealed(sealed):
    dead = refused_url()
    res = run_module("vault_unseal", {"url": [sealed.addr, dead], "ca_cert": str(sealed.ca_path),
                                      "keys_file": str(sealed.keys_file), "retries": 1, "retry_delay": 0.1})
    assert res.failed and dead in res.result["msg"] and "unreachable" in res.result["msg"]
    live, gone = res.result["nodes"]
    assert live["action"] == "unsealed" and live["sealed"] is False
    assert gone["action"] == "unreachable" and gone["reachable"] is False
    assert res.result["sealed_nodes"] == [dead]
    assert sealed.status()["sealed"] is False


def test_env_fallback_read_at_run_time(sealed):
    """VAULT_ADDR / VAULT_CACERT are read when the module runs (no url/ca_cert options)."""
    env = {"VAULT_ADDR": sealed.addr, "VAULT_CACERT": str(sealed.ca_path)}
    info = run_module("vault_info", {}, env=env)
    assert info.rc == 0 and info.result["sealed_nodes"] == [sealed.addr]
    res = run_module("vault_unseal", {"keys_file": str(sealed.keys_file)}, env={"BAO_ADDR": sealed.addr,
                                                                               "BAO_CACERT": str(sealed.ca_path)})
    assert res.rc == 0 and res.changed


# ---- vault_info ------------------------------------------------------------------------------

def test_info_reports_sealed_node_and_unreachable_node(sealed):
    dead = refused_url()
    res = run_module("vault_info", {"url": [sealed.addr, dead], "ca_cert": str(sealed.ca_path), "retries": 0})
    assert res.rc == 0 and not res.changed
    live, gone = res.result["nodes"]
    assert live["sealed"] is True and live["health"] == "sealed" and live["threshold"] == 3
    assert gone["reachable"] is False and gone["health"] == "error"
    assert res.result["all_unsealed"] is False and res.result["unreachable_nodes"] == [dead]
    strict = run_module("vault_info", {"url": [sealed.addr, dead], "ca_cert": str(sealed.ca_path),
                                       "retries": 0, "fail_on_unreachable": True})
    assert strict.failed


def test_info_on_healthy_node(node):
    res = run_module("vault_info", conn(node))
    assert res.rc == 0 and res.result["all_unsealed"] is True
    assert res.result["active_node"] == node.addr
    assert res.result["nodes"][0]["health"] == "active"


# ---- vault_token -----------------------------------------------------------------------------

def lookup(server, token) -> dict | None:
    out = server.cli("token", "lookup", "-format=json", token=token, check=False)
    return json.loads(out.stdout)["data"] if out.returncode == 0 else None


def test_token_valid_is_unchanged(node):
    token = node.create_token(ttl="720h")
    res = run_module("vault_token", {**conn(node), "token": token, "min_ttl": "72h"}, verbosity=3)
    assert res.rc == 0, res.result.get("msg")
    assert not res.changed and res.result["outcome"] == "unchanged" and res.result["previous_state"] == "valid"
    assert "token" not in res.result
    assert token not in res.output


def test_token_below_min_ttl_is_renewed(node):
    token = node.create_token(ttl="1h")
    res = run_module("vault_token", {**conn(node), "token": token, "min_ttl": "2h", "ttl": "6h"}, verbosity=3)
    assert res.rc == 0, res.result.get("msg")
    assert res.changed and res.result["outcome"] == "renewed" and res.result["previous_state"] == "expiring"
    assert res.result["ttl"] > 2 * 3600
    assert lookup(node, token)["ttl"] > 2 * 3600
    assert token not in res.output


def test_revoked_token_is_replaced_with_a_scoped_orphan(node):
    """Runbook 3 Recover (scoped token expired): a new broker-policy token, 720h, renewable."""
    token = node.create_token()
    node.cli("token", "revoke", token, token=node.root_token)
    check = run_module("vault_token", {**conn(node), "token": token, "keys_file": str(node.keys_file),
                                       "policies": ["broker-policy"]}, check=True)
    assert check.rc == 0 and check.changed and check.result["outcome"] == "created"
    assert "token" not in check.result

    res = run_module("vault_token", {**conn(node), "token": token, "keys_file": str(node.keys_file),
                                     "policies": ["broker-policy"], "ttl": "720h"}, verbosity=3)
    assert res.rc == 0
    # The result carries a new token: Ansible censors it in every callback, -vvv included.
    assert res.result.get("censored")
    assert token not in res.output and node.root_token not in res.output
    # What the registered variable holds is checked through a follow-up task in the e2e test;
    # here the server says what was created.
    accessors = node.cli("list", "-format=json", "auth/token/accessors", token=node.root_token).stdout
    created = [lookup_accessor(node, a) for a in json.loads(accessors)]
    mine = [d for d in created if d["display_name"] == "token-cullis-broker" and d["orphan"]
            and "broker-policy" in d["policies"] and d["ttl"] > 719 * 3600 and d["renewable"]]
    assert mine, created


def test_valid_token_without_the_broker_policy_is_reported_and_replaced(node):
    """Runbook 3 Recover: a token that is valid but lacks broker-policy (the broker starts, then
    every secret read is denied) is not "unchanged": it is reported and replaced."""
    token = node.create_token(policy="default", ttl="720h")
    args = {**conn(node), "token": token, "keys_file": str(node.keys_file), "policies": ["broker-policy"]}
    check = run_module("vault_token", args, check=True)
    assert check.rc == 0, check.result.get("msg")
    assert check.changed and check.result["outcome"] == "created"
    assert check.result["previous_state"] == "wrong_policies" and check.result["missing_policies"] == ["broker-policy"]
    assert any("lacks the policies broker-policy" in w for w in check.result.get("warnings", []))
    before = set(json.loads(node.cli("list", "-format=json", "auth/token/accessors", token=node.root_token).stdout))

    res = run_module("vault_token", args, verbosity=3)
    assert res.rc == 0 and res.changed and res.result.get("censored")
    assert token not in res.output and node.root_token not in res.output
    after = set(json.loads(node.cli("list", "-format=json", "auth/token/accessors", token=node.root_token).stdout))
    [new] = [lookup_accessor(node, a) for a in after - before]
    assert "broker-policy" in new["policies"] and new["orphan"] and new["ttl"] > 719 * 3600
    assert lookup(node, token) is not None  # the old token is reported (warning), not revoked

    # a valid token that holds the policy stays as it is, and says nothing is missing
    good = node.create_token(ttl="720h")
    same = run_module("vault_token", {**args, "token": good})
    assert same.rc == 0 and not same.changed and same.result["outcome"] == "unchanged"
    assert same.result["previous_state"] == "valid" and same.result["missing_policies"] == []


def lookup_accessor(server, accessor) -> dict:
    out = server.cli("token", "lookup", "-format=json", "-accessor", accessor, token=server.root_token)
    return json.loads(out.stdout)["data"]


def test_token_registered_result_holds_usable_token(node, tmp_path):
    """The created token reaches the registered variable (for the .env task) and works."""
    from testkit.ansible import ansible_env
    import subprocess
    import sys
    import yaml
    out_file = tmp_path / "token"
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": sys.executable},
             "tasks": [
                 {"name": "ensure", "cullis.broker.vault_token": {**conn(node), "keys_file": str(node.keys_file),
                                                                   "policies": ["broker-policy"]},
                  "register": "t"},
                 {"name": "write", "ansible.builtin.copy": {"dest": str(out_file), "content": "{{ t.token }}",
                                                            "mode": "0600"}, "no_log": True}]}]
    pb = tmp_path / "play.yml"
    pb.write_text(yaml.safe_dump(play))
    proc = subprocess.run([str(__import__("pathlib").Path(sys.executable).parent / "ansible-playbook"),
                           "-i", "localhost,", str(pb), "-vvv"], capture_output=True, text=True,
                          env=ansible_env(callback="ansible.builtin.default"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    new_token = out_file.read_text()
    assert new_token and new_token not in proc.stdout + proc.stderr
    data = lookup(node, new_token)
    assert data and "broker-policy" in data["policies"]


def test_token_creation_needs_admin(node):
    res = run_module("vault_token", {**conn(node), "token": "s.notavalidtoken", "policies": ["broker-policy"]})
    assert res.failed and "admin_token or keys_file" in res.result["msg"]
    bad = run_module("vault_token", {**conn(node), "admin_token": "s.alsobad", "policies": ["broker-policy"]})
    assert bad.failed and "admin token was refused" in bad.result["msg"]
    assert "s.alsobad" not in bad.output


def test_token_on_sealed_vault_says_unseal_first(sealed):
    token = "s.whatever"
    res = run_module("vault_token", {**conn(sealed), "token": token, "retries": 0})
    assert res.failed and "unseal it first" in res.result["msg"]


# ---- raft cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(test_ca):
    c = OpenBaoCluster(ca=test_ca, size=3).start()
    yield c
    c.cleanup()


@pytest.mark.slow
def test_unseal_every_node_of_a_raft_cluster(cluster):
    """Runbook 3 Recover (sealed), HA: all three raft nodes come back sealed after a restart."""
    cluster.restart_sealed()
    args = {"url": cluster.addrs, "ca_cert": str(cluster.ca_path)}
    info = run_module("vault_info", args)
    assert info.result["sealed_nodes"] == cluster.addrs

    res = run_module("vault_unseal", {**args, "keys_file": str(cluster.keys_file), "wait_timeout": 90},
                     verbosity=3)
    assert res.rc == 0, res.result.get("msg")
    assert res.changed and res.result["sealed_nodes"] == []
    nodes = res.result["nodes"]
    assert [n["url"] for n in nodes] == cluster.addrs
    assert all(n["action"] == "unsealed" and n["keys_submitted"] == 3 for n in nodes)
    leaders = {n["leader_address"] for n in nodes}
    assert len(leaders) == 1 and leaders.pop() in cluster.addrs
    assert sum(1 for n in nodes if n["is_leader"]) == 1
    assert sorted(n["health"] for n in nodes) == ["active", "standby", "standby"]
    assert_no_secret(res.output, cluster.leader)
    assert all(st["sealed"] is False for st in cluster.statuses())

    again = run_module("vault_unseal", {**args, "keys_file": str(cluster.keys_file)})
    assert again.rc == 0 and not again.changed

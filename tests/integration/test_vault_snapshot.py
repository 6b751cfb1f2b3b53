"""cullis.broker.vault_snapshot against real OpenBao raft nodes.

Runbook "Backups — what to save" (Vault backup = backup of the broker signing key) and the
quarterly drill ("restore Postgres + Vault from backup into a staging compose"): a snapshot of
one cluster restores into a fresh cluster, which then serves the first cluster's secrets.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testkit.ansible import run_module
from testkit.services import OpenBaoServer


@pytest.fixture
def fresh_bao(test_ca):
    server = OpenBaoServer(ca=test_ca).start().initialize(setup_kv=False)
    yield server
    server.cleanup()


def vault_args(server, **extra):
    return dict(url=server.addr, ca_cert=str(server.ca_path), keys_file=str(server.keys_file), **extra)


@pytest.mark.slow
def test_snapshot_saves_and_restores_into_a_fresh_cluster(bao_server, fresh_bao, tmp_path):
    """Backups + quarterly drill: Vault (the broker signing key) restores into a new cluster."""
    marker = os.urandom(8).hex()
    bao_server.cli("kv", "put", "secret/snapshot-test", f"marker={marker}", token=bao_server.root_token)
    key = tmp_path / "backup.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)  # the key files policy: readable by the owner only
    res = run_module("vault_snapshot", vault_args(bao_server, path=str(tmp_path) + "/",
                                                  encryption_key_file=str(key)))
    assert not res.failed, res.result.get("msg")
    snap = Path(res.result["path"])
    assert snap.name.endswith(".snap.enc") and snap.exists()
    manifest = json.loads(Path(str(snap) + ".json").read_text())
    assert manifest["sha256"] == res.result["sha256"] and manifest["encrypted"] is True
    assert bao_server.root_token not in res.output

    args = vault_args(fresh_bao, state="restored", path=str(snap), encryption_key_file=str(key))
    refused = run_module("vault_snapshot", args)
    assert refused.failed and "confirm=true" in refused.result["msg"]
    res = run_module("vault_snapshot", dict(args, confirm=True))
    assert not res.failed, res.result.get("msg")
    assert fresh_bao.root_token not in res.output
    # the fresh cluster seals itself and now opens with the first cluster's keys and root token
    assert res.result["sealed"] is True
    fresh_bao.unseal(bao_server.unseal_keys)
    fresh_bao.wait_active()
    out = fresh_bao.cli("kv", "get", "-field=marker", "secret/snapshot-test", token=bao_server.root_token)
    assert out.stdout.strip() == marker


def test_damaged_snapshot_is_refused_before_vault_is_touched(bao_server, tmp_path):
    """Backups: a flipped byte is found by the checksum; Vault is not contacted for the restore."""
    res = run_module("vault_snapshot", vault_args(bao_server, path=str(tmp_path / "v.snap")))
    assert not res.failed, res.result.get("msg")
    snap = tmp_path / "v.snap"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 1
    snap.write_bytes(bytes(data))
    res = run_module("vault_snapshot", vault_args(bao_server, state="restored", path=str(snap), confirm=True))
    assert res.failed and "checksum mismatch" in res.result["msg"]
    assert bao_server.status()["sealed"] is False

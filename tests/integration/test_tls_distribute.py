"""The tls role's distribute.yml with two proxies (issue 18: several proxies behind one public name).

Four "hosts" on this machine (local connection, a stack directory each): the first proxy issues the
material (role cullis.broker.tls, self-signed), distribute.yml gives the second proxy the same nginx
certificate and key (key 0600), the Vault host its certificate and key, every host the CA, and no
host but the proxies nginx's key. A rerun changes nothing; a certificate re-issued on the first
proxy reaches the second on the next run.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from testkit.ansible import run_playbook

pytestmark = [pytest.mark.slow]

PLAYBOOK = """\
- hosts: cullis_proxy[0]
  gather_facts: false
  vars: {cullis_tls_reload_nginx: false, cullis_tls_reload_vault: false}
  roles: [cullis.broker.tls]
- hosts: cullis_stack
  gather_facts: false
  tasks:
    - ansible.builtin.import_role: {name: cullis.broker.tls, tasks_from: distribute}
"""
HOSTS = {"px1": "cullis_proxy", "px2": "cullis_proxy", "vlt": "cullis_vault", "brk": "cullis_broker"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def two_proxies(tmp_path):
    groups: dict = {}
    for host, group in HOSTS.items():
        groups.setdefault(group, {"hosts": {}})["hosts"][host] = {"cullis_stack_dir": str(tmp_path / host)}
        (tmp_path / host).mkdir()
    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(Path(os.sys.executable)),
                            "cullis_address": "127.0.0.1", "cullis_runtime": "process",
                            "cullis_controller_ca_path": str(tmp_path / "controller" / "ca.pem")},
                   "children": {"cullis_stack": {"children": groups}}}}
    inventory = tmp_path / "hosts.yml"
    # px1 first in the inventory: distribute.yml's run_once read of the issued files takes its
    # paths from the first host of the play, and only these local "hosts" have stack directories
    # of their own (real hosts share cullis_stack_dir)
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    playbook = tmp_path / "tls.yml"
    playbook.write_text(PLAYBOOK)
    return tmp_path, inventory, playbook


def test_second_proxy_serves_the_same_certificate_and_only_proxies_get_the_key(two_proxies):
    base, inventory, playbook = two_proxies
    res = run_playbook(playbook, inventory=inventory)
    assert res.rc == 0, res.explain()
    px1, px2 = base / "px1" / "tls", base / "px2" / "tls"
    assert digest(px2 / "nginx.pem") == digest(px1 / "nginx.pem")
    assert digest(px2 / "nginx-key.pem") == digest(px1 / "nginx-key.pem")
    assert (px2 / "nginx-key.pem").stat().st_mode & 0o777 == 0o600
    assert digest(base / "vlt" / "tls" / "vault-key.pem") == digest(px1 / "vault-key.pem")
    for host in ("vlt", "brk"):
        assert not (base / host / "tls" / "nginx-key.pem").exists(), f"nginx's key reached {host}"
        assert digest(base / host / "tls" / "ca.pem") == digest(px1 / "ca.pem")
    assert not (base / "brk" / "tls" / "vault-key.pem").exists() and not (px2 / "vault-key.pem").exists()
    assert digest(base / "controller" / "ca.pem") == digest(px1 / "ca.pem")
    key_body = "".join((px1 / "nginx-key.pem").read_text().splitlines()[1:-1])
    assert "PRIVATE KEY" not in res.output and key_body[:64] not in res.output, "key material in the output"

    again = run_playbook(playbook, inventory=inventory)
    assert again.rc == 0 and again.changed == 0, again.stats

    # a certificate re-issued on the first proxy (its file gone: the role issues a new one) reaches the second
    old = digest(px1 / "nginx.pem")
    (px1 / "nginx.pem").unlink()
    renewed = run_playbook(playbook, inventory=inventory)
    assert renewed.rc == 0, renewed.explain()
    assert digest(px1 / "nginx.pem") != old
    assert digest(px2 / "nginx.pem") == digest(px1 / "nginx.pem")
    assert renewed.host_stats("px2").get("changed", 0) >= 1

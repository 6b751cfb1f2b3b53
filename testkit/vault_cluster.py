"""A real 3-node OpenBao raft cluster on 127.0.0.1, built from `testkit.services.OpenBaoServer`.

Node 1 is initialised (5 shares, threshold 3); the others `retry_join` it and join when first
unsealed with its keys. `restart_sealed()` restarts every node process (by PID), which leaves the
whole cluster sealed with its data intact: the state an operator finds after a host reboot.
"""
from __future__ import annotations

import json

from testkit.pki import CA
from testkit.process import wait_for
from testkit.services import OpenBaoServer


class OpenBaoCluster:
    def __init__(self, ca: CA | None = None, size: int = 3):
        self.ca = ca or CA.create("Cullis Test Vault CA")
        self.size = size
        self.nodes: list[OpenBaoServer] = []

    @property
    def leader(self) -> OpenBaoServer:
        return self.nodes[0]

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    @property
    def ca_path(self):
        return self.leader.ca_path

    @property
    def keys_file(self):
        return self.leader.keys_file

    @property
    def unseal_keys(self) -> list[str]:
        return self.leader.unseal_keys

    @property
    def root_token(self) -> str:
        return self.leader.root_token

    def start(self) -> "OpenBaoCluster":
        try:
            first = OpenBaoServer(ca=self.ca, node_id="node1").start()
            self.nodes.append(first)
            first.initialize(setup_kv=False)
            first.wait_active()
            for i in range(2, self.size + 1):
                node = OpenBaoServer(ca=self.ca, node_id=f"node{i}", retry_join=[first.addr]).start()
                self.nodes.append(node)
                node.init_result = first.init_result
                node.keys_file = first.keys_file
                # Unsealing a retry_join node with the leader's keys makes it join the cluster.
                wait_for(lambda n=node: self._try_unseal(n), 60, f"openbao node{i} join", node.proc)
            wait_for(lambda: len(self.peers()) == self.size, 60, "raft peers")
        except Exception:
            self.cleanup()
            raise
        return self

    def _try_unseal(self, node: OpenBaoServer) -> bool:
        for key in self.unseal_keys[:3]:
            node.cli("operator", "unseal", key, check=False)
        st = node.status()
        return st.get("sealed") is False

    def peers(self) -> list[dict]:
        out = self.leader.cli("operator", "raft", "list-peers", "-format=json", token=self.root_token, check=False)
        if out.returncode != 0:
            return []
        return json.loads(out.stdout)["data"]["config"]["servers"]

    def restart_sealed(self):
        """Restart every node: all come back sealed."""
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(lambda n=node: n.status().get("sealed") is True, 30, "openbao sealed after restart", node.proc)

    def statuses(self) -> list[dict]:
        return [n.status() for n in self.nodes]

    def cleanup(self):
        for node in self.nodes:
            node.cleanup()

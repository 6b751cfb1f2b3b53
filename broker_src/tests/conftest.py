"""Broker tests: one broker per session on real PostgreSQL 15, Redis and OpenBao (testkit fixtures).

`onboard` builds a complete org (admin create, CA upload, mastio pin) and agents (publish-agent,
binding create + approve) through the broker's own API, and returns identities that
`_agent_client.AgentSession` logs in with.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "collections"))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from ansible_collections.cullis.broker.plugins.module_utils import _agent_client as ac  # noqa: E402
from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient  # noqa: E402
from testkit.pki import CA, key_pem, new_key  # noqa: E402

_counter = itertools.count(1)


class Org:
    def __init__(self, broker, org_id: str, ca_key: str = "ec"):
        self.broker = broker
        self.org_id = org_id
        self.secret = f"secret-{org_id}-x7"
        self.ca = CA.create(f"{org_id} CA", org=org_id, key_kind=ca_key)
        self.mastio_key = new_key("ec")
        self.admin = BrokerClient(broker.url, admin_secret=broker.admin_secret)
        self.client = BrokerClient(broker.url)
        self.org_headers = {"x-org-id": org_id, "x-org-secret": self.secret}

    @property
    def mastio_pub_pem(self) -> str:
        return self.mastio_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def org_request(self, method, path, body=None, query=None):
        return self.client.request(method, path, body=body, headers=self.org_headers, query=query)

    def create(self) -> "Org":
        r = self.admin.admin_post("/v1/registry/orgs", {"org_id": self.org_id, "display_name": self.org_id.upper(),
                                                         "secret": self.secret, "metadata": {}})
        assert r.status == 201, r.body
        r = self.org_request("POST", f"/v1/registry/orgs/{self.org_id}/certificate",
                             {"ca_certificate": self.ca.cert_pem.decode()})
        assert r.status == 200, r.body
        r = self.admin.request("PATCH", f"/v1/admin/orgs/{self.org_id}/mastio-pubkey",
                               body={"mastio_pubkey": self.mastio_pub_pem}, admin=True)
        assert r.status == 200, r.body
        return self

    def issue(self, name: str, key_kind: str = "ec", **kw):
        return self.ca.issue(f"{self.org_id}::{name}", org=self.org_id, server=False, client=True,
                             key_kind=key_kind, **kw)

    def identity(self, name: str, issued) -> ac.AgentIdentity:
        return ac.AgentIdentity(f"{self.org_id}::{name}", self.org_id, issued.cert_pem, issued.key_pem,
                                mastio_key_pem=key_pem(self.mastio_key))

    def add_agent(self, name: str, capabilities=("chat",), approve: bool = True, key_kind: str = "ec", **kw):
        issued = self.issue(name, key_kind=key_kind, **kw)
        agent_id = f"{self.org_id}::{name}"
        r = ac.publish_agent(self.client, key_pem(self.mastio_key), agent_id, issued.cert_pem.decode(),
                             capabilities=capabilities, display_name=name)
        assert r.status == 200, r.body
        r = self.org_request("POST", "/v1/registry/bindings",
                             {"org_id": self.org_id, "agent_id": agent_id, "scope": list(capabilities)})
        assert r.status == 201, r.body
        binding_id = r.json()["id"]
        if approve:
            r = self.org_request("POST", f"/v1/registry/bindings/{binding_id}/approve")
            assert r.status == 200, r.body
        agent = self.identity(name, issued)
        agent.issued = issued
        agent.binding_id = binding_id
        return agent

    def session(self, identity) -> ac.AgentSession:
        return ac.AgentSession(BrokerClient(self.broker.url), self.broker.url, identity)


@pytest.fixture(scope="session")
def org_cls():
    """The Org helper class (a fixture, not `from conftest import`: several conftest.py exist)."""
    return Org


@pytest.fixture
def new_org(broker):
    def make(prefix: str = "org", **kw) -> Org:
        return Org(broker, f"{prefix}{next(_counter)}", **kw).create()
    return make


@pytest.fixture
def admin(broker):
    return BrokerClient(broker.url, admin_secret=broker.admin_secret)

"""Database tables (contract section 5), as SQLAlchemy Core tables."""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

organizations = sa.Table(
    "organizations", metadata,
    sa.Column("org_id", sa.String(128), primary_key=True),
    sa.Column("display_name", sa.String(256), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("contact_email", sa.String(256)),
    sa.Column("registered_at", TS, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("ca_certificate", sa.Text),
    sa.Column("webhook_url", sa.String(512)),
    sa.Column("trust_domain", sa.String(256), unique=True),
    sa.Column("mastio_pubkey", sa.Text),
    sa.Column("sealed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("require_mastio_mtls", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("mastio_url", sa.String(512)),
    sa.Column("oidc_issuer_url", sa.String(512)),
    sa.Column("oidc_client_id", sa.String(256)),
)

agents = sa.Table(
    "agents", metadata,
    sa.Column("agent_id", sa.String(256), primary_key=True),
    sa.Column("org_id", sa.String(128), nullable=False, index=True),
    sa.Column("display_name", sa.String(256), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("capabilities_json", sa.Text, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("registered_at", TS, nullable=False),
    sa.Column("cert_pem", sa.Text),
    sa.Column("cert_thumbprint", sa.String(64)),
    sa.Column("token_invalidated_at", TS),
    sa.Column("user_pubkey_pem", sa.Text),
    sa.Index("idx_agents_cert_thumbprint", "cert_thumbprint"),
)

bindings = sa.Table(
    "bindings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("agent_id", sa.String(256), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("scope_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("approved_at", TS),
    sa.Column("approved_by", sa.String(128)),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("org_id", "agent_id", name="uq_binding_org_agent"),
)

revoked_certs = sa.Table(
    "revoked_certs", metadata,
    sa.Column("serial_hex", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("revoked_at", TS, nullable=False),
    sa.Column("revoked_by", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(256)),
    sa.Column("cert_not_after", TS, nullable=False),
    sa.Column("agent_id", sa.String(256)),
)

jti_blacklist = sa.Table(
    "jti_blacklist", metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("expires_at", TS, nullable=False),
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("timestamp", TS, nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("agent_id", sa.String(256)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("details", sa.Text),
    sa.Column("result", sa.String(32), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("previous_hash", sa.String(64)),
    sa.Column("chain_seq", sa.BigInteger, nullable=False),
    sa.Column("peer_org_id", sa.String(128)),
    sa.Column("peer_row_hash", sa.String(64)),
    sa.Column("principal_type", sa.String(32), nullable=False, server_default="agent"),
    sa.Column("hash_format", sa.String(8), nullable=False, server_default="v2"),
    sa.UniqueConstraint("org_id", "chain_seq", name="uq_audit_org_seq"),
)

audit_tsa_anchors = sa.Table(
    "audit_tsa_anchors", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("chain_seq", sa.BigInteger, nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("token", sa.Text),
    sa.Column("created_at", TS, nullable=False),
)

mastio_audit_replica = sa.Table(
    "mastio_audit_replica", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("received_at", TS, nullable=False),
)

federation_events = sa.Table(
    "federation_events", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(128)),
    # Per-org sequence: max(seq)+1 of the org, unique per org (contract section 6, point 20).
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("agent_id", sa.String(256)),
    sa.Column("payload_json", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("org_id", "seq", name="uq_federation_events_org_seq"),
)

invite_tokens = sa.Table(
    "invite_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
    sa.Column("label", sa.String(256)),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("used_at", TS),
    sa.Column("used_by_org_id", sa.String(128)),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("initiator_agent_id", sa.String(256), nullable=False),
    sa.Column("initiator_org_id", sa.String(128), nullable=False),
    sa.Column("target_agent_id", sa.String(256), nullable=False),
    sa.Column("target_org_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requested_capabilities_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

session_messages = sa.Table(
    "session_messages", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(64), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("msg_id", sa.String(64), nullable=False),
    sa.Column("sender_agent_id", sa.String(256), nullable=False),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.Column("nonce", sa.String(128), nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("client_seq", sa.Integer),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("session_id", "seq", name="uq_session_message_seq"),
    sa.UniqueConstraint("session_id", "nonce", name="uq_session_message_nonce"),
)

APPEND_ONLY_TABLES = ("audit_log", "audit_tsa_anchors", "mastio_audit_replica")

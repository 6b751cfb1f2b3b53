"""Configuration from the environment of the contract (section 1), plus `.env` in the CWD.

Real environment variables win over `.env`; names are case-insensitive.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ADMIN_SECRET = "change-me-in-production"


def _read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[7:].strip()
        values[key.upper()] = value.strip().strip('"').strip("'")
    return values


def _env() -> dict[str, str]:
    merged = _read_dotenv(Path.cwd() / ".env")
    merged.update({k.upper(): v for k, v in os.environ.items()})
    return merged


# CULLIS_REAL_BROKER_QUIRKS: behave like deployed real brokers (README.md, "Quirks mode").
QUIRKS = ("write_race", "sigterm_ignored", "vault_cached", "redis_fallback", "no_extensions",
          "verbatim_serials", "reapprove_500", "admin_lockout")


def parse_quirks(value: str | None) -> frozenset[str]:
    """`all`, or a comma list of QUIRKS names; empty/unset/`none` = off. Unknown names are fatal."""
    names = {n.strip().lower() for n in (value or "").split(",") if n.strip()}
    if names <= {"none", "off"}:
        return frozenset()
    if "all" in names:
        return frozenset(QUIRKS)
    unknown = sorted(names - set(QUIRKS))
    if unknown:
        raise RuntimeError(f"CULLIS_REAL_BROKER_QUIRKS: unknown quirk(s) {unknown}; known: all, {', '.join(QUIRKS)}")
    return frozenset(names)


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    database_url: str
    redis_url: str
    kms_backend: str
    vault_addr: str
    vault_token: str
    vault_secret_path: str
    vault_ca_cert: str
    vault_allow_http: bool
    admin_secret: str
    dashboard_signing_key: str
    broker_public_url: str
    trust_domain: str
    environment: str
    jwt_expire_minutes: int
    otel_enabled: bool
    log_format: str
    allowed_origins: list[str]
    policy_default_decision: str
    policy_enforcement: bool
    app_version: str
    require_spiffe_san: bool
    broker_ca_key_path: str
    broker_ca_cert_path: str
    # Our extensions (documented in README.md):
    extensions: bool = True
    rate_limit_auth_per_minute: int = 10
    drain_grace_seconds: float = 3.0
    quirks: frozenset = frozenset()
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls) -> "Settings":
        e = _env()
        g = e.get
        quirks = parse_quirks(g("CULLIS_REAL_BROKER_QUIRKS"))
        return cls(
            database_url=g("DATABASE_URL") or "sqlite+aiosqlite:///./agent_trust.db",
            redis_url=g("REDIS_URL", ""),
            kms_backend=(g("KMS_BACKEND") or "vault").lower(),
            vault_addr=(g("VAULT_ADDR") or "").rstrip("/"),
            vault_token=g("VAULT_TOKEN", ""),
            vault_secret_path=(g("VAULT_SECRET_PATH") or "secret/data/broker").strip("/"),
            vault_ca_cert=g("VAULT_CA_CERT", ""),
            vault_allow_http=_bool(g("VAULT_ALLOW_HTTP"), False),
            admin_secret=g("ADMIN_SECRET") or DEFAULT_ADMIN_SECRET,
            dashboard_signing_key=g("DASHBOARD_SIGNING_KEY", ""),
            broker_public_url=(g("BROKER_PUBLIC_URL") or "").rstrip("/"),
            trust_domain=g("TRUST_DOMAIN") or "cullis.local",
            environment=(g("ENVIRONMENT") or "development").lower(),
            jwt_expire_minutes=int(g("JWT_ACCESS_TOKEN_EXPIRE_MINUTES") or 30),
            otel_enabled=_bool(g("OTEL_ENABLED"), True),
            log_format=(g("LOG_FORMAT") or "json").lower(),
            allowed_origins=[o.strip() for o in (g("ALLOWED_ORIGINS") or "").split(",") if o.strip()],
            policy_default_decision=(g("POLICY_DEFAULT_DECISION") or "deny").lower(),
            policy_enforcement=_bool(g("POLICY_ENFORCEMENT"), True),
            app_version=g("APP_VERSION") or "0.1.0",
            require_spiffe_san=_bool(g("REQUIRE_SPIFFE_SAN"), False),
            broker_ca_key_path=g("BROKER_CA_KEY_PATH") or "certs/broker-ca-key.pem",
            broker_ca_cert_path=g("BROKER_CA_CERT_PATH") or "certs/broker-ca.pem",
            extensions=_bool(g("CULLIS_EXTENSIONS"), True) and "no_extensions" not in quirks,
            rate_limit_auth_per_minute=int(g("RATE_LIMIT_AUTH_PER_MINUTE") or 10),
            drain_grace_seconds=float(g("DRAIN_GRACE_SECONDS") or 3),
            quirks=quirks,
            raw=e,
        )

    def quirk(self, name: str) -> bool:
        """True when CULLIS_REAL_BROKER_QUIRKS asks for the real brokers' behaviour `name`."""
        assert name in QUIRKS, name
        return name in self.quirks

    def validate(self) -> None:
        """Fatal configuration checks (exit 1 at import for the admin secret, like real brokers)."""
        if self.admin_secret == DEFAULT_ADMIN_SECRET:
            raise RuntimeError("ADMIN_SECRET is unset or the insecure default: set ADMIN_SECRET")

    def validate_production(self) -> list[str]:
        if self.environment != "production":
            return []
        errors = []
        if self.raw.get("POLICY_DEFAULT_DECISION", "").lower() != "deny":
            errors.append("POLICY_DEFAULT_DECISION must be explicitly 'deny' in production")
        if not self.policy_enforcement:
            errors.append("POLICY_ENFORCEMENT must be true in production")
        if self.database_url.startswith("sqlite"):
            errors.append("DATABASE_URL must not be SQLite in production")
        if self.kms_backend != "vault":
            errors.append("KMS_BACKEND must be vault in production")
        for name in ("REDIS_URL", "DASHBOARD_SIGNING_KEY"):
            if not self.raw.get(name):
                errors.append(f"{name} must be set in production")
        if any("*" in o for o in self.allowed_origins):
            errors.append("ALLOWED_ORIGINS must not contain '*' in production")
        if self.vault_allow_http:
            errors.append("VAULT_ALLOW_HTTP is refused in production")
        return errors


settings = Settings.from_env()

"""Prometheus metrics at GET /metrics (contract section 7), with real brokers' switches and names.

Real brokers serve /metrics only when both OTEL_ENABLED=true and PROMETHEUS_ENABLED=true (their
Prometheus reader is part of the OpenTelemetry setup); otherwise 404 "Prometheus exporter
disabled", and 503 "prometheus_client not installed" when the optional package is missing.
Instrument names are `cullis.<area>.<event>`; in Prometheus dots become underscores and counters
get `_total` (cullis_auth_success_total, ...). Histograms carry the OpenTelemetry exporter's unit
suffix: their instruments are in milliseconds (`ms`), exposed as `<name>_milliseconds_*`.

This broker registers the same series with prometheus_client directly (it ships no OpenTelemetry
SDK); the names an alert rule sees are the same. Counting is a no-op when the exporter is off.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from app.config import _bool, settings

# Counters of the contract (instrument name -> help). Exposed as cullis_<area>_<event>_total.
COUNTERS = {
    "cullis.auth.success": "Access tokens issued",
    "cullis.auth.deny": "Token requests denied (any 4xx of /v1/auth/token)",
    "cullis.session.created": "Broker sessions opened",
    "cullis.session.denied": "Broker sessions denied by policy",
    "cullis.policy.allow": "Policy decisions: allow",
    "cullis.policy.deny": "Policy decisions: deny",
    "cullis.ratelimit.reject": "Requests rejected by a rate limit",
    "cullis.cert.pinning_mismatch": "Logins whose certificate does not match the pinned thumbprint or mastio key",
    "cullis.audit.chain_verify_failed": "Audit-chain verifications that found a broken chain",
    "cullis.dpop.jti_replay_attempt": "Replayed DPoP proofs or client assertions",
    "cullis.revoked_token.use_attempt": "Uses of a revoked access token or of a revoked certificate",
    "cullis.kms.seal_check_failed": "KMS (Vault) checks that failed (sealed, token rejected, unreachable)",
    "cullis.message.queued": "Messages queued for delivery",
    "cullis.message.expired": "Queued messages that expired undelivered",
    "cullis.ws.pong_timeout": "WebSocket clients dropped for a missed pong",
}
# The label some counters carry (OpenTelemetry attributes become Prometheus labels) and its known
# values: those series are exported at 0 from the start, so increase() sees the first event.
LABELS = {
    "cullis.ratelimit.reject": ("bucket", ("auth.token", "federation.agents", "federation.publish_agent",
                                           "broker.sessions", "broker.messages")),
    "cullis.revoked_token.use_attempt": ("credential", ("token", "certificate")),
    "cullis.dpop.jti_replay_attempt": ("kind", ("dpop_proof", "client_assertion")),
    "cullis.cert.pinning_mismatch": ("kind", ("thumbprint", "mastio_signature")),
}
HISTOGRAMS = {
    "cullis.auth.duration": "Duration of /v1/auth/token",
    "cullis.x509.verify_duration": "Duration of agent certificate chain verification",
    "cullis.pdp.webhook_latency": "Latency of policy webhook calls",
}
BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def prometheus_name(instrument: str) -> str:
    return instrument.replace(".", "_")


class Metrics:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.available = True
        self.registry = None
        self._counters: dict = {}
        self._histograms: dict = {}
        if not enabled:
            return
        try:
            import prometheus_client as pc
        except ImportError:
            self.available = False
            return
        self._pc = pc
        pc.disable_created_metrics()  # no <name>_created series: the OpenTelemetry exporter has none
        self.registry = pc.CollectorRegistry(auto_describe=True)
        for name, doc in COUNTERS.items():
            label, values = LABELS.get(name, (None, ()))
            counter = pc.Counter(prometheus_name(name), doc, (label,) if label else (), registry=self.registry)
            for value in values:
                counter.labels(value)
            self._counters[name] = counter
        for name, doc in HISTOGRAMS.items():
            self._histograms[name] = pc.Histogram(prometheus_name(name), doc, unit="milliseconds",
                                                  buckets=BUCKETS_MS, registry=self.registry)

    def inc(self, instrument: str, **labels) -> None:
        counter = self._counters.get(instrument)
        if counter is None:
            if instrument not in COUNTERS:
                raise KeyError(instrument)
            return
        (counter.labels(**labels) if labels else counter).inc()

    def observe_ms(self, instrument: str, value_ms: float) -> None:
        hist = self._histograms.get(instrument)
        if hist is not None:
            hist.observe(value_ms)

    @contextmanager
    def timed(self, instrument: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_ms(instrument, (time.perf_counter() - t0) * 1000)

    def render(self) -> tuple[int, bytes, str]:
        """(status, body, content type) of GET /metrics."""
        if not self.enabled:
            return 404, b'{"detail":"Prometheus exporter disabled"}', "application/json"
        if not self.available:
            return 503, b'{"detail":"prometheus_client not installed"}', "application/json"
        return 200, self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST


def from_settings(s=settings) -> Metrics:
    return Metrics(s.otel_enabled and _bool(s.raw.get("PROMETHEUS_ENABLED"), False))


metrics = from_settings()

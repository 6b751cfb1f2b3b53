"""A bounded load generator: agent logins (DPoP) and authenticated calls through the proxy.

`LoadGen(url, identity_dir, agents, ca_path, calls=N, logins=M, duration=D)` makes exactly N
authenticated calls (`GET /v1/federation/agents`) and M logins, spread evenly over D seconds, from
one thread, and stops by itself (also on `stop()`, and never later than D + one request timeout).
Only loopback and test-bed addresses are accepted. Every request that does not end in success is
recorded with its time, kind, HTTP status and the broker's detail or the transport error.

What counts as one request is what a real agent does: a login is the DPoP nonce round-trip (the
broker asks for its nonce with 401 use_dpop_nonce, the agent sends a new proof and, here, a new
client assertion, since the first broker may have consumed the first one before it died), and an
authenticated call retries once with the nonce the broker asked for (a broker that was not the one
the agent last talked to has another nonce). Anything else, a 429 included, is a failure. The
client itself does not retry on 5xx or connection errors (BrokerClient retries=0).

Each request opens its own connection to the proxy. A kept-alive client connection that nginx
closes while idle at a graceful reload (the rolling restart reloads it twice per broker) races with
a request sent on it at that instant: that is a client/proxy matter that HTTP clients handle by
resending on a new connection, not a broker being unavailable, which is what this load measures.
(Measured: with keep-alive, 2 of 812 requests at 20/s hit that race during 4 reloads.)

Rate limits (broker-api.md): auth.token 10 per 60 s and federation.agents 60 per 60 s per client
address, kept in Redis and shared by all brokers. `budget()` gives the hits a run needs so the
caller can `wait_for_rate_budget()` first; `max_rate()` sizes a run that fits in the limits.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from testkit.broker_orgs import agent_session, collection_import

CALL_PATH = "/v1/federation/agents"
LOGIN_HITS_WORST = 2  # a login on a broker whose nonce the agent does not know yet


@dataclass
class Failure:
    at: float  # seconds since the start
    kind: str  # "login" | "call"
    status: int  # HTTP status, 0 for a transport error
    detail: str


@dataclass
class LoadReport:
    planned: int = 0
    sent: int = 0
    ok: int = 0
    logins: int = 0
    calls: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> dict:
        return {"planned": self.planned, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "logins": self.logins, "calls": self.calls, "seconds": round(self.seconds, 1),
                "failures": [vars(f) for f in self.failures[:20]]}


def _check_target(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"load generator target {url}: give an IP address (loopback or test bed), not {host!r}")
    if not (ip.is_loopback or ip.is_private):
        raise ValueError(f"load generator target {url}: only loopback / test-bed (private) addresses")


def budget(calls: int, logins: int) -> dict:
    """Rate-limit hits a run needs at most ({bucket: hits}); the call retry after a broker change
    is rejected by the DPoP check before the handler counts it."""
    return {"auth.token": logins * LOGIN_HITS_WORST, "federation.agents": calls}


class LoadGen:
    def __init__(self, url: str, identity_dir: Path, agents: list[str], ca_path: str | None = None, *,
                 calls: int, logins: int, duration: float, timeout: float = 10.0):
        _check_target(url)
        if not agents or calls < 0 or logins < 1 or duration <= 0:
            raise ValueError("a load needs agents, logins >= 1 (the first call needs a token) and a duration")
        self.url, self.identity_dir, self.agents, self.ca_path = url, Path(identity_dir), list(agents), ca_path
        self.calls, self.logins, self.duration, self.timeout = calls, logins, float(duration), timeout
        self.report = LoadReport(planned=calls + logins)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- schedule: logins first of each slice, calls evenly in between -------------------------
    def plan(self) -> list[tuple[float, str]]:
        """[(offset seconds, "login" | "call")]: `logins` logins and `calls` calls evenly spread."""
        total = self.calls + self.logins
        step = self.duration / total
        every = max(1, total // self.logins)  # a login every `every` slots, the first slot included
        kinds, logins_left = [], self.logins
        for i in range(total):
            if logins_left and (i % every == 0 or total - i == logins_left):
                kinds.append("login")
                logins_left -= 1
            else:
                kinds.append("call")
        return [(i * step, kind) for i, kind in enumerate(kinds)]

    def _session(self, i: int):
        s = agent_session(self.url, self.identity_dir, self.agents[i % len(self.agents)], self.ca_path)
        s.client.timeout = self.timeout
        return s

    def _login(self, session) -> tuple[int, str]:
        resp = None
        for _attempt in (1, 2):  # the nonce round-trip, each time with a fresh assertion and proof
            resp = session.login_request(session.assertion())
            if not (resp.status == 401 and resp.detail == "use_dpop_nonce"):
                break
        if resp.status == 200:
            session.access_token = resp.json()["access_token"]
            return 200, ""
        return resp.status, resp.detail

    def _one(self, kind: str, state: dict) -> tuple[int, str]:
        try:
            return self._request(kind, state)
        finally:
            if state.get("session") is not None:
                state["session"].client.close()  # one connection per request (see the module doc)

    def _request(self, kind: str, state: dict) -> tuple[int, str]:
        collection_import()
        from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerError
        try:
            if kind == "login":
                session = self._session(state["n_logins"])
                state["n_logins"] += 1
                status, detail = self._login(session)
                if status == 200:
                    state["session"] = session
                return status, detail
            session = state.get("session")
            if session is None:
                return 0, "no token: every login so far failed"
            resp = session.request("GET", CALL_PATH)
            return resp.status, "" if resp.status == 200 else resp.detail
        except BrokerError as e:
            return 0, str(e)

    def run(self) -> LoadReport:
        rep, state, t0 = self.report, {"n_logins": 0, "session": None}, time.monotonic()
        for offset, kind in self.plan():
            pause = t0 + offset - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                break
            if self._stop.is_set() or time.monotonic() - t0 > self.duration + self.timeout:
                break
            status, detail = self._one(kind, state)
            rep.sent += 1
            setattr(rep, kind + "s", getattr(rep, kind + "s") + 1)
            if status == 200:
                rep.ok += 1
            else:
                rep.failures.append(Failure(round(time.monotonic() - t0, 2), kind, status, detail[:300]))
        rep.seconds = time.monotonic() - t0
        return rep

    def start(self) -> "LoadGen":
        self._thread = threading.Thread(target=self.run, name="cullis-loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> LoadReport:
        assert self._thread is not None, "start() first"
        self._thread.join(self.duration + 2 * self.timeout + 30)
        assert not self._thread.is_alive(), "the load generator did not stop by itself"
        return self.report

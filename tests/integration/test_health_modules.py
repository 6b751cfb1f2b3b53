"""Integration tests of the health modules against real processes (no mocks).

- redis_ping against a real redis-server (runbook section 4: confirm Redis and its password).
- broker_health against a real broker process (runbook sections 1 and 8: /health, /readyz).
- service_info against real supervisord-managed processes (runbook section 1: exit class).
"""
from __future__ import annotations

from testkit.ansible import run_module
from testkit.services import RedisServer


def _write_env(path, **values):
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def test_redis_ping_ok_with_env_password(redis_server, tmp_path):
    env = _write_env(tmp_path / ".env", REDIS_URL=redis_server.url, REDIS_PASSWORD=redis_server.password)
    r = run_module("redis_ping", {"env_file": str(env)}, verbosity=3)
    assert r.result["state"] == "ok", r.output
    assert r.result["pong"] is True
    assert r.result["port"] == redis_server.port
    assert r.result["password_source"] == "REDIS_URL"
    assert not r.changed
    assert redis_server.password not in r.output


def test_redis_ping_wrong_password_is_classified(redis_server, tmp_path):
    bad = "not-the-redis-password-" + "x" * 8
    env = _write_env(tmp_path / ".env", REDIS_URL=f"redis://:{bad}@127.0.0.1:{redis_server.port}/0")
    r = run_module("redis_ping", {"env_file": str(env)}, verbosity=3)
    assert r.result["state"] == "wrong_password", r.output
    assert r.result["pong"] is False
    assert bad not in r.output
    assert redis_server.password not in r.output


def test_redis_ping_down_and_no_password(tmp_path):
    server = RedisServer().start()
    try:
        r = run_module("redis_ping", {"port": server.port})
        assert r.result["state"] == "no_password_configured", r.output
        r = run_module("redis_ping", {"port": server.port, "password": server.password}, check=True)
        assert r.result["state"] == "ok", r.output
    finally:
        server.cleanup()
    r = run_module("redis_ping", {"port": server.port, "password": server.password})
    assert r.result["state"] == "down", r.output
    assert not r.failed

"""Cullis broker ASGI app: `uvicorn app.main:app` from broker_src/.

Startup (`LIFESPAN: <step>` on stderr): config checks, database migrations under the advisory
lock, Vault bootstrap (signing key + admin bootstrap, read-merge-CAS), Redis. Any failure prints
`LIFESPAN FAILED: <Type>: <msg>` and a traceback, and uvicorn exits with status 3.
"""
from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import create_async_engine

from app import bootstrap
from app.config import settings
from app.logs import event, stderr
from app.metrics import metrics
from app.state import state

settings.validate()  # ADMIN_SECRET unset/default -> traceback at import, exit 1 (contract section 1)


async def _check_db() -> None:
    async with state.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


def _install_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """SIGTERM/SIGINT: enter drain mode (readyz 503), close WebSockets (1012), then let uvicorn exit.

    Real brokers stay up forever after a signal; we hand it back to uvicorn after the drain grace
    (DRAIN_GRACE_SECONDS, default 3 s) so the process exits well within 10 s.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(sig=sig, previous=previous):
            if state.draining:
                return
            state.draining = True
            if state.settings.quirk("sigterm_ignored"):
                # Real brokers (contract section 1 "Signals"): drain mode only, uvicorn never hears
                # of the signal, the process keeps serving until SIGKILL.
                stderr(f"DRAIN: {signal.Signals(sig).name} received; /readyz is 503 draining")
                asyncio.ensure_future(_close_websockets())
                return
            stderr(f"DRAIN: {signal.Signals(sig).name} received; /readyz is 503 draining, exiting in "
                   f"{state.settings.drain_grace_seconds:g} s")
            asyncio.ensure_future(_drain_then_exit(sig, previous))
        loop.add_signal_handler(sig, handler)


async def _close_websockets() -> None:
    for agent_id in list(state.websockets):
        for ws in list(state.websockets.pop(agent_id, ())):
            try:
                await ws.close(code=1012)
            except Exception:  # noqa: BLE001
                pass


async def _drain_then_exit(sig, previous) -> None:
    await _close_websockets()
    await asyncio.sleep(state.settings.drain_grace_seconds)
    loop = asyncio.get_running_loop()
    loop.remove_signal_handler(sig)
    if callable(previous):
        signal.signal(sig, previous)
        previous(sig, None)  # uvicorn's handler: graceful shutdown
    else:
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)


@asynccontextmanager
async def lifespan(app: FastAPI):
    step = "validate_config"
    try:
        stderr(f"LIFESPAN: {step}")
        problems = settings.validate_production()
        if problems:
            raise RuntimeError("production configuration refused: " + "; ".join(problems))
        step = "init_telemetry"
        stderr(f"LIFESPAN: {step}")
        if settings.otel_enabled:
            event("OTEL_ENABLED is true: no OTLP exporter in this broker; Prometheus /metrics "
                  + ("on" if metrics.enabled else "off (PROMETHEUS_ENABLED is not true)"))
        step = "init_db"
        stderr(f"LIFESPAN: {step}")
        await bootstrap.run_migrations()
        state.engine = create_async_engine(bootstrap.async_url(settings.database_url), pool_pre_ping=True,
                                           pool_size=5, max_overflow=10)
        await _check_db()
        step = "ensure_bootstrapped (admin_secret)"
        stderr(f"LIFESPAN: {step}")
        await bootstrap.ensure_bootstrapped()
        step = "init_redis"
        stderr(f"LIFESPAN: {step}")
        await bootstrap.init_redis()
        step = "ws_manager.init_redis"
        stderr(f"LIFESPAN: {step}")
        if state.store.configured:
            from app.routes_broker import pubsub_loop
            state.tasks.append(asyncio.create_task(pubsub_loop()))
        step = "restore_sessions"
        stderr(f"LIFESPAN: {step}")
        _install_signal_handlers(asyncio.get_running_loop())
        stderr("LIFESPAN: startup steps complete")
        event("broker started", version=settings.app_version, redis=state.store.configured,
              kms=settings.kms_backend, extensions=settings.extensions, quirks=sorted(settings.quirks))
        if settings.quirks:
            stderr(f"QUIRKS: behaving like deployed real brokers: {', '.join(sorted(settings.quirks))}")
    except BaseException as e:
        stderr(f"LIFESPAN FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        raise
    yield
    for task in state.tasks:
        task.cancel()
    if state.store:
        await state.store.close()
    if state.engine is not None:
        await state.engine.dispose()
    event("broker stopped")


app = FastAPI(title="Cullis broker", version=settings.app_version, lifespan=lifespan)
app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")


@app.middleware("http")
async def nonce_and_errors(request: Request, call_next):
    try:
        response = await call_next(request)
    except Exception as e:  # noqa: BLE001 - the contract's `[500] METHOD PATH: ...` line, no secrets
        stderr(f"[500] {request.method} {request.url.path}: {type(e).__name__}: {e}")
        response = JSONResponse({"detail": "Internal server error"}, status_code=500)
    if request.url.path.startswith("/v1"):
        response.headers["DPoP-Nonce"] = state.nonces.get()
    return response


@app.get("/health")
async def health():
    return {"status": "ok", "version": settings.app_version}


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.get("/readyz")
async def readyz():
    if state.draining:
        return JSONResponse({"status": "draining", "checks": {}}, status_code=503)
    checks: dict[str, str] = {}

    async def run(name, fn):
        try:
            await asyncio.wait_for(fn(), timeout=5)
            checks[name] = "ok"
            return True
        except Exception as e:  # noqa: BLE001
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            checks[name] = f"error: {text}"
            stderr(f"READYZ FAIL [{name}]: {text}")
            return False

    ok = await run("database", _check_db)
    if ok:
        if state.store.configured:
            ok = await run("redis", state.store.ping)
        else:
            checks["redis"] = "not_configured"
    if ok:
        ok = await run("kms", bootstrap.check_kms)
        if not ok:
            metrics.inc("cullis.kms.seal_check_failed")
    if ok:
        return {"status": "ready", "checks": checks}
    return JSONResponse({"status": "not_ready", "checks": checks}, status_code=503)


@app.get("/metrics", include_in_schema=False)
async def prometheus_metrics():
    """Prometheus text format; needs OTEL_ENABLED=true and PROMETHEUS_ENABLED=true (contract section 7)."""
    status, body, content_type = metrics.render()
    return Response(body, status_code=status, media_type=content_type)


@app.get("/.well-known/jwks.json")
async def jwks():
    if state.keys is None:
        return JSONResponse({"detail": "Internal server error"}, status_code=500)
    return JSONResponse(state.keys.jwks(), headers={"Cache-Control": "public, max-age=3600"})


from app import dashboard, routes_auth, routes_broker, routes_onboarding, routes_registry  # noqa: E402

app.include_router(routes_registry.router)
app.include_router(routes_auth.router)
app.include_router(routes_broker.router)
app.include_router(routes_onboarding.router)
app.include_router(dashboard.router)

"""Agent WebSocket teardown, shared by the registry routes (binding revoked) and the broker routes.

Lives apart from both route modules so that neither imports the other (no import cycle).
"""
from __future__ import annotations

import json

from app.state import state


async def drop_agent(agent_id: str) -> None:
    """Close the agent's sockets on every worker (binding revoked)."""
    if state.store.configured:
        try:
            await state.store.publish(f"ws:agent:{agent_id}", json.dumps({"type": "_drop"}))
        except Exception:  # noqa: BLE001
            pass
    await _close_local(agent_id)


async def _close_local(agent_id: str) -> None:
    for ws in list(state.websockets.pop(agent_id, ())):
        try:
            await ws.close(code=1008)
        except Exception:  # noqa: BLE001
            pass

"""Federation event log and the extension switch, shared by the registry and broker routes.

Lives apart from both route modules so that neither imports the other (no import cycle).
"""
from __future__ import annotations

import json

import sqlalchemy as sa

from app.deps import fail, utcnow
from app.models import federation_events
from app.state import state

EXT = {"x-cullis-extension": True}


def extension_enabled():
    if not state.settings.extensions:
        fail(404, "Not Found")


async def federation_event(conn, event_type: str, org_id: str | None, agent_id: str | None = None, **payload):
    """Append an event to the org's federation log: seq = max(seq)+1 of the org, unique per org.

    We take a per-org transaction advisory lock first, so concurrent writes for one org queue up.
    Quirk `write_race` (real brokers, contract section 6 point 20): no lock, so two concurrent
    transactions read the same max(seq); the second insert waits for the first to commit, then
    fails on the unique (org_id, seq) index: the whole write is rolled back and answered 500.
    """
    if not state.settings.quirk("write_race"):
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"fedev:{org_id}"})
    last = (await conn.execute(sa.select(sa.func.max(federation_events.c.seq))
                               .where(federation_events.c.org_id == org_id))).scalar()
    await conn.execute(federation_events.insert().values(event_type=event_type, org_id=org_id, seq=(last or 0) + 1,
                                                         agent_id=agent_id,
                                                         payload_json=json.dumps(payload, default=str),
                                                         created_at=utcnow()))

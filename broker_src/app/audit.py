"""Per-org hash-chained audit log (contract section 5, hash format v2)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import sqlalchemy as sa

from app.models import audit_log

SYSTEM_ORG = "__system__"
GENESIS = "genesis"
MAX_DETAILS = 16 * 1024


def entry_hash_v2(ts: dt.datetime, event_type, agent_id, session_id, org_id, result, details, previous_hash,
                  seq: int, peer_org_id, principal_type: str | None = "agent") -> str:
    def s(v):
        return "" if v is None else str(v)
    text = (f"v2|{ts.isoformat()}|{s(event_type)}|{s(agent_id)}|{s(session_id)}|{s(org_id)}|{s(result)}|"
            f"{s(details)}|{previous_hash or GENESIS}|seq={seq}|peer={s(peer_org_id)}")
    if principal_type and principal_type != "agent":
        text += f"|pt={principal_type}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def append(conn, event_type: str, result: str, org_id: str | None = None, agent_id: str | None = None,
                 session_id: str | None = None, details: dict | None = None, peer_org_id: str | None = None,
                 principal_type: str = "agent") -> None:
    """Append one row to the org's chain, serialised per org by a transaction advisory lock."""
    org = org_id or SYSTEM_ORG
    details_text = json.dumps(details or {}, sort_keys=True, default=str)[:MAX_DETAILS]
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"audit:{org}"})
    last = (await conn.execute(
        sa.select(audit_log.c.chain_seq, audit_log.c.entry_hash).where(audit_log.c.org_id == org)
        .order_by(audit_log.c.chain_seq.desc()).limit(1))).first()
    seq = (last.chain_seq + 1) if last else 1
    prev = last.entry_hash if last else None
    ts = dt.datetime.now(dt.timezone.utc)
    h = entry_hash_v2(ts, event_type, agent_id, session_id, org, result, details_text, prev, seq, peer_org_id,
                      principal_type)
    await conn.execute(audit_log.insert().values(
        timestamp=ts, event_type=event_type, agent_id=agent_id, session_id=session_id, org_id=org,
        details=details_text, result=result, entry_hash=h, previous_hash=prev, chain_seq=seq,
        peer_org_id=peer_org_id, principal_type=principal_type, hash_format="v2"))


def verify_rows(rows, from_first_present: bool = False) -> list[str]:
    """Verify chains of rows (mappings, any org mix, ordered by chain_seq per org). Returns problems.

    from_first_present: each org's chain starts at its first row present (older rows archived away);
    that row's own hash is still checked."""
    problems: list[str] = []
    last: dict[str, tuple[int, str]] = {}
    for r in sorted(rows, key=lambda r: (r["org_id"], r["chain_seq"])):
        org = r["org_id"]
        if from_first_present and org not in last:
            last[org] = (r["chain_seq"] - 1, r["previous_hash"])
        prev_seq, prev_hash = last.get(org, (0, None))
        if r["chain_seq"] != prev_seq + 1:
            problems.append(f"{org}: gap before seq {r['chain_seq']}")
        if r["previous_hash"] != prev_hash:
            problems.append(f"{org}: seq {r['chain_seq']} previous_hash does not link")
        ts = r["timestamp"].astimezone(dt.timezone.utc)
        expected = entry_hash_v2(ts, r["event_type"], r["agent_id"], r["session_id"], org, r["result"],
                                 r["details"], r["previous_hash"], r["chain_seq"], r["peer_org_id"],
                                 r["principal_type"])
        if expected != r["entry_hash"]:
            problems.append(f"{org}: seq {r['chain_seq']} entry_hash mismatch")
        last[org] = (r["chain_seq"], r["entry_hash"])
    return problems

"""Process-wide runtime state (one per worker process)."""
from __future__ import annotations

import asyncio

from app.config import Settings, settings
from app.dpop import NonceManager


class State:
    def __init__(self, s: Settings):
        self.settings = s
        self.engine = None
        self.kv = None
        self.keys = None
        self.store = None
        self.nonces = NonceManager()
        self.draining = False
        self.websockets: dict[str, set] = {}
        self.pubsub = None
        self.tasks: list[asyncio.Task] = []


state = State(settings)

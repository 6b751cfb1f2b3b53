"""Redis-backed DPoP JTI replay store, rate limiter and pub/sub (contract section 5, Redis keys).

With no REDIS_URL, in-memory equivalents are used (single process only; a warning at startup).
The replay store does not fail open (a Redis error -> 500); the rate limiter does.
"""
from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis


class Store:
    def __init__(self, url: str, environment: str = "development"):
        self.url = url
        self.environment = environment
        self.redis: aioredis.Redis | None = None
        self._mem_jti: dict[str, float] = {}
        self._mem_rl: dict[str, list[float]] = {}
        if url:
            self.redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                           health_check_interval=30)

    @property
    def configured(self) -> bool:
        return self.redis is not None

    async def ping(self) -> None:
        await self.redis.ping()

    async def consume_dpop_jti(self, jti: str, ttl: int = 300) -> bool:
        """True the first time a jti is seen (SET NX EX), False on replay."""
        if self.redis is not None:
            return bool(await self.redis.set(f"dpop:jti:{jti}", "1", nx=True, ex=ttl))
        if self.environment == "production":
            # Contract section 1: production refuses the in-memory DPoP replay store at runtime.
            raise RuntimeError("in-memory DPoP replay store is refused in production (REDIS_URL unusable)")
        now = time.time()
        if len(self._mem_jti) > 10000:
            self._mem_jti = {k: v for k, v in self._mem_jti.items() if v > now}
        if self._mem_jti.get(jti, 0) > now:
            return False
        self._mem_jti[jti] = now + ttl
        return True

    async def hit(self, subject: str, bucket: str, limit: int, window: int = 60) -> bool:
        """Sliding-window rate limit; True when allowed. Fails open on Redis errors."""
        now = time.time()
        key = f"ratelimit:{subject}:{bucket}"
        if self.redis is not None:
            try:
                member = f"{now}:{uuid.uuid4().hex[:8]}"
                pipe = self.redis.pipeline(transaction=True)
                pipe.zremrangebyscore(key, 0, now - window)
                pipe.zadd(key, {member: now})
                pipe.zcard(key)
                pipe.expire(key, window + 10)
                res = await pipe.execute()
                return res[2] <= limit
            except Exception:  # noqa: BLE001 - fail open, as documented
                return True
        hits = [t for t in self._mem_rl.get(key, []) if t > now - window]
        hits.append(now)
        self._mem_rl[key] = hits
        return len(hits) <= limit

    async def publish(self, channel: str, message: str) -> int:
        if self.redis is None:
            return 0
        return await self.redis.publish(channel, message)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

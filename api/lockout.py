"""Failed authentications per client address: past a limit in a window, 429 with Retry-After.

Keys and tokens are 256-bit random strings, so guessing is hopeless; the limit is about load
and noise: a client throwing thousands of bad credentials is answered from memory, without a
Redis round trip. The count is shared by all API processes (one Redis counter per address and
window); the block is kept in each process once it has seen the count pass the limit, so a
blocked address gets at most one more attempt checked per API process. Successful requests
cost nothing here: the block is a dictionary lookup. Only unknown credentials count; a missing
one or a valid one for another scope (401 without a credential, 403) does not.
"""

import math
import time

from cachetools import LRUCache
from redis.asyncio import Redis
from starlette.requests import Request

from taskenv.shared import keys
from taskenv.shared.errors import TaskenvError, authentication_failed, rate_limited


def client_address(request: Request) -> str:
    """The peer's address (behind a proxy, run uvicorn with `--forwarded-allow-ips`)."""
    return request.client.host if request.client else "unknown"


class AuthLockout:
    def __init__(self, redis: Redis, limit: int, window_sec: int, size: int = 100_000) -> None:
        self.redis = redis
        self.limit = limit
        self.window_sec = window_sec
        self._blocked: LRUCache[str, float] = LRUCache(maxsize=size)

    def check(self, request: Request) -> None:
        """429 if this client's address is blocked; a local lookup only."""
        address = client_address(request)
        until = self._blocked.get(address)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            self._blocked.pop(address, None)
            return
        raise _too_many(left)

    async def failed(self, request: Request) -> TaskenvError:
        """Count one unknown credential; the error to answer with (401, or 429 past the limit)."""
        address = client_address(request)
        key = keys.auth_failures(address)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window_sec, nx=True)
            pipe.pttl(key)
            count, _, ttl_ms = await pipe.execute()
        if int(count) <= self.limit:
            return authentication_failed()
        left = max(int(ttl_ms), 0) / 1000 or float(self.window_sec)
        self._blocked[address] = time.monotonic() + left
        return _too_many(left)


def _too_many(left_sec: float) -> TaskenvError:
    retry_after = max(1, math.ceil(left_sec))
    detail = f"Too many failed authentications from this address; retry in {retry_after} s"
    return rate_limited(detail, left_sec)

"""Redis connections. Pools are bounded and block when full, so a burst of thousands of
requests queues for a connection instead of opening thousands of them."""

from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from taskenv.shared import jobs, keys
from taskenv.shared.settings import Settings


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's discovery of the current master (redis-py), with the blocking pool's wait
    for a free connection: after a failover, connections go to the new master by themselves."""


def _pool(settings: Settings, *, decode: bool) -> BlockingConnectionPool:
    if settings.redis_sentinels:
        return _sentinel_pool(settings, decode=decode)
    return BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        decode_responses=decode,
        health_check_interval=30,
        **_retry(),
    )


def _sentinel_pool(settings: Settings, *, decode: bool) -> BlockingConnectionPool:
    """`TASKENV_REDIS_SENTINELS` ("host:port,host:port") and `TASKENV_REDIS_SENTINEL_MASTER`
    name the master; `TASKENV_REDIS_URL` gives its password, user and db (its host is unused)."""
    url = parse_url(settings.redis_url)
    sentinels = []
    for address in settings.redis_sentinels.split(","):
        host, _, port = address.strip().rpartition(":")
        sentinels.append((host, int(port)))
    sentinel_auth = {"password": settings.redis_sentinel_password} if settings.redis_sentinel_password else {}
    return _BlockingSentinelPool(
        settings.redis_sentinel_master,
        Sentinel(sentinels, sentinel_kwargs=sentinel_auth, socket_timeout=5),  # type: ignore[no-untyped-call]
        max_connections=settings.redis_max_connections,
        timeout=30,
        decode_responses=decode,
        health_check_interval=30,
        **{k: v for k, v in url.items() if k in ("username", "password", "db")},
        **_retry(),
    )


def _retry() -> dict[str, Any]:
    """A command that meets a dropped connection (Redis restarted) is sent again on a new one,
    for about 2 s, before its caller sees the error: a restart costs a pause, not failed
    requests on every stale pooled connection. Resending is safe: taskenv's state-changing
    scripts recognise their own earlier run (see api/dispatch.py)."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=6),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def records_client(settings: Settings) -> "Redis":
    """For taskenv's own keys: strings in, strings out."""
    return Redis(connection_pool=_pool(settings, decode=True))


def arq_client(settings: Settings) -> ArqRedis:
    """For arq, which works in bytes and serializes jobs with msgpack."""
    return ArqRedis(
        connection_pool=_pool(settings, decode=False),
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=keys.arq_queue(keys.host_queue(settings.host_id)),
    )

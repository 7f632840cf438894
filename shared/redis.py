"""Redis connections. Pools are bounded and block when full, so a burst of thousands of
requests queues for a connection instead of opening thousands of them."""

from arq.connections import ArqRedis
from redis.asyncio import BlockingConnectionPool, Redis

from shared import jobs, keys
from shared.settings import Settings


def _pool(settings: Settings, *, decode: bool) -> BlockingConnectionPool:
    return BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        decode_responses=decode,
        health_check_interval=30,
    )


def records_client(settings: Settings) -> "Redis":
    """For taskenv's own keys: strings in, strings out."""
    return Redis(connection_pool=_pool(settings, decode=True))


def arq_client(settings: Settings) -> ArqRedis:
    """For arq, which works in bytes and serializes jobs with msgpack."""
    return ArqRedis(
        connection_pool=_pool(settings, decode=False),
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=keys.arq_queue(settings.queue),
    )

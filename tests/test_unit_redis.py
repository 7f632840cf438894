"""The Redis clients' settings (shared/redis.py): with TASKENV_REDIS_SENTINELS set, a Sentinel
pool built from them, without connecting. tests/test_integration_sentinel.py runs a real one."""

from redis.asyncio.sentinel import SentinelConnectionPool

from taskenv.shared.redis import arq_client, records_client
from taskenv.shared.settings import Settings


def test_sentinel_settings_build_a_sentinel_pool_without_connecting():
    settings = Settings(
        redis_url="redis://:secret@unused:6379/3",
        redis_sentinels="127.0.0.2:26379, sentinel-b:26380",
        redis_sentinel_master="taskenv",
        redis_max_connections=17,
    )
    pool = records_client(settings).connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "taskenv" and pool.max_connections == 17
    hosts = [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
             for c in pool.sentinel_manager.sentinels]  # fmt: skip
    assert hosts == [("127.0.0.2", 26379), ("sentinel-b", 26380)]
    assert pool.connection_kwargs["password"] == "secret" and pool.connection_kwargs["db"] == 3
    assert isinstance(arq_client(settings).connection_pool, SentinelConnectionPool)
    # Without sentinels, the URL is used as it is.
    assert not isinstance(
        records_client(Settings(redis_url="redis://h:1/0")).connection_pool, SentinelConnectionPool
    )

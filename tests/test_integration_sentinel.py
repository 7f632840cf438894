"""Redis high availability through redis-py's Sentinel support: with TASKENV_REDIS_SENTINELS
set, every client asks the sentinels for the master (and, after a failover, for the new one)."""

import subprocess

import pytest
import redis

from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings
from tests.harness import free_port, wait_until

pytestmark = pytest.mark.integration


async def test_clients_find_the_master_through_a_real_sentinel(tmp_path):
    port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor taskenv 127.0.0.1 {port} 1\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        asker = redis.Redis(port=sentinel_port)
        wait_until(
            lambda: asker.sentinel_get_master_addr_by_name("taskenv") is not None, "sentinel", sentinel
        )
        asker.close()
        settings = Settings(
            redis_url="redis://unused/0",
            redis_sentinels=f"127.0.0.1:{sentinel_port}",
            redis_sentinel_master="taskenv",
        )
        client = records_client(settings)
        await client.set("taskenv:probe", "through the sentinel")
        assert await client.get("taskenv:probe") == "through the sentinel"
        await client.aclose()
        direct = redis.Redis(port=port, decode_responses=True)
        assert direct.get("taskenv:probe") == "through the sentinel"  # it was the master
        direct.close()
    finally:
        for proc in (sentinel, master):
            proc.terminate()
            proc.wait(timeout=10)

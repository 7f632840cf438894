"""Idempotency-Key on execute over HTTP against real processes and a real sandbox, which counts
the runs. (An org's rate, the bounded queues and a key's expiry: test_inprocess_admission.py;
commands per environment: test_integration_execute.py.)"""

import asyncio
import time
import uuid

import httpx
import pytest

from taskenv.shared import keys
from taskenv.shared.secrets import hash_secret
from tests.conftest import Env, provision
from tests.helpers import until_true

pytestmark = pytest.mark.integration


async def run(
    client: httpx.AsyncClient, env: Env, command: str, key: str | None = None, timeout_sec: int = 10
) -> httpx.Response:
    headers = env.headers() | ({"Idempotency-Key": key} if key is not None else {})
    return await client.post(
        f"{env.url}/execute", json={"command": command, "timeout_sec": timeout_sec}, headers=headers
    )


async def lines(client: httpx.AsyncClient, env: Env, path: str) -> int:
    response = await run(client, env, f"cat {path} 2>/dev/null | wc -l")
    assert response.status_code == 200, response.text
    return int(response.json()["output"])


# Idempotency-Key, against the shared service.


async def test_a_retry_with_the_same_key_gets_the_first_answer_without_a_second_run(client, env):
    key = uuid.uuid4().hex
    command = "echo ran >> /tmp/runs; wc -l < /tmp/runs; exit 3"
    first = await run(client, env, command, key)
    assert first.status_code == 200 and first.json() == {"exit_code": 3, "output": "1\n"}
    again = await run(client, env, command, key)
    assert again.status_code == 200 and again.json() == first.json()
    assert await lines(client, env, "/tmp/runs") == 1
    # Without a key, or with another key, the same command runs again.
    assert (await run(client, env, command)).json()["output"] == "2\n"
    assert (await run(client, env, command, uuid.uuid4().hex)).json()["output"] == "3\n"


async def test_simultaneous_requests_with_one_key_run_the_command_once(client, env):
    key = uuid.uuid4().hex
    command = "echo ran >> /tmp/together; sleep 1; wc -l < /tmp/together"
    responses = await asyncio.gather(*(run(client, env, command, key) for _ in range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert {r.json()["output"] for r in responses} == {"1\n"}
    assert await lines(client, env, "/tmp/together") == 1


async def started_running(client: httpx.AsyncClient, env: Env) -> bool:
    return await lines(client, env, "/tmp/slow") >= 1


async def test_a_retry_waits_for_the_first_command_still_running(client, env):
    key = uuid.uuid4().hex
    command = "echo ran >> /tmp/slow; sleep 2; echo done"
    started = time.monotonic()
    first = asyncio.create_task(run(client, env, command, key))
    # The retry comes once the first command is running (it has written its line).
    await until_true(lambda: started_running(client, env), "the first command running", timeout=10)
    retry = await run(client, env, command, key)
    waited = time.monotonic() - started
    assert retry.status_code == 200 and retry.json() == {"exit_code": 0, "output": "done\n"}
    assert (await first).json() == retry.json()
    # Answered when the first command ended (~2 s), not by a second run or at the deadline.
    assert waited < 6, waited
    assert await lines(client, env, "/tmp/slow") == 1


async def test_a_first_answer_that_is_an_error_is_replayed_too(client, env):
    key = uuid.uuid4().hex
    command = "echo ran >> /tmp/late; echo partial; sleep 30"
    first = await run(client, env, command, key, timeout_sec=1)
    assert first.status_code == 504 and first.json()["output"] == "partial\n"
    again = await run(client, env, command, key, timeout_sec=1)
    assert again.status_code == 504 and again.json() == first.json()
    assert await lines(client, env, "/tmp/late") == 1


async def test_a_key_reused_with_another_body_is_409_and_keys_are_per_environment(client, service, env):
    key = uuid.uuid4().hex
    assert (await run(client, env, "echo one", key)).status_code == 200
    other = await run(client, env, "echo two", key)
    assert other.status_code == 409 and other.json()["type"] == "conflict_error"
    assert "Idempotency-Key was used with another command" in other.json()["detail"]
    longer = await run(client, env, "echo one", key, timeout_sec=11)
    assert longer.status_code == 409
    # The same key in another environment is another key.
    second = await provision(client, service)
    assert (await run(client, second, "echo one", key)).json()["output"] == "one\n"
    await client.delete(second.url)


async def test_malformed_keys_are_422_and_keys_expire(client, service, env):
    for bad in ("", "k" * 256):
        response = await run(client, env, "true", bad)
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    key = "k" * 255
    assert (await run(client, env, "true", key)).status_code == 200
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(service.redis_url)
    ttl = await redis.pttl(keys.idempotency(env.id, hash_secret(key)))
    await redis.aclose()
    assert 590_000 < ttl <= 600_000  # TASKENV_IDEMPOTENCY_TTL_SEC's default


# An org's rate, the queues' bound and a key's expiry need no sandbox: tests/test_inprocess_admission.py.

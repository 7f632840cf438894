"""Admission control over HTTP against real processes: Idempotency-Key on execute, an org's
request rate, a bounded queue. (Commands per environment: test_integration_execute.py.)"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from taskenv.shared import keys
from taskenv.shared.secrets import hash_secret
from tests.conftest import Env, provision
from tests.stack import Stack

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


async def test_a_retry_waits_for_the_first_command_still_running(client, env):
    key = uuid.uuid4().hex
    command = "echo ran >> /tmp/slow; sleep 2; echo done"
    started = time.monotonic()
    first = asyncio.create_task(run(client, env, command, key))
    await asyncio.sleep(0.5)
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


# An org's rate, the queue's bound and a key's expiry, against a service with small limits.


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("limited"),
        {
            "TASKENV_ORG_RATE_PER_SEC": "4",
            "TASKENV_ORG_RATE_BURST": "8",
            "TASKENV_MAX_QUEUE_DEPTH": "3",
            "TASKENV_IDEMPOTENCY_TTL_SEC": "2",
        },
    )
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.fixture
async def limited_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5)) as http:
        yield http


async def _provision(client: httpx.AsyncClient, stack: Stack, key: str, org: str) -> Env:
    """Provision, polling slowly enough to stay within the org's rate."""
    headers = {"X-API-Key": key}
    created = (await client.post(stack.envs_url(org), json={"task_ref": "default"}, headers=headers)).json()
    env = Env(created["id"], created["execute_token"], f"{stack.envs_url(org)}/{created['id']}")
    for _ in range(100):
        await asyncio.sleep(0.3)
        status = await client.get(f"{env.url}/status", headers=headers)
        if status.status_code == 200 and status.json()["state"] == "ready":
            return env
    raise AssertionError("not ready")


async def test_an_org_over_its_rate_gets_429_with_retry_after(limited, limited_client):
    key, calm = limited.key("hasty"), limited.key("calm")
    url = limited.envs_url("hasty")
    answers = [await limited_client.get(url, headers={"X-API-Key": key}) for _ in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[:8] == [200] * 8 and 429 in codes[8:], codes  # the burst, then the rate
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["type"] == "rate_limit_error" and "hasty" in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "1"
    # Another org is not slowed down by this one.
    calm_answer = await limited_client.get(limited.envs_url("calm"), headers={"X-API-Key": calm})
    assert calm_answer.status_code == 200
    await asyncio.sleep(int(refused.headers["Retry-After"]))
    assert (await limited_client.get(url, headers={"X-API-Key": key})).status_code == 200


async def test_executes_count_against_their_org_rate(limited, limited_client):
    key = limited.key("runner")
    env = await _provision(limited_client, limited, key, "runner")
    await asyncio.sleep(2.5)  # the bucket refills
    # Commands alone spend the bucket: 20 in a row outrun 8 + 4/s.
    codes = [(await run(limited_client, env, "true")).status_code for _ in range(20)]
    assert codes[:8] == [200] * 8 and 429 in codes, codes
    await asyncio.sleep(2.5)
    # And the org's other requests spend the same bucket as its commands.
    for _ in range(8):
        assert (await limited_client.get(limited.envs_url("runner"), headers={"X-API-Key": key})).is_success
    refused = await run(limited_client, env, "true")
    assert refused.status_code == 429, refused.text
    assert "runner" in refused.json()["detail"] and refused.headers["Retry-After"] == "1"
    await asyncio.sleep(1)
    assert (await run(limited_client, env, "echo ok")).json()["output"] == "ok\n"
    await limited_client.delete(env.url, headers={"X-API-Key": key})


async def test_a_full_queue_answers_429_and_drains(limited, limited_client):
    key = limited.key("queued")
    headers = {"X-API-Key": key}
    env = await _provision(limited_client, limited, key, "queued")
    await asyncio.sleep(2.5)
    # Four commands at once, for a queue of at most 3 jobs (TASKENV_MAX_QUEUE_DEPTH; the
    # reaper's cron job may hold one of them for a moment): the last are refused.
    holding = [asyncio.create_task(run(limited_client, env, "sleep 3; echo held")) for _ in range(4)]
    await asyncio.sleep(1)
    assert limited.client().zcard(keys.arq_queue(keys.host_queue(limited.host))) <= 3
    answers = [await task for task in holding]
    held = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(held) in (2, 3) and all(a.json()["output"] == "held\n" for a in held), [
        a.text for a in answers
    ]
    for answer in refused:
        assert answer.status_code == 429 and "holds its limit of 3 jobs" in answer.json()["detail"]
        assert answer.headers["Retry-After"] == "1"
    assert (await run(limited_client, env, "echo again")).json()["output"] == "again\n"
    # With no worker taking provisions, three fill the provision queue; the fourth is refused
    # and leaves no environment behind; once a worker is back, the three are provisioned.
    Stack.stop(limited.worker)
    await asyncio.sleep(1)
    urls = []
    for _ in range(3):
        created = await limited_client.post(
            limited.envs_url("queued"), json={"task_ref": "default"}, headers=headers
        )
        assert created.status_code == 201, created.text
        urls.append(f"{limited.envs_url('queued')}/{created.json()['id']}")
    before = (await limited_client.get(limited.envs_url("queued"), headers=headers)).json()["total"]
    full = await limited_client.post(
        limited.envs_url("queued"), json={"task_ref": "default"}, headers=headers
    )
    assert full.status_code == 429 and full.headers["Retry-After"] == "1", full.text
    await asyncio.sleep(0.5)
    after = (await limited_client.get(limited.envs_url("queued"), headers=headers)).json()["total"]
    assert after == before
    limited.start_worker()
    for url in urls:
        for _ in range(100):
            await asyncio.sleep(0.3)
            if (await limited_client.get(f"{url}/status", headers=headers)).json().get("state") == "ready":
                break
        else:
            raise AssertionError(f"{url} not ready")
    for url in [env.url, *urls]:
        await asyncio.sleep(0.3)
        assert (await limited_client.delete(url, headers=headers)).status_code == 204


async def test_an_idempotency_key_expires(limited, limited_client):
    key = limited.key("expiring")
    env = await _provision(limited_client, limited, key, "expiring")
    command = "echo ran >> /tmp/expiring; wc -l < /tmp/expiring"
    first = await run(limited_client, env, command, "k1", timeout_sec=1)
    assert first.json()["output"] == "1\n"
    assert (await run(limited_client, env, command, "k1", timeout_sec=1)).json()["output"] == "1\n"
    await asyncio.sleep(2.5)  # TASKENV_IDEMPOTENCY_TTL_SEC=2
    assert (await run(limited_client, env, command, "k1", timeout_sec=1)).json()["output"] == "2\n"
    await limited_client.delete(env.url, headers={"X-API-Key": key})

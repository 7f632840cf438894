"""Admission through the real API app in process (tests/inprocess.py): an org's request rate,
the queues' bound, an Idempotency-Key's expiry. The fake worker can be paused, so a full queue
is a state the test sets, not a race against real commands."""

import asyncio

import httpx
import pytest

from taskenv.shared import keys
from taskenv.shared.secrets import hash_secret
from tests.helpers import Env
from tests.inprocess import InProcess, in_process, provisioned

# One token a second: the API's clock is moved on by hand (`InProcess.clock`), so no request of
# the test earns one unless the test says so.
RATE_PER_SEC, BURST = 1, 8


@pytest.fixture
async def limited(monkeypatch):
    """A deployment with a small org rate."""
    async with in_process(monkeypatch, org_rate_per_sec=RATE_PER_SEC, org_rate_burst=BURST) as running:
        yield running


@pytest.fixture
async def bounded(monkeypatch):
    """A deployment with small queues and short-lived Idempotency-Keys (and the default rate)."""
    async with in_process(monkeypatch, max_queue_depth=3, idempotency_ttl_sec=1) as running:
        yield running


async def run(stack: InProcess, env: Env, command: str, key: str | None = None) -> httpx.Response:
    headers = env.headers() | ({"Idempotency-Key": key} if key is not None else {})
    return await stack.http.post(
        f"{env.url}/execute", json={"command": command, "timeout_sec": 1}, headers=headers
    )


async def until_refused(send, most: int = 500) -> list[int]:
    """Status codes of requests sent one after another up to the first 429."""
    codes: list[int] = []
    while 429 not in codes and len(codes) < most:
        codes.append((await send()).status_code)
    return codes


async def test_an_org_over_its_rate_gets_429_with_retry_after(limited):
    key, calm = await limited.key("hasty"), await limited.key("calm")
    url = limited.envs_url("hasty")
    answers = [await limited.http.get(url, headers={"X-API-Key": key}) for _ in range(BURST)]
    assert [a.status_code for a in answers] == [200] * BURST  # the burst
    codes = await until_refused(lambda: limited.http.get(url, headers={"X-API-Key": key}))
    assert codes[-1] == 429, codes  # then the rate
    refused = await limited.http.get(url, headers={"X-API-Key": key})
    assert refused.status_code == 429
    assert refused.json()["type"] == "rate_limit_error" and "hasty" in refused.json()["detail"]
    assert refused.json()["code"] == 429 and refused.headers["Retry-After"] == "1"
    # Another org is not slowed down by this one.
    calm_answer = await limited.http.get(limited.envs_url("calm"), headers={"X-API-Key": calm})
    assert calm_answer.status_code == 200
    limited.clock.advance(int(refused.headers["Retry-After"]))  # the wait it asked for
    assert (await limited.http.get(url, headers={"X-API-Key": key})).status_code == 200


async def test_executes_count_against_their_org_rate(limited):
    key = await limited.key("runner")
    env = await provisioned(limited, key, "runner")
    listing = limited.envs_url("runner")
    # Commands spend the bucket; once they have emptied it, the org's other requests are refused.
    commands = await until_refused(lambda: run(limited, env, "true"))
    assert commands[-1] == 429 and 200 in commands, commands
    assert (await limited.http.get(listing, headers={"X-API-Key": key})).status_code == 429
    limited.clock.advance(1)  # Retry-After: the bucket refills as time passes
    # And the org's other requests spend the same bucket as its commands.
    codes = await until_refused(lambda: limited.http.get(listing, headers={"X-API-Key": key}))
    assert codes[-1] == 429 and 200 in codes, codes
    refused = await run(limited, env, "true")
    assert refused.status_code == 429, refused.text
    assert "runner" in refused.json()["detail"] and refused.headers["Retry-After"] == "1"
    limited.clock.advance(1)
    assert (await run(limited, env, "echo ok")).json()["output"] == "ran: echo ok\n"
    # Refused commands were never enqueued: the worker ran only the admitted ones.
    assert limited.worker.ran.count("execute") == commands.count(200) + 1


async def test_a_full_queue_answers_429_and_drains(bounded):
    key = await bounded.key("queued")
    headers = {"X-API-Key": key}
    env = await provisioned(bounded, key, "queued")
    # With the worker paused, three commands fill the host's queue (max_queue_depth 3): the
    # fourth is refused; the three are answered once the worker takes jobs again.
    bounded.worker.paused = True
    holding = [asyncio.create_task(run(bounded, env, f"echo held {n}")) for n in range(3)]
    queue = keys.arq_queue(keys.host_queue("fake-host"))
    while await bounded.records.zcard(queue) < 3:
        await asyncio.sleep(0.01)
    refused = await run(bounded, env, "echo fourth")
    assert refused.status_code == 429 and "holds its limit of 3 jobs" in refused.json()["detail"], (
        refused.text
    )
    assert refused.headers["Retry-After"] == "1"
    bounded.worker.paused = False
    answers = await asyncio.gather(*holding)
    assert sorted(a.json()["output"] for a in answers) == [f"ran: echo held {n}\n" for n in range(3)]
    assert bounded.worker.ran.count("execute") == 3  # the refused one never ran
    # The provision queue likewise: the fourth provision is refused and leaves no record behind.
    bounded.worker.paused = True
    urls = []
    for _ in range(3):
        created = await bounded.http.post(
            bounded.envs_url("queued"), json={"task_ref": "default"}, headers=headers
        )
        assert created.status_code == 201, created.text
        urls.append(f"{bounded.envs_url('queued')}/{created.json()['id']}")
    before = (await bounded.http.get(bounded.envs_url("queued"), headers=headers)).json()["total"]
    full = await bounded.http.post(bounded.envs_url("queued"), json={"task_ref": "default"}, headers=headers)
    assert full.status_code == 429 and full.headers["Retry-After"] == "1", full.text
    after = (await bounded.http.get(bounded.envs_url("queued"), headers=headers)).json()["total"]
    assert after == before
    bounded.worker.paused = False
    for url in urls:
        for _ in range(200):
            if (await bounded.http.get(f"{url}/status", headers=headers)).json()["state"] == "ready":
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"{url} not ready")


async def test_an_idempotency_key_expires(bounded):
    key = await bounded.key("expiring")
    env = await provisioned(bounded, key, "expiring")
    first = await run(bounded, env, "echo once", "k1")
    assert (await run(bounded, env, "echo once", "k1")).json() == first.json()
    assert bounded.worker.ran.count("execute") == 1
    record = keys.idempotency(env.id, hash_secret("k1"))
    # idempotency_ttl_sec=1, and never before the command's deadline (1 s) and grace: the record
    # lives a few seconds. Its expiry is Redis's; the test does not wait it out but removes it.
    lifetime_ms = await bounded.records.pttl(record)
    assert 0 < lifetime_ms <= 3000, lifetime_ms
    await bounded.records.delete(record)
    assert (await run(bounded, env, "echo once", "k1")).status_code == 200
    assert bounded.worker.ran.count("execute") == 2

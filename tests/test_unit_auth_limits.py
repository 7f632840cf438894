"""Credential checks: constant-time comparison and the failed-authentication limit
(fakeredis: pure logic only; tests/test_integration_bad_input.py drives the real service)."""

import hmac

import fakeredis
import pytest
from starlette.requests import Request

from taskenv.api.lockout import AuthLockout
from taskenv.shared import keys
from taskenv.shared.errors import TaskenvError
from taskenv.shared.secrets import hash_secret, matches, new_execute_token


def test_comparison_is_of_two_hashes_whatever_the_token(monkeypatch):
    """What reaches the comparison never depends on the candidate's length or bytes: both sides
    are 64 hex digits, compared by `hmac.compare_digest`, which takes the same time wherever
    they differ. A near miss and a wild guess cost the same."""
    real = new_execute_token()
    compared: list[tuple[str, str]] = []
    original = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    candidates = [real[:-1] + ("A" if real[-1] != "A" else "B"), "", "x" * 100_000, "tk_\udcff\x00é", real]
    results = [matches(candidate, hash_secret(real)) for candidate in candidates]
    assert results == [False, False, False, False, True]
    assert len(compared) == len(candidates)
    assert all(len(a) == len(b) == 64 and set(a + b) <= set("0123456789abcdef") for a, b in compared)


def request_from(address: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": (address, 1234)})


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def test_failures_past_the_limit_block_the_address_with_retry_after(redis):
    lockout = AuthLockout(redis, limit=3, window_sec=30)
    attacker, bystander = request_from("127.0.1.1"), request_from("127.0.1.2")
    answers = [await lockout.failed(attacker) for _ in range(4)]
    assert [e.status for e in answers] == [401, 401, 401, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 30
    with pytest.raises(TaskenvError) as blocked:
        lockout.check(attacker)  # from memory: no Redis call
    assert blocked.value.status == 429
    lockout.check(bystander)  # others are not blocked
    assert (await lockout.failed(bystander)).status == 401
    assert 0 < await redis.ttl(keys.auth_failures("127.0.1.1")) <= 30


async def test_the_count_is_shared_between_api_processes(redis):
    first, second = AuthLockout(redis, limit=2, window_sec=30), AuthLockout(redis, limit=2, window_sec=30)
    client = request_from("127.0.1.3")
    assert (await first.failed(client)).status == 401
    assert (await first.failed(client)).status == 401
    second.check(client)  # `second` has not seen the block yet...
    assert (await second.failed(client)).status == 429  # ...its first failure finds the count past it
    with pytest.raises(TaskenvError):
        second.check(client)


async def test_the_block_ends_with_the_window(redis, monkeypatch):
    import taskenv.api.lockout

    lockout = AuthLockout(redis, limit=1, window_sec=5)
    client = request_from("127.0.1.4")
    await lockout.failed(client)
    assert (await lockout.failed(client)).status == 429
    now = taskenv.api.lockout.time.monotonic()
    monkeypatch.setattr(taskenv.api.lockout.time, "monotonic", lambda: now + 6)
    lockout.check(client)  # no longer blocked

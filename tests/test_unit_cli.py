"""The operator's CLI, pure parts: API keys indexed, listed and revoked (fakeredis); `up`'s
restart budget (real child processes); what an error line may show of a Redis URL."""

import subprocess
import sys

import fakeredis
import pytest

from taskenv.cli import up
from taskenv.cli.failures import _redis_where
from taskenv.shared import apikeys, keys
from taskenv.shared.secrets import hash_secret
from taskenv.shared.settings import Settings


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def test_keys_are_listed_by_org_without_the_key_and_revoked_by_id(redis):
    first = await apikeys.create(redis, "acme", "main")
    second = await apikeys.create(redis, "acme", "other")
    third = await apikeys.create(redis, "beta", "main")
    listed = await apikeys.listed(redis)
    assert [(k.org, k.workspace) for k in listed] == [("acme", "main"), ("acme", "other"), ("beta", "main")]
    assert [k.id for k in listed] == [hash_secret(k)[: apikeys.ID_CHARS] for k in (first, second, third)]
    assert all(k not in str(listed) for k in (first, second, third))
    assert [k.workspace for k in await apikeys.listed(redis, "acme")] == ["main", "other"]
    revoked = await apikeys.revoke(redis, listed[2].id[:8])
    assert (revoked.org, revoked.workspace) == ("beta", "main")
    assert not await redis.exists(keys.api_key(hash_secret(third)))
    assert await redis.smembers(keys.API_KEY_ORGS) == {"acme"}  # its org's index is empty: gone
    assert [k.id for k in await apikeys.listed(redis)] == [k.id for k in listed[:2]]


async def test_revoke_needs_one_key_and_enough_of_its_id(redis):
    await apikeys.create(redis, "acme", "main")
    with pytest.raises(apikeys.UnknownKey, match="at least 6"):
        await apikeys.revoke(redis, "abc")
    with pytest.raises(apikeys.UnknownKey, match="no API key"):
        await apikeys.revoke(redis, "ffffffffffff")
    assert len(await apikeys.listed(redis)) == 1


def test_an_error_line_shows_no_redis_password():
    where = _redis_where(Settings(redis_url="redis://user:s3cret@127.0.0.1:6380/2"))
    assert where == "Redis at redis://127.0.0.1:6380/2"


def _dies_at_once() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_a_child_that_keeps_dying_stops_everything_after_its_restart_budget(monkeypatch, capsys):
    monkeypatch.setattr(up, "POLL_SEC", 0.01)
    child = up.Child("worker 1", _dies_at_once, 1)
    child.launch()
    assert up._supervise([child], {"signal": 0}) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == up.MAX_RESTARTS + 1 and len(child.restarts) == up.MAX_RESTARTS
    assert all("exited with code 3: restarting it" in line for line in lines[:-1])
    assert f"after {up.MAX_RESTARTS} restarts within" in lines[-1]


def test_restarts_older_than_the_window_do_not_count():
    child = up.Child("worker 1", _dies_at_once, 1)
    child.restarts.extend([0.0] * up.MAX_RESTARTS)
    assert not child.may_restart(up.RESTART_WINDOW_SEC)
    assert child.may_restart(up.RESTART_WINDOW_SEC + 1) and not child.restarts


def test_a_signal_ends_supervision_with_0():
    assert up._supervise([], {"signal": 2}) == 0

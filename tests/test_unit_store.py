"""Environment records and their indexes (fakeredis: pure logic only)."""

import time

import fakeredis
import pytest

from taskenv.shared import keys, store
from taskenv.shared.models import EnvironmentState
from taskenv.shared.tasks import TaskSpec


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def _create(redis: fakeredis.FakeAsyncRedis, env_id: str, ws: str = "main", lifetime: int = 60) -> dict:
    return await store.create(
        redis,
        env_id=env_id,
        org="acme",
        workspace=ws,
        task_ref="default",
        spec=TaskSpec(name="default", instruction="do it"),
        token_hash="h-" + env_id,
        lifetime_sec=lifetime,
        provision_timeout_sec=60,
    )


async def test_create_indexes_the_record(redis):
    record = await _create(redis, "e1")
    assert record["state"] == EnvironmentState.PROVISIONING
    assert await store.get(redis, "e1") == record
    assert await redis.get(keys.execute_token("h-e1")) == "e1"
    assert record["host"] == "" and await redis.zscore(keys.PROVISIONING, "e1") is not None
    assert "token" not in store.to_environment(record).model_dump_json()


async def test_set_if_state_is_compare_and_set(redis):
    await _create(redis, "e1")
    assert await store.set_if_state(redis, "e1", EnvironmentState.PROVISIONING, state=EnvironmentState.READY)
    # A second writer that still believes it is provisioning must not win.
    assert not await store.set_if_state(
        redis, "e1", EnvironmentState.PROVISIONING, state=EnvironmentState.FAILED, error="x"
    )
    record = await store.get(redis, "e1")
    assert record is not None and record["state"] == "ready" and record["error"] == ""


async def test_tear_down_returns_previous_state_once(redis):
    await _create(redis, "e1")
    assert await store.claim_provision(redis, "e1", "q", cap=10) == ("claimed", 1)
    record = await store.get(redis, "e1")
    assert record is not None
    assert await store.tear_down(redis, record, error="expired", retention_sec=100) == "provisioning"
    assert await store.tear_down(redis, record, retention_sec=100) == "torn_down"
    after = await store.get(redis, "e1")
    assert after is not None and after["state"] == "torn_down" and after["error"] == "expired"
    assert await redis.zscore(keys.expiry_index("q"), "e1") is None
    assert await redis.zscore(keys.PROVISIONING, "e1") is None
    assert 0 < await redis.ttl(keys.environment("e1")) <= 100


async def test_teardown_wins_over_a_late_provision(redis):
    record = await _create(redis, "e1")
    await store.tear_down(redis, record, retention_sec=0)
    assert not await store.set_if_state(
        redis, "e1", EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )


async def test_expired_lists_only_past_deadlines(redis):
    await _create(redis, "old", lifetime=1)
    await _create(redis, "new", lifetime=3600)
    for env_id in ("old", "new"):
        await store.claim_provision(redis, env_id, "q", cap=10)
    assert await store.expired(redis, "q", time.time() + 2) == ["old"]


async def test_list_page_filters_paginates_and_forgets_vanished_records(redis):
    for i in range(5):
        await _create(redis, f"e{i}")
    await _create(redis, "elsewhere", ws="other")
    await store.set_if_state(redis, "e0", EnvironmentState.PROVISIONING, state=EnvironmentState.READY)
    await redis.delete(keys.environment("e4"))

    page = await store.list_page(redis, "acme", "main", states=set(), page=1, limit=3)
    assert (page.total, page.total_pages, page.has_next, page.has_previous) == (4, 2, True, False)
    assert [e.id for e in page.environments] == ["e3", "e2", "e1"]  # newest first
    page2 = await store.list_page(redis, "acme", "main", states=set(), page=2, limit=3)
    assert [e.id for e in page2.environments] == ["e0"] and page2.has_previous and not page2.has_next
    ready = await store.list_page(redis, "acme", "main", states={EnvironmentState.READY}, page=1, limit=50)
    assert [e.id for e in ready.environments] == ["e0"]
    assert await redis.zscore(keys.workspace_index("acme", "main"), "e4") is None


async def test_a_host_claims_a_provision_once_and_never_past_its_cap(redis):
    for env_id in ("e1", "e2", "e3"):
        await _create(redis, env_id)
    assert await store.claim_provision(redis, "e1", "a", cap=2) == ("claimed", 1)
    record = await store.get(redis, "e1")
    assert record is not None and record["host"] == "a"
    assert await redis.zscore(keys.expiry_index("a"), "e1") == pytest.approx(float(record["expires_at"]))
    # Another host (or a second run of the job) cannot take it again.
    assert (await store.claim_provision(redis, "e1", "b", cap=2))[0] == "taken"
    assert await store.claim_provision(redis, "e2", "a", cap=2) == ("claimed", 2)
    assert await store.claim_provision(redis, "e3", "a", cap=2) == ("full", 2)
    # Only live environments count: a failed one frees its place.
    await store.set_if_state(redis, "e1", EnvironmentState.PROVISIONING, state=EnvironmentState.FAILED)
    assert await store.claim_provision(redis, "e3", "a", cap=2) == ("claimed", 2)
    torn = await store.get(redis, "e2")
    assert torn is not None
    await store.tear_down(redis, torn, retention_sec=0)
    assert (await store.claim_provision(redis, "e2", "a", cap=2))[0] == "torn_down"

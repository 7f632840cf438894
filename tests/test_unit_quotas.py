"""Per-org and per-workspace quotas, in their Redis scripts (fakeredis: logic only;
tests/test_integration_front_door.py drives the real service)."""

import time

import fakeredis
import pytest

from taskenv.api.dispatch import Admission, Dispatcher
from taskenv.api.ratelimit import OrgRate
from taskenv.shared import commands, jobs, keys, quotas, store
from taskenv.shared.errors import TaskenvError
from taskenv.shared.quotas import Limits, Quota
from taskenv.shared.tasks import TaskSpec


class Listener:
    channel = "taskenv:reply:test"


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def _create(redis, env_id: str, org: str = "acme", ws: str = "main", limits: Limits | None = None):
    return await store.create(
        redis,
        env_id=env_id,
        org=org,
        workspace=ws,
        task_ref="default",
        spec=TaskSpec(name="default"),
        token_hash="h-" + env_id,
        lifetime_sec=3600,
        provision_timeout_sec=60,
        limits=limits or Limits(org_environments=2, workspace_environments=1),
    )


async def _refused(redis, env_id: str, **kwargs) -> Quota:
    with pytest.raises(store.OverQuota) as refused:
        await _create(redis, env_id, **kwargs)
    # Nothing of it was written.
    assert await redis.exists(keys.environment(env_id), keys.execute_token("h-" + env_id)) == 0
    assert await redis.zscore(keys.PROVISIONING, env_id) is None
    return refused.value.quota


async def test_live_environments_are_limited_per_workspace_and_per_org(redis):
    await _create(redis, "e1", ws="main")
    assert await _refused(redis, "e2", ws="main") == Quota.WORKSPACE_ENVIRONMENTS
    await _create(redis, "e3", ws="second")
    assert await _refused(redis, "e4", ws="third") == Quota.ORG_ENVIRONMENTS
    assert await redis.zcard(keys.workspace_index("acme", "main")) == 1
    assert await redis.zcard(keys.workspace_index("acme", "third")) == 0
    # Another org is counted on its own.
    await _create(redis, "o1", org="other")
    # Entries expire with their environments (the set too, after its last one).
    ttl = await redis.ttl(keys.org_environments("acme"))
    assert 3590 < ttl <= 3602


async def test_a_place_comes_back_when_its_environment_is_no_longer_live(redis):
    for env_id, ws in (("e1", "main"), ("e2", "second")):
        await _create(redis, env_id, ws=ws)
    assert await _refused(redis, "e3", ws="third") == Quota.ORG_ENVIRONMENTS
    # Failed, torn down or gone: dropped from the count when counted, whoever changed it.
    await redis.hset(keys.environment("e1"), "state", "failed")
    await _create(redis, "e3", ws="third")
    await redis.hset(keys.environment("e2"), "state", "torn_down")
    await _create(redis, "e4", ws="fourth")
    assert set(await redis.zrange(keys.org_environments("acme"), 0, -1)) == {"e3", "e4"}
    # Past its expiry (a record the reaper has not reached yet): dropped too.
    await redis.zadd(keys.org_environments("acme"), {"e3": time.time() - 1})
    await _create(redis, "e5", ws="fifth")
    # A refused provision's `discard` gives its place back at once.
    record = await store.get(redis, "e5")
    assert record is not None
    await store.discard(redis, record)
    assert await redis.zscore(keys.org_environments("acme"), "e5") is None
    assert await redis.zscore(keys.workspace_environments("acme", "fifth"), "e5") is None
    await _create(redis, "e6", ws="sixth")


async def test_a_create_retried_after_a_lost_reply_is_not_counted_twice(redis):
    await _create(redis, "e1")
    # The same id again (redis-py resending the script): created, not refused by itself.
    await _create(redis, "e1")
    assert await redis.zcard(keys.workspace_environments("acme", "main")) == 1


async def test_no_limit_counts_nothing(redis):
    for n in range(5):
        await _create(redis, f"e{n}", limits=quotas.NO_LIMITS)
    assert await redis.zcard(keys.org_environments("acme")) == 5


def _dispatcher(redis) -> Dispatcher:
    return Dispatcher(redis, Listener(), max_queue_depth=100, retry_after_sec=1)  # type: ignore[arg-type]


async def _submit(
    dispatcher: Dispatcher, env_id: str, job_id: str, org: str = "acme", ws: str = "main"
) -> None:
    await dispatcher.submit(
        jobs.EXECUTE,
        {"command": "true"},
        queue="q",
        job_id=job_id,
        expires_sec=30,
        reply=True,
        admission=Admission(
            env_id,
            8,
            command_until=time.time() + 30,
            org=org,
            rate=OrgRate(0, 1),
            workspace=ws,
            limits=Limits(org_commands=2, workspace_commands=1),
        ),
    )


async def test_running_commands_are_limited_per_workspace_and_per_org(redis):
    for env_id in ("e1", "e2", "e3", "o1"):
        await redis.hset(keys.environment(env_id), "state", "ready")
    dispatcher = _dispatcher(redis)
    await _submit(dispatcher, "e1", "j1", ws="main")
    with pytest.raises(TaskenvError) as workspace_full:
        await _submit(dispatcher, "e2", "j2", ws="main")
    assert workspace_full.value.status == 429 and workspace_full.value.headers == {"Retry-After": "1"}
    assert "TASKENV_WORKSPACE_MAX_RUNNING_COMMANDS=1" in workspace_full.value.detail
    await _submit(dispatcher, "e2", "j3", ws="second")
    with pytest.raises(TaskenvError) as org_full:
        await _submit(dispatcher, "e3", "j4", ws="third")
    assert "TASKENV_ORG_MAX_RUNNING_COMMANDS=2" in org_full.value.detail and "'acme'" in org_full.value.detail
    # A refused command holds no slot and is not queued.
    assert await redis.zcard(keys.env_commands("e3")) == 0
    assert await redis.exists("arq:job:j2", "arq:job:j4") == 0
    # Another org is not held back.
    await _submit(dispatcher, "o1", "j5", org="other")
    # Each admitted command holds its environment's, org's and workspace's slot...
    slots = commands.sets_of("e1", "acme", "main")
    assert [await redis.zscore(slot, "j1") is not None for slot in slots] == [True, True, True]
    # ...until freed (by its worker, or here by the API when no answer came).
    await commands.release(redis, slots, "j1")
    await _submit(dispatcher, "e3", "j6", ws="third")


async def test_a_command_past_its_deadline_frees_its_place_by_itself(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    await _submit(dispatcher, "e1", "j1")
    await redis.zadd(keys.workspace_commands("acme", "main"), {"j1": time.time() - 1})
    await _submit(dispatcher, "e1", "j2")


def test_the_refusal_names_the_limit_and_its_setting():
    error = quotas.exceeded(Quota.ORG_ENVIRONMENTS, 200, "acme", "main", 1)
    assert error.status == 429 and error.headers == {"Retry-After": "1"}
    assert error.detail.startswith("Organization 'acme' already holds its limit of 200 live environments")
    assert "TASKENV_ORG_MAX_ENVIRONMENTS=200" in error.detail
    error = quotas.exceeded(Quota.WORKSPACE_COMMANDS, 5, "acme", "main", 1)
    assert "Workspace 'acme'/'main'" in error.detail and "5 commands running at once" in error.detail

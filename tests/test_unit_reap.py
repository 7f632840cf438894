"""The reaper's bookkeeping (fakeredis and a fake engine: pure logic only)."""

import time

import aiodocker
import fakeredis
import pytest

from shared import keys, store
from shared.models import EnvironmentState
from shared.settings import Settings
from shared.tasks import TaskSpec
from worker import reaper


class FakeContainer:
    def __init__(self, engine: "FakeEngine", name: str) -> None:
        self.engine, self.name = engine, name

    async def delete(self, force: bool, v: bool) -> None:
        self.engine.removed.append(self.name)

    async def show(self) -> dict:
        env_id = self.name.removeprefix("taskenv-")
        if env_id not in self.engine.running + self.engine.stopped:
            raise aiodocker.DockerError(404, {"message": f"No such container: {self.name}"})
        return {"State": {"Running": env_id in self.engine.running, "ExitCode": 137}}


class FakeContainers:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine

    async def list(self, **_: object) -> list[dict]:
        return [
            {"Labels": {"taskenv.env": env_id}, "Names": [f"/taskenv-{env_id}"], "State": state}
            for state, ids in (("running", self.engine.running), ("exited", self.engine.stopped))
            for env_id in ids
        ]

    def container(self, name: str) -> FakeContainer:
        return FakeContainer(self.engine, name)


class FakeEngine:
    def __init__(self) -> None:
        self.removed: list[str] = []
        self.running: list[str] = []
        self.stopped: list[str] = []
        self.containers = FakeContainers(self)


@pytest.fixture
def ctx() -> dict:
    return {
        "records": fakeredis.FakeAsyncRedis(decode_responses=True),
        "docker": FakeEngine(),
        "settings": Settings(host_id="q", record_retention_sec=60),
    }


async def _create(
    ctx: dict, env_id: str, *, lifetime: int = 3600, provision_timeout: float = 60, claim: bool = True
) -> None:
    await store.create(
        ctx["records"],
        env_id=env_id,
        org="acme",
        workspace="main",
        task_ref="default",
        spec=TaskSpec(name="default"),
        token_hash="h-" + env_id,
        lifetime_sec=lifetime,
        provision_timeout_sec=provision_timeout,
    )
    if claim:
        await store.claim_provision(ctx["records"], env_id, "q", cap=100)


async def test_a_provision_no_worker_ran_fails_with_a_reason(ctx):
    await _create(ctx, "stalled", provision_timeout=-1, claim=False)
    await _create(ctx, "fresh", claim=False)
    await reaper.reap(ctx)
    stalled = await store.get(ctx["records"], "stalled")
    assert stalled is not None and stalled["state"] == EnvironmentState.FAILED
    assert "not provisioned in time" in stalled["error"]
    fresh = await store.get(ctx["records"], "fresh")
    assert fresh is not None and fresh["state"] == EnvironmentState.PROVISIONING
    assert await ctx["records"].zrange(keys.PROVISIONING, 0, -1) == ["fresh"]


async def test_a_provision_that_ran_is_not_failed_later(ctx):
    await _create(ctx, "done", provision_timeout=-1)
    await store.set_if_state(
        ctx["records"], "done", EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )
    await store.provision_ran(ctx["records"], "done")
    ctx["docker"].running = ["done"]
    await reaper.reap(ctx)
    done = await store.get(ctx["records"], "done")
    assert done is not None and done["state"] == EnvironmentState.READY


async def test_expired_environments_are_torn_down_and_their_containers_removed(ctx):
    await _create(ctx, "old", lifetime=-1)
    counts = await reaper.reap(ctx)
    old = await store.get(ctx["records"], "old")
    assert old is not None and old["state"] == EnvironmentState.TORN_DOWN and "expired" in old["error"]
    assert ctx["docker"].removed == ["taskenv-old"] and counts["expired"] == 1
    assert await store.expired(ctx["records"], "q", time.time()) == []


async def test_containers_without_a_live_record_are_removed(ctx):
    await _create(ctx, "live")
    await store.set_if_state(
        ctx["records"], "live", EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )
    await _create(ctx, "dead")
    await store.tear_down(ctx["records"], await store.get(ctx["records"], "dead"), retention_sec=60)
    ctx["docker"].running = ["live", "dead", "unknown"]
    counts = await reaper.reap(ctx)
    assert sorted(ctx["docker"].removed) == ["taskenv-dead", "taskenv-unknown"] and counts["orphans"] == 2


async def test_ready_environments_whose_container_vanished_are_failed(ctx):
    for env_id in ("removed", "killed", "fine"):
        await _create(ctx, env_id)
        await store.set_if_state(
            ctx["records"], env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.READY
        )
    await _create(ctx, "starting")  # still provisioning: it has no container yet
    ctx["docker"].running, ctx["docker"].stopped = ["fine"], ["killed"]
    counts = await reaper.reap(ctx)
    assert counts["vanished"] == 2
    states = {
        e: (await store.get(ctx["records"], e)) or {} for e in ("removed", "killed", "fine", "starting")
    }
    assert states["removed"]["state"] == states["killed"]["state"] == EnvironmentState.FAILED
    assert states["removed"]["error"] == "container_gone: container removed outside taskenv"
    assert states["killed"]["error"] == "container_gone: container stopped outside taskenv (exit code 137)"
    assert states["fine"]["state"] == EnvironmentState.READY
    assert states["starting"]["state"] == EnvironmentState.PROVISIONING
    # Failed, the stopped container is an orphan: the next pass removes it.
    await reaper.reap(ctx)
    assert ctx["docker"].removed == ["taskenv-killed"]

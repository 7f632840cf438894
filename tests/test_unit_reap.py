"""The reaper's bookkeeping (fakeredis and a fake engine: pure logic only)."""

import json
import logging
import time

import aiodocker
import fakeredis
import pytest

from taskenv.shared import deployment, keys, store
from taskenv.shared.models import EnvironmentState
from taskenv.shared.settings import Settings
from taskenv.shared.tasks import TaskSpec
from taskenv.worker import containers, context, reaper
from taskenv.worker.context import WorkerContext


class FakeContainer:
    def __init__(self, engine: "FakeEngine", name: str) -> None:
        self.engine, self.name = engine, name

    def _env_id(self) -> str:
        return self.name.removeprefix("taskenv-")

    async def delete(self, force: bool, v: bool) -> None:
        self.engine.removed.append(self.name)
        self.engine.found.pop(self._env_id(), None)

    async def show(self) -> dict:
        found = self.engine.found.get(self._env_id())
        if found is None:
            raise aiodocker.DockerError(404, {"message": f"No such container: {self.name}"})
        running, owner = found
        labels = {containers.LABEL_DEPLOYMENT: owner}
        return {"Config": {"Labels": labels}, "State": {"Running": running, "ExitCode": 137}}


class FakeContainers:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine

    async def list(self, all: bool, filters: str) -> list[dict]:
        wanted = json.loads(filters)["label"]
        return [
            {"Labels": labels, "Names": [f"/taskenv-{env_id}"], "State": "running" if running else "exited"}
            for env_id, (running, owner) in self.engine.found.items()
            for labels in [self.engine.labels(env_id, owner)]
            if all and {f"{k}={v}" for k, v in labels.items()} >= set(wanted)
        ]

    def container(self, name: str) -> FakeContainer:
        return FakeContainer(self.engine, name)


class FakeVolumes:
    """No task services here, so no volumes of theirs."""

    async def list(self, filters: dict) -> dict:
        return {"Volumes": []}


class FakeEngine:
    """Sandboxes of host `q`, by environment id: (running, deployment)."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.found: dict[str, tuple[bool, str]] = {}
        self.containers = FakeContainers(self)
        self.volumes = FakeVolumes()

    def labels(self, env_id: str, owner: str) -> dict[str, str]:
        return {
            containers.LABEL_MANAGED: "true",
            containers.LABEL_ENV: env_id,
            containers.LABEL_HOST: "q",
            containers.LABEL_DEPLOYMENT: owner,
        }

    def run(self, *env_ids: str, running: bool = True, owner: str = "d1") -> None:
        for env_id in env_ids:
            self.found[env_id] = (running, owner)

    @property
    def running(self) -> list[str]:
        return [env_id for env_id, (running, _) in self.found.items() if running]


@pytest.fixture
async def ctx() -> dict:
    records = fakeredis.FakeAsyncRedis(decode_responses=True)
    ctx: dict = {}
    # As the worker's start-up does, with the deployment it joined remembered.
    context.install(
        ctx,
        WorkerContext(
            Settings(host_id="q", record_retention_sec=60),
            records,
            FakeEngine(),  # type: ignore[arg-type]
            await deployment.join(records, "d1"),
        ),
    )
    return ctx


def _records(ctx: dict) -> fakeredis.FakeAsyncRedis:
    return context.of(ctx).records


def _engine(ctx: dict) -> FakeEngine:
    return context.of(ctx).docker  # type: ignore[return-value]


async def _create(
    ctx: dict, env_id: str, *, lifetime: int = 3600, provision_timeout: float = 60, claim: bool = True
) -> None:
    await store.create(
        _records(ctx),
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
        await store.claim_provision(_records(ctx), env_id, "q", cap=100)


async def test_a_provision_no_worker_ran_fails_with_a_reason(ctx):
    await _create(ctx, "stalled", provision_timeout=-1, claim=False)
    await _create(ctx, "fresh", claim=False)
    await reaper.reap(ctx)
    stalled = await store.get(_records(ctx), "stalled")
    assert stalled is not None and stalled["state"] == EnvironmentState.FAILED
    assert "not provisioned in time" in stalled["error"]
    fresh = await store.get(_records(ctx), "fresh")
    assert fresh is not None and fresh["state"] == EnvironmentState.PROVISIONING
    assert await _records(ctx).zrange(keys.PROVISIONING, 0, -1) == ["fresh"]


async def test_a_provision_that_ran_is_not_failed_later(ctx):
    await _create(ctx, "done", provision_timeout=-1)
    await store.set_if_state(
        _records(ctx), "done", EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )
    await store.provision_ran(_records(ctx), "done")
    _engine(ctx).run("done")
    await reaper.reap(ctx)
    done = await store.get(_records(ctx), "done")
    assert done is not None and done["state"] == EnvironmentState.READY


async def test_expired_environments_are_torn_down_and_their_containers_removed(ctx):
    await _create(ctx, "old", lifetime=-1)
    _engine(ctx).run("old")
    counts = await reaper.reap(ctx)
    old = await store.get(_records(ctx), "old")
    assert old is not None and old["state"] == EnvironmentState.TORN_DOWN and "expired" in old["error"]
    assert _engine(ctx).removed == ["taskenv-old"] and counts["expired"] == 1
    assert await store.expired(_records(ctx), "q", time.time()) == []


async def test_containers_without_a_live_record_are_removed(ctx):
    await _create(ctx, "live")
    await store.set_if_state(
        _records(ctx), "live", EnvironmentState.PROVISIONING, state=EnvironmentState.READY
    )
    await _create(ctx, "dead")
    await store.tear_down(_records(ctx), await store.get(_records(ctx), "dead"), retention_sec=60)
    _engine(ctx).run("live", "dead", "unknown")
    counts = await reaper.reap(ctx)
    assert sorted(_engine(ctx).removed) == ["taskenv-dead", "taskenv-unknown"] and counts["orphans"] == 2


async def test_ready_environments_whose_container_vanished_are_failed(ctx):
    for env_id in ("removed", "killed", "fine"):
        await _create(ctx, env_id)
        await store.set_if_state(
            _records(ctx), env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.READY
        )
    await _create(ctx, "starting")  # still provisioning: it has no container yet
    _engine(ctx).run("fine")
    _engine(ctx).run("killed", running=False)
    counts = await reaper.reap(ctx)
    assert counts["vanished"] == 2
    states = {e: (await store.get(_records(ctx), e)) or {} for e in ("removed", "killed", "fine", "starting")}
    assert states["removed"]["state"] == states["killed"]["state"] == EnvironmentState.FAILED
    assert states["removed"]["error"] == "container_gone: container removed outside taskenv"
    assert states["killed"]["error"] == "container_gone: container stopped outside taskenv (exit code 137)"
    assert states["fine"]["state"] == EnvironmentState.READY
    assert states["starting"]["state"] == EnvironmentState.PROVISIONING
    # Failed, the stopped container is an orphan: the next pass removes it.
    await reaper.reap(ctx)
    assert _engine(ctx).removed == ["taskenv-killed"]


# A store that looks wiped: containers without a record are kept, loudly.


async def _ready(ctx: dict, *env_ids: str) -> None:
    for env_id in env_ids:
        await _create(ctx, env_id)
        await store.set_if_state(
            _records(ctx), env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.READY
        )
    _engine(ctx).run(*env_ids)


def _kept() -> float:
    return reaper.KEPT._value.get()  # type: ignore[attr-defined]


def _refusals(reason: reaper.Wiped) -> float:
    return reaper.REFUSALS.labels(reason)._value.get()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("held", "reason"),
    [(None, reaper.Wiped.MARKER_MISSING), ("d2", reaper.Wiped.MARKER_CHANGED)],
    ids=["marker-missing", "marker-changed"],
)
async def test_a_wiped_store_keeps_every_container_and_says_so(ctx, caplog, held, reason):
    await _ready(ctx, "a", "b")
    await _create(ctx, "ended")
    await store.tear_down(_records(ctx), await store.get(_records(ctx), "ended"), retention_sec=60)
    _engine(ctx).run("ended")
    await _records(ctx).flushall()  # Redis restarted empty...
    if held is not None:
        await _records(ctx).set(keys.DEPLOYMENT, held)  # ...or another deployment's
    await _create(ctx, "ended")  # a record the store still has: its end is known
    await store.tear_down(_records(ctx), await store.get(_records(ctx), "ended"), retention_sec=60)
    refused = _refusals(reason)
    with caplog.at_level(logging.ERROR, logger="taskenv.worker"):
        counts = await reaper.reap(ctx)
    assert _engine(ctx).removed == ["taskenv-ended"] and counts["orphans"] == 1
    assert sorted(_engine(ctx).found) == ["a", "b"]
    assert _kept() == 2 and _refusals(reason) == refused + 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"the store looks wiped ({reason})" in line and "2 containers of deployment d1 on host q" in line


@pytest.mark.parametrize(
    ("records", "unknown", "kept"),
    # max(5, 10% of the host's records) containers without a record are a crash's leftovers.
    [(0, 5, False), (0, 6, True), (100, 10, False), (100, 11, True)],
)
async def test_more_unknown_containers_than_a_crash_leaves_are_kept(ctx, records, unknown, kept):
    for i in range(records):
        await _create(ctx, f"r{i}")
    _engine(ctx).run(*(f"r{i}" for i in range(records)), *(f"x{i}" for i in range(unknown)))
    counts = await reaper.reap(ctx)
    assert counts["orphans"] == (0 if kept else unknown)
    assert _kept() == (unknown if kept else 0)
    assert reaper.store_looks_wiped("d1", "d1", unknown, records) == (
        reaper.Wiped.TOO_MANY_UNKNOWN if kept else None
    )


async def test_another_deployments_containers_are_never_touched(ctx):
    """Same host id, same engine, another Redis: its containers have no record here."""
    _engine(ctx).run(*(f"theirs{i}" for i in range(20)), owner="d2")
    _engine(ctx).run("stopped", running=False, owner="d2")
    counts = await reaper.reap(ctx)
    assert counts == {"expired": 0, "orphans": 0, "vanished": 0} and _engine(ctx).removed == []
    assert _kept() == 0  # not even seen: no refusal
    # Nor removed by name (a teardown, an expiry of the same id).
    assert await containers.remove(_engine(ctx), "taskenv-theirs0", "d1") is False
    assert _engine(ctx).removed == []
    assert await containers.remove(_engine(ctx), "taskenv-theirs0", "d2") is True


async def test_the_deployment_is_joined_once_and_an_explicit_one_must_match():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    made = await deployment.join(redis)
    assert len(made) == 16 and await deployment.join(redis) == made  # a second worker joins it
    assert await deployment.join(redis, made) == made
    with pytest.raises(deployment.DeploymentMismatch, match=f"belongs to deployment '{made}'"):
        await deployment.join(redis, "prod")
    settings = Settings(host_id="q", deployment="prod")
    with pytest.raises(SystemExit, match=r"^taskenv worker: TASKENV_DEPLOYMENT is 'prod'"):
        await reaper.join_deployment(redis, settings)
    fresh = fakeredis.FakeAsyncRedis(decode_responses=True)
    assert await reaper.join_deployment(fresh, settings) == "prod"
    assert await deployment.current(fresh) == "prod"

"""Two removals of one environment at once (the DELETE's job and a reaper pass): the teardown
script runs once, and the removal that did not run it leaves the containers alone until it has
ended. fakeredis; the script and the engine are fakes."""

import asyncio
from typing import Any

import fakeredis
import pytest

from taskenv.shared import keys, scripts, store
from taskenv.shared.settings import Settings
from taskenv.shared.tasks import TaskScript, TaskSource, TaskSpec
from taskenv.worker import containers, environment_removal, pod, sandbox_run
from taskenv.worker.context import WorkerContext
from taskenv.worker.sandbox_run import RunOutcome, RunResult

ENV_ID = "e1"
SCRIPT_SEC = 0.3


@pytest.fixture
async def worker() -> WorkerContext:
    records = fakeredis.FakeAsyncRedis(decode_responses=True)
    teardown = TaskScript(script="t.sh", timeout=5)
    source = TaskSource(org="acme", name="lab", version="1", oci_digest="sha256:0", teardown=teardown)
    await store.create(
        records, env_id=ENV_ID, org="acme", workspace="main", task_ref="acme/lab",
        spec=TaskSpec(name="lab", source=source), token_hash="h", lifetime_sec=60, provision_timeout_sec=60,
    )  # fmt: skip
    return WorkerContext(Settings(), records, None, "d1")  # type: ignore[arg-type]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happened, in order: the script's start and end, each removal of the containers."""
    happened: list[str] = []

    async def run_script(*_: Any, **__: Any) -> RunResult:
        happened.append("script started")
        await asyncio.sleep(SCRIPT_SEC)
        happened.append("script ended")
        return RunResult(outcome=RunOutcome.EXITED, exit_code=0)

    async def running(*_: Any, **__: Any) -> None:
        return None

    async def remove_environment(*_: Any, **__: Any) -> None:
        happened.append("containers removed")

    async def remove(*_: Any, **__: Any) -> bool:
        return True

    monkeypatch.setattr(sandbox_run, "run_script", run_script)
    monkeypatch.setattr(containers, "why_stopped", running)
    monkeypatch.setattr(containers, "remove", remove)
    monkeypatch.setattr(pod, "remove_environment", remove_environment)
    return happened


async def test_a_second_removal_waits_for_the_script_the_first_runs(worker, events):
    await asyncio.gather(*(environment_removal.remove(worker, ENV_ID) for _ in range(2)))
    assert events == ["script started", "script ended", "containers removed", "containers removed"]
    record = await store.load(worker.records, ENV_ID)
    assert record is not None and record.teardown_outcome == '{"outcome":"exited","exit_code":0}'


async def test_a_removal_after_the_script_ended_does_not_wait(worker, events):
    await environment_removal.remove(worker, ENV_ID)
    started = asyncio.get_running_loop().time()
    await environment_removal.remove(worker, ENV_ID)
    assert asyncio.get_running_loop().time() - started < SCRIPT_SEC
    assert events.count("script started") == 1


async def test_the_wait_ends_at_its_bound_when_the_removal_running_it_died(worker, events, monkeypatch):
    monkeypatch.setattr(environment_removal, "TEARDOWN_END_GRACE_SEC", 0.0)
    # A removal that took the flag, then died before writing the outcome.
    await scripts.SET_FLAG_ONCE.run(
        worker.records, environment=keys.environment(ENV_ID), field=environment_removal.TEARDOWN_STARTED_FIELD
    )
    spec = TaskSpec.model_validate_json((await store.load(worker.records, ENV_ID)).spec)  # type: ignore[union-attr]
    assert spec.source is not None and spec.source.teardown is not None
    spec.source.teardown.timeout = 0
    await worker.records.hset(keys.environment(ENV_ID), "spec", spec.model_dump_json())
    await environment_removal.remove(worker, ENV_ID)
    assert events == ["containers removed"]

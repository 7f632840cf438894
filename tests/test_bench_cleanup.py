"""Whatever ends a run (an exception, Ctrl-C, the deadline), everything it made is taken down.

The HTTP side is an httpx.MockTransport playing taskenv; the engine is a fake Docker object.
"""

import asyncio
import uuid
from typing import Any

import aiodocker
import httpx
import pytest

from bench.config import BenchConfig
from bench.ledger import complete
from bench.load import run_phase
from bench.progress import NullTracker
from bench.results import Results
from bench.run import run_bench
from bench.stats import Sample

ENVS = "/api/v1/org/local/ws/main/environments"


class FakeApi:
    """Answers like taskenv; records what was created and deleted."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.execs = 0
        self.execs_seen = asyncio.Event()
        self.execs_wanted = 0
        self.hold_posts = False
        self.post_started = asyncio.Event()
        self.release_posts = asyncio.Event()
        self.exec_delay = 0.0
        self.fail_first_delete = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        assert request.url.host == "127.0.0.1"
        if path == ENVS and method == "GET":
            return httpx.Response(200, json={"environments": []})
        if path == ENVS and method == "POST":
            self.post_started.set()
            if self.hold_posts:
                await self.release_posts.wait()
            env_id = str(uuid.uuid4())
            self.created.append(env_id)
            return httpx.Response(201, json={"id": env_id, "execute_token": f"tok-{env_id}"})
        env_id = path.removeprefix(f"{ENVS}/").split("/")[0]
        if path.endswith("/status"):
            return httpx.Response(200, json={"id": env_id, "state": "ready", "error": None})
        if path.endswith("/execute"):
            assert request.headers["x-environment-token"] == f"Bearer tok-{env_id}"
            self.execs += 1
            if self.execs_wanted and self.execs >= self.execs_wanted:
                self.execs_seen.set()
            await asyncio.sleep(self.exec_delay)
            return httpx.Response(200, json={"exit_code": 0, "output": ""})
        if method == "DELETE":
            if self.fail_first_delete and env_id == self.created[0]:
                return httpx.Response(500, json={"detail": "boom"})
            self.deleted.append(env_id)
            return httpx.Response(204)
        return httpx.Response(404)


class FakeStream:
    async def __aenter__(self) -> "FakeStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_out(self) -> None:
        return None


class FakeExec:
    def start(self, detach: bool = False) -> FakeStream:
        return FakeStream()

    async def inspect(self) -> dict[str, Any]:
        return {"ExitCode": 0}


class FakeContainer:
    def __init__(self, engine: "FakeEngine", name: str) -> None:
        self.engine, self.name = engine, name

    async def exec(self, cmd: list[str], **options: Any) -> FakeExec:
        assert options["user"] == "1000:1000" and cmd[:2] == ["sh", "-c"]
        return FakeExec()

    async def start(self) -> None:
        self.engine.started.append(self.name)
        if len(self.engine.started) >= self.engine.starts_wanted > 0:
            self.engine.starts_seen.set()

    async def delete(self, force: bool = False, v: bool = False) -> None:
        assert force
        if self.name not in self.engine.created and not self.name.startswith("taskenv-"):
            raise aiodocker.DockerError(404, {"message": f"No such container: {self.name}"})
        self.engine.removed.append(self.name)


class FakeContainers:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine

    def container(self, name: str) -> FakeContainer:
        return FakeContainer(self.engine, name)

    async def create(self, config: dict[str, Any], *, name: str) -> FakeContainer:
        assert config["Labels"] == {"taskenv.bench": "true"}
        assert config["HostConfig"]["NetworkMode"] == "none"
        self.engine.created.append(name)
        return FakeContainer(self.engine, name)


class FakeEngine:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.started: list[str] = []
        self.removed: list[str] = []
        self.starts_seen = asyncio.Event()
        self.starts_wanted = 0
        self.containers = FakeContainers(self)


class FailingTracker:
    """Raises in the middle of one phase: an unexpected error outside any request."""

    def __init__(self, phase: str, after: int) -> None:
        self.target, self.after = phase, after

    def phase(self, name: str, total: int):
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            if name == self.target and done >= self.after:
                raise RuntimeError(f"boom in {name}")

        return advance


def config(**changes: Any) -> BenchConfig:
    base = dict(
        api_key="tk_test", envs=2, execs=6, concurrency=2, warmup=2, provisions=4, provision_concurrency=2
    )
    return BenchConfig(**{**base, **changes}, poll_sec=0.001)


def client(api: FakeApi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(api.handle), headers={"X-API-Key": "tk_test"})


def assert_all_taken_down(api: FakeApi, engine: FakeEngine, results: Results) -> None:
    assert api.created, "the run should have provisioned something"
    assert sorted(api.deleted) == sorted(api.created)
    assert set(engine.created) <= set(engine.removed)
    assert results.ledger.envs == set() and results.ledger.raw == set()
    assert results.cleanup is not None and results.cleanup.failures == []


async def test_a_whole_run_counts_everything_and_leaves_nothing():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    async with client(api) as http:
        await run_bench(config(), results, NullTracker(), http, engine)  # type: ignore[arg-type]
    assert len(results.exec_taskenv) == len(results.exec_raw) == 6
    assert len(results.provision_taskenv) == len(results.provision_raw) == 4
    assert api.execs == 6 + 2
    assert all(s.error is None for s in results.exec_taskenv + results.exec_raw + results.provision_raw)
    assert len(api.created) == 2 + 4 and len(engine.created) == 4
    assert results.stopped is None
    assert_all_taken_down(api, engine, results)


@pytest.mark.parametrize("phase", ["exec taskenv", "exec raw", "provision taskenv", "provision raw"])
async def test_an_exception_mid_run_still_takes_everything_down(phase):
    api, engine, results = FakeApi(), FakeEngine(), Results()
    async with client(api) as http:
        with pytest.raises(Exception):  # noqa: B017 (an exception group around the RuntimeError)
            await run_bench(config(), results, FailingTracker(phase, 2), http, engine)  # type: ignore[arg-type]
    assert results.stopped == f"failed: RuntimeError: boom in {phase}"
    assert_all_taken_down(api, engine, results)


async def test_cancellation_during_execs_deletes_the_environments():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    api.execs_wanted = 5
    async with client(api) as http:
        run = asyncio.create_task(run_bench(config(execs=1000), results, NullTracker(), http, engine))  # type: ignore[arg-type]
        await api.execs_seen.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert results.stopped == "interrupted"
    assert len(api.created) == 2
    assert_all_taken_down(api, engine, results)


async def test_cancellation_during_raw_provisions_removes_the_containers():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    engine.starts_wanted = 2
    async with client(api) as http:
        run = asyncio.create_task(
            run_bench(config(provisions=1000), results, NullTracker(), http, engine)  # type: ignore[arg-type]
        )
        await engine.starts_seen.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert results.stopped == "interrupted" and len(engine.created) >= 2
    assert_all_taken_down(api, engine, results)


async def test_a_provision_in_flight_at_cancellation_is_deleted_once_it_answers():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    api.hold_posts = True
    async with client(api) as http:
        run = asyncio.create_task(run_bench(config(), results, NullTracker(), http, engine))  # type: ignore[arg-type]
        await api.post_started.wait()
        run.cancel()
        await asyncio.sleep(0)
        assert not run.done()
        api.release_posts.set()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert len(api.created) == 2
    assert_all_taken_down(api, engine, results)


async def test_the_deadline_stops_the_run_and_cleans_up():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    api.exec_delay = 30
    async with client(api) as http:
        await run_bench(config(max_seconds=0.2), results, NullTracker(), http, engine)  # type: ignore[arg-type]
    assert results.stopped == "max-seconds (0.2 s) reached"
    assert_all_taken_down(api, engine, results)


async def test_a_failed_delete_is_reported_and_its_container_removed_directly():
    api, engine, results = FakeApi(), FakeEngine(), Results()
    api.fail_first_delete = True
    async with client(api) as http:
        await run_bench(config(execs=2, provisions=0), results, NullTracker(), http, engine)  # type: ignore[arg-type]
    broken = api.created[0]
    assert api.deleted == api.created[1:] and f"taskenv-{broken}" in engine.removed
    assert results.cleanup is not None and len(results.cleanup.failures) == 1
    assert broken in results.cleanup.failures[0] and "removed directly" in results.cleanup.failures[0]
    assert results.ledger.envs == {broken}


async def test_complete_finishes_its_work_through_repeated_cancellation():
    finished: list[int] = []
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        finished.append(1)
        return 5

    caller = asyncio.create_task(complete(work()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == [1]
    assert await complete(asyncio.sleep(0, result=7)) == 7


async def test_run_phase_runs_each_request_once_never_above_the_concurrency():
    in_flight, peak, seen = 0, 0, []

    async def call(number: int) -> Sample:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        seen.append(number)
        return Sample(0.0, 1.0)

    out: list[Sample] = []
    ticks: list[int] = []
    await run_phase(call, 25, 4, out, lambda: ticks.append(1))
    assert sorted(seen) == list(range(25)) and len(out) == len(ticks) == 25 and peak == 4
    await run_phase(call, 0, 4, out, lambda: None)
    assert len(out) == 25

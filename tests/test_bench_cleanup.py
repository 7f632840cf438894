"""Whatever ends a run (an exception, Ctrl-C, the deadline), everything it made is taken down.

The HTTP side is a real aiohttp server on 127.0.0.1 (ephemeral port) playing taskenv, talked to
by the bench's own client session; the engine is a fake Docker object.
"""

import asyncio
import itertools
import socket
import uuid
from functools import partial
from typing import Any

import aiodocker
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from taskenv.bench import api_side, ledger
from taskenv.bench import run as bench_run
from taskenv.bench.config import BenchConfig
from taskenv.bench.ledger import CLEANUP_PASSES, complete
from taskenv.bench.load import run_phase
from taskenv.bench.progress import NullTracker, Tracker
from taskenv.bench.results import Results
from taskenv.bench.run import run_bench
from taskenv.bench.stats import Sample, flatten
from taskenv.bench.workloads import BUILT_IN, WorkloadName

ENVS = "/api/v1/org/local/ws/main/environments"


class FakeApi:
    """Answers like taskenv; records what was created and deleted."""

    def __init__(self) -> None:
        self.base_url = ""
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.execs = 0
        self.execs_seen = asyncio.Event()
        self.execs_wanted = 0
        self.hold_posts = False
        self.post_started = asyncio.Event()
        self.release_posts = asyncio.Event()
        self.exec_delay = 0.0
        self.exec_status = 200
        # DELETEs of the first environment made that answer 500 before one succeeds.
        self.failing_deletes = 0
        self.delete_attempts = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        assert request.host.split(":")[0] == "127.0.0.1"
        assert request.headers["X-API-Key"] == "tk_test"
        if path == ENVS and method == "GET":
            return web.json_response({"environments": []})
        if path == ENVS and method == "POST":
            self.post_started.set()
            if self.hold_posts:
                await self.release_posts.wait()
            env_id = str(uuid.uuid4())
            self.created.append(env_id)
            return web.json_response({"id": env_id, "execute_token": f"tok-{env_id}"}, status=201)
        env_id = path.removeprefix(f"{ENVS}/").split("/")[0]
        if path.endswith("/status"):
            return web.json_response({"id": env_id, "state": "ready", "error": None})
        if path.endswith("/execute"):
            assert request.headers["X-Environment-Token"] == f"Bearer tok-{env_id}"
            assert (await request.json())["command"] == "true"
            self.execs += 1
            if self.execs_wanted and self.execs >= self.execs_wanted:
                self.execs_seen.set()
            await asyncio.sleep(self.exec_delay)
            if self.exec_status == 307:
                raise web.HTTPTemporaryRedirect(f"{ENVS}/{env_id}/status")
            if self.exec_status != 200:
                return web.json_response({"detail": "no"}, status=self.exec_status)
            return web.json_response({"exit_code": 0, "output": ""})
        if method == "DELETE":
            if env_id == self.created[0]:
                self.delete_attempts += 1
                if self.delete_attempts <= self.failing_deletes:
                    return web.json_response({"detail": "boom"}, status=500)
            self.deleted.append(env_id)
            return web.Response(status=204)
        return web.Response(status=404)


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


def config(api: FakeApi, **changes: Any) -> BenchConfig:
    base = dict(
        api_key="tk_test", envs=2, execs=6, concurrency=2, warmup=2, provisions=4, provision_concurrency=2
    )
    return BenchConfig(**{**base, **changes, "base_url": api.base_url}, poll_sec=0.001)


@pytest.fixture
async def api(monkeypatch):
    # The cleanup's passes, without the second's pause between them (the retries are the point).
    monkeypatch.setattr(bench_run, "cleanup", partial(ledger.cleanup, retry_pause_sec=0.01))
    fake = FakeApi()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base_url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


async def bench(
    api: FakeApi,
    engine: "FakeEngine",
    results: Results,
    settings: BenchConfig,
    tracker: Tracker | None = None,
) -> None:
    """run_bench with the client session the real command makes."""
    session = api_side.make_session(
        settings.api_key, connections=settings.connections, read_timeout_sec=settings.read_timeout_sec
    )
    try:
        await run_bench(settings, results, tracker or NullTracker(), session, engine)  # type: ignore[arg-type]
    finally:
        await session.close()


def assert_all_taken_down(api: FakeApi, engine: FakeEngine, results: Results) -> None:
    assert api.created, "the run should have provisioned something"
    assert sorted(api.deleted) == sorted(api.created)
    assert set(engine.created) <= set(engine.removed)
    assert results.ledger.envs == set() and results.ledger.raw == set()
    assert results.cleanup is not None and results.cleanup.failures == []


async def test_a_whole_run_counts_everything_and_leaves_nothing(api):
    engine, results = FakeEngine(), Results()
    await bench(api, engine, results, config(api))
    for blocks in (results.exec_taskenv, results.exec_raw):
        assert [len(block) for block in blocks] == [2, 2, 1, 1]
    for blocks in (results.provision_taskenv, results.provision_raw):
        assert [len(block) for block in blocks] == [1, 1, 1, 1]
    assert api.execs == 6 + 2
    samples = flatten(
        results.exec_taskenv + results.exec_raw + results.provision_taskenv + results.provision_raw
    )
    assert all(s.error is None for s in samples)
    assert len(api.created) == 2 + 4 and len(engine.created) == 4
    assert results.stopped is None
    assert_all_taken_down(api, engine, results)


def spans(blocks: list[list[Sample]]) -> list[tuple[float, float]]:
    return [(min(s.started for s in b), max(s.ended for s in b)) for b in blocks]


@pytest.mark.parametrize("phase", ["exec", "provision"])
async def test_the_sides_alternate_round_by_round(api, phase):
    engine, results = FakeEngine(), Results()
    await bench(api, engine, results, config(api, execs=9, provisions=6, rounds=3))
    taskenv = spans(getattr(results, f"{phase}_taskenv"))
    raw = spans(getattr(results, f"{phase}_raw"))
    assert len(taskenv) == len(raw) == 3
    # Round 1: taskenv then raw; round 2: raw then taskenv; round 3: taskenv then raw.
    timeline = [taskenv[0], raw[0], raw[1], taskenv[1], taskenv[2], raw[2]]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(timeline))


async def test_provisions_are_taken_down_block_by_block(api):
    engine, results = FakeEngine(), Results()
    before: list[int] = []

    class Watch:
        def phase(self, name: str, total: int):
            def advance() -> None:
                if name == "provision raw":
                    before.append(len(results.ledger.envs))

            return advance

    await bench(api, engine, results, config(api, execs=2, provisions=4, rounds=2), Watch())
    # Raw provisions run with only the pool alive: each taskenv block is deleted before them.
    assert before and set(before) == {2}
    assert len(api.deleted) == len(api.created) == 2 + 4


@pytest.mark.parametrize("phase", ["exec taskenv", "exec raw", "provision taskenv", "provision raw"])
async def test_an_exception_mid_run_still_takes_everything_down(api, phase):
    engine, results = FakeEngine(), Results()
    with pytest.raises(Exception):  # noqa: B017 (an exception group around the RuntimeError)
        await bench(api, engine, results, config(api), FailingTracker(phase, 2))
    assert results.stopped == f"failed: RuntimeError: boom in {phase}"
    assert_all_taken_down(api, engine, results)


async def test_cancellation_during_execs_deletes_the_environments(api):
    engine, results = FakeEngine(), Results()
    api.execs_wanted = 5
    run = asyncio.create_task(bench(api, engine, results, config(api, execs=1000)))
    await api.execs_seen.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert results.stopped == "interrupted"
    assert len(api.created) == 2
    assert_all_taken_down(api, engine, results)


async def test_cancellation_during_raw_provisions_removes_the_containers(api):
    engine, results = FakeEngine(), Results()
    engine.starts_wanted = 2
    run = asyncio.create_task(bench(api, engine, results, config(api, provisions=200)))
    await engine.starts_seen.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert results.stopped == "interrupted" and len(engine.created) >= 2
    assert len(results.provision_raw[0]) < 50
    assert_all_taken_down(api, engine, results)


async def test_a_provision_in_flight_at_cancellation_is_deleted_once_it_answers(api):
    engine, results = FakeEngine(), Results()
    api.hold_posts = True
    run = asyncio.create_task(bench(api, engine, results, config(api)))
    await api.post_started.wait()
    run.cancel()
    await asyncio.sleep(0.05)
    assert not run.done() and api.created == []
    api.release_posts.set()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(api.created) == 2
    assert_all_taken_down(api, engine, results)


async def test_the_deadline_stops_the_run_and_cleans_up(api):
    engine, results = FakeEngine(), Results()
    api.exec_delay = 30
    await bench(api, engine, results, config(api, max_seconds=0.2))
    assert results.stopped == "max-seconds (0.2 s) reached"
    assert_all_taken_down(api, engine, results)


async def test_a_failed_delete_is_tried_again_and_its_container_removed_directly(api):
    engine, results = FakeEngine(), Results()
    api.failing_deletes = 1
    await bench(api, engine, results, config(api, execs=2, provisions=0))
    broken = api.created[0]
    assert api.delete_attempts == 2 and f"taskenv-{broken}" in engine.removed
    assert results.cleanup is not None and results.cleanup.failures == []
    assert_all_taken_down(api, engine, results)


async def test_a_delete_that_keeps_failing_is_reported_after_every_pass(api):
    engine, results = FakeEngine(), Results()
    api.failing_deletes = CLEANUP_PASSES
    await bench(api, engine, results, config(api, execs=2, provisions=0))
    broken = api.created[0]
    assert api.delete_attempts == CLEANUP_PASSES
    assert api.deleted == api.created[1:] and f"taskenv-{broken}" in engine.removed
    assert results.cleanup is not None and len(results.cleanup.failures) == 1
    assert broken in results.cleanup.failures[0] and "removed directly" in results.cleanup.failures[0]
    assert results.ledger.envs == {broken}


@pytest.mark.parametrize("status", [429, 307])
async def test_answers_other_than_200_count_by_status_and_redirects_are_not_followed(api, status):
    engine, results = FakeEngine(), Results()
    api.exec_status = status
    await bench(api, engine, results, config(api, warmup=0, provisions=0))
    assert {s.error for s in flatten(results.exec_taskenv)} == {str(status)}
    assert api.execs == 6
    assert_all_taken_down(api, engine, results)


async def test_transport_errors_count_by_exception_class():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = api_side.envs_url(f"http://127.0.0.1:{port}", "local", "main")
    session = api_side.make_session("tk_test", connections=2, read_timeout_sec=5)
    try:
        sample = await api_side.execute(session, url, api_side.Env("e", "t"), BUILT_IN[WorkloadName.TRUE], 5)
    finally:
        await session.close()
    assert sample.error == "ClientConnectorError"


async def test_proxies_from_the_environment_are_ignored(api, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    engine, results = FakeEngine(), Results()
    await bench(api, engine, results, config(api, warmup=0, provisions=0))
    assert all(s.error is None for s in flatten(results.exec_taskenv)) and api.execs == 6


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

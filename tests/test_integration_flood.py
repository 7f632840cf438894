"""What a sandbox writes can never crash, starve or mislead its worker (issue 10, cases 1-3).

Against a private stack (its own redis-server, worker and API, default membership timings): an
attacker org floods output and forges exit reports; a victim org's environment on the same host
must go on answering, stay `ready` and keep its container, the host must never be declared lost,
and the worker process must stay the same. Figures (worst heartbeat gap, the victim's latencies,
the worker's memory) are printed to be quoted; only correctness is asserted, never speed.
"""

import asyncio
import os
import re
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from taskenv.shared import keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.jobs import ExecJob
from taskenv.shared.settings import Settings
from taskenv.shared.store import container_name
from taskenv.worker import docker, execute, metrics
from taskenv.worker.exit_report import ExitReport
from taskenv.worker.heartbeat import Heartbeat
from taskenv.worker.membership import Membership
from tests.harness import docker_ready, start_redis
from tests.helpers import Env, async_http, until, wait_for_state
from tests.stack import Stack
from tests.test_integration_hostile import memory_kib

pytestmark = pytest.mark.integration

# A host silent this long is lost (TASKENV_HOST_DEAD_AFTER_SEC's default, which the stack keeps).
DEAD_AFTER_SEC = 10.0
# The exit report's prefix as an answer shows it: the byte, a 24-hex-digit nonce, a colon.
REPORT_PREFIX = "\x1e[0-9a-f]{24}:"
# Prints the command's own exit-report prefix (it can read its nonce), as an attacker may.
FORGE = "printf '\\036%s:' \"$__taskenv_nonce\""
# Floods of eight times the output cap that end well within their deadline (~8 s for all 32
# here), so each answer is checked whole; the deadline only bounds the test.
FLOOD_BYTES = 8 * 1024**2
FLOOD_TIMEOUT_SEC = 45
MIB = 1024**2
ATTACKER_ENVS = 4  # 8 commands each: TASKENV_MAX_EXECS_PER_ENV's default


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    docker_ready()
    # The exit report forged here is docker exec's (worker/exit_report.py): a runner has none.
    started = Stack(tmp_path_factory.mktemp("flood"), settings={"TASKENV_EXEC_BACKEND": "docker"})
    try:
        yield started.start()
    finally:
        started.close()


@dataclass
class Org:
    """One org's API client on the stack."""

    name: str
    http: httpx.AsyncClient
    stack: Stack

    async def provision(self) -> Env:
        url = self.stack.envs_url(self.name)
        response = await self.http.post(url, json={"task_ref": "default"})
        assert response.status_code == 201, response.text
        created = response.json()
        env = Env(created["id"], created["execute_token"], f"{url}/{created['id']}")
        status = await wait_for_state(self.http, env.url, "ready", "failed")
        assert status["state"] == "ready", status
        return env

    async def run(self, env: Env, command: str, timeout_sec: int = 20) -> httpx.Response:
        return await self.http.post(
            f"{env.url}/execute", json={"command": command, "timeout_sec": timeout_sec}, headers=env.headers()
        )


async def _org(stack: Stack, name: str) -> AsyncIterator[Org]:
    headers = {"X-API-Key": stack.key(name)}
    async with async_http(headers=headers, timeout=httpx.Timeout(60, connect=5)) as http:
        yield Org(name, http, stack)


@pytest.fixture(scope="module")
async def attacker(stack: Stack) -> AsyncIterator[Org]:
    async for org in _org(stack, "attacker"):
        yield org


@pytest.fixture(scope="module")
async def victim(stack: Stack) -> AsyncIterator[Org]:
    async for org in _org(stack, "victim"):
        yield org


@pytest.fixture(scope="module")
async def victim_env(victim: Org) -> Env:
    return await victim.provision()


@pytest.fixture(scope="module")
async def attacker_envs(attacker: Org) -> list[Env]:
    return [await attacker.provision() for _ in range(ATTACKER_ENVS)]


@dataclass
class Watch:
    """Polls the host's record from a thread of its own: the gaps between its heartbeats and
    every state it was seen in."""

    stack: Stack
    gaps: list[float] = field(default_factory=list)
    states: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "Watch":
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _poll(self) -> None:
        redis, last = self.stack.client(), None
        while not self._stop.wait(0.05):
            state, beat_at = redis.hmget(keys.host(self.stack.host), ["state", "beat_at"])
            self.states.add(str(state))
            if beat_at is not None and beat_at != last:
                if last is not None:
                    self.gaps.append(float(beat_at) - float(last))
                last = beat_at

    @property
    def worst_gap(self) -> float:
        return max(self.gaps, default=0.0)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a host process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def container_running(env: Env) -> bool:
    found = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", container_name(env.id)],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() == "true"


async def assert_unaffected(stack: Stack, pid: int, victim: Org, victim_env: Env) -> None:
    """The worker is the same process, and the victim's environment answers, is `ready` and
    keeps its container."""
    assert stack.worker is not None and stack.worker.poll() is None and stack.worker.pid == pid
    assert (await victim.run(victim_env, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}
    assert (await victim.http.get(f"{victim_env.url}/status")).json()["state"] == "ready"
    assert container_running(victim_env)
    host_state = stack.client().hget(keys.host(stack.host), "state")
    assert host_state == "up", host_state


async def assert_ended(attacker: Org, env: Env, tag: str, within_sec: float = 1.0) -> None:
    """No process of the command tagged `tag` is left in its sandbox: its shell's argv holds the
    command, so `ps` names it while it runs."""
    deadline = time.monotonic() + within_sec
    while tag in (listing := (await attacker.run(env, "ps -o args")).json()["output"]):
        assert time.monotonic() < deadline, f"{tag} still runs: {listing}"
        await asyncio.sleep(0.05)


async def test_floods_of_one_org_leave_the_host_and_other_orgs_untouched(
    stack: Stack, attacker: Org, attacker_envs: list[Env], victim: Org, victim_env: Env
) -> None:
    assert stack.worker is not None
    pid = stack.worker.pid
    await assert_unaffected(stack, pid, victim, victim_env)
    before, cpu_before = memory_kib(pid), cpu_seconds(pid)
    plain = f"head -c {FLOOD_BYTES} /dev/zero"
    held = f"{FORGE}; head -c {FLOOD_BYTES} /dev/zero"
    commands = [(env, held if i < 2 else plain) for env in attacker_envs for i in range(8)]
    latencies: list[float] = []
    victim_answers: list[tuple[int, object]] = []
    with Watch(stack) as watch:
        started = time.monotonic()
        floods = [asyncio.create_task(attacker.run(env, cmd, FLOOD_TIMEOUT_SEC)) for env, cmd in commands]
        while not all(f.done() for f in floods):
            sent = time.monotonic()
            answer = await victim.run(victim_env, "echo ok")
            latencies.append(time.monotonic() - sent)
            victim_answers.append((answer.status_code, answer.json()))
        answers = await asyncio.gather(*floods)
        flood_sec = time.monotonic() - started
    after, cpu = memory_kib(pid), cpu_seconds(pid) - cpu_before
    metrics = stack.client().hget(keys.worker(_worker_id(stack)), "metrics") or ""
    print(
        f"\n{len(commands)} floods ({len(commands) - 8} plain, 8 held back) of {FLOOD_BYTES} bytes each,"
        f" answered in {flood_sec:.1f} s: {sorted(a.status_code for a in answers)}"
        f"\nworst heartbeat gap seen in Redis: {watch.worst_gap:.2f} s over {len(watch.gaps)} beats;"
        f" host states seen: {sorted(watch.states)}"
        f"\nvictim's echo ok while flooded: {len(latencies)} answers,"
        f" p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        f"\nworker memory (KiB) before {before}, after {after}; worker CPU {cpu:.1f} s"
        f"\nworker's own worst heartbeat interval: {_worst_interval(metrics)} s"
    )
    ok = (200, {"exit_code": 0, "output": "ok\n"})
    assert [a for a in victim_answers if a != ok] == []
    notice = "\n[taskenv: output truncated at 1048576 bytes; {} more bytes were discarded]\n"
    for (_, command), answer in zip(commands, answers, strict=True):
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["exit_code"] == 0
        output = answer.json()["output"]
        if command == held:
            prefix = re.match(REPORT_PREFIX, output)
            assert prefix, output[:80]
            kept = MIB - len(prefix[0])
            assert output == prefix[0] + "\0" * kept + notice.format(FLOOD_BYTES - kept)
        else:
            assert output == "\0" * MIB + notice.format(FLOOD_BYTES - MIB)
    assert watch.states == {"up"}
    assert watch.worst_gap < DEAD_AFTER_SEC / 2
    await assert_unaffected(stack, pid, victim, victim_env)


def _worker_id(stack: Stack) -> str:
    ids = stack.client().zrange(keys.WORKERS, 0, -1)
    assert len(ids) == 1, ids
    return str(ids[0])


def _worst_interval(metrics: str) -> str:
    found = re.search(r"^taskenv_heartbeat_interval_worst_seconds (\S+)$", metrics, re.M)
    return found[1] if found else "(not reported)"


async def test_a_forged_status_past_255_is_plain_output(stack, attacker, attacker_envs, victim, victim_env):
    """Case 1: a status msgpack cannot hold (>= 2**64) used to kill the worker in arq's end hook."""
    env, pid = attacker_envs[0], stack.worker.pid
    command = (
        'printf \'\\036%s:18446744073709551616\\n\\036%s:256\\n\' "$__taskenv_nonce" "$__taskenv_nonce";'
        " sleep 2; exit 7  # case-1"
    )
    answer = await attacker.run(env, command)
    assert answer.status_code == 200, answer.text
    assert answer.json()["exit_code"] == 7
    assert re.fullmatch(f"{REPORT_PREFIX}18446744073709551616\n{REPORT_PREFIX}256\n", answer.json()["output"])
    await assert_ended(attacker, env, "case-1")
    await assert_unaffected(stack, pid, victim, victim_env)


async def test_a_held_back_flood_is_read_in_linear_time(stack, attacker, attacker_envs, victim, victim_env):
    """Case 2: a report's prefix followed by a flood used to be held back and re-copied whole
    on every chunk: quadratic time."""
    env, pid = attacker_envs[0], stack.worker.pid
    before = memory_kib(pid)
    started = time.monotonic()
    answer = await attacker.run(env, f"{FORGE}; head -c 100000000 /dev/zero; sleep 2; exit 3  # case-2")
    elapsed = time.monotonic() - started
    after = memory_kib(pid)
    print(f"\n100 MB after a report's prefix: {elapsed:.1f} s; worker memory {before} -> {after} KiB")
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["exit_code"] == 3
    output = answer.json()["output"]
    assert re.match(f"{REPORT_PREFIX}\0{{1000}}", output)
    assert output.endswith(" more bytes were discarded]\n")
    await assert_ended(attacker, env, "case-2")
    await assert_unaffected(stack, pid, victim, victim_env)


async def test_thousands_of_malformed_reports_in_one_write(
    stack, attacker, attacker_envs, victim, victim_env
):
    """Case 3: ~4,096 reports without a status in one write used to overflow the parser's
    recursion."""
    env, pid = attacker_envs[0], stack.worker.pid
    before = memory_kib(pid)
    command = (
        'awk -v n="$__taskenv_nonce" \'BEGIN { for (i = 0; i < 4096; i++) printf "\\036%s:\\n", n }\''
        " > /tmp/reports; dd if=/tmp/reports bs=1M 2>/dev/null; sleep 2; exit 5  # case-3"
    )
    answer = await attacker.run(env, command)
    print(f"\n4,096 malformed reports: worker memory {before} -> {memory_kib(pid)} KiB")
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["exit_code"] == 5
    output = answer.json()["output"]
    assert re.fullmatch(f"(?:{REPORT_PREFIX}\n){{4096}}", output), output[:200]
    assert len(set(re.findall(REPORT_PREFIX, output))) == 1
    await assert_ended(attacker, env, "case-3")
    await assert_unaffected(stack, pid, victim, victim_env)


async def test_a_status_of_4400_digits_is_plain_output(stack, attacker, attacker_envs, victim, victim_env):
    """Case 3: a status longer than Python's int() accepts used to be a 500 with the command
    left running."""
    env, pid = attacker_envs[0], stack.worker.pid
    command = (
        "printf '\\036%s:%s\\n' \"$__taskenv_nonce\" \"$(head -c 4400 /dev/zero | tr '\\0' 7)\";"
        " sleep 2; exit 9  # case-3b"
    )
    answer = await attacker.run(env, command)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["exit_code"] == 9
    assert re.fullmatch(f"{REPORT_PREFIX}7{{4400}}\n", answer.json()["output"])
    await assert_ended(attacker, env, "case-3b")
    await assert_unaffected(stack, pid, victim, victim_env)


class BrokenReport(ExitReport):
    """A fault of ours while reading a command's output."""

    def feed(self, chunk: bytes) -> bytes:
        raise RuntimeError("a bug in the worker")


async def test_a_fault_while_reading_kills_the_command_and_answers_500(
    stack: Stack, attacker: Org, attacker_envs: list[Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run in this process against the stack's sandbox, with the parser made to fail: the
    command is killed as at its deadline, and the error says so."""
    env = attacker_envs[1]
    monkeypatch.setattr(execute, "ExitReport", BrokenReport)
    job: ExecJob = {
        "env_id": env.id,
        "command": "echo started; sleep 30  # case-fault",
        "timeout_sec": 30,
        "deadline_at": time.time() + 30,
        "user": "1000:1000",
        "workdir": "/tmp",
        "output_limit": 1024 * 1024,
    }
    engine = docker.connect()
    started = time.monotonic()
    try:
        with pytest.raises(TaskenvError) as caught:
            await execute.run_command(engine, job)
    finally:
        await docker.disconnect(engine)
    assert caught.value.type == ErrorType.APP and "processes were killed" in caught.value.detail
    assert time.monotonic() - started < 10
    await assert_ended(attacker, env, "case-fault")


class IdleWorker:
    """A worker running nothing, as the membership sees it."""

    running: frozenset[str] = frozenset()

    def pause(self, paused: bool) -> None:
        pass


async def test_heartbeats_go_on_while_the_job_loop_is_blocked(tmp_path: Path) -> None:
    """The heartbeat's thread beats against a real Redis while this (the job) loop does not
    yield at all for 2 s; the job loop's lag is measured once it runs again."""
    server = start_redis(tmp_path, "--save", "")
    sock = tmp_path / "redis.sock"
    host = f"test-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=f"unix://{sock}", host_id=host, heartbeat_sec=0.1, host_dead_after_sec=1.0)
    idle = IdleWorker()
    heart = Heartbeat(settings, Membership(settings, [idle], idle, metrics.exposition))  # type: ignore[list-item, arg-type]
    records = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    try:
        await heart.start()
        beats, blocked_until = set(), time.monotonic() + 2
        while time.monotonic() < blocked_until:
            beats.add(records.hget(keys.host(host), "beat_at"))
            time.sleep(0.02)  # blocks the loop on purpose: nothing else of it may run
        lags_before = _lag_count()
        # The lag probes posted meanwhile run now.
        await until(lambda: _lag_count() > lags_before, "the job loop's lag measured", timeout=5)
        assert len(beats) >= 10, beats
        assert records.hget(keys.host(host), "state") == "up"
        print(f"\n{len(beats)} beats while the job loop was blocked for 2 s")
    finally:
        await heart.stop()
        records.close()
        server.terminate()
        server.wait()


def _lag_count() -> float:
    found = re.search(r"^taskenv_event_loop_lag_seconds_count (\S+)$", metrics.exposition(), re.M)
    return float(found[1]) if found else 0.0

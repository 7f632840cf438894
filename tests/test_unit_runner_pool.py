"""A worker's runner sessions (pure logic, fake sessions): one per environment however many
commands ask at once, a lost one replaced, an environment without a runner served by
`docker exec` for a while, all closed at teardown and shutdown; with a link dir, the sandbox's
mount of it, a runner that did not come over its socket asked over exec from then on, the link
dir removed at teardown and kept at shutdown."""

import asyncio

import pytest

from taskenv.worker import runner_sessions
from taskenv.worker.runner_client import RunnerLost, RunnerSession
from taskenv.worker.runner_protocol import VERSION, Hello, encode_runner_frame
from taskenv.worker.runner_sessions import RunnerPool


class Transport:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.incoming.put_nowait(encode_runner_frame(Hello(VERSION, 256)))
        self.closed = False

    async def read(self) -> bytes | None:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(None)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every environment a session was opened for; an env id starting with `none` has no runner."""
    calls: list[str] = []

    async def fake_open(docker, env_id: str, within_sec: float = 1, link_dir=None) -> RunnerSession:
        calls.append(env_id if link_dir is None else f"{env_id} over {link_dir.name}")
        await asyncio.sleep(0.01)
        if env_id.startswith("none"):
            raise RunnerLost("no hello from the runner")
        session = RunnerSession(Transport())
        await session.open(within_sec)
        return session

    monkeypatch.setattr(runner_sessions, "open_session", fake_open)
    return calls


async def test_one_session_per_environment_however_many_ask_at_once(opened):
    pool = RunnerPool(None, "volume")  # type: ignore[arg-type]
    sessions = await asyncio.gather(*(pool.session("a") for _ in range(8)), pool.session("b"))
    assert opened == ["a", "b"]
    assert len({id(s) for s in sessions[:8]}) == 1 and sessions[8] is not sessions[0]
    await pool.close()
    assert all(s is not None and not s.alive for s in sessions)


async def test_a_lost_session_is_replaced_by_the_next_command(opened):
    pool = RunnerPool(None, "volume")  # type: ignore[arg-type]
    first = await pool.session("a")
    assert first is not None
    await first.transport.close()  # the runner's stream ends
    async with asyncio.timeout(2):
        while first.alive:
            await asyncio.sleep(0.01)
    second = await pool.session("a")
    assert second is not None and second is not first and second.alive
    assert opened == ["a", "a"]
    await pool.close()


async def test_an_environment_without_a_runner_uses_docker_exec_until_the_retry(opened, monkeypatch):
    pool = RunnerPool(None, "volume")  # type: ignore[arg-type]
    assert await pool.session("none-1") is None
    assert await pool.session("none-1") is None
    assert opened == ["none-1"]  # not asked again at every command
    monkeypatch.setattr(runner_sessions, "RETRY_AFTER_SEC", 0.0)
    assert await pool.session("none-2") is None
    assert await pool.session("none-2") is None
    assert opened == ["none-1", "none-2", "none-2"]


async def test_teardown_drops_the_session_and_a_warm_start_opens_it_ahead(opened):
    pool = RunnerPool(None, "volume")  # type: ignore[arg-type]
    pool.warm("a")
    async with asyncio.timeout(2):
        while "a" not in opened:
            await asyncio.sleep(0.01)
    session = await pool.session("a")
    assert opened == ["a"] and session is not None
    await pool.drop("a")
    assert not session.alive and session.transport.closed  # type: ignore[attr-defined]
    pool.warm("none-x")  # a failure ahead is only logged
    await pool.close()


ENV_ID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


async def test_with_a_link_dir_the_sandbox_mounts_its_own_and_loses_it_at_teardown(opened, tmp_path):
    pool = RunnerPool(None, "volume", tmp_path / "link")  # type: ignore[arg-type]
    assert pool.link_mounts(ENV_ID) == [
        {
            "Type": "bind",
            "Source": str(tmp_path / "link" / ENV_ID),
            "Target": "/.taskenv-link",
            "ReadOnly": True,
        }
    ]
    assert await pool.session(ENV_ID) is not None
    # The fake's session is no socket's: the runner did not connect, and is not asked to again.
    await pool.close()
    assert (tmp_path / "link" / ENV_ID).is_dir()  # a worker's end leaves it to the next worker
    assert await pool.session(ENV_ID) is not None
    assert opened == [f"{ENV_ID} over link", ENV_ID]
    await pool.drop(ENV_ID)
    assert not (tmp_path / "link" / ENV_ID).exists()


def test_without_a_usable_link_dir_the_sandbox_mounts_nothing(tmp_path, caplog):
    assert RunnerPool(None, "volume").link_mounts(ENV_ID) == []  # type: ignore[arg-type]
    (tmp_path / "file").write_text("")
    assert RunnerPool(None, "volume", tmp_path / "file").link_mounts(ENV_ID) == []  # type: ignore[arg-type]
    assert RunnerPool(None, "volume", tmp_path).link_mounts("../escape") == []  # type: ignore[arg-type]
    assert caplog.text.count("its runner uses the exec transport") == 2

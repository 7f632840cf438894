"""The runner's frame codec and the worker's session against a fake runner (pure logic): what a
lying, flooding, silent or garbled runner gets."""

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskenv.worker import runner_client
from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_client import CommandTimedOut, RunnerLost, RunnerRefused, RunnerSession
from taskenv.worker.runner_protocol import (
    LENGTH,
    MAX_BODY,
    MAX_ENV,
    MAX_ENV_ENTRIES,
    MAX_OUTPUT_CHUNK,
    START_HEAD,
    VERSION,
    Error,
    Exit,
    ExitReason,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    Output,
    RunnerProtocolError,
    encode_env,
    encode_kill,
    encode_runner_frame,
    encode_start,
    parse_body,
)

frames = st.one_of(
    st.builds(Hello, st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)),
    st.builds(Output, st.integers(1, 2**32 - 1), st.binary(min_size=1, max_size=MAX_OUTPUT_CHUNK)),
    st.builds(
        Exit,
        st.integers(1, 2**32 - 1),
        st.sampled_from(ExitReason),
        st.integers(0, 255),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(Error, st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=100)),
)


@given(st.lists(frames, max_size=8), st.lists(st.integers(1, 70000), max_size=10))
def test_frames_survive_any_split(sent: list[Frame], cuts: list[int]):
    stream = b"".join(encode_runner_frame(f) for f in sent)
    decoder, got, at = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[at : at + cut])
        at += cut
    got += decoder.feed(stream[at:])
    assert got == sent and decoder.pending == 0


@given(st.binary(max_size=4096), st.integers(1, 64))
def test_any_bytes_give_frames_or_a_protocol_error_and_stay_bounded(data: bytes, step: int):
    decoder = FrameDecoder()
    try:
        for at in range(0, len(data), step):
            for frame in decoder.feed(data[at : at + step]):
                assert isinstance(frame, Hello | Output | Exit | Error)
            assert decoder.pending < LENGTH.size + MAX_BODY
    except RunnerProtocolError:
        with pytest.raises(RunnerProtocolError):
            decoder.feed(b"")  # broken for good
        return


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">BI", FrameType.OUTPUT, 1),  # empty output
        struct.pack(">BI", FrameType.OUTPUT, 0) + b"x",  # output for id 0
        struct.pack(">BIBBQ", FrameType.EXIT, 1, 9, 0, 0),  # unknown exit reason
        struct.pack(">BIBB", FrameType.EXIT, 1, 0, 0),  # exit too short
        struct.pack(">BIH", FrameType.HELLO, 0, 1),  # hello too short
        struct.pack(">BIHI", FrameType.HELLO, 3, 1, 1),  # hello with an id
        struct.pack(">BI", FrameType.ERROR, 1),  # empty error
        struct.pack(">BI", FrameType.ERROR, 1) + b"e" * 513,  # error too long
        struct.pack(">BI", FrameType.START, 1) + b"x",  # a worker's frame type
        struct.pack(">BI", 0x99, 1),
    ],
)
def test_malformed_bodies_are_refused(body: bytes):
    with pytest.raises(RunnerProtocolError):
        parse_body(body)


def test_a_length_past_the_bound_is_refused_before_its_bytes_arrive():
    decoder = FrameDecoder()
    with pytest.raises(RunnerProtocolError, match="out of bounds"):
        decoder.feed(LENGTH.pack(MAX_BODY + 1))


def test_requests_are_refused_before_they_leave():
    encode_start(1, "x" * (128 * 1024 - 1), workdir="/tmp", user="1000", output_limit=10)
    for command, workdir, user in (
        ("x" * 128 * 1024, "/tmp", "1"),
        ("a\0b", "/tmp", "1"),
        ("a", "", "1"),
        ("a", "/", ""),
    ):
        with pytest.raises(ValueError):
            encode_start(1, command, workdir=workdir, user=user, output_limit=10)
    with pytest.raises(ValueError):
        encode_kill(0)


env_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
env_values = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=50)


def decode_start(frame: bytes) -> tuple[str, str, dict[str, str], str]:
    """What the runner reads from a START: workdir, user, variables, command."""
    _, wlen, ulen, elen = START_HEAD.unpack_from(frame, 9)
    at = 9 + START_HEAD.size
    workdir, user = frame[at : at + wlen], frame[at + wlen : at + wlen + ulen]
    block = frame[at + wlen + ulen : at + wlen + ulen + elen]
    assert block == b"" or block.endswith(b"\0")
    entries = [entry.decode().partition("=") for entry in block.split(b"\0")[:-1]]
    command = frame[at + wlen + ulen + elen :].decode()
    return workdir.decode(), user.decode(), {key: value for key, _, value in entries}, command


@given(
    st.dictionaries(env_keys, env_values, max_size=20), st.text(max_size=50).filter(lambda c: "\0" not in c)
)
def test_variables_travel_in_the_start(env: dict[str, str], command: str):
    frame = encode_start(7, command, workdir="/w", user="1000:1000", output_limit=5, env=env)
    assert decode_start(frame) == ("/w", "1000:1000", env, command)


@pytest.mark.parametrize(
    "env",
    [
        {"1A": "x"},
        {"A-B": "x"},
        {"": "x"},
        {"A=B": "x"},
        {"A": "x\0y"},
        {"A": "\ud800"},
        {"A": 1},
        {f"K{i}": "" for i in range(MAX_ENV_ENTRIES + 1)},
        {"A": "x" * MAX_ENV},
    ],
)
def test_a_bad_environment_is_refused_before_it_leaves(env):
    with pytest.raises(ValueError):
        encode_start(1, "true", workdir="/tmp", user="1000", output_limit=10, env=env)


def test_the_environment_bounds_are_the_runners():
    most = {f"K{i}": "" for i in range(MAX_ENV_ENTRIES)}
    assert len(encode_env(most).split(b"\0")) == MAX_ENV_ENTRIES + 1
    assert len(encode_env({"A": "x" * (MAX_ENV - 3)})) == MAX_ENV
    with pytest.raises(ValueError):
        encode_env({"A": "x" * (MAX_ENV - 2)})


class FakeRunner:
    """A transport whose 'runner' is the test: it reads what the worker wrote and says what
    the test makes it say."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.written: list[bytes] = []
        self.closed = False

    async def read(self) -> bytes | None:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.written.append(data)

    async def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(None)

    def say(self, *frames: Frame) -> None:
        self.incoming.put_nowait(b"".join(encode_runner_frame(f) for f in frames))

    def send(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    async def started(self, count: int = 1) -> None:
        async with asyncio.timeout(2):
            while sum(1 for w in self.written if w[4] == FrameType.START) < count:
                await asyncio.sleep(0)


async def opened(fake: FakeRunner) -> RunnerSession:
    session = RunnerSession(fake)
    fake.say(Hello(VERSION, 256))
    await session.open(within_sec=2)
    return session


def command(
    session: RunnerSession, output: CappedOutput | None = None, timeout: float = 5
) -> asyncio.Task[Exit]:
    output = output if output is not None else CappedOutput(100)
    return asyncio.create_task(
        session.run("true", workdir="/tmp", user="1000", output=output, within_sec=timeout)
    )


async def test_an_answer_with_its_output_and_what_the_runner_dropped():
    fake = FakeRunner()
    session = await opened(fake)
    output = CappedOutput(5)
    task = command(session, output)
    await fake.started()
    fake.say(Output(1, b"hello"), Exit(1, ExitReason.EXITED, 3, 42))
    ended = await task
    assert (ended.status, output.text()) == (
        3,
        "hello\n[taskenv: output truncated at 5 bytes; 42 more bytes were discarded]\n",
    )


async def test_the_commands_variables_go_in_its_start_and_a_bad_one_fails_that_command_only():
    fake = FakeRunner()
    session = await opened(fake)
    with pytest.raises(ValueError, match="not an identifier"):
        await session.run(
            "true", workdir="/tmp", user="1000", output=CappedOutput(10), within_sec=1, env={"a b": ""}
        )
    task = asyncio.create_task(
        session.run(
            "true", workdir="/tmp", user="1000", output=CappedOutput(10), within_sec=5, env={"A": "1"}
        )
    )
    await fake.started()
    start = next(w for w in fake.written if w[4] == FrameType.START)
    assert decode_start(start)[2] == {"A": "1"}
    command_id = struct.unpack_from(">I", start, 5)[0]
    fake.say(Exit(command_id, ExitReason.EXITED, 0, 0))
    assert (await task).status == 0 and session.alive


async def test_a_runner_that_never_greets_is_lost_at_the_timeout():
    session = RunnerSession(FakeRunner())
    with pytest.raises(RunnerLost, match="no hello"):
        await session.open(within_sec=0.1)


async def test_a_runner_of_another_protocol_version_is_not_used():
    fake = FakeRunner()
    fake.say(Hello(VERSION + 1, 1))
    with pytest.raises(RunnerLost, match="protocol"):
        await RunnerSession(fake).open(within_sec=1)
    assert fake.closed


@pytest.mark.parametrize(
    ("lie", "reason"),
    [
        ([Exit(7, ExitReason.EXITED, 0, 0)], "never started"),  # an exit for an id never issued
        ([Output(1, b"x" * 101)], "more output than the limit"),  # the runner's cap ignored
        ([Hello(VERSION, 1)], "second hello"),
        ([Error(0, "bad frame")], "gave up"),
    ],
)
async def test_lies_end_the_session_and_the_command_gets_runner_lost(lie, reason):
    fake = FakeRunner()
    session = await opened(fake)
    task = command(session)
    await fake.started()
    fake.say(*lie)
    with pytest.raises(RunnerLost, match=reason):
        await task
    assert fake.closed and not session.alive
    with pytest.raises(RunnerLost):
        await session.run("true", workdir="/", user="1", output=CappedOutput(1), within_sec=1)


async def test_garbage_ends_the_session():
    fake = FakeRunner()
    session = await opened(fake)
    task = command(session)
    await fake.started()
    fake.send(b"\xff" * 64)
    with pytest.raises(RunnerLost, match="out of bounds"):
        await task


async def test_a_refused_start_fails_that_command_only():
    fake = FakeRunner()
    session = await opened(fake)
    first, second = command(session), command(session)
    await fake.started(2)
    fake.say(Error(1, "start: unknown user"), Output(2, b"ok"), Exit(2, ExitReason.EXITED, 0, 0))
    with pytest.raises(RunnerRefused, match="unknown user"):
        await first
    assert (await second).status == 0 and session.alive


async def test_a_silent_runner_at_the_deadline_is_reported_unkilled(monkeypatch):
    monkeypatch.setattr(runner_client, "KILL_WAIT_SEC", 0.1)
    fake = FakeRunner()
    session = await opened(fake)
    output = CappedOutput(100)
    task = command(session, output, timeout=0.2)
    await fake.started()
    fake.say(Output(1, b"partial"))
    async with asyncio.timeout(2):
        with pytest.raises(CommandTimedOut) as timed_out:
            await task
    assert not timed_out.value.killed and output.text() == "partial"
    assert fake.written[-1] == encode_kill(1)
    # Its late frames are dropped, not taken for another command's.
    fake.say(Output(1, b"late"), Exit(1, ExitReason.KILLED, 137, 0))
    second = command(session)
    await fake.started(2)
    fake.say(Exit(2, ExitReason.EXITED, 0, 0))
    assert (await second).status == 0


async def test_a_confirmed_kill_at_the_deadline():
    fake = FakeRunner()
    session = await opened(fake)
    task = command(session, timeout=0.1)
    await fake.started()
    async with asyncio.timeout(2):
        while fake.written[-1] != encode_kill(1):
            await asyncio.sleep(0.01)
    fake.say(Exit(1, ExitReason.KILLED, 137, 0))
    with pytest.raises(CommandTimedOut) as timed_out:
        await task
    assert timed_out.value.killed


async def test_a_flood_for_finished_commands_is_bounded(monkeypatch):
    monkeypatch.setattr(runner_client, "STRAY_OUTPUT_BUDGET", 1000)
    fake = FakeRunner()
    session = await opened(fake)
    task = command(session)
    await fake.started()
    fake.say(Exit(1, ExitReason.EXITED, 0, 0))
    await task
    fake.say(*[Output(1, b"x" * 100)] * 11)
    async with asyncio.timeout(2):
        while session.alive:
            await asyncio.sleep(0.01)
    assert "no longer running" in str(session.lost)


async def test_a_cancelled_command_is_killed():
    fake = FakeRunner()
    session = await opened(fake)
    task = command(session)
    await fake.started()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.written[-1] == encode_kill(1)

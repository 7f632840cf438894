"""The runner binary driven directly on this host through a pipe, or connected to a unix socket
(`--connect`), as the worker drives it in a sandbox (runner/PROTOCOL.md): execution semantics,
the output cap, the tree kill, background children, and what it does with bad frames. Needs
root (it switches users, as in a sandbox) and the binary (`make -C runner`).

Commands run as uid 54321, a user nothing else on this machine runs as, so what they start can
be found, and swept, without touching anyone else's processes.
"""

import asyncio
import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_client import CommandTimedOut, RunnerSession, RunnerTransport
from taskenv.worker.runner_link import SocketTransport
from taskenv.worker.runner_protocol import (
    MAX_OUTPUT_CHUNK,
    START_HEAD,
    Error,
    Exit,
    ExitReason,
    FrameDecoder,
    FrameType,
    Hello,
    encode_start,
)
from taskenv.worker.runner_volume import DEFAULT_BINARY

USER = "54321:54321"
UID = 54321
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not DEFAULT_BINARY.is_file() or os.geteuid() != 0, reason="needs root and runner/build (make -C runner)"
)


class ProcessTransport:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def read(self) -> bytes | None:
        assert self.process.stdout is not None
        return await self.process.stdout.read(65536) or None

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()


async def spawn(home: str = "/root") -> asyncio.subprocess.Process:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home}
    return await asyncio.create_subprocess_exec(
        str(DEFAULT_BINARY), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the command's user can enter and write (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="taskenv-runner-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose sockets' paths fit in 107 bytes (pytest's own may not)."""
    path = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def spawn_connected(directory: Path) -> tuple[asyncio.subprocess.Process, SocketTransport]:
    """The runner started with `--connect` to a socket listening in `directory`, its stdio
    unused (as with a detached `docker exec`), and the worker's side of its connection."""
    path = directory / "runner.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        process = await asyncio.create_subprocess_exec(
            str(DEFAULT_BINARY), "--connect", str(path), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
        )  # fmt: skip
        async with asyncio.timeout(5):
            connection, _ = await asyncio.get_running_loop().sock_accept(listener)
    return process, await SocketTransport.over(connection, exe=None)  # type: ignore[arg-type]


@pytest.fixture(params=["stdio", "socket"])
async def runner(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[RunnerSession]:
    transport: RunnerTransport
    if request.param == "stdio":
        process = await spawn()
        transport = ProcessTransport(process)
    else:
        process, transport = await spawn_connected(short_dir)
    session = RunnerSession(transport)
    await session.open(within_sec=5)
    yield session
    await session.close()
    async with asyncio.timeout(5):
        assert await process.wait() == 0


async def run(session: RunnerSession, command: str, workdir: Path, limit: int = MIB, timeout: float = 10):
    output = CappedOutput(limit)
    ended = await session.run(command, workdir=str(workdir), user=USER, output=output, within_sec=timeout)
    return ended, output


def processes_of(uid: int) -> list[str]:
    """The command lines of the live processes of `uid` (zombies hold nothing, run nothing)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.stat().st_uid != uid or (entry / "stat").read_bytes().rsplit(b")", 1)[1][1:2] == b"Z":
                continue
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue
    return found


async def until_gone(marker: str, within: float = 3.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := [c for c in processes_of(UID) if marker in c]) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return left


async def test_output_in_order_exit_code_and_unprivileged_user(runner, workdir):
    ended, output = await run(runner, "echo out; echo err >&2; echo out2; id -u; exit 3", workdir)
    assert (ended.reason, ended.status) == (ExitReason.EXITED, 3)
    assert output.text() == f"out\nerr\nout2\n{UID}\n"


@pytest.mark.parametrize(
    ("command", "status"),
    [
        ("no-such-program", 127),
        ("./not-executable", 126),
        ("kill -9 $$", 137),
        ("if then fi", 2),
        ("true", 0),
    ],
)
async def test_exit_statuses_as_docker_exec_reports_them(runner, workdir, command, status):
    (workdir / "not-executable").write_text("echo hi\n")
    ended, _ = await run(runner, command, workdir)
    assert ended.status == status


async def test_stdin_is_closed_and_no_positional_parameters_leak(runner, workdir):
    _, output = await run(runner, 'cat; echo "after [$1][$#]"', workdir)
    assert output.text() == "after [][0]\n"


async def test_bytes_pass_through_unchanged(runner, workdir):
    _, output = await run(runner, r"printf '\377\376ok\036x:0\n'", workdir)
    assert output.text() == "\ufffd\ufffdok\x1ex:0\n"


async def test_home_is_the_users_unless_the_environment_set_one(workdir):
    for runner_home, expected in (("/root", "/"), ("/custom", "/custom")):
        process = await spawn(home=runner_home)
        session = RunnerSession(ProcessTransport(process))
        await session.open(within_sec=5)
        _, output = await run(session, "echo $HOME", workdir)
        assert output.text() == f"{expected}\n"
        await session.close()
        await process.wait()


async def test_output_is_capped_in_the_runner_with_the_rest_counted(runner, workdir):
    ended, output = await run(runner, "yes | head -c 3000000; echo done >&2", workdir, limit=MIB)
    assert ended.status == 0
    assert ended.dropped == 3000000 + 5 - MIB
    text = output.text()
    assert text.startswith("y\n" * 10)
    assert f"{3000000 + 5 - MIB} more bytes were discarded" in text


async def test_background_child_holding_the_pipe_does_not_delay_the_answer(runner, workdir):
    started = time.monotonic()
    ended, output = await run(runner, f"(sleep 0.5; echo late; touch {workdir}/survived) & echo hi", workdir)
    assert output.text() == "hi\n" and ended.status == 0
    assert time.monotonic() - started < 0.4
    # Writing after its command ended did not kill it (no SIGPIPE): the runner still reads.
    async with asyncio.timeout(5):
        while not (workdir / "survived").exists():
            await asyncio.sleep(0.02)


async def test_deadline_kills_group_session_descendants_and_double_forked_escapees(runner, workdir):
    tag = secrets.randbelow(10**6) + 10**6  # this test's own sleeps
    command = (
        f"echo started; sleep {tag}1 & setsid sleep {tag}2 & (sleep {tag}3 &); (setsid sleep {tag}4 &); "
        f"sleep {tag}5"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as timed_out:
        output = CappedOutput(MIB)
        await runner.run(command, workdir=str(workdir), user=USER, output=output, within_sec=0.5)
    assert timed_out.value.killed
    assert time.monotonic() - started < 1.5
    assert output.text() == "started\n"
    assert await until_gone(f"sleep {tag}") == []


async def test_kill_minus_one_as_the_user_leaves_the_runner_standing(runner, workdir):
    ended, _ = await run(runner, "sleep 999 & kill -9 -1; echo after", workdir)
    # The shell is not killed by its own kill -1 (the caller is spared): it ends normally.
    assert ended.status == 0
    ended, output = await run(runner, "echo still here", workdir)
    assert output.text() == "still here\n"


async def test_concurrent_commands(runner, workdir):
    results = await asyncio.gather(*(run(runner, f"sleep 0.2; echo {i}", workdir) for i in range(16)))
    assert [output.text() for _, output in results] == [f"{i}\n" for i in range(16)]


async def test_a_command_it_cannot_start_answers_126_with_the_reason(runner, workdir):
    ended, output = await run(runner, "true", workdir / "missing")
    assert ended.status == 126 and "cannot start the command: workdir: No such file" in output.text()
    output = CappedOutput(10)
    ended = await runner.run("true", workdir=str(workdir), user="no-such-user", output=output, within_sec=5)
    assert ended.status == 126 and output.text().startswith("taskenv-r")  # capped like any output
    ended, _ = await run(runner, "true", workdir)
    assert ended.status == 0


async def read_frames(process: asyncio.subprocess.Process, decoder: FrameDecoder) -> list:
    assert process.stdout is not None
    frames: list = []
    async with asyncio.timeout(5):
        while data := await process.stdout.read(65536):
            frames += decoder.feed(data)
    return frames


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 2**31) + b"x" * 16,  # a length past any frame
        struct.pack(">I", 2) + b"xx",  # shorter than a frame's head
        struct.pack(">IBI", 5, 0x7F, 1),  # an unknown type
        struct.pack(">IBI", 6, FrameType.KILL, 1) + b"x",  # a kill with a payload
    ],
)
async def test_garbage_from_the_worker_ends_the_runner_and_its_commands(workdir, garbage):
    tag = secrets.randbelow(10**6) + 10**6
    process = await spawn()
    assert process.stdin is not None
    process.stdin.write(encode_start(1, f"sleep {tag}", workdir=str(workdir), user=USER, output_limit=10))
    await process.stdin.drain()
    async with asyncio.timeout(5):
        while not [c for c in processes_of(UID) if f"sleep {tag}" in c]:
            await asyncio.sleep(0.01)
    process.stdin.write(garbage)
    await process.stdin.drain()
    frames = await read_frames(process, FrameDecoder())
    assert isinstance(frames[0], Hello)
    assert isinstance(frames[-1], Error) and frames[-1].command_id == 0
    assert await process.wait() == 2
    assert await until_gone(f"sleep {tag}") == []


async def test_a_bad_start_is_refused_without_ending_the_session(workdir):
    process = await spawn()
    assert process.stdin is not None
    good = encode_start(2, "echo ok", workdir=str(workdir), user=USER, output_limit=10)
    nul = bytearray(encode_start(1, "echo x", workdir=str(workdir), user=USER, output_limit=10))
    nul[-2] = 0  # a NUL in the command
    process.stdin.write(bytes(nul) + good + good)  # the second `good` reuses a running id... or not
    await process.stdin.drain()
    await asyncio.sleep(0.3)
    process.stdin.close()
    frames = await read_frames(process, FrameDecoder())
    errors = {f.command_id: f.message for f in frames if isinstance(f, Error)}
    assert "NUL" in errors[1]
    assert next(f.data for f in frames if getattr(f, "data", None)) == b"ok\n"
    assert await process.wait() == 0


async def closing_kills_what_it_runs(
    process: asyncio.subprocess.Process, session: RunnerSession, workdir
) -> None:
    tag = secrets.randbelow(10**6) + 10**6
    await session.open(within_sec=5)
    running = asyncio.create_task(run(session, f"sleep {tag} & sleep {tag}", workdir))
    async with asyncio.timeout(5):
        while len([c for c in processes_of(UID) if f"sleep {tag}" in c]) < 2:
            await asyncio.sleep(0.01)
    await session.close()
    assert await until_gone(f"sleep {tag}") == []
    assert await process.wait() == 0
    with pytest.raises(Exception, match="closed by the worker"):
        await running


async def test_closing_the_session_kills_what_it_runs(workdir):
    process = await spawn()
    await closing_kills_what_it_runs(process, RunnerSession(ProcessTransport(process)), workdir)


async def test_closing_the_socket_kills_what_it_runs(workdir, short_dir):
    process, transport = await spawn_connected(short_dir)
    await closing_kills_what_it_runs(process, RunnerSession(transport), workdir)


@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        (["--connect", "/nonexistent/runner.sock"], 1, b"taskenv-runner: connect: No such file"),
        (["--connect", "/" + "x" * 200], 1, b"taskenv-runner: socket path too long"),
        (["--connect"], 2, b"usage: taskenv-runner"),
        (["--listen", "x"], 2, b"usage: taskenv-runner"),
    ],
)
async def test_a_runner_that_cannot_connect_exits_at_once_with_the_reason(args, status, said):
    process = await asyncio.create_subprocess_exec(
        str(DEFAULT_BINARY), *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(5):
        out, err = await process.communicate()
    assert (process.returncode, out) == (status, b"") and err.startswith(said), err


async def test_output_chunks_are_within_the_frame_bound(runner, workdir):
    sizes: list[int] = []
    original = runner._dispatch

    def spy(frame):
        if hasattr(frame, "data"):
            sizes.append(len(frame.data))
        original(frame)

    runner._dispatch = spy
    await run(runner, "head -c 300000 /dev/zero", workdir)
    assert sum(sizes) == 300000 and max(sizes) <= MAX_OUTPUT_CHUNK


async def test_variables_reach_the_command_over_the_containers(workdir):
    process = await spawn()
    session = RunnerSession(ProcessTransport(process))
    await session.open(within_sec=5)
    env = {"WEB_URL": "http://localhost:8080", "PATH": "/bin:/usr/bin", "EMPTY": "", "ODD": "a=b c\n'\"$x"}
    output = CappedOutput(MIB)
    command = 'printf "%s|%s|%s|[%s]|%s\\n" "$WEB_URL" "$PATH" "$HOME" "$EMPTY" "$ODD"; env | grep -c ^PATH='
    ended = await session.run(command, workdir=str(workdir), user=USER, output=output, within_sec=5, env=env)
    assert ended.status == 0
    assert output.text() == "http://localhost:8080|/bin:/usr/bin|/|[]|a=b c\n'\"$x\n1\n"
    # HOME from the START wins over the user's.
    output = CappedOutput(MIB)
    await session.run(
        "echo $HOME", workdir=str(workdir), user=USER, output=output, within_sec=5, env={"HOME": "/h"}
    )
    assert output.text() == "/h\n"
    # The next command without variables has the container's again.
    _, output = await run(session, 'echo "[$WEB_URL]$PATH"', workdir)
    assert output.text() == "[]/usr/sbin:/usr/bin:/sbin:/bin\n"
    await session.close()
    await process.wait()


async def frames_until_exit(process: asyncio.subprocess.Process, command_id: int) -> list:
    assert process.stdout is not None
    decoder, frames = FrameDecoder(), []
    async with asyncio.timeout(5):
        while not any(isinstance(f, Exit) and f.command_id == command_id for f in frames):
            frames += decoder.feed(await process.stdout.read(65536))
    return frames


def start_with_env(command_id: int, block: bytes, workdir: Path) -> bytes:
    """A START whose environment block is `block` as it is (the encoder refuses bad ones)."""
    good = encode_start(command_id, "echo ok", workdir=str(workdir), user=USER, output_limit=100)
    limit, wlen, ulen, _ = START_HEAD.unpack_from(good, 9)
    head_end = 9 + START_HEAD.size + wlen + ulen
    payload = START_HEAD.pack(limit, wlen, ulen, len(block)) + good[9 + START_HEAD.size : head_end] + block
    body = struct.pack(">BI", FrameType.START, command_id) + payload + b"echo ok"
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"A=1", "malformed"),  # unterminated
        (b"=1\0", "malformed"),  # no key
        (b"1A=1\0", "malformed"),  # a key not an identifier
        (b"A-B=1\0", "malformed"),
        (b"A\0", "malformed"),  # no '='
        (b"\0", "malformed"),  # an empty entry
        (b"A=1\0A=2\0", "malformed"),  # a key twice
        (b"".join(b"K%d=\0" % i for i in range(257)), "malformed"),  # too many
        (b"A=" + b"x" * (64 * 1024) + b"\0", "length"),  # too long
    ],
)
async def test_a_malformed_environment_is_refused(workdir, block, reason):
    process = await spawn()
    assert process.stdin is not None
    good = encode_start(2, "echo ok", workdir=str(workdir), user=USER, output_limit=10, env={"A": "1"})
    process.stdin.write(start_with_env(1, block, workdir) + good)
    await process.stdin.drain()
    frames = await frames_until_exit(process, 2)
    process.stdin.close()
    errors = {f.command_id: f.message for f in frames if isinstance(f, Error)}
    assert reason in errors[1]
    assert next(f.data for f in frames if getattr(f, "data", None)) == b"ok\n"
    assert await process.wait() == 0

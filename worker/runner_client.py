"""The worker's side of an in-sandbox runner (runner/PROTOCOL.md): one session per environment,
commands multiplexed over it by id.

A session is a byte stream to one runner process: in production its `docker exec` stdio
(worker/runner_sessions.py), in tests a local process. Everything the runner says is hostile
input (worker/runner_protocol.py decodes it strictly); it is trusted only for its own
environment, and only within bounds checked here: output past a command's limit, frames for ids
never issued, or stray output past a budget end the session. A command's deadline is kept here,
not by the runner: at the deadline the command is killed with a kill frame and, if the runner
does not confirm within `KILL_WAIT_SEC`, the caller is told so it can kill from outside.
"""

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_protocol import (
    MAX_COMMAND_ID,
    VERSION,
    Error,
    Exit,
    Frame,
    FrameDecoder,
    Hello,
    Output,
    RunnerProtocolError,
    encode_kill,
    encode_start,
)

log = logging.getLogger("taskenv.worker")

# How long a runner has to confirm a kill frame (its stop-then-kill of the tree takes a few ms)
# before the command is reported unconfirmed: well within the API's wait past the deadline
# (TASKENV_RESULT_GRACE_SEC, 0.75 s), so the 504 still carries the partial output.
KILL_WAIT_SEC = 0.3
# Output for commands no longer waited for (their deadline passed): bounded, then the session
# is taken as broken.
STRAY_OUTPUT_BUDGET = 4 * 1024 * 1024


class RunnerTransport(Protocol):
    async def read(self) -> bytes | None:
        """The next bytes of the runner's frame stream, or None at its end."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class RunnerLost(Exception):
    """The session ended or broke; no answer will come on it."""


class RunnerRefused(Exception):
    """The runner could not start the command (its message says why)."""


class CommandTimedOut(Exception):
    def __init__(self, killed: bool) -> None:
        super().__init__("killed at its deadline" if killed else "kill not confirmed by the runner")
        self.killed = killed


@dataclass
class _Running:
    output: CappedOutput
    done: asyncio.Future[Exit]
    received: int = 0  # output bytes the runner sent: never more than the limit


@dataclass
class RunnerSession:
    transport: RunnerTransport
    on_lost: Callable[["RunnerSession"], None] | None = None
    lost: str | None = None
    hello: Hello | None = None
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _running: dict[int, _Running] = field(default_factory=dict)
    _next_id: int = 1
    _stray: int = 0
    _reader: asyncio.Task[None] | None = None
    _greeted: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, within_sec: float) -> Hello:
        """Start reading and wait for the runner's hello (RunnerLost if none comes in time)."""
        self._reader = asyncio.create_task(self._read_frames())
        try:
            async with asyncio.timeout(within_sec):
                await self._greeted.wait()
        except TimeoutError:
            await self._lose(f"no hello from the runner within {within_sec:g} s")
        if self.hello is None:
            raise RunnerLost(self.lost or "the runner did not greet")
        if self.hello.version != VERSION:
            await self._lose(f"runner speaks protocol {self.hello.version}, not {VERSION}")
            raise RunnerLost(str(self.lost))
        return self.hello

    @property
    def alive(self) -> bool:
        return self.lost is None and self.hello is not None

    async def run(
        self,
        command: str,
        *,
        workdir: str,
        user: str,
        output: CappedOutput,
        within_sec: float,
        env: Mapping[str, str] | None = None,
    ) -> Exit:
        """Run one command to its end, with the container's environment overridden by `env`.
        Raises CommandTimedOut after `within_sec` (the command killed or not, as the runner
        confirmed), RunnerRefused, RunnerLost, or ValueError for a request it cannot encode."""
        if self.lost is not None:
            raise RunnerLost(self.lost)
        command_id = self._take_id()
        running = _Running(output, asyncio.get_running_loop().create_future())
        self._running[command_id] = running
        try:
            await self._send(
                encode_start(
                    command_id, command, workdir=workdir, user=user, output_limit=output.limit, env=env
                )
            )
            try:
                async with asyncio.timeout(max(within_sec, 0.0)):
                    return await asyncio.shield(running.done)
            except TimeoutError:
                raise CommandTimedOut(await self._kill(command_id, running)) from None
        except asyncio.CancelledError:
            # Nobody will wait for it: kill it, without waiting for the confirmation.
            with suppress(RunnerLost):
                await asyncio.shield(self._send(encode_kill(command_id)))
            raise
        finally:
            self._running.pop(command_id, None)
            if not running.done.done():
                running.done.cancel()
            elif not running.done.cancelled():
                running.done.exception()  # seen: no "never retrieved" warning

    async def close(self) -> None:
        """End the session: the runner, its stdin closed, kills what it still runs."""
        await self._lose("session closed by the worker")
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader

    def _take_id(self) -> int:
        command_id = self._next_id
        self._next_id = command_id + 1 if command_id < MAX_COMMAND_ID else 1
        return command_id

    async def _send(self, frame: bytes) -> None:
        try:
            await self.transport.write(frame)
        except Exception as exc:
            await self._lose(f"writing to the runner failed: {type(exc).__name__}: {exc}")
            raise RunnerLost(str(self.lost)) from exc

    async def _kill(self, command_id: int, running: _Running) -> bool:
        try:
            await self._send(encode_kill(command_id))
            async with asyncio.timeout(KILL_WAIT_SEC):
                await asyncio.shield(running.done)
        except (TimeoutError, RunnerLost, RunnerRefused):
            return False
        return True

    async def _read_frames(self) -> None:
        try:
            while (data := await self.transport.read()) is not None:
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
            reason = "the runner's stream ended"
        except RunnerProtocolError as exc:
            reason = f"the runner broke the protocol: {exc}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"reading from the runner failed: {type(exc).__name__}: {exc}"
        await self._lose(reason)

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Hello):
            if self.hello is not None:
                raise RunnerProtocolError("a second hello")
            self.hello = frame
            self._greeted.set()
            return
        if self.hello is None:
            raise RunnerProtocolError("a frame before the hello")
        if isinstance(frame, Error) and frame.command_id == 0:
            raise RunnerProtocolError(f"the runner gave up: {frame.message}")
        running = self._running.get(frame.command_id)
        if running is None or running.done.done():
            self._stray_frame(frame)
        elif isinstance(frame, Output):
            running.received += len(frame.data)
            if running.received > running.output.limit:
                raise RunnerProtocolError(f"more output than the limit for command {frame.command_id}")
            running.output.add(frame.data)
        elif isinstance(frame, Exit):
            running.output.dropped += frame.dropped
            running.done.set_result(frame)
        else:
            running.done.set_exception(RunnerRefused(frame.message))

    def _stray_frame(self, frame: Output | Exit | Error) -> None:
        """A frame for a command no longer waited for (its deadline passed) is dropped; one for
        an id never issued, or too many of them, breaks the session."""
        if not 0 < frame.command_id < self._next_id:
            raise RunnerProtocolError(f"a frame for command {frame.command_id}, never started")
        self._stray += len(frame.data) if isinstance(frame, Output) else 1
        if self._stray > STRAY_OUTPUT_BUDGET:
            raise RunnerProtocolError("too much output for commands no longer running")

    async def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._greeted.set()
        for running in self._running.values():
            if not running.done.done():
                running.done.set_exception(RunnerLost(reason))
        if self.on_lost is not None:
            self.on_lost(self)
        try:
            await self.transport.close()
        except Exception as exc:
            log.debug("closing a runner session: %s: %s", type(exc).__name__, exc)

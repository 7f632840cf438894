"""The in-sandbox runner's frames (runner/PROTOCOL.md): the worker's requests encoded, the
runner's frames decoded.

Everything the runner sends is hostile input: the sandbox can replace the runner or write into
its stdout. The decoder is strict (a known type, an exact payload layout, sizes within bounds),
bounded (it never holds more than one frame's worth of bytes between calls) and linear (each
byte is looked at once); anything else is a `RunnerProtocolError`, never another exception.
"""

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

VERSION = 2
LENGTH = struct.Struct(">I")  # the body's length, before the body
BODY_HEAD = struct.Struct(">BI")  # type, command id
START_HEAD = struct.Struct(">IHHI")  # output limit, workdir, user and environment lengths
HELLO_BODY = struct.Struct(">HI")  # protocol version, commands it runs at once
EXIT_BODY = struct.Struct(">BBQ")  # reason, status, bytes dropped past the limit

MAX_OUTPUT_CHUNK = 32 * 1024
MAX_ERROR = 512
MAX_WORKDIR = 4096
MAX_USER = 256
# The command's variables: `KEY=VALUE\0` entries, keys shell identifiers, values without NUL.
MAX_ENV = 64 * 1024
MAX_ENV_ENTRIES = 256
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The kernel's limit on one argv string, its NUL included (the runner passes `sh -c <command>`).
MAX_COMMAND = 128 * 1024 - 1
# The largest body a runner may send: an output chunk.
MAX_BODY = BODY_HEAD.size + MAX_OUTPUT_CHUNK
MAX_COMMAND_ID = 2**32 - 1


class FrameType(IntEnum):
    START = 0x01
    KILL = 0x02
    HELLO = 0x81
    OUTPUT = 0x82
    EXIT = 0x83
    ERROR = 0x84


class ExitReason(IntEnum):
    EXITED = 0
    SIGNALED = 1
    KILLED = 2  # by a kill frame: the worker's deadline


class RunnerProtocolError(Exception):
    """The runner's stream broke the protocol: nothing more it sends can be trusted."""


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    max_commands: int


@dataclass(frozen=True, slots=True)
class Output:
    command_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Exit:
    command_id: int
    reason: ExitReason
    status: int
    dropped: int


@dataclass(frozen=True, slots=True)
class Error:
    """The runner refused or could not start a command (command_id > 0), or gave up on the
    worker's stream (command_id 0)."""

    command_id: int
    message: str


Frame = Hello | Output | Exit | Error


def encode_start(
    command_id: int,
    command: str,
    *,
    workdir: str,
    user: str,
    output_limit: int,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """Start `sh -c command` as `user` (`name|uid[:group|gid]`, as Docker reads it) in `workdir`,
    with the container's environment overridden by `env`. Raises ValueError for what the runner
    would refuse (the API refuses it first; a bad `env` is the worker's own mistake)."""
    encoded = command.encode("utf-8", "surrogatepass")
    where, who = workdir.encode(), user.encode()
    if len(encoded) > MAX_COMMAND or b"\0" in encoded:
        raise ValueError("command too long or holding a NUL byte")
    if not 0 < len(where) <= MAX_WORKDIR or b"\0" in where:
        raise ValueError("workdir empty, too long or holding a NUL byte")
    if not 0 < len(who) <= MAX_USER or b"\0" in who:
        raise ValueError("user empty, too long or holding a NUL byte")
    variables = encode_env(env or {})
    limit = min(max(output_limit, 0), 2**32 - 1)
    payload = START_HEAD.pack(limit, len(where), len(who), len(variables)) + where + who + variables + encoded
    return _frame(FrameType.START, command_id, payload)


def encode_env(env: Mapping[str, str]) -> bytes:
    """`KEY=VALUE\\0` for each variable, within the runner's bounds (ValueError otherwise). The
    Docker backend holds variables to the same rules, so both backends accept the same ones."""
    if len(env) > MAX_ENV_ENTRIES:
        raise ValueError(f"{len(env)} environment variables, more than {MAX_ENV_ENTRIES}")
    entries = []
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
            raise ValueError(f"environment variable name {key!r} is not an identifier")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {key} is not a string without NUL")
        try:
            entries.append(f"{key}={value}".encode() + b"\0")
        except UnicodeEncodeError:
            raise ValueError(f"environment variable {key} is not valid UTF-8") from None
    block = b"".join(entries)
    if len(block) > MAX_ENV:
        raise ValueError(f"environment of {len(block)} bytes, more than {MAX_ENV}")
    return block


def encode_kill(command_id: int) -> bytes:
    return _frame(FrameType.KILL, command_id, b"")


def _frame(kind: FrameType, command_id: int, payload: bytes) -> bytes:
    if not 0 < command_id <= MAX_COMMAND_ID:
        raise ValueError(f"command id out of range: {command_id}")
    body = BODY_HEAD.pack(kind, command_id) + payload
    return LENGTH.pack(len(body)) + body


def encode_runner_frame(frame: Frame) -> bytes:
    """What a runner would send for `frame` (tests and fakes)."""
    if isinstance(frame, Hello):
        kind, command_id, payload = FrameType.HELLO, 0, HELLO_BODY.pack(frame.version, frame.max_commands)
    elif isinstance(frame, Output):
        kind, command_id, payload = FrameType.OUTPUT, frame.command_id, frame.data
    elif isinstance(frame, Exit):
        kind, command_id = FrameType.EXIT, frame.command_id
        payload = EXIT_BODY.pack(frame.reason, frame.status, frame.dropped)
    else:
        kind, command_id, payload = FrameType.ERROR, frame.command_id, frame.message.encode()
    body = BODY_HEAD.pack(kind, command_id) + payload
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Feed it the runner's stdout as it arrives; it returns the whole frames in it. After a
    `RunnerProtocolError` the stream is lost: feeding more raises again."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame not yet whole (at most one frame's length)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken is not None:
            raise RunnerProtocolError(self._broken)
        self._buffer += data
        frames: list[Frame] = []
        at = 0
        try:
            while len(self._buffer) - at >= LENGTH.size:
                (length,) = LENGTH.unpack_from(self._buffer, at)
                if not BODY_HEAD.size <= length <= MAX_BODY:
                    raise RunnerProtocolError(f"frame length {length} out of bounds")
                end = at + LENGTH.size + length
                if len(self._buffer) < end:
                    break
                frames.append(parse_body(bytes(self._buffer[at + LENGTH.size : end])))
                at = end
        except RunnerProtocolError as exc:
            self._broken = str(exc)
            raise
        del self._buffer[:at]
        return frames


def parse_body(body: bytes) -> Frame:
    """One frame's body (type, command id, payload), strictly."""
    kind, command_id = BODY_HEAD.unpack_from(body)
    payload = body[BODY_HEAD.size :]
    if kind == FrameType.OUTPUT and command_id and 0 < len(payload) <= MAX_OUTPUT_CHUNK:
        return Output(command_id, payload)
    if kind == FrameType.EXIT and command_id and len(payload) == EXIT_BODY.size:
        reason, status, dropped = EXIT_BODY.unpack(payload)
        if reason in ExitReason._value2member_map_:
            return Exit(command_id, ExitReason(reason), status, dropped)
        raise RunnerProtocolError(f"exit frame with unknown reason {reason}")
    if kind == FrameType.ERROR and 0 < len(payload) <= MAX_ERROR:
        return Error(command_id, payload.decode("utf-8", errors="replace"))
    if kind == FrameType.HELLO and command_id == 0 and len(payload) == HELLO_BODY.size:
        version, max_commands = HELLO_BODY.unpack(payload)
        return Hello(version, max_commands)
    raise RunnerProtocolError(
        f"malformed frame: type 0x{kind:02x}, command {command_id}, {len(payload)} bytes"
    )

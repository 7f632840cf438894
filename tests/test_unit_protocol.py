"""api/protocol.py's head timer: a late firing (the event loop behind, the head maybe unread in
the socket) waits for a read instead of answering 408; an on-time one answers 408."""

from dataclasses import dataclass, field
from typing import Any

from taskenv.api.protocol import LOOP_LAG_SEC, EnvelopeHttpToolsProtocol
from taskenv.shared.errors import TaskenvError


@dataclass
class _Loop:
    now: float
    armed: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any, *args: Any) -> object:
        self.armed.append(delay)
        return object()


class _Transport:
    def is_closing(self) -> bool:
        return False


@dataclass
class _Connection:
    """The parts of the protocol its head timer touches."""

    loop: _Loop
    _head_due: float
    header_timeout_sec: float = 10.0
    transport: _Transport = field(default_factory=_Transport)
    cycle: None = None
    _head_timer: object = None
    answered: list[int] = field(default_factory=list)

    def _arm_head_timer(self, delay_sec: float | None = None) -> None:
        EnvelopeHttpToolsProtocol._arm_head_timer(self, delay_sec)  # type: ignore[arg-type]

    def _head_timed_out(self) -> None:
        EnvelopeHttpToolsProtocol._head_timed_out(self)  # type: ignore[arg-type]

    def _send_envelope(self, status: int, error: TaskenvError) -> None:
        self.answered.append(status)


def test_a_head_timer_fired_on_time_answers_408():
    connection = _Connection(_Loop(now=100.0), _head_due=100.0 + LOOP_LAG_SEC / 2)
    connection._head_timed_out()
    assert connection.answered == [408] and connection.loop.armed == []


def test_a_head_timer_fired_late_waits_as_long_again_for_a_read():
    connection = _Connection(_Loop(now=100.0), _head_due=86.0)
    connection._head_timed_out()
    assert connection.answered == [] and connection.loop.armed == [14.0]
    assert connection._head_due == 114.0 and connection._head_timer is not None
    # On time at its new due instant: the client really sent nothing.
    connection.loop.now = 114.0
    connection._head_timed_out()
    assert connection.answered == [408]

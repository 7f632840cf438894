"""uvicorn's HTTP protocol, with taskenv's envelope for what it answers itself, and read timeouts.

A header value with control characters (a token with a stray `\\x01`), a broken request line and
the like are refused by the HTTP parser before the application sees them; uvicorn answers those
with a plain-text 400. Here the same 400 carries the canonical envelope, like every other error.

uvicorn bounds only idle keep-alive connections. A connection that opens and sends nothing, or
sends its request head or body a byte at a time, would otherwise hold a socket (and for a body,
a request task) for ever. Here:

- the request head must arrive whole within `header_timeout_sec` of the connection's opening or
  of the first byte of a later request on it; else 408 (in the envelope) and the connection is
  closed. Idle time between requests stays uvicorn's keep-alive timeout. A timer that fires
  late because the process itself is behind (thousands of connections opened at once on a busy
  host) is not the client's fault: the head may be sitting unread in the socket, and the event
  loop runs due timers before it reads sockets. It is armed again for as long as it was late,
  so the verdict waits for a read.
- the body must arrive whole within `body_timeout_sec` of the request's start; else 408 (in the
  envelope) if nothing was answered yet, and the connection is closed. The application, waiting
  for the rest of the body, is told the client is gone.

A connection it ends after an answer (its own, or the application's whose body never came
whole) ends gracefully: the end of the stream after the answer, while what the client still
sends is read and dropped for up to `LINGER_SEC`. A socket closed with bytes unread sends a
reset instead, which can reach a client still sending (a head dripped a byte at a time) before
it has read the answer, and asyncio's reader then loses the answer.
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.settings import Settings

_REASONS = {400: b"Bad Request", 408: b"Request Timeout"}
# A head timer this late means the event loop, not the client, is behind.
LOOP_LAG_SEC = 0.5
# How long a connection answered by the protocol itself reads and drops what still comes.
LINGER_SEC = 2.0


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_sec: float = Settings.model_fields["header_timeout_sec"].default
    body_timeout_sec: float = Settings.model_fields["body_timeout_sec"].default

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_due = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # Between two requests (or before the first): the next bytes start a request head.
        self._awaiting_head = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            return  # answered and closing: dropped
        # After an idle keep-alive wait, the first byte of the next request starts its clock
        # (uvicorn has just cancelled its keep-alive timer).
        if self._awaiting_head and self._head_timer is None:
            self._arm_head_timer()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._awaiting_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # The body's clock starts with its request: a pipelined request waits, unread, for the
        # one before it to be answered, and must not be timed out meanwhile.
        if cycle.more_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout_sec, self._body_timed_out, cycle)
        super()._start_asgi_task(cycle, app)

    def _arm_head_timer(self, delay_sec: float | None = None) -> None:
        delay_sec = self.header_timeout_sec if delay_sec is None else delay_sec
        self._head_due = self.loop.time() + delay_sec
        self._head_timer = self.loop.call_later(delay_sec, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        late = self.loop.time() - self._head_due
        if late > LOOP_LAG_SEC:
            self._arm_head_timer(late)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous request is still being answered: the next head may wait for it.
            self._arm_head_timer()
            return
        detail = f"No complete request head within {self.header_timeout_sec:g} s"
        self._send_envelope(408, TaskenvError(ErrorType.REQUEST_TIMEOUT, detail))

    def _body_timed_out(self, cycle: RequestResponseCycle) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not cycle.more_body:
            return
        if cycle.response_started and not cycle.response_complete:
            # Answered without waiting for the body, and the answer is still being written.
            self._body_timer = self.loop.call_later(self.body_timeout_sec, self._body_timed_out, cycle)
            return
        answered = cycle.response_started
        # The application, if still reading the body, gets `http.disconnect`; whatever it sends
        # from now on is dropped.
        cycle.disconnected = True
        cycle.keep_alive = False
        cycle.message_event.set()
        if answered:
            self._close_after_answer()
            return
        detail = f"The request body did not arrive whole within {self.body_timeout_sec:g} s"
        self._send_envelope(408, TaskenvError(ErrorType.REQUEST_TIMEOUT, detail))

    def send_400_response(self, msg: str) -> None:
        detail = "Malformed HTTP request: the request line or a header is not valid HTTP"
        self._send_envelope(400, TaskenvError(ErrorType.INVALID_REQUEST, detail))

    def _send_envelope(self, status: int, error: TaskenvError) -> None:
        """Answer `error` in the envelope straight on the transport, and close the connection."""
        body = json.dumps(error.envelope()).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._close_after_answer()

    def _close_after_answer(self) -> None:
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SEC, self.transport.close)


def envelope_protocol(settings: Settings) -> type[EnvelopeHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with the operator's read timeouts."""
    return type(
        "ConfiguredEnvelopeHttpToolsProtocol",
        (EnvelopeHttpToolsProtocol,),
        {"header_timeout_sec": settings.header_timeout_sec, "body_timeout_sec": settings.body_timeout_sec},
    )

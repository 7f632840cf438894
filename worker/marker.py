"""Finding the exit report the sandbox's shell appends to the command's own output.

The report travels in the same pipe as the output, after it, so once it is read all the
command wrote before exiting has been read too: no waiting for the pipe to close, which a
background child (`sleep 100 &`) can hold open forever, and which even without one lags the
exit by about a millisecond here. The report starts with a byte and a random nonce the
command is not told of, so output cannot be mistaken for it.
"""

import secrets

START = b"\x1e"


def new_nonce() -> str:
    return secrets.token_hex(12)


class ExitReport:
    """Feed it the stream's stdout chunks; it returns the output part of each and, once the
    report has passed, the exit status."""

    def __init__(self, nonce: str) -> None:
        self._prefix = START + nonce.encode() + b":"
        self._held = b""  # a possible start of the report, split across chunks
        self.status: int | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b""
        found = data.find(self._prefix)
        if found < 0:
            # Hold back a tail that could be the report's first bytes.
            keep = next(
                (
                    n
                    for n in range(min(len(self._prefix) - 1, len(data)), 0, -1)
                    if self._prefix.startswith(data[-n:])
                ),
                0,
            )
            if keep:
                self._held = data[-keep:]
                return data[:-keep]
            return data
        end = data.find(b"\n", found)
        if end < 0:
            self._held = data[found:]
            return data[:found]
        digits = data[found + len(self._prefix) : end]
        self.status = int(digits) if digits.isdigit() else None
        if self.status is None:
            # Not a well-formed report after all: keep it as output, look further.
            return data[: found + 1] + self.feed(data[found + 1 :])
        return data[:found]

    def rest(self) -> bytes:
        """What was held back when the stream ended without a report."""
        held, self._held = self._held, b""
        return held

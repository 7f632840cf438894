"""Finding the exit report the sandbox's shell appends to the command's own output.

The report travels in the same pipe as the output, after it, so once it is read all the
command wrote before exiting has been read too: no waiting for the pipe to close, which a
background child (`sleep 100 &`) can hold open forever, and which even without one lags the
exit by about a millisecond here. The report is a byte, a random nonce, a colon, the status and
a newline: `\\036<nonce>:<status>\\n`.

The command can read its nonce and print a report of its own, so everything about the report
is hostile input. Only what the shell's `$?` can be is a report: 0-255 in plain decimal, at
most three digits; anything else is plain output. The scan is linear: each prefix found is
looked at once, and what is held back between chunks (a report's possible start) is shorter
than `max_length`, whatever is written after it.
"""

import secrets

START = b"\x1e"
NONCE_BYTES = 12
MAX_STATUS = 255
MAX_STATUS_DIGITS = len(str(MAX_STATUS))
END = b"\n"


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def parse_status(digits: bytes) -> int | None:
    """The status as the shell's `printf %s "$?"` writes it (no sign, no leading zero, at
    most 255), or None for anything else."""
    if not 0 < len(digits) <= MAX_STATUS_DIGITS or not digits.isdigit():
        return None  # bytes.isdigit is ASCII only
    if len(digits) > 1 and digits.startswith(b"0"):
        return None
    status = int(digits)
    return status if status <= MAX_STATUS else None


class ExitReport:
    """Feed it the stream's stdout chunks; it returns the output part of each and, once the
    report has passed, the exit status (bytes after the report are not output: they are a
    background child's, written after the command ended)."""

    def __init__(self, nonce: str) -> None:
        self._prefix = START + nonce.encode() + b":"
        # The longest report: its prefix, three digits and the newline.
        self.max_length = len(self._prefix) + MAX_STATUS_DIGITS + len(END)
        self._held = b""  # a possible start of the report, split across chunks
        self.status: int | None = None

    @property
    def held(self) -> int:
        """How many bytes are held back, waiting for the next chunk."""
        return len(self._held)

    def feed(self, chunk: bytes) -> bytes:
        if self.status is not None:
            return b""
        data = self._held + chunk if self._held else chunk
        self._held = b""
        searched_to = 0
        while (found := data.find(self._prefix, searched_to)) >= 0:
            after = found + len(self._prefix)
            tail = data[after : after + MAX_STATUS_DIGITS + len(END)]
            end = tail.find(END)
            if end >= 0 and (status := parse_status(tail[:end])) is not None:
                self.status = status
                return data[:found]
            if end < 0 and len(tail) <= MAX_STATUS_DIGITS and (not tail or parse_status(tail) is not None):
                # The data ends inside what may still become a report.
                self._held = data[found:]
                return data[:found]
            searched_to = found + 1  # not a report: plain output
        return self._hold_partial_prefix(data, max(searched_to, len(data) - len(self._prefix) + 1))

    def _hold_partial_prefix(self, data: bytes, lowest: int) -> bytes:
        """Hold back the data's last bytes from `lowest` on if they are the prefix's first ones.
        The prefix holds its start byte only once (the nonce is hex), so only the last start
        byte can begin it."""
        at = data.rfind(START, lowest)
        if at >= 0 and self._prefix.startswith(data[at:]):
            self._held = data[at:]
            return data[:at]
        return data

    def rest(self) -> bytes:
        """What was held back when the stream ended without a report."""
        held, self._held = self._held, b""
        return held

"""The command's output as it is read: kept up to a byte cap, the rest counted, never stored."""


class CappedOutput:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self._kept
        if room > 0:
            head = data[:room]
            self._chunks.append(head)
            self._kept += len(head)
        self.dropped += max(0, len(data) - max(room, 0))

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        """Decoded for JSON: invalid UTF-8 is replaced, and a cut is said, not silent."""
        text = b"".join(self._chunks).decode("utf-8", errors="replace")
        if self.truncated:
            text += (
                f"\n[taskenv: output truncated at {self.limit} bytes;"
                f" {self.dropped} more bytes were discarded]\n"
            )
        return text

"""A process's memory, sampled from /proc while the load runs: what "holds N waits under 1 GiB"
is judged by. VmRSS is sampled (the peak seen); VmHWM is the kernel's own high-water mark
over the process's whole life, so it also covers peaks between samples."""

import asyncio
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SEC = 0.1


@dataclass
class RssRecord:
    pid: int
    before_kib: int | None = None
    peak_kib: int | None = None
    hwm_kib: int | None = None
    samples: int = 0
    error: str | None = None


def parse_status(text: str) -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) in KiB from the text of /proc/PID/status."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found.get("VmRSS"), found.get("VmHWM")


def read(pid: int) -> tuple[int | None, int | None]:
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def record_sample(record: RssRecord, rss: int | None, hwm: int | None) -> None:
    if rss is not None:
        record.peak_kib = max(record.peak_kib or 0, rss)
        if record.before_kib is None:
            record.before_kib = rss
    if hwm is not None:
        record.hwm_kib = hwm
    record.samples += 1


async def sample_until(record: RssRecord, stop: asyncio.Event, interval_sec: float = SAMPLE_SEC) -> None:
    """Sample until `stop` is set, then once more; a vanished process ends sampling with an error."""
    while True:
        try:
            record_sample(record, *read(record.pid))
        except OSError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return
        if stop.is_set():
            return
        try:
            async with asyncio.timeout(interval_sec):
                await stop.wait()
        except TimeoutError:
            pass

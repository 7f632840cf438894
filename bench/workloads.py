"""The commands both sides run, and what a correct answer to each looks like.

A built-in workload with a wrong exit code or output counts as an error: a harness that only
timed answers would happily report a fast service that no longer runs anything.
"""

from dataclasses import dataclass
from enum import StrEnum


class WorkloadName(StrEnum):
    TRUE = "true"
    ECHO = "echo"
    K64 = "64k"
    SLEEP = "sleep"


@dataclass(frozen=True)
class Workload:
    command: str
    expect_exit: int | None = None
    expect_output: str | None = None


BUILT_IN: dict[WorkloadName, Workload] = {
    WorkloadName.TRUE: Workload("true", 0, ""),
    WorkloadName.ECHO: Workload("echo hello", 0, "hello\n"),
    WorkloadName.K64: Workload("head -c 65536 /dev/zero | tr '\\0' a", 0, "a" * 65536),
    WorkloadName.SLEEP: Workload("sleep 0.2", 0, ""),
}


def resolve(name: WorkloadName, command: str | None = None) -> Workload:
    """An arbitrary `command` wins over the named workload; its answers are not checked."""
    return Workload(command) if command else BUILT_IN[name]


def hold_workload(sleep_sec: float) -> Workload:
    return Workload(f"sleep {sleep_sec:g}", 0, "")


def check(workload: Workload, exit_code: int, output: str) -> str | None:
    """None when the answer is what the workload must produce, else why it is not."""
    if workload.expect_exit is not None and exit_code != workload.expect_exit:
        return f"exit {exit_code}"
    if workload.expect_output is not None and output != workload.expect_output:
        return "output"
    return None

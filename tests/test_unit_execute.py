"""A command's deadline is absolute: one that passed in the queue is never started."""

import time

import pytest

from shared.errors import ErrorType, TaskenvError
from worker.execute import run_command


class NoDocker:
    """Any use of the engine fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was used ({name}) for a command past its deadline")


async def test_a_command_past_its_deadline_is_not_started():
    job = {
        "env_id": "e",
        "command": "touch /tmp/ran",
        "timeout_sec": 1,
        "deadline_at": time.time() - 0.01,
        "user": "1000:1000",
        "workdir": "/tmp",
        "output_limit": 1024,
    }
    with pytest.raises(TaskenvError) as caught:
        await run_command(NoDocker(), job)  # type: ignore[arg-type]
    assert caught.value.type == ErrorType.TIMEOUT and caught.value.extra == {"output": ""}

"""Error reasons travel as data through the worker's msgpack answer, and hostile wire forms
come back as an error, never an exception."""

import pytest

from taskenv.shared import jobs
from taskenv.shared.errors import ErrorType, Reason, TaskenvError, because


@pytest.mark.parametrize("reason", list(Reason))
def test_reason_survives_the_trip_from_worker_to_api(reason: Reason) -> None:
    sent = because(reason, "it went away", extra={"output": "partial"})
    wire = jobs.deserialize(jobs.serialize(jobs.failed("j1", sent)))
    with pytest.raises(TaskenvError) as received:
        jobs.unwrap(wire)
    assert received.value.reason is reason
    assert received.value.detail == f"{reason.value}: it went away"  # the words clients read
    assert received.value.type == ErrorType.BAD_GATEWAY and received.value.extra == {"output": "partial"}


@pytest.mark.parametrize("reason", [None, "", "no_such_reason", 7, ["host_lost"], {"x": 1}])
def test_an_unknown_reason_is_none(reason: object) -> None:
    error = TaskenvError.from_wire({"type": "bad_gateway_error", "detail": "d", "reason": reason})
    assert error.reason is None and error.type == ErrorType.BAD_GATEWAY


def test_an_answer_from_an_older_worker_has_no_reason() -> None:
    error = TaskenvError.from_wire({"type": "bad_gateway_error", "detail": "host_lost: h"})
    assert error.reason is None and error.detail == "host_lost: h"

"""Pure logic: the error envelope (and which Redis errors are 503), output capping, task
resolution, secrets, job results."""

from pathlib import Path

import pytest
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from taskenv.api.app import EXCEPTION_HANDLERS, refuses_writes
from taskenv.shared import jobs
from taskenv.shared.errors import ErrorType, TaskenvError, for_status
from taskenv.shared.secrets import hash_secret, matches, new_api_key, new_execute_token
from taskenv.shared.settings import DEFAULT_TASKS_DIR
from taskenv.shared.tasks import load_registry
from taskenv.worker.output import CappedOutput


def test_envelope_is_flat_with_extra_fields():
    error = TaskenvError(ErrorType.TIMEOUT, "too slow", extra={"output": "partial"})
    assert error.status == 504
    assert error.envelope() == {
        "code": 504,
        "detail": "too slow",
        "type": "timeout_error",
        "errors": None,
        "output": "partial",
    }


def test_every_error_type_ends_in_error_and_has_a_status():
    for error_type in ErrorType:
        assert error_type.endswith("_error")
        assert 400 <= TaskenvError(error_type, "x").status < 600


def test_bare_statuses_map_to_types():
    assert for_status(404, "x").type == ErrorType.NOT_FOUND
    assert for_status(405, "x").type == ErrorType.METHOD_NOT_ALLOWED
    assert for_status(418, "x").type == ErrorType.APP


def test_error_survives_the_trip_through_a_worker():
    sent = TaskenvError(ErrorType.BAD_GATEWAY, "gone", extra={"k": 1})
    result = jobs.deserialize(jobs.serialize(jobs.failed("j", sent)))
    with pytest.raises(TaskenvError) as caught:
        jobs.unwrap(result)
    assert (caught.value.type, caught.value.detail, caught.value.extra) == (
        ErrorType.BAD_GATEWAY,
        "gone",
        {"k": 1},
    )
    assert jobs.unwrap(jobs.ok("j", {"exit_code": 0})) == {"exit_code": 0}
    assert TaskenvError.from_wire({"type": "nonsense", "detail": "d"}).type == ErrorType.APP


def test_capped_output_keeps_the_head_and_says_how_much_was_cut():
    output = CappedOutput(limit=10)
    for chunk in (b"hello ", b"world, ", b"and more"):
        output.add(chunk)
    text = output.text()
    assert text.startswith("hello worl\n[taskenv: output truncated at 10 bytes; 11 more bytes")
    assert output.dropped == 11


def test_capped_output_under_the_limit_is_untouched():
    output = CappedOutput(limit=100)
    output.add(b"out\n")
    output.add(b"err\n")
    assert output.text() == "out\nerr\n" and not output.truncated


def test_invalid_utf8_is_replaced_not_fatal():
    output = CappedOutput(limit=100)
    output.add(b"\xff\xfeok")
    assert output.text() == "\ufffd\ufffdok"


def test_registry_resolves_names_versions_and_says_what_is_known(tmp_path: Path):
    (tmp_path / "a.toml").write_text(
        '[[task]]\nname = "web"\nversion = "2"\n[[task]]\nname = "web"\nversion = "10"\n'
    )
    registry = load_registry(tmp_path)
    assert registry.resolve("web").version == "10"  # numeric, not lexical
    assert registry.resolve("web@2").version == "2"
    with pytest.raises(TaskenvError) as caught:
        registry.resolve("web@3")
    assert caught.value.type == ErrorType.NOT_FOUND and "web" in caught.value.detail
    assert load_registry(DEFAULT_TASKS_DIR).resolve("default").image == "taskenv/default:1"


def test_a_bad_task_file_is_refused_with_its_name(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[task]]\nname = "x"\nunknown_field = 1\n')
    with pytest.raises(ValueError, match=r"bad\.toml"):
        load_registry(bad)


def test_secrets_are_random_and_compared_by_hash():
    key, token = new_api_key(), new_execute_token()
    assert key != new_api_key() and len(key) > 40 and len(token) > 40
    assert matches(token, hash_secret(token))
    assert not matches(token + "x", hash_secret(token))


def _app_raising(exc: Exception) -> Starlette:
    async def endpoint(request: Request) -> Response:
        raise exc

    return Starlette(routes=[Route("/", endpoint)], exception_handlers=EXCEPTION_HANDLERS)


@pytest.mark.parametrize(
    "refusal",
    [
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"
        ),
        ResponseError(
            "OOM command not allowed when used memory > 'maxmemory'. script: 085b, on @user_script:1."
        ),
        ResponseError("READONLY You can't write against a read only replica. script: 085b"),
    ],
)
def test_redis_refusing_writes_is_a_handled_503_with_retry_after(refusal):
    assert refuses_writes(refusal)
    # Raised by the server, it would fail here (raise_server_exceptions): handled, the
    # connection stays open.
    with TestClient(_app_raising(refusal), raise_server_exceptions=True) as client:
        response = client.get("/")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert (
        response.json()["type"] == "service_unavailable_error"
        and "refuses writes" in response.json()["detail"]
    )


def test_other_redis_error_replies_are_500_not_503():
    wrong_type = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert not refuses_writes(wrong_type) and not refuses_writes(ResponseError("ERR OOM-ish text"))
    with TestClient(_app_raising(wrong_type), raise_server_exceptions=True) as client:
        response = client.get("/")
    assert response.status_code == 500 and response.json()["type"] == "app_error"
    assert "Retry-After" not in response.headers

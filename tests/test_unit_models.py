"""The wire models' validation, alone: command size in bytes, strict seconds, task refs."""

import pytest
from pydantic import ValidationError

from taskenv.shared.models import COMMAND_MAX_BYTES, ExecuteRequest, ProvisionRequest


def _error(model: type, **fields: object) -> dict:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(fields)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("unit", ["a", "é", "✓", "😀"])
def test_a_command_is_limited_in_utf8_bytes_not_characters(unit):
    fits = unit * (COMMAND_MAX_BYTES // len(unit.encode()))
    fits += "a" * (COMMAND_MAX_BYTES - len(fits.encode()))
    assert ExecuteRequest(command=fits).command == fits
    error = _error(ExecuteRequest, command=fits + "a")
    assert error["loc"] == ("command",)
    assert f"at most {COMMAND_MAX_BYTES} bytes" in error["msg"] and str(COMMAND_MAX_BYTES + 1) in error["msg"]


def test_the_limit_is_the_kernels_for_one_argument():
    # MAX_ARG_STRLEN is 32 pages of 4 KiB, the string's terminating NUL included.
    assert COMMAND_MAX_BYTES == 32 * 4096 - 1
    schema = ExecuteRequest.model_json_schema()["properties"]["command"]
    assert schema["maxLength"] == COMMAND_MAX_BYTES and "bytes" in schema["description"]


def test_nul_and_lone_surrogates_are_refused():
    assert "NUL" in _error(ExecuteRequest, command="a\0b")["msg"]
    assert _error(ExecuteRequest, command="\ud800")["loc"] == ("command",)


@pytest.mark.parametrize(
    "value",
    ["5_0", " 5 ", "5 ", "+5", "-5", "5.0", "0x5", "", "\u0665", "\uff15", "1" * 11, True, False, 30.5],
)
def test_seconds_are_integers_or_strings_of_ascii_digits(value):
    for model, extra in ((ExecuteRequest, {"command": "true"}), (ProvisionRequest, {"task_ref": "default"})):
        assert _error(model, **extra, timeout_sec=value)["loc"] == ("timeout_sec",), (model, value)


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), ("30", 30), ("030", 30), (30.0, 30), ("600", 600)])
def test_seconds_accepted(value, seconds):
    assert ExecuteRequest(command="true", timeout_sec=value).timeout_sec == seconds
    assert ProvisionRequest(task_ref="default", timeout_sec=value).timeout_sec == seconds


@pytest.mark.parametrize(
    "ref",
    [
        "default@",
        "@1",
        "/x",
        "a//b",
        "acme/",
        "a/b/c",
        "x@1@2",
        " default",
        "default ",
        "-x",
        "x@-1",
        "ä",
        "a b",
        "",
    ],
)
def test_task_refs_need_every_part_non_empty_and_well_formed(ref):
    assert _error(ProvisionRequest, task_ref=ref)["loc"] == ("task_ref",), ref


@pytest.mark.parametrize(
    "ref",
    [
        "default",
        "default@1",
        "acme/default",
        "acme/default@1.2.3",
        "sql-injection-lab-1@latest",
        "My_Task.v2",
    ],
)
def test_task_refs_as_the_sdk_and_task_files_write_them(ref):
    assert ProvisionRequest(task_ref=ref).task_ref == ref


def test_the_schema_states_every_bound_the_models_enforce():
    """A fuzzer generating from the document must not meet a bound it does not state (a `ge`
    inside a union once reached the schema as an unknown keyword instead of `minimum`)."""
    provision = ProvisionRequest.model_json_schema()["properties"]
    assert provision["timeout_sec"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert provision["task_ref"]["pattern"].startswith("^") and provision["task_ref"]["minLength"] == 1
    execute = ExecuteRequest.model_json_schema()["properties"]["timeout_sec"]
    assert (execute["minimum"], execute["maximum"], execute["type"]) == (1, 600, "integer")

"""Running commands and task scripts in an environment (worker/sandbox_run.py) against a fake
`run_command`: the typed results, provision's stdout read apart from its stderr, and its JSON
parsed bounded and total (hypothesis). `script_command` is run by the host's own shells."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.settings import Settings
from taskenv.worker import sandbox_run
from taskenv.worker.context import WorkerContext
from taskenv.worker.sandbox_run import (
    PROVISION_MAX_BYTES,
    PROVISION_MAX_KEYS,
    ProvisionOutputInvalid,
    RunOutcome,
    ScriptFailed,
    parse_provision_output,
    run_in_environment,
    run_provision,
    script_command,
)


class FakeSandbox:
    """Stands in for worker/execute.run_command: answers each job in turn from `answers`
    (a dict answer, or an exception raised), and keeps the jobs."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.jobs: list[dict[str, Any]] = []

    async def __call__(self, docker: Any, job: dict[str, Any], runners: Any = None) -> dict[str, Any]:
        self.jobs.append(dict(job))
        answer = self.answers.pop(0) if self.answers else {"exit_code": 0, "output": ""}
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def worker() -> WorkerContext:
    return WorkerContext(settings=Settings(), records=None, docker=None, deployment="test")  # type: ignore[arg-type]


def fake(monkeypatch: pytest.MonkeyPatch, *answers: dict[str, Any] | Exception) -> FakeSandbox:
    sandbox = FakeSandbox(*answers)
    monkeypatch.setattr(sandbox_run, "run_command", sandbox)
    return sandbox


async def run(worker: WorkerContext, **overrides: Any) -> sandbox_run.RunResult:
    options: dict[str, Any] = {
        "timeout_sec": 2.5, "env": {"A": "1"}, "user": "1000:1000", "workdir": "/w", "output_limit": 100,
    }  # fmt: skip
    return await run_in_environment(worker, "env-1", "echo hi", **{**options, **overrides})


async def test_a_command_that_ran_gives_its_exit_code_and_output(worker, monkeypatch):
    sandbox = fake(monkeypatch, {"exit_code": 3, "output": "hi\n"})
    result = await run(worker)
    assert (result.outcome, result.exit_code, result.output) == (RunOutcome.EXITED, 3, "hi\n")
    assert not result.succeeded
    job = sandbox.jobs[0]
    fields = ("env_id", "command", "timeout_sec", "user", "workdir", "output_limit", "env")
    assert {k: job[k] for k in fields} == {
        "env_id": "env-1", "command": "echo hi", "timeout_sec": 3, "user": "1000:1000", "workdir": "/w",
        "output_limit": 100, "env": {"A": "1"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raised", "outcome"),
    [
        (TaskenvError(ErrorType.TIMEOUT, "killed at 2 s", extra={"output": "part"}), RunOutcome.TIMED_OUT),
        (
            TaskenvError(ErrorType.BAD_GATEWAY, "container_gone: stopped", extra={"output": "p"}),
            RunOutcome.FAILED,
        ),
        (TaskenvError(ErrorType.BAD_GATEWAY, "runner_lost: x"), RunOutcome.FAILED),
        (ValueError("environment variable name 'a b' is not an identifier"), RunOutcome.FAILED),
    ],
)
async def test_the_commands_failures_are_results_not_exceptions(worker, monkeypatch, raised, outcome):
    fake(monkeypatch, raised)
    result = await run(worker)
    assert result.outcome is outcome and result.exit_code is None and not result.succeeded
    assert result.detail and str(raised) in result.detail
    assert result.output == str(getattr(raised, "extra", {}).get("output", ""))


async def test_provision_parses_stdout_read_back_and_removes_it(worker, monkeypatch):
    sandbox = fake(
        monkeypatch,
        {"exit_code": 0, "output": "log line on stderr\n"},
        {"exit_code": 0, "output": '  {"token": "abc", "n": 3, "ok": true, "gone": null}\n'},
    )
    found = await run_provision(
        worker, "env-1", "/home/user/task/provision.sh", timeout_sec=5, env={"S": "x"}, user="u"
    )
    assert found == {"token": "abc", "n": "3", "ok": "true"}
    script, read_back = sandbox.jobs
    stdout_file = read_back["command"].split()[3].rstrip(";")
    assert (
        stdout_file.startswith("/tmp/.taskenv-provision-") and f"exec > {stdout_file};" in script["command"]
    )
    assert f"rm -f {stdout_file}" in read_back["command"]
    assert script["env"] == {"S": "x"} and script["workdir"] == "/home/user/task"
    assert read_back["output_limit"] == PROVISION_MAX_BYTES + 1
    # Each provision its own file.
    sandbox.answers = [{"exit_code": 0, "output": ""}, {"exit_code": 0, "output": "{}"}]
    await run_provision(worker, "env-1", "/p.sh", timeout_sec=5, env={}, user="u")
    assert stdout_file not in sandbox.jobs[2]["command"]


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([{"exit_code": 2, "output": "boom\n"}], "exited with status 2"),
        ([TaskenvError(ErrorType.TIMEOUT, "t", extra={"output": "boom\n"})], "did not finish within 5 s"),
        (
            [TaskenvError(ErrorType.BAD_GATEWAY, "container_gone: x", extra={"output": "boom\n"})],
            "could not run",
        ),
        (
            [{"exit_code": 0, "output": "boom\n"}, {"exit_code": 0, "output": "no json"}],
            "not one JSON object",
        ),
        ([{"exit_code": 0, "output": "boom\n"}, {"exit_code": 0, "output": ""}], "empty"),
        (
            [{"exit_code": 0, "output": "boom\n"}, {"exit_code": 1, "output": "head: x: No such file"}],
            "read back",
        ),
    ],
)
async def test_a_failed_provision_says_why_with_its_stderr(worker, monkeypatch, answers, reason):
    sandbox = fake(monkeypatch, *answers)
    with pytest.raises(ScriptFailed) as failed:
        await run_provision(worker, "env-1", "/p.sh", timeout_sec=5, env={}, user="u")
    assert reason in failed.value.reason
    assert failed.value.output == "boom\n"
    # The stdout file is removed whichever way it ended.
    assert "rm -f /tmp/.taskenv-provision-" in sandbox.jobs[-1]["command"]


@pytest.mark.parametrize(
    ("stdout", "reason"),
    [
        ("", "empty"),
        ("  \n", "empty"),
        ("[1]", "array, not an object"),
        ('"s"', "string, not an object"),
        ("null", "null, not an object"),
        ('{"a": 1} {"b": 2}', "more than one JSON value"),
        ('{"a": 1}\n{"b": 2}\n', "more than one JSON value"),
        ('{"a": 1', "not valid JSON"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": 1, "a": 2}', "given twice"),
        ('{"a-b": 1}', "not a variable name"),
        ('{"": 1}', "not a variable name"),
        ('{"a": {"b": 1}}', "object, not a scalar"),
        ('{"a": [1]}', "array, not a scalar"),
        ('{"a": "x\\u0000y"}', "NUL"),
        ('{"a": "\\ud800"}', "not valid Unicode"),
        ('{"a": ' + "1" * 5000 + "}", "not valid JSON"),
        ("[" * 100000 + "]" * 100000, "over"),
        ('{"a": "' + "x" * PROVISION_MAX_BYTES + '"}', "over"),
        (json.dumps({f"k{i}": i for i in range(PROVISION_MAX_KEYS + 1)}), "keys, over"),
    ],
)
def test_provision_output_that_is_not_one_bounded_object_is_refused_with_the_reason(stdout, reason):
    with pytest.raises(ProvisionOutputInvalid, match=reason):
        parse_provision_output(stdout)


def test_deep_nesting_within_the_size_bound_is_refused():
    with pytest.raises(ProvisionOutputInvalid):
        parse_provision_output('{"a": ' + "[" * 30000 + "]" * 30000 + "}")


def test_the_bounds_themselves_are_accepted():
    most = {f"k{i}": "v" for i in range(PROVISION_MAX_KEYS)}
    assert parse_provision_output(json.dumps(most)) == most
    value = "x" * (PROVISION_MAX_BYTES - len('{"a": ""}'))
    assert parse_provision_output(json.dumps({"a": value})) == {"a": value}
    assert parse_provision_output('{"é_1": 1.5, "b": false}') == {"é_1": "1.5", "b": "false"}


@given(st.text(max_size=300))
def test_any_text_gives_variables_or_the_typed_error(stdout: str):
    try:
        found = parse_provision_output(stdout)
    except ProvisionOutputInvalid as exc:
        assert exc.reason
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())


scalars = st.one_of(
    st.text(max_size=20).filter(lambda s: "\0" not in s), st.integers(), st.booleans(), st.none()
)


@given(st.dictionaries(st.from_regex(r"\w{1,10}", fullmatch=True), scalars, max_size=20))
def test_any_object_of_scalars_round_trips(obj: dict[str, Any]):
    obj = {
        k: v for k, v in obj.items() if not (isinstance(v, str) and any(0xD800 <= ord(c) < 0xE000 for c in v))
    }
    found = parse_provision_output(json.dumps(obj))
    expected = {
        k: ("true" if v is True else "false" if v is False else str(v))
        for k, v in obj.items()
        if v is not None
    }
    assert found == expected


# ---- script_command, run by the host's shells (the sandbox's busybox: test_integration_sandbox_run) ----

SHELLS = [shell for shell in ("/bin/sh", "/bin/dash", "/bin/bash") if Path(shell).exists()]


def run_script(shell: str, path: Path) -> tuple[int, str]:
    done = subprocess.run(
        [shell, "-c", script_command(str(path))], capture_output=True, text=True, timeout=10, cwd=path.parent
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ("#!/bin/sh", "sh"),
        ("#!/no/such/interpreter", "sh"),
        ("#!/usr/bin/env no-such-interpreter", "sh"),
        ("#!/bin/bash\r", "bash"),  # CRLF line endings
        ("#!/usr/bin/env bash", "bash"),
        ("#!/bin/bash -e", "bash"),
        ("echo no shebang", "sh"),
        ("#!", "sh"),
    ],
)
def test_a_script_runs_through_its_shebang_when_there_else_sh(tmp_path, shell, first_line, expected):
    if expected == "bash" and not shutil.which("bash"):
        pytest.skip("no bash here")
    script = tmp_path / "my script's.sh"
    script.write_text(
        f'{first_line}\nif [ -n "$BASH_VERSION" ]; then echo bash; else echo sh; fi\necho "args=$#"\n'
    )
    script.chmod(0o444)  # staged scripts need not be executable
    status, output = run_script(shell, script)
    lines = output.splitlines()
    assert status == 0 and lines[-2:] == [expected, "args=0"], output


def test_a_missing_script_is_127_with_the_reason(tmp_path):
    status, output = run_script("/bin/sh", tmp_path / "missing.sh")
    assert status == 127 and "cannot read" in output


def test_the_scripts_exit_status_is_the_commands(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\nset -eu\nfalse\necho unreachable\n")
    assert run_script("/bin/sh", script) == (1, "")

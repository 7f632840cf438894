"""POST …/verify through the real API app in process (tests/inprocess.py): authentication, the
states' 404/409, the refusals (no verification, judge methods), the answer of each method and a
check that runs out of time, against fakeredis and a fake sandbox. The same against real
sandboxes and the SDK: tests/test_integration_verify.py."""

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from taskenv.shared import jobs, keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.tasks import TaskSource, TaskSpec
from taskenv.worker import job_functions
from taskenv.worker import verify as verify_module
from tests.helpers import Env
from tests.inprocess import InProcess, in_process, provisioned

FLAG = {"method": "flag", "path": "/tmp/flag", "value": "FLAG{x}", "timeout": 30, "where": "environment"}
SCRIPT = {"method": "script", "script": "verify.sh", "timeout": 1, "where": "environment"}


@pytest.fixture
async def stack(monkeypatch):
    async def run_command(_: Any, payload: jobs.ExecJob, *__: Any) -> dict[str, Any]:
        exit_code, output = await running.worker.command(payload["command"])
        return {"exit_code": exit_code, "output": output}

    # The fake worker finds job functions on worker/job_functions.py; verify is its own module.
    monkeypatch.setattr(job_functions, "verify", verify_module.verify, raising=False)
    monkeypatch.setattr(verify_module, "run_command", run_command)
    async with in_process(monkeypatch) as running:
        yield running


@pytest.fixture
async def key(stack: InProcess) -> str:
    return await stack.key()


async def with_verification(stack: InProcess, key: str, verification: dict[str, Any] | None) -> Env:
    """A ready environment whose task is a pushed one with `verification`."""
    env = await provisioned(stack, key)
    record = keys.environment(env.id)
    spec = TaskSpec.model_validate_json(await stack.records.hget(record, "spec"))
    source = TaskSource(
        org="acme", name="lab", version="1.0.0", oci_digest="sha256:0", verification=verification
    )
    await stack.records.hset(record, "spec", spec.model_copy(update={"source": source}).model_dump_json())
    return env


def sandbox(files: dict[str, str], scripts: dict[str, tuple[int, str]] | None = None):
    """A fake sandbox holding `files` (read by the flag check) and answering `scripts`' commands."""

    async def command(text: str) -> tuple[int, str]:
        if text.startswith("head -c "):
            path = text.rsplit(" -- ", 1)[1].strip("'")
            if path in files:
                return 0, files[path]
            return 1, f"head: {path}: No such file or directory\n"
        return (scripts or {}).get(text, (127, f"sh: {text}: not found\n"))

    return command


async def verify(stack: InProcess, env: Env, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return await stack.http.post(f"{env.url}/verify", headers=headers)


def envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()
    assert body["code"] == status and body["type"] == error_type, body
    return body


async def test_a_flag_fails_until_written_then_passes(stack, key):
    env = await with_verification(stack, key, FLAG)
    files: dict[str, str] = {}
    stack.worker.command = sandbox(files)
    missing = await verify(stack, env, key)
    assert missing.status_code == 200, missing.text
    assert missing.json()["passed"] is False and missing.json()["method"] == "flag"
    assert missing.json()["detail"].startswith("flag_unreadable: reading /tmp/flag failed (exit 1)")
    files["/tmp/flag"] = "FLAG{wrong}\n"
    wrong = (await verify(stack, env, key)).json()
    assert (wrong["passed"], wrong["detail"].split(":")[0]) == (False, "mismatch")
    assert "FLAG{x}" not in json.dumps(wrong)  # the expected value is never told
    files["/tmp/flag"] = "FLAG{x}\n"
    right = (await verify(stack, env, key)).json()
    assert right == {
        "passed": True,
        "method": "flag",
        "detail": "matched: the flag at /tmp/flag matches its value",
        "output": "FLAG{x}\n",
    }
    assert stack.worker.ran.count("verify") == 3


async def test_a_script_passes_on_exit_0_only(stack, key):
    env = await with_verification(stack, key, SCRIPT)
    answers = {"sh /home/user/task/verify.sh": (2, "checked: wrong answer\n")}
    stack.worker.command = sandbox({}, answers)
    failed = (await verify(stack, env, key)).json()
    assert failed == {
        "passed": False,
        "method": "script",
        "detail": "script_failed: verify.sh exited 2",
        "output": "checked: wrong answer\n",
    }
    answers["sh /home/user/task/verify.sh"] = (0, "ok\n")
    assert (await verify(stack, env, key)).json()["passed"] is True


async def test_a_script_out_of_time_fails_the_check_not_the_request(stack, key):
    env = await with_verification(stack, key, SCRIPT)

    async def hangs(_: str) -> tuple[int, str]:
        raise TaskenvError(ErrorType.TIMEOUT, "Command did not finish", extra={"output": "partial\n"})

    stack.worker.command = hangs
    answer = await verify(stack, env, key)
    assert answer.status_code == 200, answer.text
    assert answer.json()["detail"].startswith("script_timeout: verify.sh did not finish within 1 s")
    assert answer.json()["output"] == "partial\n" and answer.json()["passed"] is False


async def test_no_answer_from_the_host_is_504_at_the_deadline(stack, key):
    env = await with_verification(stack, key, SCRIPT)
    stack.worker.paused = True
    started = asyncio.get_running_loop().time()
    envelope(await verify(stack, env, key), 504, "timeout_error")
    # The script's timeout (1 s) and the result grace, not longer.
    assert 1 <= asyncio.get_running_loop().time() - started < 1 + stack.settings.result_grace_sec + 1


async def test_only_the_workspace_s_api_key_verifies(stack, key):
    env = await with_verification(stack, key, FLAG)
    envelope(await verify(stack, env, None), 401, "authentication_error")
    envelope(await verify(stack, env, "tk_" + "0" * 43), 401, "authentication_error")
    # The agent's execute token grades nothing.
    as_agent = await stack.http.post(f"{env.url}/verify", headers=env.headers())
    envelope(as_agent, 401, "authentication_error")
    envelope(await verify(stack, env, await stack.key("other")), 403, "permission_error")
    elsewhere = Env(env.id, env.token, f"{stack.envs_url('acme', 'second')}/{env.id}")
    envelope(await verify(stack, elsewhere, await stack.key("acme", "second")), 404, "not_found_error")
    unknown = Env(str(uuid.uuid4()), "", f"{stack.envs_url()}/{uuid.uuid4()}")
    envelope(await verify(stack, unknown, key), 404, "not_found_error")
    assert stack.worker.ran.count("verify") == 0


async def test_what_cannot_be_verified_is_refused_before_any_job(stack, key):
    plain = await provisioned(stack, key)  # a task of the operator's files: no verification
    body = envelope(await verify(stack, plain, key), 409, "conflict_error")
    assert "declares no verification" in body["detail"]
    judged = await with_verification(
        stack, key, {"method": "outcome_judge", "judge": {"model": "openai/gpt-4o", "rubric": "rce"}}
    )
    body = envelope(await verify(stack, judged, key), 422, "validation_error")
    assert body["detail"].startswith("unsupported: verification method 'outcome_judge'")
    assert (await stack.http.delete(plain.url, headers={"X-API-Key": key})).status_code == 204
    body = envelope(await verify(stack, plain, key), 409, "conflict_error")
    assert "in state 'torn_down'" in body["detail"]
    assert stack.worker.ran.count("verify") == 0

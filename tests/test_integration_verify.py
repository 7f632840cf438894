"""POST …/verify against a live stack (real Redis, worker, Docker sandbox): a pushed task with a
flag fails until the agent writes it, then passes; and the SDK's own `verify_env_state`, given the
task's verification in the shape taskenv gives it (`task_verification`), agrees at each step."""

import hashlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from taskenv.shared.task_archive import TaskFiles, pack
from taskenv.shared.verification import task_verification
from tests.harness import SDK, create_key
from tests.helpers import Env, async_http
from tests.test_compat_sdk import SCRIPTS
from tests.test_integration_tasks import Registry

pytestmark = pytest.mark.integration

FLAG = "FLAG{verified-" + uuid.uuid4().hex[:8] + "}"
# Bare hex (sha256), upper case: the SDK compares `sha256:<lower hex>` as text.
BY_HASH = {"method": "flag", "path": "/tmp/flag", "hash": hashlib.sha256(FLAG.encode()).hexdigest().upper()}


def task(name: str, verification: dict) -> tuple[bytes, dict]:
    """A task with no compose services: it runs in the default sandbox."""
    raw = {"name": name, "version": "1.0.0", "instruction": "Write the flag.", "verification": verification}
    return pack(TaskFiles(files={"task.yaml": yaml.safe_dump(raw).encode()})), raw


@pytest.fixture
async def pushed(service) -> AsyncIterator[tuple[str, str]]:
    """(org, task name) of a pushed flag task, the org's API key in `service.env`'s store."""
    org, name = f"verify-{uuid.uuid4().hex[:8]}", "flag-lab"
    async with async_http(timeout=httpx.Timeout(60, connect=5)) as client:
        layer, raw = task(name, BY_HASH)
        answer = await Registry(client, service.base_url, org, create_key(service.env, org)).push(
            name, layer, raw
        )
        assert answer.status_code == 201, answer.text
        yield org, name


async def ready(client: httpx.AsyncClient, url: str, task_ref: str) -> Env:
    created = await client.post(url, json={"task_ref": task_ref})
    assert created.status_code == 201, created.text
    env = Env(created.json()["id"], created.json()["execute_token"], f"{url}/{created.json()['id']}")
    for _ in range(1200):
        status = (await client.get(f"{env.url}/status")).json()
        if status["state"] in ("ready", "failed"):
            break
    assert status["state"] == "ready", status
    return env


async def test_a_flag_fails_until_written_then_passes(service, pushed):
    org, name = pushed
    url = f"{service.base_url}/api/v1/org/{org}/ws/main/environments"
    headers = {"X-API-Key": create_key(service.env, org)}
    async with async_http(headers=headers, timeout=httpx.Timeout(60, connect=5)) as client:
        env = await ready(client, url, name)
        try:
            before = await client.post(f"{env.url}/verify")
            assert before.status_code == 200, before.text
            assert before.json()["passed"] is False
            assert before.json()["detail"].startswith("flag_unreadable: reading /tmp/flag failed")
            wrong = await client.post(
                f"{env.url}/execute", json={"command": "echo FLAG{no} > /tmp/flag"}, headers=env.headers()
            )
            assert wrong.json()["exit_code"] == 0, wrong.text
            assert (await client.post(f"{env.url}/verify")).json()["detail"].startswith("mismatch: ")
            written = await client.post(
                f"{env.url}/execute", json={"command": f"echo '{FLAG}' > /tmp/flag"}, headers=env.headers()
            )
            assert written.json()["exit_code"] == 0, written.text
            after = await client.post(f"{env.url}/verify")
            assert after.json() == {
                "passed": True,
                "method": "flag",
                "detail": "matched: the flag at /tmp/flag matches its sha256 digest",
                "output": FLAG + "\n",
            }
        finally:
            await client.delete(env.url)
        gone = await client.post(f"{env.url}/verify")
        assert gone.status_code == 409 and "torn_down" in gone.json()["detail"], gone.text


def test_the_sdk_s_verify_env_state_agrees(service, pushed, tmp_path):
    if not (SDK / "bin" / "python").exists():
        pytest.fail("the dreadnode SDK is missing: run scripts/sdk-venv.sh (scripts/test.sh does)")
    org, name = pushed
    shape = task_verification(BY_HASH)
    assert shape is not None and shape["hash"] == f"sha256:{BY_HASH['hash'].lower()}"
    home = tmp_path / "home"
    home.mkdir()
    blackhole = "http://127.0.0.1:9"  # nothing the SDK does leaves loopback
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HTTP_PROXY": blackhole,
        "HTTPS_PROXY": blackhole,
        "ALL_PROXY": blackhole,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    args = [service.base_url, create_key(service.env, org), org, "main", name, json.dumps(shape), FLAG]
    done = subprocess.run(
        [str(SDK / "bin" / "python"), str(SCRIPTS / "verify_rollout.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["written"][0] == 0, seen
    for step, passed in (("before", False), ("after", True)):
        graded = seen[step]
        assert graded["status"] == 200, graded
        assert graded["sdk"] is passed and graded["ours"]["passed"] is passed, graded
    assert seen["after"]["sdk_metrics"]["match_kind"] == "hash"

"""Commands and task scripts run in a real busybox sandbox (worker/sandbox_run.py) through both
backends, the runner and `docker exec`: the variables reach the command over the container's,
a `#!/bin/bash` + `set -euo pipefail` script runs under busybox, provision's stdout is parsed
apart from its stderr and its file removed, failures and timeouts come back typed."""

import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import aiodocker
import pytest

from taskenv.shared.settings import Settings
from taskenv.shared.store import container_name
from taskenv.shared.task_archive import TaskFiles
from taskenv.worker import runner_volume, task_volume
from taskenv.worker.context import WorkerContext
from taskenv.worker.runner_sessions import RunnerPool
from taskenv.worker.sandbox_run import (
    TASK_DIR,
    RunOutcome,
    ScriptFailed,
    run_in_environment,
    run_provision,
    run_script,
)

IMAGE = "taskenv/default:1"
USER = "1000:1000"
PROVISION = b"""#!/bin/bash
set -euo pipefail
echo "starting with $SECRET_X" >&2
printf '{"token": "%s", "url": "%s", "n": 3}\\n' "$SECRET_X" "$WEB_URL"
echo "done" >&2
"""
FILES = TaskFiles(
    files={
        "provision.sh": PROVISION,
        "fails.sh": b"#!/bin/bash\nset -euo pipefail\necho 'oh no' >&2\nfalse\necho unreachable\n",
        "chatty.sh": b"#!/bin/sh\necho 'not json'\n",
        "slow.sh": b"#!/bin/sh\necho started\nsleep 30\n",
    },
    modes={"provision.sh": 0o755},
)

pytestmark = pytest.mark.skipif(not runner_volume.DEFAULT_BINARY.is_file(), reason="needs runner/build")


@pytest.fixture
async def staged(docker: aiodocker.Docker) -> AsyncIterator[str]:
    digest = f"sha256:{secrets.token_hex(32)}"
    volume = await task_volume.ensure_staged(
        docker, digest, FILES, deployment="test-sandbox-run", image=IMAGE
    )
    yield volume
    for name in (f"{volume}-staged", volume):
        with suppress(aiodocker.DockerError):
            await aiodocker.volumes.DockerVolume(docker, name).delete()  # type: ignore[no-untyped-call]


@pytest.fixture(params=["runner", "docker-exec"])
async def sandbox(
    request: Any, docker: aiodocker.Docker, staged: str
) -> AsyncIterator[tuple[WorkerContext, str]]:
    """A hardened sandbox (as worker/containers.py makes them) with the runner and the task."""
    runner = await runner_volume.install(docker, runner_volume.DEFAULT_BINARY.read_bytes(), IMAGE)
    env_id = f"test-sandbox-run-{secrets.token_hex(4)}"
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Cmd": ["sleep", "3600"],
        "Env": ["WEB_URL=from-the-container", "FROM_CONTAINER=kept"],
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": "size=16m"},
            "Init": True,
            "Mounts": [runner_volume.sandbox_mount(runner), task_volume.sandbox_mount(staged)],
            "CapAdd": list(runner_volume.RUNNER_CAPABILITIES),
        },
    }
    container = await docker.containers.run(config, name=container_name(env_id))
    pool = RunnerPool(docker, runner) if request.param == "runner" else None
    worker = WorkerContext(settings=Settings(), records=None, docker=docker, deployment="test", runners=pool)  # type: ignore[arg-type]
    yield worker, env_id
    if pool is not None:
        assert (await pool.session(env_id)) is not None  # the runner served these commands
        await pool.close()
    await container.delete(force=True)


async def test_variables_reach_the_command_over_the_containers(sandbox):
    worker, env_id = sandbox
    result = await run_in_environment(
        worker, env_id, 'echo "$WEB_URL $FROM_CONTAINER $SECRET_X $(id -u)"', timeout_sec=10,
        env={"WEB_URL": "http://localhost:8080", "SECRET_X": "s3cr3t"}, user=USER, workdir="/",
        output_limit=1024,
    )  # fmt: skip
    assert result.succeeded, result
    assert result.output == "http://localhost:8080 kept s3cr3t 1000\n"


async def test_provision_under_busybox_gives_its_json_apart_from_its_stderr(sandbox):
    worker, env_id = sandbox
    env = {"SECRET_X": "s3cr3t", "WEB_URL": "http://localhost:8080"}
    found = await run_provision(
        worker, env_id, f"{TASK_DIR}/provision.sh", timeout_sec=10, env=env, user=USER
    )
    assert found == {"token": "s3cr3t", "url": "http://localhost:8080", "n": "3"}
    left = await run_in_environment(
        worker, env_id, "ls -A /tmp", timeout_sec=5, env={}, user=USER, workdir="/", output_limit=1024
    )
    assert "taskenv-provision" not in left.output


@pytest.mark.parametrize(
    ("script", "reason", "output"),
    [
        ("fails.sh", "exited with status 1", "oh no\n"),
        ("chatty.sh", "not one JSON object", ""),
        ("missing.sh", "exited with status 127", "cannot read"),
    ],
)
async def test_a_failing_provision_gives_the_reason_and_its_stderr(sandbox, script, reason, output):
    worker, env_id = sandbox
    with pytest.raises(ScriptFailed) as failed:
        await run_provision(worker, env_id, f"{TASK_DIR}/{script}", timeout_sec=10, env={}, user=USER)
    assert reason in failed.value.reason
    assert output in failed.value.output and "unreachable" not in failed.value.output


async def test_a_script_past_its_timeout_is_killed_and_says_so(sandbox):
    worker, env_id = sandbox
    result = await run_script(worker, env_id, f"{TASK_DIR}/slow.sh", timeout_sec=0.5, env={}, user=USER)
    assert result.outcome is RunOutcome.TIMED_OUT and result.output == "started\n"
    with pytest.raises(ScriptFailed, match=r"did not finish within 0\.5 s"):
        await run_provision(worker, env_id, f"{TASK_DIR}/slow.sh", timeout_sec=0.5, env={}, user=USER)


async def test_a_gone_sandbox_is_a_failed_result(sandbox, docker):
    worker, env_id = sandbox
    result = await run_in_environment(
        worker, f"{env_id}-none", "true", timeout_sec=5, env={}, user=USER, workdir="/", output_limit=10
    )
    assert result.outcome is RunOutcome.FAILED and result.detail

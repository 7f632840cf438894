"""The operator's `taskenv` commands against a real service (Redis, worker, API, Docker): what
they print, what they change, and their exit codes (0 done, 1 could not, 2 usage)."""

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from tests.conftest import Service, provision, wait_for_state
from tests.helpers import async_http

pytestmark = pytest.mark.integration

ENV_FIELDS = {
    "id", "state", "expires_at", "error", "task_ref", "created_at", "instruction", "service_urls",
    "task_verification",
}  # fmt: skip


def taskenv(service: Service | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = service.env if service is not None else dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "taskenv", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_failure(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("taskenv: ") and all(w in done.stderr for w in words), done.stderr


def test_version_comes_from_the_package_metadata():
    done = taskenv(None, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"taskenv {version('taskenv')}"


async def test_a_created_key_works_is_listed_without_its_secret_and_revoked_at_once(service):
    created = taskenv(service, "keys", "create", "--org", "cliorg", "--workspace", "main", "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    url = service.envs_url("cliorg")
    async with async_http(headers={"X-API-Key": made["key"]}) as http:
        assert (await http.get(url)).status_code == 200
        listed = taskenv(service, "keys", "ls", "--org", "cliorg", "--json")
        assert listed.returncode == 0 and made["key"] not in listed.stdout
        rows = json.loads(listed.stdout)
        assert [(r["id"], r["org"], r["workspace"]) for r in rows] == [(made["id"], "cliorg", "main")]
        assert rows[0]["created_at"].endswith("Z")
        table = taskenv(service, "keys", "ls")
        assert made["id"] in table.stdout and made["key"] not in table.stdout
        revoked = taskenv(service, "keys", "revoke", made["id"])
        assert revoked.returncode == 0, revoked.stderr
        # The same API process, the very next request: no cache keeps the key alive.
        assert (await http.get(url)).status_code == 401
    assert json.loads(taskenv(service, "keys", "ls", "--org", "cliorg", "--json").stdout) == []
    one_line_failure(taskenv(service, "keys", "revoke", made["id"]), made["id"])


async def test_env_ls_and_get_give_the_apis_shape_and_values(client, service, env):
    api_view = (await client.get(env.url)).json()
    listed = taskenv(service, "env", "ls", "--json", "--org", "acme")
    assert listed.returncode == 0, listed.stderr
    mine = next(r for r in json.loads(listed.stdout) if r["id"] == env.id)
    assert {k: mine[k] for k in ENV_FIELDS} == api_view
    assert (mine["org"], mine["workspace"], mine["host"]) == ("acme", "main", service.queue)
    got = json.loads(taskenv(service, "env", "get", env.id, "--json").stdout)
    assert {k: got[k] for k in ENV_FIELDS} == api_view and got["container"] == f"taskenv-{env.id}"
    assert env.id in taskenv(service, "env", "ls", "--state", "ready").stdout
    assert taskenv(service, "env", "ls", "--state", "nonsense").returncode == 2


async def test_env_exec_runs_a_command_and_exits_with_its_code(service, env):
    done = taskenv(service, "env", "exec", env.id, "--", "echo hello; id -u; exit 3")
    assert (done.returncode, done.stdout) == (3, "hello\n1000\n"), done.stderr
    answered = taskenv(service, "env", "exec", "--json", env.id, "--", "echo", "-n", "x")
    assert json.loads(answered.stdout) == {"exit_code": 0, "output": "x"}


async def test_env_logs_of_a_ready_environment_and_a_clear_line_when_there_is_no_container(
    client, service, env
):
    logs = taskenv(service, "env", "logs", env.id)
    assert logs.returncode == 0 and "ready" in logs.stdout, logs.stderr
    created = (await client.post(service.envs_url(), json={"task_ref": "broken"})).json()
    status = await wait_for_state(client, f"{service.envs_url()}/{created['id']}", "failed")
    assert status["state"] == "failed"
    # The API answers 409 for a failed environment; the operator is told what there is.
    one_line_failure(taskenv(service, "env", "logs", created["id"]), created["id"], "failed")


async def test_env_rm_tears_down_and_removes_the_container(client, service):
    made = await provision(client, service)
    done = taskenv(service, "env", "rm", made.id)
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    assert (await client.get(made.url)).json()["state"] == "torn_down"
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=taskenv-{made.id}"], capture_output=True, text=True
    )
    assert listed.stdout.strip() == ""
    one_line_failure(taskenv(service, "env", "exec", made.id, "true"), made.id, "torn_down")
    one_line_failure(taskenv(service, "env", "get", "no-such-env"), "no-such-env")


def test_drain_of_an_unknown_host_is_refused(service):
    one_line_failure(taskenv(service, "worker", "--drain", "--host", "nosuch"), "nosuch")
    assert taskenv(service, "worker", "--drain", "--undrain").returncode == 2


def test_worker_check_sees_this_hosts_heartbeat(service):
    done = taskenv(service, "worker", "--check")
    assert done.returncode == 0 and service.queue in done.stdout, done.stderr
    one_line_failure(taskenv(service, "worker", "--check", TASKENV_HOST_ID="elsewhere"), "elsewhere")


@pytest.mark.parametrize(
    "command",
    [["hosts"], ["env", "ls"], ["keys", "ls"], ["worker", "--drain"], ["env", "exec", "x", "true"]],
)
def test_unreachable_redis_is_one_line_and_exit_1(command):
    done = taskenv(None, *command, TASKENV_REDIS_URL="redis://:s3cret@127.0.0.1:1/0")
    one_line_failure(done, "cannot reach Redis at redis://127.0.0.1:1/0")
    assert "s3cret" not in done.stderr


def test_a_home_without_an_instance_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TASKENV_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "taskenv", "--home", str(tmp_path), "keys", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_failure(done, "no taskenv instance", str(tmp_path))

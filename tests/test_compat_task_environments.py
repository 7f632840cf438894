"""A pushed Dreadnode task run for real, driven by the unmodified `dn` CLI and SDK: the task made
by `dn task init` (a web service with a healthcheck and a flag), built lazily, its service
beside the sandbox on one loopback, its provision script's variables and the request's inputs
in the instruction, an org secret in the sandbox and nowhere else, verification before and
after the solution (taskenv's route and the SDK's `verify_env_state` agreeing), and nothing left
after `dn env rm`. Then the ways a task environment fails, each with its reason."""

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.harness import SDK, containers_of
from tests.helpers import eventually, sync_http
from tests.test_compat_sdk import TOKEN, _dn, _json
from tests.test_compat_tasks import init_task, ok, scope_env

pytestmark = [pytest.mark.integration, pytest.mark.compat]

FLAG = "FLAG{served_on_loopback}"
PROVISION = """#!/bin/sh
set -eu
echo "provisioning for $CHALLENGE_URL" >&2
echo '{"token": "tok-42", "level": 3}'
"""
SECRET_VALUE = "s3cr3t-value-that-must-not-leak"


def volumes_of(env_id: str) -> list[str]:
    command = ["docker", "volume", "ls", "-q", f"--filter=label=taskenv.env={env_id}"]
    found = subprocess.run(command, capture_output=True, text=True)
    return found.stdout.split()


def web_lab(dn_bin: Path, env: dict[str, str], parent: Path, name: str) -> Path:
    """`dn task init`'s task, built from a local image, with a provision script, a page and a
    flag the solution writes."""
    task = init_task(dn_bin, env, parent, name)
    (task / "challenge" / "index.html").write_text("hello from the challenge\n")
    (task / "provision.sh").write_text(PROVISION)
    manifest = (task / "task.yaml").read_text()
    manifest = manifest.replace('value: "FLAG{replace_me}"', f'value: "{FLAG}"')
    extra = "Your token is {{token}} at level {{level}}; for {{who}}.\n  "
    manifest = manifest.replace("Find the flag and write it to", extra + "Find the flag and write it to")
    manifest += "\nprovision:\n  script: provision.sh\n  timeout: 30\n"
    (task / "task.yaml").write_text(manifest)
    return task


def sdk_run(code: str, **variables: str) -> dict:
    """Python run in the SDK's own venv; its last line of output is JSON."""
    done = subprocess.run(
        [str(SDK / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", **variables},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


SDK_CHECK = """
import asyncio, json, os, sys
from dreadnode.app.api.client import ApiClient
from dreadnode.core.environment import TaskEnvironment
from dreadnode.training.env_rollouts import verify_env_state

async def main():
    api = ApiClient(os.environ["SERVER"], api_key=os.environ["KEY"])
    env = TaskEnvironment(
        api_client=api, org=os.environ["ORG"], workspace="main", task_ref=os.environ["TASK"],
        inputs={"who": "the sdk"},
    )
    await env.setup()
    try:
        before = await verify_env_state(env, None, env.task_verification)
        await env.execute("echo '" + os.environ["FLAG"] + "' > /tmp/result.txt")
        after = await verify_env_state(env, None, env.task_verification)
        seen = {"instruction": env.render_instruction(), "service_urls": env.service_urls}
        seen |= {"verification": env.task_verification, "before": before.passed, "after": after.passed}
        print(json.dumps(seen))
    finally:
        await env.teardown()

asyncio.run(main())
"""


def test_a_dreadnode_task_environment_end_to_end(service, dn_bin, dn_env, tmp_path):
    org = f"lab-{uuid.uuid4().hex[:8]}"
    env = scope_env(service, dn_env, org)
    key = env["DREADNODE_API_KEY"]
    ok(_dn(dn_bin, env, "task", "push", str(web_lab(dn_bin, env, tmp_path, "web-lab"))))
    api = f"{service.base_url}/api/v1/org/{org}"
    with sync_http(headers={"X-API-Key": key}, timeout=60) as http:
        created = http.post(f"{api}/secrets", json={"name": "LAB_PASSWORD", "value": SECRET_VALUE})
        assert created.status_code == 201, created.text
        secret_id = created.json()["id"]

        made = _json(ok(_dn(
            dn_bin, env, "env", "create", f"{org}/web-lab", "--input", "who=the agent", "--secret", secret_id,
            "--json",
        )))  # fmt: skip
        env_id, token = made["id"], made["execute_token"]
        assert made["state"] == "building", made  # no host holds its image yet
        ready = _json(ok(_dn(dn_bin, env, "env", "wait", env_id, "--json")))
        assert ready["state"] == "ready", ready
        url = "http://localhost:8080"
        assert ready["service_urls"] == {
            "challenge": {"url": url, "host": "localhost", "port": 8080, "urls": {"8080": url}}
        }
        # Every variable known is rendered: the service's, provision's, the inputs.
        assert f"available at: {url}" in ready["instruction"]
        assert "token is tok-42 at level 3; for the agent." in ready["instruction"]

        run = ("env", "exec", env_id, "--token", token, "--")
        fetched = _dn(dn_bin, env, *run, "wget -qO- $CHALLENGE_URL")
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        assert "hello from the challenge" in fetched.stdout, fetched.stdout
        check = f'echo "$TOKEN $LEVEL $WHO"; test "$LAB_PASSWORD" = {SECRET_VALUE} && echo secret-ok'
        shown = _dn(dn_bin, env, *run, check)
        assert "tok-42 3 the agent" in shown.stdout, shown.stdout + shown.stderr
        assert "secret-ok" in shown.stdout, shown.stdout + shown.stderr
        listing = _dn(dn_bin, env, *run, "ls /home/user/task")
        assert "task.yaml" in listing.stdout and "provision.sh" in listing.stdout, listing.stdout

        verify = f"{api}/ws/main/environments/{env_id}/verify"
        before = http.post(verify)
        assert before.status_code == 200 and before.json()["passed"] is False, before.text
        solved = _dn(dn_bin, env, *run, f"echo '{FLAG}' > /tmp/result.txt")
        assert solved.returncode == 0, solved.stdout + solved.stderr
        after = http.post(verify)
        assert after.status_code == 200 and after.json() == {**after.json(), "passed": True, "method": "flag"}

        answers = [http.get(f"{api}/ws/main/environments/{env_id}").text, http.get(f"{api}/secrets").text]
        ok(_dn(dn_bin, env, "env", "rm", env_id, "--yes"))
        assert containers_of(f"taskenv.env={env_id}") == [] and volumes_of(env_id) == []

    # The SDK itself: the instruction rendered by TaskEnvironment, verify_env_state before and
    # after the solution, over a second environment (the image is built: no `building` now).
    seen = sdk_run(SDK_CHECK, SERVER=service.base_url, KEY=key, ORG=org, TASK=f"{org}/web-lab", FLAG=FLAG)
    assert f"available at: {url}" in seen["instruction"] and "for the sdk" in seen["instruction"]
    assert (
        seen["verification"]
        == {
            "method": "env_flag",
            "flag_path": "/tmp/result.txt",
            "expected": FLAG,
            "timeout_sec": 10,
        }
        or seen["verification"]["method"] == "env_flag"
    ), seen
    assert (seen["before"], seen["after"]) == (False, True)

    log = (Path(service.env["TASKENV_TASKS_PATH"]).parent / "service.log").read_text(errors="replace")
    for text in [*answers, log, json.dumps(seen)]:
        assert SECRET_VALUE not in text


FAILING_TASKS = {
    "a crashing service": (
        'services:\n  web:\n    image: taskenv/default:1\n    command: ["sh", "-c", "echo dying; exit 3"]\n',
        "",
        "service 'web'",
    ),
    "a failing provision script": (
        'services:\n  web:\n    image: taskenv/default:1\n    command: ["httpd", "-f", "-p", "8081"]\n',
        "#!/bin/sh\necho broken >&2\nexit 4\n",
        "provision script provision.sh",
    ),
    "a provision script that prints no JSON": (
        'services:\n  web:\n    image: taskenv/default:1\n    command: ["httpd", "-f", "-p", "8082"]\n',
        "#!/bin/sh\necho not json\n",
        "JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILING_TASKS))
def test_a_task_environment_that_cannot_be_made_fails_with_its_reason(
    service, dn_bin, dn_env, tmp_path, case
):
    compose, provision, reason = FAILING_TASKS[case]
    org = f"bad-{uuid.uuid4().hex[:8]}"
    env = scope_env(service, dn_env, org)
    task = tmp_path / "broken"
    task.mkdir()
    (task / "docker-compose.yaml").write_text(compose)
    manifest = (
        "name: broken\nversion: 0.1.0\ninstruction: Nothing to do.\n"
        "verification: {method: flag, path: /tmp/flag, value: x}\n"
    )
    if provision:
        (task / "provision.sh").write_text(provision)
        manifest += "provision: {script: provision.sh, timeout: 20}\n"
    (task / "task.yaml").write_text(manifest)
    ok(_dn(dn_bin, env, "task", "push", str(task), "--skip-validate"))
    made = _json(ok(_dn(dn_bin, env, "env", "create", f"{org}/broken", "--json")))
    # `dn env wait` waits for `ready` or `torn_down` only: the state is polled here instead.
    url = f"{service.base_url}/api/v1/org/{org}/ws/main/environments/{made['id']}"
    with sync_http(headers={"X-API-Key": env["DREADNODE_API_KEY"]}, timeout=30) as http:
        settled = lambda: http.get(url).json()["state"] not in ("building", "provisioning")  # noqa: E731
        eventually(settled, "the environment's provision to end", timeout=90)
        waited = http.get(url).json()
    assert waited["state"] == "failed", waited
    assert reason in waited["error"], waited["error"]
    assert containers_of(f"taskenv.env={made['id']}") == [] and volumes_of(made["id"]) == []
    assert TOKEN.fullmatch(made["execute_token"])
    assert re.search(r"\S", waited["error"])

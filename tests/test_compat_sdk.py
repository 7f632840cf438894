"""Dreadnode's public SDK and its `dn env` CLI, unmodified, against a live taskenv.

They run in their own venv (.venv-sdk, made by scripts/sdk-venv.sh, which scripts/test.sh and
`make test-compat` run first) so that their large dependency tree never constrains taskenv's.
Without it these tests fail: the compatibility claim is not optional. Every SDK process gets a
temporary HOME and proxies that lead nowhere except for loopback, so nothing it does can reach
another host or the developer's own ~/.dreadnode.
"""

import json
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.harness import create_key, wait_api

pytestmark = [pytest.mark.integration, pytest.mark.compat]

SCRIPTS = Path(__file__).parent / "sdk"
MINIMUM_SDK = "2.0.52"
TOKEN = re.compile(r"\btet_[A-Za-z0-9_-]{43}\b")


def run_script(dn_bin: Path, env: dict[str, str], script: str, *args: str) -> dict:
    done = subprocess.run(
        [str(dn_bin / "python"), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def containers_of(env_id: str) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=taskenv.env={env_id}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_sdk_version_is_the_one_pinned(dn_bin, dn_env):
    version = subprocess.run(
        [str(dn_bin / "python"), "-c", "from dreadnode.version import VERSION; print(VERSION)"],
        capture_output=True,
        text=True,
        env=dn_env,
        check=True,
    ).stdout.strip()
    from packaging.version import Version

    assert Version(version) >= Version(MINIMUM_SDK)
    print(f"dreadnode SDK {version}")


def test_task_environment(service, dn_bin, dn_env):
    seen = run_script(dn_bin, dn_env, "roundtrip.py", service.base_url, service.key, "acme", "main")
    assert seen["state_after_setup"] == "ready"
    assert seen["echo"] == [0, "hi\n"]
    assert seen["failing"] == [3, "out\nerr\n"]
    assert "504" in seen["timeout_error"] and "did not finish within 1 s" in seen["timeout_error"]
    assert seen["logs"] == "taskenv sandbox ready\n"
    assert seen["listed"] is True
    assert seen["state_after_teardown"] == "torn_down"
    assert seen["id_after_teardown"] is None
    assert containers_of(seen["id"]) == [], "teardown left the container"
    assert {"id", "state", "execute_token", "service_urls", "instruction", "expires_at"} <= set(
        seen["context_keys"]
    )


def test_every_api_client_environment_method(service, dn_bin, dn_env):
    workspace = f"sdk-{uuid.uuid4().hex[:8]}"  # a workspace of its own: listing totals are exact
    key = create_key(service.env, "compat", workspace)  # `taskenv keys create`: test_integration_cli
    seen = run_script(
        dn_bin, dn_env, "client_methods.py", service.base_url, key, "compat", workspace, service.other_key
    )
    first, second = seen["first_id"], seen["second_id"]

    created = seen["created"]
    assert created["state"] == "provisioning" and created["task_ref"] == "default"
    assert TOKEN.fullmatch(created["execute_token"])
    assert set(created) == {
        "id",
        "state",
        "task_ref",
        "created_at",
        "expires_at",
        "error",
        "instruction",
        "service_urls",
        "task_verification",
        "execute_token",
    }
    # The SDK's setup polls /status until `ready` and folds its instruction and service_urls in.
    assert seen["status_ready"] == {
        "id": first,
        "state": "ready",
        "expires_at": seen["status_ready"]["expires_at"],
        "error": None,
        "instruction": seen["status_ready"]["instruction"],
        "service_urls": {},
    }
    got = seen["got"]
    assert got["id"] == first and got["state"] == "ready" and "execute_token" not in got
    assert got["service_urls"] == {} and got["instruction"]

    assert seen["echo"] == {"exit_code": 0, "output": "hi\n"}
    assert seen["failing"] == {"exit_code": 3, "output": "no\n"}
    assert seen["logs"] == {"logs": "taskenv sandbox ready\n"}

    page1, page2, page3 = seen["page1"], seen["page2"], seen["page3"]
    assert (page1["total"], page1["total_pages"], page1["page"], page1["limit"]) == (2, 2, 1, 1)
    assert (page1["has_next"], page1["has_previous"]) == (True, False)
    assert (page2["has_next"], page2["has_previous"]) == (False, True)
    assert page3["environments"] == [] and page3["total"] == 2
    # Newest first, every environment once across the pages.
    assert [e["id"] for e in page1["environments"] + page2["environments"]] == [second, first]

    assert seen["deleted"] is None and seen["deleted_again"] is None  # idempotent
    assert seen["status_torn_down"]["state"] == "torn_down"
    assert [e["id"] for e in seen["ready_after_delete"]["environments"]] == [first]
    assert [e["id"] for e in seen["torn_down_listed"]["environments"]] == [second]
    assert seen["both_states"]["total"] == 2
    assert seen["default_listing"]["limit"] == 50 and seen["default_listing"]["page"] == 1
    assert containers_of(first) == [] and containers_of(second) == []

    errors = seen["errors"]
    expected = {
        "401": ("AuthenticationError", "401: Authentication failed"),
        "401_list": ("AuthenticationError", "401: Authentication failed"),
        "401_execute": ("AuthenticationError", "401: Authentication failed"),
        "403": ("RuntimeError", "403: This API key is not valid for this organization or workspace"),
        "404_task": ("NotFoundError", "404: Task 'no-such-task' not found"),
        "409_execute": ("ConflictError", f"409: Cannot execute in environment {second} in state 'torn_down'"),
        "409_logs": ("ConflictError", f"409: Cannot read logs of environment {second} in state 'torn_down'"),
        "422": ("RuntimeError", "422: Invalid request body: timeout_sec"),
        "422_list": ("RuntimeError", "422: Invalid request query: limit"),
    }
    for name in ("404", "404_status", "404_delete"):
        expected[name] = ("NotFoundError", "404: Environment ")
    for name, (cls, message) in expected.items():
        error = errors[name]
        assert error is not None, f"{name}: the SDK raised nothing"
        assert error["class"] == cls, (name, error)
        assert error["runtime_error"], name  # every SDK error stays a RuntimeError
        # The SDK shows `<status>: <detail>`: detail is the human message, not a JSON dump.
        assert error["message"].startswith(message), (name, error["message"])
        assert "{" not in error["message"], (name, error["message"])
    assert errors["401"]["auth"] and errors["404"]["not_found"] and errors["409_logs"]["conflict"]


def _dn(
    dn_bin: Path, env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dn_bin / "dn"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _json(stdout: str) -> dict | list:
    """dn may print a notice before its JSON."""
    start = min(i for i in (stdout.find("{"), stdout.find("[")) if i >= 0)
    return json.loads(stdout[start:])


def test_dn_env_cli_with_environment_variables(service, dn_bin, dn_env):
    """The documented DREADNODE_* variables point the CLI at taskenv; no flags."""
    env = {
        **dn_env,
        "DREADNODE_SERVER": service.base_url,
        "DREADNODE_API_KEY": service.key,
        "DREADNODE_ORGANIZATION": "acme",
        "DREADNODE_WORKSPACE": "main",
    }
    created = _dn(dn_bin, env, "env", "create", "default", "--wait")
    assert created.returncode == 0, created.stdout + created.stderr
    tokens = TOKEN.findall(created.stdout)
    assert len(tokens) == 1, f"the one-time token is not printed: {created.stdout}"
    env_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", created.stdout)[0]
    assert "ready" in created.stdout

    waited = _dn(dn_bin, env, "env", "wait", env_id, "--json")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert _json(waited.stdout)["state"] == "ready"

    ran = _dn(dn_bin, env, "env", "exec", env_id, "--token", tokens[0], "--", "echo hi; exit 7")
    assert ran.returncode == 7, ran.stdout + ran.stderr  # dn exits with the command's exit code
    assert ran.stdout.lstrip("\n").startswith("hi\n")
    ok = _dn(dn_bin, {**env, "DREADNODE_ENVIRONMENT_TOKEN": tokens[0]}, "env", "exec", env_id, "--", "true")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    listed = _dn(dn_bin, env, "env", "list", "--state", "ready", "--json")
    assert env_id in {row["id"] for row in _json(listed.stdout)}

    removed = _dn(dn_bin, env, "env", "rm", env_id, "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert containers_of(env_id) == []
    got = _dn(dn_bin, env, "env", "get", env_id, "--json")
    assert _json(got.stdout)["state"] == "torn_down"
    waited = _dn(dn_bin, env, "env", "wait", env_id, "--json")
    assert waited.returncode != 0  # torn down is terminal but not ready


def test_dn_env_cli_with_a_profile(service, dn_bin, dn_env):
    """A saved profile in ~/.dreadnode/config.yaml (the file `dn login` writes), used as the
    active profile and by name."""
    config = Path(dn_env["HOME"]) / ".dreadnode" / "config.yaml"
    config.parent.mkdir(mode=0o700)
    config.write_text(
        "active: taskenv\n"
        "servers:\n"
        "  taskenv:\n"
        f"    url: {service.base_url}\n"
        f"    api_key: {service.key}\n"
        "    default_organization: acme\n"
        "    default_workspace: main\n"
    )
    config.chmod(0o600)
    created = _dn(dn_bin, dn_env, "env", "create", "default", "--wait", "--json")
    assert created.returncode == 0, created.stdout + created.stderr
    env = _json(created.stdout)
    assert env["state"] == "ready" and TOKEN.fullmatch(env["execute_token"])
    ran = _dn(
        dn_bin, dn_env, "env", "exec", env["id"], "--profile", "taskenv",
        "--token", env["execute_token"], "--json", "--", "echo $((6 * 7)); exit 4",
    )  # fmt: skip
    assert _json(ran.stdout) == {"exit_code": 4, "output": "42\n"}
    assert ran.returncode == 4
    removed = _dn(dn_bin, dn_env, "env", "delete", env["id"], "--profile", "taskenv", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert containers_of(env["id"]) == []


def test_dn_env_cli_with_flags(service, dn_bin, dn_env):
    scope = [
        "--server",
        service.base_url,
        "--api-key",
        service.key,
        "--organization",
        "acme",
        "--workspace",
        "main",
    ]
    created = _dn(dn_bin, dn_env, "env", "create", "default", *scope, "--wait", "--json")
    assert created.returncode == 0, created.stdout + created.stderr
    env = _json(created.stdout)
    ran = _dn(
        dn_bin, dn_env, "env", "exec", env["id"], "--token", env["execute_token"], *scope, "--", "exit 0"
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    bad = _dn(dn_bin, dn_env, "env", "exec", env["id"], "--token", "tet_wrong", *scope, "--", "true")
    assert bad.returncode != 0 and "Authentication failed" in bad.stdout + bad.stderr
    assert _dn(dn_bin, dn_env, "env", "rm", env["id"], *scope, "--yes").returncode == 0
    assert containers_of(env["id"]) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_older_sdk_gets_426_naming_the_minimum(service, dn_bin, dn_env):
    """A second API process of the same service, with a minimum client version: the real SDK
    (made to identify as an older release by its own _DN_TEST_VERSION) gets 426."""
    port = _free_port()
    env = {
        **service.env,
        "TASKENV_API_PORT": str(port),
        "TASKENV_MIN_CLIENT_VERSIONS": f"dreadnode-sdk={MINIMUM_SDK}",
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "taskenv", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_api(base, api)
        args = (base, service.key, "acme", "main")
        old = run_script(dn_bin, {**dn_env, "_DN_TEST_VERSION": "2.0.40"}, "upgrade.py", *args)
        assert old["sent"] == "dreadnode-sdk/2.0.40"
        assert old["error"] == (
            "426: dreadnode-sdk 2.0.40 is older than this server supports: "
            f"upgrade to dreadnode-sdk {MINIMUM_SDK} or newer"
        )
        current = run_script(dn_bin, dn_env, "upgrade.py", *args)
        assert "total" in current, current
        cli = _dn(
            dn_bin,
            {**dn_env, "_DN_TEST_VERSION": "1.0.0"},
            "env", "list", "--server", base, "--api-key", service.key,
            "--organization", "acme", "--workspace", "main",
        )  # fmt: skip
        assert cli.returncode != 0 and f"dreadnode-sdk {MINIMUM_SDK}" in cli.stdout + cli.stderr
        # taskenv's own clients identify as taskenv/<version>: not subject to the SDK's minimum.
        from taskenv.shared.user_agents import USER_AGENT

        mine = httpx.get(f"{base}/api/v1/user", headers={"X-API-Key": service.key, "User-Agent": USER_AGENT})
        assert mine.status_code == 200
        stale = httpx.get(f"{base}/api/v1/user", headers={"User-Agent": "dreadnode-sdk/2.0.51"})
        assert stale.status_code == 426 and stale.json()["type"] == "upgrade_required_error"
    finally:
        api.terminate()
        api.wait(timeout=30)

"""Dreadnode's public SDK and its `dn env` CLI, unmodified, against taskenv.

They live in a separate venv (.venv-sdk, made by scripts/sdk-venv.sh) so that their large
dependency tree never constrains taskenv's own."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SDK_BIN = Path(__file__).parent.parent / ".venv-sdk" / "bin"
needs_sdk = pytest.mark.skipif(not (SDK_BIN / "dn").exists(), reason="run scripts/sdk-venv.sh first")


@needs_sdk
def test_sdk_task_environment_roundtrip(service):
    script = Path(__file__).parent / "sdk" / "roundtrip.py"
    done = subprocess.run(
        [str(SDK_BIN / "python"), str(script), service.base_url, service.key, "acme", "main"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "state_after_setup": "ready",
        "exit_code": 3,
        "output": "out\nerr\n",
        "timeout_error": result["timeout_error"],
        "logs": "taskenv sandbox ready\n",
        "listed": True,
        "state_after_teardown": "torn_down",
    }
    assert "504" in result["timeout_error"] and "did not finish within 1 s" in result["timeout_error"]


def _json(stdout: str) -> dict:
    """dn prints a blank line or a notice before its JSON."""
    return json.loads(stdout[stdout.index("{") :])


@needs_sdk
def test_dn_env_cli(service):
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

    def dn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # Options before the command's own arguments: everything after `--` is the command.
            [str(SDK_BIN / "dn"), "env", args[0], *scope, *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
        )

    created = dn("create", "default", "--wait", "--json")
    assert created.returncode == 0, created.stdout + created.stderr
    env = _json(created.stdout)
    assert env["state"] == "ready"
    ran = dn("exec", env["id"], "--token", env["execute_token"], "--json", "--", "echo hi; exit 4")
    assert _json(ran.stdout) == {"exit_code": 4, "output": "hi\n"}
    assert ran.returncode == 4  # dn exits with the command's exit code
    assert env["id"] in dn("list").stdout
    deleted = dn("delete", env["id"], "--yes")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    got = dn("get", env["id"], "--json")
    assert _json(got.stdout)["state"] == "torn_down"

"""`taskenv up`: the embedded default starts everything, `keys create` finds it, Ctrl-C stops all."""

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import _free_port

pytestmark = pytest.mark.integration


def test_up_runs_everything_and_stops_cleanly(tmp_path):
    port = _free_port()
    env = {**os.environ, "TASKENV_HOME": str(tmp_path), "TASKENV_API_PORT": str(port)}
    env.pop("TASKENV_REDIS_URL", None)
    env["TASKENV_HOST_ID"] = f"up-{uuid.uuid4().hex[:8]}"
    up = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 60
        while "export TASKENV_KEY=" not in banner and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            banner += line
        assert "export TASKENV_KEY=" in banner, banner
        assert (tmp_path / "redis.sock").is_socket()
        # Without TASKENV_REDIS_URL, `keys create` finds the running instance's Redis.
        key = subprocess.run(
            [sys.executable, "-m", "cli", "keys", "create", "--org", "acme", "--workspace", "main"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/org/acme/ws/main/environments", headers={"X-API-Key": key}
        )
        assert listed.status_code == 200 and listed.json()["total"] == 0
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    assert not (tmp_path / "redis.sock").exists()  # its Redis stopped too
    assert (tmp_path / "appendonlydir").is_dir()  # with persistence on

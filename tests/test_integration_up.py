"""`taskenv up`: the embedded default starts everything, `keys create` finds it, Ctrl-C stops all;
a child that dies is restarted; a taken port or a running home is refused."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from taskenv.cli.up import runner_link_dir
from tests.harness import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def _env(home: Path, port: int) -> dict[str, str]:
    env = {**os.environ, "TASKENV_HOME": str(home), "TASKENV_API_PORT": str(port)}
    env.pop("TASKENV_REDIS_URL", None)
    env["TASKENV_HOST_ID"] = f"up-{uuid.uuid4().hex[:8]}"
    return env


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskenv", "up", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _banner(up: subprocess.Popen[str]) -> str:
    """What `up` printed until its banner's end (its last line names the DELETE)."""
    banner = ""
    deadline = time.monotonic() + 60
    while "curl -s -X DELETE" not in banner and time.monotonic() < deadline:
        line = up.stdout.readline()
        if not line:
            break
        banner += line
    assert "taskenv is up" in banner and "curl -s -X DELETE" in banner, banner
    return banner


def _stop(up: subprocess.Popen[str]) -> None:
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=60) == 0


def _children(pid: int) -> dict[int, str]:
    """Child pids of `pid` and their command lines, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_up_runs_everything_and_stops_cleanly(tmp_path):
    port = free_port()
    env = _env(tmp_path, port)
    up = _start(env)
    try:
        banner = _banner(up)
        assert "export TASKENV_KEY=" in banner, banner
        # The children's logs go to the home, not between the banner's lines.
        assert '"levelname"' not in banner and "INFO" not in banner
        assert (tmp_path / "taskenv.log").stat().st_size > 0
        assert (tmp_path / "redis.sock").is_socket()
        # Without TASKENV_REDIS_URL, `keys create` finds the running instance's Redis.
        key = subprocess.run(
            [sys.executable, "-m", "taskenv", "keys", "create", "--org", "acme", "--workspace", "main"],
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
        _stop(up)
    assert not (tmp_path / "redis.sock").exists()  # its Redis stopped too
    assert (tmp_path / "appendonlydir").is_dir()  # with persistence on
    assert not runner_link_dir(tmp_path).exists()  # no environment left: its link dir went too
    # A second start of the same home makes no new key: it says how to make one.
    again = _start(env)
    try:
        banner = _banner(again)
        assert "export TASKENV_KEY=tk_" not in banner, banner
        assert f"API keys in this home: 2 (taskenv --home {tmp_path} keys ls)" in banner, banner
    finally:
        _stop(again)


def test_a_dead_worker_is_restarted_and_the_api_keeps_answering(tmp_path):
    port = free_port()
    up = _start(_env(tmp_path, port), "--workers", "2")
    try:
        _banner(up)
        workers = [pid for pid, line in _children(up.pid).items() if line.endswith("taskenv worker ")]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        line = ""
        while not line.strip():
            line = up.stdout.readline()
        assert f"(pid {workers[0]}) was killed by SIGKILL: restarting it" in line, line
        eventually(
            lambda: len([p for p, c in _children(up.pid).items() if c.endswith("taskenv worker ")]) == 2,
            "a new worker process",
        )
        assert workers[1] in _children(up.pid)  # the other worker was left alone
        # Ready again within seconds (polled: once, under the full suite's load, one probe right
        # after the restart counted no live host; the cause was not found, see the issue notes).
        answers: list[str] = []

        def ready() -> bool:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            answers.append(answer.text)
            return answer.status_code == 200

        try:
            eventually(ready, "/readyz 200", timeout=10)
        except AssertionError:
            raise AssertionError(f"/readyz not 200 within 10 s: {answers[-3:]}") from None
    finally:
        _stop(up)
    assert not (tmp_path / "redis.sock").exists()


def test_up_refuses_a_taken_port_and_a_home_already_running(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "taskenv", "up", "--home", str(tmp_path), "--port", str(port)],
            env=_env(tmp_path, 1),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is taken" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "redis.sock").exists()
    port = free_port()
    up = _start(_env(tmp_path, port))
    try:
        _banner(up)
        second = subprocess.run(
            [sys.executable, "-m", "taskenv", "up", "--port", str(free_port())],
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "already running" in second.stderr, second.stderr
    finally:
        _stop(up)

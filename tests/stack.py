"""A private taskenv whose parts a test can stop, kill and restart one by one: its own
redis-server (append-only file on, as `taskenv up` runs it), worker and API child processes,
its own host id, so its containers and queues are no other test's."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from taskenv.shared import keys
from taskenv.shared.settings import DEFAULT_TASKS_DIR
from tests.conftest import _free_port, _wait, start_redis

PYTHON = [sys.executable, "-m", "taskenv"]


class Stack:
    def __init__(self, home: Path, settings: dict[str, str] | None = None, host: str | None = None) -> None:
        self.home = home
        # Two stacks may share a host id on the one engine: they are two deployments.
        self.host = host or f"test-{uuid.uuid4().hex[:8]}"
        self.deployment = ""
        self.sock = home / "redis.sock"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        tasks = home / "tasks"
        tasks.mkdir(exist_ok=True)
        (tasks / "default.toml").write_text((DEFAULT_TASKS_DIR / "default.toml").read_text())
        self.env = {
            **os.environ,
            "TASKENV_REDIS_URL": f"unix://{self.sock}",
            "TASKENV_HOST_ID": self.host,
            "TASKENV_QUEUE": self.host,
            "TASKENV_API_PORT": str(self.port),
            "TASKENV_TASKS_PATH": str(tasks),
            "TASKENV_REAP_INTERVAL_SEC": "1",
            "TASKENV_LOG_FORMAT": "text",
            **(settings or {}),
        }
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self._log = open(home / "stack.log", "ab")  # noqa: SIM115

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.sock), decode_responses=True)

    def start_redis(self) -> None:
        self.redis = start_redis(
            self.home, "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", log=self._log
        )

    def start_worker(self) -> None:
        self.worker = self._spawn("worker")
        if not self.deployment:
            # The id its first worker made (shared/deployment.py): its containers carry it.
            client = self.client()
            _wait(lambda: client.get(keys.DEPLOYMENT), "the deployment id", self.worker)
            self.deployment = str(client.get(keys.DEPLOYMENT))
            client.close()

    def start_api(self) -> None:
        self.api = self._spawn("api")
        _wait(lambda: httpx.get(f"{self.base_url}/api/v1/health").is_success, "the API", self.api)

    def start(self) -> "Stack":
        self.start_redis()
        self.start_worker()
        self.start_api()
        return self

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*PYTHON, command], env=self.env, stdout=self._log, stderr=self._log)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def key(self, org: str = "acme", workspace: str = "main") -> str:
        return subprocess.run(
            [*PYTHON, "keys", "create", "--org", org, "--workspace", workspace],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def envs_url(self, org: str = "acme", workspace: str = "main") -> str:
        return f"{self.base_url}/api/v1/org/{org}/ws/{workspace}/environments"

    def containers(self) -> list[str]:
        """Ids of this stack's containers: its host's, of its deployment."""
        labels = [f"taskenv.host={self.host}", f"taskenv.deployment={self.deployment}"]
        found = subprocess.run(
            ["docker", "ps", "-aq", *(f"--filter=label={label}" for label in labels)],
            capture_output=True,
            text=True,
        )
        return found.stdout.split()

    def worker_metric(self, name: str) -> float:
        """A sample of the worker processes' own metrics (summed), as their heartbeats carry them."""
        client = self.client()
        total = 0.0
        for worker_id in client.zrange(keys.WORKERS, 0, -1):
            exposition = client.hget(keys.worker(worker_id), "metrics") or ""
            for family in text_string_to_metric_families(exposition):
                total += sum(s.value for s in family.samples if s.name == name)
        client.close()
        return total

    def log_lines(self, text: str) -> list[str]:
        return [
            line
            for line in (self.home / "stack.log").read_text(errors="replace").splitlines()
            if text in line
        ]

    def close(self) -> None:
        for proc in (self.api, self.worker):
            self.stop(proc)
        self.stop(self.redis)
        ids = self.containers()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        self._log.close()


def eventually(check: Callable[[], object], what: str, timeout: float = 30) -> float:
    """Seconds until `check()` is true; fails the test past `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started

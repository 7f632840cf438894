"""A private taskenv whose parts a test can stop, kill and restart one by one: its own
redis-server (append-only file on, as `taskenv up` runs it), worker and API child processes,
its own host id, so its containers and queues are no other test's."""

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from taskenv.cli.up import runner_link_dir
from taskenv.shared import keys
from tests import harness
from tests.harness import (
    PYTHON,
    free_port,
    new_host_id,
    settings_env,
    spawn,
    start_redis,
    tasks_dir,
    wait_until,
)
from tests.helpers import envs_url, eventually

__all__ = ["PYTHON", "Stack", "eventually", "running"]


class Stack:
    def __init__(self, home: Path, settings: dict[str, str] | None = None, host: str | None = None) -> None:
        self.home = home
        # Two stacks may share a host id on the one engine: they are two deployments.
        self.host = host or new_host_id()
        self.deployment = ""
        self.sock = home / "redis.sock"
        self.port = free_port()
        self.link_dir = runner_link_dir(home)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = settings_env(
            self.sock,
            self.port,
            tasks_dir(home),
            self.host,
            **{
                "TASKENV_QUEUE": self.host,
                "TASKENV_LOG_FORMAT": "text",
                # As `taskenv up` runs its workers: runners connect over sockets in a short path.
                "TASKENV_RUNNER_TRANSPORT": "socket",
                "TASKENV_RUNNER_LINK_DIR": str(self.link_dir),
                **(settings or {}),
            },
        )
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
            wait_until(lambda: client.get(keys.DEPLOYMENT), "the deployment id", self.worker)
            self.deployment = str(client.get(keys.DEPLOYMENT))
            client.close()

    def start_api(self) -> None:
        self.api = self._spawn("api")
        harness.wait_api(self.base_url, self.api)

    def start(self) -> "Stack":
        self.start_redis()
        self.start_worker()
        self.start_api()
        return self

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        return spawn(command, self.env, self._log)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        harness.stop(proc, sig=sig, timeout=timeout)

    def key(self, org: str = "acme", workspace: str = "main") -> str:
        return harness.create_key(self.env, org, workspace)

    def envs_url(self, org: str = "acme", workspace: str = "main") -> str:
        return envs_url(self.base_url, org, workspace)

    def containers(self) -> list[str]:
        """Ids of this stack's containers: its host's, of its deployment."""
        return harness.containers_of(f"taskenv.host={self.host}", f"taskenv.deployment={self.deployment}")

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
        harness.stop(self.api, self.worker, timeout=harness.CLEANUP_GRACE_SEC)
        harness.stop(self.redis)
        ids = self.containers()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        shutil.rmtree(self.link_dir, ignore_errors=True)
        self._log.close()


@contextmanager
def running(home: Path, settings: dict[str, str] | None = None, **tasks: str) -> Iterator[Stack]:
    """A started stack with `settings` and the extra tasks `name=TOML`, closed after."""
    stack = Stack(home, settings)
    for name, toml in tasks.items():
        (home / "tasks" / f"{name}.toml").write_text(toml)
    try:
        yield stack.start()
    finally:
        stack.close()

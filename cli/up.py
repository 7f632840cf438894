"""`taskenv up`: the whole service on one machine with no setup.

A private redis-server on a unix socket in the home (persistence on), the workers and the API
run as child processes in their own sessions, so Ctrl-C reaches only this supervisor, which
then stops them in order: API first, workers next (they finish running commands), Redis last.
Their logs go to HOME/taskenv.log, so the terminal shows only the banner and the supervisor's
own lines. A child that dies is started again, at most `MAX_RESTARTS` times per
`RESTART_WINDOW_SEC`; past that the supervisor stops everything (never half of it) and exits 1.
"""

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

from taskenv.cli import instance
from taskenv.cli.keys import count, create
from taskenv.cli.operations import build_image
from taskenv.cli.secrets import ensure_home_key
from taskenv.shared.apikeys import key_id
from taskenv.shared.secrets import hash_secret
from taskenv.shared.settings import RunnerTransportKind, Settings
from taskenv.shared.user_agents import USER_AGENT

STARTUP_TIMEOUT_SEC = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW_SEC = 60.0
POLL_SEC = 0.2
# Written once the home's first API key was made: later starts make none.
FIRST_KEY_MARK = "first-key"
DEFAULT_HOME = (Path.home() / ".taskenv").absolute()


class StartFailed(RuntimeError):
    """`up` cannot start: its one-line reason."""


def say(message: str) -> None:
    print(f"taskenv up: {message}", file=sys.stderr, flush=True)


def _wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartFailed(f"{what} exited with code {proc.returncode} while starting")
        try:
            if check():
                return
        except Exception:  # noqa: S110 (not up yet)
            pass
        time.sleep(0.1)
    raise StartFailed(f"{what} did not start within {STARTUP_TIMEOUT_SEC:.0f} s")


def require_free_port(host: str, port: int) -> None:
    """Refuse to start when another process holds the API's port: its answers would otherwise be
    taken for ours."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartFailed(
                f"port {port} on {host} is taken by another process ({exc.strerror}):"
                " stop it, or choose another with --port"
            ) from None


@dataclass
class Child:
    """One supervised process, restarted when it dies, within its restart budget."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    stop_timeout_sec: float
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)

    def launch(self) -> None:
        self.proc = self.start()

    def died(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def may_restart(self, now: float) -> bool:
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_SEC:
            self.restarts.popleft()
        return len(self.restarts) < MAX_RESTARTS

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout_sec)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=log, stderr=log)


def runner_link_dir(home: Path) -> Path:
    """Short (a unix socket's path holds 107 bytes) and one per home."""
    return Path("/run/taskenv") / hashlib.sha256(str(home).encode()).hexdigest()[:12]


def _refuse_if_running(home: Path) -> None:
    """One instance per home; a socket left by a killed instance is removed."""
    socket_path = instance.redis_socket()
    if not socket_path.is_socket():
        return
    try:
        redis.Redis(unix_socket_path=str(socket_path)).ping()
    except redis.ConnectionError:
        socket_path.unlink(missing_ok=True)
    else:
        raise StartFailed(f"a taskenv is already running in {home} (its Redis answers at {socket_path})")


def _start_redis(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    _refuse_if_running(home)
    socket_path = instance.redis_socket()
    client = redis.Redis(unix_socket_path=str(socket_path))
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(home),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "300 1",
            "--logfile", str(home / "redis.log"),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_until(lambda: bool(client.ping()), "redis-server", proc)
    return proc


def _first_key(home: Path, settings: Settings, org: str, workspace: str) -> str | None:
    """A key on the home's first start only; None afterwards."""
    mark = home / FIRST_KEY_MARK
    if mark.exists():
        return None
    key = asyncio.run(create(settings, org, workspace))
    mark.write_text(key_id(hash_secret(key)) + "\n")
    return key


def _banner(base: str, home: Path, key: str | None, keys_made: int, org: str, workspace: str) -> str:
    envs = f"{base}/api/v1/org/{org}/ws/{workspace}/environments"
    field_of = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"
    if key is not None:
        access = f"""API key for org {org!r}, workspace {workspace!r} (shown once; more: taskenv keys create):

  export TASKENV_KEY={key}
"""
    else:
        taskenv = "taskenv" if home == DEFAULT_HOME else f"taskenv --home {home}"
        access = f"""API keys in this home: {keys_made} ({taskenv} keys ls). A new one, shown once:

  export TASKENV_KEY=$({taskenv} keys create --org {org} --workspace {workspace})
"""
    return f"""
taskenv is up: API {base}  (Ctrl-C stops everything)
home {home}; logs in {instance.log_file()}
{access}
Try it:

  ENV=$(curl -s -X POST {envs} -H "X-API-Key: $TASKENV_KEY" \\
        -H 'Content-Type: application/json' -d '{{"task_ref": "default"}}')
  ID=$(echo "$ENV" | {field_of} id); TOKEN=$(echo "$ENV" | {field_of} execute_token)
  curl -s "{envs}/$ID/status?wait_sec=10" -H "X-API-Key: $TASKENV_KEY"; echo
  curl -s -X POST {envs}/$ID/execute -H "X-Environment-Token: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"command": "echo hello; uname -sm", "timeout_sec": 10}}'
  curl -s -X DELETE {envs}/$ID -H "X-API-Key: $TASKENV_KEY"
"""


def _supervise(children: list[Child], stop: dict[str, int]) -> int:
    """Restart what dies until a signal asks to stop (0), or a child exhausts its budget (1)."""
    while not stop["signal"]:
        for child in children:
            code = child.died()
            if code is None:
                continue
            pid = child.proc.pid if child.proc else "?"
            ended = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            now = time.monotonic()
            if not child.may_restart(now):
                say(
                    f"{child.name} (pid {pid}) {ended} after {MAX_RESTARTS} restarts"
                    f" within {RESTART_WINDOW_SEC:g} s: stopping everything (see {instance.log_file()})"
                )
                return 1
            child.restarts.append(now)
            say(f"{child.name} (pid {pid}) {ended}: restarting it")
            try:
                child.launch()
            except (StartFailed, OSError) as exc:
                say(f"{child.name} could not be restarted ({exc}): stopping everything")
                return 1
        time.sleep(POLL_SEC)
    return 0


def run(*, workers: int, port: int | None, org: str, workspace: str) -> int:
    try:
        return _run(workers=workers, port=port, org=org, workspace=workspace)
    except StartFailed as exc:
        say(str(exc))
        return 1


def _run(*, workers: int, port: int | None, org: str, workspace: str) -> int:
    home = instance.home().absolute()
    env = dict(os.environ)
    if env.pop("TASKENV_REDIS_URL", None) is not None:
        say(f"TASKENV_REDIS_URL is ignored: up runs its own Redis in {home}")
    env.pop("TASKENV_REDIS_SENTINELS", None)
    env[instance.HOME_VARIABLE] = str(home)
    if port is not None:
        env["TASKENV_API_PORT"] = str(port)
    # The workers run beside the engine: their runners' frames go over unix sockets, not dockerd.
    env.setdefault("TASKENV_RUNNER_TRANSPORT", RunnerTransportKind.SOCKET)
    env.setdefault("TASKENV_RUNNER_LINK_DIR", str(runner_link_dir(home)))
    settings = Settings(
        redis_url=instance.embedded_redis_url(), runner_link_dir=env["TASKENV_RUNNER_LINK_DIR"]
    )
    if port is not None:
        settings = settings.model_copy(update={"api_port": port})
    _refuse_if_running(home)
    require_free_port(settings.api_host, settings.api_port)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env["TASKENV_REDIS_URL"] = instance.embedded_redis_url()
    # The key that seals org secrets: the operator's, else the one kept in the home.
    env["TASKENV_SECRETS_KEY"] = env.get("TASKENV_SECRETS_KEY") or ensure_home_key(home)
    try:
        built = asyncio.run(build_image(only_if_missing=True))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise StartFailed(f"cannot reach the Docker engine ({reason}): is dockerd running?") from None
    if built:
        say("built the default task image (offline, from busybox-static)")

    log = open(instance.log_file(), "ab")  # noqa: SIM115 (the children write to it until the end)
    python = [sys.executable, "-m", "taskenv"]
    redis_child = Child("redis-server", lambda: _start_redis(home, env), 30)
    worker_children = [
        Child(f"worker {n}", lambda: _spawn([*python, "worker"], env, log), 700)
        for n in range(1, workers + 1)
    ]
    api_child = Child("the API", lambda: _spawn([*python, "api"], env, log), 10)
    children = [redis_child, *worker_children, api_child]
    base = f"http://{settings.api_host}:{settings.api_port}"
    # From here on a signal asks for an orderly stop (once started, if it comes while starting).
    stop = {"signal": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for child in children:
            child.launch()
        assert api_child.proc is not None
        _wait_until(
            lambda: httpx.get(f"{base}/api/v1/health", headers={"User-Agent": USER_AGENT}).is_success,
            "the API",
            api_child.proc,
        )
        key = _first_key(home, settings, org, workspace)
        keys_made = asyncio.run(count(settings))
        print(_banner(base, home, key, keys_made, org, workspace), flush=True)
        return _supervise(children, stop)
    finally:
        for child in (api_child, *worker_children, redis_child):
            child.stop()
        # Emptied by the workers as their environments went; one still running keeps it.
        with contextlib.suppress(OSError):
            Path(env["TASKENV_RUNNER_LINK_DIR"]).rmdir()
        log.close()

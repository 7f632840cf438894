"""compose.yaml run for real, as README's steps say: images built from the Dockerfile, every
service healthy, the first key made with `run --rm api keys create`, a command run in a sandbox.

No registry is reachable here, so the images come from scripts/offline_image.py (the Python base
and Redis from this machine's Debian packages, the wheels from .venv), and the file runs on the
loopback only: the resolved compose.yaml with every service in the host's network namespace,
bound to 127.0.0.1 on free ports, nothing published, so no Docker network is ever created.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import free_port
from tests.helpers import eventually, sync_http

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
PASSWORD = uuid.uuid4().hex
# About 20 s on an idle machine; a loaded CI machine (the suite's other workers building images
# and running sandboxes) starves the services' Python starts and healthchecks.
HEALTHY_WITHIN_SEC = 300
# The healthchecks run every second here: asking more often only takes CPU from the services.
HEALTH_POLL_SEC = 0.5


def _loopback(config: dict[str, Any], redis_port: int, api_port: int) -> dict[str, Any]:
    services = config["services"]
    for service in services.values():
        service.pop("ports", None)
        service["network_mode"] = "host"
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0"
    redis = services["redis"]
    redis["command"] += ["--bind", "127.0.0.1", "--port", str(redis_port)]
    redis["environment"]["REDISCLI_AUTH"] = PASSWORD
    redis["healthcheck"]["test"] = ["CMD-SHELL", f"redis-cli -p {redis_port} ping | grep -q PONG"]
    api = services["api"]
    api["command"] = ["api", "--host", "127.0.0.1", "--port", str(api_port)]
    api["deploy"]["replicas"] = 1
    api["healthcheck"]["test"] = [
        "CMD", "python3", "-c",
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{api_port}/readyz', timeout=2)",
    ]  # fmt: skip
    for name in ("api", "worker"):
        services[name]["environment"]["TASKENV_REDIS_URL"] = url
    for service in services.values():
        if "healthcheck" in service:
            service["healthcheck"]["interval"] = "1s"
    return config


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/install.sh installs it")
    host = f"compose-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TASKENV_REDIS_PASSWORD": PASSWORD,
        "TASKENV_HOST_ID": host,
        "TASKENV_REDIS_IMAGE": "taskenv-redis:7",
    }
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "offline_image.py"), "--redis"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    resolved = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    api_port = free_port()
    loopback = _loopback(yaml.safe_load(resolved), free_port(), api_port)
    path = tmp_path_factory.mktemp("compose") / "compose.yaml"
    path.write_text(yaml.safe_dump(loopback))
    project = f"taskenvtest{uuid.uuid4().hex[:8]}"

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-p", project, "-f", str(path), *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    networks = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True).stdout
    try:
        yield run, f"http://127.0.0.1:{api_port}", host, project
    finally:
        run("down", "-v", "--remove-orphans")
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=taskenv.host={host}"], capture_output=True, text=True
        ).stdout.split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
        now = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True).stdout
        assert now == networks, "a Docker network was created"


def _healthy(project: str) -> bool:
    """The project's three containers are healthy. Asked of docker, not docker-compose: each
    docker-compose start is a Python's (about a second of CPU), too dear to poll with."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    if len(ids) != 3:
        return False
    states = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Health.Status}}", *ids], capture_output=True, text=True
    ).stdout.split()
    return states == ["healthy"] * 3


def _health_report(run) -> str:
    """Each service's health log and last log lines: what a failed wait shows."""
    report = []
    for service in ("redis", "api", "worker"):
        ids = run("ps", "-q", service).stdout.split()
        health = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State.Health}}", *ids], capture_output=True, text=True
        ).stdout
        logs = run("logs", "--no-color", "--tail", "30", service).stdout
        report.append(f"--- {service}: {health[-3000:]}\n{logs[-3000:]}")
    return "\n".join(report)


def test_compose_runs_as_documented(compose):
    run, base, host, project = compose
    assert run("run", "--rm", "worker", "image", "build").returncode == 0
    started = run("up", "-d")
    assert started.returncode == 0, started.stderr
    try:
        healthy = partial(_healthy, project)
        eventually(healthy, "every service healthy", timeout=HEALTHY_WITHIN_SEC, poll_sec=HEALTH_POLL_SEC)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_health_report(run)}") from None
    users = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.User}}", *run("ps", "-q", "api").stdout.split()],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert users == ["taskenv"]  # the API is not root
    # README says `run --rm api keys create`; with host networking compose's `run` would link the
    # container to its dependencies, which Docker refuses, so here it runs in the API container.
    made = run("exec", "-T", "api", "taskenv", "keys", "create", "--org", "acme", "--workspace", "main")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    envs = f"{base}/api/v1/org/acme/ws/main/environments"
    with sync_http(headers={"X-API-Key": key}, timeout=60) as http:
        created = http.post(envs, json={"task_ref": "default"}).json()
        url = f"{envs}/{created['id']}"
        deadline = time.monotonic() + 60
        while http.get(f"{url}/status").json()["state"] == "provisioning" and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = http.post(
            f"{url}/execute",
            json={"command": "echo hello", "timeout_sec": 10},
            headers={"X-Environment-Token": f"Bearer {created['execute_token']}"},
        )
        assert answer.json() == {"exit_code": 0, "output": "hello\n"}, answer.text
        assert http.delete(url).status_code == 204
    listed = run("exec", "-T", "api", "taskenv", "hosts", "--json")
    assert host in [h["host"] for h in json.loads(listed.stdout)], listed.stderr

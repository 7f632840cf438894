"""compose.yaml as docker-compose resolves it (`docker-compose config`: nothing is pulled or
built): persistent Redis with a password, API replicas on one Redis, a worker per Docker host."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).parent.parent / "compose.yaml"


def _config(**env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/install.sh installs it")
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_and_describes_the_deployment():
    resolved = _config(TASKENV_REDIS_PASSWORD="s3cret", TASKENV_HOST_ID="rack-7")
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    redis, api, worker = services["redis"], services["api"], services["worker"]
    assert "redis-data:/data:rw" in redis["volumes"] and "--appendonly" in redis["command"]
    assert redis["command"][-1] == "s3cret"
    url = "redis://:s3cret@redis:6379/0"
    assert api["environment"]["TASKENV_REDIS_URL"] == worker["environment"]["TASKENV_REDIS_URL"] == url
    assert api["deploy"]["replicas"] >= 2 and api["ports"][0].startswith("127.0.0.1:8000-")
    assert "network_mode" not in api  # replicas need their own ports
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" in worker["volumes"] and worker["pid"] == "host"
    assert worker["environment"]["TASKENV_HOST_ID"] == "rack-7"


def test_compose_refuses_to_run_redis_without_a_password():
    env = {k: v for k, v in os.environ.items() if k != "TASKENV_REDIS_PASSWORD"}
    missing = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "TASKENV_REDIS_PASSWORD" in missing.stderr

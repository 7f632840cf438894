"""compose.yaml's worker and the runner's socket transport: the link dir is mounted at the same
path inside the worker as on the host (the worker names it to the engine, which mounts it into
sandboxes by that path), and the setting names that very path (`docker-compose config`)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).parent.parent / "compose.yaml"


def worker_of(**env: str) -> dict[str, object]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/install.sh installs it")
    resolved = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        env={**os.environ, "TASKENV_REDIS_PASSWORD": "s3cret", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resolved.returncode == 0, resolved.stderr
    worker: dict[str, object] = yaml.safe_load(resolved.stdout)["services"]["worker"]
    return worker


@pytest.mark.parametrize("link_dir", [None, "/run/taskenv/rack-7"])
def test_the_worker_sees_the_link_dir_at_the_hosts_path(link_dir):
    worker = worker_of(**({"TASKENV_RUNNER_LINK_DIR": link_dir} if link_dir else {}))
    environment = worker["environment"]
    assert isinstance(environment, dict) and environment["TASKENV_RUNNER_TRANSPORT"] == "socket"
    path = environment["TASKENV_RUNNER_LINK_DIR"]
    assert path == (link_dir or "/run/taskenv/compose")
    assert f"{path}:{path}:rw" in worker["volumes"]  # type: ignore[operator]

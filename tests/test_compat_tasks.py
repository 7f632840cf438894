"""Dreadnode's `dn task` CLI, unmodified, against a live taskenv: a task made with `dn task init`
is validated, pushed (OCI routes, Basic `__token__:<key>`), listed, shown, pulled back byte for
byte, pushed again (skipped: same `oci_digest`), published, synced with others, deleted. What `dn
task validate` refuses, taskenv refuses too when the CLI's own check is skipped."""

import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import create_key, dn_environment
from tests.test_compat_sdk import _dn, _json

pytestmark = [pytest.mark.integration, pytest.mark.compat]

LOCAL_BASE = "taskenv/default:1"  # made offline by scripts/install.sh: nothing is pulled


def scope_env(service, dn_env: dict[str, str], org: str) -> dict[str, str]:
    return {
        **dn_env,
        "DREADNODE_SERVER": service.base_url,
        "DREADNODE_API_KEY": create_key(service.env, org),
        "DREADNODE_ORGANIZATION": org,
        "DREADNODE_WORKSPACE": "main",
    }


def ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def init_task(dn_bin: Path, env: dict[str, str], parent: Path, name: str) -> Path:
    ok(_dn(dn_bin, env, "task", "init", name, "--path", str(parent)))
    task = parent / name
    dockerfile = task / "challenge" / "Dockerfile"
    text = dockerfile.read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base is not None, text
    dockerfile.write_text(
        text.replace(base[0], f"FROM {LOCAL_BASE}").replace(
            'CMD ["python", "-m", "http.server", "8080"]', 'CMD ["httpd", "-f", "-p", "8080"]'
        )
    )
    (task / "README.md").write_text(f"# {name}\n\nA lab for the compatibility test.\n")
    return task


def tasks_seen(service, env: dict[str, str], path: str = "") -> httpx.Response:
    """What taskenv's task routes answer to `env`'s key: a state check needs no `dn` process
    (each starts the SDK, seconds of CPU); every `dn task` command is still run at least once."""
    url = f"{service.base_url}/api/v1/org/{env['DREADNODE_ORGANIZATION']}/tasks{path}"
    return httpx.get(url, headers={"X-API-Key": env["DREADNODE_API_KEY"]}, timeout=60)


def task_names(service, env: dict[str, str]) -> list[str]:
    listed = tasks_seen(service, env)
    assert listed.status_code == 200, listed.text
    return sorted(row["name"] for row in listed.json()["tasks"])


def dn_at_once(dn_bin: Path, env: dict[str, str], *calls: tuple[str, ...]) -> list[str]:
    """Independent `dn` commands side by side (each waits mostly on its own imports): stdouts."""
    with ThreadPoolExecutor(len(calls)) as threads:
        return list(threads.map(lambda args: ok(_dn(dn_bin, env, *args)), calls))


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_dn_task_lifecycle(service, dn_bin, dn_env, tmp_path):
    org = f"tasks-{uuid.uuid4().hex[:8]}"
    env = scope_env(service, dn_env, org)
    task = init_task(dn_bin, env, tmp_path, "web-lab")

    ok(_dn(dn_bin, env, "task", "validate", str(task)))
    pushed = ok(_dn(dn_bin, env, "task", "push", str(task)))
    assert "Pushed" in pushed and "web-lab" in pushed, pushed

    pulled = tmp_path / "pulled"
    listing, shown, readme, _ = dn_at_once(
        dn_bin,
        env,
        ("task", "list", "--json"),
        ("task", "info", "web-lab", "--json"),
        ("task", "info", "web-lab", "--readme"),
        ("task", "pull", "web-lab", "--output", str(pulled)),
    )
    listed = _json(listing)
    assert [row["name"] for row in listed] == ["web-lab"]
    assert listed[0]["is_public"] is False and listed[0]["version"] == "0.1.0"
    info = _json(shown)
    assert info["name"] == "web-lab" and info["version"] == "0.1.0"
    assert info["instruction"].startswith("Solve the web-lab challenge")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", info["oci_digest"])
    assert "A lab for the compatibility test" in readme
    assert files_of(pulled) == files_of(task), "the pulled task differs from the pushed one"

    # Unchanged: `dn` compares the version's `oci_digest` with its own build and uploads nothing,
    # reporting that digest (an upload would report the manifest's).
    again = ok(_dn(dn_bin, env, "task", "push", str(task)))
    assert f"({info['oci_digest']})" in again, again

    ok(_dn(dn_bin, env, "task", "publish", "web-lab"))
    other = scope_env(service, dn_env, f"other-{uuid.uuid4().hex[:8]}")
    seen = _json(ok(_dn(dn_bin, other, "task", "info", f"{org}/web-lab", "--json")))
    assert seen["is_public"] is True and seen["oci_digest"] == info["oci_digest"]
    ok(_dn(dn_bin, env, "task", "unpublish", "web-lab"))
    hidden = httpx.get(
        f"{service.base_url}/api/v1/org/{org}/tasks/web-lab",
        headers={"X-API-Key": other["DREADNODE_API_KEY"]},
        timeout=60,
    )
    assert hidden.status_code == 404, hidden.text

    ok(_dn(dn_bin, env, "task", "delete", "web-lab@0.1.0", "--yes"))
    assert tasks_seen(service, env, "/web-lab/0.1.0").status_code == 404
    assert task_names(service, env) == []


def test_dn_task_sync_of_a_directory(service, dn_bin, dn_env, tmp_path):
    env = scope_env(service, dn_env, f"sync-{uuid.uuid4().hex[:8]}")
    root = tmp_path / "tasks"
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(lambda name: init_task(dn_bin, env, root, name), ("lab-one", "lab-two")))
    first = ok(_dn(dn_bin, env, "task", "sync", str(root)))
    assert "2 uploaded" in first, first
    second = ok(_dn(dn_bin, env, "task", "sync", str(root)))
    assert "0 uploaded" in second and "2 skipped" in second, second
    assert task_names(service, env) == ["lab-one", "lab-two"]


@pytest.fixture(scope="module")
def bad_lab(service, dn_bin, tmp_path_factory) -> Path:
    """A task made by `dn task init`, once: each case below breaks a copy of it."""
    home = tmp_path_factory.mktemp("bad-lab")
    env = {**dn_environment(home), "DREADNODE_SERVER": service.base_url}
    return init_task(dn_bin, env, home, "bad-lab")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda task: _replace(task / "task.yaml", "{{challenge_url}}", "http://challenge:8080"),
            "instruction hardcodes 'http://challenge'",
        ),
        (
            lambda task: _replace(task / "task.yaml", "challenge: [8080]", "missing: [8080]"),
            "service 'missing' is declared",
        ),
        (lambda task: (task / "challenge" / "Dockerfile").unlink(), "references 'Dockerfile'"),
        (
            lambda task: _replace(
                task / "docker-compose.yaml", "build: ./challenge", "build: ./challenge\n    privileged: true"
            ),
            "'privileged' is refused",
        ),
    ],
)
def test_invalid_tasks_are_refused_at_push(service, dn_bin, dn_env, bad_lab, tmp_path, change, expected):
    env = scope_env(service, dn_env, f"bad-{uuid.uuid4().hex[:8]}")
    task = shutil.copytree(bad_lab, tmp_path / "bad-lab")
    change(task)
    pushed = _dn(dn_bin, env, "task", "push", str(task), "--skip-validate")
    assert pushed.returncode != 0, pushed.stdout
    assert "400" in pushed.stdout + pushed.stderr and expected in pushed.stdout + pushed.stderr
    assert task_names(service, env) == [], "a refused task is not stored"


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))

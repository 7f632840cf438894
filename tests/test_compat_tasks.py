"""Dreadnode's `dn task` CLI, unmodified, against a live taskenv: a task made with `dn task init`
is validated, pushed (OCI routes, Basic `__token__:<key>`), listed, shown, pulled back byte for
byte, pushed again (skipped: same `oci_digest`), published, synced with others, deleted. What `dn
task validate` refuses, taskenv refuses too when the CLI's own check is skipped."""

import re
import uuid
from pathlib import Path

import pytest

from tests.harness import create_key
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

    listed = _json(ok(_dn(dn_bin, env, "task", "list", "--json")))
    assert [row["name"] for row in listed] == ["web-lab"]
    assert listed[0]["is_public"] is False and listed[0]["version"] == "0.1.0"

    info = _json(ok(_dn(dn_bin, env, "task", "info", "web-lab", "--json")))
    assert info["name"] == "web-lab" and info["version"] == "0.1.0"
    assert info["instruction"].startswith("Solve the web-lab challenge")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", info["oci_digest"])
    readme = ok(_dn(dn_bin, env, "task", "info", "web-lab", "--readme"))
    assert "A lab for the compatibility test" in readme

    pulled = tmp_path / "pulled"
    ok(_dn(dn_bin, env, "task", "pull", "web-lab", "--output", str(pulled)))
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
    hidden = _dn(dn_bin, other, "task", "info", f"{org}/web-lab", "--json")
    assert hidden.returncode != 0 and "not found" in hidden.stdout + hidden.stderr

    ok(_dn(dn_bin, env, "task", "delete", "web-lab@0.1.0", "--yes"))
    gone = _dn(dn_bin, env, "task", "info", "web-lab@0.1.0", "--json")
    assert gone.returncode != 0 and "not found" in gone.stdout + gone.stderr
    assert _json(ok(_dn(dn_bin, env, "task", "list", "--json"))) == []


def test_dn_task_sync_of_a_directory(service, dn_bin, dn_env, tmp_path):
    env = scope_env(service, dn_env, f"sync-{uuid.uuid4().hex[:8]}")
    root = tmp_path / "tasks"
    for name in ("lab-one", "lab-two"):
        init_task(dn_bin, env, root, name)
    first = ok(_dn(dn_bin, env, "task", "sync", str(root)))
    assert "2 uploaded" in first, first
    second = ok(_dn(dn_bin, env, "task", "sync", str(root)))
    assert "0 uploaded" in second and "2 skipped" in second, second
    assert sorted(row["name"] for row in _json(ok(_dn(dn_bin, env, "task", "list", "--json")))) == [
        "lab-one",
        "lab-two",
    ]


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
def test_invalid_tasks_are_refused_at_push(service, dn_bin, dn_env, tmp_path, change, expected):
    env = scope_env(service, dn_env, f"bad-{uuid.uuid4().hex[:8]}")
    task = init_task(dn_bin, env, tmp_path, "bad-lab")
    change(task)
    pushed = _dn(dn_bin, env, "task", "push", str(task), "--skip-validate")
    assert pushed.returncode != 0, pushed.stdout
    assert "400" in pushed.stdout + pushed.stderr and expected in pushed.stdout + pushed.stderr
    assert _json(ok(_dn(dn_bin, env, "task", "list", "--json"))) == [], "a refused task is not stored"


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))

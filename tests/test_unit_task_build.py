"""Lazy task builds, pure parts: the build context a service gets, image names, and the engine's
progress stream read as hostile input (bounded, never an exception)."""

import io
import json
import tarfile

from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_compose import ComposeBuild
from taskenv.shared.task_store import TaskVersion
from taskenv.worker.task_build import _messages, build_context, image_tag, services

FILES = TaskFiles(
    files={
        "task.yaml": b"name: x\n",
        "docker-compose.yaml": (
            b"services:\n  web:\n    build: {context: ./web, target: final}\n  db:\n    image: db:1\n"
        ),
        "web/Dockerfile": b"FROM scratch\n",
        "web/app/main.py": b"print(1)\n",
        "webby/other": b"not in the context\n",
    },
    links={"web/current": "app"},
)


def members(context: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {member.name: member for member in tar}


def test_a_context_holds_only_its_directory():
    context, dockerfile = build_context(FILES, ComposeBuild(context="./web"))
    found = members(context)
    assert sorted(found) == ["Dockerfile", "app/main.py", "current"]
    assert found["current"].issym() and found["current"].linkname == "app"
    assert dockerfile == "Dockerfile"


def test_the_root_context_and_an_inline_dockerfile():
    context, dockerfile = build_context(FILES, ComposeBuild(context=".", dockerfile_inline="FROM scratch\n"))
    found = members(context)
    assert "task.yaml" in found and "webby/other" in found and dockerfile in found


def test_services_are_read_from_the_compose_file():
    plans = {plan.name: plan for plan in services(FILES)}
    assert plans["web"].build == ComposeBuild(context="./web", target="final")
    assert plans["db"].build is None and plans["db"].image == "db:1"


def test_image_tags_are_valid_and_named_by_content():
    version = TaskVersion(
        org="Acme",
        name="web-lab",
        version="1.0.0",
        created_at=0,
        manifest="{}",
        manifest_digest="sha256:" + "0" * 64,
        config_digest="sha256:" + "1" * 64,
        oci_digest="sha256:" + "ab" * 32,
        size=1,
        instruction="x",
        verification_method="flag",
    )
    assert image_tag(version, "Web Server!") == "taskenv-task/web-lab:web-server-abababababababab"


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_chunked(self, size: int):
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


async def _read(chunks: list[bytes]) -> list[dict]:
    return [message async for message in _messages(_Response(chunks))]


async def test_progress_messages_split_across_chunks_and_garbage_skipped():
    line = json.dumps({"stream": "Step 1/2 : FROM scratch\n"}).encode()
    found = await _read(
        [line[:10], line[10:] + b"\r\n{not json}\n[1,2]\n", json.dumps({"error": "boom"}).encode() + b"\n"]
    )
    assert found == [{"stream": "Step 1/2 : FROM scratch\n"}, {"error": "boom"}]


async def test_an_endless_line_is_dropped_not_kept():
    flood = [b"x" * 65536 for _ in range(16)] + [b"\n" + json.dumps({"stream": "after"}).encode() + b"\n"]
    assert await _read(flood) == [{"stream": "after"}]

"""`taskenv task push|ls|info|rm`: the task registry for operators, straight through Redis (no
API key): a directory is packed as `dn task push` packs it (the same bytes, so the same
`oci_digest`), validated by the same rules as the OCI route, and stored for an org."""

import json
from pathlib import Path
from typing import Annotated

import typer

from taskenv.cli import failures
from taskenv.cli.failures import Refused
from taskenv.cli.table import table
from taskenv.shared import task_archive, task_store, task_yaml
from taskenv.shared.redis import arq_client
from taskenv.shared.scripts import BlobOutcome
from taskenv.shared.settings import Settings
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_oci import (
    ANNOTATION_NAME,
    ANNOTATION_TYPE,
    ANNOTATION_VERSION,
    MEDIA_CONFIG,
    MEDIA_LAYER_TAR_GZ,
    MEDIA_OCI_MANIFEST,
)
from taskenv.shared.task_push import config_blob, store_version
from taskenv.shared.task_refs import TaskRef, visible_version
from taskenv.shared.task_store import TaskVersion

task_app = typer.Typer(no_args_is_help=True, help="The task registry (what `dn task push` stores).")
# What `dn task push` leaves out of a task's archive.
EXCLUDED_PARTS = frozenset({".git", "__pycache__", ".DS_Store", "dist", ".venv", "node_modules"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
ORG_OPTION = typer.Option(..., "--org", help="The organization the task belongs to")


def read_directory(directory: Path, max_bytes: int) -> TaskFiles:
    """The task's regular files (symbolic links followed only inside the directory)."""
    root = directory.resolve()
    if not (root / "task.yaml").is_file():
        raise Refused(f"{directory} has no task.yaml")
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (
            not path.is_file()
            or set(relative.parts) & EXCLUDED_PARTS
            or path.name.endswith(EXCLUDED_SUFFIXES)
        ):
            continue
        if not path.resolve().is_relative_to(root):
            raise Refused(f"{relative} links outside the task directory")
        files[relative.as_posix()] = path.read_bytes()
        modes[relative.as_posix()] = path.stat().st_mode & 0o755
        if sum(map(len, files.values())) > max_bytes:
            raise Refused(f"{directory} is over {max_bytes} bytes (TASKENV_MAX_TASK_BYTES)")
    return TaskFiles(files=files, modes=modes)


def manifest_of(raw: dict[str, object], name: str, config: bytes, layer: bytes) -> bytes:
    descriptor = {"mediaType": MEDIA_CONFIG, "digest": task_archive.digest(config), "size": len(config)}
    layer_descriptor = {
        "mediaType": MEDIA_LAYER_TAR_GZ,
        "digest": task_archive.digest(layer),
        "size": len(layer),
    }
    annotations = {
        ANNOTATION_TYPE: "environment",
        ANNOTATION_NAME: name,
        ANNOTATION_VERSION: str(raw.get("version")),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": descriptor,
        "layers": [layer_descriptor],
        "annotations": annotations,
    }
    return json.dumps(manifest, indent=2).encode()


async def push(settings: Settings, directory: Path, org: str, *, public: bool) -> tuple[TaskVersion, bool]:
    files = read_directory(directory, settings.max_task_bytes)
    try:
        raw = task_yaml.load(files.text("task.yaml") or "")
    except task_yaml.YamlError as exc:
        raise Refused(f"task.yaml: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise Refused("task.yaml must be a mapping with a name")
    layer, config = task_archive.pack(files), config_blob(raw)
    redis = arq_client(settings)  # a bytes client: blobs are binary
    try:
        for data in (config, layer):
            stored = await task_store.put_blob(
                redis,
                org,
                task_archive.digest(data),
                data,
                budget_bytes=settings.task_storage_bytes,
                pending_ttl_sec=task_store.UPLOAD_TTL_SEC,
            )
            if stored is BlobOutcome.OVER_BUDGET:
                raise Refused(f"{org}'s task storage is full (TASKENV_TASK_STORAGE_BYTES)")
        body = manifest_of(raw, raw["name"], config, layer)
        version, created = await store_version(
            redis, org=org, name=raw["name"], reference=str(raw.get("version")), body=body,
            max_task_bytes=settings.max_task_bytes,
        )  # fmt: skip
        if public:
            await task_store.set_public(redis, org, version.name, True)
        return version, created
    finally:
        await redis.aclose()


async def listed(settings: Settings, org: str | None) -> list[tuple[TaskVersion, bool, int]]:
    """(newest version, public, number of versions) of each task of `org`, or of every org."""
    redis = arq_client(settings)
    try:
        public = set(await task_store.public_names(redis))
        rows = []
        for owner in [org] if org else await task_store.orgs(redis):
            for name in await task_store.names(redis, owner):
                latest = await task_store.latest(redis, owner, name)
                if latest is not None:
                    count = len(await task_store.versions(redis, owner, name))
                    rows.append((latest, (owner, name) in public, count))
        return rows
    finally:
        await redis.aclose()


async def found(settings: Settings, org: str, ref: str) -> tuple[TaskVersion, bool]:
    """The version `ref` names as `org` sees it, and whether its name is public."""
    parsed = TaskRef.parse(ref)
    redis = arq_client(settings)
    try:
        version = await visible_version(redis, org, parsed.org or org, parsed.name, parsed.version)
        public = version is not None and await task_store.is_public(redis, version.org, version.name)
    finally:
        await redis.aclose()
    if version is None:
        raise Refused(f"no task {ref} in {org}")
    return version, public


async def remove(settings: Settings, org: str, ref: str) -> str:
    if TaskRef.parse(ref).version is None:
        raise Refused("name the version to delete: NAME@VERSION")
    version, _ = await found(settings, org, ref)
    redis = arq_client(settings)
    try:
        await task_store.delete_version(redis, version)
    finally:
        await redis.aclose()
    return f"deleted {version.qualified_name}@{version.version}"


@task_app.command("push")
def push_command(
    directory: Annotated[Path, typer.Argument(help="A task directory (task.yaml, docker-compose.yaml)")],
    org: str = ORG_OPTION,
    public: bool = typer.Option(False, "--public", help="Also make the task visible to other orgs"),
) -> None:
    """Validate a task directory and store it as its org's version (refused if invalid)."""
    settings = failures.settings()
    version, created = failures.run(push(settings, directory, org, public=public), settings)
    shown = f"{version.qualified_name}@{version.version}"
    typer.echo(f"pushed {shown} ({version.oci_digest})" if created else f"{shown} already up to date")


@task_app.command("ls")
def ls_command(
    org: str = typer.Option(None, "--org", help="Only this org's tasks"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
) -> None:
    """Tasks: org, name, newest version, visibility, number of versions."""
    from taskenv.api.task_routes import task_json

    settings = failures.settings()
    rows = failures.run(listed(settings, org), settings)
    if as_json:
        typer.echo(
            json.dumps([task_json(v, is_public=public) | {"versions": n} for v, public, n in rows], indent=2)
        )
        return
    cells = [[v.org, v.name, v.version, "public" if public else "private", str(n)] for v, public, n in rows]
    typer.echo(table(cells, ["ORG", "NAME", "LATEST", "VISIBILITY", "VERSIONS"]) if cells else "no task")


@task_app.command("info")
def info_command(
    ref: Annotated[str, typer.Argument(help="[org/]name[@version]")],
    org: str = ORG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of text"),
) -> None:
    """One task version: what `dn task info --json` shows."""
    from taskenv.api.task_routes import task_json

    settings = failures.settings()
    version, public = failures.run(found(settings, org, ref), settings)
    detail = task_json(version, is_public=public)
    if as_json:
        typer.echo(json.dumps(detail, indent=2))
        return
    keys = (
        "org",
        "name",
        "version",
        "description",
        "verification_method",
        "ports",
        "oci_digest",
        "created_at",
    )
    typer.echo("\n".join(f"{key}: {detail[key]}" for key in keys if detail[key] not in (None, {}, [])))
    typer.echo(f"\n{version.instruction.strip()}")


@task_app.command("rm")
def rm_command(ref: Annotated[str, typer.Argument(help="name@version")], org: str = ORG_OPTION) -> None:
    """Delete a task version (its archive is freed once no version names it)."""
    settings = failures.settings()
    typer.echo(failures.run(remove(settings, org, ref), settings))

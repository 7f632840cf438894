"""`taskenv secrets create|ls|rm`: an org's secrets for operators, straight through Redis
(shared/secrets_store.py). A value is read from stdin (or a hidden prompt) unless `--value`
gives it, so it does not sit in shell history; it is never printed.

The key that seals values is TASKENV_SECRETS_KEY; for the instance `taskenv up` runs, the one
it keeps in its home (`secrets.key`, made at its first start) unless that variable is set.
"""

import json
import sys
from pathlib import Path

import typer

from taskenv.cli import failures, instance
from taskenv.cli.failures import Refused
from taskenv.cli.table import table
from taskenv.shared import secrets_store
from taskenv.shared.redis import records_client
from taskenv.shared.sealing import Sealer, new_key, optional
from taskenv.shared.secret_models import shown
from taskenv.shared.secrets_store import SecretInfo
from taskenv.shared.settings import Settings

secrets_app = typer.Typer(no_args_is_help=True, help="An org's secrets (values write-only).")
ORG_OPTION = typer.Option(..., "--org", help="The organization the secret belongs to")
KEY_FILE = "secrets.key"


def home_key_file(home: Path) -> Path:
    return home / KEY_FILE


def ensure_home_key(home: Path) -> str:
    """The home's secrets key, made (readable by its owner only) if it has none."""
    path = home_key_file(home)
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
    return path.read_text().strip()


def _sealer(settings: Settings) -> Sealer | None:
    key = settings.secrets_key
    path = home_key_file(instance.home())
    if not key and settings.redis_url == instance.embedded_redis_url() and path.is_file():
        key = path.read_text().strip()
    return optional(key)


def read_value(value: str | None) -> str:
    """`--value`, else a hidden prompt on a terminal, else stdin without its final newline."""
    if value is not None:
        return value
    if sys.stdin.isatty():
        return str(typer.prompt("Value", hide_input=True))
    text = sys.stdin.read()
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def _json(info: SecretInfo) -> str:
    return shown(info).model_dump_json(indent=2)


async def create(settings: Settings, org: str, name: str, value: str) -> SecretInfo:
    redis = records_client(settings)
    try:
        return await secrets_store.create(redis, _sealer(settings), org, name, value)
    finally:
        await redis.aclose()


async def listed(settings: Settings, org: str) -> list[SecretInfo]:
    redis = records_client(settings)
    try:
        return await secrets_store.listed(redis, org)
    finally:
        await redis.aclose()


async def remove(settings: Settings, org: str, secret_id: str) -> SecretInfo:
    redis = records_client(settings)
    try:
        found = {info.id: info for info in await secrets_store.listed(redis, org)}
        if secret_id not in found or not await secrets_store.delete(redis, org, secret_id):
            raise Refused(f"{org} has no secret with id {secret_id!r} (taskenv secrets ls --org {org})")
        return found[secret_id]
    finally:
        await redis.aclose()


@secrets_app.command("create")
def create_command(
    name: str = typer.Argument(..., help="Its name: the environment variable commands get it as"),
    org: str = ORG_OPTION,
    value: str = typer.Option(
        None, "--value", help="The value (else read from stdin: kept out of shell history)"
    ),
    from_stdin: bool = typer.Option(False, "--from-stdin", help="Read the value from stdin (the default)"),
    as_json: bool = typer.Option(False, "--json", help="JSON (the API's shape) instead of the id"),
) -> None:
    """Store a secret; print its id (what an environment's `secret_ids` names)."""
    if value is not None and from_stdin:
        raise typer.BadParameter("--value or --from-stdin, not both")
    settings = failures.settings()
    info = failures.run(create(settings, org, name, read_value(value)), settings)
    typer.echo(_json(info) if as_json else info.id)


@secrets_app.command("ls")
def list_command(
    org: str = ORG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="JSON (the API's format) instead of a table"),
) -> None:
    """List an org's secrets: id, name, times; never a value."""
    settings = failures.settings()
    found = failures.run(listed(settings, org), settings)
    if as_json:
        typer.echo(
            json.dumps({"secrets": [shown(i).model_dump() for i in found], "total": len(found)}, indent=2)
        )
        return
    rows = [[s.id, s.name, s.created_at, s.updated_at] for s in (shown(i) for i in found)]
    empty = f"no secret in {org} (taskenv secrets create NAME --org {org})"
    typer.echo(table(rows, ["ID", "NAME", "CREATED", "UPDATED"]) if rows else empty)


@secrets_app.command("rm")
def remove_command(
    secret_id: str = typer.Argument(..., help="The secret's id"), org: str = ORG_OPTION
) -> None:
    """Delete a secret; environments made with it keep their copy until they end."""
    settings = failures.settings()
    removed = failures.run(remove(settings, org, secret_id), settings)
    typer.echo(f"removed {removed.id} ({removed.name}) from {org}")

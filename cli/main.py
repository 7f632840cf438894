"""`taskenv`: one console script for operators."""

import asyncio
import logging

import typer
import uvicorn

from cli import instance

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="API keys, one per org and workspace.")
image_app = typer.Typer(no_args_is_help=True, help="The default task image.")
app.add_typer(keys_app, name="keys")
app.add_typer(image_app, name="image")


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def api(
    host: str = typer.Option(None, help="Bind address (default TASKENV_API_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, help="Port (default TASKENV_API_PORT, 8000)"),
    log_level: str = "info",
) -> None:
    """Run the HTTP API (one process; start more behind a balancer to scale)."""
    from api.app import create_app

    settings = instance.settings()
    _logging(log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=False,
        backlog=8192,
    )


@app.command()
def worker(log_level: str = "info") -> None:
    """Run one worker for this host's queue (TASKENV_QUEUE): it needs the Docker engine."""
    import uvloop

    from worker.runner import serve

    _logging(log_level)
    uvloop.run(serve(instance.settings()))


@app.command()
def up(
    workers: int = typer.Option(1, min=1, help="Worker processes"),
    org: str = typer.Option("local", help="Org of the API key printed at start"),
    workspace: str = typer.Option("main", help="Workspace of that key"),
) -> None:
    """Run everything with the embedded default: a private Redis, the workers, the API."""
    from cli.up import run

    _logging("info")
    raise typer.Exit(run(workers=workers, org=org, workspace=workspace))


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., help="Organization the key is for"),
    workspace: str = typer.Option(..., help="Workspace the key is for"),
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    from api.auth import create_api_key
    from shared.redis import records_client

    async def create() -> str:
        redis = records_client(instance.settings())
        try:
            return await create_api_key(redis, org, workspace)
        finally:
            await redis.aclose()

    typer.echo(asyncio.run(create()))


@image_app.command("build")
def image_build() -> None:
    """Build the `default` task's image offline from Debian's busybox-static."""
    from worker.docker import connect, disconnect
    from worker.image import build_default_image

    async def build() -> str:
        docker = connect()
        try:
            return await build_default_image(docker)
        finally:
            await disconnect(docker)

    typer.echo(f"built {asyncio.run(build())}")

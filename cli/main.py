"""`taskenv`: one console script for operators."""

import asyncio
import logging
import resource
from pathlib import Path

import typer
import uvicorn

from cli import instance

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="API keys, one per org and workspace.")
image_app = typer.Typer(no_args_is_help=True, help="The default task image.")
app.add_typer(keys_app, name="keys")
app.add_typer(image_app, name="image")
env_app = typer.Typer(no_args_is_help=True, help="Environments, across hosts.")
app.add_typer(env_app, name="env")


def _logging(level: str, **static: str) -> None:
    from shared.logs import configure

    configure(level, instance.settings().log_format, **static)


def _raise_open_files_limit() -> None:
    """Thousands of waiting requests, attached exec streams and Redis connections each hold a
    file descriptor: lift the soft limit (often 1024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@app.command()
def api(
    host: str = typer.Option(None, help="Bind address (default TASKENV_API_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, help="Port (default TASKENV_API_PORT, 8000)"),
    log_level: str = "info",
) -> None:
    """Run the HTTP API (one process; start more behind a balancer to scale)."""
    from api.app import create_app
    from api.http import envelope_protocol

    settings = instance.settings()
    _logging(log_level, service="api")
    _raise_open_files_limit()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        loop="uvloop",
        http=envelope_protocol(settings),
        log_level=log_level,
        log_config=None,  # uvicorn's own lines go through ours (JSON)
        access_log=False,
        backlog=8192,
    )


@app.command()
def worker(
    log_level: str = "info",
    drain: bool = typer.Option(
        False, "--drain", help="Do not start a worker: drain this host (no new provisions), wait for its jobs"
    ),
    undrain: bool = typer.Option(False, "--undrain", help="Do not start a worker: end this host's drain"),
) -> None:
    """Run one worker process of this host (TASKENV_HOST_ID): it needs the Docker engine."""
    import uvloop

    settings = instance.settings()
    if drain or undrain:
        from cli.cluster import set_draining

        raise typer.Exit(asyncio.run(set_draining(settings, drain=drain)))
    from worker.process import serve

    _logging(log_level, service="worker", host=settings.host_id)
    _raise_open_files_limit()
    uvloop.run(serve(settings))


@app.command()
def up(
    workers: int = typer.Option(1, min=1, help="Worker processes"),
    org: str = typer.Option("local", help="Org of the API key printed at start"),
    workspace: str = typer.Option("main", help="Workspace of that key"),
) -> None:
    """Run everything with the embedded default: a private Redis, the workers, the API."""
    from cli.up import run

    _logging("info")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise typer.Exit(run(workers=workers, org=org, workspace=workspace))


@app.command()
def bench(
    url: str = typer.Option(
        "http://127.0.0.1:8000", "--url", help="Base URL of the running taskenv (loopback only)"
    ),
    api_key: str = typer.Option(
        "", "--api-key", envvar="TASKENV_KEY", help="API key of the org and workspace"
    ),
    org: str = typer.Option("local", help="Org of the API key"),
    workspace: str = typer.Option("main", help="Workspace of the API key"),
    task_ref: str = typer.Option("default", help="Task the environments run"),
    envs: int = typer.Option(4, "--envs", "-k", min=1, help="Environments the execs are spread over"),
    execs: int = typer.Option(200, "--execs", "-m", min=0, help="Measured execs per side (0: none)"),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, help="Execs in flight per side"),
    warmup: int = typer.Option(20, min=0, help="Uncounted execs per side before measuring"),
    rounds: int = typer.Option(
        4, min=1, help="Measure execs and provisions in this many rounds, the sides alternating"
    ),
    workload: str = typer.Option(
        "true", help="Command to run: true, echo, 64k (64 KiB of output), sleep (0.2 s)"
    ),
    command: str = typer.Option(
        None, help="Run this shell command instead of --workload (answers unchecked)"
    ),
    timeout_sec: int = typer.Option(30, min=1, help="timeout_sec of each exec"),
    provisions: int = typer.Option(
        10, "--provisions", "-n", min=0, help="Provisions timed per side (0: none)"
    ),
    provision_concurrency: int = typer.Option(10, min=1, help="Provisions in flight per side"),
    poll_ms: float = typer.Option(10.0, help="Status poll interval: the resolution of provision latency"),
    hold: int = typer.Option(0, min=0, help="Also hold this many execs at once (0: no hold phase)"),
    hold_sleep: float = typer.Option(5.0, help="Seconds each held exec sleeps"),
    hold_timeout: int = typer.Option(60, min=1, help="timeout_sec of each held exec"),
    hold_ramp: float = typer.Option(2.0, min=0, help="Seconds over which the held execs' connections open"),
    api_pid: int = typer.Option(None, help="PID of the API process, to sample its RSS during the hold"),
    max_seconds: float = typer.Option(600.0, help="Stop, clean up and report after this long"),
    json_path: str = typer.Option(None, "--json", help="Write the figures to this JSON file"),
    plot_path: str = typer.Option(None, "--plot", help="Draw the latency distributions to this PNG"),
) -> None:
    """Load a running taskenv and, as the baseline, the same Docker engine directly; compare."""
    from bench.config import BenchConfig
    from bench.main import run
    from bench.workloads import WorkloadName, resolve

    try:
        chosen = resolve(WorkloadName(workload), command)
    except ValueError:
        raise typer.BadParameter(f"unknown workload {workload!r}", param_hint="--workload") from None
    config = BenchConfig(
        base_url=url,
        api_key=api_key,
        org=org,
        workspace=workspace,
        task_ref=task_ref,
        envs=envs,
        execs=execs,
        concurrency=concurrency,
        warmup=warmup,
        rounds=rounds,
        workload=chosen,
        timeout_sec=timeout_sec,
        provisions=provisions,
        provision_concurrency=provision_concurrency,
        poll_sec=poll_ms / 1000,
        hold=hold,
        hold_sleep_sec=hold_sleep,
        hold_timeout_sec=hold_timeout,
        hold_ramp_sec=hold_ramp,
        api_pid=api_pid,
        max_seconds=max_seconds,
    )
    raise typer.Exit(
        run(
            config,
            json_path=Path(json_path) if json_path else None,
            plot_path=Path(plot_path) if plot_path else None,
        )
    )


@app.command("hosts")
def hosts_list(as_json: bool = typer.Option(False, "--json", help="JSON instead of a table")) -> None:
    """List the hosts: state (up, silent, lost, stopped; draining), workers, environments, load."""
    from cli.cluster import list_hosts

    typer.echo(asyncio.run(list_hosts(instance.settings(), as_json)))


@env_app.command("ls")
def env_ls(
    host: str = typer.Option(None, help="Only this host's"),
    state: str = typer.Option(None, help="Only in this state"),
    org: str = typer.Option(None, help="Only this org's"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
) -> None:
    """List environments across hosts, orgs and workspaces."""
    from cli.cluster import list_environments

    settings = instance.settings()
    typer.echo(asyncio.run(list_environments(settings, host=host, state=state, org=org, as_json=as_json)))


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., help="Organization the key is for"),
    workspace: str = typer.Option(..., help="Workspace the key is for"),
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from cli.operations import create_key

    settings = instance.settings()
    try:
        typer.echo(create_key(settings, org, workspace))
    except RedisConnectionError as exc:
        typer.echo(
            f"cannot reach Redis at {settings.redis_url} ({exc}):"
            " start `taskenv up`, or set TASKENV_REDIS_URL",
            err=True,
        )
        raise typer.Exit(1) from None


@image_app.command("build")
def image_build() -> None:
    """Build the `default` task's image offline from Debian's busybox-static."""
    from cli.operations import build_image
    from shared.tasks import DEFAULT_IMAGE

    build_image(only_if_missing=False)
    typer.echo(f"built {DEFAULT_IMAGE}")

"""`taskenv`: one console script for operators. Exit codes: 0 done, 1 could not (one line on
stderr says why), 2 a usage error."""

import os
import resource
from pathlib import Path
from typing import Annotated

import typer

from taskenv.cli import failures, instance
from taskenv.cli.secrets import secrets_app
from taskenv.cli.tasks import task_app
from taskenv.shared.models import EnvironmentState

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="API keys, one per org and workspace.")
image_app = typer.Typer(no_args_is_help=True, help="The default task image.")
app.add_typer(keys_app, name="keys")
app.add_typer(image_app, name="image")
env_app = typer.Typer(no_args_is_help=True, help="Environments, across hosts.")
app.add_typer(env_app, name="env")
app.add_typer(task_app, name="task")
app.add_typer(secrets_app, name="secrets")


JSON_OPTION = typer.Option(False, "--json", help="JSON (the API's formats) instead of a table")
HOME_HELP = "The embedded instance's directory (default TASKENV_HOME, ~/.taskenv)"


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"taskenv {version('taskenv')}")
        raise typer.Exit


def _use_home(home: Path | None) -> None:
    if home is not None:
        os.environ[instance.HOME_VARIABLE] = str(home.expanduser().absolute())


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit"
    ),
    home: Annotated[Path | None, typer.Option("--home", help=HOME_HELP)] = None,
) -> None:
    """Options of every command."""
    _use_home(home)


def _logging(level: str, **static: str) -> None:
    from taskenv.shared.logs import configure

    configure(level, failures.settings().log_format, **static)


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
    import uvicorn

    from taskenv.api.app import create_app
    from taskenv.api.protocol import envelope_protocol

    settings = failures.settings()
    _logging(log_level, service="api")
    _raise_open_files_limit()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        loop="uvloop",
        http=envelope_protocol(settings),
        timeout_keep_alive=settings.keep_alive_sec,
        log_level=log_level,
        log_config=None,  # uvicorn's own lines go through ours (JSON)
        access_log=False,
        backlog=8192,
    )


@app.command()
def worker(
    log_level: str = "info",
    drain: bool = typer.Option(
        False, "--drain", help="Do not start a worker: drain a host (no new provisions), wait for its jobs"
    ),
    undrain: bool = typer.Option(False, "--undrain", help="Do not start a worker: end a host's drain"),
    host: str = typer.Option(None, "--host", help="The host to drain or undrain (default TASKENV_HOST_ID)"),
    check: bool = typer.Option(
        False, "--check", help="Do not start a worker: exit 0 if one of this machine heartbeats, else 1"
    ),
) -> None:
    """Run one worker process of this host (TASKENV_HOST_ID): it needs the Docker engine."""
    import uvloop

    settings = failures.settings()
    if drain and undrain:
        raise typer.BadParameter("--drain or --undrain, not both")
    if drain or undrain:
        from taskenv.cli.cluster import set_draining

        drained = set_draining(settings, host or settings.host_id, drain=drain)
        raise typer.Exit(failures.run(drained, settings))
    if check:
        from taskenv.cli.health import check_worker

        typer.echo(failures.run(check_worker(settings), settings))
        return
    from taskenv.worker.process import serve

    _logging(log_level, service="worker", host=settings.host_id)
    _raise_open_files_limit()
    uvloop.run(serve(settings))


@app.command()
def up(
    workers: int = typer.Option(1, min=1, help="Worker processes"),
    port: int = typer.Option(None, min=1, max=65535, help="API port (default TASKENV_API_PORT, 8000)"),
    home: Annotated[Path | None, typer.Option("--home", help=HOME_HELP)] = None,
    org: str = typer.Option("local", help="Org of the API key made at a home's first start"),
    workspace: str = typer.Option("main", help="Workspace of that key"),
) -> None:
    """Run everything with the embedded default: a private Redis, the workers, the API. Their logs
    go to HOME/taskenv.log; a worker or the API that dies is restarted."""
    from taskenv.cli.up import run

    _use_home(home)
    raise typer.Exit(run(workers=workers, port=port, org=org, workspace=workspace))


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
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of tables"),
    out_path: str = typer.Option(None, "--out", help="Also write the figures to this JSON file"),
    plot_path: str = typer.Option(None, "--plot", help="Draw the latency distributions to this PNG"),
) -> None:
    """Load a running taskenv and, as the baseline, the same Docker engine directly; compare."""
    try:
        from taskenv.bench.config import BenchConfig
        from taskenv.bench.main import run
        from taskenv.bench.workloads import WorkloadName, resolve
    except ModuleNotFoundError as missing:
        failures.fail(f"taskenv bench is not in this installation ({missing}): run it from a checkout")

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
            as_json=as_json,
            json_path=Path(out_path) if out_path else None,
            plot_path=Path(plot_path) if plot_path else None,
        )
    )


@app.command("hosts")
def hosts_list(as_json: bool = JSON_OPTION) -> None:
    """List the hosts: state (up, silent, lost, stopped; draining), workers, environments, load."""
    from taskenv.cli.cluster import list_hosts

    settings = failures.settings()
    typer.echo(failures.run(list_hosts(settings, as_json), settings))


@env_app.command("ls")
def env_ls(
    host: str = typer.Option(None, help="Only this host's"),
    state: Annotated[EnvironmentState | None, typer.Option(help="Only in this state")] = None,
    org: str = typer.Option(None, help="Only this org's"),
    as_json: bool = JSON_OPTION,
) -> None:
    """List environments across hosts, orgs and workspaces."""
    from taskenv.cli.environments import list_environments

    settings = failures.settings()
    listed = list_environments(settings, host=host, state=state, org=org, as_json=as_json)
    typer.echo(failures.run(listed, settings))


@env_app.command("get")
def env_get(env_id: str, as_json: bool = JSON_OPTION) -> None:
    """One environment: state, host, org and workspace, times, container."""
    from taskenv.cli.environments import get_environment

    settings = failures.settings()
    typer.echo(failures.run(get_environment(settings, env_id, as_json=as_json), settings))


@env_app.command("rm")
def env_rm(env_ids: Annotated[list[str], typer.Argument(metavar="ENV_ID...")]) -> None:
    """Tear environments down and remove their containers, as the API's DELETE does."""
    from taskenv.cli.environments import remove

    settings = failures.settings()
    for env_id in env_ids:
        typer.echo(failures.run(remove(settings, env_id), settings))


@env_app.command("exec", context_settings={"allow_interspersed_args": False})
def env_exec(
    env_id: str,
    command: Annotated[list[str], typer.Argument(metavar="COMMAND...", help="Run by sh -c, as the API does")],
    timeout_sec: int = typer.Option(30, "--timeout", min=1, help="Seconds before the command is killed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a command in an environment (on its host's worker, as the API's execute does) and exit
    with its exit code."""
    from taskenv.cli.environments import execute

    settings = failures.settings()
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise typer.BadParameter("no command given", param_hint="COMMAND")
    answer = failures.run(execute(settings, env_id, " ".join(command), timeout_sec), settings)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    typer.echo(answer.output, nl=False)
    raise typer.Exit(answer.exit_code)


@env_app.command("logs")
def env_logs(env_id: str, as_json: bool = JSON_OPTION) -> None:
    """The container's log tail, in any state, failed included, while its container exists."""
    from taskenv.cli.environments import logs
    from taskenv.shared.models import LogsResponse

    settings = failures.settings()
    text = failures.run(logs(settings, env_id), settings)
    typer.echo(LogsResponse(logs=text).model_dump_json(indent=2) if as_json else text, nl=as_json)


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., help="Organization the key is for"),
    workspace: str = typer.Option(..., help="Workspace the key is for"),
    as_json: bool = typer.Option(False, "--json", help="JSON: the key, its id, org and workspace"),
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    import json

    from taskenv.cli.keys import create
    from taskenv.shared.apikeys import key_id
    from taskenv.shared.secrets import hash_secret

    settings = failures.settings()
    key = failures.run(create(settings, org, workspace), settings)
    if as_json:
        shown = {"key": key, "id": key_id(hash_secret(key)), "org": org, "workspace": workspace}
        typer.echo(json.dumps(shown, indent=2))
    else:
        typer.echo(key)


@keys_app.command("ls")
def keys_ls(org: str = typer.Option(None, help="Only this org's"), as_json: bool = JSON_OPTION) -> None:
    """List API keys: id (the start of its hash), org, workspace, created; never the key."""
    from taskenv.cli.keys import list_keys

    settings = failures.settings()
    typer.echo(failures.run(list_keys(settings, org, as_json=as_json), settings))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id, or its first 6+ characters")) -> None:
    """Revoke an API key: every API process refuses it from its next request on."""
    from taskenv.cli.keys import revoke

    settings = failures.settings()
    typer.echo(failures.run(revoke(settings, key_id), settings))


@image_app.command("build")
def image_build() -> None:
    """Build the `default` task's image offline from Debian's busybox-static."""
    from taskenv.cli.operations import build_image
    from taskenv.shared.tasks import DEFAULT_IMAGE

    failures.run(build_image(only_if_missing=False))
    typer.echo(f"built {DEFAULT_IMAGE}")

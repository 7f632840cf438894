"""The worker's Docker client and the errors it turns into 502s."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from taskenv.shared.errors import ErrorType, Reason, TaskenvError

_DEFAULT_SOCKETS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))


def connect() -> aiodocker.Docker:
    """A client without aiohttp's 100-connection cap: every running exec holds one attached
    stream, and inspect or kill calls must not queue behind them."""
    host = os.environ.get("DOCKER_HOST")
    if host is None:
        host = next((f"unix://{p}" for p in _DEFAULT_SOCKETS if p.is_socket()), None)
    if host and host.startswith("unix://"):
        connector = aiohttp.UnixConnector(host[len("unix://") :], limit=0)
        # With a connector of ours, the URL only names the host in request lines.
        return aiodocker.Docker(url="unix://localhost", connector=connector)
    return aiodocker.Docker(url=host)


# aiodocker's status for a request that never reached the engine.
UNREACHABLE = 900
# The reason of a 502 when an environment's container was removed or stopped outside taskenv:
# the environment is `failed` from then on.
CONTAINER_GONE = Reason.CONTAINER_GONE


def bad_gateway(exc: BaseException, what: str) -> TaskenvError:
    if isinstance(exc, aiodocker.DockerError) and exc.status != UNREACHABLE:
        # The engine's own words name the missing thing: "No such container: ...", "No such image: ...".
        detail = f"{what}: Docker engine answered {exc.status}: {exc.message}"
    elif isinstance(exc, aiodocker.DockerError):
        detail = f"{what}: Docker engine unreachable ({exc.message})"
    else:
        detail = f"{what}: Docker engine unreachable ({type(exc).__name__}: {exc})"
    return TaskenvError(ErrorType.BAD_GATEWAY, detail)


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Docker failures reach the client as 502 `bad_gateway_error`, never as a 500."""
    try:
        yield
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        raise bad_gateway(exc, what) from exc


async def disconnect(docker: aiodocker.Docker) -> None:
    """Close the client and the connector `connect` gave it (aiodocker leaves a caller's open)."""
    await docker.close()
    if not docker.connector.closed:
        await docker.connector.close()


def read_only_volume(volume: str, target: str) -> dict[str, Any]:
    """A mount of the engine-managed `volume` at `target`, read-only, never filled from the image."""
    return {
        "Type": "volume",
        "Source": volume,
        "Target": target,
        "ReadOnly": True,
        "VolumeOptions": {"NoCopy": True},
    }

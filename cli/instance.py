"""Where the embedded instance lives, so every `taskenv` command finds its Redis by itself.

`TASKENV_REDIS_URL` names a deployment's Redis explicitly. Without it, a command uses the
Redis that `taskenv up` runs in its home (`TASKENV_HOME`, or `--home`, default ~/.taskenv). A
home named explicitly that runs no instance is an error: falling back to the default URL would
quietly talk to whatever other deployment listens there.
"""

import os
from pathlib import Path

from taskenv.shared.settings import Settings

HOME_VARIABLE = "TASKENV_HOME"


class NoInstance(RuntimeError):
    """The home named has no running `taskenv up`."""


def home() -> Path:
    return Path(os.environ.get(HOME_VARIABLE, Path.home() / ".taskenv")).expanduser()


def redis_socket() -> Path:
    return home() / "redis.sock"


def embedded_redis_url() -> str:
    return f"unix://{redis_socket()}"


def log_file() -> Path:
    """Where `taskenv up` writes its children's logs."""
    return home() / "taskenv.log"


def settings() -> Settings:
    """Settings from the environment; without `TASKENV_REDIS_URL`, the running embedded
    instance's Redis."""
    if "TASKENV_REDIS_URL" in os.environ:
        return Settings()
    if redis_socket().is_socket():
        return Settings(redis_url=embedded_redis_url())
    if HOME_VARIABLE in os.environ:
        raise NoInstance(
            f"no taskenv instance in {home()} (no {redis_socket().name}): start `taskenv up --home {home()}`,"
            " or set TASKENV_REDIS_URL"
        )
    return Settings()

"""Where the embedded instance lives, so every `taskenv` command finds its Redis by itself."""

import os
from pathlib import Path

from shared.settings import Settings


def home() -> Path:
    return Path(os.environ.get("TASKENV_HOME", Path.home() / ".taskenv"))


def redis_socket() -> Path:
    return home() / "redis.sock"


def embedded_redis_url() -> str:
    return f"unix://{redis_socket()}"


def settings() -> Settings:
    """Settings from the environment; without `TASKENV_REDIS_URL`, the running embedded
    instance's Redis if there is one."""
    if "TASKENV_REDIS_URL" not in os.environ and redis_socket().is_socket():
        return Settings(redis_url=embedded_redis_url())
    return Settings()

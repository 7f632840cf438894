"""The one-shot operations that `taskenv up` and the operator commands share."""

import asyncio

from shared.settings import Settings


def create_key(settings: Settings, org: str, workspace: str) -> str:
    """A new API key for one org and workspace; only its hash is stored."""
    from api.auth import create_api_key
    from shared.redis import records_client

    async def create() -> str:
        redis = records_client(settings)
        try:
            return await create_api_key(redis, org, workspace)
        finally:
            await redis.aclose()

    return asyncio.run(create())


def build_image(*, only_if_missing: bool) -> bool:
    """Build the default task image offline; True if it was built."""
    from worker.docker import connect, disconnect
    from worker.image import build_default_image, image_exists

    async def build() -> bool:
        docker = connect()
        try:
            if only_if_missing and await image_exists(docker):
                return False
            await build_default_image(docker)
            return True
        finally:
            await disconnect(docker)

    return asyncio.run(build())

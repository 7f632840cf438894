"""The one-shot operation that `taskenv up` and `taskenv image build` share."""


async def build_image(*, only_if_missing: bool) -> bool:
    """Build the default task image offline; True if it was built."""
    from taskenv.worker.docker import connect, disconnect
    from taskenv.worker.image import build_default_image, image_exists

    docker = connect()
    try:
        if only_if_missing and await image_exists(docker):
            return False
        await build_default_image(docker)
        return True
    finally:
        await disconnect(docker)

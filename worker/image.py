"""The default task image, built offline: no registry is needed, only Debian's busybox-static.

The build context is made in memory: a `FROM scratch` Dockerfile and a root filesystem of one
static busybox plus its applet links, so the classic builder needs neither network nor RUN.
"""

import io
import subprocess
import tarfile
from pathlib import Path

import aiodocker

from taskenv.shared.tasks import DEFAULT_IMAGE

BUSYBOX = Path("/bin/busybox")
DOCKERFILE = b"""FROM scratch
COPY rootfs/ /
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
CMD ["/bin/sh"]
"""
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\n"
GROUP = b"root:x:0:\nsandbox:x:1000:\n"


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def build_context(busybox: Path = BUSYBOX) -> bytes:
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_file(tar, "Dockerfile", DOCKERFILE)
        for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev"):
            _add_dir(tar, f"rootfs/{directory}")
        _add_dir(tar, "rootfs/tmp", 0o1777)
        _add_file(tar, "rootfs/bin/busybox", busybox.read_bytes(), 0o755)
        _add_file(tar, "rootfs/etc/passwd", PASSWD)
        _add_file(tar, "rootfs/etc/group", GROUP)
        for applet in applets:
            if applet != "bin/busybox":
                link = tarfile.TarInfo(f"rootfs/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
                tar.addfile(link)
    return buffer.getvalue()


async def image_exists(docker: aiodocker.Docker, tag: str = DEFAULT_IMAGE) -> bool:
    try:
        await docker.images.inspect(tag)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def build_default_image(docker: aiodocker.Docker, tag: str = DEFAULT_IMAGE) -> str:
    try:
        context = build_context()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{BUSYBOX} is missing: install Debian's busybox-static") from exc
    await docker.images.build(
        fileobj=io.BytesIO(context), encoding="identity", tag=tag, rm=True, forcerm=True
    )
    return tag

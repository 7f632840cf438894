"""Build compose.yaml's images with no registry: for machines that reach none (this project's CI).

Two inputs a normal build downloads are made from this machine instead:
- the Python base image (`taskenv-python:3.11`): the Python that runs .venv (its standard library,
  pip and setuptools; at the same path, which its binary's RUNPATH names) on the files of the
  Debian packages its modules link to and of busybox-static, imported with `docker import`.
  (Debian's own python3.11 is 3.11.2, for which redis needs async-timeout, which .venv lacks);
- the dependency wheels (`.wheels/`, removed afterwards): the distributions installed in .venv,
  packed back into wheels (the same files, a fresh RECORD).
Then `docker-compose build` runs the repo's Dockerfile on them, exactly as an operator's build.

    .venv/bin/python scripts/offline_image.py [--redis]   # as root, with dockerd running

`--redis` also makes `taskenv-redis:7` from this machine's redis-server package: set
TASKENV_REDIS_IMAGE=taskenv-redis:7 to run compose.yaml without pulling `redis:7`.
"""

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".wheels"
BASE_IMAGE = "taskenv-python:3.11"
PYTHON = Path(sys.base_prefix)
PACKAGES = [
    "libc6", "libssl3", "libffi8", "zlib1g", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libreadline8",
    "libncursesw6", "libuuid1", "libexpat1", "ca-certificates", "busybox-static", "dash", "coreutils",
    "libc-bin", "passwd",
]  # fmt: skip
REDIS_IMAGE = "taskenv-redis:7"
REDIS_PACKAGES = ["redis-server", "redis-tools", "dash", "coreutils", "grep", "busybox-static"]
SITE_PACKAGES = PYTHON / "lib" / "python3.11" / "site-packages"
DEBIAN_WHEEL = Path("/usr/lib/python3/dist-packages/wheel")
SKIPPED = re.compile(r"^/usr/share/(doc|man|info|locale)/")
# Of the Python tree: its tests, GUI modules, caches and every third-party package but pip's own.
PYTHON_SKIPPED = re.compile(
    r"/(test|idlelib|tkinter|turtledemo|__pycache__)(/|$)"
    r"|/site-packages/(?!(pip|setuptools|pkg_resources|_distutils_hack)([-/.]|$))"
)
ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\ntaskenv:x:10001:10001::/app:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\ntaskenv:x:10001:\n",
}


def _installed(name: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
    return status.stdout.startswith("install ok installed")


def _depends(name: str) -> list[str]:
    fields = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", name], capture_output=True, text=True
    ).stdout
    found = []
    for alternatives in filter(None, (a.strip() for a in fields.split(","))):
        for choice in alternatives.split("|"):
            package = re.split(r"[ (]", choice.strip())[0].split(":")[0]
            if _installed(package):
                found.append(package)
                break
    return found


def _closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        package = todo.pop()
        if package not in seen:
            seen.add(package)
            todo += _depends(package)
    return seen


def _no_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def _real(path: str) -> str:
    """The path with its directories resolved: /bin/dash is /usr/bin/dash on merged-/usr Debian."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def base_rootfs(packages: set[str], *, with_python: bool = True) -> bytes:
    paths: set[str] = set()
    for package in sorted(packages):
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout
        paths.update(_real(p) for p in listed.splitlines() if p.startswith("/") and not SKIPPED.search(p))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for link in ("bin", "sbin", "lib", "lib64"):
            if os.path.islink(f"/{link}"):
                info = tarfile.TarInfo(link)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{link}")
                tar.addfile(info)
        made = {"bin", "sbin", "lib", "lib64", "tmp", "root", "app", *ETC}
        for parent in reversed(list(PYTHON.parents)[:-1]):
            info = tarfile.TarInfo(str(parent).lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            if info.name not in made:
                tar.addfile(info)
                made.add(info.name)
        for path in sorted(paths):
            if os.path.lexists(path) and path.lstrip("/") not in made:
                tar.add(path, arcname=path.lstrip("/"), recursive=False)
        for name, text in ETC.items():
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(PYTHON.rglob("*")) if with_python else []:
            if not PYTHON_SKIPPED.search(str(path)):
                tar.add(path, arcname=str(path).lstrip("/"), recursive=False)
        # setuptools builds the project's wheel with `wheel` (the offline build cannot fetch a
        # newer setuptools that would not need it): Debian's python3-wheel, pure Python.
        for path in sorted(DEBIAN_WHEEL.parent.glob("wheel*")) if with_python else []:
            target = SITE_PACKAGES / path.name
            tar.add(path, arcname=str(target).lstrip("/"), filter=_no_caches)
        for directory, mode in (("tmp", 0o1777), ("root", 0o755), ("app", 0o755)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
    return buffer.getvalue()


def _import(rootfs: bytes, tag: str, *changes: str) -> None:
    """`docker import` the root filesystem as `tag`, unless `tag` holds these very files already:
    every import would otherwise leave the previous image behind, untagged."""
    digest = hashlib.sha256(rootfs).hexdigest()
    label = '{{index .Config.Labels "taskenv.rootfs"}}'
    inspect = ["docker", "image", "inspect", "--format", label, tag]
    found = subprocess.run(inspect, capture_output=True, text=True)
    size = f"{len(rootfs) / 2**20:.0f} MiB of this machine's Debian packages"
    if found.stdout.strip() == digest:
        print(f"{tag} is up to date ({size})")
        return
    options = [arg for change in (*changes, f"LABEL taskenv.rootfs={digest}") for arg in ("--change", change)]
    imported = ["docker", "import", *options, "-", tag]
    subprocess.run(imported, input=rootfs, check=True, stdout=subprocess.DEVNULL)
    print(f"built {tag} ({size})")


def build_redis() -> None:
    """Redis from this machine's redis-server package, for compose.yaml's redis service
    (TASKENV_REDIS_IMAGE) where the official image cannot be pulled."""
    rootfs = base_rootfs(_closure(REDIS_PACKAGES), with_python=False)
    path = "ENV PATH=/usr/local/bin:/usr/bin:/bin"
    _import(rootfs, REDIS_IMAGE, path, "WORKDIR /data", 'CMD ["redis-server"]')


def build_base() -> None:
    rootfs = base_rootfs(_closure(PACKAGES))
    _import(rootfs, BASE_IMAGE, f"ENV PATH={PYTHON}/bin:/usr/local/bin:/usr/bin:/bin", 'CMD ["python3"]')


def _runtime_closure(name: str) -> list[Distribution]:
    """The installed distributions `name` needs at run time, extras it asks for included."""
    found: dict[str, Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "")]
    while todo:
        wanted, extra = todo.pop()
        key = re.sub(r"[-_.]+", "-", wanted).lower()
        if (key, extra) in done:
            continue
        done.add((key, extra))
        dist = found.setdefault(key, distribution(wanted))
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, ""), *((requirement.name, e) for e in requirement.extras)]
    found.pop("taskenv", None)
    return list(found.values())


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(dist: Distribution, into: Path) -> Path:
    """The installed distribution as the wheel it was installed from (same files, new RECORD)."""
    tags = [line[5:] for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag: ")]
    # The compressed tag set of its WHEEL file (py2.py3-none-any), as its file name had it.
    parts = [list(dict.fromkeys(t.split("-")[i] for t in tags)) for i in range(3)]
    tag = "-".join(".".join(part) for part in parts)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = into / f"{name}-{dist.version}-{tag}.whl"
    site = Path(str(dist.locate_file("")))
    records = []
    record_name = ""
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or []:
            text = str(file)
            if (
                text.startswith("..")
                or "__pycache__" in text
                or text.endswith(("INSTALLER", "direct_url.json"))
            ):
                continue
            if text.endswith(".dist-info/RECORD"):
                record_name = text
                continue
            data = (site / text).read_bytes()
            archive.writestr(_entry(text), data)
            records.append(f"{text},{_record_hash(data)},{len(data)}")
        records.append(f"{record_name},,")
        archive.writestr(_entry(record_name), "\n".join(records) + "\n")
    return wheel


def _entry(name: str) -> zipfile.ZipInfo:
    """A wheel's member with a fixed time: the same files make the same wheel, byte for byte, so
    the Dockerfile's layer that installs them is taken from the build cache (`writestr` with a
    bare name stamps the current time, which made every build reinstall every dependency)."""
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = 0o644 << 16
    return entry


def build_wheels() -> None:
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir()
    made = [repack(dist, WHEELS) for dist in _runtime_closure("taskenv")]
    print(f"packed {len(made)} wheels from .venv into {WHEELS.name}/")


def main() -> int:
    if "--redis" in sys.argv:
        build_redis()
    build_base()
    build_wheels()
    env = {
        **os.environ,
        "TASKENV_PYTHON_IMAGE": BASE_IMAGE,
        "TASKENV_PIP_OPTIONS": "--no-index --no-build-isolation",
        "TASKENV_REDIS_PASSWORD": os.environ.get("TASKENV_REDIS_PASSWORD", "build-only"),
    }
    try:
        built = subprocess.run(["docker-compose", "-f", str(ROOT / "compose.yaml"), "build", "api"], env=env)
    finally:
        shutil.rmtree(WHEELS, ignore_errors=True)
    return built.returncode


if __name__ == "__main__":
    sys.exit(main())

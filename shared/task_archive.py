"""A task archive (the tar.gz layer `dn task push` uploads) read as hostile input.

Decompression is bounded by bytes produced, not by the compressed size (a gzip bomb stops at the
cap), and the tar is then read member by member with every way out of the task directory refused:
absolute paths, `..`, links (symbolic or hard) whose target leaves it, device files and FIFOs,
duplicate or conflicting paths. Nothing is ever written to disk: the result is the files in
memory, which validation reads and a worker packs again into a build context.
"""

import gzip
import hashlib
import io
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field

MAX_MEMBERS = 10_000
MAX_PATH_CHARS = 1024
_CHUNK = 64 * 1024


class ArchiveError(ValueError):
    """The archive is refused; the message says why (it reaches the pusher as a 4xx)."""


@dataclass(frozen=True)
class TaskFiles:
    """A task directory: regular files by path (relative, normalised, `/`-separated) with their
    mode, and symbolic links by path with their target (inside the directory)."""

    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def text(self, path: str) -> str | None:
        data = self.files.get(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def is_file(self, path: str) -> bool:
        return normalise(path) in self.files

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def gunzip(blob: bytes, max_bytes: int) -> bytes:
    """The decompressed bytes of one gzip member, refused past `max_bytes` of output."""
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    out = bytearray()
    pending = blob
    try:
        # Each round consumes input or produces output, at most `max_bytes + 1` of it.
        while not inflater.eof:
            chunk = inflater.decompress(pending, max_bytes + 1 - len(out))
            out += chunk
            if len(out) > max_bytes:
                raise ArchiveError(f"the archive expands past {max_bytes} bytes")
            progressed = bool(chunk) or len(inflater.unconsumed_tail) < len(pending)
            pending = inflater.unconsumed_tail
            if not progressed:
                break
    except zlib.error as exc:
        raise ArchiveError(f"the archive is not valid gzip: {exc}") from None
    if not inflater.eof:
        raise ArchiveError("the archive is not valid gzip: truncated")
    if inflater.unused_data.strip(b"\0"):
        raise ArchiveError("the archive has data after its gzip stream")
    return bytes(out)


def read(blob: bytes, max_bytes: int) -> TaskFiles:
    """The task directory in a tar.gz of at most `max_bytes` compressed and uncompressed."""
    if len(blob) > max_bytes:
        raise ArchiveError(f"the archive is over {max_bytes} bytes")
    raw = gunzip(blob, max_bytes)
    try:
        return _read_tar(raw)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as exc:
        raise ArchiveError(f"the archive is not a valid tar: {exc}") from None


def normalise(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/")).lstrip("/") if path else ""


def _read_tar(raw: bytes) -> TaskFiles:
    result = TaskFiles()
    directories: set[str] = set()
    hard_links: list[tarfile.TarInfo] = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise ArchiveError(f"the archive has more than {MAX_MEMBERS} entries")
            path = _member_path(member.name)
            if path is None:
                continue  # the root itself ("." or "./")
            _check_kind(member, path)
            _check_unique(path, result, directories)
            if member.isdir():
                directories.add(path)
            elif member.issym():
                result.links[path] = _link_target(path, member.linkname)
            elif member.islnk():
                hard_links.append(member)
            else:
                content = tar.extractfile(member)
                data = content.read() if content is not None else b""
                result.files[path] = data
                result.modes[path] = member.mode & 0o755
    for member in hard_links:
        _copy_hard_link(member, result)
    return result


def _member_path(name: str) -> str | None:
    if len(name) > MAX_PATH_CHARS:
        raise ArchiveError(f"an entry's path is over {MAX_PATH_CHARS} characters")
    if "\0" in name:
        raise ArchiveError("an entry's path contains a NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"absolute path in the archive: {name!r}")
    if ".." in name.replace("\\", "/").split("/"):
        raise ArchiveError(f"path leaves the task directory: {name!r}")
    path = normalise(name)
    return None if path in ("", ".") else path


def _check_kind(member: tarfile.TarInfo, path: str) -> None:
    if member.issparse():
        # A sparse member claims any size its map says: reading it would allocate that much.
        raise ArchiveError(f"sparse file in the archive: {path!r}")
    if member.ischr() or member.isblk():
        raise ArchiveError(f"device file in the archive: {path!r}")
    if member.isfifo():
        raise ArchiveError(f"FIFO in the archive: {path!r}")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise ArchiveError(f"unsupported entry type in the archive: {path!r}")


def _check_unique(path: str, result: TaskFiles, directories: set[str]) -> None:
    if path in result.files or path in result.links:
        raise ArchiveError(f"the archive holds {path!r} twice")
    parent = posixpath.dirname(path)
    while parent:
        if parent in result.files or parent in result.links:
            raise ArchiveError(f"{path!r} is below {parent!r}, which is not a directory")
        parent = posixpath.dirname(parent)


def _link_target(path: str, target: str) -> str:
    if target.startswith("/") or not target:
        raise ArchiveError(f"link leaves the task directory: {path!r} -> {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(f"link leaves the task directory: {path!r} -> {target!r}")
    return target


def _copy_hard_link(member: tarfile.TarInfo, result: TaskFiles) -> None:
    """A hard link becomes a copy of a regular file stored earlier in the same archive."""
    path = normalise(member.name)
    target = _member_path(member.linkname)
    if target is None or target not in result.files:
        raise ArchiveError(f"hard link to a file outside the archive: {path!r} -> {member.linkname!r}")
    result.files[path] = result.files[target]
    result.modes[path] = result.modes[target]


def pack(files: TaskFiles) -> bytes:
    """A deterministic tar.gz of `files` (the same bytes for the same files): how `taskenv task
    push` uploads a directory, and a worker's build context."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(set(files.files) | set(files.links)):
            info = tarfile.TarInfo(path)
            if path in files.links:
                info.type = tarfile.SYMTYPE
                info.linkname = files.links[path]
                tar.addfile(info)
                continue
            data = files.files[path]
            info.size = len(data)
            info.mode = files.modes.get(path, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()

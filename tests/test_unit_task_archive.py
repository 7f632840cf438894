"""Task archives as hostile input: every way out of the task directory, device files and size
bombs are refused with ArchiveError, and nothing else ever escapes (hypothesis)."""

import contextlib
import gzip
import io
import posixpath
import tarfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskenv.shared.task_archive import MAX_MEMBERS, ArchiveError, TaskFiles, gunzip, pack, read

CAP = 1 << 20


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, data: bytes | None = b"x", **attributes: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, data


def test_a_task_directory_round_trips():
    files = TaskFiles(
        files={"task.yaml": b"name: a\n", "app/Dockerfile": b"FROM x\n"},
        modes={"task.yaml": 0o644, "app/Dockerfile": 0o755},
    )
    back = read(pack(files), CAP)
    assert back.files == files.files and back.modes == files.modes
    assert pack(back) == pack(files), "packing is deterministic"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (entry("/etc/passwd"), "absolute path"),
        (entry("../escape"), "leaves the task directory"),
        (entry("a/../../escape"), "leaves the task directory"),
        (entry("C:evil"), "absolute path"),
        (entry("link", None, type=tarfile.SYMTYPE, linkname="/etc/shadow"), "link leaves"),
        (entry("a/link", None, type=tarfile.SYMTYPE, linkname="../../x"), "link leaves"),
        (entry("hard", None, type=tarfile.LNKTYPE, linkname="/etc/shadow"), "absolute path"),
        (entry("hard", None, type=tarfile.LNKTYPE, linkname="not-in-archive"), "hard link to a file outside"),
        (entry("dev", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3), "device file"),
        (entry("blk", None, type=tarfile.BLKTYPE), "device file"),
        (entry("fifo", None, type=tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_hostile_entries_are_refused(member, reason):
    with pytest.raises(ArchiveError, match=reason):
        read(tar_gz(entry("task.yaml"), member), CAP)


def test_links_inside_the_directory_are_kept():
    files = read(
        tar_gz(
            entry("a/file", b"data"),
            entry("a/sym", None, type=tarfile.SYMTYPE, linkname="file"),
            entry("b/hard", None, type=tarfile.LNKTYPE, linkname="a/file"),
        ),
        CAP,
    )
    assert files.links == {"a/sym": "file"}
    assert files.files["b/hard"] == b"data"


def test_duplicates_and_files_used_as_directories_are_refused():
    with pytest.raises(ArchiveError, match="twice"):
        read(tar_gz(entry("a"), entry("./a")), CAP)
    with pytest.raises(ArchiveError, match="not a directory"):
        read(tar_gz(entry("a"), entry("a/b")), CAP)


def test_a_gzip_bomb_stops_at_the_cap():
    bomb = gzip.compress(b"\0" * (64 * CAP))
    assert len(bomb) < CAP // 8
    with pytest.raises(ArchiveError, match="expands past"):
        read(bomb, CAP)


def test_the_compressed_size_is_capped_too():
    with pytest.raises(ArchiveError, match="is over"):
        read(b"\0" * (CAP + 1), CAP)


def test_too_many_entries_are_refused():
    members = [entry(f"f{i}", b"") for i in range(MAX_MEMBERS + 1)]
    with pytest.raises(ArchiveError, match="more than"):
        read(tar_gz(*members), 64 * CAP)


def test_truncated_and_trailing_data_are_refused():
    whole = tar_gz(entry("task.yaml"))
    with pytest.raises(ArchiveError, match="truncated"):
        gunzip(whole[: len(whole) // 2], CAP)
    with pytest.raises(ArchiveError, match="after its gzip stream"):
        gunzip(whole + b"junk", CAP)


def test_a_gzip_of_not_a_tar_is_refused():
    with pytest.raises(ArchiveError, match="not a valid tar"):
        read(gzip.compress(b"hello, not a tar archive" * 40), CAP)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_archive_error(blob):
    with contextlib.suppress(ArchiveError):
        read(blob, CAP)


@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=4096))
def test_arbitrary_tar_bytes_under_valid_gzip_raise_only_archive_error(body, cut):
    corrupt = bytearray(tar_gz(entry("task.yaml", b"name: x\n"), entry("d/f", body)))
    raw = bytearray(zlib.decompress(bytes(corrupt), wbits=31))
    raw[cut % len(raw)] ^= 0xFF  # one flipped byte anywhere in the tar stream
    try:
        files = read(gzip.compress(bytes(raw), mtime=0), CAP)
    except ArchiveError:
        return
    assert all(not path.startswith("/") and ".." not in path.split("/") for path in files.files)


_names = st.lists(
    st.text(alphabet="ab./\\-_~:", min_size=1, max_size=12), min_size=1, max_size=6, unique=True
)


@given(
    _names,
    st.lists(
        st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE]),
        min_size=6,
        max_size=6,
    ),
    st.lists(st.text(alphabet="ab./", max_size=8), min_size=6, max_size=6),
)
def test_no_accepted_entry_ever_leaves_the_directory(names, kinds, targets):
    members = [
        entry(name, b"x" if kind == tarfile.REGTYPE else None, type=kind, linkname=target)
        for name, kind, target in zip(names, kinds, targets, strict=False)
    ]
    try:
        files = read(tar_gz(*members), CAP)
    except ArchiveError:
        return
    for path in [*files.files, *files.links]:
        assert not path.startswith("/") and ".." not in path.split("/"), path
    for path, target in files.links.items():
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        assert not target.startswith("/") and resolved != ".." and not resolved.startswith("../"), (
            path,
            target,
        )

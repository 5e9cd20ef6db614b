"""CopyFile: functional behaviour and confinement to the shared directory.

Every attack case runs with openat2(RESOLVE_BENEATH) and with the fallback
dir-fd walk, and checks that nothing outside the shared directory changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from agent.errors import InvalidArgument, PermissionDenied
from agent.guest.copyfile import CopyFileRequest, copy_file
from agent.guest.safepath import have_openat2


def test_kernel_has_openat2() -> None:
    assert have_openat2(), "this kernel lacks openat2; only the fallback walk is exercised"


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def mode(request) -> bool:
    return request.param


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    shared = tmp_path / "shared"
    outside = tmp_path / "outside"
    shared.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    (outside / "victim").chmod(0o644)
    (outside / "dir").mkdir()
    (outside / "dir").chmod(0o700)
    return shared, outside


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, digest)
    return out


def put(shared: Path, rel: str, data: bytes = b"", mode: bool = True, **kw) -> None:
    fields = {"file_size": len(data), "file_mode": stat.S_IFREG | 0o644, **kw}
    copy_file(CopyFileRequest(path=f"{shared}/{rel}", data=data, **fields), str(shared), use_openat2=mode)


# -- functional -------------------------------------------------------------------


def test_regular_file_in_chunks_appears_atomically(dirs, mode) -> None:
    shared, _ = dirs
    body = os.urandom(10_000)
    path = f"{shared}/ctr1/etc/hosts"
    for off in range(0, len(body), 4096):
        copy_file(
            CopyFileRequest(
                path=path,
                data=body[off : off + 4096],
                offset=off,
                file_size=len(body),
                file_mode=stat.S_IFREG | 0o640,
                dir_mode=0o750,
                uid=1234,
                gid=5678,
            ),
            str(shared),
            use_openat2=mode,
        )
        done = off + 4096 >= len(body)
        assert Path(path).exists() == done
        assert Path(path + ".tmp").exists() != done
    st = os.stat(path)
    assert Path(path).read_bytes() == body
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert stat.S_IMODE(os.stat(f"{shared}/ctr1/etc").st_mode) == 0o750


def test_overwrite_and_empty_file(dirs, mode) -> None:
    shared, _ = dirs
    put(shared, "f", b"one", mode)
    put(shared, "f", b"second version", mode)
    assert (shared / "f").read_bytes() == b"second version"
    put(shared, "empty", b"", mode)
    assert (shared / "empty").read_bytes() == b""


def test_directory_and_symlink_requests(dirs, mode) -> None:
    shared, _ = dirs
    put(shared, "cm", mode=mode, file_mode=stat.S_IFDIR | 0o711, uid=7, gid=8)
    st = os.stat(shared / "cm")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o711 and (st.st_uid, st.st_gid) == (7, 8)
    put(shared, "cm/..2024_01_01/key", b"value", mode)
    put(
        shared, "cm/..data", b"..2024_01_01", mode, file_mode=stat.S_IFLNK | 0o777, file_size=0, uid=9, gid=10
    )
    put(shared, "cm/key", b"..data/key", mode, file_mode=stat.S_IFLNK | 0o777, file_size=0)
    assert os.readlink(shared / "cm/..data") == "..2024_01_01"
    assert os.lstat(shared / "cm/..data").st_uid == 9
    assert (shared / "cm/key").read_bytes() == b"value"
    # A directory request on an existing directory keeps its contents.
    put(shared, "cm", mode=mode, file_mode=stat.S_IFDIR | 0o755)
    assert (shared / "cm/..2024_01_01/key").exists()
    # A file request replaces a directory, a directory request replaces a file.
    put(shared, "cm/..2024_01_01", b"now a file", mode)
    assert (shared / "cm/..2024_01_01").read_bytes() == b"now a file"
    put(shared, "cm/..2024_01_01", mode=mode, file_mode=stat.S_IFDIR | 0o700)
    assert (shared / "cm/..2024_01_01").is_dir()


def test_relative_symlink_parent_inside_is_followed_only_with_openat2(dirs) -> None:
    shared, outside = dirs
    (shared / "real").mkdir()
    os.symlink("real", shared / "alias")
    put(shared, "alias/x", b"via alias", True)
    assert (shared / "real/x").read_bytes() == b"via alias"
    with pytest.raises(PermissionDenied):
        put(shared, "alias/y", b"refused", False)  # the fallback refuses every symlink
    assert not (shared / "real/y").exists()


# -- attacks: each must fail (or neutralise the trap) and leave `outside` untouched ------


ESCAPES = [
    "{shared}/../outside/victim",
    "{shared}/a/../../outside/victim",
    "{outside}/victim",
    "{shared}-evil/x",
    "{shared}",
    "{shared}/",
    "relative/path",
    "{shared}/x/..",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_paths_outside_are_refused(dirs, mode, template: str) -> None:
    shared, outside = dirs
    before = snapshot(outside)
    path = template.format(shared=shared, outside=outside)
    with pytest.raises(PermissionDenied):
        copy_file(CopyFileRequest(path=path, data=b"pwn", file_size=3), str(shared), use_openat2=mode)
    assert snapshot(outside) == before


def test_nul_byte_and_bad_sizes(dirs, mode) -> None:
    shared, _ = dirs
    with pytest.raises(InvalidArgument):
        put(shared, "a\0b", b"x", mode)
    with pytest.raises(InvalidArgument):
        put(shared, "neg", b"x", mode, offset=-1)
    with pytest.raises(InvalidArgument):
        put(shared, "big", b"xxxx", mode, file_size=2)
    with pytest.raises(InvalidArgument):
        put(shared, "fifo", b"", mode, file_mode=stat.S_IFIFO | 0o644)


@pytest.mark.parametrize("target", ["{outside}", "../outside", "/proc/self/root{outside}"])
def test_symlinked_parent_escape_is_refused(dirs, mode, target: str) -> None:
    shared, outside = dirs
    os.symlink(target.format(outside=outside), shared / "evil")
    before = snapshot(outside)
    with pytest.raises(PermissionDenied):
        put(shared, "evil/victim", b"pwn", mode)
    with pytest.raises(PermissionDenied):
        put(shared, "evil/newdir/file", b"pwn", mode)
    assert snapshot(outside) == before


def test_symlink_deep_in_the_parent_chain(dirs, mode) -> None:
    shared, outside = dirs
    (shared / "a/b").mkdir(parents=True)
    os.symlink("../../../outside", shared / "a/b/c")
    before = snapshot(outside)
    with pytest.raises(PermissionDenied):
        put(shared, "a/b/c/victim", b"pwn", mode)
    assert snapshot(outside) == before


def test_leaf_symlink_is_replaced_not_followed(dirs, mode) -> None:
    shared, outside = dirs
    os.symlink(outside / "victim", shared / "leaf")
    before = snapshot(outside)
    put(shared, "leaf", b"mine", mode)
    assert not (shared / "leaf").is_symlink() and (shared / "leaf").read_bytes() == b"mine"
    assert snapshot(outside) == before


def test_planted_tmp_symlink_is_not_followed(dirs, mode) -> None:
    shared, outside = dirs
    os.symlink(outside / "victim", shared / "d.tmp")
    before = snapshot(outside)
    put(shared, "d", b"data", mode)  # offset 0 removes the trap
    assert (shared / "d").read_bytes() == b"data"
    # Between chunks the host plants the trap again: the next chunk refuses it.
    copy_file(
        CopyFileRequest(f"{shared}/e", b"ab", 0, 4, stat.S_IFREG | 0o644), str(shared), use_openat2=mode
    )
    os.unlink(shared / "e.tmp")
    os.symlink(outside / "victim", shared / "e.tmp")
    with pytest.raises(PermissionDenied):
        copy_file(
            CopyFileRequest(f"{shared}/e", b"cd", 2, 4, stat.S_IFREG | 0o644), str(shared), use_openat2=mode
        )
    assert snapshot(outside) == before


def test_hardlinked_leaf_and_tmp(dirs, mode) -> None:
    shared, outside = dirs
    os.link(outside / "victim", shared / "hl")
    before = snapshot(outside)
    put(shared, "hl", b"replaced", mode)
    assert (shared / "hl").read_bytes() == b"replaced"
    copy_file(
        CopyFileRequest(f"{shared}/h2", b"ab", 0, 4, stat.S_IFREG | 0o600), str(shared), use_openat2=mode
    )
    os.unlink(shared / "h2.tmp")
    os.link(outside / "victim", shared / "h2.tmp")
    with pytest.raises(PermissionDenied, match="hard links"):
        copy_file(
            CopyFileRequest(f"{shared}/h2", b"cd", 2, 4, stat.S_IFREG | 0o600), str(shared), use_openat2=mode
        )
    assert snapshot(outside) == before


def test_fifo_as_tmp_does_not_hang(dirs, mode) -> None:
    shared, _ = dirs
    os.mkfifo(shared / "p.tmp")
    with pytest.raises(PermissionDenied, match="not a regular file"):
        copy_file(
            CopyFileRequest(f"{shared}/p", b"cd", 2, 4, stat.S_IFREG | 0o644), str(shared), use_openat2=mode
        )
    assert stat.S_ISFIFO(os.lstat(shared / "p.tmp").st_mode) and not (shared / "p").exists()


def test_directory_request_on_symlink_to_outside_dir(dirs, mode) -> None:
    shared, outside = dirs
    os.symlink(outside / "dir", shared / "cfg")
    before = snapshot(outside)
    put(shared, "cfg", mode=mode, file_mode=stat.S_IFDIR | 0o777, uid=4242)
    assert (shared / "cfg").is_dir() and not (shared / "cfg").is_symlink()
    assert snapshot(outside) == before
    assert stat.S_IMODE(os.stat(outside / "dir").st_mode) == 0o700


def test_symlink_request_pointing_outside_cannot_be_written_through(dirs, mode) -> None:
    shared, outside = dirs
    target = str(outside).encode()
    put(shared, "out", target, mode, file_mode=stat.S_IFLNK | 0o777, file_size=0)
    assert os.readlink(shared / "out") == str(outside)
    before = snapshot(outside)
    with pytest.raises(PermissionDenied):
        put(shared, "out/victim", b"pwn", mode)
    with pytest.raises(PermissionDenied):
        put(shared, "out/sub", mode=mode, file_mode=stat.S_IFDIR | 0o777)
    assert snapshot(outside) == before


def test_file_in_place_of_parent_dir(dirs, mode) -> None:
    shared, _ = dirs
    (shared / "plain").write_bytes(b"x")
    with pytest.raises(PermissionDenied):
        put(shared, "plain/child", b"y", mode)


def test_missing_shared_dir_is_a_precondition(tmp_path: Path) -> None:
    from agent.errors import FailedPrecondition

    missing = tmp_path / "not-there"
    with pytest.raises(FailedPrecondition, match="shared directory"):
        copy_file(CopyFileRequest(f"{missing}/x", b"a", 0, 1), str(missing))

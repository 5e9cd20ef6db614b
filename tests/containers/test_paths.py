"""Confined path resolution: attack cases against both openat2 and the fallback walk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import paths
from agent.errors import InvalidArgument, NotFound, PermissionDenied

REFUSED = (PermissionDenied, InvalidArgument)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with links of every kind, next to outside/ holding a secret."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    links = {
        "etc": "/",
        "up": "../..",
        "a/up2": "../../..",
        "chain1": "chain2",
        "chain2": "chain3",
        "chain3": "a/b",
        "chainout1": "chainout2",
        "chainout2": "../outside",
        "absin": "/a/b",
        "abschain": "absin",
        "loop1": "loop2",
        "loop2": "loop1",
        "dotdotok": "a/../a/b",
        "a/b/parent": "..",
        "dangling": "/created-by-test",
        "danglingrel": "a/new-file",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    return root


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def use_openat2(request) -> bool:
    return request.param


def test_openat2_is_available_here() -> None:
    """The kernel path is the one used by default on this machine (>= 5.6)."""
    assert paths.openat2_available()


def opened(root: Path, rel: str, use_openat2: bool, **kw) -> str:
    fd = paths.open_beneath(root, rel, use_openat2=use_openat2, **kw)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("rel", "in_root", "expected"),
    [
        ("a/b", False, "a/b"),
        ("/a/b", False, "a/b"),  # the caller's leading slash means "from the root"
        ("chain1", False, "a/b"),  # a chain of relative links inside
        ("dotdotok", False, "a/b"),  # '..' inside a link that stays inside
        ("a/b/parent", False, "a"),
        ("etc", True, ""),  # '/' is the root itself in a chroot view
        ("up", True, ""),  # '..' at the root stays at the root
        ("a/up2/a", True, "a"),
        ("absin", True, "a/b"),  # absolute links are taken from the root
        ("abschain/file", True, "a/b/file"),
    ],
)
def test_resolves_inside(tree: Path, use_openat2: bool, rel: str, in_root: bool, expected: str) -> None:
    assert opened(tree, rel, use_openat2, in_root=in_root) == str(tree / expected).rstrip("/")


@pytest.mark.parametrize(
    ("rel", "in_root"),
    [
        ("etc", False),  # symlink to /
        ("etc/passwd", False),
        ("up", False),  # ../..
        ("a/up2", False),
        ("chainout1", False),  # a chain whose last link climbs out
        ("chainout1/secret", False),
        ("absin", False),  # absolute link, even to a place inside, in beneath mode
        ("abschain", False),
    ],
)
def test_escapes_are_refused(tree: Path, use_openat2: bool, rel: str, in_root: bool) -> None:
    with pytest.raises(PermissionDenied, match="escapes"):
        opened(tree, rel, use_openat2, in_root=in_root)


def test_in_root_cannot_reach_outside(tree: Path, use_openat2: bool) -> None:
    """In root mode, '..' chains that would leave the root find the root's own entries."""
    with pytest.raises(NotFound):
        opened(tree, "chainout1/secret", use_openat2, in_root=True)


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "a/b/.."])
def test_dotdot_in_the_callers_path_is_refused(tree: Path, use_openat2: bool, rel: str) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        opened(tree, rel, use_openat2)


def test_nul_byte_is_refused(tree: Path) -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        paths.open_beneath(tree, "a\0b")


def test_symlink_loop(tree: Path, use_openat2: bool) -> None:
    with pytest.raises(InvalidArgument, match="symbolic links"):
        opened(tree, "loop1", use_openat2)


def test_file_used_as_directory(tree: Path, use_openat2: bool) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        opened(tree, "a/b/file/x", use_openat2)


def test_missing(tree: Path, use_openat2: bool) -> None:
    with pytest.raises(NotFound):
        opened(tree, "a/nope/x", use_openat2)


@pytest.mark.parametrize("in_root", [False, True])
def test_magic_links_are_never_followed(use_openat2: bool, in_root: bool, tmp_path: Path) -> None:
    """/proc/self/root and /proc/self/fd/N jump anywhere; they must never be followed.

    openat2 refuses them outright; the walk reads their text like any symlink's, which
    keeps them confined (in root mode "/" is the root itself).
    """
    outside = os.open(tmp_path, os.O_PATH)
    try:
        for rel in ("self/root", f"self/fd/{outside}", "thread-self/cwd"):
            try:
                where = opened(Path("/proc"), rel, use_openat2, in_root=in_root)
            except (*REFUSED, NotFound):
                continue
            assert not use_openat2 and in_root, (rel, where)
            assert where == "/proc" or where.startswith("/proc/"), (rel, where)
    finally:
        os.close(outside)


def test_read_and_create_through_links(tree: Path, use_openat2: bool) -> None:
    fd = paths.open_beneath(tree, "chain1/file", os.O_RDONLY, use_openat2=use_openat2)
    with os.fdopen(fd) as f:
        assert f.read() == "inside"
    fd = paths.open_beneath(tree, "danglingrel", os.O_WRONLY | os.O_CREAT, 0o600, use_openat2=use_openat2)
    os.close(fd)
    assert (tree / "a" / "new-file").is_file()


def test_create_through_dangling_absolute_link(tree: Path, use_openat2: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT
    with pytest.raises(PermissionDenied):
        paths.open_beneath(tree, "dangling", flags, use_openat2=use_openat2)
    assert not os.path.lexists("/created-by-test")
    os.close(paths.open_beneath(tree, "dangling", flags, in_root=True, use_openat2=use_openat2))
    assert (tree / "created-by-test").is_file()
    assert not os.path.lexists("/created-by-test")


def test_resolve_allow_missing(tree: Path) -> None:
    assert (
        paths.resolve_beneath(tree, "chain1/missing/deeper", allow_missing=True)
        == tree / "a/b/missing/deeper"
    )
    assert paths.resolve_beneath(tree, "absin/x", in_root=True, allow_missing=True) == tree / "a/b/x"
    with pytest.raises(NotFound):
        paths.resolve_beneath(tree, "chain1/missing")
    with pytest.raises(PermissionDenied):
        paths.resolve_beneath(tree, "up/missing", allow_missing=True)


def test_resolve_through_symlinked_root(tree: Path, tmp_path: Path) -> None:
    os.symlink(tree, tmp_path / "rootlink")
    assert paths.resolve_beneath(tmp_path / "rootlink", "chain1") == tree / "a/b"


def test_makedirs(tree: Path, tmp_path: Path) -> None:
    assert paths.makedirs_beneath(tree, "absin/c/d", in_root=True) == tree / "a/b/c/d"
    assert (tree / "a/b/c/d").is_dir()
    assert paths.makedirs_beneath(tree, "up/newdir", in_root=True) == tree / "newdir"
    assert not (tmp_path / "newdir").exists()
    with pytest.raises(PermissionDenied):
        paths.makedirs_beneath(tree, "up/evil")
    with pytest.raises(PermissionDenied):
        paths.makedirs_beneath(tree, "chainout1/evil")
    assert not (tmp_path / "outside" / "evil").exists() and not (tmp_path / "evil").exists()
    with pytest.raises(InvalidArgument, match="not a directory"):
        paths.makedirs_beneath(tree, "a/b/file")

"""A mount's state directory stays private: cache and staging hold plaintext of private volumes."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from walrusfs.mount.staging import ChunkCache, MountState, StateError

NOBODY = 65534


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by path relative to ``root``."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> None:
    """Every directory under ``root`` is 0700 and every file 0600."""
    for name, mode in modes(root).items():
        expected = 0o700 if (root / name).is_dir() else 0o600
        assert mode == expected, f"{name}: {oct(mode)}"


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True, ids=["022", "000"])
def test_everything_is_created_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    directory = tmp_path / "new" / "state"  # missing parents are made private too
    state = MountState(directory)
    try:
        state.add_own_entry(1, b"entry")  # the database and its -wal/-shm files exist now
        cache = ChunkCache(directory / "cache", 1 << 20)
        cache.put("blob", b"plaintext chunk")
        names = set(modes(directory))
        assert {"lock", "device.key", "mount.sqlite", "mount.sqlite-wal", "mount.sqlite-shm", "staging",
                "cache/blob"} <= names, names
        assert_private(directory)
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    finally:
        state.close()


def test_a_loose_state_dir_of_this_user_is_fixed_with_one_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "state"
    (directory / "cache").mkdir(parents=True)
    (directory / "staging").mkdir()
    (directory / "cache" / "blob").write_bytes(b"plaintext chunk")
    (directory / "staging" / "node.file").write_bytes(b"plaintext not yet uploaded")
    (directory / "staging" / "outside").symlink_to("/etc/passwd")  # never followed, so never chmodded
    (directory / "notes.txt").write_text("a user's own file in their --state directory")
    for path, mode in [(directory, 0o755), (directory / "cache", 0o777), (directory / "staging", 0o750),
                       (directory / "cache" / "blob", 0o644), (directory / "staging" / "node.file", 0o660),
                       (directory / "notes.txt", 0o644)]:
        os.chmod(path, mode)
    passwd = stat.S_IMODE(os.stat("/etc/passwd").st_mode)
    with caplog.at_level(logging.WARNING, logger="walrusfs.mount"):
        state = MountState(directory)
        try:
            ChunkCache(directory / "cache", 1 << 20)  # already fixed: no second warning
        finally:
            state.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(directory) in warnings[0] and "3 directories 0700 and 2 files private" in warnings[0]
    assert stat.S_IMODE((directory / "notes.txt").stat().st_mode) == 0o644  # not the mount's: left alone
    (directory / "notes.txt").unlink()
    (directory / "staging" / "outside").unlink()
    assert_private(directory)
    assert stat.S_IMODE(os.stat("/etc/passwd").st_mode) == passwd
    assert (directory / "cache" / "blob").read_bytes() == b"plaintext chunk"  # fixed, not lost


def test_another_users_state_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(StateError) as info:
        MountState(directory)
    message = str(info.value)
    assert f"state directory {directory} belongs to" in message and f"uid {NOBODY}" in message
    assert "--state" in message
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755 and not list(directory.iterdir())
    with pytest.raises(StateError, match=f"uid {NOBODY}"):
        ChunkCache(directory, 1 << 20)


def test_another_users_file_inside_is_refused(tmp_path: Path) -> None:
    # Planted while the directory was open to others: it may be a hard link to their file.
    directory = tmp_path / "state"
    (directory / "cache").mkdir(parents=True)
    planted = directory / "cache" / "blob"
    planted.write_bytes(b"")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(StateError, match=f"{re.escape(str(planted))} belongs to .*uid {NOBODY}"):
        MountState(directory)


def test_a_shared_sticky_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o1777)  # like /tmp: making it 0700 would break everyone else
    with pytest.raises(StateError, match="shared directory"):
        MountState(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o1777 and not list(directory.iterdir())

"""Every way a file is overwritten in place, checked where the writer's kernel cache cannot help.

A rewrite that is shorter than the old file must publish exactly the new bytes: each test
overwrites a 100,000-byte file, fsyncs, then compares what a second mount reads and what
the writer reads after a remount with what the writer wrote. (With the writeback cache the
kernel passes ``O_TRUNC`` to ``open()`` and sends no ``setattr``, so the writer's own view
can look right while the published file keeps the old tail.)
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mounting import MountedVolume, fsync, wait_for

OLD = random.Random(1).randbytes(100_000)
NEW = b"hello\n"


class Setup(MountedVolume):
    """A 4-peer devnet, a writer mount and a second mount of the same volume."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 4)
        try:
            self.writer = self.mount("writer")
            self.reader = self.mount("reader")
        except BaseException:
            self.close()
            raise


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("overwrite"))
    try:
        yield s
    finally:
        s.close()


def _shell_redirect(path: Path, tmp: Path) -> bytes:
    subprocess.run(["sh", "-c", f"printf 'hello\\n' > '{path}'"], check=True, timeout=60)
    return NEW


def _cp_over(path: Path, tmp: Path) -> bytes:
    source = tmp / "small"
    source.write_bytes(NEW)
    subprocess.run(["cp", str(source), str(path)], check=True, timeout=60)
    return NEW


def _python_open_w(path: Path, tmp: Path) -> bytes:
    with open(path, "w") as f:
        f.write("hello\n")
    return NEW


def _o_trunc_without_o_creat(path: Path, tmp: Path) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, NEW)
    finally:
        os.close(fd)
    return NEW


def _ftruncate_then_write(path: Path, tmp: Path) -> bytes:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, NEW, 0)
    finally:
        os.close(fd)
    return NEW


def _truncate_smaller(path: Path, tmp: Path) -> bytes:
    subprocess.run(["truncate", "-s", "1234", str(path)], check=True, timeout=60)
    return OLD[:1234]


def _truncate_larger(path: Path, tmp: Path) -> bytes:
    os.truncate(path, 150_000)
    return OLD + bytes(50_000)


def _o_trunc_empty(path: Path, tmp: Path) -> bytes:
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    return b""


PATHS: dict[str, Callable[[Path, Path], bytes]] = {
    "shell-redirect": _shell_redirect, "cp-over": _cp_over, "python-open-w": _python_open_w,
    "o-trunc-no-creat": _o_trunc_without_o_creat, "ftruncate-then-write": _ftruncate_then_write,
    "truncate-smaller": _truncate_smaller, "truncate-larger": _truncate_larger, "o-trunc-nothing-written": _o_trunc_empty,
}


def _reads(path: Path, expected: bytes) -> bool:
    return os.stat(path).st_size == len(expected) and path.read_bytes() == expected


@pytest.mark.parametrize("how", sorted(PATHS))
def test_overwrite_publishes_exactly_the_new_bytes(setup: Setup, tmp_path: Path, how: str) -> None:
    name = f"file-{how}"
    target = setup.writer.path / name
    target.write_bytes(OLD)
    fsync(target)
    # The second mount must have seen the long version first, so the rewrite is a change to it.
    assert wait_for(lambda: _reads(setup.reader.path / name, OLD), limit=30), "second mount never saw the original"
    expected = PATHS[how](target, tmp_path)
    fsync(target)
    assert _reads(target, expected), "the writer's own view is wrong"
    assert wait_for(lambda: _reads(setup.reader.path / name, expected), limit=30), (
        f"second mount reads {os.stat(setup.reader.path / name).st_size} bytes, expected {len(expected)}")
    setup.writer.stop()
    setup.writer.start()
    assert _reads(setup.writer.path / name, expected), "after a remount the writer reads something else"

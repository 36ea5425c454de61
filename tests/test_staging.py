"""The mount's local state: staged records, the state-directory lock, the chunk cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from walrusfs.mount.staging import ChunkCache, MountState, StagedFile, StateError


def test_concurrent_puts_of_one_chunk_never_collide(tmp_path: Path) -> None:
    # Two uploads of a deduplicated chunk cache it at the same moment (this crashed a mount).
    cache = ChunkCache(tmp_path / "cache", 1 << 30)
    data = b"x" * (1 << 20)
    errors: list[BaseException] = []

    def put_all() -> None:
        try:
            for i in range(40):
                cache.put(f"chunk{i}", data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.total == 40 * len(data)
    assert not list((tmp_path / "cache").glob("*.tmp"))
    assert cache.get("chunk7") == data


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 3000)
    for key in ("a", "b", "c"):
        cache.put(key, key.encode() * 1000)
    cache.get("a")
    cache.put("d", b"d" * 1000)
    assert cache.get("b") is None and cache.get("a") == b"a" * 1000 and cache.total == 3000


def test_staged_records_survive_a_restart_and_one_mount_holds_a_state_dir(tmp_path: Path) -> None:
    state = MountState(tmp_path)
    staged = StagedFile(bytes(32), 10, 4, [None, bytes(range(32)), None], {0, 2}, None, 5, bytes(32), "f")
    state.staging_path(staged).write_bytes(b"0123456789")
    state.save_staged(staged)
    device = bytes(state.device.verify_key)
    with pytest.raises(StateError, match="in use by another mount"):
        MountState(tmp_path)
    state.close()
    again = MountState(tmp_path)
    (loaded,) = again.staged_files()
    assert (loaded.size, loaded.chunks, loaded.dirty, loaded.file) == (10, staged.chunks, {0, 2}, staged.file)
    assert bytes(again.device.verify_key) == device
    again.drop_staged(loaded)
    assert again.staged_files() == [] and not again.staging_path(loaded).exists()
    again.close()

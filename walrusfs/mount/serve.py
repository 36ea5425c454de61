"""Serving a mount: one trio loop runs the libp2p host, the log follower, uploads and FUSE."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from p2p.host import running_host
from p2p.rpc import PeerUnavailable

from ..client.blob import Client
from ..core import messages as m
from ..core.committee import Committee
from .contents import Contents
from .operations import WalrusFS
from .staging import ChunkCache, MountState
from .volumelog import VolumeLog
from .volumes import Volume

log = logging.getLogger("walrusfs.mount")

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_CACHE = 1 << 30
STARTUP_LIMIT = 60.0
CAPACITY_INTERVAL = 30.0


def default_state_dir(volume: Volume) -> Path:
    """$WALRUSFS_STATE_DIR/VOLUME, else the user's state directory."""
    base = os.environ.get("WALRUSFS_STATE_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_state_dir("walrusfs")
    return Path(base) / "mounts" / volume.volume_id


class MountError(Exception):
    """The mount could not start."""


async def _capacity(client: Client, committee: Committee, chunk_size: int, holder: dict[str, int]) -> None:
    """Keep ``holder['free']`` at the file bytes the fullest peer's free space still allows."""
    expansion = committee.config.encoded_blob_length(chunk_size) / chunk_size
    while True:
        free = []
        for peer, reply, _ in await client._each_peer(m.GET_STATUS):
            if reply is not None and isinstance(reply.get("free_bytes"), int):
                shards = len(committee.peers[peer].shards) or 1
                free.append(reply["free_bytes"] * committee.n_shards / shards)
        if free:
            holder["free"] = int(min(free) / expansion)
        await trio.sleep(CAPACITY_INTERVAL)


async def serve_mount(
    mountpoint: Path, volume: Volume, committee: Committee, state_dir: Path, *, read_only: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE, cache_bytes: int = DEFAULT_CACHE, announce: Callable[[str], None] = print,
    inconsistent_writer: bool = False,
) -> None:
    """Mount ``volume`` at ``mountpoint`` until it is unmounted or the process is signalled.

    ``inconsistent_writer`` is for tests only: chunks are encoded the way a malicious writer
    would (one parity row tampered yet committed to).
    """
    state = await trio.to_thread.run_sync(MountState, state_dir)
    cache = await trio.to_thread.run_sync(ChunkCache, state_dir / "cache", cache_bytes)
    try:
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, reuse_streams=True)
            vlog = VolumeLog(client, volume, state)
            await vlog.load()
            with trio.move_on_after(STARTUP_LIMIT):
                while not vlog.synced_once.is_set():
                    try:
                        await vlog.sync_any()
                    except PeerUnavailable as exc:
                        log.warning("waiting for peers: %s", exc)
                        await trio.sleep(1.0)
            if not vlog.synced_once.is_set():
                raise MountError(f"no committee peer answered within {STARTUP_LIMIT:.0f} s; is the network up?")
            contents = Contents(client, vlog, state, cache, chunk_size)
            if inconsistent_writer:
                from ..testing import encode_inconsistent

                contents.encode = lambda data, config: encode_inconsistent(data, config, config.primary_source_symbols + 1)
            await contents.load()
            started = time.time()
            capacity: dict[str, int] = {}
            fs = WalrusFS(vlog, contents, read_only,
                          status=lambda: {"pid": os.getpid(), "mountpoint": str(mountpoint), "since": started})
            fs.statfs_source = lambda: capacity.get("free", 0)
            vlog.on_change = fs.remote_change
            options = set(pyfuse3.default_options) | {"fsname=walrusfs", "subtype=walrusfs"}
            if fs.read_only:
                options.add("ro")
            pyfuse3.init(fs, str(mountpoint), options)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(vlog.run)
                    nursery.start_soon(contents.run)
                    nursery.start_soon(_capacity, client, committee, chunk_size, capacity)
                    nursery.start_soon(_stop_on_signal)
                    mode = "read-only" if fs.read_only else "read-write"
                    announce(f"mounted volume {volume.volume_id} at {mountpoint} ({mode}); "
                             f"{len(contents.staged)} staged files to upload")
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                pyfuse3.close(unmount=True)
                contents.close()
    finally:
        await trio.to_thread.run_sync(state.close)


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def fuse_unmount(mountpoint: Path) -> Any:
    """Ask the kernel to unmount (fusermount3 -u); returns the completed process."""
    import subprocess

    return subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)

"""Serving a mount: one trio loop runs the libp2p host, the log follower, uploads and FUSE."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio
from nacl.signing import SigningKey

from p2p.host import running_host

from ..client.blob import Client
from ..core import messages as m
from ..core.committee import Committee
from ..core.lifecycle import device_authority
from .contents import PACK_BELOW, Contents
from .lifecycle import Keeper
from .logstore import LogStore
from .metrics import MountMetrics
from .operations import WalrusFS
from .snapshots import load_snapshot
from .staging import ChunkCache, MountState
from .volumelog import LogUnavailable, VolumeLog
from .volumes import Volume

log = logging.getLogger("walrusfs.mount")

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_CACHE = 1 << 30
#: How long a first mount waits for a peer to serve the log, and a mount with local state
#: before it comes up without one.
STARTUP_LIMIT = 60.0
STARTUP_WAIT = 5.0
#: How long a mount with no local copy tries snapshots before it replays the whole log.
SNAPSHOT_LIMIT = 30.0
#: How long an unmount waits for the last checkpoint of the tree.
CLOSE_LIMIT = 30.0
#: During a first mount's sync of a long log, a checkpoint every this many entries.
STARTUP_CHECKPOINT_OPS = 50_000
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
    inconsistent_writer: bool = False, startup_limit: float = STARTUP_LIMIT, keep_owners: bool = False,
    account: SigningKey | None = None, trash_seconds: float | None = None, allow_other: bool = False,
    owner: tuple[int, int] | None = None, umask: int = 0, ready: Callable[[], None] | None = None,
    fsname: str = "walrusfs", pack_below: int = PACK_BELOW, metrics: MountMetrics | None = None,
) -> None:
    """Mount ``volume`` at ``mountpoint`` until it is unmounted or the process is signalled.

    ``account`` is the granted writer key the volume stores on (it sponsors the volume); without
    it the volume key itself must hold a grant. ``trash_seconds`` overrides the volume's trash time
    (``lifecycle``). ``keep_owners`` shows the uid and gid the writing device recorded instead of the
    mounting user's (or ``owner``, a uid and gid); ``umask`` masks the modes shown. ``allow_other``
    lets other users in (the kernel checks the shown owners and modes: default_permissions).
    ``ready`` is called once the mount serves (for --background and systemd); ``fsname`` is the
    source the mount table shows. Files of at most ``pack_below`` bytes closed together are
    stored packed (``contents``). ``metrics`` is what a metrics server (started by the caller)
    shows. ``inconsistent_writer`` is for tests only: chunks are encoded the way a malicious writer
    would (one parity row tampered yet committed to).
    """
    state = await trio.to_thread.run_sync(MountState, state_dir)
    failure: MountError | None = None
    local: LogStore | None = None
    try:
        local = await trio.to_thread.run_sync(LogStore, state_dir, bytes(state.device))
        cache = await trio.to_thread.run_sync(ChunkCache, state_dir / "cache", cache_bytes)
        async with running_host(os.urandom(32)) as host:
            try:
                await _serve(host, mountpoint, volume, committee, state, cache, local, read_only=read_only,
                             chunk_size=chunk_size, announce=announce, inconsistent_writer=inconsistent_writer,
                             startup_limit=startup_limit, keep_owners=keep_owners, account=account,
                             trash_seconds=trash_seconds, allow_other=allow_other, owner=owner, umask=umask,
                             ready=ready, fsname=fsname, pack_below=pack_below, metrics=metrics)
            except MountError as exc:
                # Raised after the host closed, so it reaches the caller as itself rather
                # than inside the host's exception groups (the CLI prints it as one line).
                failure = exc
    finally:
        if local is not None:
            await trio.to_thread.run_sync(local.close)
        await trio.to_thread.run_sync(state.close)
    if failure is not None:
        raise failure


async def _serve(
    host: Any, mountpoint: Path, volume: Volume, committee: Committee, state: MountState, cache: ChunkCache,
    local: LogStore | None, *,
    read_only: bool, chunk_size: int, announce: Callable[[str], None], inconsistent_writer: bool, startup_limit: float,
    keep_owners: bool = False, account: SigningKey | None = None, trash_seconds: float | None = None,
    allow_other: bool = False, owner: tuple[int, int] | None = None, umask: int = 0,
    ready: Callable[[], None] | None = None, fsname: str = "walrusfs", pack_below: int = PACK_BELOW,
    metrics: MountMetrics | None = None,
) -> None:
    """Serve one mount on an open libp2p host until it is unmounted."""
    authority = device_authority(account, volume.key, state.device) if volume.key is not None else None
    client = Client(host, committee, reuse_streams=True, authority=authority)
    began = time.monotonic()
    vlog = VolumeLog(client, volume, state, writer=authority.writer if authority else None, local=local)
    await vlog.load()
    contents = Contents(client, vlog, state, cache, chunk_size, pack_below, metrics)
    if inconsistent_writer:
        from ..testing import encode_inconsistent

        contents.encode = lambda data, config: encode_inconsistent(data, config, config.primary_source_symbols + 1)
    await contents.load()
    # A mount that has been used before (its own entries or staged files are here)
    # comes up without the peers and serves what it has; its uploads and the log
    # catch up once they answer. A first mount has nothing to serve: it waits longer,
    # then gives up with one line.
    has_state = vlog.head > 0 or bool(contents.staged) or vlog.restored is not None
    if vlog.restored is None:
        # Nothing local: a writer's snapshot saves replaying the whole log (any failure
        # only means the whole log is replayed).
        with trio.move_on_after(min(SNAPSHOT_LIMIT, startup_limit)):
            try:
                await load_snapshot(vlog)
            except Exception as exc:  # noqa: BLE001 - a snapshot never stops a mount
                log.warning("no volume snapshot used: %s: %s", type(exc).__name__, exc)
        vlog.deferring = vlog.restored is None and not has_state
    limit = min(STARTUP_WAIT, startup_limit) if has_state else startup_limit
    give_up = trio.current_time() + limit
    while not vlog.synced_once.is_set() and trio.current_time() < give_up:
        before = vlog.fetched
        with trio.move_on_at(give_up):
            try:
                await vlog.sync_any()
            except LogUnavailable as exc:
                log.info("waiting for peers: %s", exc)
                await trio.sleep(1.0)
        if not has_state and vlog.fetched > before:
            give_up = trio.current_time() + limit  # the log is arriving: a first mount waits for all of it
        # A long first sync keeps checkpoints, so a mount stopped in the middle restarts from one.
        await vlog.checkpoint(every=STARTUP_CHECKPOINT_OPS)
    await vlog.startup_done()
    log.info("log ready in %.2f s (tree from %s; %d entries fetched)", time.monotonic() - began,
             vlog.restored or "the whole log", vlog.fetched)
    if not vlog.synced_once.is_set():
        if not has_state:
            raise MountError(f"no committee peer served the log within {limit:.0f} s; is the network up? "
                             f"({vlog.sync_summary})")
        if vlog.fetched:
            announce(f"the log is still arriving ({vlog.fetched} entries so far): serving what this mount has; "
                     "the rest follows")
        else:
            announce(f"no committee peer answered within {limit:.0f} s: serving what this mount has "
                     "staged and cached; uploads and the log resume when peers answer")
    if vlog.sealed_seen and vlog.unreadable == vlog.sealed_seen:
        # Not one sealed entry opens: serving an empty tree would look like data loss.
        if volume.read_key is None:
            raise MountError(f"volume {volume.volume_id} is private ({vlog.sealed_seen} sealed namespace entries) "
                             "and this side holds no read key; mount it with a read or write capability "
                             "(walrusfs volume share NAME --read, then walrusfs mount DIR --cap CAP)")
        raise MountError(f"the read key given for volume {volume.volume_id} opens none of its {vlog.sealed_seen} "
                         "sealed namespace entries: it belongs to another volume, or the capability was altered")
    started = time.time()
    capacity: dict[str, int] = {}
    keeper = Keeper(client, vlog, contents, trash_seconds)
    fs = WalrusFS(vlog, contents, read_only,
                  status=lambda: {"pid": os.getpid(), "mountpoint": str(mountpoint), "since": started,
                                  **keeper.status(), "log": vlog.local_status()},
                  keep_owners=keep_owners, owner=owner, umask=umask)
    fs.statfs_source = lambda: capacity.get("free", 0)
    vlog.on_change = fs.remote_change
    options = set(pyfuse3.default_options) | {f"fsname={fsname}", "subtype=walrusfs"}
    if fs.read_only:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    pyfuse3.init(fs, str(mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vlog.run)
            nursery.start_soon(contents.run)
            nursery.start_soon(_capacity, client, committee, chunk_size, capacity)
            if keeper.can_write and not fs.read_only:
                # Renews what the tree uses, releases what the trash time let go.
                nursery.start_soon(keeper.run)
            nursery.start_soon(_stop_on_signal)
            mode = "read-only" if fs.read_only else "read-write"
            announce(f"mounted volume {volume.volume_id} at {mountpoint} ({mode}); "
                     f"{len(contents.staged)} staged files to upload")
            # Requests the kernel queued meanwhile are answered as soon as main() runs.
            sd_notify(f"READY=1\nSTATUS=serving volume {volume.volume_id} at {mountpoint}")
            if ready is not None:
                ready()
            await pyfuse3.main()
            sd_notify("STOPPING=1")
            # The tree as it is now, so the next start folds nothing it already had (an open
            # batch is signed first: a checkpoint holds only ops of entries).
            with trio.move_on_after(CLOSE_LIMIT):
                await vlog.flush()
                await vlog.checkpoint()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        contents.close()


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's $NOTIFY_SOCKET (Type=notify units); False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


async def _stop_on_signal() -> None:
    # SIGHUP too: a mount started from a terminal that closes unmounts instead of dying
    # and leaving a dead mount point behind.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


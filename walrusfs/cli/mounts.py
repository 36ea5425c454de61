"""Mount commands: mount, umount, status."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from .common import (
    Failure,
    committee_option,
    default_committee_path,
    json_option,
    load_committee,
    parse_size,
    writer_key_option,
)


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--volume", "volume_ref", help="Volume name (keys held here), or a volume ID (a public volume, read-only).")
@click.option("--cap", "cap", help="A write or read capability (from 'walrusfs volume share'); a read capability "
                                   "mounts read-only.")
@committee_option
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS), even with the volume key.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Staging, cache and device key (default: the user state directory, per volume).")
@click.option("--chunk-size", default="4MiB", callback=parse_size, show_default=True, help="Size of the chunks new content is cut into.")
@click.option("--cache-size", default="1GiB", callback=parse_size, show_default=True, help="Local cache of verified chunks.")
@click.option("--startup-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds a first mount waits for a peer to serve the log before giving up (a mount "
                   "used before comes up after 5 s without peers, serving what it has).")
@click.option("--keep-owners", is_flag=True,
              help="Show the uid and gid the writing device recorded (default: every file is the mounting user's).")
@click.option("--trash-time", "trash_time", default=None,
              help="How long deleted and overwritten files stay restorable before their chunks are released "
                   "(e.g. 30s, 2h, 7d; default: $WALRUSFS_TRASH_SECONDS, else the volume's setting, else 7d).")
@click.option("--debug", is_flag=True, help="Log every warning and info message.")
@click.option("--fault", type=click.Choice(["inconsistent-writer"]), hidden=True,
              help="TEST ONLY: encode chunks the way a malicious writer would.")
@writer_key_option
def mount(mountpoint: Path, volume_ref: str | None, cap: str | None, committee_path: Path | None, read_only: bool, state_dir: Path | None,
          chunk_size: int, cache_size: int, startup_timeout: float, keep_owners: bool, debug: bool,
          trash_time: str | None, fault: str | None, writer_key: Path | None) -> None:
    """Mount a volume at MOUNTPOINT (runs until unmounted with 'walrusfs umount' or fusermount3 -u)."""
    import trio

    from p2p.host import configure_logging

    from ..mount.serve import MountError, default_state_dir, serve_mount
    from ..mount.staging import StateError
    from ..mount.volumes import VolumeError, resolve_volume

    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    configure_logging(logging.INFO if debug else logging.CRITICAL)
    from ..mount.lifecycle import parse_duration

    try:
        trash_seconds = parse_duration(trash_time) if trash_time is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trash-time") from None
    if (volume_ref is None) == (cap is None):
        raise click.UsageError("give the volume with --volume NAME or --cap CAPABILITY (one of them)")
    try:
        vol = resolve_volume(volume_ref or cap or "")
    except VolumeError as exc:
        raise click.BadParameter(str(exc), param_hint="--cap" if cap else "--volume") from None
    if cap is not None and not cap.startswith("walrusfs-"):
        raise click.BadParameter("not a capability (they start with walrusfs-write:, walrusfs-read: "
                                 "or walrusfs-verify:)", param_hint="--cap")
    if not vol.readable and cap is not None:
        raise Failure("a verify capability reads nothing, so it cannot be mounted; list and check the volume's "
                      "blobs with: walrusfs volume blobs CAP")
    committee = load_committee(committee_path)
    account = None
    if vol.writable and not read_only:
        # The volume stores on the grant of this user's writer key (it sponsors the volume).
        from ..client.writer import WriterKeyError, load_key, writer_key_path

        try:
            account = load_key(writer_key or writer_key_path(committee_path or default_committee_path()), create=True)
        except WriterKeyError as exc:
            raise Failure(str(exc)) from None
    if os.path.ismount(mountpoint):
        raise click.UsageError(f"{mountpoint} is already a mount point")
    if any(mountpoint.iterdir()):
        raise click.UsageError(f"{mountpoint} is not empty; mount on an empty directory")
    try:
        trio.run(lambda: serve_mount(
            mountpoint, vol, committee, state_dir or default_state_dir(vol), read_only=read_only,
            chunk_size=chunk_size, cache_bytes=cache_size, announce=lambda text: click.echo(text, err=True),
            inconsistent_writer=fault == "inconsistent-writer", startup_limit=startup_timeout,
            keep_owners=keep_owners, account=account, trash_seconds=trash_seconds,
        ))
    except (MountError, StateError) as exc:
        raise Failure(str(exc)) from None


def _mount_status(mountpoint: Path) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(mountpoint, "user.walrus.status"))
    except OSError as exc:
        raise Failure(f"{mountpoint} is not a walrusfs mount ({exc.strerror})") from None


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-wait", is_flag=True, help="Unmount at once; staged files upload at the next mount.")
def umount(mountpoint: Path, no_wait: bool) -> None:
    """Wait for pending uploads, then unmount MOUNTPOINT."""
    import time

    from ..mount.serve import fuse_unmount

    status = _mount_status(mountpoint)
    if not no_wait and not status.get("read_only"):
        pending = len(status.get("pending", []))
        if pending:
            click.echo(f"waiting for {pending} pending uploads (Ctrl-C to stop waiting; they resume at next mount)", err=True)
        fd = os.open(mountpoint, os.O_RDONLY)
        try:
            os.fsync(fd)  # the mount answers once every upload and namespace entry is in the log
        finally:
            os.close(fd)
    done = fuse_unmount(mountpoint)
    if done.returncode != 0:
        raise Failure(f"fusermount3 -u {mountpoint}: {done.stderr.strip()}")
    pid = status.get("pid")
    for _ in range(100):  # the mount process exits once the kernel let go
        if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    click.echo(f"unmounted {mountpoint}")


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
def status(mountpoint: Path, as_json: bool) -> None:
    """Show a mount's pending uploads and their progress."""
    info = _mount_status(mountpoint)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    mode = "read-only" if info["read_only"] else "read-write"
    kind = {"private": "private: peers hold only ciphertext", "public": "public: peers hold plaintext",
            "unknown": "no read key: a private volume's names and contents cannot be read"}.get(
                info.get("volume_kind", "public"), info.get("volume_kind"))
    click.echo(f"volume {info['volume']} at {info['mountpoint']} ({mode}; {kind}), pid {info['pid']}")
    if info.get("unreadable_entries"):
        click.echo(f"{info['unreadable_entries']} namespace entries could not be opened (sealed under a read key "
                   "this mount does not hold, or damaged by their writer): what they did is not shown")
    click.echo(f"namespace entries: {info['entries_signed']} signed, {info['entries_published']} in the log"
               + (f" (publishing fails: {info['publish_error']})" if info.get("publish_error") else ""))
    click.echo(f"chunks uploaded {info['uploaded_chunks']}, deduplicated {info['deduplicated_chunks']}, "
               f"cache {info['cache_bytes']} bytes")
    if info.get("log_error"):
        synced = "" if info.get("log_synced") else " (not read since this mount started: showing only local state)"
        click.echo(f"log: {info['log_error']}{synced}")
    if info.get("storage_refused"):
        click.echo(f"storage refused (Disk quota exceeded; files stay staged and are retried): {info['storage_refused']}")
    if not info["pending"]:
        click.echo("no pending uploads")
    for item in info["pending"]:
        line = (f"  {item.get('name') or item['node'][:16]}  {item['state']:<9} "
                f"{item['uploaded_bytes']}/{item['staged_bytes']} staged bytes of {item['size']}")
        if item.get("attempts"):
            line += f"  attempt {item['attempts']}" + (f", next in {item['retry_in']:.0f} s" if item.get("retry_in") else "")
        click.echo(line + (f"  error: {item['error']}" if item.get("error") else ""))

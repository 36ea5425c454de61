"""Mount commands: mount, umount, status."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .common import (
    Failure,
    committee_option,
    default_committee_path,
    json_option,
    load_committee,
    metrics_option,
    parse_size,
    start_metrics,
    writer_key_option,
)

#: What a mount table source may hold here (FUSE options are comma-separated).
FSNAME = re.compile(r"^[A-Za-z0-9._:@-]{1,200}$")


def _mountpoint(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """Click callback: an existing directory, or a dead mount (which exists=True would call missing)."""
    from ..mount.mountpoints import absolute, state_of

    state = state_of(value)
    if state == "missing":
        raise click.BadParameter(f"directory {value} does not exist", ctx=ctx, param=param)
    if state == "not-directory":
        raise click.BadParameter(f"{value} is not a directory", ctx=ctx, param=param)
    return absolute(value)


mountpoint_argument = click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path),
                                     callback=_mountpoint)


def _user(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Click callback: a uid or gid, given as a number or a user or group name."""
    if value is None:
        return None
    if value.isdigit() and int(value) < 2**32 - 1:
        return int(value)
    import grp
    import pwd

    try:
        return pwd.getpwnam(value).pw_uid if param.name == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        kind = "user" if param.name == "uid" else "group"
        raise click.BadParameter(f"no {kind} named {value!r} (give a name or a number)", ctx=ctx, param=param) from None


def _umask(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """Click callback: an octal umask such as 022 or 0077."""
    if value is None:
        return 0
    try:
        mask = int(value, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise click.BadParameter(f"{value!r} is not an octal mask from 000 to 777 (e.g. 022)", ctx=ctx, param=param)
    return mask


def _user_allow_other() -> bool:
    """Whether /etc/fuse.conf lets users other than root mount with allow_other."""
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def _background(log_path: Path, mountpoint: Path, state_dir: Path) -> Callable[[], None]:
    """Fork the mount into the background; only the child returns (with its readiness callback).

    The parent waits until the child serves (exit 0, one line) or fails (exit 1 with the
    child's error from the log). The child leaves the terminal's session and logs to ``log_path``.
    """
    from ..mount.staging import StateError, private_directory

    try:
        if log_path.parent == state_dir:
            private_directory(state_dir, frozenset({log_path.name}))  # as the mount would make it
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except (OSError, StateError) as exc:
        raise Failure(f"cannot write the log file {log_path}: {exc}") from None
    start = os.lseek(fd, 0, os.SEEK_END)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()  # no terminal: closing it sends this mount no SIGHUP
        os.chdir("/")  # holds no directory busy
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

        def ready() -> None:
            try:
                os.write(write_end, b"ready\n")
            except OSError:
                pass  # the parent is gone (killed while waiting): the mount serves all the same
            finally:
                os.close(write_end)

        return ready
    os.close(write_end)
    os.close(fd)
    answer = b""
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()  # EOF when the child is ready or gone
    if answer.startswith(b"ready"):
        click.echo(f"mounted {mountpoint} in the background (pid {pid}, log {log_path}); "
                   f"stop it with: walrusfs umount {mountpoint}", err=True)
        raise SystemExit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(log_path, "rb") as f:
        f.seek(start)
        written = f.read().decode(errors="replace").strip().splitlines()
    errors = [line for line in written if line.startswith(("Error:", "Usage:"))] or written[-5:]
    raise Failure("the background mount did not start (exit " + str(code) + "): "
                  + ("\n".join(errors) if errors else f"see {log_path}"))


@click.command()
@mountpoint_argument
@click.option("--volume", "volume_ref", help="Volume name (keys held here), or a volume ID (a public volume, read-only).")
@click.option("--cap", "cap", help="A write or read capability (from 'walrusfs volume share'); a read capability "
                                   "mounts read-only.")
@committee_option
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS), even with the volume key.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Staging, cache and device key (default: the user state directory, per volume).")
@click.option("--chunk-size", default="4MiB", callback=parse_size, show_default=True, help="Size of the chunks new content is cut into.")
@click.option("--cache-size", default="1GiB", callback=parse_size, show_default=True, help="Local cache of verified chunks.")
@click.option("--pack-below", default="256KiB", show_default=True,
              callback=lambda ctx, param, value: 0 if value.strip() == "0" else parse_size(ctx, param, value),
              help="Files at most this large that are closed together (an untar, cp -r) are stored packed, many "
                   "in one blob (0: every file in blobs of its own).")
@click.option("--startup-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds a first mount waits for a peer to serve the log before giving up (a mount "
                   "used before comes up after 5 s without peers, serving what it has).")
@click.option("--keep-owners", is_flag=True,
              help="Show the uid and gid the writing device recorded (default: every file is the mounting user's).")
@click.option("--uid", "uid", callback=_user, metavar="USER",
              help="Show every file as this user's (a name or a number; default: the mounting user).")
@click.option("--gid", "gid", callback=_user, metavar="GROUP",
              help="Show every file as this group's (a name or a number; default: the mounting user's group).")
@click.option("--umask", "umask", callback=_umask, metavar="OCTAL",
              help="Permission bits taken out of every mode shown (e.g. 022, or 077 to keep other users out).")
@click.option("--allow-other", is_flag=True,
              help="Let other users use the mount; the kernel checks the owners and modes shown (see --uid, "
                   "--gid, --umask). Users other than root need user_allow_other in /etc/fuse.conf.")
@click.option("--background", is_flag=True,
              help="Return once the mount serves, leaving it running in the background (exit 1 with the error "
                   "if it cannot start).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where a --background mount logs (default: mount.log in its state directory).")
@click.option("--trash-time", "trash_time", default=None,
              help="How long deleted and overwritten files stay restorable before their chunks are released "
                   "(e.g. 30s, 2h, 7d; default: $WALRUSFS_TRASH_SECONDS, else the volume's setting, else 7d).")
@click.option("--debug", is_flag=True, help="Log every warning and info message.")
@click.option("--fsname", default="walrusfs", hidden=True,
              help="The source the mount table shows (mount.walrusfs passes fstab's, so mount -a sees it mounted).")
@click.option("--fault", type=click.Choice(["inconsistent-writer"]), hidden=True,
              help="TEST ONLY: encode chunks the way a malicious writer would.")
@metrics_option
@writer_key_option
def mount(mountpoint: Path, volume_ref: str | None, cap: str | None, committee_path: Path | None, read_only: bool, state_dir: Path | None,
          chunk_size: int, cache_size: int, pack_below: int, startup_timeout: float, keep_owners: bool, uid: int | None, gid: int | None,
          umask: int, allow_other: bool, background: bool, log_file: Path | None, fsname: str, debug: bool,
          trash_time: str | None, fault: str | None, metrics_address: str | None, writer_key: Path | None) -> None:
    """Mount a volume at MOUNTPOINT (runs until unmounted with 'walrusfs umount' or fusermount3 -u).

    With --background it returns once the mount serves. A dead mount left at MOUNTPOINT by a
    walrusfs mount that was killed is unmounted first.
    """
    import trio

    from p2p.host import configure_logging

    from ..mount.mountpoints import (
        FSTYPE,
        dead_mount_hint,
        mount_entry,
        state_of,
        unmount,
    )
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
    if not FSNAME.match(fsname):
        raise click.BadParameter("letters, digits and . _ - : @ only", param_hint="--fsname")
    if (volume_ref is None) == (cap is None):
        raise click.UsageError("give the volume with --volume NAME or --cap CAPABILITY (one of them)")
    if keep_owners and (uid is not None or gid is not None):
        raise click.UsageError("--keep-owners shows the recorded owners; --uid and --gid replace them (give one or the other)")
    if allow_other and os.geteuid() != 0 and not _user_allow_other():
        raise Failure("--allow-other needs the line user_allow_other in /etc/fuse.conf when the mount is not "
                      "run by root (add it as root, or mount as root)")
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
    if state_of(mountpoint) == "dead":
        entry = mount_entry(mountpoint)
        if entry is None or entry.fstype != FSTYPE:
            raise click.UsageError(dead_mount_hint(mountpoint))
        # A walrusfs mount killed here: nothing else can be using it, and its staged files
        # are in its state directory (they upload when it is mounted again).
        problem = unmount(mountpoint)
        if problem is not None:
            raise Failure(f"{dead_mount_hint(mountpoint)} (unmounting it failed: {problem})")
        click.echo(f"{mountpoint} was a dead walrusfs mount (its process had exited): unmounted it", err=True)
    if os.path.ismount(mountpoint):
        raise click.UsageError(f"{mountpoint} is already a mount point")
    if any(mountpoint.iterdir()):
        raise click.UsageError(f"{mountpoint} is not empty; mount on an empty directory")
    state_dir = Path(os.path.abspath(state_dir or default_state_dir(vol)))
    ready = None
    if background:
        ready = _background(Path(os.path.abspath(log_file or state_dir / "mount.log")), mountpoint, state_dir)
    # Started here, after a --background fork (a thread does not survive one), before the
    # mount: an address that cannot be bound is one line, with nothing mounted.
    from ..mount.metrics import MountMetrics

    metrics = MountMetrics()
    server = start_metrics(metrics.registry, metrics_address)
    if server is not None:
        click.echo(f"walrusfs mount: metrics on {server.url}", err=True)
    try:
        trio.run(lambda: serve_mount(
            mountpoint, vol, committee, state_dir, read_only=read_only,
            chunk_size=chunk_size, cache_bytes=cache_size, pack_below=pack_below,
            announce=lambda text: click.echo(text, err=True),
            inconsistent_writer=fault == "inconsistent-writer", startup_limit=startup_timeout,
            keep_owners=keep_owners, account=account, trash_seconds=trash_seconds, allow_other=allow_other,
            owner=None if uid is None and gid is None else (os.getuid() if uid is None else uid,
                                                            os.getgid() if gid is None else gid),
            umask=umask, ready=ready, fsname=fsname, metrics=metrics,
        ))
    except (MountError, StateError) as exc:
        raise Failure(str(exc)) from None
    finally:
        if server is not None:
            server.close()


def _read_status(mountpoint: Path, whole: bool) -> dict[str, Any]:
    """The mount's status document; with ``whole``, its pending list fetched page by page."""
    for _ in range(10):
        info = json.loads(os.getxattr(mountpoint, "user.walrus.status"))
        pages = info.pop("pending_pages", None)
        snapshot = info.pop("status_snapshot", None)
        if not whole or not pages:
            return info
        pending: list[Any] = []
        try:
            for page in range(1, pages + 1):
                pending += json.loads(os.getxattr(mountpoint, f"user.walrus.status.{snapshot}.{page}"))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue  # other readers made newer snapshots meanwhile: start again
            raise
        info["pending"] = pending
        return info
    raise OSError(errno.EAGAIN, "the status kept changing while its pages were read")


def _mount_status(mountpoint: Path, whole: bool = False) -> dict[str, Any]:
    """The status of the mount at ``mountpoint``, or a one-line failure saying what is there instead."""
    from ..mount.mountpoints import dead_mount_hint, state_of

    if state_of(mountpoint) == "dead":
        raise Failure(dead_mount_hint(mountpoint))
    try:
        return _read_status(mountpoint, whole)
    except OSError as exc:
        raise Failure(f"{mountpoint} is not a walrusfs mount ({exc.strerror})") from None


@click.command()
@mountpoint_argument
@click.option("--no-wait", is_flag=True, help="Unmount at once; staged files upload at the next mount.")
def umount(mountpoint: Path, no_wait: bool) -> None:
    """Wait for pending uploads, then unmount MOUNTPOINT (a dead mount left by a killed one is cleaned at once)."""
    import time

    from ..mount.mountpoints import mount_entry, state_of, unmount

    if state_of(mountpoint) == "dead":
        entry = mount_entry(mountpoint)
        problem = unmount(mountpoint)
        if problem is not None:
            raise Failure(f"{mountpoint} is a dead mount (its process exited) and unmounting it failed: {problem}")
        staged = " (files it had staged upload at its next mount)" if entry and entry.fstype == "fuse.walrusfs" else ""
        click.echo(f"unmounted {mountpoint}: it was a dead mount, its process had exited{staged}")
        return
    status = _mount_status(mountpoint)
    if not no_wait and not status.get("read_only"):
        pending = status.get("pending_count", len(status.get("pending", [])))
        if pending:
            click.echo(f"waiting for {pending} pending uploads (Ctrl-C to stop waiting; they resume at next mount)", err=True)
        fd = os.open(mountpoint, os.O_RDONLY)
        try:
            os.fsync(fd)  # the mount answers once every upload and namespace entry is in the log
        finally:
            os.close(fd)
    problem = unmount(mountpoint, lazy_if_busy=False)
    if problem is not None:
        raise Failure(f"fusermount3 -u {mountpoint}: {problem}")
    pid = status.get("pid")
    for _ in range(100):  # the mount process exits once the kernel let go
        if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    click.echo(f"unmounted {mountpoint}")


@click.command()
@mountpoint_argument
@click.option("--all", "show_all", is_flag=True, help="List every pending upload (by default the first ones that "
                                                      "fit one status page; --json always lists all).")
@json_option
def status(mountpoint: Path, show_all: bool, as_json: bool) -> None:
    """Show a mount's pending uploads and their progress."""
    info = _mount_status(mountpoint, whole=as_json or show_all)
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
               f"cache {info['cache_bytes']} bytes"
               + (f"; {info['packed_files']} small files packed into {info['packs']} blobs" if info.get("packs") else ""))
    if info.get("log_error"):
        synced = "" if info.get("log_synced") else " (not read since this mount started: showing only local state)"
        click.echo(f"log: {info['log_error']}{synced}")
    if info.get("storage_refused"):
        click.echo(f"storage refused (Disk quota exceeded; files stay staged and are retried): {info['storage_refused']}")
    if info.get("incomplete_count"):
        many = info["incomplete_count"] > 1
        click.echo(f"{info['incomplete_count']} {'files were' if many else 'file was'} open for writing when the "
                   f"mount stopped and may be incomplete ({'each carries' if many else 'it carries'} "
                   "user.walrus.incomplete; remove it once checked):")
        for item in info["incomplete"]:
            click.echo(f"  {item['path']}  {item['kept_bytes']} bytes kept")
        if info["incomplete_count"] > len(info["incomplete"]):
            click.echo(f"  ... and {info['incomplete_count'] - len(info['incomplete'])} more")
    count = info.get("pending_count", len(info["pending"]))
    if not count:
        click.echo("no pending uploads")
    else:
        click.echo(f"{count} pending uploads:")
    for item in info["pending"]:
        line = (f"  {item.get('name') or item['node'][:16]}  {item['state']:<9} "
                f"{item['uploaded_bytes']}/{item['staged_bytes']} staged bytes of {item['size']}")
        if item.get("attempts"):
            line += f"  attempt {item['attempts']}" + (f", next in {item['retry_in']:.0f} s" if item.get("retry_in") else "")
        click.echo(line + (f"  error: {item['error']}" if item.get("error") else ""))
    if count > len(info["pending"]):
        click.echo(f"  ... and {count - len(info['pending'])} more (walrusfs status --all lists them)")

"""volume: creating and listing volumes, their usage and trash; gc: releasing what they no longer use."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    Failure,
    committee_option,
    default_committee_path,
    iso_time,
    json_option,
    load_committee,
    writer_key_option,
)

_T = TypeVar("_T")


@click.group()
def volume() -> None:
    """Volumes: namespaces owned by a key kept in your config directory."""


@volume.command("create")
@click.argument("name")
@click.option("--public", is_flag=True,
              help="Store names and contents in the clear (for public data); by default they are sealed and "
                   "peers hold only ciphertext.")
@click.option("--from-cap", "from_cap", default=None,
              help="Keep a volume someone shared with you as a write capability under NAME instead of making one.")
@json_option
def volume_create(name: str, public: bool, from_cap: str | None, as_json: bool) -> None:
    """Make a new volume NAME (private unless --public) and print its ID."""
    from ..core.capabilities import CapabilityError, WriteCap, parse_capability
    from ..mount.volumes import VolumeError, config_dir, create_volume

    cap = None
    if from_cap is not None:
        try:
            cap = parse_capability(from_cap)
        except CapabilityError as exc:
            raise click.BadParameter(str(exc), param_hint="--from-cap") from None
        if not isinstance(cap, WriteCap):
            raise click.BadParameter("only a write capability can be kept as a volume (mount read and verify "
                                     "capabilities with --cap)", param_hint="--from-cap")
        if public:
            raise click.UsageError("--public and --from-cap do not go together: the capability says which kind it is")
    try:
        made = create_volume(name, public=public, cap=cap)
    except VolumeError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"name": made.name, "volumeId": made.volume_id, "kind": made.kind,
                               "keyFile": str(config_dir() / "volumes" / f"{name}.key")}))
    else:
        click.echo(f"volume {name} ({made.kind}): {made.volume_id}")
        click.echo(f"mount it with: walrusfs mount DIR --volume {name}")
        click.echo(f"share it with: walrusfs volume share {name} --read   (or --verify, --write)")


@volume.command("share")
@click.argument("name")
@click.option("--read", "kind", flag_value="read", help="Reads everything, changes nothing: mounts read-only.")
@click.option("--verify", "kind", flag_value="verify",
              help="Lists the volume's blobs and checks their availability; reads no name and no byte.")
@click.option("--write", "kind", flag_value="write", help="Everything the volume key can do: treat it like the key.")
def volume_share(name: str, kind: str | None) -> None:
    """Print a capability for volume NAME that you can give to someone."""
    from ..mount.volumes import VolumeError, resolve_volume

    if kind is None:
        raise click.UsageError("say which capability to print: --read, --verify or --write")
    try:
        cap = resolve_volume(name).capability(kind)
    except VolumeError as exc:
        raise Failure(str(exc)) from None
    click.echo(str(cap))


@volume.command("blobs")
@click.argument("name")
@click.option("--check", is_flag=True, help="Ask the peers for each blob's availability too.")
@committee_option
@json_option
def volume_blobs(name: str, check: bool, committee_path: Path | None, as_json: bool) -> None:
    """List the blobs volume NAME (a name, ID or any capability) holds, from the log alone; reads no content."""
    from ..core.metadata import BlobId
    from ..mount.lifecycle import volume_holdings

    async def job(view: Any) -> list[dict[str, Any]]:
        rows: dict[bytes, dict[str, Any]] = {}
        for held in volume_holdings(view.vlog):
            row = rows.setdefault(held.blob, {"blobId": str(BlobId(held.blob)), "length": held.length,
                                              "endEpoch": held.end_epoch, "live": held.live})
            row["endEpoch"] = max(row["endEpoch"], held.end_epoch)
            row["live"] = row["live"] or held.live
        quorum = view.client.committee.quorum
        if check:
            for blob, row in rows.items():
                status = await view.client.blob_status(BlobId(blob))
                shards = sum(len(s["shards"]) for s in status if s.get("reachable")
                             and sorted(s.get("valid_pairs") or []) == s["pairs_expected"])
                row.update(validShards=shards, available=shards >= quorum)
        return sorted(rows.values(), key=lambda r: r["blobId"])

    rows = _run_on_volume(name, committee_path, None, False, job)
    if as_json:
        click.echo(json.dumps(rows))
    else:
        for row in rows:
            line = f"{row['blobId']}  {row['length']:>12} bytes  end epoch {row['endEpoch']}"
            line += "" if row["live"] else "  (expired or deleted)"
            if check:
                line += f"  {row['validShards']} shards hold it: " + ("available" if row["available"] else "AT RISK")
            click.echo(line)
        click.echo(f"{len(rows)} blobs")
    if check and any(r["live"] and not r["available"] for r in rows):
        sys.exit(EXIT_FAILED)


@volume.command("list")
@json_option
def volume_list(as_json: bool) -> None:
    """List the volumes whose keys you hold."""
    from ..mount.volumes import VolumeError, list_volumes

    problems: list[str] = []
    try:
        volumes = list_volumes(problems)
    except VolumeError as exc:
        raise Failure(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{"name": v.name, "volumeId": v.volume_id, "kind": v.kind} for v in volumes]))
    for v in volumes if not as_json else ():
        click.echo(f"{v.name}  {v.volume_id}  {v.kind}")
    for problem in problems:
        click.echo(f"walrusfs: skipped unreadable key file of volume {problem}", err=True)
    if problems:
        sys.exit(EXIT_FAILED)


def _run_on_volume(volume_ref: str, committee_path: Path | None, writer_key: Path | None, needs_key: bool,
                   job: Callable[[Any], Awaitable[_T]]) -> _T:
    """Follow a volume's log as a command and run ``job(view)`` on it (signing as the command's device)."""
    import tempfile

    import trio

    from p2p.host import configure_logging, running_host

    from ..client.blob import StoreError
    from ..mount.lifecycle import command_state_dir, volume_view
    from ..mount.staging import MountState, StateError
    from ..mount.volumes import VolumeError, resolve_volume

    configure_logging(logging.CRITICAL)
    committee = load_committee(committee_path)
    try:
        vol = resolve_volume(volume_ref)
    except VolumeError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if needs_key and not vol.writable:
        raise Failure(f"volume {volume_ref} is not yours here: this needs its key (volumes/NAME.key)")
    account = None
    if vol.writable:
        from ..client.writer import WriterKeyError, load_key, writer_key_path

        try:
            account = load_key(writer_key or writer_key_path(committee_path or default_committee_path()), create=True)
        except WriterKeyError as exc:
            raise Failure(str(exc)) from None

    async def main(directory: Path) -> _T:
        failure: Exception | None = None
        state = await trio.to_thread.run_sync(MountState, directory)
        try:
            async with running_host(os.urandom(32)) as host:
                try:
                    async with volume_view(host, committee, vol, account, state) as view:
                        result = await job(view)
                except Exception as exc:  # re-raised after the host closed, as itself
                    failure = exc
        finally:
            await trio.to_thread.run_sync(state.close)
        if failure is not None:
            raise failure
        return result

    try:
        if vol.writable:
            return trio.run(main, command_state_dir(vol))
        with tempfile.TemporaryDirectory(prefix="walrusfs-volume-") as scratch:
            return trio.run(main, Path(scratch))
    except (StoreError, StateError) as exc:
        raise Failure(str(exc)) from None


def _when(millis: int | None) -> str:
    return iso_time(millis) if millis is not None else "-"


@volume.command("du")
@click.argument("name")
@committee_option
@writer_key_option
@json_option
def volume_du(name: str, committee_path: Path | None, writer_key: Path | None, as_json: bool) -> None:
    """Show a volume's logical size, its chunks' encoded size on the peers and what waits in the trash."""
    from ..mount.lifecycle import summary

    async def job(view: Any) -> dict[str, Any]:
        usage, decided = await view.keeper.survey()
        return summary(usage, decided, view.keeper.trash_seconds(usage.namespace))

    info = _run_on_volume(name, committee_path, writer_key, False, job)
    if as_json:
        click.echo(json.dumps(info))
        sys.exit(EXIT_FAILED if info["missingChunks"] else 0)
    click.echo(f"{info['files']} files, {info['logicalBytes']} bytes in {info['chunks']} chunks")
    click.echo(f"on the peers: {info['encodedBytes']} encoded bytes in {info['liveRegistrationChunks']} "
               f"registered chunks (storage epoch {info['epoch']})")
    click.echo(f"pending release: {info['pendingReleaseBytes']} encoded bytes in {info['pendingReleaseChunks']} "
               f"chunks, next at {_when(info['nextReleaseMs'])} (trash time {info['trashSeconds']:.0f} s)")
    if info["missingChunks"]:
        click.echo(f"MISSING: {len(info['missingChunks'])} chunks the tree uses are held by no live registration, "
                   f"e.g. {info['missingChunks'][0]}", err=True)
        sys.exit(EXIT_FAILED)


@volume.command("trash")
@click.argument("name")
@committee_option
@writer_key_option
@json_option
def volume_trash(name: str, committee_path: Path | None, writer_key: Path | None, as_json: bool) -> None:
    """List a volume's deleted (and overwritten) files that can still be restored."""
    from ..mount.lifecycle import trash_rows

    async def job(view: Any) -> list[dict[str, Any]]:
        _, decided = await view.keeper.survey()
        return trash_rows(decided)

    rows = _run_on_volume(name, committee_path, writer_key, False, job)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("the trash is empty")
    for row in rows:
        click.echo(f"{row['path']}  {row['size']} bytes  {row['kind']} at {_when(row['removedMs'])}")


@volume.command("restore")
@click.argument("name")
@click.argument("path")
@click.option("--as", "as_path", default=None, help="Restore under this path instead (the original may exist again).")
@committee_option
@writer_key_option
@json_option
def volume_restore(name: str, path: str, as_path: str | None, committee_path: Path | None, writer_key: Path | None,
                   as_json: bool) -> None:
    """Bring back the latest removed version of PATH from the trash (while its chunks are held)."""
    from ..mount.lifecycle import find_trash, restore_ops

    async def job(view: Any) -> dict[str, Any]:
        usage, decided = await view.keeper.survey()
        item = find_trash(decided.restorable, path)
        if item is None:
            raise Failure(f"{path} is not in the trash of volume {name} (or its chunks were released); "
                          f"see `walrusfs volume trash {name}`", EXIT_NOT_FOUND)
        target = "/" + (as_path or item.path).strip("/")
        try:
            ops = restore_ops(usage, item, target)
        except ValueError as exc:
            raise Failure(str(exc)) from None
        await view.append_published(ops)
        return {"path": target, "size": item.content.size, "from": item.path, "removedMs": item.removed_ms}

    info = _run_on_volume(name, committee_path, writer_key, True, job)
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"restored {info['from']} as {info['path']} ({info['size']} bytes)")


@click.command("gc")
@click.argument("name")
@click.option("--now", "ignore_trash", is_flag=True,
              help="Release every chunk nothing references, without waiting for the trash time.")
@committee_option
@writer_key_option
@json_option
def gc(name: str, ignore_trash: bool, committee_path: Path | None, writer_key: Path | None, as_json: bool) -> None:
    """Renew what volume NAME uses and release the chunks whose trash time has passed, now."""

    async def job(view: Any) -> dict[str, Any]:
        report = await view.keeper.run_pass(ignore_trash=ignore_trash)
        return {"epoch": report.epoch, "extended": report.extended, "deleted": report.deleted,
                "pendingReleaseBytes": report.pending_bytes, "pendingReleaseChunks": report.pending_chunks,
                "nextReleaseMs": report.next_release_ms, "missing": report.missing, "error": report.error}

    info = _run_on_volume(name, committee_path, writer_key, True, job)
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"storage epoch {info['epoch']}: extended {info['extended']}, released {info['deleted']} "
                   f"registrations; {info['pendingReleaseBytes']} encoded bytes wait in the trash "
                   f"(next release {_when(info['nextReleaseMs'])})")
    if info["error"]:
        click.echo(f"walrusfs: {info['error']}", err=True)
        sys.exit(EXIT_FAILED)

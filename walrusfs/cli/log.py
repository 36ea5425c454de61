"""log: the replicated log's entries, checked here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..core.metadata import BlobId
from .common import (
    Failure,
    committee_option,
    iso_time,
    json_option,
    load_committee,
    with_client,
)


@click.command("log")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries (Ctrl-C to stop).")
@click.option("--author", help="Only entries by this peer ID.")
@click.option("--kind", help="Only entries of this kind (e.g. blob-certified).")
@click.option("--peer", "peer_index", type=int, default=None, help="Read this committee member's log (default: first that answers).")
@committee_option
@json_option
def log_command(follow: bool, author: str | None, kind: str | None, peer_index: int | None,
                committee_path: Path | None, as_json: bool) -> None:
    """Show the log's entries, oldest first, each checked here for validity."""
    import trio

    from p2p.rpc import PeerUnavailable

    from ..client.blob import LogTooLarge
    from ..core.errors import CodecError
    from ..core.log import LogError, LogState, check_entry, shown_millis

    committee = load_committee(committee_path)
    names = {p.public_key: p.peer_id for p in committee.peers}
    if author and author not in names.values():
        raise click.BadParameter(f"{author} is not a committee member", param_hint="--author")

    def describe(entry: Any, counted: bool) -> dict[str, Any]:
        # Checked like a peer checks it, against our clock: a stamp too far ahead shows as
        # not (yet) valid, and its time is never shown later than now.
        now = int(time.time() * 1000)
        try:
            check_entry(entry, committee, now)
            validity = "valid" if counted else "equivocation"
        except LogError as exc:
            validity = f"INVALID: {exc}"
        row = {"entryId": entry.id.hex(), "author": names.get(entry.author, entry.author.hex()),
               "seq": entry.seq, "time": iso_time(shown_millis(entry.hlc, now)), "kind": entry.kind, "validity": validity}
        if entry.kind == "blob-certified" and "blob_id" in entry.payload:
            row["blobId"] = str(BlobId(entry.payload["blob_id"]))
            row["length"] = entry.payload.get("length")
        if entry.kind == "blob-invalid" and "blob_id" in entry.payload:
            row["blobId"] = str(BlobId(entry.payload["blob_id"]))
            row["attestations"] = len(entry.payload.get("signers", []))
        return row

    async def job(client: Any) -> None:
        shown: set[bytes] = set()
        while True:
            entries = None
            if peer_index is not None:
                try:
                    entries = await client.log_entries(peer_index)
                except LogTooLarge as exc:
                    raise Failure(str(exc)) from None
                except (PeerUnavailable, CodecError):
                    pass
            else:
                # Every peer's heads at once, then the fullest log, hedged: a silent peer
                # neither holds the command nor hides entries that others have.
                entries = await client.fullest_log()
            if entries is None:
                raise Failure("no peer answered with its log")
            state = LogState(committee)
            for entry in entries:
                state.apply(entry, checked=True)
            counted = {e.id for e in state.counted()}
            for entry in sorted(entries, key=lambda e: (e.hlc, e.author, e.seq)):
                if entry.id in shown:
                    continue
                shown.add(entry.id)
                row = describe(entry, entry.id in counted)
                if (author and row["author"] != author) or (kind and entry.kind != kind):
                    continue
                if as_json:
                    click.echo(json.dumps(row))
                else:
                    extra = ""
                    if "length" in row:
                        extra = f" blob {row['blobId']} ({row['length']} bytes)"
                    elif "attestations" in row:
                        extra = f" blob {row['blobId']} INVALID ({row['attestations']} attestations)"
                    click.echo(f"{row['time']}  {row['author'][:20]}... #{row['seq']}  {row['kind']}{extra}  "
                               f"[{row['validity']}]  {row['entryId'][:16]}")
            if not follow:
                return
            await trio.sleep(1.0)

    with_client(committee, job)

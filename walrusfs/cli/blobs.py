"""Blob commands: blob-id, store, read, blob-status."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..core.config import EncodingConfig
from ..core.errors import CodecError
from ..core.metadata import BlobId
from ..core.redstuff import compute_metadata
from .common import (
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    Failure,
    at_once,
    committee_option,
    encoding_config,
    iso_time,
    json_option,
    load_committee,
    load_writer,
    parse_blob_id,
    progress_bar,
    with_client,
    writer_key_option,
)


@click.command("blob-id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--shards", "-n", "config", type=int, required=True, callback=encoding_config, metavar="N",
    help="Number of shards in the committee (at least 4).",
)
@json_option
def blob_id(file: str, config: EncodingConfig, as_json: bool) -> None:
    """Print the Walrus blob ID of FILE encoded for N shards (use - for stdin)."""
    if file != "-":
        size = os.path.getsize(file)
        if size > config.max_blob_size:
            raise click.ClickException(
                f"{file} is {size} bytes; a single blob for {config.n_shards} shards holds at "
                f"most {config.max_blob_size} bytes"
            )
    with click.open_file(file, "rb") as stream:
        data = stream.read(config.max_blob_size + 1)
    try:
        metadata = compute_metadata(data, config)
    except CodecError as exc:
        raise click.ClickException(str(exc)) from exc
    length = len(data)
    encoded = config.encoded_blob_length(length)
    report = {
        "blobId": str(metadata.blob_id()),
        "file": file,
        "unencodedLength": length,
        "encodingType": "RS2",
        "nShards": config.n_shards,
        "symbolSize": config.symbol_size(length),
        "encodedLength": encoded,
        "overheadFactor": round(encoded / length, 3) if length else None,
        "walrusCompatible": length <= config.walrus_max_blob_size,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    overhead = f"{report['overheadFactor']}x" if length else "n/a for an empty blob"
    click.echo(f"Blob from file '{file}' encoded successfully.")
    click.echo(f"Unencoded size: {length} bytes")
    click.echo(f"Blob ID: {report['blobId']}")
    click.echo("Encoding type: RedStuff/Reed-Solomon (RS2)")
    click.echo(f"Shards: {config.n_shards} (symbol size {report['symbolSize']} bytes)")
    click.echo(f"Encoded size: {encoded} bytes (overhead {overhead})")
    if not report["walrusCompatible"]:
        click.echo(
            f"Note: Walrus itself encodes at most {config.walrus_max_blob_size} bytes for "
            f"{config.n_shards} shards; this larger blob is a walrusfs extension."
        )


def parse_epochs(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Click callback: a number of epochs (1..53) or ``max``."""
    from ..core.lifecycle import MAX_EPOCHS_AHEAD

    if value == "max":
        return MAX_EPOCHS_AHEAD
    if not value.isdigit() or not 1 <= int(value) <= MAX_EPOCHS_AHEAD:
        raise click.BadParameter(f"must be 1..{MAX_EPOCHS_AHEAD} or max, got {value!r}", ctx=ctx, param=param)
    return int(value)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--epochs", default="5", show_default=True, callback=parse_epochs, metavar="N|max",
              help="Storage epochs to keep the blob for, from the current one (max: 53).")
@click.option("--permanent", is_flag=True, help="Cannot be deleted before it expires (default: deletable).")
@click.option("--deletable", is_flag=True, hidden=True, help="The default: the owner may delete it early.")
@committee_option
@writer_key_option
@json_option
def store(file: str, epochs: int, permanent: bool, deletable: bool, committee_path: Path | None,
          writer_key: Path | None, as_json: bool) -> None:
    """Store FILE as a blob for --epochs storage epochs; print its blob ID, lifetime and certificate."""
    from ..client.blob import AccessDenied, StoreError

    if permanent and deletable:
        raise click.UsageError("--permanent and --deletable exclude each other")
    committee = load_committee(committee_path)
    authority = load_writer(committee_path, writer_key)
    config = committee.config
    if file != "-" and os.path.getsize(file) > config.max_blob_size:  # refuse before reading it
        raise Failure(f"{file} is larger than one blob for {config.n_shards} shards ({config.max_blob_size} bytes)")
    with click.open_file(file, "rb") as stream:
        data = stream.read(config.max_blob_size + 1)
    if len(data) > config.max_blob_size:
        raise Failure(f"{file} is larger than one blob for {config.n_shards} shards ({config.max_blob_size} bytes)")
    total = config.encoded_slivers_length(len(data))
    with progress_bar("storing", total) as bar:
        try:
            result = with_client(committee, lambda client: client.store(
                data, progress=bar.update, epochs=epochs, deletable=not permanent), authority=authority)
        except AccessDenied as exc:
            raise Failure(str(exc), EXIT_DENIED) from exc
        except StoreError as exc:
            raise Failure(str(exc)) from exc
    registration = result.registration
    assert registration is not None
    cert = result.certificate
    report = {
        "blobId": str(result.blob_id),
        "unencodedLength": len(data),
        "epoch": cert.epoch,
        "registrationId": registration.id.hex(),
        "owner": registration.writer.owner.hex(),
        "endEpoch": registration.end_epoch,
        "deletable": registration.deletable,
        "certificate": {
            "signers": [committee.peers[i].peer_id for i in cert.signers],
            "shards": committee.weight(cert.signers),
            "quorum": committee.quorum,
            "signatures": [sig.hex() for sig in cert.signatures],
        },
        "failures": result.failures,
        "entryId": result.entry.id.hex() if result.entry else None,
        "loggedBy": result.logged_by,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"Blob ID: {result.blob_id}")
    click.echo(f"Size: {len(data)} bytes on {committee.n_shards} shards")
    click.echo(f"Lifetime: until storage epoch {registration.end_epoch} "
               f"({'deletable' if registration.deletable else 'permanent'}), registration {registration.id.hex()}")
    click.echo(
        f"Certificate: {len(cert.signers)} peers holding {committee.weight(cert.signers)} of "
        f"{committee.n_shards} shards signed (quorum {committee.quorum}), epoch {cert.epoch}"
    )
    for peer_id, why in sorted(result.failures.items()):
        click.echo(f"  not confirmed by {peer_id}: {why}")
    if result.entry:
        click.echo(f"Log entry: {result.entry.id.hex()} (held by {len(result.logged_by)} peers' logs)")


@click.command()
@click.argument("blob", metavar="BLOB_ID", callback=parse_blob_id)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--offset", type=click.IntRange(0), default=0, help="First byte to read.")
@click.option("--length", type=click.IntRange(0), default=None, help="Bytes to read (default: to the end).")
@click.option("--strict", is_flag=True, help="Recompute the blob ID from the decoded bytes.")
@committee_option
def read(blob: BlobId, output: Path | None, offset: int, length: int | None, strict: bool, committee_path: Path | None) -> None:
    """Read blob BLOB_ID back, verified against its commitments."""
    from ..client.blob import InvalidBlobError, ReadError

    committee = load_committee(committee_path)
    if output is not None and not output.parent.is_dir():
        # Checked before the download, which may be long.
        raise click.BadParameter(f"directory {output.parent} does not exist", param_hint="--output")

    async def job(client: Any) -> bytes:
        metadata = await client.get_metadata(blob)
        if offset > metadata.unencoded_length:
            raise ReadError(f"offset {offset} is beyond the end of blob {blob} ({metadata.unencoded_length} bytes)")
        size = metadata.unencoded_length - offset if length is None else length
        with progress_bar("reading", max(size, 1)) as bar:
            return await client.read(blob, offset, size, strict=strict, metadata=metadata,
                                     progress=lambda k: bar.update(min(k, size)))

    try:
        data = with_client(committee, job)
    except InvalidBlobError as exc:
        raise Failure(str(exc), EXIT_INVALID) from exc
    except ReadError as exc:
        code = EXIT_NOT_FOUND if "does not exist" in str(exc) else EXIT_FAILED
        raise Failure(str(exc), code) from exc
    if output:
        tmp = output.with_name(output.name + ".partial")
        try:
            tmp.write_bytes(data)
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Failure(f"cannot write {output}: {exc.strerror}") from None
        click.echo(f"wrote {len(data)} bytes to {output}", err=True)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@click.command("blob-status")
@click.argument("blob", metavar="BLOB_ID", callback=parse_blob_id)
@committee_option
@json_option
def blob_status(blob: BlobId, committee_path: Path | None, as_json: bool) -> None:
    """Show which peers hold which slivers of BLOB_ID and who confirmed it."""
    from ..core.log import shown_millis

    committee = load_committee(committee_path)

    async def job(client: Any) -> tuple[Any, Any, Any]:
        status, entries = await at_once(lambda: client.blob_status(blob), lambda: client.blob_entries(blob))
        return (status, *entries)

    status, entry, invalid = with_client(committee, job)
    valid_shards = sum(len(s["shards"]) for s in status if s.get("reachable")
                       and sorted(s.get("valid_pairs") or []) == s["pairs_expected"])
    confirmed = [s for s in status if s.get("confirmed")]
    weight = sum(len(s["shards"]) for s in confirmed)
    poa = None
    if entry is not None:
        poa = {
            "entryId": entry.id.hex(),
            "author": committee.peers[[p.public_key for p in committee.peers].index(entry.author)].peer_id,
            "time": iso_time(shown_millis(entry.hlc, int(time.time() * 1000))),
            "signers": [committee.peers[i].peer_id for i in entry.payload["signers"]],
        }
    if as_json:
        click.echo(json.dumps({"blobId": str(blob), "confirmedShards": weight, "quorum": committee.quorum,
                               "certified": poa is not None, "pointOfAvailability": poa,
                               "validShards": valid_shards,
                               "invalid": invalid.id.hex() if invalid else None, "peers": status}, indent=2))
        _exit_unknown(status, poa, invalid)
        return
    if invalid is not None:
        click.echo(f"Blob {blob}: INVALID, its writer encoded it inconsistently (log entry {invalid.id.hex()[:16]}..., "
                   f"{len(invalid.payload['signers'])} attestations); peers deleted its slivers")
    if poa:
        click.echo(f"Blob {blob}: certified in the log at {poa['time']} (entry {poa['entryId'][:16]}..., "
                   f"{len(poa['signers'])} signers)")
    else:
        click.echo(f"Blob {blob}: no certificate in the log")
    click.echo(f"Blob {blob}: confirmed by peers holding {weight} of {committee.n_shards} shards "
               f"({'certifiable' if weight >= committee.quorum else 'below quorum ' + str(committee.quorum)})")
    click.echo(f"Blob {blob}: valid slivers verified now on {valid_shards} of {committee.n_shards} shards")
    for s in status:
        if not s["reachable"]:
            click.echo(f"  {s['peer_id']}: unreachable ({s['error']})")
            continue
        valid = s.get("valid_pairs") or []
        held = ("all valid" if sorted(valid) == s["pairs_expected"]
                else f"valid {valid}, stored {s['pairs']} of {s['pairs_expected']}")
        extra = ", healing" if s.get("healing") else ""
        click.echo(f"  {s['peer_id']}: shards {s['shards']}, pairs {held}, metadata {'yes' if s['metadata'] else 'no'}, "
                   f"{'confirmed' if s['confirmed'] else 'not confirmed'}{extra}")
    _exit_unknown(status, poa, invalid)


def _exit_unknown(status: list[dict[str, Any]], poa: Any, invalid: Any) -> None:
    """Exit 4 (not found) when no log entry and no reachable peer knows the blob."""
    known = poa is not None or invalid is not None or any(s.get("metadata") or s.get("pairs") for s in status)
    if not known:
        click.echo("walrusfs: no peer and no log entry knows this blob", err=True)
        sys.exit(EXIT_NOT_FOUND)

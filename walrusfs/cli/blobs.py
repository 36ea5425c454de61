"""Blob commands: blob-id, store, read, blob-status, extend, delete."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ..core.capabilities import BlobCap


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
@click.option("--encrypt", is_flag=True,
              help="Seal FILE under a fresh random key; print a blob capability, the only way to read it.")
@committee_option
@writer_key_option
@json_option
def store(file: str, epochs: int, permanent: bool, deletable: bool, encrypt: bool, committee_path: Path | None,
          writer_key: Path | None, as_json: bool) -> None:
    """Store FILE as a blob for --epochs storage epochs; print its blob ID, lifetime and certificate."""
    from ..client.blob import AccessDenied, StoreError
    from ..core import sealing
    from ..core.capabilities import BlobCap

    if permanent and deletable:
        raise click.UsageError("--permanent and --deletable exclude each other")
    committee = load_committee(committee_path)
    authority = load_writer(committee_path, writer_key)
    config = committee.config
    # A sealed blob is the plaintext plus its nonce and tag, and must fit one blob.
    limit = config.max_blob_size - (sealing.BLOB_OVERHEAD if encrypt else 0)
    too_large = (f"{file} is larger than one {'encrypted ' if encrypt else ''}blob for {config.n_shards} shards "
                 f"({limit} bytes{f' after the {sealing.BLOB_OVERHEAD}-byte nonce and tag' if encrypt else ''})")
    if file != "-" and os.path.getsize(file) > limit:  # refuse before reading it
        raise Failure(too_large)
    with click.open_file(file, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise Failure(too_large)
    plaintext_length = len(data)
    key = None
    if encrypt:
        # Whole in memory, as a plain store holds it: one AEAD over the blob, so the
        # capability's key opens exactly these bytes and nothing else.
        key = sealing.new_key()
        data = sealing.seal_blob(key, data)
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
    capability = str(BlobCap(result.blob_id, key)) if key is not None else None
    if capability is not None:
        report.update(encrypted=True, plaintextLength=plaintext_length, capability=capability)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"Blob ID: {result.blob_id}{' (of the ciphertext)' if capability else ''}")
    if capability:
        click.echo(f"Size: {len(data)} bytes ({plaintext_length} bytes sealed) on {committee.n_shards} shards")
    else:
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
    if capability:
        # Last, on a line of its own, so `tail -n 1` or `grep ^walrusfs-blob:` takes it.
        click.echo("Capability (the only way to read this blob: keep it secret; losing it loses the data):")
        click.echo(capability)


def parse_blob_or_cap(ctx: click.Context, param: click.Parameter, value: str) -> BlobId | BlobCap:
    """Click callback: a blob ID, or a blob capability (``walrusfs-blob:...``), with the reason if neither."""
    # Imported here: the capability code loads PyNaCl, which `walrusfs --help` need not.
    from ..core.capabilities import BlobCap, CapabilityError, parse_capability

    if ":" not in value:
        try:
            return BlobId.parse(value)
        except CodecError as exc:
            if not value.strip().startswith("walrusfs-"):
                raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
            # Else a capability cut before its first ':': say that, not "not a blob ID".
    try:
        cap = parse_capability(value)
    except CapabilityError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if not isinstance(cap, BlobCap):
        raise click.BadParameter(
            "`read` takes a blob ID or a blob capability (walrusfs-blob:...); volume capabilities "
            "(walrusfs-write, walrusfs-read, walrusfs-verify) are for `walrusfs mount --cap`", ctx=ctx, param=param)
    return cap


@click.command()
@click.argument("blob", metavar="BLOB_ID|CAP", callback=parse_blob_or_cap)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--offset", type=click.IntRange(0), default=0, help="First byte to read.")
@click.option("--length", type=click.IntRange(0), default=None, help="Bytes to read (default: to the end).")
@click.option("--strict", is_flag=True, help="Recompute the blob ID from the decoded bytes.")
@committee_option
def read(blob: BlobId | BlobCap, output: Path | None, offset: int, length: int | None, strict: bool,
         committee_path: Path | None) -> None:
    """Read blob BLOB_ID back, verified against its commitments; given a blob capability, its plaintext."""
    from ..client.blob import BlobGone, InvalidBlobError, ReadError
    from ..core import sealing
    from ..core.capabilities import BlobCap

    committee = load_committee(committee_path)
    if output is not None and not output.parent.is_dir():
        # Checked before the download, which may be long.
        raise click.BadParameter(f"directory {output.parent} does not exist", param_hint="--output")
    cap = blob if isinstance(blob, BlobCap) else None
    blob_id = cap.blob_id if cap else blob
    assert isinstance(blob_id, BlobId)

    async def job(client: Any) -> bytes:
        metadata = await client.get_metadata(blob_id)
        end = metadata.unencoded_length
        if cap:
            # The whole ciphertext: the AEAD tag covers all of it, so no range opens alone.
            end = max(end - sealing.BLOB_OVERHEAD, 0)
        if offset > end:
            raise ReadError(f"offset {offset} is beyond the end of blob {blob_id} ({end} bytes"
                            f"{' of plaintext' if cap else ''})")
        if cap and length is not None and offset + length > end:
            # As a plain read refuses a range past the end (checked here, before the download).
            raise ReadError(f"range {offset}+{length} is outside blob {blob_id} of {end} bytes of plaintext")
        start, size = (0, metadata.unencoded_length) if cap else (offset, end - offset if length is None else length)
        with progress_bar("reading", max(size, 1)) as bar:
            return await client.read(blob_id, start, size, strict=strict, metadata=metadata,
                                     progress=lambda k: bar.update(min(k, size)))

    try:
        data = with_client(committee, job)
    except InvalidBlobError as exc:
        raise Failure(str(exc), EXIT_INVALID) from exc
    except BlobGone as exc:
        raise Failure(str(exc), EXIT_NOT_FOUND) from exc
    except ReadError as exc:
        code = EXIT_NOT_FOUND if "does not exist" in str(exc) else EXIT_FAILED
        raise Failure(str(exc), code) from exc
    if cap:
        try:
            data = sealing.open_blob(cap.key, data)
        except sealing.SealError:
            raise Failure(f"the key in this capability does not open blob {blob_id} (a different key, or the "
                          "blob is not one `store --encrypt` sealed); copy the capability again") from None
        data = data[offset:] if length is None else data[offset:offset + length]
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
    """Show which peers hold which slivers of BLOB_ID, who confirmed it, its owners and lifetime."""
    from ..client.blob import StoreError
    from ..core.log import shown_millis

    committee = load_committee(committee_path)

    async def job(client: Any) -> tuple[Any, ...]:
        async def epoch() -> int | None:
            try:
                return await client.storage_epoch(fresh=True)
            except StoreError:
                return None  # no peer told it: the lifetimes are shown without a state

        status, entries, (registrations, views), storage_epoch = await at_once(
            lambda: client.blob_status(blob), lambda: client.blob_entries(blob),
            lambda: client.registrations(blob), epoch)
        return (status, *entries, registrations, views, storage_epoch)

    status, entry, invalid, registrations, views, storage_epoch = with_client(committee, job)
    report = lifetimes(committee, registrations, views, storage_epoch if storage_epoch is not None else -1)
    if storage_epoch is None:
        for r in report:
            r["state"] = None
    state = blob_state(report) if storage_epoch is not None else None
    end = max((r["endEpoch"] for r in report if r["state"] == "live"), default=None)
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
                               "invalid": invalid.id.hex() if invalid else None, "peers": status,
                               "storageEpoch": storage_epoch, "state": state, "endEpoch": end,
                               "owners": sorted({r["owner"] for r in report if r["state"] == "live"}),
                               "registrations": report}, indent=2))
        _exit_unknown(committee, status, poa, invalid)
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
    if report:
        now = f"storage epoch {storage_epoch}" if storage_epoch is not None else "storage epoch unknown"
        summary = {"live": f"live until storage epoch {end}", "expired": "EXPIRED: its slivers are deleted",
                   "deleted": "DELETED by its owners: its slivers are deleted"}.get(state or "", "state unknown")
        click.echo(f"Blob {blob}: {summary} ({now}; {len(report)} registration(s))")
        for r in report:
            kind = "deletable" if r["deletable"] else "permanent"
            extended = f", extended from {r['registeredEndEpoch']}" if r["endEpoch"] != r["registeredEndEpoch"] else ""
            click.echo(f"  registration {r['registrationId'][:16]}...: owner {r['owner'][:16]}..., {kind}, "
                       f"ends at epoch {r['endEpoch']}{extended}: {r['state'] or 'state unknown'}")
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
    _exit_unknown(committee, status, poa, invalid)


def _exit_unknown(committee: Any, status: list[dict[str, Any]], poa: Any, invalid: Any) -> None:
    """Exit 4 (not found) when no log entry and no peer knows the blob, 1 when too few peers answered to tell."""
    known = poa is not None or invalid is not None or any(s.get("metadata") or s.get("pairs") for s in status)
    if known:
        return
    # A stored blob is held by peers of 2f + 1 shards: only answers from as many shards
    # are sure to include one of them. Unreachable peers know nothing about existence.
    answered = sum(len(s["shards"]) for s in status if s.get("reachable"))
    if answered < committee.quorum:
        click.echo(f"walrusfs: no peer that answered knows this blob, but only peers holding {answered} of "
                   f"{committee.n_shards} shards answered ({committee.quorum} are needed to tell that it does "
                   "not exist)", err=True)
        sys.exit(EXIT_FAILED)
    click.echo("walrusfs: no peer and no log entry knows this blob", err=True)
    sys.exit(EXIT_NOT_FOUND)


# ---------------------------------------------------------------------------- lifetimes


def lifetimes(committee: Any, registrations: list[Any], views: dict[str, dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """Each registration's owner, kind, end epoch and state (live, expired, deleted) at storage epoch ``epoch``.

    A registration itself comes from a checked blob-certified entry; its extensions and
    deletion only from peers' views (``Client.registrations``). So the end shown is the
    latest one peers holding f + 1 shards report (at least one of them honest, and an
    honest peer's log holds only validly signed extensions), never below the registered
    end; it is deleted when peers holding f + 1 shards say so.
    """
    weights = {p.peer_id: len(p.shards) for p in committee.peers}
    out = []
    for registration in registrations:
        key = registration.id.hex()
        seen = [(view["lifetimes"][key], weights.get(peer, 0)) for peer, view in views.items()
                if key in view.get("lifetimes", {})]
        agreed, weight = registration.end_epoch, 0
        for (end, _), shards in sorted(seen, key=lambda item: -item[0][0]):
            weight += shards
            if weight >= committee.validity_threshold:
                agreed = max(agreed, end)
                break
        deleted = sum(shards for (_, gone), shards in seen if gone) >= committee.validity_threshold
        state = "deleted" if deleted else "expired" if agreed <= epoch else "live"
        out.append({
            "registrationId": key, "owner": registration.writer.owner.hex(),
            "account": registration.writer.account.hex(), "deletable": registration.deletable,
            "registeredEndEpoch": registration.end_epoch, "endEpoch": agreed, "state": state,
            "reportedBy": {peer: view["lifetimes"][key] for peer, view in sorted(views.items())
                           if key in view.get("lifetimes", {})},
        })
    return out


def blob_state(report: list[dict[str, Any]]) -> str | None:
    """The blob's state from its registrations': live if any is, else expired or deleted (None: never registered)."""
    states = {r["state"] for r in report}
    for state in ("live", "expired", "deleted"):
        if state in states:
            return state
    return None


def _as_writer(committee: Any, job: Any, authority: Any) -> Any:
    """Run ``job(client)`` storing as ``authority``; a refusal for grant or quota exits 5, any other failure 1."""
    from ..client.blob import AccessDenied, StoreError

    try:
        return with_client(committee, job, authority=authority)
    except AccessDenied as exc:
        raise Failure(str(exc), EXIT_DENIED) from exc
    except StoreError as exc:
        raise Failure(str(exc)) from exc


def _select(report: list[dict[str, Any]], owner: bytes, chosen: tuple[str, ...]) -> list[dict[str, Any]]:
    """This owner's registrations, or the ones named in ``chosen`` (full IDs or unique prefixes of 8+ hex digits)."""
    mine = [r for r in report if r["owner"] == owner.hex()]
    if not chosen:
        return mine
    picked = []
    for prefix in chosen:
        prefix = prefix.lower()
        if len(prefix) < 8:
            raise click.BadParameter(f"{prefix!r}: give at least 8 hex digits of a registration ID",
                                     param_hint="--registration")
        matches = [r for r in report if r["registrationId"].startswith(prefix)]
        if len(matches) != 1:
            raise Failure(f"registration {prefix} is {'not one of' if not matches else 'ambiguous among'} "
                          f"this blob's {len(report)} registrations", EXIT_NOT_FOUND if not matches else EXIT_FAILED)
        if matches[0]["owner"] != owner.hex():
            raise Failure(f"registration {prefix} belongs to owner {matches[0]['owner'][:16]}..., not to this writer "
                          f"({owner.hex()[:16]}...)")
        picked.append(matches[0])
    return picked


async def _lifetime_report(client: Any, blob: BlobId) -> tuple[list[dict[str, Any]], int]:
    """The registrations report and the (verified) storage epoch, asked at once."""
    (registrations, views), epoch = await at_once(lambda: client.registrations(blob),
                                                  lambda: client.storage_epoch(fresh=True))
    return lifetimes(client.committee, registrations, views, epoch), epoch


registration_option = click.option(
    "--registration", "registration_ids", multiple=True, metavar="ID",
    help="Only this registration (its ID or a unique prefix of 8+ hex digits; repeatable). "
         "Default: every registration of the blob this writer owns.")


@click.command()
@click.argument("blob", metavar="BLOB_ID", callback=parse_blob_id)
@click.option("--epochs", required=True, callback=parse_epochs, metavar="N|max",
              help="Keep the blob until N storage epochs from the current one (max: 53).")
@registration_option
@committee_option
@writer_key_option
@json_option
def extend(blob: BlobId, epochs: int, registration_ids: tuple[str, ...], committee_path: Path | None,
           writer_key: Path | None, as_json: bool) -> None:
    """Extend this writer's live registrations of BLOB_ID to N epochs from now; print the new end epoch."""
    committee = load_committee(committee_path)
    authority = load_writer(committee_path, writer_key)
    owner = authority.writer.owner

    async def job(client: Any) -> dict[str, Any]:
        report, epoch = await _lifetime_report(client, blob)
        if not report:
            raise Failure(f"no peer's log holds a registration of blob {blob}", EXIT_NOT_FOUND)
        mine = _select(report, owner, registration_ids)
        if not mine:
            raise Failure(f"none of blob {blob}'s {len(report)} registrations is owned by this writer "
                          f"({owner.hex()[:16]}...); `walrusfs store` the file to hold it under your own")
        ended = [r for r in mine if r["state"] != "live"]
        if ended and (registration_ids or len(ended) == len(mine)):
            r = ended[0]
            how = "been deleted" if r["state"] == "deleted" else f"expired (it ended at epoch {r['endEpoch']})"
            raise Failure(f"registration {r['registrationId'][:16]}... has {how}; the storage epoch is {epoch}: "
                          f"an ended registration cannot be extended; store the blob again")
        target_end = epoch + epochs
        todo = [r for r in mine if r["state"] == "live" and r["endEpoch"] < target_end]
        result: dict[str, Any] = {"blobId": str(blob), "storageEpoch": epoch, "extended": [], "entryId": None,
                                  "unchanged": [r["registrationId"] for r in mine
                                                if r["state"] == "live" and r not in todo]}
        if todo:
            entry = await client.lifetime("extend", [bytes.fromhex(r["registrationId"]) for r in todo], epochs)
            target_end = entry.payload["op"]["end_epoch"]
            result.update(extended=[r["registrationId"] for r in todo], entryId=entry.id.hex())
        live = [r for r in mine if r["state"] == "live"]
        result["endEpoch"] = max([target_end if todo else 0, *(r["endEpoch"] for r in live)])
        return result

    result = _as_writer(committee, job, authority)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if result["extended"]:
        click.echo(f"Blob {blob}: {len(result['extended'])} registration(s) extended to storage epoch "
                   f"{result['endEpoch']} (now {result['storageEpoch']}; log entry {result['entryId'][:16]}...)")
    else:
        click.echo(f"Blob {blob}: already kept until storage epoch {result['endEpoch']} "
                   f"(now {result['storageEpoch']}); nothing to extend")
    click.echo(f"End epoch: {result['endEpoch']}")


@click.command()
@click.argument("blob", metavar="BLOB_ID", callback=parse_blob_id)
@registration_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@committee_option
@writer_key_option
@json_option
def delete(blob: BlobId, registration_ids: tuple[str, ...], yes: bool, committee_path: Path | None,
           writer_key: Path | None, as_json: bool) -> None:
    """Delete this writer's deletable registrations of BLOB_ID; peers drop it once no owner holds it."""
    committee = load_committee(committee_path)
    authority = load_writer(committee_path, writer_key)
    owner = authority.writer.owner
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("deleting asks for confirmation; pass --yes when not run from a terminal")
        click.confirm(f"Delete your registrations of blob {blob}? Once no owner holds it, its data is gone", abort=True)

    async def job(client: Any) -> dict[str, Any]:
        report, epoch = await _lifetime_report(client, blob)
        if not report:
            raise Failure(f"no peer's log holds a registration of blob {blob}", EXIT_NOT_FOUND)
        mine = [r for r in _select(report, owner, registration_ids) if r["state"] == "live"]
        if not mine:
            raise Failure(f"this writer ({owner.hex()[:16]}...) holds no live registration of blob {blob}"
                          + (" (it expired or was deleted already)" if any(r["owner"] == owner.hex() for r in report)
                             else ""), EXIT_NOT_FOUND)
        permanent = [r for r in mine if not r["deletable"]]
        todo = [r for r in mine if r["deletable"]]
        refused = [{"registrationId": r["registrationId"], "endEpoch": r["endEpoch"],
                    "reason": f"permanent: it cannot be deleted before epoch {r['endEpoch']}"} for r in permanent]
        if not todo:
            r = permanent[0]
            raise Failure(f"blob {blob}: registration {r['registrationId'][:16]}... is permanent: it cannot be "
                          f"deleted before epoch {r['endEpoch']} (the storage epoch is {epoch})")
        entry = await client.lifetime("delete", [bytes.fromhex(r["registrationId"]) for r in todo])
        gone = {r["registrationId"] for r in todo}
        held = [{"registrationId": r["registrationId"], "owner": r["owner"], "endEpoch": r["endEpoch"],
                 "deletable": r["deletable"]}
                for r in report if r["state"] == "live" and r["registrationId"] not in gone]
        return {"blobId": str(blob), "storageEpoch": epoch, "deleted": sorted(gone), "entryId": entry.id.hex(),
                "refused": refused, "released": not held, "heldBy": held}

    result = _as_writer(committee, job, authority)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"Blob {blob}: deleted {len(result['deleted'])} registration(s) (log entry {result['entryId'][:16]}...)")
    for r in result["refused"]:
        click.echo(f"  kept registration {r['registrationId'][:16]}...: {r['reason']}")
    if result["released"]:
        click.echo(f"Blob {blob}: released: no owner holds it any more; peers delete its slivers and give the space back")
    else:
        until = max(r["endEpoch"] for r in result["heldBy"])
        owners = sorted({r["owner"][:16] + "..." for r in result["heldBy"]})
        click.echo(f"Blob {blob}: still held by {len(result['heldBy'])} other registration(s) (owner "
                   f"{', '.join(owners)}) until epoch {until}: its slivers stay")

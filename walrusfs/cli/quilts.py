"""Quilt commands: store-quilt, read-quilt, list-quilt (many small files in one blob)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..core.metadata import BlobId
from .blobs import parse_epochs
from .common import (
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    Failure,
    committee_option,
    json_option,
    load_committee,
    load_writer,
    parse_blob_id,
    progress_bar,
    with_client,
    writer_key_option,
)

_T = TypeVar("_T")


def _parse_tags(values: tuple[str, ...], identifiers: set[str]) -> dict[str, dict[str, str]]:
    """``--tag ID:KEY=VALUE`` options as identifier -> {key: value}."""
    tags: dict[str, dict[str, str]] = {}
    for value in values:
        name_key, equals, tag_value = value.partition("=")
        identifier, colon, key = name_key.rpartition(":")
        if not equals or not colon or not identifier or not key:
            raise click.BadParameter(f"{value!r} is not ID:KEY=VALUE (the identifier may hold ':', the key "
                                     "may not)", param_hint="--tag")
        if identifier not in identifiers:
            raise click.BadParameter(f"{value!r} names {identifier!r}, which is none of the files' identifiers "
                                     f"(their file names)", param_hint="--tag")
        if key in tags.setdefault(identifier, {}):
            raise click.BadParameter(f"tag {key!r} of {identifier!r} is given twice", param_hint="--tag")
        tags[identifier][key] = tag_value
    return tags


def _run(committee: Any, job: Callable[[Any], Awaitable[_T]], authority: Any = None) -> _T:
    """``with_client``, with read and store failures as one-line errors and the documented exit codes."""
    from ..client.blob import (
        AccessDenied,
        BlobGone,
        InvalidBlobError,
        ReadError,
        StoreError,
    )
    from ..client.quilts import PatchNotFound
    from ..core.quilt import QuiltError

    try:
        return with_client(committee, job, authority=authority)
    except InvalidBlobError as exc:
        raise Failure(str(exc), EXIT_INVALID) from exc
    except (BlobGone, PatchNotFound) as exc:
        raise Failure(str(exc), EXIT_NOT_FOUND) from exc
    except ReadError as exc:
        raise Failure(str(exc), EXIT_NOT_FOUND if "does not exist" in str(exc) else EXIT_FAILED) from exc
    except AccessDenied as exc:
        raise Failure(str(exc), EXIT_DENIED) from exc
    except (StoreError, QuiltError) as exc:
        raise Failure(str(exc)) from exc


def _tags_text(tags: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags)


@click.command("store-quilt")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--tag", "tag_options", multiple=True, metavar="ID:KEY=VALUE",
              help="Tag the file whose identifier (file name) is ID; repeat for more.")
@click.option("--epochs", default="5", show_default=True, callback=parse_epochs, metavar="N|max",
              help="Storage epochs to keep the quilt for, from the current one (max: 53).")
@click.option("--permanent", is_flag=True, help="Cannot be deleted before it expires (default: deletable).")
@click.option("--deletable", is_flag=True, hidden=True, help="The default: the owner may delete it early.")
@click.option("--encrypt", is_flag=True, help="Not supported for quilts yet: refused (use `store --encrypt` per file).")
@committee_option
@writer_key_option
@json_option
def store_quilt(files: tuple[str, ...], tag_options: tuple[str, ...], epochs: int, permanent: bool, deletable: bool,
                encrypt: bool, committee_path: Path | None, writer_key: Path | None, as_json: bool) -> None:
    """Pack FILE... into one quilt blob (identifier: each file's name); print the quilt ID and each patch ID."""
    from ..client.quilts import store_quilt as store
    from ..core.quilt import Patch, QuiltError, build_quilt, check_identifier

    if encrypt:
        raise click.UsageError("store-quilt does not encrypt: store each file with `walrusfs store --encrypt`, "
                               "or seal the files before packing them")
    if permanent and deletable:
        raise click.UsageError("--permanent and --deletable exclude each other")
    committee = load_committee(committee_path)
    config = committee.config
    names: dict[str, str] = {}
    for file in files:
        identifier = os.path.basename(file)
        try:
            check_identifier(identifier)
        except QuiltError as exc:
            raise click.BadParameter(f"{file}: {exc}", param_hint="FILE") from None
        if identifier in names:
            raise click.BadParameter(f"{names[identifier]} and {file} have the same name {identifier!r}; "
                                     "identifiers are unique in a quilt", param_hint="FILE")
        names[identifier] = file
    tags = _parse_tags(tag_options, set(names))
    total = sum(os.path.getsize(file) for file in files)
    if total > config.max_blob_size:  # refused before reading anything
        raise Failure(f"the files hold {total} bytes; one blob on {config.n_shards} shards holds at most "
                      f"{config.max_blob_size}")
    patches = []
    for identifier, file in names.items():
        with open(file, "rb") as stream:
            patches.append(Patch(identifier, stream.read(), tags.get(identifier, {})))
    try:
        built = build_quilt(patches, config)
    except QuiltError as exc:
        raise Failure(str(exc)) from exc
    authority = load_writer(committee_path, writer_key)
    with progress_bar("storing", config.encoded_slivers_length(len(built.data))) as bar:
        stored = _run(committee, lambda client: store(
            client, built, epochs=epochs, deletable=not permanent, progress=bar.update), authority=authority)
    result, registration = stored.result, stored.result.registration
    assert registration is not None
    cert = result.certificate
    patch_rows = [
        {"identifier": entry.identifier, "patchId": str(pid), "tags": dict(entry.tags), "size": size,
         "rows": [entry.start, entry.end]}
        for entry, pid, (_, size) in zip(built.index.entries, stored.patch_ids(), built.data_ranges)
    ]
    report = {
        "quiltId": str(stored.quilt_id),
        "unencodedLength": len(built.data),
        "symbolSize": built.symbol_size,
        "rows": config.primary_source_symbols,
        "indexRows": len(built.index.rows),
        "endEpoch": registration.end_epoch,
        "deletable": registration.deletable,
        "registrationId": registration.id.hex(),
        "certificate": {"signers": [committee.peers[i].peer_id for i in cert.signers],
                        "shards": committee.weight(cert.signers), "quorum": committee.quorum},
        "entryId": result.entry.id.hex() if result.entry else None,
        "patches": patch_rows,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"Quilt ID: {stored.quilt_id}")
    click.echo(f"Size: {len(built.data)} bytes on {config.n_shards} shards ({len(patch_rows)} patches on "
               f"{built.index.entries[-1].end} of {config.primary_source_symbols} rows, symbol size {built.symbol_size})")
    click.echo(f"Lifetime: until storage epoch {registration.end_epoch} "
               f"({'deletable' if registration.deletable else 'permanent'}), registration {registration.id.hex()}")
    click.echo(f"Certificate: peers holding {committee.weight(cert.signers)} of {config.n_shards} shards signed "
               f"(quorum {committee.quorum}), epoch {cert.epoch}")
    click.echo("Patches (patch ID, identifier, tags):")
    for row in patch_rows:
        tags_shown = _tags_text(tuple(row["tags"].items()))
        click.echo(f"  {row['patchId']}  {row['identifier']}{'  ' + tags_shown if tags_shown else ''}")


def _parse_patch_id(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from ..core.quilt import PatchId, QuiltError

    if value is None:
        return None
    try:
        return PatchId.parse(value)
    except QuiltError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _optional_blob_id(ctx: click.Context, param: click.Parameter, value: str | None) -> BlobId | None:
    return None if value is None else parse_blob_id(ctx, param, value)


def _safe_name(identifier: str) -> bool:
    return "/" not in identifier and identifier not in (".", "..")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise Failure(f"cannot write {path}: {exc.strerror}") from None


@click.command("read-quilt")
@click.argument("quilt", metavar="QUILT_ID", required=False, callback=_optional_blob_id)
@click.argument("identifier", required=False)
@click.option("--patch", "patch_id", metavar="PATCH_ID", callback=_parse_patch_id,
              help="Read the patch with this ID (it names its quilt: QUILT_ID may be left out).")
@click.option("--all", "read_all", is_flag=True, help="Read every patch into the directory -o names.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write here instead of stdout (with --all: a directory, one file per identifier).")
@committee_option
def read_quilt(quilt: BlobId | None, identifier: str | None, patch_id: Any, read_all: bool, output: Path | None,
               committee_path: Path | None) -> None:
    """Read one file of quilt QUILT_ID by IDENTIFIER or --patch PATCH_ID (fetching only its slivers), or --all."""
    from ..client.quilts import read_patch, read_quilt

    chosen = [name for name, given in (("IDENTIFIER", identifier), ("--patch", patch_id), ("--all", read_all)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of IDENTIFIER, --patch PATCH_ID or --all")
    if patch_id is not None:
        if quilt is not None and quilt != patch_id.quilt_id:
            raise click.UsageError(f"patch {patch_id} belongs to quilt {patch_id.quilt_id}, not {quilt}")
        quilt = patch_id.quilt_id
    if quilt is None:
        raise click.UsageError("missing QUILT_ID")
    if read_all:
        if output is None:
            raise click.UsageError("--all writes one file per patch: name a directory with -o")
        if output.exists() and not output.is_dir():
            raise click.BadParameter(f"{output} is not a directory", param_hint="--output")
    elif output is not None and not output.parent.is_dir():
        raise click.BadParameter(f"directory {output.parent} does not exist", param_hint="--output")
    committee = load_committee(committee_path)
    quilt_id = quilt
    if read_all:
        decoded = _run(committee, lambda client: read_quilt(client, quilt_id))
        unsafe = [p.identifier for p in decoded.patches if not _safe_name(p.identifier)]
        if unsafe:
            raise Failure(f"identifiers {unsafe[:5]!r} are not plain file names; read them one at a time with -o FILE")
        assert output is not None
        output.mkdir(parents=True, exist_ok=True)
        for patch in decoded.patches:
            _write(output / patch.identifier, patch.data)
        click.echo(f"wrote {len(decoded.patches)} files to {output}", err=True)
        return
    ref = patch_id if patch_id is not None else identifier
    patch = _run(committee, lambda client: read_patch(client, quilt_id, ref))
    if output is not None:
        _write(output, patch.data)
        click.echo(f"wrote {len(patch.data)} bytes of {patch.identifier!r} to {output}", err=True)
    else:
        sys.stdout.buffer.write(patch.data)
        sys.stdout.buffer.flush()


@click.command("list-quilt")
@click.argument("quilt", metavar="QUILT_ID", callback=parse_blob_id)
@committee_option
@json_option
def list_quilt(quilt: BlobId, committee_path: Path | None, as_json: bool) -> None:
    """List the patches of quilt QUILT_ID (identifier, patch ID, tags), reading only its index."""
    from ..client.quilts import read_index

    committee = load_committee(committee_path)
    index = _run(committee, lambda client: read_index(client, quilt))
    rows = [{"identifier": e.identifier, "patchId": str(e.patch_id(quilt)), "tags": dict(e.tags),
             "rows": [e.start, e.end]} for e in index.entries]
    if as_json:
        click.echo(json.dumps({"quiltId": str(quilt), "patches": rows}, indent=2))
        return
    width = max(len(r["identifier"]) for r in rows)
    for row, entry in zip(rows, index.entries):
        tags_shown = _tags_text(entry.tags)
        click.echo(f"{row['identifier']:<{width}}  {row['patchId']}{'  ' + tags_shown if tags_shown else ''}")

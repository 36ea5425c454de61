"""The ``walrusfs`` command line."""

from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .allocator import tune_allocator
from .core.config import EncodingConfig
from .core.errors import CodecError
from .core.redstuff import compute_metadata


def _config(ctx: click.Context, param: click.Parameter, value: int) -> EncodingConfig:
    try:
        return EncodingConfig(value)
    except CodecError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="walrusfs")
def main() -> None:
    """walrusfs: a verifiable filesystem on RedStuff-encoded storage peers."""
    tune_allocator()


@main.command("blob-id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--shards", "-n", "config", type=int, required=True, callback=_config, metavar="N",
    help="Number of shards in the committee (at least 4).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

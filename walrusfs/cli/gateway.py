"""The gateway command: Walrus's HTTP publisher and aggregator routes over the committee."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import click

from .common import (
    committee_option,
    load_committee,
    load_writer,
    metrics_option,
    parse_size,
    start_metrics,
    writer_key_option,
)


def _token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (None without one); a usage error if unreadable, empty or readable by others."""
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--token-file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.BadParameter(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it",
                                 param_hint="--token-file")
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise click.BadParameter(f"{path} must hold one token: printable characters, no spaces", param_hint="--token-file")
    return text


@click.command()
@click.option("--bind", default="127.0.0.1:31415", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0: any free port; the address is printed).")
@click.option("--publisher", is_flag=True, help="Serve PUT /v1/blobs (alone, unless --aggregator too; default: both).")
@click.option("--aggregator", is_flag=True, help="Serve GET /v1/blobs/... (alone, unless --publisher too; default: both).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stores need 'Authorization: Bearer TOKEN' with the token in this file (mode 0600).")
@click.option("--max-body-size", default="64MiB", show_default=True, callback=parse_size, metavar="SIZE",
              help="Largest PUT body (413 past it), and largest blob a capability or strict read holds whole.")
@click.option("--max-requests", type=click.IntRange(1), default=64, show_default=True,
              help="Requests served at once (429 past it; /status and /v1/api are not counted).")
@click.option("--max-stores", type=click.IntRange(1), default=4, show_default=True,
              help="Stores at once, each holding its body and encoding (429 past it).")
@click.option("--patience", type=click.FloatRange(0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="How long a request waits for peers (plus 1 s per 2 MB it moves) before answering 503, "
                   "and for a client's next body bytes before answering 408.")
@click.option("--read-ahead", type=click.IntRange(0, 8), default=0, show_default=True, metavar="ROWS",
              help="Rows of a blob fetched while the previous one is sent (each holds 1/p of the blob).")
@click.option("--max-fetches", type=click.IntRange(1), default=4, show_default=True,
              help="Verified reads (a row, or a whole blob) at once across all requests; each costs several "
                   "times what it reads while verified. More wait their turn.")
@metrics_option
@committee_option
@writer_key_option
def gateway(bind: str, publisher: bool, aggregator: bool, token_file: Path | None, max_body_size: int,
            max_requests: int, max_stores: int, patience: float, read_ahead: int, max_fetches: int,
            metrics_address: str | None, committee_path: Path | None, writer_key: Path | None) -> None:
    """Serve Walrus's HTTP API (publisher and aggregator) for this committee until Ctrl-C or SIGTERM."""
    from ..client.blob import DEFAULT_EPOCHS
    from ..gateway.app import Settings
    from ..gateway.metrics import GatewayMetrics
    from ..gateway.server import run_blocking

    if not publisher and not aggregator:
        publisher = aggregator = True
    token = _token(token_file)
    if token and not publisher:
        raise click.UsageError("--token-file guards stores; it needs the publisher (--publisher)")
    committee = load_committee(committee_path)
    authority = load_writer(committee_path, writer_key) if publisher else None
    settings = Settings(publisher=publisher, aggregator=aggregator, max_body=max_body_size,
                        max_requests=max_requests, max_stores=max_stores, patience=patience,
                        read_ahead=read_ahead, max_fetches=max_fetches, default_epochs=DEFAULT_EPOCHS, token=token)
    roles = " and ".join(r for r, on in (("publisher", publisher), ("aggregator", aggregator)) if on)

    def ready(urls: list[str]) -> None:
        click.echo(f"walrusfs gateway: {roles} on {', '.join(urls)} for {committee.n_shards} shards "
                   f"(pid {os.getpid()}; Ctrl-C stops)")
        sys.stdout.flush()

    metrics = GatewayMetrics()
    server = start_metrics(metrics.registry, metrics_address)
    if server is not None:
        click.echo(f"walrusfs gateway: metrics on {server.url}", err=True)
    try:
        run_blocking(committee, authority, settings, bind, ready, metrics)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {bind}: {exc.strerror or exc}") from None
    finally:
        if server is not None:
            server.close()

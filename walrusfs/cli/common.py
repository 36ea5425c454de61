"""Helpers every command group shares: exit codes, committee loading, a client run under trio."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..core.committee import Committee, CommitteeError, parse_committee
from ..core.config import EncodingConfig
from ..core.errors import CodecError
from ..core.metadata import BlobId

EXIT_FAILED = 1
EXIT_INVALID = 3
EXIT_NOT_FOUND = 4
_T = TypeVar("_T")


class Failure(click.ClickException):
    """An operation failed; exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code


def encoding_config(ctx: click.Context, param: click.Parameter, value: int) -> EncodingConfig:
    """Click callback: a shard count as an EncodingConfig."""
    try:
        return EncodingConfig(value)
    except CodecError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def parse_blob_id(ctx: click.Context, param: click.Parameter, value: str) -> BlobId:
    """Click callback: a blob ID argument, with the reason it is malformed."""
    try:
        return BlobId.parse(value)
    except CodecError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def default_committee_path() -> Path:
    """$WALRUSFS_COMMITTEE, else committee.toml in the user's config directory."""
    if os.environ.get("WALRUSFS_COMMITTEE"):
        return Path(os.environ["WALRUSFS_COMMITTEE"])
    import platformdirs

    return Path(platformdirs.user_config_dir("walrusfs")) / "committee.toml"


def load_committee(path: Path | None) -> Committee:
    """The committee from ``path`` or the default location, with a usable error if absent."""
    path = path or default_committee_path()
    try:
        return parse_committee(path.read_text())
    except FileNotFoundError:
        raise click.UsageError(
            f"no committee file at {path}; pass --committee FILE or set WALRUSFS_COMMITTEE "
            "(walrusfs devnet up writes DIR/committee.toml)"
        ) from None
    except CommitteeError as exc:
        raise click.UsageError(f"{path}: {exc}") from None


committee_option = click.option(
    "--committee", "committee_path", type=click.Path(dir_okay=False, path_type=Path),
    help="Committee file (default: $WALRUSFS_COMMITTEE, then the user config directory).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
writer_key_option = click.option(
    "--writer-key", "writer_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Key to store with (default: $WALRUSFS_WRITER_KEY, the writer.key beside the committee file, "
         "then writer.key in the user config directory).",
)
#: Exit code for a store refused for want of a grant or quota.
EXIT_DENIED = 5


def load_writer(committee_path: Path | None, key_path: Path | None) -> Any:
    """The authority a command stores with, or a one-line failure."""
    from ..client.writer import WriterKeyError, load_authority

    try:
        return load_authority(committee_path or default_committee_path(), key_path)
    except WriterKeyError as exc:
        raise Failure(str(exc)) from exc


def with_client(committee: Committee, job: Callable[[Any], Awaitable[_T]], authority: Any = None) -> _T:
    """Run ``job(client)`` under trio with an ephemeral libp2p identity (storing as ``authority``, if given)."""
    import trio

    from p2p.host import configure_logging, running_host

    from ..client.blob import Client

    # Clients report unreachable peers themselves; libp2p logs every refused dial as ERROR.
    configure_logging(logging.CRITICAL)

    async def main() -> _T:
        # Errors are caught inside the host's block and re-raised after it closed, so they
        # reach the caller as themselves, not wrapped in libp2p's nursery exception groups.
        failure: Exception | None = None
        async with running_host(os.urandom(32)) as host:
            try:
                result = await job(Client(host, committee, authority=authority))
            except Exception as exc:
                failure = exc
        if failure is not None:
            raise failure
        return result

    return trio.run(main)


async def at_once(*asks: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Await every ``ask()`` concurrently and return their results in order."""
    # A command asking several questions then waits for the slowest, not the sum: each
    # waits up to STATUS_LIMIT for a silent peer.
    import trio

    results: list[Any] = [None] * len(asks)

    async def run(k: int) -> None:
        results[k] = await asks[k]()

    async with trio.open_nursery() as nursery:
        for k in range(len(asks)):
            nursery.start_soon(run, k)
    return results


def progress_bar(label: str, total: int) -> Any:
    """A progress bar on stderr."""
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False, width=30)


def iso_time(millis: int) -> str:
    """Milliseconds since the epoch as an ISO time."""
    import datetime

    return datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


def parse_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Click callback: a size such as 4MiB in bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        number = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 4MiB, 512k or 1048576", ctx=ctx, param=param) from None
    if number <= 0:
        raise click.BadParameter("must be positive", ctx=ctx, param=param)
    return number


def megabytes(count: int) -> str:
    """Bytes as megabytes for display."""
    return f"{count / 1e6:.1f} MB"


def human_size(count: int) -> str:
    """Bytes in binary units for display (4.4 KiB, 1.0 TiB)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _metrics_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a HOST:PORT to serve metrics on, checked (not bound) here."""
    if value is None:
        return None
    from ..metrics import MetricsAddressError, parse_address

    try:
        parse_address(value)
    except MetricsAddressError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


metrics_option = click.option(
    "--metrics", "metrics_address", metavar="HOST:PORT", default=None, callback=_metrics_address,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9101; default: off). "
         "Anyone who can reach the address can read them.",
)


def start_metrics(registry: Any, address: str | None) -> Any:
    """Serve ``registry`` on ``address`` (None: do nothing); a one-line failure if the address cannot be bound."""
    if address is None:
        return None
    from ..metrics import serve_metrics

    try:
        return serve_metrics(registry, address)
    except OSError as exc:
        raise Failure(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None

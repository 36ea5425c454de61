"""The ``walrusfs`` command line.

Exit codes scripts can rely on: 0 success, 1 the operation failed (peers unreachable,
too few valid answers), 2 usage error, 3 the blob is invalid (inconsistently encoded),
4 the blob does not exist.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .allocator import tune_allocator
from .core.committee import Committee, CommitteeError, parse_committee
from .core.config import EncodingConfig
from .core.errors import CodecError
from .core.metadata import BlobId
from .core.redstuff import compute_metadata

EXIT_FAILED = 1
EXIT_INVALID = 3
EXIT_NOT_FOUND = 4
_T = TypeVar("_T")


class Failure(click.ClickException):
    """An operation failed; exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code


def _config(ctx: click.Context, param: click.Parameter, value: int) -> EncodingConfig:
    try:
        return EncodingConfig(value)
    except CodecError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def _blob_id(ctx: click.Context, param: click.Parameter, value: str) -> BlobId:
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


def _with_client(committee: Committee, job: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run ``job(client)`` under trio with an ephemeral libp2p identity."""
    import trio

    from p2p.host import configure_logging, running_host

    from .client.blob import Client

    # Clients report unreachable peers themselves; libp2p logs every refused dial as ERROR.
    configure_logging(logging.CRITICAL)

    async def main() -> _T:
        # Errors are caught inside the host's block and re-raised after it closed, so they
        # reach the caller as themselves, not wrapped in libp2p's nursery exception groups.
        failure: Exception | None = None
        async with running_host(os.urandom(32)) as host:
            try:
                result = await job(Client(host, committee))
            except Exception as exc:
                failure = exc
        if failure is not None:
            raise failure
        return result

    return trio.run(main)


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


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a peer identity (Ed25519) in DIRECTORY."""
    from .identity import IdentityError, create_identity

    try:
        identity = create_identity(directory)
    except IdentityError as exc:
        raise Failure(str(exc)) from exc
    click.echo(f"peer_id = \"{identity.peer_id}\"")
    click.echo(f"public_key = \"{identity.public_key.hex()}\"")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@committee_option
@click.option("--fault", type=click.Choice(["corrupt-slivers", "wrong-metadata", "bad-confirmations", "discard-tenth",
                                           "discard-tenth-fetch", "slow-challenge"]),
              hidden=True, help="TEST ONLY: misbehave in this way.")
@click.option("--scrub-rate", type=click.FloatRange(0.01), default=8.0, show_default=True, envvar="WALRUSFS_SCRUB_RATE",
              help="MB/s of stored slivers the scrubber re-verifies.")
@click.option("--scrub-pause", type=click.FloatRange(0), default=300.0, show_default=True,
              envvar="WALRUSFS_SCRUB_PAUSE", help="Seconds between two scrub passes.")
@click.option("--challenge-every", type=click.IntRange(0), default=0, show_default=True,
              envvar="WALRUSFS_CHALLENGE_EVERY",
              help="Start a storage challenge round, in turn with the other peers, each time this many blobs "
                   "were certified since the last round's start (0: only on `walrusfs audit start`).")
@click.option("--challenge-sample", type=click.IntRange(1, 4096), default=64, show_default=True,
              envvar="WALRUSFS_CHALLENGE_SAMPLE", help="Certified blobs challenged in a round the cadence starts.")
def peer(directory: Path, committee_path: Path | None, fault: str | None, scrub_rate: float, scrub_pause: float,
         challenge_every: int, challenge_sample: int) -> None:
    """Run a storage peer from its data DIRECTORY until SIGTERM.

    The peer heals missing or damaged sliver pairs of every certified blob in the
    background, its scrubber re-verifies everything it stores, pass after pass, and it
    takes part in storage challenge rounds (and starts them, with --challenge-every).
    """
    import trio

    from p2p.host import configure_logging

    from .identity import IdentityError, load_identity
    from .peer.service import Fault, run_peer

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    configure_logging(logging.WARNING)
    committee = load_committee(committee_path)
    try:
        identity = load_identity(directory)
        committee.index_of(identity.peer_id)
    except (IdentityError, CommitteeError) as exc:
        raise Failure(str(exc)) from exc
    trio.run(partial(run_peer, directory, identity, committee, Fault(fault) if fault else None, int(scrub_rate * 1e6),
                     scrub_pause, challenge_every=challenge_every, challenge_sample=challenge_sample))


@main.group()
def devnet() -> None:
    """A local network of peer processes on 127.0.0.1."""


def _wait_ready(directory: Path, committee: Committee, indices: list[int], limit: float = 60.0) -> None:
    import time

    from . import devnet as dn

    deadline = time.monotonic() + limit
    while True:
        status = _with_client(committee, lambda client: client.health())
        waiting = [k for k in indices if not status[k]["reachable"]]
        if not waiting:
            return
        dead = [k for k in waiting if k not in dn.running(directory)]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {dn.peer_dir(directory, k) / 'peer.log'}:\n"
                + (dn.peer_dir(directory, k) / "peer.log").read_text()[-2000:] for k in waiting
            )
            raise Failure(f"peers {waiting} did not come up:\n{logs}")
        time.sleep(0.2)


@devnet.command("up")
@click.option("--peers", "count", type=click.IntRange(4, 200), default=7, show_default=True, help="Number of peers.")
@click.option("--fault", "faults", multiple=True, hidden=True, metavar="K=MODE",
              help="TEST ONLY: start peer K in fault mode MODE.")
@click.option("--challenge-every", type=click.IntRange(0), default=None,
              help="Peers start a storage challenge round every this many certified blobs (kept for restarts).")
@click.option("--challenge-sample", type=click.IntRange(1, 4096), default=None,
              help="Certified blobs challenged in a round the cadence starts (kept for restarts).")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def devnet_up(count: int, faults: tuple[str, ...], challenge_every: int | None, challenge_sample: int | None,
              directory: Path) -> None:
    """Start COUNT peers with data in DIRECTORY and write DIRECTORY/committee.toml."""
    from . import devnet as dn

    modes: dict[int, str] = {}
    for item in faults:
        index, _, mode = item.partition("=")
        if not index.isdigit() or not mode:
            raise click.BadParameter(f"expected K=MODE, got {item!r}", param_hint="--fault")
        modes[int(index)] = mode
    try:
        committee = dn.create(directory, count)
        options = dn.peer_options(directory)
        if challenge_every is not None:
            options["challenge-every"] = str(challenge_every)
        if challenge_sample is not None:
            options["challenge-sample"] = str(challenge_sample)
        dn.set_peer_options(directory, options)
        started = [k for k in range(count) if k not in dn.running(directory)]
        for k in started:
            dn.start_peer(directory, k, modes.get(k))
    except dn.DevnetError as exc:
        raise Failure(str(exc)) from exc
    _wait_ready(directory, committee, list(range(count)))
    path = (directory / dn.COMMITTEE_FILE).resolve()
    click.echo(f"{count} peers running (n = {committee.n_shards}, f = {committee.f}); committee: {path}")
    click.echo(f"  export WALRUSFS_COMMITTEE={path}")
    click.echo("  walrusfs store FILE; walrusfs read BLOB_ID -o OUT; walrusfs health")
    click.echo(f"  walrusfs devnet down {directory}")


@devnet.command("down")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def devnet_down(directory: Path) -> None:
    """Stop every peer of the devnet in DIRECTORY."""
    from . import devnet as dn

    try:
        stopped = dn.down(directory)
    except dn.DevnetError as exc:
        raise Failure(str(exc)) from exc
    click.echo(f"stopped {len(stopped)} peers")


@devnet.command("stop")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the peer to stop.")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM (a crash).")
def devnet_stop(directory: Path, index: int, kill: bool) -> None:
    """Stop one peer of the devnet (a fault drill)."""
    from . import devnet as dn

    if not dn.stop_peer(directory, index, kill=kill):
        raise Failure(f"peer {index} is not running")
    click.echo(f"peer {index} stopped")


@devnet.command("wipe")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the (stopped) peer to wipe.")
def devnet_wipe(directory: Path, index: int) -> None:
    """Delete a stopped peer's stored data, keeping its identity (a fault drill)."""
    from . import devnet as dn

    try:
        dn.wipe_peer(directory, index)
    except dn.DevnetError as exc:
        raise Failure(str(exc)) from exc
    click.echo(f"peer {index} wiped")


@devnet.command("start")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the peer to start.")
@click.option("--fault", hidden=True, help="TEST ONLY: start the peer in this fault mode.")
def devnet_start(directory: Path, index: int, fault: str | None) -> None:
    """Start one stopped peer of the devnet again."""
    from . import devnet as dn

    committee = load_committee(directory / dn.COMMITTEE_FILE)
    try:
        dn.start_peer(directory, index, fault)
    except dn.DevnetError as exc:
        raise Failure(str(exc)) from exc
    _wait_ready(directory, committee, [index])
    click.echo(f"peer {index} running")


def _progress(label: str, total: int) -> Any:
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False, width=30)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@committee_option
@json_option
def store(file: str, committee_path: Path | None, as_json: bool) -> None:
    """Store FILE as a blob; print its blob ID and availability certificate."""
    from .client.blob import StoreError

    committee = load_committee(committee_path)
    config = committee.config
    with click.open_file(file, "rb") as stream:
        data = stream.read(config.max_blob_size + 1)
    if len(data) > config.max_blob_size:
        raise Failure(f"{file} is larger than one blob for {config.n_shards} shards ({config.max_blob_size} bytes)")
    total = config.encoded_slivers_length(len(data))
    with _progress("storing", total) as bar:
        try:
            result = _with_client(committee, lambda client: client.store(data, progress=bar.update))
        except StoreError as exc:
            raise Failure(str(exc)) from exc
    cert = result.certificate
    report = {
        "blobId": str(result.blob_id),
        "unencodedLength": len(data),
        "epoch": cert.epoch,
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
    click.echo(
        f"Certificate: {len(cert.signers)} peers holding {committee.weight(cert.signers)} of "
        f"{committee.n_shards} shards signed (quorum {committee.quorum}), epoch {cert.epoch}"
    )
    for peer_id, why in sorted(result.failures.items()):
        click.echo(f"  not confirmed by {peer_id}: {why}")
    if result.entry:
        click.echo(f"Log entry: {result.entry.id.hex()} (held by {len(result.logged_by)} peers' logs)")


@main.command()
@click.argument("blob", metavar="BLOB_ID", callback=_blob_id)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--offset", type=click.IntRange(0), default=0, help="First byte to read.")
@click.option("--length", type=click.IntRange(0), default=None, help="Bytes to read (default: to the end).")
@click.option("--strict", is_flag=True, help="Recompute the blob ID from the decoded bytes.")
@committee_option
def read(blob: BlobId, output: Path | None, offset: int, length: int | None, strict: bool, committee_path: Path | None) -> None:
    """Read blob BLOB_ID back, verified against its commitments."""
    from .client.blob import InvalidBlobError, ReadError

    committee = load_committee(committee_path)

    async def job(client: Any) -> bytes:
        metadata = await client.get_metadata(blob)
        size = metadata.unencoded_length - offset if length is None else length
        with _progress("reading", max(size, 1)) as bar:
            return await client.read(blob, offset, size, strict=strict, metadata=metadata,
                                     progress=lambda k: bar.update(min(k, size)))

    try:
        data = _with_client(committee, job)
    except InvalidBlobError as exc:
        raise Failure(str(exc), EXIT_INVALID) from exc
    except ReadError as exc:
        code = EXIT_NOT_FOUND if "does not exist" in str(exc) else EXIT_FAILED
        raise Failure(str(exc), code) from exc
    if output:
        tmp = output.with_name(output.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(output)
        click.echo(f"wrote {len(data)} bytes to {output}", err=True)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@main.command("blob-status")
@click.argument("blob", metavar="BLOB_ID", callback=_blob_id)
@committee_option
@json_option
def blob_status(blob: BlobId, committee_path: Path | None, as_json: bool) -> None:
    """Show which peers hold which slivers of BLOB_ID and who confirmed it."""
    from .core.log import hlc_millis

    committee = load_committee(committee_path)

    async def job(client: Any) -> tuple[Any, Any, Any]:
        return (await client.blob_status(blob), *await client.blob_entries(blob))

    status, entry, invalid = _with_client(committee, job)
    valid_shards = sum(len(s["shards"]) for s in status if s.get("reachable")
                       and sorted(s.get("valid_pairs") or []) == s["pairs_expected"])
    confirmed = [s for s in status if s.get("confirmed")]
    weight = sum(len(s["shards"]) for s in confirmed)
    poa = None
    if entry is not None:
        poa = {
            "entryId": entry.id.hex(),
            "author": committee.peers[[p.public_key for p in committee.peers].index(entry.author)].peer_id,
            "time": _iso(hlc_millis(entry.hlc)),
            "signers": [committee.peers[i].peer_id for i in entry.payload["signers"]],
        }
    if as_json:
        click.echo(json.dumps({"blobId": str(blob), "confirmedShards": weight, "quorum": committee.quorum,
                               "certified": poa is not None, "pointOfAvailability": poa,
                               "validShards": valid_shards,
                               "invalid": invalid.id.hex() if invalid else None, "peers": status}, indent=2))
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


def _iso(millis: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


@main.command("log")
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

    from .core.log import LogError, LogState, check_entry, hlc_millis

    committee = load_committee(committee_path)
    names = {p.public_key: p.peer_id for p in committee.peers}
    if author and author not in names.values():
        raise click.BadParameter(f"{author} is not a committee member", param_hint="--author")

    def describe(entry: Any, counted: bool) -> dict[str, Any]:
        try:
            check_entry(entry, committee)
            validity = "valid" if counted else "equivocation"
        except LogError as exc:
            validity = f"INVALID: {exc}"
        row = {"entryId": entry.id.hex(), "author": names.get(entry.author, entry.author.hex()),
               "seq": entry.seq, "time": _iso(hlc_millis(entry.hlc)), "kind": entry.kind, "validity": validity}
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
            peers = [peer_index] if peer_index is not None else list(range(len(committee.peers)))
            entries = None
            for peer in peers:
                try:
                    entries = await client.log_entries(peer)
                    break
                except Exception:
                    continue
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

    _with_client(committee, job)


@main.group()
def volume() -> None:
    """Volumes: namespaces owned by a key kept in your config directory."""


@volume.command("create")
@click.argument("name")
@json_option
def volume_create(name: str, as_json: bool) -> None:
    """Make a new volume NAME and print its ID (share the ID for read-only mounts)."""
    from .mount.volumes import VolumeError, config_dir, create_volume

    try:
        made = create_volume(name)
    except VolumeError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"name": made.name, "volumeId": made.volume_id,
                               "keyFile": str(config_dir() / "volumes" / f"{name}.key")}))
    else:
        click.echo(f"volume {name}: {made.volume_id}")
        click.echo(f"mount it with: walrusfs mount DIR --volume {name}")


@volume.command("list")
@json_option
def volume_list(as_json: bool) -> None:
    """List the volumes whose keys you hold."""
    from .mount.volumes import VolumeError, list_volumes

    try:
        volumes = list_volumes()
    except VolumeError as exc:
        raise Failure(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{"name": v.name, "volumeId": v.volume_id} for v in volumes]))
    for v in volumes if not as_json else ():
        click.echo(f"{v.name}  {v.volume_id}")


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        number = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 4MiB, 512k or 1048576", ctx=ctx, param=param) from None
    if number <= 0:
        raise click.BadParameter("must be positive", ctx=ctx, param=param)
    return number


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--volume", "volume_ref", required=True, help="Volume name (key held here) or volume ID (read-only).")
@committee_option
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS), even with the volume key.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Staging, cache and device key (default: the user state directory, per volume).")
@click.option("--chunk-size", default="4MiB", callback=_size, show_default=True, help="Size of the chunks new content is cut into.")
@click.option("--cache-size", default="1GiB", callback=_size, show_default=True, help="Local cache of verified chunks.")
@click.option("--debug", is_flag=True, help="Log every warning and info message.")
@click.option("--fault", type=click.Choice(["inconsistent-writer"]), hidden=True,
              help="TEST ONLY: encode chunks the way a malicious writer would.")
def mount(mountpoint: Path, volume_ref: str, committee_path: Path | None, read_only: bool, state_dir: Path | None,
          chunk_size: int, cache_size: int, debug: bool, fault: str | None) -> None:
    """Mount a volume at MOUNTPOINT (runs until unmounted with 'walrusfs umount' or fusermount3 -u)."""
    import trio

    from p2p.host import configure_logging

    from .mount.serve import MountError, default_state_dir, serve_mount
    from .mount.staging import StateError
    from .mount.volumes import VolumeError, resolve_volume

    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    configure_logging(logging.INFO if debug else logging.CRITICAL)
    committee = load_committee(committee_path)
    try:
        vol = resolve_volume(volume_ref)
    except VolumeError as exc:
        raise click.BadParameter(str(exc), param_hint="--volume") from None
    if os.path.ismount(mountpoint):
        raise click.UsageError(f"{mountpoint} is already a mount point")
    if any(mountpoint.iterdir()):
        raise click.UsageError(f"{mountpoint} is not empty; mount on an empty directory")
    try:
        trio.run(lambda: serve_mount(
            mountpoint, vol, committee, state_dir or default_state_dir(vol), read_only=read_only,
            chunk_size=chunk_size, cache_bytes=cache_size, announce=lambda text: click.echo(text, err=True),
            inconsistent_writer=fault == "inconsistent-writer",
        ))
    except (MountError, StateError) as exc:
        raise Failure(str(exc)) from None


def _mount_status(mountpoint: Path) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(mountpoint, "user.walrus.status"))
    except OSError as exc:
        raise Failure(f"{mountpoint} is not a walrusfs mount ({exc.strerror})") from None


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-wait", is_flag=True, help="Unmount at once; staged files upload at the next mount.")
def umount(mountpoint: Path, no_wait: bool) -> None:
    """Wait for pending uploads, then unmount MOUNTPOINT."""
    import time

    from .mount.serve import fuse_unmount

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


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
def status(mountpoint: Path, as_json: bool) -> None:
    """Show a mount's pending uploads and their progress."""
    info = _mount_status(mountpoint)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    mode = "read-only" if info["read_only"] else "read-write"
    click.echo(f"volume {info['volume']} at {info['mountpoint']} ({mode}), pid {info['pid']}")
    click.echo(f"namespace entries: {info['entries_signed']} signed, {info['entries_published']} in the log"
               + (f" (publishing fails: {info['publish_error']})" if info.get("publish_error") else ""))
    click.echo(f"chunks uploaded {info['uploaded_chunks']}, deduplicated {info['deduplicated_chunks']}, "
               f"cache {info['cache_bytes']} bytes")
    if not info["pending"]:
        click.echo("no pending uploads")
    for item in info["pending"]:
        line = (f"  {item['node'][:16]}  {item['state']:<9} {item['uploaded_bytes']}/{item['staged_bytes']} "
                f"staged bytes of {item['size']}")
        click.echo(line + (f"  error: {item['error']}" if item.get("error") else ""))


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


@main.command()
@committee_option
@json_option
@click.option("--detail", is_flag=True, help="Also list each peer's recent heals and what each cost.")
def health(committee_path: Path | None, as_json: bool, detail: bool) -> None:
    """Show each peer: reachable, blobs held, missing, healing, healed, scrub progress.

    Exits 1 if a peer is unreachable or misses slivers of certified blobs.
    """
    committee = load_committee(committee_path)
    status = _with_client(committee, lambda client: client.health(detail))
    # The last challenge result comes from the log entries, checked here, not from what each peer says.
    rounds = _with_client(committee, lambda client: client.audit_rounds())
    closed = [r for r in rounds.ordered() if r.phase(committee) == "closed"]
    for k, s in enumerate(status):
        if closed:
            s["last_audit"] = {"round": closed[-1].number, "result": closed[-1].results(committee)[k]}
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        for k, s in enumerate(status):
            name = f"peer {k} {s['peer_id'][:12]}..."
            if not s["reachable"]:
                click.echo(f"{name}  DOWN  {s['error']}")
                continue
            h = s.get("healing") or {}
            scrub = h.get("scrub", {})
            click.echo(
                f"{name}  up  shards {s['shards']}  stored {_mb(s['stored_bytes'])}  "
                f"blobs held {h.get('held')}/{h.get('certified')}  missing {h.get('missing')}  "
                f"healing {h.get('healing')} (+{h.get('queued')} queued)  "
                f"healed {h.get('healed')} ({_mb(h.get('rebuilt_bytes', 0))} rebuilt from "
                f"{_mb(h.get('downloaded_bytes', 0))})  invalid {h.get('invalid')}  "
                f"scrub pass {scrub.get('passes', 0) + 1}: {scrub.get('checked')}/{scrub.get('total')} pairs, "
                f"{scrub.get('damaged')} damaged so far"
            )
            if s.get("last_audit"):
                audit = s["last_audit"]
                click.echo(f"    storage challenge round {audit['round']}: {audit['result'].upper()}")
            if h.get("last_error"):
                click.echo(f"    last healing problem: {h['last_error']}")
            for record in s.get("recent_heals") or []:
                click.echo(f"    healed {record['blob_id']} pairs {record['pairs']}: {record['pair_bytes']} bytes "
                           f"from {record['downloaded']} downloaded (+{record['metadata_bytes']} metadata) "
                           f"in {record['seconds']} s")
    unhealthy = [s for s in status if not s["reachable"] or (s.get("healing") or {}).get("missing")]
    if unhealthy:
        sys.exit(EXIT_FAILED)


@main.group()
def audit() -> None:
    """Storage challenges: peers prove they still hold their slivers, round by round, in the log."""


@audit.command("start")
@committee_option
@json_option
@click.option("--sample", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Certified blobs challenged in the round (a random sample no peer can predict).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the round closes.")
@click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True,
              help="Seconds to wait for the round to close (the round itself has no deadline).")
def audit_start(committee_path: Path | None, as_json: bool, sample: int, wait: bool, timeout: float) -> None:
    """Start a challenge round; refused while an earlier round is still open.

    Exits 1 if a peer failed the round, 2 if the round did not close within --timeout.
    """
    from .client.blob import AuditError
    from .core.rounds import CLOSED, summary

    committee = load_committee(committee_path)

    async def job(client: Any) -> tuple[Any, Any]:
        import trio

        entry = await client.start_audit(sample)
        if not as_json:
            click.echo(f"round {entry.payload['round']} started (entry {entry.id.hex()[:16]}), sample {sample} blobs")
        last_phase = None
        deadline = trio.current_time() + timeout
        while True:
            found = (await client.audit_rounds()).rounds.get(entry.id)
            phase = found.phase(committee) if found is not None and found.start else "revealing"
            if phase != last_phase and not as_json:
                click.echo(f"  {phase}")
                last_phase = phase
            if not wait or phase == CLOSED or trio.current_time() > deadline:
                return entry, found
            await trio.sleep(0.5)

    try:
        entry, found = _with_client(committee, job)
    except AuditError as exc:
        raise Failure(f"cannot start a challenge round: {exc}") from exc
    start_id = entry.id
    info = summary(found, committee) if found is not None and found.start else {"start": start_id.hex()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_round(info)
    if wait and info.get("phase") != CLOSED:
        sys.exit(2)
    if any(row["result"] == "failed" for row in info.get("peers", [])):
        sys.exit(EXIT_FAILED)


def _print_round(info: dict[str, Any]) -> None:
    click.echo(f"round {info['round']} ({info['start'][:16]}): {info['phase']}, sample {info['sample']} blobs, "
               f"started by peer {info['started_by']}, seed {(info['seed'] or '(not yet revealed)')[:16]}")
    if info["bad_reveals"]:
        click.echo(f"  reveals that do not match their commitments (round stalled): {info['bad_reveals']}")
    waiting = [k for k in info["committed"] if k not in info["revealed"]]
    if info["seed"] is None and waiting:
        click.echo(f"  waiting for reveals from peers {waiting}")
    for row in info["peers"]:
        line = f"  peer {row['peer']} {row['peer_id'][:12]}...  {row['result'].upper()}"
        if row.get("attested_by") is not None:
            line += f"  attested by {row['attested_by']}"
        click.echo(line)
        for closer, verdict in (row.get("verdicts") or {}).items():
            click.echo(f"      peer {closer}: {verdict}")


@audit.command("status")
@committee_option
@json_option
def audit_status(committee_path: Path | None, as_json: bool) -> None:
    """Show the latest challenge round: its phase and each peer's result, with the evidence."""
    from .core.rounds import summary

    committee = load_committee(committee_path)
    rounds = _with_client(committee, lambda client: client.audit_rounds()).ordered()
    if not rounds:
        if as_json:
            click.echo("null")
        else:
            click.echo("no challenge round has started yet")
        return
    info = summary(rounds[-1], committee)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_round(info)


@audit.command("history")
@committee_option
@json_option
def audit_history(committee_path: Path | None, as_json: bool) -> None:
    """Show every challenge round, one line each: each peer's result (P passed, F failed, . pending)."""
    from .core.rounds import summary

    committee = load_committee(committee_path)
    infos = [summary(r, committee) for r in _with_client(committee, lambda client: client.audit_rounds()).ordered()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        click.echo("no challenge round has started yet")
        return
    click.echo("round  phase      sample  peers " + " ".join(str(k % 10) for k in range(len(committee.peers))))
    for info in infos:
        marks = " ".join({"passed": "P", "failed": "F"}.get(row["result"], ".") for row in info["peers"])
        click.echo(f"{info['round']:>5}  {info['phase']:<9}  {info['sample']:>6}        {marks}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""devnet: a local network of peer processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..core.committee import Committee
from .common import (
    Failure,
    load_committee,
    with_client,
)


@click.group()
def devnet() -> None:
    """A local network of peer processes on 127.0.0.1."""


def _wait_serving(directory: Path, indices: list[int], limit: float = 60.0) -> None:
    import time

    from .. import devnet as dn

    deadline = time.monotonic() + limit
    for k in indices:
        log = dn.peer_dir(directory, k) / "peer.log"
        while "serving shards" not in (log.read_text() if log.exists() else ""):
            if k not in dn.running(directory) or time.monotonic() > deadline:
                raise Failure(f"peer {k} did not come up:\n{log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.2)


def _wait_ready(directory: Path, committee: Committee, indices: list[int], limit: float = 60.0) -> None:
    import time

    import trio

    from .. import devnet as dn
    from ..core import messages as m

    async def unreachable(client: Any) -> list[int]:
        # Only the peers being started are asked: another peer that is stalled must not
        # hold up this one's start.
        answered: set[int] = set()

        async def ask(k: int) -> None:
            with trio.move_on_after(5.0):
                try:
                    await client._call(k, m.GET_STATUS)
                    answered.add(k)
                except Exception:  # noqa: BLE001 - not up yet, whatever the reason
                    pass

        async with trio.open_nursery() as nursery:
            for k in indices:
                nursery.start_soon(ask, k)
        return [k for k in indices if k not in answered]

    deadline = time.monotonic() + limit
    while True:
        waiting = with_client(committee, unreachable)
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
@click.option("--epoch-seconds", type=click.IntRange(1, 10**7), default=None,
              help="Length of a storage epoch on a new devnet (default 600).")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def devnet_up(count: int, faults: tuple[str, ...], challenge_every: int | None, challenge_sample: int | None,
              epoch_seconds: int | None, directory: Path) -> None:
    """Start COUNT peers with data in DIRECTORY and write DIRECTORY/committee.toml."""
    from .. import devnet as dn

    modes: dict[int, str] = {}
    for item in faults:
        index, _, mode = item.partition("=")
        if not index.isdigit() or not mode:
            raise click.BadParameter(f"expected K=MODE, got {item!r}", param_hint="--fault")
        modes[int(index)] = mode
    try:
        committee = dn.create(directory, count, epoch_seconds or dn.DEVNET_EPOCH_SECONDS)
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
    # A peer that stalls on purpose never answers: it is up once it says it is serving.
    stalling = [k for k in range(count) if modes.get(k) in ("stall", "black-hole")]
    _wait_ready(directory, committee, [k for k in range(count) if k not in stalling])
    _wait_serving(directory, stalling)
    _grant_writer(directory, committee)
    path = (directory / dn.COMMITTEE_FILE).resolve()
    click.echo(f"{count} peers running (n = {committee.n_shards}, f = {committee.f}); committee: {path}")
    click.echo(f"  export WALRUSFS_COMMITTEE={path}")
    metrics = dn.metrics_addresses(directory)
    click.echo("  metrics: " + ", ".join(f"peer {k} http://{metrics[k]}/metrics" for k in sorted(metrics)))
    click.echo("  walrusfs store FILE; walrusfs read BLOB_ID -o OUT; walrusfs health")
    click.echo(f"  walrusfs devnet down {directory}")


def _grant_writer(directory: Path, committee: Committee) -> None:
    """Grant the devnet's writer key (once): the local user stores with no extra step."""
    from .. import devnet as dn
    from ..client.writer import load_key, publish_operator_entry
    from ..core.lifecycle import GRANT, MAX_EPOCH, Grant

    if (directory / dn.GRANTED_MARK).exists():
        return
    if not committee.operators or not (directory / dn.OPERATOR_FILE).exists():
        raise Failure(f"{directory} was made by a walrusfs without write access (no operator in its committee "
                      f"file): stop it with `walrusfs devnet down {directory}`, remove the directory and start again")
    operator = load_key(directory / dn.OPERATOR_FILE)
    writer = load_key(directory / dn.WRITER_FILE, create=True)
    grant = Grant(bytes(writer.verify_key), dn.DEVNET_QUOTA, 0, MAX_EPOCH)
    try:
        with_client(committee, lambda client: publish_operator_entry(
            client, operator, directory / dn.OPERATOR_FILE, GRANT, grant.to_wire()))
    except Exception as exc:  # noqa: BLE001 - any failure here is reported as one line
        raise Failure(f"could not grant the devnet's writer key: {exc}") from exc
    (directory / dn.GRANTED_MARK).write_text(bytes(writer.verify_key).hex() + "\n")


@devnet.command("down")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def devnet_down(directory: Path) -> None:
    """Stop every peer of the devnet in DIRECTORY."""
    from .. import devnet as dn

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
    from .. import devnet as dn

    if not dn.stop_peer(directory, index, kill=kill):
        raise Failure(f"peer {index} is not running")
    click.echo(f"peer {index} stopped")


@devnet.command("pause")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the peer to pause.")
def devnet_pause(directory: Path, index: int) -> None:
    """Pause one peer with SIGSTOP: its sockets stay open and nothing answers (a stall drill)."""
    import signal

    from .. import devnet as dn

    if not dn.signal_peer(directory, index, signal.SIGSTOP):
        raise Failure(f"peer {index} is not running")
    click.echo(f"peer {index} paused (walrusfs devnet resume {directory} --peer {index} continues it)")


@devnet.command("resume")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the peer to resume.")
def devnet_resume(directory: Path, index: int) -> None:
    """Continue a paused peer (SIGCONT)."""
    import signal

    from .. import devnet as dn

    if not dn.signal_peer(directory, index, signal.SIGCONT):
        raise Failure(f"peer {index} is not running")
    click.echo(f"peer {index} resumed")


@devnet.command("wipe")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--peer", "index", type=int, required=True, help="Index of the (stopped) peer to wipe.")
def devnet_wipe(directory: Path, index: int) -> None:
    """Delete a stopped peer's stored data, keeping its identity (a fault drill)."""
    from .. import devnet as dn

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
    from .. import devnet as dn

    committee = load_committee(directory / dn.COMMITTEE_FILE)
    try:
        dn.start_peer(directory, index, fault)
    except dn.DevnetError as exc:
        raise Failure(str(exc)) from exc
    if fault in ("stall", "black-hole"):
        _wait_serving(directory, [index])
    else:
        _wait_ready(directory, committee, [index])
    click.echo(f"peer {index} running")

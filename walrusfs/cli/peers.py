"""Peer commands: init, peer, health."""

from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path

import click

from ..core.committee import CommitteeError
from .common import (
    EXIT_FAILED,
    Failure,
    at_once,
    committee_option,
    human_size,
    json_option,
    load_committee,
    megabytes,
    metrics_option,
    parse_size,
    start_metrics,
    with_client,
)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a peer identity (Ed25519) in DIRECTORY."""
    from ..identity import IdentityError, create_identity

    try:
        identity = create_identity(directory)
    except IdentityError as exc:
        raise Failure(str(exc)) from exc
    click.echo(f"peer_id = \"{identity.peer_id}\"")
    click.echo(f"public_key = \"{identity.public_key.hex()}\"")


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@committee_option
@click.option("--fault", type=click.Choice(["corrupt-slivers", "wrong-metadata", "bad-confirmations", "discard-tenth",
                                           "discard-tenth-fetch", "slow-challenge", "stall", "slow", "hostile",
                                           "black-hole"]),
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
@click.option("--min-free", default="64MiB", callback=parse_size, show_default=True, envvar="WALRUSFS_MIN_FREE",
              help="Free disk space kept for the database and log: uploads that would leave less are refused "
                   "(disk-full) until space returns.")
@metrics_option
def peer(directory: Path, committee_path: Path | None, fault: str | None, scrub_rate: float, scrub_pause: float,
         challenge_every: int, challenge_sample: int, min_free: int, metrics_address: str | None) -> None:
    """Run a storage peer from its data DIRECTORY until SIGTERM.

    The peer heals missing or damaged sliver pairs of every certified blob in the
    background, its scrubber re-verifies everything it stores, pass after pass, and it
    takes part in storage challenge rounds (and starts them, with --challenge-every).
    """
    import trio

    from p2p.host import configure_logging

    from ..identity import IdentityError, load_identity
    from ..peer.metrics import PeerMetrics
    from ..peer.service import Fault, run_peer

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    configure_logging(logging.WARNING)
    committee = load_committee(committee_path)
    try:
        identity = load_identity(directory)
        committee.index_of(identity.peer_id)
    except (IdentityError, CommitteeError) as exc:
        raise Failure(str(exc)) from exc
    metrics = PeerMetrics()
    server = start_metrics(metrics.registry, metrics_address)
    if server is not None:
        print(f"walrusfs peer: metrics on {server.url}", flush=True)
    try:
        if fault == "black-hole":
            from ..peer.blackhole import run_black_hole

            me = committee.peers[committee.index_of(identity.peer_id)]
            run_black_hole(me.addrs[0], announce=lambda line: print(
                f"walrusfs peer {identity.peer_id} serving shards {sorted(me.shards)} on {me.addrs[0]} "
                f"[TEST FAULT: black-hole]: {line}", flush=True))
            return
        trio.run(partial(run_peer, directory, identity, committee, Fault(fault) if fault else None,
                         int(scrub_rate * 1e6), scrub_pause, challenge_every=challenge_every,
                         challenge_sample=challenge_sample, min_free=min_free, metrics=metrics))
    finally:
        if server is not None:
            server.close()


@click.command()
@committee_option
@json_option
@click.option("--detail", is_flag=True, help="Also list each peer's recent heals and what each cost, its storage "
                                            "epoch, space given back, pending uploads and usage per account.")
def health(committee_path: Path | None, as_json: bool, detail: bool) -> None:
    """Show each peer: reachable, blobs held, missing, healing, healed, scrub progress.

    Exits 1 if a peer is unreachable or misses slivers of certified blobs.
    """
    committee = load_committee(committee_path)
    # The last challenge result comes from the log entries, checked here, not from what each peer says.
    status, rounds = with_client(committee, lambda client: at_once(lambda: client.health(detail), lambda: client.audit_rounds(patient=False)))
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
            if s.get("disk_full"):
                click.echo(f"{name}  DISK FULL  {megabytes(s.get('free_bytes') or 0)} free: refusing uploads "
                           "(disk-full), serving what it holds")
            click.echo(
                f"{name}  up  shards {s['shards']}  stored {megabytes(s['stored_bytes'])}  "
                f"blobs held {h.get('held')}/{h.get('certified')}  missing {h.get('missing')}  "
                f"healing {h.get('healing')} (+{h.get('queued')} queued)  "
                f"healed {h.get('healed')} ({megabytes(h.get('rebuilt_bytes', 0))} rebuilt from "
                f"{megabytes(h.get('downloaded_bytes', 0))})  invalid {h.get('invalid')}  "
                f"scrub pass {scrub.get('passes', 0) + 1}: {scrub.get('checked')}/{scrub.get('total')} pairs, "
                f"{scrub.get('damaged')} damaged so far"
            )
            if s.get("last_audit"):
                audit = s["last_audit"]
                click.echo(f"    storage challenge round {audit['round']}: {audit['result'].upper()}")
            if h.get("last_error"):
                click.echo(f"    last healing problem: {h['last_error']}")
            storage = s.get("storage")
            if detail and storage is not None:
                click.echo(f"    storage epoch {storage.get('epoch')}  free {megabytes(s.get('free_bytes') or 0)}  "
                           f"reclaimed {human_size(storage.get('reclaimed_bytes', 0))} "
                           f"({storage.get('released_blobs', 0)} blobs)  pending uploads {storage.get('pending_uploads')}  "
                           f"grants {storage.get('grants')}  revoked {storage.get('revoked')}")
                for account in storage.get("accounts", []):
                    click.echo(f"    account {account['account'][:16]}...  used {human_size(account['used'])} of "
                               f"{human_size(account['quota'])}")
            for record in s.get("recent_heals") or []:
                click.echo(f"    healed {record['blob_id']} pairs {record['pairs']}: {record['pair_bytes']} bytes "
                           f"from {record['downloaded']} downloaded (+{record['metadata_bytes']} metadata) "
                           f"in {record['seconds']} s")
    unhealthy = [s for s in status if not s["reachable"] or (s.get("healing") or {}).get("missing")]
    if unhealthy:
        sys.exit(EXIT_FAILED)

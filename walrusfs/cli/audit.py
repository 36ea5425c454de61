"""audit: storage challenge rounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .common import (
    EXIT_FAILED,
    Failure,
    committee_option,
    json_option,
    load_committee,
    with_client,
)


@click.group()
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
@click.option("--key", "key_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              envvar="WALRUSFS_MEMBER_DIR",
              help="Data directory of the committee member whose key authorizes the round (only members start "
                   "rounds).")
def audit_start(committee_path: Path | None, as_json: bool, sample: int, wait: bool, timeout: float,
                key_dir: Path | None) -> None:
    """Start a challenge round; refused while an earlier round is still open.

    Exits 1 if a peer failed the round, 2 if the round did not close within --timeout.
    """
    from ..client.blob import AuditError
    from ..core.committee import CommitteeError
    from ..core.rounds import CLOSED, summary
    from ..identity import load_identity

    committee = load_committee(committee_path)
    member = None
    if key_dir is not None:
        identity = load_identity(key_dir)
        try:
            member = (committee.index_of(identity.peer_id), identity.signing_key)
        except CommitteeError as exc:
            raise Failure(f"{key_dir} holds the key of {identity.peer_id}, not a committee member") from exc

    async def job(client: Any) -> tuple[Any, Any]:
        import trio

        entry = await client.start_audit(sample, member)
        if not as_json:
            click.echo(f"round {entry.payload['round']} started (entry {entry.id.hex()[:16]}), sample {sample} blobs")
        if not wait:
            return entry, None  # the caller follows the round itself
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
        entry, found = with_client(committee, job)
    except AuditError as exc:
        raise Failure(f"cannot start a challenge round: {exc}") from exc
    start_id = entry.id
    if not wait:  # "round N started" was printed; follow it with 'audit status'
        if as_json:
            click.echo(json.dumps({"start": start_id.hex(), "round": entry.payload.get("round"), "sample": sample,
                                   "phase": "revealing"}, indent=2))
        return
    info = summary(found, committee) if found is not None and found.start else {"start": start_id.hex()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_round(info)
    if info.get("phase") != CLOSED:
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
    from ..core.rounds import summary

    committee = load_committee(committee_path)
    rounds = with_client(committee, lambda client: client.audit_rounds()).ordered()
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
    from ..core.rounds import summary

    committee = load_committee(committee_path)
    infos = [summary(r, committee) for r in with_client(committee, lambda client: client.audit_rounds()).ordered()]
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


"""grant: operators give, list and withdraw storage grants (log entries every peer applies alike).

A grant names a writer key (a client's writer key, or a volume key), a quota of encoded
bytes and the storage epochs it covers. A revocation withdraws a key wherever it appears:
as an account, as a volume sponsored by one, or as a mount's device key. Namespace entries
already published by authors resting on the key keep counting (the revocation names their
current heads); later ones are refused by every peer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .common import (
    Failure,
    committee_option,
    default_committee_path,
    human_size,
    json_option,
    load_committee,
    parse_size,
    with_client,
)

OPERATOR_FILE = "operator.key"


def operator_key_path(committee_path: Path | None, given: Path | None) -> Path:
    """--operator-key, else ``operator.key`` beside the committee file (a devnet has one), else in the config dir."""
    if given is not None:
        return given
    beside = (committee_path or default_committee_path()).parent / OPERATOR_FILE
    if beside.is_file():
        return beside
    from ..mount.volumes import config_dir

    return config_dir() / OPERATOR_FILE


operator_key_option = click.option(
    "--operator-key", "operator_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Operator key file (default: operator.key beside the committee file, then in the user config directory).",
)


def parse_key(text: str, hint: str = "KEY") -> tuple[bytes, str]:
    """A public key from 64 hex digits, a key (seed) file, or a volume name or ID; with how it was named."""
    from ..client.writer import WriterKeyError, load_key
    from ..mount.volumes import VolumeError, resolve_volume

    if len(text) == 64:
        try:
            return bytes.fromhex(text), "key"
        except ValueError:
            pass
    path = Path(text)
    if path.is_file():
        try:
            return bytes(load_key(path).verify_key), f"key file {path}"
        except WriterKeyError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    try:
        volume = resolve_volume(text)
    except VolumeError as exc:
        raise click.BadParameter(f"{text!r} is not a 64-hex public key, a key file or a volume ({exc})",
                                 param_hint=hint) from None
    return volume.public_key, f"volume {volume.name or volume.volume_id}"


def parse_epochs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Click callback: FIRST..END (END exclusive; either may be left out) as (first, end)."""
    from ..core.lifecycle import MAX_EPOCH

    if value is None:
        return None
    first_text, sep, end_text = value.partition("..")
    try:
        if not sep:
            raise ValueError
        first = int(first_text) if first_text else 0
        end = int(end_text) if end_text else MAX_EPOCH
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a range like 3..10 (epochs 3 to 9), 5.. or ..20",
                                 ctx=ctx, param=param) from None
    if not 0 <= first < end <= MAX_EPOCH:
        raise click.BadParameter(f"need 0 <= FIRST < END <= {MAX_EPOCH}", ctx=ctx, param=param)
    return first, end


def _epochs(first: int, end: int) -> str:
    from ..core.lifecycle import MAX_EPOCH

    return f"{first}.." + ("(no end)" if end >= MAX_EPOCH else str(end))


def _load_operator(committee_path: Path | None, given: Path | None) -> tuple[Any, Path]:
    from ..client.writer import WriterKeyError, load_key

    path = operator_key_path(committee_path, given)
    try:
        key = load_key(path)
    except WriterKeyError as exc:
        raise Failure(f"no usable operator key ({exc}); pass --operator-key FILE (a devnet has DIR/operator.key)") from None
    return key, path


def _publish(committee: Any, key: Any, path: Path, kind: str, payload: dict[str, Any]) -> Any:
    """Publish an operator entry; a one-line failure if the key is not an operator or peers are away."""
    from ..client.writer import WriterKeyError, publish_operator_entry
    from ..core.log import LogError

    if bytes(key.verify_key) not in committee.operators:
        raise Failure(f"key {path} ({bytes(key.verify_key).hex()[:16]}...) is not an operator of this committee "
                      "(operators = [...] in the committee file)")
    try:
        return with_client(committee, lambda client: publish_operator_entry(client, key, path, kind, payload))
    except (WriterKeyError, LogError) as exc:
        raise Failure(f"could not publish the {kind} entry: {exc}") from None


def _folded_log(committee: Any, every_peer: bool = False) -> Any:
    """The log folded into a ``LogState``, every entry checked here: the fullest peer's, or (``every_peer``) all peers' merged.

    A revocation's heads are read from every peer's log merged, so an entry a writer
    published to some peers only still counts: no one peer's lag cuts it off.
    """
    import trio

    from ..core.log import LogState

    def fold(logs: list[list[Any]]) -> Any:
        state = LogState(committee)
        now = int(time.time() * 1000)
        for entries in logs:
            for entry in entries:
                state.apply(entry, now_ms=now)  # checked like a peer checks it: a forged grant is dropped
        return state

    async def job(client: Any) -> Any:
        from p2p.rpc import PeerUnavailable

        from ..client.members import member_fault
        from ..client.writer import each_peer_until
        from ..core.errors import CodecError

        if every_peer:
            logs: list[list[Any]] = []
            answered: list[int] = []

            async def one(peer: int) -> None:
                try:
                    logs.append(await client.log_entries(peer))
                    answered.append(peer)
                except (PeerUnavailable, CodecError):
                    pass
                except Exception as exc:  # noqa: BLE001 - one peer's odd answer is its own failure
                    member_fault(peer, exc)

            # Peers holding 2f + 1 shards include one of any f + 1 that accepted an entry;
            # a stalled peer is given a short grace, not the whole limit.
            await each_peer_until(client, one, lambda: committee.weight(answered) >= committee.quorum, 120)
            if not logs:
                raise Failure("no peer answered with its log (are the peers up?)")
        else:
            entries = await client.fullest_log()
            if entries is None:
                raise Failure("no peer answered with its log (are the peers up?)")
            logs = [entries]
        return await trio.to_thread.run_sync(fold, logs)

    return with_client(committee, job)


@click.group("grant")
def grant() -> None:
    """Storage grants: who may store on this committee, how much and for how long (operators only)."""


@grant.command("create")
@click.argument("writer", metavar="WRITER")
@click.option("--quota", required=True, callback=parse_size, help="Encoded bytes the writer may hold, e.g. 10GiB.")
@click.option("--epochs", "epoch_range", default=None, callback=parse_epochs, metavar="FIRST..END",
              help="Storage epochs the grant covers, END excluded (default: all).")
@click.option("--until-epoch", type=click.IntRange(1), default=None, help="Same as --epochs 0..N.")
@operator_key_option
@committee_option
@json_option
def grant_create(writer: str, quota: int, epoch_range: tuple[int, int] | None, until_epoch: int | None,
                 operator_key: Path | None, committee_path: Path | None, as_json: bool) -> None:
    """Grant WRITER (a 64-hex public key, a key file, or a volume name or ID) a quota of encoded storage."""
    from ..core.lifecycle import GRANT, MAX_EPOCH, MAX_QUOTA, Grant

    if epoch_range is not None and until_epoch is not None:
        raise click.UsageError("--epochs and --until-epoch exclude each other")
    if quota > MAX_QUOTA:
        raise click.BadParameter(f"at most {MAX_QUOTA} bytes", param_hint="--quota")
    first, end = epoch_range or (0, min(until_epoch, MAX_EPOCH) if until_epoch else MAX_EPOCH)
    public, named = parse_key(writer, "WRITER")
    committee = load_committee(committee_path)
    key, path = _load_operator(committee_path, operator_key)
    entry = _publish(committee, key, path, GRANT, Grant(public, quota, first, end).to_wire())
    if as_json:
        click.echo(json.dumps({"writer": public.hex(), "quota": quota, "firstEpoch": first, "endEpoch": end,
                               "entryId": entry.id.hex()}))
    else:
        click.echo(f"granted {public.hex()} ({named}) {human_size(quota)} of encoded storage in epochs "
                   f"{_epochs(first, end)}: entry {entry.id.hex()[:16]}...")


@grant.command("list")
@committee_option
@json_option
def grant_list(committee_path: Path | None, as_json: bool) -> None:
    """Every grant and revocation in the log, and each account's quota and usage now."""
    from ..core.lifecycle import GRANT, REVOKE, Grant, Revocation

    committee = load_committee(committee_path)
    state = _folded_log(committee)
    ledger = state.ledger
    grants: dict[bytes, list[dict[str, Any]]] = {}
    revocations = []
    for entry in state.counted():
        if entry.kind == GRANT:
            g = Grant.from_wire(entry.payload)
            grants.setdefault(g.writer, []).append({"entryId": entry.id.hex(), "quota": g.quota,
                                                    "firstEpoch": g.first_epoch, "endEpoch": g.end_epoch})
        elif entry.kind == REVOKE:
            r = Revocation.from_wire(entry.payload)
            revocations.append({"entryId": entry.id.hex(), "key": r.key.hex(),
                                "heads": {a.hex(): s for a, s in sorted(r.heads.items())}})
    usage = ledger.usage_by_account()
    accounts = []
    for account in sorted(set(grants) | set(usage), key=lambda a: (-usage.get(a, 0), a)):
        accounts.append({"account": account.hex(), "quota": ledger.quota(account), "used": usage.get(account, 0),
                         "revoked": account in ledger.revoked, "grants": grants.get(account, [])})
    if as_json:
        click.echo(json.dumps({"epoch": ledger.epoch, "accounts": accounts, "revocations": revocations}, indent=2))
        return
    click.echo(f"storage epoch {ledger.epoch}; {len(accounts)} accounts, {len(revocations)} revocations")
    for a in accounts:
        flag = "  REVOKED" if a["revoked"] else ""
        click.echo(f"{a['account']}  used {human_size(a['used'])} of {human_size(a['quota'])} now{flag}")
        for g in a["grants"]:
            click.echo(f"    grant {g['entryId'][:16]}...  {human_size(g['quota'])}  epochs {_epochs(g['firstEpoch'], g['endEpoch'])}")
    for r in revocations:
        click.echo(f"revoked {r['key']}  (entries of {len(r['heads'])} authors resting on it count up to their "
                   f"heads then): entry {r['entryId'][:16]}...")


@grant.command("revoke")
@click.argument("key_text", metavar="KEY")
@operator_key_option
@committee_option
@json_option
def grant_revoke(key_text: str, operator_key: Path | None, committee_path: Path | None, as_json: bool) -> None:
    """Withdraw KEY (a writer key, a volume or a device key; 64 hex, a key file or a volume name or ID).

    The key may store nothing more, and namespace entries resting on it (its own as a
    device, its volume's, its account's) stop counting past the heads peers hold now.
    """
    from ..core.lifecycle import MAX_REVOKE_HEADS, REVOKE, Revocation
    from ..core.log import namespace_account

    public, named = parse_key(key_text)
    committee = load_committee(committee_path)
    key, path = _load_operator(committee_path, operator_key)
    if bytes(key.verify_key) not in committee.operators:
        raise Failure(f"key {path} ({bytes(key.verify_key).hex()[:16]}...) is not an operator of this committee "
                      "(operators = [...] in the committee file)")
    state = _folded_log(committee, every_peer=True)
    heads = state.resting_on(public)
    if len(heads) > MAX_REVOKE_HEADS:
        raise Failure(f"{len(heads)} authors rest on this key; one revocation names at most {MAX_REVOKE_HEADS}")
    entry = _publish(committee, key, path, REVOKE, Revocation(public, heads).to_wire())
    roles = []
    for author, head in sorted(heads.items()):
        first = state.chains[author][0].payload
        role = ("device" if author == public else "device of volume" if first["volume"] == public
                else "device on account" if namespace_account(first) == public else "author")
        roles.append({"author": author.hex(), "role": role, "head": head})
    quota = state.ledger.quota(public)
    if as_json:
        click.echo(json.dumps({"key": public.hex(), "entryId": entry.id.hex(), "quotaWithdrawn": quota,
                               "authors": roles}))
        return
    click.echo(f"revoked {public.hex()} ({named}): entry {entry.id.hex()[:16]}...")
    click.echo("  it may store nothing more" + (f" (its grants of {human_size(quota)} end)" if quota else ""))
    if not roles:
        click.echo("  no namespace entries rest on it")
    for r in roles:
        click.echo(f"  {r['role']} {r['author'][:16]}...: its {r['head']} entries keep counting; later ones are refused")

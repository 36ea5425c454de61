"""Which key a command stores with, and how an operator's grants reach the log.

The writer key is found, in order: ``--writer-key FILE`` or $WALRUSFS_WRITER_KEY; the
``writer.key`` next to the committee file (a devnet writes one and grants it, so whoever
can read the devnet's directory may store on it); ``writer.key`` in the user's config
directory (made on first use, mode 0600). Keys are hex seed files, like peers' and volumes'.

Operators author ``grant`` and ``revoke`` entries in their own chain of the log. Their
chain's last position is kept next to the key (``KEY.chain``) and checked against the
peers' logs, under a lock, so two commands never sign two entries at one position (which
would be equivocation, after which the operator's later entries stop counting).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from p2p.rpc import PeerUnavailable

from ..core import messages as m
from ..core.errors import CodecError
from ..core.lifecycle import Authority, own_authority
from ..core.log import (
    GENESIS,
    Entry,
    LogError,
    check_entry,
    next_hlc,
    sign_entry,
)
from ..identity import SeedFileError, read_seed_file, write_seed_file
from ..mount.volumes import config_dir
from .logpages import check_ranges
from .members import member_fault

WRITER_ENV = "WALRUSFS_WRITER_KEY"
WRITER_FILE = "writer.key"


class WriterKeyError(Exception):
    """A writer or operator key file is unusable; the message says why."""


def writer_key_path(committee_path: Path | None) -> Path:
    """Where this command's writer key is (see the module docstring for the order)."""
    if os.environ.get(WRITER_ENV):
        return Path(os.environ[WRITER_ENV])
    if committee_path is not None and (committee_path.parent / WRITER_FILE).is_file():
        return committee_path.parent / WRITER_FILE
    return config_dir() / WRITER_FILE


def load_key(path: Path, create: bool = False) -> SigningKey:
    """The signing key in seed file ``path`` (made if ``create`` and absent)."""
    try:
        return SigningKey(read_seed_file(path))
    except FileNotFoundError:
        if not create:
            raise WriterKeyError(f"no key file at {path}") from None
    except SeedFileError as exc:
        raise WriterKeyError(str(exc)) from None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return SigningKey(write_seed_file(path))
    except FileExistsError:  # made by a concurrent command meanwhile
        return SigningKey(read_seed_file(path))


def load_authority(committee_path: Path | None, key_path: Path | None = None) -> Authority:
    """The authority this command stores with: its writer key as account, owner and signer."""
    return own_authority(load_key(key_path or writer_key_path(committee_path), create=True))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: Once enough peers answered, how long the others still get (liveness only: a stalled
#: peer must not hold an operator's command for the whole limit).
STRAGGLER_GRACE = 0.5


async def each_peer_until(client: Any, ask: Any, enough: Any, limit: float) -> None:
    """Run ``ask(peer)`` on every peer; stop when all finished, ``STRAGGLER_GRACE`` s after ``enough()`` held, or at ``limit``."""
    count = len(client.committee.peers)
    finished = 0
    all_done, enough_seen = trio.Event(), trio.Event()

    async def one(peer: int) -> None:
        nonlocal finished
        try:
            await ask(peer)
        finally:
            finished += 1
            if finished == count:
                all_done.set()
            if enough():
                enough_seen.set()

    with trio.move_on_after(limit):
        async with trio.open_nursery() as nursery:

            async def grace() -> None:
                await enough_seen.wait()
                await trio.sleep(STRAGGLER_GRACE)
                nursery.cancel_scope.cancel()

            nursery.start_soon(grace)
            for peer in range(count):
                nursery.start_soon(one, peer)
            await all_done.wait()
            nursery.cancel_scope.cancel()


async def _chain_from_peers(client: Any, author: bytes) -> list[Entry]:
    """The longest valid chain of ``author`` peers holding 2f + 1 shards serve (operators' chains are short).

    Peers a quorum answered with intersect every f + 1 that accepted an entry, and the
    operator's own record of its chain covers the rest.
    """
    best: list[Entry] = []
    answered: list[int] = []

    async def ask(peer: int) -> None:
        nonlocal best
        try:
            reply, _ = await client._call(peer, m.LOG_RANGE, wants=[[author, 1, 100_000]])
            parts = check_ranges(reply, [(author, 1, 100_000)])
            chain: list[Entry] = []
            for entry in parts[0] if parts else []:
                if entry.prev != (chain[-1].id if chain else GENESIS):
                    break
                check_entry(entry, client.committee, None)
                chain.append(entry)
            if len(chain) > len(best):
                best = chain
            answered.append(peer)
        except (PeerUnavailable, CodecError):
            pass
        except Exception as exc:  # noqa: BLE001 - one peer's odd answer is its own failure
            member_fault(peer, exc)

    await each_peer_until(client, ask, lambda: client.committee.weight(answered) >= client.committee.quorum, 15)
    return best


async def publish_operator_entry(client: Any, key: SigningKey, key_path: Path, kind: str,
                                 payload: dict[str, Any]) -> Entry:
    """Sign ``kind``/``payload`` as the next entry of the operator's chain and push it to every peer.

    Returns once peers holding f + 1 shards accepted it (they relay it to the rest).
    """
    author = bytes(key.verify_key)
    if author not in client.committee.operators:
        raise WriterKeyError(f"key {key_path} ({author.hex()[:16]}...) is not an operator of this committee "
                             "(operators = [...] in the committee file)")
    state_path = key_path.with_name(key_path.name + ".chain")
    with _locked(key_path):
        try:
            saved = json.loads(state_path.read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        chain = await _chain_from_peers(client, author)
        seq, prev, last_hlc = len(chain), chain[-1].id if chain else GENESIS, chain[-1].hlc if chain else 0
        if int(saved.get("seq", 0)) > seq:
            # We signed further than any reachable peer holds: continue after our own record.
            seq, prev, last_hlc = int(saved["seq"]), bytes.fromhex(saved["id"]), int(saved["hlc"])
        hlc = next_hlc(last_hlc, int(time.time() * 1000))
        entry = sign_entry(key, seq + 1, prev, hlc, kind, payload)
        check_entry(entry, client.committee, int(time.time() * 1000))
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": entry.seq, "id": entry.id.hex(), "hlc": entry.hlc}))
        tmp.replace(state_path)
    holders: list[int] = []
    problems: dict[int, str] = {}

    async def push(peer: int) -> None:
        try:
            reply, _ = await client._call(peer, m.LOG_PUSH, entries=[entry.encode()])
            outcome = m.check_push_reply(reply, 1)[0]
            if outcome in ("accepted", "duplicate", "pending"):
                holders.append(peer)
            else:
                problems[peer] = f"{outcome}: {reply.get('results')}"
        except (PeerUnavailable, CodecError) as exc:
            problems[peer] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one peer's odd answer is its own failure
            problems[peer] = member_fault(peer, exc)

    # Peers that answer late get the entry by relay and anti-entropy.
    await each_peer_until(client, push, lambda: client.committee.weight(holders) >= client.committee.quorum, 30)
    if client.committee.weight(holders) < client.committee.validity_threshold:
        detail = "; ".join(f"peer {k}: {why}" for k, why in sorted(problems.items()))
        raise LogError(f"the {kind} entry reached too few peers ({len(holders)}): {detail}")
    return entry

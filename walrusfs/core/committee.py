"""The storage committee: who the peers are, their keys, addresses and shards.

Committee files are TOML::

    epoch = 0
    operators = ["<64 hex digits: an operator's Ed25519 public key>"]  # who grants storage
    epoch_seconds = 86400        # length of a storage epoch (lifetimes count these)
    genesis_ms = 1764460800000   # when storage epoch 0 began (ms since the Unix epoch)

    [[peers]]
    peer_id = "12D3KooW..."
    public_key = "<64 hex digits: the Ed25519 public key>"
    addrs = ["/ip4/127.0.0.1/tcp/40001"]
    shards = [0]

n is the total number of shards, which must be exactly 0..n-1, each held by one peer;
quorums count shards, so a peer holding several shards weighs as much as it holds.
Parsing and rendering are pure; reading the file is the caller's business.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import EncodingConfig
from .errors import CodecError, InvalidParameter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Protobuf PublicKey{Type: Ed25519, Data: 32 bytes} wrapped in an identity multihash.
_ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


class CommitteeError(CodecError, ValueError):
    """A committee file is malformed or inconsistent."""


def _base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _BASE58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (base58btc identity multihash) of an Ed25519 public key."""
    if len(public_key) != 32:
        raise CommitteeError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return _base58(_ED25519_PEER_ID_PREFIX + public_key)


@dataclass(frozen=True)
class PeerInfo:
    """One committee member."""

    peer_id: str
    public_key: bytes
    addrs: tuple[str, ...]
    shards: tuple[int, ...]


#: A storage epoch's length unless the committee file says (Walrus testnet's: one day).
DEFAULT_EPOCH_MS = 86_400_000


@dataclass(frozen=True)
class Committee:
    """The peers of one epoch and the shards they hold, who grants storage, and how long storage epochs are."""

    epoch: int
    peers: tuple[PeerInfo, ...]
    #: Operator keys: they sign storage grants and revocations (log entries).
    operators: tuple[bytes, ...] = ()
    #: Storage epochs: epoch k begins ``genesis_ms + k * epoch_ms``.
    epoch_ms: int = DEFAULT_EPOCH_MS
    genesis_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, int) or not 0 <= self.epoch < 2**32:
            raise CommitteeError(f"epoch must be an integer in 0..2^32-1, got {self.epoch!r}")
        if not isinstance(self.epoch_ms, int) or isinstance(self.epoch_ms, bool) or not 1000 <= self.epoch_ms < 2**48:
            raise CommitteeError(f"epoch_seconds must be at least 1, got {self.epoch_ms / 1000!r}")
        if not isinstance(self.genesis_ms, int) or not 0 <= self.genesis_ms < 2**48:
            raise CommitteeError(f"genesis_ms must be a non-negative integer, got {self.genesis_ms!r}")
        if any(not isinstance(k, bytes) or len(k) != 32 for k in self.operators):
            raise CommitteeError("operators must be 32-byte Ed25519 public keys")
        if not self.peers:
            raise CommitteeError("a committee needs at least one peer")
        shards = sorted(s for peer in self.peers for s in peer.shards)
        if shards != list(range(len(shards))):
            raise CommitteeError(f"shards must be exactly 0..n-1, each held by one peer; got {shards}")
        try:
            EncodingConfig(len(shards))
        except InvalidParameter as exc:
            raise CommitteeError(f"a committee needs n = 3f + 1 >= 4 shards, got {len(shards)}: {exc}") from None
        seen: set[str] = set()
        for peer in self.peers:
            if peer.peer_id in seen:
                raise CommitteeError(f"peer {peer.peer_id} is listed twice")
            seen.add(peer.peer_id)
            if peer_id_from_public_key(peer.public_key) != peer.peer_id:
                raise CommitteeError(f"peer {peer.peer_id} does not match its public key")
            if not peer.shards:
                raise CommitteeError(f"peer {peer.peer_id} holds no shards")

    @property
    def n_shards(self) -> int:
        """Total number of shards n."""
        return sum(len(peer.shards) for peer in self.peers)

    @property
    def config(self) -> EncodingConfig:
        """Encoding parameters for this committee."""
        return EncodingConfig(self.n_shards)

    @property
    def f(self) -> int:
        """Shards that may be faulty: (n - 1) // 3."""
        return self.config.f

    @property
    def quorum(self) -> int:
        """Shards a certificate needs: 2f + 1."""
        return self.config.quorum

    @property
    def validity_threshold(self) -> int:
        """Shards that include at least one honest one: f + 1."""
        return self.config.validity_threshold

    def shard_owner(self, shard: int) -> int:
        """Index of the peer holding ``shard``."""
        for index, peer in enumerate(self.peers):
            if shard in peer.shards:
                return index
        raise CommitteeError(f"no peer holds shard {shard}")

    def index_of(self, peer_id: str) -> int:
        """Index of the peer with ``peer_id``."""
        for index, peer in enumerate(self.peers):
            if peer.peer_id == peer_id:
                return index
        raise CommitteeError(f"{peer_id} is not a committee member")

    def weight(self, peer_indices: Iterable[int]) -> int:
        """Shards held by the given distinct peers together."""
        return sum(len(self.peers[i].shards) for i in set(peer_indices))


def _table(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise CommitteeError(f"{where} lacks {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CommitteeError(f"{where}: {key!r} must be {kind.__name__}")
    return value


def _check_multiaddr(addr: str, where: str) -> None:
    """Reject an address libp2p could not dial, naming the peer (parsing only, no I/O)."""
    from multiaddr import Multiaddr

    try:
        parsed = Multiaddr(addr)
    except Exception as exc:  # noqa: BLE001 - the library raises several unrelated types
        raise CommitteeError(f"{where}: addrs: {addr!r} is not a multiaddr ({exc})") from None
    protocols = [p.name for p in parsed.protocols()]
    if "tcp" not in protocols:
        raise CommitteeError(f"{where}: addrs: {addr!r} names no TCP port (expected /ip4/HOST/tcp/PORT)")


def parse_committee(text: str) -> Committee:
    """Parse a committee TOML document, raising ``CommitteeError`` with the reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CommitteeError(f"committee file is not valid TOML: {exc}") from exc
    peers = []
    for k, entry in enumerate(_table(raw, "peers", list, "committee")):
        where = f"peer #{k + 1}"
        if not isinstance(entry, dict):
            raise CommitteeError(f"{where} must be a table")
        try:
            public_key = bytes.fromhex(_table(entry, "public_key", str, where))
        except ValueError as exc:
            raise CommitteeError(f"{where}: public_key must be hex") from exc
        addrs = _table(entry, "addrs", list, where)
        shards = _table(entry, "shards", list, where)
        if not all(isinstance(a, str) for a in addrs) or not addrs:
            raise CommitteeError(f"{where}: addrs must be a non-empty list of multiaddr strings")
        for addr in addrs:
            _check_multiaddr(addr, where)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in shards):
            raise CommitteeError(f"{where}: shards must be a list of integers")
        peers.append(PeerInfo(_table(entry, "peer_id", str, where), public_key, tuple(addrs), tuple(shards)))
    operators = []
    for k, text in enumerate(_table(raw, "operators", list, "committee") if "operators" in raw else []):
        try:
            key = bytes.fromhex(text) if isinstance(text, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:
            raise CommitteeError(f"operators #{k + 1} must be 64 hex digits (an Ed25519 public key)")
        operators.append(key)
    epoch_seconds = _table(raw, "epoch_seconds", int, "committee") if "epoch_seconds" in raw else DEFAULT_EPOCH_MS // 1000
    return Committee(_table(raw, "epoch", int, "committee") if "epoch" in raw else 0, tuple(peers), tuple(operators),
                     epoch_seconds * 1000, _table(raw, "genesis_ms", int, "committee") if "genesis_ms" in raw else 0)


def render_committee(committee: Committee) -> str:
    """The committee as a TOML document that ``parse_committee`` reads back."""

    def quoted(values: Iterable[str]) -> str:
        return ", ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)

    lines = [f"epoch = {committee.epoch}",
             f"operators = [{quoted(k.hex() for k in committee.operators)}]",
             f"epoch_seconds = {committee.epoch_ms // 1000}",
             f"genesis_ms = {committee.genesis_ms}", ""]
    for peer in committee.peers:
        lines += [
            "[[peers]]",
            f'peer_id = "{peer.peer_id}"',
            f'public_key = "{peer.public_key.hex()}"',
            f"addrs = [{quoted(peer.addrs)}]",
            f"shards = [{', '.join(map(str, peer.shards))}]",
            "",
        ]
    return "\n".join(lines)

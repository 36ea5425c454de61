"""The signed, hash-chained log: entries, their validation, and the state derived from them.

Every author (a committee member) keeps a chain: entry ``seq`` names the ID of the author's
entry ``seq - 1`` in ``prev``. An entry's ID is the hash of its canonical encoding,
signature included; the signature covers domain-separated canonical bytes, so a log entry
can never be mistaken for anything else walrusfs signs.

``LogState`` applies entries in any order, any number of times, and always derives the same
state: entries wait until their chain reaches them, duplicates are ignored, and two signed
entries for one (author, seq) are kept as an equivocation proof, after which that author's
entries from that position on no longer count. Validation is pure and deterministic.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import challenge, merkle, wire
from .certificates import Certificate, verify_certificate
from .committee import Committee
from .errors import CodecError, VerificationError
from .lifecycle import (
    BLOB_DELETED,
    BLOB_EXTENDED,
    EPOCH,
    GRANT,
    REVOKE,
    SPONSOR_DOMAIN,
    Grant,
    Ledger,
    LifecycleError,
    LifetimeOp,
    Registration,
    Revocation,
    check_epoch,
)
from .metadata import BlobId
from .namespace import LIMITS, LOWER, SPECIAL, Op, in_range
from .sealing import SEALED_PAYLOAD_MAX as SEALED_MAX
from .sealing import SEALED_PAYLOAD_MIN as SEALED_MIN

ENTRY_DOMAIN = b"walrusfs/log-entry/v1\x00"
DEVICE_DOMAIN = b"walrusfs/volume-device/v1\x00"
#: What a batched namespace entry's ops are named by (see ``entry_ops``).
BATCH_DOMAIN = b"walrusfs/namespace-batch/v1\x00"
OP_DOMAIN = b"walrusfs/namespace-op/v1\x00"
GENESIS = bytes(32)
#: Entry kinds: blob-certified and blob-invalid (authored by committee members) and
#: namespace (authored by a mount's device key that the volume key delegated to). The others
#: are reserved so later versions can add them without a format change.
BLOB_CERTIFIED = "blob-certified"
BLOB_INVALID = "blob-invalid"
NAMESPACE = "namespace"
#: A pointer to a signed snapshot of a volume's folded tree (``core.snapshot``), authored
#: like a namespace entry by a key the volume delegated, in a chain of its own, so its
#: chain's head is the newest snapshot that key made.
SNAPSHOT = "volume-snapshot"
#: Kinds authored by a key a volume delegated (not by a committee member or operator).
VOLUME_KINDS = frozenset({NAMESPACE, SNAPSHOT})
#: Storage challenge rounds (see ``challenge`` and ``rounds``), authored by committee members.
CHALLENGE_START = "challenge-start"
CHALLENGE_REVEAL = "challenge-reveal"
CHALLENGE_PASS = "challenge-pass"
CHALLENGE_CLOSE = "challenge-close"
CHALLENGE_KINDS = frozenset({CHALLENGE_START, CHALLENGE_REVEAL, CHALLENGE_PASS, CHALLENGE_CLOSE})
#: Storage access and lifetimes (see ``lifecycle``): grants and revocations authored by an
#: operator named in the committee file; epochs, extensions and deletions by members.
OPERATOR_KINDS = frozenset({GRANT, REVOKE})
LIFETIME_KINDS = frozenset({BLOB_EXTENDED, BLOB_DELETED})
LEDGER_KINDS = OPERATOR_KINDS | LIFETIME_KINDS | {EPOCH, BLOB_CERTIFIED}
RESERVED_KINDS = frozenset({"committee-change"})
_BLOB_KINDS = (BLOB_CERTIFIED, BLOB_INVALID)
MAX_PAYLOAD = 64 << 10
#: Most namespace ops one entry may carry: a batch is bounded by count (the fold's work
#: per entry) as well as by the entry's size.
MAX_BATCH_OPS = 256
#: Namespace payload forms, exactly one per entry: one op (plaintext or sealed), or a batch
#: of ops (a list, or one sealed list). Single-op entries keep folding as they always did.
NAMESPACE_FORMS = ("op", "sealed", "ops", "sealed_ops")


class LogError(CodecError, ValueError):
    """An entry is malformed or invalid; the message says why."""


#: How far beyond the checker's wall clock an entry's stamp may be. Stamps drive every
#: party's clock (hybrid logical clock), so anything accepted here is how far anyone,
#: outsiders included, can push time forward. 60 s is far above the disagreement of
#: NTP-synced hosts (milliseconds) and of hosts with a neglected clock (seconds), so honest
#: entries are accepted at once, yet small next to anything that reads the stamp as time
#: (healing's settle delay is clamped anyway, and displayed times are at most a minute off).
#: A later stamp is refused *for now* (``TooEarly``): the sender, or anti-entropy, retries,
#: and it is accepted once our clock has caught up. Nothing is dropped for good.
MAX_CLOCK_SKEW_MS = 60_000
#: How far ahead of our own clock we follow stamps others wrote: half the acceptance bound,
#: so our own stamps are accepted at once by any party whose clock is within 30 s of ours,
#: even right after someone pushed a stamp at the very edge of the bound.
FOLLOW_LIMIT_MS = MAX_CLOCK_SKEW_MS // 2


class TooEarly(LogError):
    """An entry's stamp is too far beyond the checker's clock: refused for now, retry later."""


def next_hlc(last: int, now_ms: int, seen: int = 0) -> int:
    """Hybrid logical clock: wall-clock milliseconds in the high bits, a counter in the low 16.

    Strictly greater than ``last`` (our previous stamp) and, so stamps order causally even
    when clocks disagree, than ``seen`` (the largest stamp received), but other authors'
    stamps move our clock at most ``FOLLOW_LIMIT_MS`` past ``now_ms``: a far-future stamp
    (even one accepted before this bound existed) cannot drag our stamps out of range.
    """
    return max(now_ms << 16, last + 1, min(seen + 1, (now_ms + FOLLOW_LIMIT_MS) << 16))


def hlc_millis(hlc: int) -> int:
    """The wall-clock part of a stamp, in milliseconds since the epoch."""
    return hlc >> 16


def shown_millis(hlc: int, now_ms: int) -> int:
    """The time to show or reason with for a stamp: its wall-clock part, never later than ``now_ms``."""
    return min(hlc_millis(hlc), now_ms)


def check_stamp(hlc: int, now_ms: int) -> None:
    """Raise ``TooEarly`` if ``hlc`` is more than ``MAX_CLOCK_SKEW_MS`` beyond ``now_ms``."""
    ahead = hlc_millis(hlc) - now_ms
    if ahead > MAX_CLOCK_SKEW_MS:
        raise TooEarly(f"entry stamp is {ahead} ms ahead of this clock (at most {MAX_CLOCK_SKEW_MS} ms "
                       "accepted); refused for now, send it again once the clock has caught up")


@dataclass(frozen=True)
class Entry:
    """One signed log entry."""

    author: bytes
    seq: int
    prev: bytes
    hlc: int
    kind: str
    payload: Mapping[str, Any]
    signature: bytes

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {
            "author": self.author, "seq": self.seq, "prev": self.prev,
            "hlc": self.hlc, "kind": self.kind, "payload": dict(self.payload),
        }

    def signed_bytes(self) -> bytes:
        """Domain-separated canonical bytes the author signs."""
        return ENTRY_DOMAIN + wire.encode(self.body())

    @cached_property
    def _encoded(self) -> bytes:
        # Entries are immutable and their encoding and ID are needed many times each while
        # applying, storing and serving them: compute them once.
        return wire.encode({"v": wire.WIRE_VERSION, **self.body(), "signature": self.signature})

    def encode(self) -> bytes:
        """Canonical encoding of the whole entry."""
        return self._encoded

    @cached_property
    def id(self) -> bytes:
        """The entry ID: hash of its canonical encoding."""
        return merkle.blake2b256(self._encoded)


def sign_entry(key: SigningKey, seq: int, prev: bytes, hlc: int, kind: str, payload: Mapping[str, Any]) -> Entry:
    """A new entry signed by ``key``."""
    unsigned = Entry(bytes(key.verify_key), seq, prev, hlc, kind, dict(payload), b"")
    return Entry(unsigned.author, seq, prev, hlc, kind, dict(payload), key.sign(unsigned.signed_bytes()).signature)


def decode_entry(data: bytes) -> Entry:
    """Parse an encoded entry, checking every field's type and size (not the signature)."""
    if len(data) > MAX_PAYLOAD + 1024:
        raise LogError(f"entry of {len(data)} bytes is too large")
    try:
        message = wire.decode(data, MAX_PAYLOAD + 1024)
        entry = Entry(
            author=wire.field(message, "author", bytes, size=32),
            seq=wire.field(message, "seq", int),
            prev=wire.field(message, "prev", bytes, size=32),
            hlc=wire.field(message, "hlc", int),
            kind=wire.field(message, "kind", str),
            payload=wire.field(message, "payload", dict),
            signature=wire.field(message, "signature", bytes, size=64),
        )
    except wire.MessageError as exc:
        raise LogError(f"malformed entry: {exc}") from exc
    if set(message) != {"v", "author", "seq", "prev", "hlc", "kind", "payload", "signature"}:
        raise LogError("entry has unknown fields")
    if entry.seq < 1 or entry.hlc < 0 or entry.hlc >= 2**63:
        raise LogError("entry seq must be >= 1 and hlc a non-negative 63-bit integer")
    if (entry.seq == 1) != (entry.prev == GENESIS):
        raise LogError("only an author's first entry (seq 1) has the all-zero prev")
    # ``wire.decode`` checked these bytes are the canonical encoding of exactly the entry's
    # fields: they are what ``encode`` would compute, so the ID needs no second encoding.
    entry.__dict__["_encoded"] = bytes(data)
    return entry


def certificate_payload(certificate: Certificate, length: int, registration: Registration) -> dict[str, Any]:
    """The payload of a blob-certified entry: the certificate and the registration it was gathered for."""
    return {**certificate.to_wire(), "length": length, "encoding": 1, "registration": registration.to_wire()}


def registration_from_payload(payload: Mapping[str, Any]) -> Registration:
    """The registration a blob-certified payload carries, checked against its certificate."""
    try:
        registration = Registration.from_wire(payload.get("registration"))
    except LifecycleError as exc:
        raise LogError(f"blob-certified entry: {exc}") from exc
    certificate, length = certificate_from_payload(payload)
    if registration.blob_id != certificate.blob_id:
        raise LogError("blob-certified entry: the registration is for another blob")
    if registration.object_id != certificate.object_id:
        raise LogError("blob-certified entry: the certificate was not gathered for this registration")
    if registration.length != length:
        raise LogError("blob-certified entry: the length differs from the one the owner registered")
    return registration


def invalid_payload(certificate: Certificate) -> dict[str, Any]:
    """The payload of a blob-invalid entry: an invalid-blob certificate."""
    return certificate.to_wire()


def invalid_from_payload(payload: Mapping[str, Any]) -> Certificate:
    """The invalid-blob certificate a blob-invalid payload carries."""
    if set(payload) != {"blob_id", "epoch", "signers", "signatures"}:
        raise LogError("malformed blob-invalid payload: unexpected fields")
    certificate, _ = _certificate_fields(payload, invalid=True)
    return certificate


def certificate_from_payload(payload: Mapping[str, Any]) -> tuple[Certificate, int]:
    """The certificate and blob length a blob-certified payload carries."""
    certificate, length = _certificate_fields(payload, invalid=False)
    try:
        if wire.field(payload, "encoding", int) != 1:
            raise LogError("unsupported blob encoding")
    except wire.MessageError as exc:
        raise LogError(f"malformed blob-certified payload: {exc}") from exc
    return certificate, length


def _certificate_fields(payload: Mapping[str, Any], invalid: bool) -> tuple[Certificate, int]:
    try:
        signers = wire.field(payload, "signers", list)
        signatures = wire.field(payload, "signatures", list)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in signers):
            raise LogError("certificate signers must be integers")
        if not all(isinstance(s, bytes) for s in signatures):
            raise LogError("certificate signatures must be byte strings")
        object_id = None
        if not invalid and "object_id" in payload:
            object_id = wire.field(payload, "object_id", bytes, size=32)
        certificate = Certificate(
            BlobId(wire.field(payload, "blob_id", bytes, size=32)),
            wire.uint(payload, "epoch", 2**32),
            tuple(signers),
            tuple(signatures),
            invalid,
            object_id,
        )
        length = 0 if invalid else wire.uint(payload, "length", 2**63)
    except wire.MessageError as exc:
        raise LogError(f"malformed {BLOB_INVALID if invalid else BLOB_CERTIFIED} payload: {exc}") from exc
    return certificate, length


def delegate_device(volume_key: SigningKey, device: bytes) -> bytes:
    """The volume key's signature letting ``device`` author namespace entries for the volume."""
    return volume_key.sign(DEVICE_DOMAIN + bytes(volume_key.verify_key) + device).signature


@functools.lru_cache(maxsize=4096)
def _signed_by(key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``message`` (cached: every entry of a device repeats
    its delegation and sponsorship, which cost two of an entry's three signature checks)."""
    try:
        VerifyKey(key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def check_delegation(volume: bytes, device: bytes, delegation: bytes) -> None:
    """Raise ``LogError`` unless ``volume`` delegated to ``device``."""
    if not (isinstance(volume, bytes) and isinstance(device, bytes) and isinstance(delegation, bytes)
            and _signed_by(volume, DEVICE_DOMAIN + volume + device, delegation)):
        raise LogError("namespace entry's device is not authorized by the volume key")


def namespace_account(payload: Mapping[str, Any]) -> bytes:
    """The account a namespace entry's volume writes on: the sponsoring account it names, else the volume itself."""
    account = payload.get("account")
    return account if isinstance(account, bytes) else payload["volume"]


def _check_sponsorship(payload: Mapping[str, Any]) -> None:
    if "account" not in payload and "sponsorship" not in payload:
        return
    account, sponsorship = payload.get("account"), payload.get("sponsorship")
    if not (isinstance(account, bytes) and len(account) == 32 and isinstance(sponsorship, bytes)):
        raise LogError("namespace entry's account must be a 32-byte key with its sponsorship of the volume")
    volume = payload["volume"]
    if not (isinstance(volume, bytes) and _signed_by(account, SPONSOR_DOMAIN + account + volume, sponsorship)):
        raise LogError("namespace entry's volume is not sponsored by the account it names")


# Namespace operation -> required argument types; anything else is malformed, so the
# namespace fold never meets an argument it cannot use.
_NODE, _NAME, _INT, _ANY_NODE = "node", "name", "int", "any-node"
NAMESPACE_OPS: dict[str, dict[str, str]] = {
    "create": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "mkdir": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "symlink": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "mknod": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "write": {"node": _NODE},
    "unlink": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "link": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "rmdir": {"parent": _NODE, "name": _NAME, "node": _NODE},
    "rename": {"parent": _NODE, "name": _NAME, "node": _NODE, "new_parent": _NODE, "new_name": _NAME},
    "setattr": {"node": _NODE},
    "setxattr": {"node": _NODE, "name": _NAME},
    "removexattr": {"node": _NODE, "name": _NAME},
}


#: Longest symbolic link target the kernel takes back from readlink, NUL included.
PATH_MAX = 4096


def _file_name(value: Any) -> bool:
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value
            and len(value.encode()) <= 255)


def check_op(op: Any) -> None:
    """Raise ``LogError`` unless ``op`` is a namespace op map the fold can apply (kinds, types, ranges)."""
    if not isinstance(op, dict) or not isinstance(op.get("kind"), str) or not isinstance(op.get("args"), dict):
        raise LogError("namespace op must be a map with a kind and args")
    schema = NAMESPACE_OPS.get(op["kind"])
    if schema is None:
        raise LogError(f"unknown namespace op {op['kind']!r}")
    args = op["args"]
    for name, kind in schema.items():
        value = args.get(name)
        if kind == _NODE and not (isinstance(value, bytes) and len(value) == 32):
            raise LogError(f"namespace op {op['kind']}: {name} must be a 32-byte node ID")
        if kind == _NAME and not _file_name(value):
            raise LogError(f"namespace op {op['kind']}: {name} must be a file name")
    for name in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "rdev"):
        # Values a mount cannot hand the kernel (a mode beyond the permission bits, a uid
        # beyond uid_t, a time beyond 64 bits) would crash every other mount's `ls`.
        if name in args and not in_range(name, args[name]):
            low = f"an integer from {LOWER[name]:#x}" if name in LOWER else "a non-negative integer"
            raise LogError(f"namespace op {op['kind']}: {name} must be {low} below {LIMITS[name]:#x}")
    for name in ("base", "replaces", "last_parent"):
        if args.get(name) is not None and not (isinstance(args[name], bytes) and len(args[name]) in (0, 32)):
            raise LogError(f"namespace op {op['kind']}: {name} must be a node or version ID")
    if op["kind"] == "write":
        content = args.get("content")
        if (not isinstance(content, dict) or not {"size", "chunk_size", "chunks"} <= set(content)
                or not set(content) <= {"size", "chunk_size", "chunks", "hashes", "offsets"}
                or not in_range("size", content["size"]) or not in_range("chunk_size", content["chunk_size"])
                or content["chunk_size"] == 0
                or not isinstance(content["chunks"], list)
                or not all(c is None or (isinstance(c, bytes) and len(c) == 32) for c in content["chunks"])
                or len(content["chunks"]) != -(-content["size"] // content["chunk_size"])):
            raise LogError("namespace op write: content must give size, chunk_size and one blob ID (or null) per chunk")
        hashes = content.get("hashes")
        if hashes is not None and not (
                isinstance(hashes, list) and len(hashes) == len(content["chunks"])
                and all((h is None) == (c is None) and (h is None or (isinstance(h, bytes) and len(h) == 32))
                        for h, c in zip(hashes, content["chunks"]))):
            raise LogError("namespace op write: hashes must give one 32-byte plaintext hash per stored chunk")
        offsets = content.get("offsets")
        if offsets is not None and not (
                isinstance(offsets, list) and len(offsets) == len(content["chunks"])
                and all((o is None) or (c is not None and in_range("size", o))
                        for o, c in zip(offsets, content["chunks"]))):
            raise LogError("namespace op write: offsets must give, per chunk, null or where in its blob a packed "
                           "chunk starts (a non-negative 63-bit integer)")
    if args.get("last_name") is not None and not _file_name(args["last_name"]):
        raise LogError(f"namespace op {op['kind']}: last_name must be a file name")
    if op["kind"] == "symlink" and not (isinstance(args.get("target"), str) and "\0" not in args["target"]
                                        and len(args["target"].encode()) < PATH_MAX):
        raise LogError("namespace op symlink: target must be a path (no NUL, below PATH_MAX bytes)")
    if op["kind"] == "mknod" and args.get("type") not in SPECIAL:
        raise LogError(f"namespace op mknod: type must be one of {', '.join(SPECIAL)}")
    if op["kind"] == "setxattr" and not isinstance(args.get("value"), bytes):
        raise LogError("namespace op setxattr: value must be bytes")


def check_ops(ops: Any) -> None:
    """Raise ``LogError`` unless ``ops`` is a batch: a list of 1..``MAX_BATCH_OPS`` ops ``check_op`` accepts."""
    if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_BATCH_OPS:
        raise LogError(f"a batch of namespace ops must be a list of 1 to {MAX_BATCH_OPS} ops")
    for index, op in enumerate(ops):
        try:
            check_op(op)
        except LogError as exc:
            raise LogError(f"op {index} of the batch: {exc}") from None


def batch_key(author: bytes, seq: int) -> bytes:
    """The key every op of ``author``'s batched entry ``seq`` shares in the total order."""
    return merkle.blake2b256(BATCH_DOMAIN + author + seq.to_bytes(8, "big"))


def batch_op(author: bytes, seq: int, hlc: int, index: int, raw: Mapping[str, Any]) -> Op:
    """Op ``index`` of ``author``'s batched entry ``seq`` (stamp ``hlc``), with its own ID.

    The ID depends on the author and place only, not on the signature, so a mount knows
    it (and applies the op) before the batch is signed; two entries for one place are an
    equivocation, after which neither counts.
    """
    op_id = merkle.blake2b256(OP_DOMAIN + author + seq.to_bytes(8, "big") + index.to_bytes(4, "big"))
    return Op(op_id, hlc, author, raw["kind"], raw["args"], batch_key(author, seq), index)


def entry_ops(entry: Entry, raws: list[Mapping[str, Any]] | None = None) -> list[Op]:
    """The namespace ops an entry carries, each with its identity and place in the total order.

    ``raws`` are the op maps (a sealed entry's, once opened); by default the plaintext
    ones. A single-op entry's op is named by the entry's ID, as it always was.
    """
    if raws is None:
        raws = entry.payload["ops"] if "ops" in entry.payload else [entry.payload["op"]]
    if "op" in entry.payload or "sealed" in entry.payload:
        (raw,) = raws
        return [Op(entry.id, entry.hlc, entry.author, raw["kind"], raw["args"])]
    return [batch_op(entry.author, entry.seq, entry.hlc, index, raw) for index, raw in enumerate(raws)]


def check_entry(entry: Entry, committee: Committee, now_ms: int | None = None, signature: bool = True) -> None:
    """Raise ``LogError`` unless the entry is well-formed, from a known author, signed and valid for its kind.

    ``now_ms`` is the checker's wall clock (core reads no clock): a stamp beyond it by more
    than ``MAX_CLOCK_SKEW_MS`` raises ``TooEarly``, the same rule for every author, members
    and mounts, and the bound our own entries are signed within. Every party that accepts
    entries passes it; ``None`` skips only that rule, for entries accepted already (a
    replayed store).

    Known authors are committee members, and, for namespace entries only, device keys that
    the entry shows the volume key delegated to: a stateless check, so two mounts of one
    volume write separate chains and never equivocate. ``LogError`` is the only error it
    raises, whatever the entry holds.

    ``signature=False`` skips only the author's signature, for an entry whose ID a later
    entry of the same chain, itself checked, names as its ``prev`` (the hash chain vouches
    for it: a mount filling in the history below a verified position).
    """
    try:
        if now_ms is not None:
            check_stamp(entry.hlc, now_ms)
        _check_entry(entry, committee, signature)
    except LogError:
        raise
    except (CodecError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # A field of the wrong type or shape deep in a payload: still just an invalid entry.
        raise LogError(f"malformed {entry.kind!r} entry: {type(exc).__name__}: {exc}") from exc


def _check_entry(entry: Entry, committee: Committee, signature: bool = True) -> None:
    if entry.kind in VOLUME_KINDS:
        volume = wire.field(entry.payload, "volume", bytes, size=32) if "volume" in entry.payload else None
        delegation = entry.payload.get("delegation")
        if volume is None or not isinstance(delegation, bytes):
            raise LogError(f"{entry.kind} entry must name its volume and carry the device's delegation")
        check_delegation(volume, entry.author, delegation)
        _check_sponsorship(entry.payload)
    if entry.kind == SNAPSHOT:
        # Only where the snapshot is: the blob itself carries the signed tree and position
        # (``core.snapshot``), checked by the mount that reads it.
        # ``folded`` (how many namespace entries the snapshot's tree took in), not ``ops``: that
        # is a batched namespace entry's list, and no field means two things.
        if not set(entry.payload) <= {"volume", "delegation", "account", "sponsorship", "blob", "length", "folded"}:
            raise LogError("volume-snapshot entry has unknown fields")
        wire.field(entry.payload, "blob", bytes, size=32)
        wire.uint(entry.payload, "length", 2**63)
        wire.uint(entry.payload, "folded", 2**62)
    elif entry.kind == NAMESPACE:
        forms = [form for form in NAMESPACE_FORMS if form in entry.payload]
        if len(forms) != 1:
            raise LogError("namespace entry must carry exactly one of an op, a sealed op, a batch of ops "
                           "and a sealed batch")
        if forms[0] in ("sealed", "sealed_ops"):
            # A private volume's ops: peers cannot read them, so the fold's range checks run
            # in the mount after opening them (``check_ops`` again); here only the size is bounded.
            sealed = entry.payload[forms[0]]
            if not isinstance(sealed, bytes) or not SEALED_MIN <= len(sealed) <= SEALED_MAX:
                raise LogError(f"namespace entry's sealed ops must be {SEALED_MIN}-{SEALED_MAX} bytes")
        elif forms[0] == "ops":
            check_ops(entry.payload["ops"])
        else:
            check_op(entry.payload["op"])
    elif entry.kind in OPERATOR_KINDS:
        if entry.author not in committee.operators:
            raise LogError(f"{entry.kind} entries are authored by an operator named in the committee file")
    elif entry.author not in {peer.public_key for peer in committee.peers}:
        raise LogError("entry author is not a committee member")
    if signature:
        try:
            VerifyKey(entry.author).verify(entry.signed_bytes(), entry.signature)
        except BadSignatureError:
            raise LogError("entry signature is invalid") from None
    if entry.kind in VOLUME_KINDS:
        return
    if entry.kind in _BLOB_KINDS:
        if entry.kind == BLOB_CERTIFIED:
            certificate, _ = certificate_from_payload(entry.payload)
            registration_from_payload(entry.payload)
        else:
            certificate = invalid_from_payload(entry.payload)
        try:
            verify_certificate(committee, certificate)
        except VerificationError as exc:
            what = "availability" if entry.kind == BLOB_CERTIFIED else "invalid-blob"
            raise LogError(f"invalid {what} certificate: {exc}") from exc
    elif entry.kind in CHALLENGE_KINDS:
        try:
            if entry.kind == CHALLENGE_START:
                challenge.check_start(committee, entry.payload)
            elif entry.kind == CHALLENGE_REVEAL:
                challenge.check_reveal(entry.payload)
            elif entry.kind == CHALLENGE_PASS:
                challenge.check_pass(committee, entry.payload)
            else:
                challenge.check_close(committee, entry.payload)
        except VerificationError as exc:
            raise LogError(f"invalid {entry.kind} entry: {exc}") from exc
    elif entry.kind in OPERATOR_KINDS or entry.kind in LIFETIME_KINDS or entry.kind == EPOCH:
        try:
            if entry.kind == GRANT:
                Grant.from_wire(entry.payload)
            elif entry.kind == REVOKE:
                Revocation.from_wire(entry.payload)
            elif entry.kind == EPOCH:
                check_epoch(committee, entry.payload)
            else:
                lifetime_op_from_payload(entry)
        except LifecycleError as exc:
            raise LogError(f"invalid {entry.kind} entry: {exc}") from exc
    elif entry.kind in RESERVED_KINDS:
        raise LogError(f"entry kind {entry.kind!r} is reserved and not accepted yet")
    else:
        raise LogError(f"unknown entry kind {entry.kind!r}")


def lifetime_op_from_payload(entry: Entry) -> LifetimeOp:
    """The owner-signed operation a blob-extended or blob-deleted entry carries."""
    if set(entry.payload) != {"op"}:
        raise LifecycleError(f"{entry.kind} payload must be exactly the owner's signed op")
    op = LifetimeOp.from_wire(entry.payload["op"])
    if (op.op == "extend") != (entry.kind == BLOB_EXTENDED):
        raise LifecycleError(f"a {entry.kind} entry carries a {op.op} operation")
    return op


def _item_hash(blob_id: BlobId, entry: Entry) -> int:
    return int.from_bytes(merkle.blake2b256(blob_id.raw + entry.id), "big")


class Outcome(enum.Enum):
    """What applying an entry did."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    PENDING = "pending"  # its chain has a gap before it; kept until the gap is filled
    EQUIVOCATION = "equivocation"
    REJECTED = "rejected"


@dataclass
class LogState:
    """Entries accepted so far and the state derived from them; pure and order-independent."""

    committee: Committee
    chains: dict[bytes, list[Entry]] = field(default_factory=dict)
    pending: dict[bytes, dict[int, dict[bytes, Entry]]] = field(default_factory=dict)
    #: (author, seq) -> conflicting entries, keyed by ID: anyone can check both signatures.
    equivocations: dict[tuple[bytes, int], dict[bytes, Entry]] = field(default_factory=dict)
    ids: set[bytes] = field(default_factory=set)
    # Kept up to date as entries arrive, so heads and digests cost nothing on a large log.
    _certified: dict[BlobId, Entry] = field(default_factory=dict)
    _invalid: dict[BlobId, Entry] = field(default_factory=dict)
    _by_blob: dict[tuple[str, BlobId], list[Entry]] = field(default_factory=dict)
    _digest_sum: int = 0
    _count: int = 0
    #: Grants, revocations, the storage epoch and registrations (see ``lifecycle``).
    ledger: Ledger = field(init=False)
    #: Non-member authors -> the keys their entries rest on (device, volume, account): a
    #: revocation of any of them ends that author's entries past the revocation's heads.
    _namespace_keys: dict[bytes, set[bytes]] = field(default_factory=dict)
    _by_registration: dict[bytes, Entry] = field(default_factory=dict)
    #: The entry that advanced the storage epoch furthest (proof of the current epoch).
    epoch_entry: Entry | None = None
    #: Authors whose chain this state holds only after a position verified elsewhere (a
    #: mount's local copy, a volume snapshot): author -> (seq, entry ID) of the last entry
    #: not held. Peers never rebase; a rebased chain cannot show an equivocation below it.
    bases: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.committee)

    def _offset(self, author: bytes) -> int:
        base = self.bases.get(author) if self.bases else None
        return base[0] if base is not None else 0

    def head(self, author: bytes) -> int:
        """Highest contiguous seq accepted from ``author``."""
        return self._offset(author) + len(self.chains.get(author, ()))

    def heads(self) -> dict[bytes, int]:
        """Highest contiguous seq for every author."""
        return {author: self._offset(author) + len(chain) for author, chain in self.chains.items()}

    def head_id(self, author: bytes) -> bytes:
        """ID of ``author``'s entry at ``head`` (GENESIS before its first)."""
        chain = self.chains.get(author)
        if chain:
            return chain[-1].id
        base = self.bases.get(author)
        return base[1] if base is not None else GENESIS

    def entry_at(self, author: bytes, seq: int) -> Entry | None:
        """``author``'s entry ``seq`` if this state holds it (not below a base, not beyond the head)."""
        index = seq - 1 - self._offset(author)
        chain = self.chains.get(author, ())
        return chain[index] if 0 <= index < len(chain) else None

    def rebase(self, author: bytes, seq: int, entry_id: bytes, keys: Iterable[bytes] = ()) -> None:
        """Hold ``author``'s chain only after ``seq``, whose entry ``entry_id`` was verified elsewhere.

        ``keys`` are what the author's volume entries rest on (device, volume, account), so a
        revocation still ends them. Only for an author this state holds nothing of yet.
        """
        if self.chains.get(author) or self.pending.get(author) or author in self.bases or seq < 1:
            raise ValueError("only an author with nothing held yet can be rebased, at a seq of 1 or more")
        self.bases[author] = (seq, entry_id)
        self.chains[author] = []
        if keys:
            self._namespace_keys.setdefault(author, set()).update(keys)

    def cutoff(self, author: bytes) -> int:
        """First seq of ``author`` that no longer counts (an equivocation, a revocation's heads), else a huge number."""
        return self._cutoff(author)

    def keys_of(self, author: bytes) -> frozenset[bytes]:
        """The keys ``author``'s volume entries rest on (device, volume, account): what ``rebase`` takes back."""
        return frozenset(self._namespace_keys.get(author, ()))

    @property
    def size(self) -> int:
        """Number of entries in the authors' chains."""
        return self._count

    def apply(self, entry: Entry, checked: bool = False, now_ms: int | None = None) -> tuple[Outcome, list[Entry]]:
        """Apply one entry (checked here, against clock ``now_ms``, unless ``checked``); return the outcome and what became accepted."""
        if entry.id in self.ids:
            return Outcome.DUPLICATE, []
        if not checked:
            try:
                check_entry(entry, self.committee, now_ms)
            except LogError:
                return Outcome.REJECTED, []
        chain = self.chains.setdefault(entry.author, [])
        offset = self._offset(entry.author)
        if entry.seq <= offset:
            # Below what a rebased chain holds: the same entry as its base, or one this
            # state cannot compare (the mount that rebased it checks such entries itself).
            base = self.bases[entry.author]
            same = entry.seq < base[0] or entry.id == base[1]
            return (Outcome.DUPLICATE if same else Outcome.REJECTED), []
        if entry.seq <= offset + len(chain):
            return self._equivocation(chain[entry.seq - 1 - offset], entry), []
        if entry.seq > offset + len(chain) + 1:
            slot = self.pending.setdefault(entry.author, {}).setdefault(entry.seq, {})
            slot[entry.id] = entry
            return Outcome.PENDING, []
        if entry.prev != self.head_id(entry.author):
            return Outcome.REJECTED, []
        accepted = [self._append(chain, entry)]
        # Entries that were waiting for this one may now follow it.
        waiting = self.pending.get(entry.author, {})
        while offset + len(chain) + 1 in waiting:
            candidates = sorted(waiting.pop(offset + len(chain) + 1).values(), key=lambda e: e.id)
            fitting = [e for e in candidates if e.prev == chain[-1].id]
            if not fitting:
                break
            chosen = fitting[0]
            # Any other signed entry for this position proves the author equivocated.
            for other in candidates:
                self._equivocation(chosen, other)
            accepted.append(self._append(chain, chosen))
        return Outcome.ACCEPTED, accepted

    def admission(self, entry: Entry) -> str | None:
        """Why a valid entry may not be added now, or None: a namespace entry needs a granted, unrevoked account.

        Grants are never withdrawn except by a revocation, which names the heads it
        allows, so every replica admits the same entries once it holds the same grants
        and revocations; one that has not seen the grant yet refuses for now and the
        writer or anti-entropy offers the entry again.
        """
        if entry.kind not in VOLUME_KINDS:
            return None
        account = namespace_account(entry.payload)
        for key in (entry.author, entry.payload["volume"], account):
            revoked = self.ledger.revoked.get(key)
            if revoked is not None and entry.seq > revoked.heads.get(entry.author, 0):
                return f"not-authorized: key {key.hex()[:16]}... was revoked by an operator"
        if not self.ledger.grants.get(account):
            return (f"not-authorized: account {account.hex()[:16]}... has no storage grant here (yet); "
                    "an operator grants one with `walrusfs grant create`")
        return None

    def _to_ledger(self, entry: Entry, ledger: Ledger | None = None) -> None:
        """Apply a counted entry of a ledger kind (checked already, so parsed without verifying again)."""
        ledger = self.ledger if ledger is None else ledger
        try:
            if entry.kind == GRANT:
                ledger.grant(entry.id, Grant.from_wire(entry.payload))
            elif entry.kind == REVOKE:
                ledger.revoke(Revocation.from_wire(entry.payload))
            elif entry.kind == EPOCH:
                ledger.advance(int(entry.payload["epoch"]))
                if ledger is self.ledger and (self.epoch_entry is None
                                              or entry.payload["epoch"] > self.epoch_entry.payload["epoch"]):
                    self.epoch_entry = entry
            elif entry.kind == BLOB_CERTIFIED:
                registration = Registration.from_wire(entry.payload["registration"], verify=False)
                ledger.registered(registration, int(entry.payload["length"]))
                if ledger is self.ledger:
                    self._by_registration.setdefault(registration.id, entry)
            else:
                ledger.operate(LifetimeOp.from_wire(entry.payload["op"], verify=False))
        except (LifecycleError, KeyError, TypeError, ValueError):
            pass  # accepted before these kinds were checked (a replayed store): it holds nothing

    def resting_on(self, key: bytes) -> dict[bytes, int]:
        """Non-member authors whose namespace entries rest on ``key`` (as device, volume or account), with their heads.

        What a revocation of ``key`` names as its heads, so the entries those authors
        published so far keep counting and later ones stop.
        """
        return {author: self.head(author) for author, keys in self._namespace_keys.items() if key in keys}

    def registration_entry(self, registration_id: bytes) -> Entry | None:
        """The blob-certified entry that carried a registration, if any."""
        return self._by_registration.get(registration_id)

    def ledger_as_of(self, heads: Mapping[bytes, int]) -> Ledger:
        """The ledger of the counted entries within ``heads`` (the same on every replica that reached them)."""
        ledger = Ledger(self.committee)
        for author, chain in self.chains.items():
            limit = min(heads.get(author, 0), self._cutoff(author) - 1) - self._offset(author)
            for entry in chain[:max(limit, 0)]:
                if entry.kind in LEDGER_KINDS:
                    self._to_ledger(entry, ledger)
        return ledger

    def _rebuild_ledger(self) -> None:
        self.ledger = Ledger(self.committee)
        self._by_registration = {}
        self.epoch_entry = None
        for entry in self.counted():
            if entry.kind in LEDGER_KINDS:
                self._to_ledger(entry)

    def _append(self, chain: list[Entry], entry: Entry) -> Entry:
        chain.append(entry)
        self.ids.add(entry.id)
        self._count += 1
        if entry.kind in VOLUME_KINDS:
            keys = self._namespace_keys.setdefault(entry.author, set())
            keys.update((entry.author, entry.payload["volume"], namespace_account(entry.payload)))
        elif entry.kind in LEDGER_KINDS and entry.seq < self._cutoff(entry.author):
            self._to_ledger(entry)
        if entry.kind in _BLOB_KINDS and entry.seq < self._cutoff(entry.author):
            blob_id = BlobId(entry.payload["blob_id"])
            self._by_blob.setdefault((entry.kind, blob_id), []).append(entry)
            self._recertify(entry.kind, blob_id)
        return entry

    def _recertify(self, kind: str, blob_id: BlobId) -> None:
        """Re-pick the first counted entry of ``kind`` about ``blob_id`` and update the digest."""
        firsts = self._certified if kind == BLOB_CERTIFIED else self._invalid
        old = firsts.pop(blob_id, None)
        if old is not None:
            self._digest_sum -= _item_hash(blob_id, old)
        candidates = [e for e in self._by_blob.get((kind, blob_id), ()) if e.seq < self._cutoff(e.author)]
        if candidates:
            new = min(candidates, key=lambda e: (e.hlc, e.author, e.id))
            firsts[blob_id] = new
            self._digest_sum += _item_hash(blob_id, new)

    def _equivocation(self, ours: Entry, theirs: Entry) -> Outcome:
        if ours.id == theirs.id:
            return Outcome.DUPLICATE
        before = self._cutoff(theirs.author)
        proof = self.equivocations.setdefault((theirs.author, theirs.seq), {})
        proof[ours.id] = ours
        proof[theirs.id] = theirs
        if self._cutoff(theirs.author) != before:
            # Rare: the author's later entries stop counting; re-pick what they certified.
            start = max(self._cutoff(theirs.author) - 1 - self._offset(theirs.author), 0)
            for entry in self.chains.get(theirs.author, [])[start:]:
                if entry.kind in _BLOB_KINDS:
                    self._recertify(entry.kind, BlobId(entry.payload["blob_id"]))
            self._rebuild_ledger()
        return Outcome.EQUIVOCATION

    def _cutoff(self, author: bytes) -> int:
        """First seq of ``author`` that no longer counts (after an equivocation, or past a revocation's heads)."""
        cutoff = self.cutoffs().get(author, 1 << 62) if self.equivocations else 1 << 62
        keys = self._namespace_keys.get(author) if self.ledger.revoked else None
        for key in keys or ():
            revoked = self.ledger.revoked.get(key)
            if revoked is not None:
                cutoff = min(cutoff, revoked.heads.get(author, 0) + 1)
        return cutoff

    def cutoffs(self) -> dict[bytes, int]:
        """For each equivocating author, the first position where it signed two entries."""
        out: dict[bytes, int] = {}
        for author, seq in self.equivocations:
            out[author] = min(seq, out.get(author, seq))
        return out

    def counted(self) -> Iterable[Entry]:
        """Entries that count towards the state: accepted and before any equivocation."""
        for author, chain in self.chains.items():
            cutoff = self._cutoff(author)
            yield from (e for e in chain if e.seq < cutoff)

    def certified(self) -> dict[BlobId, Entry]:
        """Each certified blob with the entry that certified it first (by stamp, author, ID)."""
        return dict(self._certified)

    def certified_count(self) -> int:
        """How many blobs are certified (a measure of log progress)."""
        return len(self._certified)

    def certified_entry(self, blob_id: BlobId) -> Entry | None:
        """The entry that certified ``blob_id`` first, if any."""
        return self._certified.get(blob_id)

    def invalid(self) -> dict[BlobId, Entry]:
        """Each blob certified invalid, with the entry that did so first."""
        return dict(self._invalid)

    def invalid_entry(self, blob_id: BlobId) -> Entry | None:
        """The entry that certified ``blob_id`` invalid first, if any."""
        return self._invalid.get(blob_id)

    def reached(self, heads: Mapping[bytes, int]) -> bool:
        """Whether this state holds every author's chain up to ``heads``."""
        return all(self.head(author) >= seq for author, seq in heads.items())

    def certified_as_of(self, heads: Mapping[bytes, int]) -> list[BlobId]:
        """Blobs certified, and not certified invalid, by counted entries within ``heads``; sorted.

        The same on every replica that ``reached`` those heads, whatever arrived since.
        """

        def within(kind: str, blob_id: BlobId) -> bool:
            return any(e.seq <= heads.get(e.author, 0) and e.seq < self._cutoff(e.author)
                       for e in self._by_blob.get((kind, blob_id), ()))

        blobs = {blob for kind, blob in self._by_blob if kind == BLOB_CERTIFIED}
        # A blob whose registrations had all ended as of the heads is released: peers
        # deleted it, so it is no longer anyone's to prove.
        ledger = self.ledger_as_of(heads)
        return sorted((b for b in blobs if within(BLOB_CERTIFIED, b) and not within(BLOB_INVALID, b)
                       and ledger.live(b)), key=lambda b: b.raw)

    def namespace_entries(self, volume: bytes) -> list[Entry]:
        """The counted namespace entries of one volume, sealed or not."""
        return [e for e in self.counted() if e.kind == NAMESPACE and e.payload.get("volume") == volume]

    def namespace_ops(self, volume: bytes) -> list[Op]:
        """The counted plaintext namespace operations of one volume, ready for ``namespace.build``."""
        ops = []
        for entry in self.counted():
            if entry.kind == NAMESPACE and entry.payload.get("volume") == volume and (
                    "op" in entry.payload or "ops" in entry.payload):
                ops += entry_ops(entry)
        return ops

    def digest(self) -> bytes:
        """Hash of the derived state: equal on every peer holding the same valid entries.

        The certified and invalid sets enter as a sum of per-item hashes mod 2^256 (a multiset hash),
        kept up to date incrementally, so the digest is order-independent and cheap.
        """
        cutoffs = sorted([author, seq] for author, seq in self.cutoffs().items())
        total = (self._digest_sum % (1 << 256)).to_bytes(32, "big")
        return merkle.blake2b256(wire.encode({"certified": total, "equivocations": cutoffs}))

"""Who may store and for how long: writers, grants, registrations, lifetimes, epochs (pure).

A committee's operators (keys named in the committee file) grant storage: a ``grant`` log
entry gives a writer key a quota of encoded bytes over a range of storage epochs; a
``revoke`` entry withdraws a key, as a writer and wherever it appears in a delegation.

Whoever stores acts as a ``Writer``: the *account* (the granted key, charged for the bytes),
the *owner* (who holds the blob: the account itself, or a volume key the account sponsors)
and the *signer* (the owner, or a device key the owner delegated). Each link is a signature,
so any party checks a writer without asking anyone.

A ``Registration`` is the owner's signed claim on a blob: its ID, an end epoch and whether
it may be deleted early. Peers confirm a deletable registration over Walrus's deletable
blob type with the registration's ID as the object ID, so a certificate binds exactly one
registration; a permanent one is confirmed over Walrus's permanent type. Two owners storing
one blob each hold their own registration; the blob lives while any of them does.

``LifetimeOp`` extends or deletes registrations, signed by their owner. Storage epochs are
numbered from 0 and advanced by ``epoch`` entries that members holding 2f + 1 shards sign
once their clocks pass the epoch's start (``Committee.epoch_start``): expiry never depends
on one clock. They are not the committee's epoch, which certificates carry and which only
a reconfiguration would change.

``Ledger`` folds the entries of those kinds into the state every peer derives alike: the
current epoch, each key's grants, each blob's registrations and each account's usage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import merkle, wire
from .committee import Committee
from .errors import CodecError
from .metadata import BlobId

SPONSOR_DOMAIN = b"walrusfs/sponsor/v1\x00"
#: The same bytes a volume signs to delegate a mount's device (``log.delegate_device``):
#: one delegation lets a device both write the namespace and store the volume's chunks.
DEVICE_DOMAIN = b"walrusfs/volume-device/v1\x00"
REGISTRATION_DOMAIN = b"walrusfs/registration/v1\x00"
LIFETIME_DOMAIN = b"walrusfs/lifetime-op/v1\x00"
EPOCH_DOMAIN = b"walrusfs/epoch/v1\x00"

#: Log entry kinds this module defines.
GRANT = "grant"
REVOKE = "revoke"
EPOCH = "epoch"
BLOB_EXTENDED = "blob-extended"
BLOB_DELETED = "blob-deleted"

#: Walrus's limit on how far ahead storage can be bought.
MAX_EPOCHS_AHEAD = 53
#: Largest epoch number, quota and length anything here accepts.
MAX_EPOCH = 2**32 - 1
MAX_QUOTA = 2**62
#: Registrations one extend or delete names at most (keeps one entry well under 64 KiB).
MAX_TARGETS = 512
#: Authors a revocation names the heads of, at most.
MAX_REVOKE_HEADS = 1024
NONCE_SIZE = 16


class LifecycleError(CodecError, ValueError):
    """A writer, grant, registration, lifetime operation or epoch is malformed or not signed right."""


def _verify(public_key: bytes, message: bytes, signature: Any, what: str) -> None:
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise LifecycleError(f"{what}: a signature is 64 bytes")
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise LifecycleError(f"{what} is not validly signed") from None


def _key(message: Mapping[str, Any], name: str) -> bytes:
    try:
        return wire.field(message, name, bytes, size=32)
    except wire.MessageError as exc:
        raise LifecycleError(str(exc)) from None


def _uint(message: Mapping[str, Any], name: str, upper: int) -> int:
    try:
        return wire.uint(message, name, upper)
    except wire.MessageError as exc:
        raise LifecycleError(str(exc)) from None


def _map(value: Any, what: str, names: set[str], optional: set[str] = frozenset()) -> Mapping[str, Any]:  # type: ignore[assignment]
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise LifecycleError(f"{what} must be a map")
    if not names <= set(value) <= names | optional:
        raise LifecycleError(f"{what} must have exactly the fields {sorted(names)} (optionally {sorted(optional)})")
    return value


# ---------------------------------------------------------------------------- writers


def sponsor(account: SigningKey, owner: bytes) -> bytes:
    """The account's signature letting ``owner`` (a volume key) store on its grant."""
    return account.sign(SPONSOR_DOMAIN + bytes(account.verify_key) + owner).signature


def delegate(owner: SigningKey, signer: bytes) -> bytes:
    """The owner's signature letting ``signer`` (a device key) act for it."""
    return owner.sign(DEVICE_DOMAIN + bytes(owner.verify_key) + signer).signature


@dataclass(frozen=True)
class Writer:
    """Who stores: the granted account, the owner it sponsors, the key that signs for the owner."""

    account: bytes
    owner: bytes
    signer: bytes
    sponsorship: bytes | None = None  # account over owner, when they differ
    delegation: bytes | None = None  # owner over signer, when they differ

    def check(self) -> None:
        """Raise ``LifecycleError`` unless each link is signed by the key before it."""
        for name in ("account", "owner", "signer"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise LifecycleError(f"writer {name} must be a 32-byte key")
        if (self.owner == self.account) != (self.sponsorship is None):
            raise LifecycleError("a writer carries a sponsorship exactly when its owner is not its account")
        if (self.signer == self.owner) != (self.delegation is None):
            raise LifecycleError("a writer carries a delegation exactly when its signer is not its owner")
        if self.sponsorship is not None:
            _verify(self.account, SPONSOR_DOMAIN + self.account + self.owner, self.sponsorship,
                    "the account's sponsorship of the owner")
        if self.delegation is not None:
            _verify(self.owner, DEVICE_DOMAIN + self.owner + self.signer, self.delegation,
                    "the owner's delegation to the signer")

    def keys(self) -> frozenset[bytes]:
        """Every key this writer's authority rests on (a revocation of any of them ends it)."""
        return frozenset((self.account, self.owner, self.signer))

    def to_wire(self) -> dict[str, Any]:
        """Canonical wire map."""
        out: dict[str, Any] = {"account": self.account, "owner": self.owner, "signer": self.signer}
        if self.sponsorship is not None:
            out["sponsorship"] = self.sponsorship
        if self.delegation is not None:
            out["delegation"] = self.delegation
        return out

    @classmethod
    def from_wire(cls, value: Any, verify: bool = True) -> Writer:
        """Parse and (``verify``) check a writer; ``LifecycleError`` if malformed or not signed right."""
        raw = _map(value, "writer", {"account", "owner", "signer"}, {"sponsorship", "delegation"})
        writer = cls(_key(raw, "account"), _key(raw, "owner"), _key(raw, "signer"), raw.get("sponsorship"),
                     raw.get("delegation"))
        if verify:
            writer.check()
        return writer


def writer_for(key: SigningKey) -> Writer:
    """A writer that is its own account, owner and signer (a client key)."""
    public = bytes(key.verify_key)
    return Writer(public, public, public)


# ---------------------------------------------------------------------------- registrations


@dataclass(frozen=True)
class Registration:
    """An owner's signed claim on a blob of ``length`` bytes until ``end_epoch`` (exclusive)."""

    blob_id: BlobId
    nonce: bytes
    end_epoch: int
    deletable: bool
    writer: Writer
    signature: bytes
    #: The blob's unencoded length (the blob ID commits to it; peers check it against the
    #: metadata before confirming), so what an account is charged is signed, not told.
    length: int = 0

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {"blob_id": self.blob_id.raw, "nonce": self.nonce, "end_epoch": self.end_epoch,
                "deletable": self.deletable, "length": self.length, "account": self.writer.account,
                "owner": self.writer.owner}

    def signed_bytes(self) -> bytes:
        """Domain-separated canonical bytes the signer signs."""
        return REGISTRATION_DOMAIN + wire.encode(self.body())

    def to_wire(self) -> dict[str, Any]:
        """Canonical wire map."""
        return {"blob_id": self.blob_id.raw, "nonce": self.nonce, "end_epoch": self.end_epoch,
                "deletable": self.deletable, "length": self.length, "writer": self.writer.to_wire(),
                "signature": self.signature}

    @cached_property
    def id(self) -> bytes:
        """The registration's ID (Walrus's blob object ID): hash of its whole encoding."""
        return merkle.blake2b256(REGISTRATION_DOMAIN + wire.encode(self.to_wire()))

    @property
    def object_id(self) -> bytes:
        """What confirmations bind: the registration's ID, permanent or deletable.

        Walrus confirms a permanent blob without an object (any certificate of it is as good
        as another); here a certificate also grants a lifetime and charges an account, so
        every confirmation names the one registration it was given for (Walrus's deletable
        layout). A member cannot attach another registration to someone's certificate.
        """
        return self.id

    @classmethod
    def from_wire(cls, value: Any, verify: bool = True) -> Registration:
        """Parse and (``verify``) check a registration (shape and signatures, not grants); ``LifecycleError`` if bad."""
        raw = _map(value, "registration",
                   {"blob_id", "nonce", "end_epoch", "deletable", "length", "writer", "signature"})
        nonce = raw["nonce"]
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise LifecycleError(f"registration nonce must be {NONCE_SIZE} bytes")
        if not isinstance(raw["deletable"], bool):
            raise LifecycleError("registration deletable must be true or false")
        registration = cls(BlobId(_key(raw, "blob_id")), nonce, _uint(raw, "end_epoch", MAX_EPOCH + 1),
                           raw["deletable"], Writer.from_wire(raw["writer"], verify), raw["signature"],
                           _uint(raw, "length", 2**63))
        if verify:
            _verify(registration.writer.signer, registration.signed_bytes(), registration.signature, "registration")
        return registration


def register(signer: SigningKey, writer: Writer, blob_id: BlobId, end_epoch: int, deletable: bool,
             nonce: bytes | None = None, length: int = 0) -> Registration:
    """A registration of ``blob_id`` (``length`` unencoded bytes) signed by ``signer`` (the writer's signer)."""
    unsigned = Registration(blob_id, nonce if nonce is not None else os.urandom(NONCE_SIZE), end_epoch, deletable,
                            writer, b"", length)
    return Registration(unsigned.blob_id, unsigned.nonce, end_epoch, deletable, writer,
                        signer.sign(unsigned.signed_bytes()).signature, length)


@dataclass(frozen=True)
class LifetimeOp:
    """An owner's signed extension (to ``end_epoch``) or deletion of some of its registrations."""

    op: str  # "extend" or "delete"
    writer: Writer
    targets: tuple[bytes, ...]  # registration IDs
    end_epoch: int  # extend only (0 for delete)
    at_epoch: int  # the storage epoch the owner saw when signing
    signature: bytes

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {"op": self.op, "account": self.writer.account, "owner": self.writer.owner,
                "targets": list(self.targets), "end_epoch": self.end_epoch, "at_epoch": self.at_epoch}

    def signed_bytes(self) -> bytes:
        """Domain-separated canonical bytes the signer signs."""
        return LIFETIME_DOMAIN + wire.encode(self.body())

    def to_wire(self) -> dict[str, Any]:
        """Canonical wire map."""
        return {"op": self.op, "writer": self.writer.to_wire(), "targets": list(self.targets),
                "end_epoch": self.end_epoch, "at_epoch": self.at_epoch, "signature": self.signature}

    @classmethod
    def from_wire(cls, value: Any, verify: bool = True) -> LifetimeOp:
        """Parse and (``verify``) check an operation (shape and signatures); ``LifecycleError`` if bad."""
        raw = _map(value, "lifetime operation", {"op", "writer", "targets", "end_epoch", "at_epoch", "signature"})
        if raw["op"] not in ("extend", "delete"):
            raise LifecycleError("lifetime operation must be extend or delete")
        targets = raw["targets"]
        if (not isinstance(targets, list) or not 1 <= len(targets) <= MAX_TARGETS
                or not all(isinstance(t, bytes) and len(t) == 32 for t in targets) or len(set(targets)) != len(targets)):
            raise LifecycleError(f"lifetime operation must name 1..{MAX_TARGETS} distinct 32-byte registration IDs")
        end = _uint(raw, "end_epoch", MAX_EPOCH + 1)
        if (raw["op"] == "delete") != (end == 0):
            raise LifecycleError("an extension names a new end epoch; a deletion names 0")
        op = cls(raw["op"], Writer.from_wire(raw["writer"], verify), tuple(targets), end,
                 _uint(raw, "at_epoch", MAX_EPOCH + 1), raw["signature"])
        if verify:
            _verify(op.writer.signer, op.signed_bytes(), op.signature, f"{op.op} operation")
        return op


def lifetime_op(signer: SigningKey, writer: Writer, op: str, targets: Iterable[bytes], at_epoch: int,
                end_epoch: int = 0) -> LifetimeOp:
    """An extension or deletion signed by ``signer`` (the writer's signer)."""
    unsigned = LifetimeOp(op, writer, tuple(targets), end_epoch, at_epoch, b"")
    return LifetimeOp(op, writer, unsigned.targets, end_epoch, at_epoch, signer.sign(unsigned.signed_bytes()).signature)


# ---------------------------------------------------------------------------- grants, revocations, epochs


@dataclass(frozen=True)
class Grant:
    """Storage granted to ``writer``: ``quota`` encoded bytes during epochs first..end-1."""

    writer: bytes
    quota: int
    first_epoch: int
    end_epoch: int

    def to_wire(self) -> dict[str, Any]:
        """The grant entry's payload."""
        return {"writer": self.writer, "quota": self.quota, "first_epoch": self.first_epoch,
                "end_epoch": self.end_epoch}

    @classmethod
    def from_wire(cls, value: Any) -> Grant:
        """Parse a grant payload; ``LifecycleError`` if malformed."""
        raw = _map(value, "grant", {"writer", "quota", "first_epoch", "end_epoch"})
        grant = cls(_key(raw, "writer"), _uint(raw, "quota", MAX_QUOTA + 1), _uint(raw, "first_epoch", MAX_EPOCH + 1),
                    _uint(raw, "end_epoch", MAX_EPOCH + 1))
        if grant.end_epoch <= grant.first_epoch:
            raise LifecycleError("a grant's end epoch must be after its first epoch")
        return grant

    def covers(self, epoch: int) -> bool:
        """Whether the grant is in force during ``epoch``."""
        return self.first_epoch <= epoch < self.end_epoch


@dataclass(frozen=True)
class Revocation:
    """``key`` withdrawn: as a writer, and in every delegation; entries by authors past ``heads`` stop counting."""

    key: bytes
    heads: Mapping[bytes, int]

    def to_wire(self) -> dict[str, Any]:
        """The revoke entry's payload."""
        return {"key": self.key, "heads": [[a, s] for a, s in sorted(self.heads.items())]}

    @classmethod
    def from_wire(cls, value: Any) -> Revocation:
        """Parse a revoke payload; ``LifecycleError`` if malformed."""
        raw = _map(value, "revocation", {"key", "heads"})
        heads = raw["heads"]
        if not isinstance(heads, list) or len(heads) > MAX_REVOKE_HEADS:
            raise LifecycleError(f"revocation heads must be a list of at most {MAX_REVOKE_HEADS} [author, seq]")
        out: dict[bytes, int] = {}
        for item in heads:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes) or len(item[0]) != 32
                    or not isinstance(item[1], int) or isinstance(item[1], bool) or not 0 <= item[1] < 1 << 62
                    or item[0] in out):
                raise LifecycleError("revocation heads must be distinct [32-byte author, seq] pairs")
            out[item[0]] = item[1]
        return cls(_key(raw, "key"), out)


def epoch_bytes(epoch: int) -> bytes:
    """What a member signs to say its clock has passed the start of storage epoch ``epoch``."""
    return EPOCH_DOMAIN + wire.encode({"epoch": epoch})


def sign_epoch(key: SigningKey, epoch: int) -> bytes:
    """A member's signature that storage epoch ``epoch`` has begun by its clock."""
    return key.sign(epoch_bytes(epoch)).signature


def epoch_payload(epoch: int, signatures: Mapping[int, bytes]) -> dict[str, Any]:
    """An epoch entry's payload from (member index -> signature)."""
    return {"epoch": epoch, "signers": sorted(signatures), "signatures": [signatures[k] for k in sorted(signatures)]}


def check_epoch(committee: Committee, payload: Mapping[str, Any]) -> int:
    """The epoch an epoch payload advances to; ``LifecycleError`` unless members holding 2f + 1 shards signed it."""
    raw = _map(payload, "epoch", {"epoch", "signers", "signatures"})
    epoch = _uint(raw, "epoch", MAX_EPOCH + 1)
    signers, signatures = raw["signers"], raw["signatures"]
    # Element types before the set: an unhashable signer must fail as malformed, not TypeError.
    if (not isinstance(signers, list) or not isinstance(signatures, list) or len(signers) != len(signatures)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < len(committee.peers) for s in signers)
            or len(set(signers)) != len(signers)):
        raise LifecycleError("epoch entry must list distinct member indices and one signature each")
    for index, signature in zip(signers, signatures):
        _verify(committee.peers[index].public_key, epoch_bytes(epoch), signature, f"member {index}'s epoch signature")
    if committee.weight(signers) < committee.quorum:
        raise LifecycleError(f"epoch {epoch} is signed by members holding {committee.weight(signers)} shards; "
                             f"it needs {committee.quorum}")
    return epoch


def due_epoch(committee: Committee, now_ms: int) -> int:
    """The storage epoch a clock reading ``now_ms`` falls in (0 before the first boundary)."""
    if now_ms < committee.genesis_ms:
        return 0
    return min((now_ms - committee.genesis_ms) // committee.epoch_ms, MAX_EPOCH)


# ---------------------------------------------------------------------------- the fold


@dataclass
class Held:
    """One registration as the log has it now: its end after extensions, whether deleted."""

    registration: Registration
    length: int  # the blob's unencoded length, from its certificate
    extensions: dict[tuple[int, int], None] = field(default_factory=dict)  # (at_epoch, end_epoch)
    deleted: bool = False
    encoded: int = 0  # the bytes it is charged: the blob's encoded length

    @property
    def end_epoch(self) -> int:
        """The end after every extension that counts.

        An extension counts if it was signed before the end it extends (``at_epoch`` below
        the end so far); taken in order of ``at_epoch`` the result does not depend on the
        order extensions arrived in.
        """
        end = self.registration.end_epoch
        for at, new_end in sorted(self.extensions):
            if at < end:
                end = max(end, new_end)
        return end

    def live(self, epoch: int) -> bool:
        """Whether this registration still holds its blob during ``epoch``."""
        return not self.deleted and self.end_epoch > epoch


@dataclass
class Ledger:
    """Grants, revocations, the storage epoch and registrations folded from counted entries (order-independent).

    Peers ask it on every storage request (``authorize``) and after every epoch or deletion
    (``released``), so those answers are kept up to date as entries are applied instead of
    summed over every registration: usage per account is a histogram of encoded bytes by
    end epoch, and each blob's latest live end is kept beside its registrations.
    """

    committee: Committee
    epoch: int = 0
    grants: dict[bytes, dict[bytes, Grant]] = field(default_factory=dict)  # writer -> entry ID -> grant
    revoked: dict[bytes, Revocation] = field(default_factory=dict)
    held: dict[BlobId, dict[bytes, Held]] = field(default_factory=dict)  # blob -> registration ID -> held
    #: Operations on registrations not known yet (their certificate may arrive later).
    _waiting: dict[bytes, list[LifetimeOp]] = field(default_factory=dict)
    _by_registration: dict[bytes, Held] = field(default_factory=dict)
    #: account -> end epoch -> encoded bytes of its undeleted registrations ending then.
    _charges: dict[bytes, dict[int, int]] = field(default_factory=dict)
    #: blob -> the latest end of its undeleted registrations (0: none).
    _blob_end: dict[BlobId, int] = field(default_factory=dict)
    #: Bumped whenever a registration, an operation or the epoch changes what is live.
    _changes: int = 0
    _released: tuple[int, list[BlobId]] = (-1, [])

    # -- applying

    def grant(self, entry_id: bytes, grant: Grant) -> None:
        """Apply a grant entry."""
        self.grants.setdefault(grant.writer, {})[entry_id] = grant

    def revoke(self, revocation: Revocation) -> None:
        """Apply a revoke entry (a second one for a key keeps the lower heads: what both allowed)."""
        old = self.revoked.get(revocation.key)
        if old is not None:
            heads = {a: min(s, old.heads.get(a, 0)) for a, s in revocation.heads.items()}
            revocation = Revocation(revocation.key, heads)
        self.revoked[revocation.key] = revocation

    def advance(self, epoch: int) -> None:
        """Apply an epoch entry: the storage epoch is the highest one signed."""
        if epoch > self.epoch:
            self.epoch = epoch
            self._changes += 1

    def registered(self, registration: Registration, length: int) -> None:
        """Apply a certified registration (from a blob-certified entry)."""
        if registration.id in self._by_registration:
            return
        held = Held(registration, length, encoded=self.committee.config.encoded_blob_length(length))
        self.held.setdefault(registration.blob_id, {})[registration.id] = held
        self._by_registration[registration.id] = held
        self._charge(held, +1)
        for op in self._waiting.pop(registration.id, []):
            self._operate(op, held)

    def operate(self, op: LifetimeOp) -> None:
        """Apply an extend or delete operation to each registration it names that its owner holds."""
        for target in op.targets:
            held = self._by_registration.get(target)
            if held is None:
                # Kept whatever their number: a cap would make the fold depend on arrival order
                # (anyone's ops naming a registration first could crowd out its owner's). The
                # memory is bounded by the log's own size: each op names at most MAX_TARGETS.
                self._waiting.setdefault(target, []).append(op)
                continue
            self._operate(op, held)

    def _operate(self, op: LifetimeOp, held: Held) -> None:
        if op.writer.owner != held.registration.writer.owner:
            return  # only the owner changes its registration
        if op.op == "delete":
            if held.registration.deletable and not held.deleted:
                self._charge(held, -1)
                held.deleted = True
                self._changes += 1
        elif op.end_epoch <= op.at_epoch + MAX_EPOCHS_AHEAD and (op.at_epoch, op.end_epoch) not in held.extensions:
            if not held.deleted:
                self._charge(held, -1)
            held.extensions[(op.at_epoch, op.end_epoch)] = None
            if not held.deleted:
                self._charge(held, +1)

    def _charge(self, held: Held, sign: int) -> None:
        """Add (+1) or take back (-1) ``held``'s bytes at its current end; refresh its blob's end."""
        account = held.registration.writer.account
        end = held.end_epoch
        charges = self._charges.setdefault(account, {})
        charges[end] = charges.get(end, 0) + sign * held.encoded
        if charges[end] == 0:
            del charges[end]
        blob_id = held.registration.blob_id
        self._blob_end[blob_id] = max((h.end_epoch for h in self.held[blob_id].values()
                                       if not h.deleted and not (h is held and sign < 0)), default=0)
        self._changes += 1

    # -- reading

    def is_revoked(self, keys: Iterable[bytes]) -> bytes | None:
        """The first of ``keys`` that was revoked, if any."""
        for key in keys:
            if key in self.revoked:
                return key
        return None

    def quota(self, account: bytes, epoch: int | None = None) -> int:
        """Encoded bytes ``account`` may hold during ``epoch`` (the current one by default)."""
        if account in self.revoked:
            return 0
        at = self.epoch if epoch is None else epoch
        return sum(g.quota for g in self.grants.get(account, {}).values() if g.covers(at))

    def granted_until(self, account: bytes) -> int:
        """The end of the latest grant of ``account`` in force now or later (0: none)."""
        if account in self.revoked:
            return 0
        return max((g.end_epoch for g in self.grants.get(account, {}).values() if g.end_epoch > self.epoch), default=0)

    def usage(self, account: bytes) -> int:
        """Encoded bytes of the live registrations charged to ``account`` (cost: its distinct end epochs)."""
        return sum(size for end, size in self._charges.get(account, {}).items() if end > self.epoch)

    def usage_by_account(self) -> dict[bytes, int]:
        """Encoded bytes of live registrations, per account."""
        return {account: used for account in self._charges if (used := self.usage(account))}

    def barred(self, writer: Writer) -> tuple[str, str] | None:
        """Why ``writer`` may not store at all now (a revoked key, no grant): (error code, reason), or None.

        A few dictionary lookups: what peers check before any signature or byte.
        """
        revoked = self.is_revoked(writer.keys())
        if revoked is not None:
            return "not-authorized", f"key {revoked.hex()[:16]}... was revoked by an operator"
        if self.quota(writer.account) == 0:
            return "not-authorized", (f"no storage grant for account {writer.account.hex()[:16]}... in epoch "
                                      f"{self.epoch}; an operator grants one with `walrusfs grant create`")
        return None

    def end_problem(self, end_epoch: int) -> str | None:
        """Why a registration ending at ``end_epoch`` cannot be admitted now (None: it is within reach)."""
        if self.epoch < end_epoch <= self.epoch + MAX_EPOCHS_AHEAD:
            return None
        return (f"the registration ends at epoch {end_epoch}; the storage epoch is {self.epoch}, so it must end in "
                f"{self.epoch + 1}..{self.epoch + MAX_EPOCHS_AHEAD}")

    def authorize(self, writer: Writer, extra: int = 0) -> tuple[str, str] | None:
        """Why ``writer`` may not store ``extra`` more encoded bytes now: (error code, reason), or None."""
        barred = self.barred(writer)
        if barred is not None:
            return barred
        quota = self.quota(writer.account)
        used = self.usage(writer.account)
        if used + extra > quota:
            return "quota-exceeded", (f"account {writer.account.hex()[:16]}... holds {used} of its {quota} "
                                      f"encoded bytes; {extra} more do not fit")
        return None

    def registrations(self, blob_id: BlobId) -> list[Held]:
        """The registrations of ``blob_id``, by ID."""
        return [held for _, held in sorted(self.held.get(blob_id, {}).items())]

    def registration(self, registration_id: bytes) -> Held | None:
        """One registration by ID."""
        return self._by_registration.get(registration_id)

    def live(self, blob_id: BlobId, epoch: int | None = None) -> bool:
        """Whether some registration holds ``blob_id`` during ``epoch`` (now by default)."""
        at = self.epoch if epoch is None else epoch
        return self._blob_end.get(blob_id, 0) > at

    def end_epoch(self, blob_id: BlobId) -> int:
        """The latest end of ``blob_id``'s live registrations (0: none)."""
        end = self._blob_end.get(blob_id, 0)
        return end if end > self.epoch else 0

    def released(self) -> list[BlobId]:
        """Registered blobs no live registration holds any more: peers delete their slivers.

        Asked after every epoch and deletion entry (and periodically): computed again only
        once something changed, so a quiet log costs nothing however many blobs it holds.
        """
        if self._released[0] != self._changes:
            out = sorted((b for b, end in self._blob_end.items() if end <= self.epoch), key=lambda b: b.raw)
            self._released = (self._changes, out)
        return list(self._released[1])


@dataclass(frozen=True)
class Authority:
    """A writer together with the key that signs for it (what a client stores with)."""

    key: SigningKey
    writer: Writer

    def register(self, blob_id: BlobId, end_epoch: int, deletable: bool, length: int = 0) -> Registration:
        """A fresh registration of ``blob_id`` (``length`` unencoded bytes) until ``end_epoch``."""
        return register(self.key, self.writer, blob_id, end_epoch, deletable, length=length)

    def operation(self, op: str, targets: Iterable[bytes], at_epoch: int, end_epoch: int = 0) -> LifetimeOp:
        """An extension (to ``end_epoch``) or deletion of this owner's registrations ``targets``."""
        return lifetime_op(self.key, self.writer, op, targets, at_epoch, end_epoch)


def own_authority(key: SigningKey) -> Authority:
    """A client key acting as its own account, owner and signer."""
    return Authority(key, writer_for(key))


def device_authority(account: SigningKey | None, owner: SigningKey, device: SigningKey,
                     sponsorship: bytes | None = None) -> Authority:
    """A mount's device signing for its volume (``owner``), sponsored by ``account`` (or the volume's own grant)."""
    owner_key, device_key = bytes(owner.verify_key), bytes(device.verify_key)
    account_key = bytes(account.verify_key) if account is not None else owner_key
    if account is not None and account_key != owner_key and sponsorship is None:
        sponsorship = sponsor(account, owner_key)
    writer = Writer(account_key, owner_key, device_key,
                    sponsorship if account_key != owner_key else None,
                    delegate(owner, device_key) if device_key != owner_key else None)
    return Authority(device, writer)

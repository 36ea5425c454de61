"""The storage protocol: versioned protocol IDs and their canonical messages.

Each operation has its own libp2p protocol ID carrying the major version, and each message
is a canonical CBOR map (see ``wire``) with the message format version ``v``. Requests and
responses are one frame each way; bulk data (slivers, symbols) travels in the frame body,
not inside CBOR. Building and parsing are pure and validate every field.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Sequence
from typing import Any

from . import merkle
from .config import RS2, EncodingConfig
from .errors import CodecError
from .metadata import BLOB_ID_LENGTH, BlobId, BlobMetadata, SliverPairHashes
from .recovery import InconsistencyProof, RecoverySymbol
from .redstuff import Axis
from .wire import WIRE_VERSION, MessageError, decode, encode, field, uint

PUT_METADATA = "/walrusfs/put-metadata/1.0.0"
PUT_PAIR = "/walrusfs/put-pair/1.0.0"
GET_CONFIRMATION = "/walrusfs/get-confirmation/1.0.0"
GET_METADATA = "/walrusfs/get-metadata/1.0.0"
GET_SLIVER = "/walrusfs/get-sliver/1.0.0"
GET_RECOVERY_SYMBOL = "/walrusfs/get-recovery-symbol/1.0.0"
GET_STATUS = "/walrusfs/status/1.0.0"
GET_BLOB_STATUS = "/walrusfs/blob-status/1.0.0"
#: Inconsistent blobs: a reporter hands a peer an inconsistency proof, and that peer
#: gathers the other peers' attestations (``ATTEST_INVALID``) into a log entry.
REPORT_INVALID = "/walrusfs/report-invalid/1.0.0"
ATTEST_INVALID = "/walrusfs/attest-invalid/1.0.0"
#: Storage challenges: an initiator gathers commitments (``CHALLENGE_COMMIT``, members only),
#: provers send checkers their possession digests (``CHALLENGE_PROVE``), a member (or anyone
#: showing a member's signature for the next round number) may ask a peer to start a round
#: (``AUDIT_START``), and anyone may read the challenge entries of its log (``AUDIT_LOG``).
CHALLENGE_COMMIT = "/walrusfs/challenge-commit/1.0.0"
CHALLENGE_PROVE = "/walrusfs/challenge-prove/1.0.0"
AUDIT_START = "/walrusfs/audit-start/1.0.0"
AUDIT_LOG = "/walrusfs/audit-log/1.0.0"
PROTOCOLS = (
    PUT_METADATA, PUT_PAIR, GET_CONFIRMATION, GET_METADATA, GET_SLIVER,
    GET_RECOVERY_SYMBOL, GET_STATUS, GET_BLOB_STATUS, REPORT_INVALID, ATTEST_INVALID,
    CHALLENGE_COMMIT, CHALLENGE_PROVE, AUDIT_START, AUDIT_LOG,
)
# The replicated log (walrusfs/replication.py).
LOG_SUBMIT = "/walrusfs/log-submit/1.0.0"
LOG_PUSH = "/walrusfs/log-push/1.0.0"
# Major version 2: heads and ranges are paged and bounded in bytes (see REPLY_BUDGET); a
# version-1 peer answered with everything at once, which an outsider could push past MAX_HEADER.
LOG_HEADS = "/walrusfs/log-heads/2.0.0"
LOG_RANGE = "/walrusfs/log-range/2.0.0"
LOG_TIMES = "/walrusfs/log-times/1.0.0"
LOG_EVIDENCE = "/walrusfs/log-evidence/1.0.0"
LOG_CERTIFIED = "/walrusfs/log-certified/1.0.0"
#: Members sign that a storage epoch has begun by their clocks (see ``peer.epochs``).
EPOCH_SIGN = "/walrusfs/epoch-sign/1.0.0"

#: Every header (request or response) fits in this; metadata for n = 1000 is ~70 KB.
MAX_HEADER = 1 << 20
#: Bytes a reply that lists things (heads, entries) may fill; the rest of MAX_HEADER is
#: slack for its fixed fields. Tests lower it with WALRUSFS_REPLY_BUDGET so a few hundred
#: authors make several pages.
REPLY_BUDGET = MAX_HEADER - (64 << 10)
#: Upper bound on one ``log-heads`` item in canonical CBOR: a 64-character text key (2 + 64)
#: and [seq (at most 9), 32-byte ID (2 + 32)] in a 1-byte array header.
HEAD_BYTES = 66 + 1 + 9 + 34
#: Per-item CBOR overhead of a byte string of up to 4 GiB (its length header).
ITEM_OVERHEAD = 5
#: Authors one ``log-range`` request may ask for ([author, start, count] each, ~50 bytes):
#: a catch-up over thousands of one-entry authors takes a few requests, not one per author.
MAX_WANTS = 1024
#: Entries one ``log-range`` reply holds at most, whatever their size (bounds decoding work).
MAX_RANGE_ENTRIES = 5000


def reply_budget() -> int:
    """This process's byte budget for a listing reply (WALRUSFS_REPLY_BUDGET, at most REPLY_BUDGET)."""
    raw = os.environ.get("WALRUSFS_REPLY_BUDGET")
    if not raw:
        return REPLY_BUDGET
    try:
        return max(HEAD_BYTES, min(int(raw), REPLY_BUDGET))
    except ValueError:
        return REPLY_BUDGET


#: Largest body: a sliver pair at the largest symbol size for n = 4 (2 + 3 symbols of 32 MiB).
MAX_BODY = 5 * (32 << 20)

# Error codes a peer answers with; clients and scripts may rely on them.
MALFORMED = "malformed"
NOT_FOUND = "not-found"
INVALID = "invalid"
NOT_ASSIGNED = "not-assigned"
INTERNAL = "internal"
#: The log holds an invalid-blob certificate for this blob: no peer serves its data.
BLOB_INVALID = "blob-invalid"
#: A challenge round that is open on this peer covers this blob: its data is served again
#: once the round closes. Readers wait and retry.
CHALLENGED = "challenged"
#: The peer's disk has too little free space for this upload: it keeps serving what it
#: holds and accepts again once space returns. Writers store through the other peers.
DISK_FULL = "disk-full"
#: The request would take the peer past a resource limit for its sender (streams, bytes in
#: flight) or for all outsiders together: retry later, or store through the other peers.
BUSY = "busy"
#: Storage access (see ``lifecycle``): the writer holds no grant (or was revoked), or the
#: upload would take its account past its quota. Asking other peers will not help.
NOT_AUTHORIZED = "not-authorized"
QUOTA_EXCEEDED = "quota-exceeded"
#: Every registration of this blob has ended (expired or deleted): its slivers are gone.
EXPIRED = "expired"
#: A storage epoch's start has not passed on this member's clock yet: ask again later.
TOO_EARLY = "too-early"


class RemoteError(CodecError):
    """A peer answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def request(**fields: Any) -> bytes:
    """A request header."""
    return encode({"v": WIRE_VERSION, **fields})


def ok(**fields: Any) -> bytes:
    """A success response header."""
    return encode({"v": WIRE_VERSION, "ok": True, **fields})


def error(code: str, message: str) -> bytes:
    """An error response header."""
    return encode({"v": WIRE_VERSION, "ok": False, "error": {"code": code, "message": message[:1000]}})


def parse_request(header: bytes) -> dict[str, Any]:
    """Decode a request header."""
    return decode(header, MAX_HEADER)


def parse_response(header: bytes) -> dict[str, Any]:
    """Decode a response header; raise ``RemoteError`` for an error reply."""
    message = decode(header, MAX_HEADER)
    if field(message, "ok", bool):
        return message
    problem = field(message, "error", dict)
    raise RemoteError(str(problem.get("code", "unknown")), str(problem.get("message", "")))


def blob_id_field(message: dict[str, Any]) -> BlobId:
    """The ``blob_id`` field."""
    return BlobId(field(message, "blob_id", bytes, size=BLOB_ID_LENGTH))


def axis_field(message: dict[str, Any], name: str = "axis") -> Axis:
    """An axis field: "primary" or "secondary"."""
    value = field(message, name, str)
    try:
        return Axis(value)
    except ValueError:
        raise MessageError(f"field {name!r} must be 'primary' or 'secondary', got {value!r}") from None


def metadata_to_wire(metadata: BlobMetadata) -> dict[str, Any]:
    """Metadata as a CBOR-ready map."""
    return {
        "encoding": metadata.encoding_type,
        "length": metadata.unencoded_length,
        "hashes": [[h.primary, h.secondary] for h in metadata.hashes],
    }


def metadata_from_wire(value: Any, n_shards: int) -> BlobMetadata:
    """Metadata from its map, checked to be for ``n_shards`` shards."""
    if not isinstance(value, dict):
        raise MessageError("metadata must be a map")
    encoding = field(value, "encoding", int)
    if encoding != RS2:
        raise MessageError(f"unsupported encoding type {encoding}")
    length = uint(value, "length", EncodingConfig(n_shards).max_blob_size + 1)
    hashes = field(value, "hashes", list)
    if len(hashes) != n_shards:
        raise MessageError(f"metadata has {len(hashes)} hash pairs, the committee has {n_shards} shards")
    pairs = []
    for pair in hashes:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(h, bytes) and len(h) == merkle.DIGEST_SIZE for h in pair)
        ):
            raise MessageError("each metadata hash pair must be two 32-byte strings")
        pairs.append(SliverPairHashes(pair[0], pair[1]))
    return BlobMetadata(encoding, length, tuple(pairs))


def proof_to_wire(proof: InconsistencyProof) -> tuple[dict[str, Any], bytes]:
    """An inconsistency proof as header fields plus a body holding the symbols back to back."""
    fields = {
        "target": proof.target.value,
        "target_index": proof.target_index,
        "symbols": [[sym.source_index, list(sym.proof)] for sym in proof.symbols],
    }
    return fields, b"".join(sym.data for sym in proof.symbols)


def proof_from_wire(message: dict[str, Any], body: bytes, metadata: BlobMetadata) -> InconsistencyProof:
    """Parse a proof sent with ``proof_to_wire`` for a blob with ``metadata``; checks shapes, not validity."""
    n = metadata.config.n_shards
    target = axis_field(message, "target")
    target_index = uint(message, "target_index", n)
    entries = field(message, "symbols", list)
    size = metadata.symbol_size
    if len(entries) > n or len(body) != len(entries) * size:
        raise MessageError(f"a proof of {len(entries)} symbols of {size} bytes cannot have a {len(body)}-byte body")
    symbols = []
    for k, item in enumerate(entries):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int) or isinstance(item[0], bool)
                or not 0 <= item[0] < n or not isinstance(item[1], list) or len(item[1]) > 64
                or not all(isinstance(h, bytes) and len(h) == merkle.DIGEST_SIZE for h in item[1])):
            raise MessageError("each proof symbol must be [source index, [32-byte hashes]]")
        symbols.append(RecoverySymbol(target, target_index, item[0], body[k * size : (k + 1) * size], tuple(item[1])))
    return InconsistencyProof(target, target_index, tuple(symbols))


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of what JSON can show (text or integer keys, finite numbers, 8 levels at most)."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if depth >= 8:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all((isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool))) and _plain(v, depth + 1)
                   for k, v in value.items())
    return False


def _shape(reply: dict[str, Any], spec: dict[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    for name, kinds in spec.items():
        value = reply.get(name)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds) or not _plain(value):
            raise MessageError(f"{what} reply: field {name!r} has the wrong type or shape")
    return reply


_NONE = type(None)


def check_status_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A ``get-status`` reply whose fields have the types clients show and use; ``MessageError`` otherwise."""
    _shape(reply, {"shards": (list,), "blobs": (int,), "stored_bytes": (int,), "version": (str,),
                   "healing": (dict,), "challenge": (dict, _NONE), "free_bytes": (int, _NONE),
                   "disk_full": (bool, _NONE), "recent_heals": (list, _NONE)}, "status")
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    healing = reply["healing"]
    for name, value in healing.items():
        if name == "scrub":
            ok = isinstance(value, dict) and all(v is None or number(v) for v in value.values())
        elif name == "last_error":
            ok = value is None or isinstance(value, str)
        else:
            ok = number(value)
        if not ok or ("missing" not in healing):
            raise MessageError(f"status reply: healing field {name!r} has the wrong type")
    for record in reply.get("recent_heals") or []:
        if not (isinstance(record, dict) and isinstance(record.get("blob_id"), str)
                and isinstance(record.get("pairs"), list)
                and all(number(record.get(k)) for k in ("pair_bytes", "downloaded", "metadata_bytes", "seconds"))):
            raise MessageError("status reply: a recent heal record has the wrong shape")
    return reply


_STORAGE_COUNTS = ("epoch", "epoch_seconds", "reclaimed_bytes", "released_blobs", "pending_uploads", "grants",
                   "revoked")


def storage_status(reply: dict[str, Any]) -> dict[str, Any] | None:
    """The ``storage`` map of a status reply, keeping only fields of the right type (None if absent or not a map).

    What a peer says about its own storage: shown, never acted on, so a field of the wrong
    type is dropped rather than failing the whole status.
    """
    raw = reply.get("storage")
    if not isinstance(raw, dict):
        return None

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63

    out: dict[str, Any] = {name: raw[name] for name in _STORAGE_COUNTS if count(raw.get(name))}
    accounts = raw.get("accounts")
    if isinstance(accounts, list):
        out["accounts"] = [
            {"account": a["account"], "used": a["used"], "quota": a["quota"]} for a in accounts[:1000]
            if isinstance(a, dict) and isinstance(a.get("account"), str) and len(a["account"]) == 64
            and count(a.get("used")) and count(a.get("quota"))
        ]
    return out


def check_blob_status_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A ``get-blob-status`` reply whose fields have the types clients show; ``MessageError`` otherwise."""
    _shape(reply, {"metadata": (bool,), "pairs": (list,), "valid_pairs": (list,), "confirmed": (bool,),
                   "healing": (bool, _NONE)}, "blob-status")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in reply["pairs"] + reply["valid_pairs"]):
        raise MessageError("blob-status reply: pair numbers are not integers")
    invalid = reply.get("invalid")
    if invalid is not None and not (isinstance(invalid, bytes) and len(invalid) == 32):
        raise MessageError("blob-status reply: 'invalid' is not an entry ID")
    return reply


def check_heads_reply(reply: dict[str, Any], after: bytes | None = None) -> dict[str, Any]:
    """One ``log-heads`` page: author (64 hex digits, all after ``after``) -> [seq, 32-byte head ID], ``more``, ``entries``.

    A page that says more follows must list at least one author, so a caller walking the
    pages always moves forward; anything else is ``MessageError`` (that peer's failure).
    """
    heads = field(reply, "heads", dict)
    more = field(reply, "more", bool)
    total = field(reply, "entries", int)
    if total < 0:
        raise MessageError("log-heads reply: 'entries' is negative")
    if len(heads) * HEAD_BYTES > MAX_HEADER:
        raise MessageError("log-heads reply: more heads than a reply can hold")
    if more and not heads:
        raise MessageError("log-heads reply: says more follows but lists no author")
    floor = after.hex() if after is not None else ""
    for author, head in heads.items():
        if not (isinstance(author, str) and len(author) == 64 and all(c in "0123456789abcdef" for c in author)):
            raise MessageError("log-heads reply: an author is not 64 lowercase hex digits")
        if author <= floor:
            raise MessageError("log-heads reply: an author is not after the requested one (page does not progress)")
        if not (isinstance(head, list) and len(head) == 2 and isinstance(head[0], int)
                and not isinstance(head[0], bool) and 0 <= head[0] < 2**63
                and isinstance(head[1], bytes) and len(head[1]) == 32):
            raise MessageError("log-heads reply: a head is not [sequence number, entry ID]")
    return reply


def page_after(keys: Sequence[bytes], after: bytes | None, room: int) -> tuple[Sequence[bytes], bool]:
    """Up to ``room`` (at least one) of the sorted ``keys`` after ``after``, and whether more follow; O(log n + room)."""
    begin = 0 if after is None else bisect.bisect_right(keys, after)
    end = begin + max(1, room)
    return keys[begin:end], end < len(keys)


def entries_within(encoded: Iterable[bytes], budget: int, limit: int) -> list[bytes]:
    """The first encoded entries (at most ``limit``) whose CBOR fits ``budget`` bytes; always the first one."""
    out: list[bytes] = []
    used = 0
    for item in encoded:
        used += len(item) + ITEM_OVERHEAD
        if len(out) >= limit or (out and used > budget):
            break
        out.append(item)
    return out


def wants_field(request: dict[str, Any]) -> list[tuple[bytes, int, int]]:
    """The ``wants`` of a ``log-range`` request: 1..MAX_WANTS of [32-byte author, start >= 1, count >= 1]."""
    wants = field(request, "wants", list)
    if not 1 <= len(wants) <= MAX_WANTS:
        raise MessageError(f"field 'wants' must list 1..{MAX_WANTS} ranges, got {len(wants)}")
    out = []
    for want in wants:
        if not (isinstance(want, list) and len(want) == 3 and isinstance(want[0], bytes) and len(want[0]) == 32
                and all(isinstance(v, int) and not isinstance(v, bool) for v in want[1:])
                and 1 <= want[1] < 2**62 and 1 <= want[2] < 2**31):
            raise MessageError("each want must be [32-byte author, start >= 1, count >= 1]")
        out.append((want[0], want[1], want[2]))
    return out


def check_entries_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply listing encoded entries (byte strings); ``MessageError`` otherwise."""
    entries = field(reply, "entries", list)
    if not all(isinstance(e, bytes) for e in entries):
        raise MessageError("reply: entries must be byte strings")
    return reply


def check_push_reply(reply: dict[str, Any], count: int) -> list[str]:
    """The outcomes a ``log-push`` reply gives for ``count`` pushed entries; ``MessageError`` otherwise."""
    results = field(reply, "results", list)
    if len(results) != count or not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                                        and isinstance(r[1], str) for r in results):
        raise MessageError(f"log-push reply: results must be {count} [outcome, reason] pairs")
    return [r[0] for r in results]


#: Registrations of one blob a ``log-certified`` reply lists at most.
MAX_REGISTRATIONS = 256


def check_certified_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A ``log-certified`` reply: ``entry`` and ``invalid`` each an encoded entry or null; optionally
    ``registrations`` (encoded blob-certified entries) and ``lifetimes`` ([registration ID, end epoch,
    deleted] as that peer's log has them) and ``epoch``."""
    for name in ("entry", "invalid"):
        if reply.get(name) is not None and not isinstance(reply.get(name), bytes):
            raise MessageError(f"log-certified reply: {name!r} must be an encoded entry or null")
    registrations = reply.get("registrations", [])
    if (not isinstance(registrations, list) or len(registrations) > MAX_REGISTRATIONS
            or not all(isinstance(r, bytes) for r in registrations)):
        raise MessageError(f"log-certified reply: 'registrations' must be at most {MAX_REGISTRATIONS} entries")
    lifetimes = reply.get("lifetimes", [])
    if (not isinstance(lifetimes, list) or len(lifetimes) > MAX_REGISTRATIONS
            or not all(isinstance(x, list) and len(x) == 3 and isinstance(x[0], bytes) and len(x[0]) == 32
                       and isinstance(x[1], int) and not isinstance(x[1], bool) and 0 <= x[1] < 2**32
                       and isinstance(x[2], bool) for x in lifetimes)):
        raise MessageError("log-certified reply: 'lifetimes' must be [32-byte ID, epoch, deleted] triples")
    epoch = reply.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 2**32:
        raise MessageError("log-certified reply: 'epoch' must be a storage epoch")
    return reply

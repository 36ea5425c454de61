"""Well-formed but hostile values: every reply checker and every entry kind raises only its documented error.

A malicious member's reply decodes fine (it is canonical CBOR) and then holds values of the
wrong type, shape or size exactly where a checker looks. Each checker must turn that into its
module's documented error (``MessageError`` for replies, ``LogError`` for entries), never
``TypeError``, ``KeyError``, ``OverflowError`` or a hang, since whatever else escapes would be
the calling service's crash rather than that peer's failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.test_log import COMMITTEE, KEYS
from walrusfs.core import messages as m
from walrusfs.core import wire
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    BLOB_INVALID,
    CHALLENGE_CLOSE,
    CHALLENGE_PASS,
    CHALLENGE_REVEAL,
    CHALLENGE_START,
    GENESIS,
    NAMESPACE,
    LogError,
    check_entry,
    decode_entry,
    delegate_device,
    sign_entry,
)
from walrusfs.core.metadata import BlobMetadata, SliverPairHashes
from walrusfs.core.wire import MessageError

hostile_scalars = (st.integers(-(2**64), 2**64) | st.sampled_from([0, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
                   | st.binary(max_size=70) | st.sampled_from([b"", bytes(32), bytes(31), bytes(33)])
                   | st.text(max_size=70) | st.sampled_from(["", "0" * 64, "g" * 64, "primary"])
                   | st.booleans() | st.none() | st.floats())
hostile = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20,
)


def shaped(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Maps that mostly carry the expected keys, each with a hostile value."""
    return st.fixed_dictionaries({}, optional={k: hostile for k in keys}).flatmap(
        lambda known: st.dictionaries(st.text(max_size=8), hostile, max_size=3).map(lambda extra: {**extra, **known}))


METADATA = BlobMetadata(1, 1000, tuple(SliverPairHashes(bytes(32), bytes(32)) for _ in range(4)))

# Each reply checker with the fields it reads, and the errors it is documented to raise.
CHECKERS: dict[str, tuple[Callable[[Any], Any], list[str]]] = {
    "status": (m.check_status_reply, ["shards", "blobs", "stored_bytes", "version", "healing", "challenge",
                                      "free_bytes", "disk_full", "recent_heals"]),
    "blob-status": (m.check_blob_status_reply, ["metadata", "pairs", "valid_pairs", "confirmed", "healing", "invalid"]),
    "log-heads": (m.check_heads_reply, ["heads", "more", "after", "next"]),
    "entries": (m.check_entries_reply, ["entries", "more", "next"]),
    "log-certified": (m.check_certified_reply, ["entry", "invalid"]),
    "metadata": (lambda r: m.metadata_from_wire(r, 4), ["encoding", "length", "hashes"]),
    "proof": (lambda r: m.proof_from_wire(r, b"\0" * 64, METADATA), ["target", "target_index", "symbols"]),
    "response header": (lambda r: m.parse_response(wire.encode({**r, "v": wire.WIRE_VERSION})), ["ok", "error"]),
}


@pytest.mark.parametrize("name", list(CHECKERS))
def test_reply_checkers_raise_only_message_error(name: str) -> None:
    check, keys = CHECKERS[name]

    @given(shaped(keys))
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def run(reply: dict[str, Any]) -> None:
        try:
            check(reply)
        except (MessageError, m.RemoteError):
            pass  # the two documented outcomes: a malformed reply, or a well-formed error reply

    run()


# Entry payloads per kind; member-signed so the checks past the signature are reached.
PAYLOAD_KEYS = {
    BLOB_CERTIFIED: ["blob_id", "epoch", "signers", "signatures", "length", "encoding"],
    BLOB_INVALID: ["blob_id", "epoch", "signers", "signatures"],
    CHALLENGE_START: ["round", "nonce", "sample", "heads", "commits"],
    CHALLENGE_REVEAL: ["start", "secret"],
    CHALLENGE_PASS: ["start", "round", "seed", "peer", "signers", "signatures"],
    CHALLENGE_CLOSE: ["start", "verdicts"],
    "unknown-kind": ["x"],
}


@pytest.mark.parametrize("kind", list(PAYLOAD_KEYS))
def test_member_entries_with_hostile_payloads_raise_only_log_error(kind: str) -> None:
    @given(shaped(PAYLOAD_KEYS[kind]), st.integers(0, 2**64 - 1), st.integers(1, 2**63 - 1))
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def run(payload: dict[str, Any], hlc: int, seq: int) -> None:
        try:
            entry = sign_entry(KEYS[1], seq, GENESIS, hlc, kind, payload)
            check_entry(decode_entry(entry.encode()), COMMITTEE)
        except LogError:
            pass

    run()


VOLUME, DEVICE = SigningKey(b"\x21" * 32), SigningKey(b"\x22" * 32)
DELEGATION = delegate_device(VOLUME, bytes(DEVICE.verify_key))
OP_ARGS = ["parent", "name", "node", "new_parent", "new_name", "mode", "uid", "gid", "mtime_ns", "atime_ns",
           "ctime_ns", "size", "content", "target", "value", "base", "replaces", "last_parent", "type", "rdev"]


@given(st.sampled_from(["create", "mkdir", "symlink", "write", "unlink", "rmdir", "rename", "setattr", "setxattr",
                        "removexattr", "mknod", 7]),
       shaped(OP_ARGS), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_namespace_entries_with_hostile_ops_raise_only_log_error(kind: Any, args: dict[str, Any], wrap: bool) -> None:
    op: Any = {"kind": kind, "args": args} if wrap else args
    payload = {"volume": bytes(VOLUME.verify_key), "delegation": DELEGATION, "op": op}
    try:
        check_entry(decode_entry(sign_entry(DEVICE, 1, GENESIS, 1 << 40, NAMESPACE, payload).encode()), COMMITTEE)
    except LogError:
        pass


def timed(check: Callable[[], Any]) -> float:
    started = time.perf_counter()
    try:
        check()
    except (MessageError, LogError):
        pass
    return time.perf_counter() - started


def test_64_kib_replies_and_entries_are_checked_in_milliseconds() -> None:
    heads = {os.urandom(32).hex(): [k, os.urandom(32)] for k in range(600)}  # about 64 KiB
    cases: dict[str, Callable[[], Any]] = {
        "heads": lambda: m.check_heads_reply(wire.decode(wire.encode({"v": 1, "ok": True, "heads": heads}), 1 << 20)),
        "entries": lambda: m.check_entries_reply(wire.decode(wire.encode({"v": 1, "entries": [b"x" * 60] * 1000}), 1 << 20)),
        "random bytes": lambda: wire.decode(os.urandom(64 << 10), 1 << 20),
        "entry of random bytes": lambda: decode_entry(os.urandom(64 << 10)),
        "deep entry payload": lambda: check_entry(sign_entry(KEYS[0], 1, GENESIS, 1, CHALLENGE_START,
                                                             {"heads": [[[[[0] * 50] * 10] * 10]] * 3}), COMMITTEE),
    }
    for name, check in cases.items():
        took = timed(check)
        print(f"{name}: {took * 1000:.1f} ms")
        assert took < 0.5, name  # milliseconds in practice; 0.5 s only detects a super-linear path

"""The wire decoder: canonical CBOR only, one documented error class, time linear in the input."""

from __future__ import annotations

import time

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.core import wire
from walrusfs.core.log import LogError, decode_entry
from walrusfs.core.wire import MessageError

scalars = (st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20) | st.booleans()
           | st.none() | st.floats(allow_nan=False))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(0, 100), inner,
                                                                max_size=5),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
@settings(max_examples=300, deadline=None)
def test_every_canonical_message_decodes_to_itself(body: dict) -> None:
    message = {**body, "v": wire.WIRE_VERSION}
    assert wire.decode(wire.encode(message), 1 << 20) == message


@given(st.binary(max_size=300))
@settings(max_examples=1500, deadline=None)
def test_arbitrary_bytes_raise_only_message_error(data: bytes) -> None:
    try:
        wire.decode(data, 1 << 20)
    except MessageError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_arbitrary_entries_raise_only_log_error(data: bytes) -> None:
    try:
        decode_entry(data)
    except LogError:
        pass


def bombs() -> dict[str, bytes]:
    """Inputs that were slow or deep: nested maps as keys, deep arrays, huge counts, tags."""
    key_bomb = b"\xa0"
    for _ in range(40):
        key_bomb = b"\xa1" + key_bomb + b"\x00"
    return {
        "maps as map keys": b"\xa2\x61v\x01" + key_bomb[1:],
        "deep arrays": b"\xa1\x61v" + b"\x81" * 60_000 + b"\x01",
        "huge declared count": b"\xa1\x61v\x9b" + (2**64 - 1).to_bytes(8, "big"),
        "a tag": b"\xa1\x61v\xc1\x01",
        "indefinite map": b"\xbf\x61v\x01\xff",
        "64 KiB of one-byte items": b"\xa1\x61v\x99\xff\xff" + b"\x00" * 65535,
    }


@pytest.mark.parametrize("name", list(bombs()))
def test_hostile_inputs_are_refused_or_decoded_in_milliseconds(name: str) -> None:
    data = bombs()[name]
    started = time.perf_counter()
    try:
        wire.decode(data, 1 << 20)
    except MessageError:
        pass
    took = time.perf_counter() - started
    print(f"{name}: {len(data)} bytes in {took * 1000:.1f} ms")
    assert took < 0.5  # linear: a 64 KiB input takes milliseconds (0.5 s is only a hang detector)


def test_non_canonical_forms_are_refused() -> None:
    canonical = wire.encode({"v": 1, "a": 1, "bb": 2})
    assert wire.decode(canonical, 100) == {"v": 1, "a": 1, "bb": 2}
    for bad in (
        cbor2.dumps({"bb": 2, "a": 1, "v": 1}),  # keys out of canonical order
        b"\xa1\x61v\x18\x01",  # 1 in two bytes
        canonical + b"\x00",  # trailing bytes
    ):
        with pytest.raises(MessageError):
            wire.decode(bad, 100)

"""Capability strings: round trips, weakening, and clear refusals of anything cut or mistyped."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.core.capabilities import (
    MAX_LENGTH,
    BlobCap,
    CapabilityError,
    ReadCap,
    VerifyCap,
    WriteCap,
    format_capability,
    parse_capability,
)
from walrusfs.core.metadata import BlobId

keys = st.binary(min_size=32, max_size=32)
read_keys = st.none() | keys
capabilities = (
    st.builds(WriteCap, keys, read_keys) | st.builds(ReadCap, keys, read_keys) | st.builds(VerifyCap, keys)
    | st.builds(BlobCap, st.builds(BlobId, keys), keys)
)
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(capabilities)
@settings(max_examples=300, deadline=None)
def test_round_trip(cap) -> None:
    text = format_capability(cap)
    assert len(text) <= MAX_LENGTH and text.isascii() and " " not in text
    assert parse_capability(text) == cap
    assert parse_capability(f"  {text}\n") == cap  # pasted with a newline


@given(keys, read_keys)
@settings(max_examples=100, deadline=None)
def test_capabilities_weaken_only(seed: bytes, read_key: bytes | None) -> None:
    write = WriteCap(seed, read_key)
    read = write.read_cap()
    assert read == ReadCap(write.volume, read_key) and read.public == (read_key is None)
    assert read.verify_cap() == write.verify_cap() == VerifyCap(write.volume)
    assert str(write).startswith("walrusfs-write:v1:") and str(read).startswith("walrusfs-read:v1:")
    # The verify capability carries no key material, the read capability no signing key.
    assert seed.hex() not in repr(write) and (read_key is None or read_key.hex() not in repr(read))


@given(capabilities, st.data())
@settings(max_examples=500, deadline=None)
def test_a_changed_character_is_refused_clearly(cap, data: st.DataObject) -> None:
    text = str(cap)
    index = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.sampled_from(BASE64URL + ":.").filter(lambda c: c != text[index]))
    changed = text[:index] + replacement + text[index + 1:]
    with pytest.raises(CapabilityError) as refused:
        parse_capability(changed)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 240
    # Nothing secret is echoed back (the part names are, the values are not).
    for part in text.split(":")[2:-1]:
        assert part not in message


@given(capabilities, st.data())
@settings(max_examples=300, deadline=None)
def test_a_cut_capability_is_refused_clearly(cap, data: st.DataObject) -> None:
    text = str(cap)
    cut = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(CapabilityError, match="cut|not a walrusfs capability|version|mistyped|check"):
        parse_capability(text[:cut])


def test_messages_name_what_is_wrong() -> None:
    cap = WriteCap(bytes(range(32)), bytes(range(32, 64)))
    read = str(cap.read_cap())
    prefix, volume, read_key, check = read.rsplit(":", 3)
    cases = {
        "hello": "not a walrusfs capability",
        read.replace(":v1:", ":v2:"): "unsupported read capability version",
        f"{prefix}:{volume}:{read_key}": "3 ':'-separated parts|4 ':'-separated parts",
        f"{prefix}:{volume[:-2]}:{read_key}:{check}": "volume ID in this read capability is 41 characters",
        f"{prefix}:{volume}:{read_key[:-1]}:{check}": "read key in this read capability is 42 characters",
        f"{prefix}:{volume}:{read_key}:{check[:-1]}": "check is 5 characters",
        f"{prefix}:{volume}:{read_key}:{check[::-1]}": "check does not match",
        f"{prefix}:{volume}:{read_key.replace(read_key[5], '+')}:{check}": "characters other than",
        "x" * (MAX_LENGTH + 1): "too long",
    }
    for text, expected in cases.items():
        with pytest.raises(CapabilityError, match=expected):
            parse_capability(text)
    with pytest.raises(CapabilityError, match="is text"):
        parse_capability(b"walrusfs-read:v1")  # type: ignore[arg-type]


@given(st.text(max_size=300))
@settings(max_examples=500, deadline=None)
def test_arbitrary_text_raises_only_capability_error(text: str) -> None:
    try:
        parse_capability(text)
    except CapabilityError:
        pass


@given(st.lists(st.sampled_from(["walrusfs-read", "walrusfs-blob", "v1", "public", "", "A" * 43, "x"]),
                max_size=6))
@settings(max_examples=300, deadline=None)
def test_near_misses_raise_only_capability_error(parts: list[str]) -> None:
    try:
        parse_capability(":".join(parts))
    except CapabilityError:
        pass


def test_a_megabyte_of_junk_is_refused_fast() -> None:
    started = time.perf_counter()
    for junk in ("walrusfs-read:v1:" + ":" * (1 << 20), "A" * (1 << 20), "\u00e9" * (1 << 20)):
        with pytest.raises(CapabilityError, match="too long"):
            parse_capability(junk)
    elapsed = time.perf_counter() - started
    print(f"\n3 MB of junk refused in {elapsed * 1000:.2f} ms")
    assert elapsed < 0.5


def test_dataclasses_refuse_bad_values() -> None:
    with pytest.raises(CapabilityError):
        ReadCap(b"short", None)
    with pytest.raises(CapabilityError):
        WriteCap(bytes(32), b"x")
    with pytest.raises(CapabilityError):
        BlobCap(bytes(32), bytes(32))  # type: ignore[arg-type]

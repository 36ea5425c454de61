"""Sealing for private volumes: round trips, dedupe within a volume only, one error class on any damage."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.core import sealing
from walrusfs.core.sealing import SealError

keys = st.binary(min_size=32, max_size=32)
chunks = st.binary(max_size=4096)
names = st.text(max_size=12)
op_maps = st.fixed_dictionaries({
    "kind": st.sampled_from(["create", "mkdir", "write", "setxattr"]),
    "args": st.dictionaries(names, st.integers(0, 2**63) | st.binary(max_size=40) | names, max_size=6),
})


def _flip(data: bytes, bit: int) -> bytes:
    """``data`` with one bit flipped."""
    index = bit % (8 * len(data))
    out = bytearray(data)
    out[index // 8] ^= 1 << (index % 8)
    return bytes(out)


@given(keys, keys, chunks)
@settings(max_examples=200, deadline=None)
def test_chunk_round_trip(read_key: bytes, volume: bytes, plaintext: bytes) -> None:
    sealed = sealing.seal_chunk(read_key, volume, plaintext)
    assert len(sealed.ciphertext) == len(plaintext) + sealing.TAG_BYTES
    assert sealed.plaintext_hash == sealing.chunk_hash(plaintext)
    assert sealing.open_chunk(read_key, volume, sealed.plaintext_hash, sealed.ciphertext) == plaintext


@given(keys, keys, keys, chunks)
@settings(max_examples=200, deadline=None)
def test_identical_chunks_seal_identically_in_one_volume_only(read_key: bytes, other_key: bytes, volume: bytes,
                                                               plaintext: bytes) -> None:
    first = sealing.seal_chunk(read_key, volume, plaintext)
    assert sealing.seal_chunk(read_key, volume, plaintext) == first  # dedupe: same blob ID
    if other_key != read_key:
        other = sealing.seal_chunk(other_key, volume, plaintext)
        # Same length, but no byte pattern shared: a different volume's key shares nothing.
        assert other.ciphertext != first.ciphertext
        with pytest.raises(SealError):
            sealing.open_chunk(other_key, volume, first.plaintext_hash, first.ciphertext)


def test_ciphertext_hides_the_plaintext() -> None:
    marker = b"walrusfs-secret-marker " * 1000
    sealed = sealing.seal_chunk(os.urandom(32), os.urandom(32), marker)
    assert b"secret" not in sealed.ciphertext
    assert sealed.plaintext_hash not in sealed.ciphertext


@given(keys, keys, chunks.filter(bool), st.integers(0, 2**40), st.data())
@settings(max_examples=300, deadline=None)
def test_any_damage_to_a_chunk_raises_seal_error(read_key: bytes, volume: bytes, plaintext: bytes, bit: int,
                                                 data: st.DataObject) -> None:
    sealed = sealing.seal_chunk(read_key, volume, plaintext)
    ciphertext, digest = sealed.ciphertext, sealed.plaintext_hash
    cut = data.draw(st.integers(0, len(ciphertext) - 1))
    damaged = [
        (read_key, volume, digest, _flip(ciphertext, bit)),   # a flipped ciphertext or tag bit
        (read_key, _flip(volume, bit), digest, ciphertext),   # the AD: another volume
        (read_key, volume, _flip(digest, bit), ciphertext),   # another chunk's key and nonce
        (_flip(read_key, bit), volume, digest, ciphertext),   # a wrong read key
        (read_key, volume, digest, ciphertext[:cut]),         # truncation
        (read_key, volume, digest, ciphertext + b"\0"),       # extension
        (read_key, volume[:31], digest, ciphertext),          # malformed volume ID
    ]
    for args in damaged:
        with pytest.raises(SealError):
            sealing.open_chunk(*args)


@given(keys, keys, op_maps, st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_payload_round_trip_with_fresh_nonces(read_key: bytes, volume: bytes, op: dict, context: bytes) -> None:
    sealed = sealing.seal_payload(read_key, volume, op, context)
    assert sealing.open_payload(read_key, volume, sealed, context) == op
    # A random nonce per entry: the same op twice does not look the same to peers.
    assert sealing.seal_payload(read_key, volume, op, context) != sealed


@given(keys, keys, op_maps, st.binary(max_size=40), st.integers(0, 2**40), st.data())
@settings(max_examples=300, deadline=None)
def test_any_damage_to_a_payload_raises_seal_error(read_key: bytes, volume: bytes, op: dict, context: bytes,
                                                   bit: int, data: st.DataObject) -> None:
    sealed = sealing.seal_payload(read_key, volume, op, context)
    cut = data.draw(st.integers(0, len(sealed) - 1))
    damaged = [
        (read_key, volume, _flip(sealed, bit), context),
        (read_key, _flip(volume, bit), sealed, context),
        (read_key, volume, sealed, context + b"x"),             # moved to another entry
        (_flip(read_key, bit), volume, sealed, context),
        (read_key, volume, sealed[:cut], context),
        (read_key, volume, sealed + b"\0", context),
    ]
    if context:
        damaged.append((read_key, volume, sealed, _flip(context, bit)))
    for args in damaged:
        with pytest.raises(SealError):
            sealing.open_payload(*args)


def test_a_sealed_non_map_is_refused_with_seal_error() -> None:
    """A read-key holder sealing junk (not an op map) still yields only SealError."""
    read_key, volume = os.urandom(32), os.urandom(32)
    key = hashlib.blake2b(b"", digest_size=32, key=read_key, person=b"wfs1-ns-key").digest()
    for body in (b"", b"\xff", b"\x83\x01\x02\x03", b"\xa1\x61v\x01", b"\xa2\x62op\x01\x61v\x01"):
        nonce = os.urandom(sealing.NONCE_BYTES)
        from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt as encrypt

        ad = sealing._payload_ad(volume, b"")
        with pytest.raises(SealError):
            sealing.open_payload(read_key, volume, nonce + encrypt(body, ad, nonce, key))


@given(st.binary(max_size=2000), keys, keys)
@settings(max_examples=300, deadline=None)
def test_openers_raise_only_seal_error_on_junk(junk: bytes, read_key: bytes, volume: bytes) -> None:
    for opener in (lambda: sealing.open_chunk(read_key, volume, junk[:32].ljust(32, b"\0"), junk),
                   lambda: sealing.open_payload(read_key, volume, junk),
                   lambda: sealing.open_blob(read_key, junk)):
        with pytest.raises(SealError):
            opener()


def test_junk_of_a_megabyte_is_refused_fast() -> None:
    junk = os.urandom(1 << 20)
    read_key, volume = os.urandom(32), os.urandom(32)
    started = time.perf_counter()
    for opener in (lambda: sealing.open_chunk(read_key, volume, junk[:32], junk),
                   lambda: sealing.open_payload(read_key, volume, junk),
                   lambda: sealing.open_payload(read_key, volume, junk * 2),
                   lambda: sealing.open_blob(read_key, junk)):
        with pytest.raises(SealError):
            opener()
    elapsed = time.perf_counter() - started
    print(f"\n4 MB of junk refused in {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


@given(keys, st.binary(max_size=4096), st.integers(0, 2**40))
@settings(max_examples=200, deadline=None)
def test_blob_round_trip_and_damage(key: bytes, plaintext: bytes, bit: int) -> None:
    sealed = sealing.seal_blob(key, plaintext)
    assert sealing.open_blob(key, sealed) == plaintext
    for bad_key, bad in ((key, _flip(sealed, bit)), (_flip(key, bit), sealed), (key, sealed[:-1])):
        with pytest.raises(SealError):
            sealing.open_blob(bad_key, bad)


def test_bad_key_lengths_raise_seal_error() -> None:
    with pytest.raises(SealError, match="read key must be 32 bytes"):
        sealing.seal_chunk(b"short", os.urandom(32), b"x")
    with pytest.raises(SealError, match="volume ID must be 32 bytes"):
        sealing.seal_payload(os.urandom(32), b"", {"kind": "mkdir", "args": {}})


def test_throughput_of_4_mib_chunks() -> None:
    """Seal/open cost against one plain BLAKE2b pass over the same bytes (issue 17: encrypted >= 0.9x public)."""
    chunk = os.urandom(4 << 20)
    read_key, volume = os.urandom(32), os.urandom(32)
    rounds = 5

    def rate(work) -> float:
        work()  # warm up
        started = time.perf_counter()
        for _ in range(rounds):
            work()
        return rounds * len(chunk) / (time.perf_counter() - started) / 1e6

    sealed = sealing.seal_chunk(read_key, volume, chunk)
    seal = rate(lambda: sealing.seal_chunk(read_key, volume, chunk))
    opened = rate(lambda: sealing.open_chunk(read_key, volume, sealed.plaintext_hash, sealed.ciphertext))
    plain_hash = rate(lambda: hashlib.blake2b(chunk, digest_size=32).digest())
    print(f"\n4 MiB chunks: seal {seal:.0f} MB/s (hash + encrypt), open {opened:.0f} MB/s, "
          f"plain BLAKE2b {plain_hash:.0f} MB/s")
    assert seal > 50 and opened > 50  # a sanity floor only: the machine is shared

"""Recovery symbols, sliver rebuilding, consistency checks and inconsistency proofs."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHARD_COUNTS, blob_bytes, blobs
from walrusfs.core import wire
from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import (
    CodecError,
    InconsistentBlob,
    InvalidParameter,
    InvalidProof,
    NotEnoughSymbols,
    VerificationError,
)
from walrusfs.core.messages import proof_from_wire, proof_to_wire
from walrusfs.core.recovery import (
    InconsistencyProof,
    RecoverySymbol,
    find_inconsistency,
    needed_symbols,
    rebuild_sliver,
    recovery_symbol,
    recovery_symbols,
    verify_inconsistency_proof,
    verify_recovery_symbol,
)
from walrusfs.core.redstuff import (
    Axis,
    EncodedBlob,
    Sliver,
    check_consistency,
    encode_blob,
    read_blob,
    verify_sliver,
)
from walrusfs.testing import encode_inconsistent

codec_settings = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sliver(encoded: EncodedBlob, axis: Axis, index: int) -> Sliver:
    n = len(encoded.pairs)
    if axis is Axis.PRIMARY:
        return encoded.pairs[index].primary
    return encoded.pairs[n - 1 - index].secondary


def symbols_for(encoded: EncodedBlob, target: Axis, target_index: int, sources: list[int]) -> list[RecoverySymbol]:
    source_axis = Axis.SECONDARY if target is Axis.PRIMARY else Axis.PRIMARY
    config = encoded.metadata.config
    return [recovery_symbol(config, sliver(encoded, source_axis, j), target_index) for j in sources]


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_any_lost_sliver_is_rebuilt_bit_exactly(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    encoded = encode_blob(data.draw(blobs(n)), config)
    target = data.draw(st.sampled_from(list(Axis)))
    t = data.draw(st.integers(0, n - 1))
    sources = data.draw(st.permutations(range(n)))[: needed_symbols(config, target)]
    symbols = symbols_for(encoded, target, t, sources)
    for sym in symbols:
        verify_recovery_symbol(encoded.metadata, sym)
    assert rebuild_sliver(encoded.metadata, target, t, symbols) == sliver(encoded, target, t)


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_any_flipped_byte_in_a_symbol_or_proof_is_rejected(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    encoded = encode_blob(data.draw(blobs(n)), config)
    target = data.draw(st.sampled_from(list(Axis)))
    t = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1))
    (sym,) = symbols_for(encoded, target, t, [j])
    field = data.draw(st.sampled_from(["data", "proof"]))
    bit = 1 << data.draw(st.integers(0, 7))
    if field == "data":
        value = bytearray(sym.data)
        value[data.draw(st.integers(0, len(value) - 1))] ^= bit
        bad = dataclasses.replace(sym, data=bytes(value))
    else:
        k = data.draw(st.integers(0, len(sym.proof) - 1))
        node = bytearray(sym.proof[k])
        node[data.draw(st.integers(0, 31))] ^= bit
        bad = dataclasses.replace(sym, proof=sym.proof[:k] + (bytes(node),) + sym.proof[k + 1 :])
    with pytest.raises(VerificationError, match="fails its Merkle proof"):
        verify_recovery_symbol(encoded.metadata, bad)
    # Rebuilding skips the bad symbol: with only the needed count, one bad one is too few.
    others = [x for x in range(n) if x != j][: needed_symbols(config, target) - 1]
    with pytest.raises(NotEnoughSymbols):
        rebuild_sliver(encoded.metadata, target, t, [bad, *symbols_for(encoded, target, t, others)])


def test_symbols_claiming_another_place_are_rejected() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(blob_bytes(3, 20_000), config)
    (sym,) = symbols_for(encoded, Axis.PRIMARY, 2, [4])
    for forged in (
        dataclasses.replace(sym, source_index=5),
        dataclasses.replace(sym, target_index=3),
        dataclasses.replace(sym, target=Axis.SECONDARY),
    ):
        with pytest.raises(VerificationError):
            verify_recovery_symbol(encoded.metadata, forged)


def test_malformed_symbols_raise_codec_errors() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(blob_bytes(4, 5_000), config)
    (sym,) = symbols_for(encoded, Axis.SECONDARY, 1, [0])
    cases = {
        "needs 3": dataclasses.replace(sym, proof=sym.proof[:-1]),
        "32 bytes": dataclasses.replace(sym, proof=sym.proof[:-1] + (b"\x00" * 5,)),
        "implies": dataclasses.replace(sym, data=sym.data[:-2]),
        "source": dataclasses.replace(sym, source_index=7),
        "target": dataclasses.replace(sym, target_index=-1),
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidParameter, match=message):
            verify_recovery_symbol(encoded.metadata, bad)
    with pytest.raises(InvalidParameter, match="target secondary sliver index"):
        recovery_symbols(config, encoded.pairs[0].primary, [9])
    with pytest.raises(CodecError):
        rebuild_sliver(encoded.metadata, Axis.PRIMARY, 99, [])


def test_duplicate_symbols_do_not_count_twice() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(blob_bytes(5, 9_000), config)
    symbols = symbols_for(encoded, Axis.SECONDARY, 6, [0, 1])
    with pytest.raises(NotEnoughSymbols, match="needs 3 valid"):
        rebuild_sliver(encoded.metadata, Axis.SECONDARY, 6, symbols + symbols)


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_an_inconsistent_writer_is_caught_with_a_verifiable_proof(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    blob = data.draw(blobs(n))
    k = data.draw(st.integers(0, n - 1))
    bad = encode_inconsistent(blob, config, k)
    # Every sliver the malicious writer sent verifies against its own metadata...
    for pair in bad.pairs:
        verify_sliver(bad.metadata, pair.primary)
        verify_sliver(bad.metadata, pair.secondary)
    # ...but rebuilding the tampered primary sliver from the columns exposes it.
    sources = data.draw(st.permutations(range(n)))[:s]
    with pytest.raises(InconsistentBlob) as caught:
        rebuild_sliver(bad.metadata, Axis.PRIMARY, k, symbols_for(bad, Axis.PRIMARY, k, sources))
    proof = caught.value.proof
    assert isinstance(proof, InconsistencyProof)
    verify_inconsistency_proof(bad.metadata, proof)
    # The same proof means nothing for an honest encoding of the same bytes.
    honest = encode_blob(blob, config)
    honest_proof = InconsistencyProof(Axis.PRIMARY, k, tuple(symbols_for(honest, Axis.PRIMARY, k, sources)))
    with pytest.raises(InvalidProof, match="exactly as committed"):
        verify_inconsistency_proof(honest.metadata, honest_proof)
    with pytest.raises(InvalidProof):
        verify_inconsistency_proof(honest.metadata, proof)
    # A reader that decodes around a tampered systematic row, or through a tampered parity
    # row, fails the consistency check instead of returning bytes. Decoding through parity
    # row k with systematic rows 0..p-2 corrupts only row p-1, column 0; when that lies in
    # the zero padding past the blob's end, the honest bytes come out, which is also right.
    others = [r for r in range(n) if r != k]
    rows = [k, *others[: p - 1]] if k >= p else others[-p:]
    chosen = [bad.pairs[r].primary for r in rows]
    if k < p or len(blob) > (p - 1) * config.primary_sliver_size(len(blob)):
        with pytest.raises(InconsistentBlob):
            read_blob(bad.metadata, chosen)
    else:
        assert read_blob(bad.metadata, chosen) == blob
    # Strict mode recomputes the blob ID and catches the writer whatever the reader fetched.
    with pytest.raises(InconsistentBlob, match="blob ID"):
        read_blob(bad.metadata, chosen, strict=True)


def test_inconsistency_proofs_with_wrong_shape_are_invalid() -> None:
    config = EncodingConfig(7)
    bad = encode_inconsistent(blob_bytes(6, 40_000), config, 5)
    symbols = symbols_for(bad, Axis.PRIMARY, 5, [0, 1, 2, 3, 4])
    verify_inconsistency_proof(bad.metadata, InconsistencyProof(Axis.PRIMARY, 5, tuple(symbols)))
    wrong = {
        "exactly 5": tuple(symbols[:4]),
        "repeats": (*symbols[:4], symbols[0]),
        "different target": (*symbols[:4], symbols_for(bad, Axis.PRIMARY, 4, [6])[0]),
        "invalid symbol": (*symbols[:4], dataclasses.replace(symbols[4], data=bytes(len(symbols[4].data)))),
    }
    for message, syms in wrong.items():
        with pytest.raises(InvalidProof, match=message):
            verify_inconsistency_proof(bad.metadata, InconsistencyProof(Axis.PRIMARY, 5, syms))
    with pytest.raises(InvalidProof, match="index"):
        verify_inconsistency_proof(bad.metadata, InconsistencyProof(Axis.PRIMARY, 7, tuple(symbols)))


def test_consistency_check_modes_on_decoded_bytes() -> None:
    config = EncodingConfig(10)
    blob = blob_bytes(8, 100_000)
    honest = encode_blob(blob, config)
    check_consistency(honest.metadata, blob)
    check_consistency(honest.metadata, blob, strict=True)
    wrong = bytearray(blob)
    wrong[-1] ^= 1
    with pytest.raises(InconsistentBlob, match="primary sliver 3"):
        check_consistency(honest.metadata, bytes(wrong))
    with pytest.raises(InconsistentBlob, match="blob ID"):
        check_consistency(honest.metadata, bytes(wrong), strict=True)
    with pytest.raises(InconsistentBlob, match="bytes"):
        check_consistency(honest.metadata, blob[:-1])


@pytest.mark.parametrize("n", (4, 7, 10, 13))
@codec_settings
@given(data=st.data())
def test_a_reader_holding_any_decodable_slivers_can_prove_inconsistency(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    blob = blob_bytes(data.draw(st.integers(0, 2**32)), data.draw(st.integers(0, 200_000)))
    k = data.draw(st.integers(0, n - 1))
    bad = encode_inconsistent(blob, config, k)
    honest = encode_blob(blob, config)
    if data.draw(st.booleans()):
        rows = data.draw(st.permutations(range(n)))[:p]
        given_bad, given_honest = [bad.pairs[r].primary for r in rows], [honest.pairs[r].primary for r in rows]
    else:
        columns = data.draw(st.permutations(range(n)))[:s]
        given_bad = [sliver(bad, Axis.SECONDARY, c) for c in columns]
        given_honest = [sliver(honest, Axis.SECONDARY, c) for c in columns]
    proof = find_inconsistency(bad.metadata, given_bad)
    assert proof is not None
    verify_inconsistency_proof(bad.metadata, proof)
    # The proof crosses the wire intact and only means something for this metadata.
    fields, body = proof_to_wire(proof)
    assert proof_from_wire(wire.decode(wire.encode({"v": wire.WIRE_VERSION, **fields}), 1 << 20), body, bad.metadata) == proof
    assert find_inconsistency(honest.metadata, given_honest) is None


def test_malformed_proofs_on_the_wire_are_refused() -> None:
    config = EncodingConfig(7)
    bad = encode_inconsistent(blob_bytes(8, 30_000), config, 5)
    proof = find_inconsistency(bad.metadata, [bad.pairs[r].primary for r in (0, 1, 2)])
    assert proof is not None
    fields, body = proof_to_wire(proof)
    cases = {
        "body": (fields, body[:-2]),
        "target": ({**fields, "target": "sideways"}, body),
        "index": ({**fields, "target_index": 7}, body),
        "source": ({**fields, "symbols": [[9, []]] + fields["symbols"][1:]}, body),
        "hashes": ({**fields, "symbols": [[0, [b"short"]]] + fields["symbols"][1:]}, body),
    }
    for name, (f, b) in cases.items():
        with pytest.raises(wire.MessageError):
            proof_from_wire(f, b, bad.metadata)
        assert name

"""Merkle trees and proofs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walrusfs.core import merkle
from walrusfs.core.errors import InvalidParameter


def test_small_trees_by_hand() -> None:
    h = merkle.blake2b256
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = (h(b"\x00" + x) for x in (a, b, c))
    assert merkle.root([]) == bytes(32)
    assert merkle.root([a]) == la
    assert merkle.root([a, b]) == h(b"\x01" + la + lb)
    # An odd level is padded with an all-zero node.
    assert merkle.root([a, b, c]) == h(b"\x01" + h(b"\x01" + la + lb) + h(b"\x01" + lc + bytes(32)))


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70), st.data())
def test_every_leaf_proves_and_nothing_else_does(items: list[bytes], data: st.DataObject) -> None:
    level = b"".join(merkle.leaf_hash(x) for x in items)
    root = merkle.root_of_level(level)
    assert root == merkle.root(items)
    index = data.draw(st.integers(0, len(items) - 1))
    proof = merkle.proof_from_level(level, index)
    assert len(proof) == merkle.proof_length(len(items))
    assert merkle.verify_proof(root, items[index], index, proof, len(items))
    assert not merkle.verify_proof(root, items[index] + b"x", index, proof, len(items))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(proof[k])
        bad[bit % 32] ^= 1 << (bit % 8)
        forged = proof[:k] + (bytes(bad),) + proof[k + 1 :]
        assert not merkle.verify_proof(root, items[index], index, forged, len(items))


def test_malformed_proofs_raise() -> None:
    items = [bytes([k]) for k in range(10)]
    level = b"".join(merkle.leaf_hash(x) for x in items)
    proof = merkle.proof_from_level(level, 3)
    with pytest.raises(InvalidParameter, match="needs 4"):
        merkle.root_from_proof(merkle.leaf_hash(items[3]), 3, proof[:-1], 10)
    with pytest.raises(InvalidParameter, match="32 bytes"):
        merkle.root_from_proof(merkle.leaf_hash(items[3]), 3, proof[:-1] + (b"short",), 10)
    with pytest.raises(InvalidParameter, match="out of range"):
        merkle.root_from_proof(merkle.leaf_hash(items[3]), 10, proof, 10)
    with pytest.raises(InvalidParameter):
        merkle.proof_from_level(level, -1)
    with pytest.raises(InvalidParameter):
        merkle.root_of_level(b"\x00" * 33)

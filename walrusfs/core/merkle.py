"""Blake2b-256 Merkle trees as Walrus builds them.

leaf = H(0x00 || data), inner = H(0x01 || left || right); a level with an odd number of
nodes is padded with an all-zero node; the empty tree's root is all zeros. A proof lists the
sibling hashes from the leaf up to the root.

Levels are kept as one contiguous ``bytes`` of 32-byte digests: hashing a 64-byte slice of
it is the cheapest inner-node step CPython offers, and n = 1000 needs about three million
of them per blob.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b

from .errors import InvalidParameter

DIGEST_SIZE = 32
ZERO_NODE = bytes(DIGEST_SIZE)

# Copying a pre-fed hasher skips re-hashing the prefix byte and is measurably faster than
# building b"\x00" + data for every leaf.
_LEAF = blake2b(b"\x00", digest_size=DIGEST_SIZE)
_NODE = blake2b(b"\x01", digest_size=DIGEST_SIZE)


def blake2b256(data: bytes) -> bytes:
    """Blake2b with a 32-byte digest, the hash Walrus uses everywhere."""
    return blake2b(data, digest_size=DIGEST_SIZE).digest()


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf: H(0x00 || data)."""
    h = _LEAF.copy()
    h.update(data)
    return h.digest()


def leaf_hasher() -> blake2b:
    """A fresh leaf hasher (H(0x00 || ...)): feed a leaf's data in pieces, then ``digest()``."""
    return _LEAF.copy()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an inner node: H(0x01 || left || right)."""
    h = _NODE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def leaf_hashes(items: Iterable[bytes]) -> bytes:
    """Leaf hashes of ``items``, concatenated into one level buffer."""
    copy = _LEAF.copy
    out = []
    append = out.append
    for item in items:
        h = copy()
        h.update(item)
        append(h.digest())
    return b"".join(out)


def _next_level(level: bytes) -> bytes:
    copy = _NODE.copy
    out = []
    append = out.append
    if len(level) % (2 * DIGEST_SIZE):
        level += ZERO_NODE
    for start in range(0, len(level), 2 * DIGEST_SIZE):
        h = copy()
        h.update(level[start : start + 2 * DIGEST_SIZE])
        append(h.digest())
    return b"".join(out)


def root_of_level(level: bytes) -> bytes:
    """Merkle root over leaf hashes given as one concatenated ``bytes``."""
    if len(level) % DIGEST_SIZE:
        raise InvalidParameter("leaf hash buffer length must be a multiple of 32")
    if not level:
        return ZERO_NODE
    while len(level) > DIGEST_SIZE:
        level = _next_level(level)
    return level


def root(items: Iterable[bytes]) -> bytes:
    """Merkle root over raw leaf data items."""
    return root_of_level(leaf_hashes(items))


def proof_length(n_leaves: int) -> int:
    """Number of sibling hashes in a proof for a tree of ``n_leaves`` leaves."""
    return max(n_leaves - 1, 0).bit_length()


def proof_from_level(level: bytes, index: int) -> tuple[bytes, ...]:
    """Sibling hashes, leaf to root, for leaf ``index`` of a tree given by its leaf hashes."""
    count = len(level) // DIGEST_SIZE
    if not 0 <= index < count:
        raise InvalidParameter(f"leaf index {index} out of range for {count} leaves")
    siblings = []
    while len(level) > DIGEST_SIZE:
        if len(level) % (2 * DIGEST_SIZE):
            level += ZERO_NODE
        sibling = index ^ 1
        siblings.append(level[sibling * DIGEST_SIZE : (sibling + 1) * DIGEST_SIZE])
        level = _next_level(level)
        index >>= 1
    return tuple(siblings)


def root_from_proof(leaf: bytes, index: int, siblings: Sequence[bytes], n_leaves: int) -> bytes:
    """Root implied by a leaf hash at ``index`` and its sibling path; checks shape, not value."""
    if not 0 <= index < n_leaves:
        raise InvalidParameter(f"leaf index {index} out of range for {n_leaves} leaves")
    expected = proof_length(n_leaves)
    if len(siblings) != expected:
        raise InvalidParameter(
            f"Merkle proof has {len(siblings)} hashes, a tree of {n_leaves} leaves needs {expected}"
        )
    node = leaf
    for sibling in siblings:
        if len(sibling) != DIGEST_SIZE:
            raise InvalidParameter(f"Merkle proof hash must be 32 bytes, got {len(sibling)}")
        node = node_hash(sibling, node) if index & 1 else node_hash(node, sibling)
        index >>= 1
    return node


def verify_proof(
    expected_root: bytes, data: bytes, index: int, siblings: Sequence[bytes], n_leaves: int
) -> bool:
    """True when ``data`` is leaf ``index`` of the tree with root ``expected_root``."""
    return root_from_proof(leaf_hash(data), index, siblings, n_leaves) == expected_root

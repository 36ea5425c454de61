"""Recovery symbols, sliver rebuilding and inconsistency proofs (RedStuff self-healing).

To rebuild primary sliver t (row t), a peer collects symbol t of s secondary slivers
expanded to n symbols (cells (t, j) of the expanded matrix), each with a Merkle proof against
that column's commitment, and decodes the row. To rebuild secondary sliver t (column t) it
collects symbol t of p expanded primary slivers. Either way it downloads about one sliver's
worth of data, not the blob.

If the rebuilt sliver does not match its commitment, the writer encoded inconsistently and
the verified symbols themselves are the proof: anyone holding the metadata can decode them
and watch the root come out wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import merkle
from .config import EncodingConfig
from .errors import (
    InconsistentBlob,
    InvalidParameter,
    InvalidProof,
    NotEnoughSymbols,
    VerificationError,
)
from .metadata import BlobMetadata
from .redstuff import (
    Axis,
    Sliver,
    _decode_symbols,
    commitment,
    expanded_sliver,
    sliver_root,
)

_OTHER = {Axis.PRIMARY: Axis.SECONDARY, Axis.SECONDARY: Axis.PRIMARY}


@dataclass(frozen=True)
class RecoverySymbol:
    """Cell of the expanded matrix that helps rebuild sliver ``target_index`` on axis ``target``.

    It comes from sliver ``source_index`` on the other axis, and ``proof`` proves it is leaf
    ``target_index`` of that sliver's committed Merkle tree.
    """

    target: Axis
    target_index: int
    source_index: int
    data: bytes
    proof: tuple[bytes, ...]

    @property
    def source_axis(self) -> Axis:
        """Axis of the sliver this symbol was taken from."""
        return _OTHER[self.target]


def needed_symbols(config: EncodingConfig, target: Axis) -> int:
    """Recovery symbols needed to rebuild a sliver on ``target``: s for primary, p for secondary."""
    if target is Axis.PRIMARY:
        return config.secondary_source_symbols
    return config.primary_source_symbols


def recovery_symbols(config: EncodingConfig, sliver: Sliver, targets: Iterable[int]) -> list[RecoverySymbol]:
    """Symbols a holder of ``sliver`` sends to rebuild slivers ``targets`` on the other axis."""
    expanded = expanded_sliver(config, sliver)
    level = merkle.leaf_hashes(expanded)
    target_axis = _OTHER[sliver.axis]
    out = []
    for t in targets:
        config.check_index(t, f"target {target_axis.value} sliver")
        out.append(
            RecoverySymbol(target_axis, t, sliver.index, expanded[t], merkle.proof_from_level(level, t))
        )
    return out


def recovery_symbol(config: EncodingConfig, sliver: Sliver, target_index: int) -> RecoverySymbol:
    """The symbol a holder of ``sliver`` sends to rebuild sliver ``target_index`` of the other axis."""
    return recovery_symbols(config, sliver, [target_index])[0]


def verify_recovery_symbol(metadata: BlobMetadata, symbol: RecoverySymbol) -> None:
    """Raise ``VerificationError`` (or ``InvalidParameter``) unless the symbol and its proof are valid."""
    config = metadata.config
    if not isinstance(symbol.target, Axis):
        raise InvalidParameter(f"recovery symbol target must be an Axis, got {symbol.target!r}")
    config.check_index(symbol.target_index, "recovery symbol target")
    config.check_index(symbol.source_index, "recovery symbol source")
    if not isinstance(symbol.data, bytes) or len(symbol.data) != metadata.symbol_size:
        size = len(symbol.data) if isinstance(symbol.data, (bytes, bytearray)) else None
        raise InvalidParameter(
            f"recovery symbol has {size} bytes, the metadata implies {metadata.symbol_size}"
        )
    root = merkle.root_from_proof(
        merkle.leaf_hash(symbol.data), symbol.target_index, symbol.proof, config.n_shards
    )
    if root != commitment(metadata, symbol.source_axis, symbol.source_index):
        raise VerificationError(
            f"recovery symbol from {symbol.source_axis.value} sliver {symbol.source_index} "
            f"for {symbol.target.value} sliver {symbol.target_index} fails its Merkle proof"
        )


@dataclass(frozen=True)
class InconsistencyProof:
    """Verified symbols that decode sliver ``target_index`` to something its commitment rejects."""

    target: Axis
    target_index: int
    symbols: tuple[RecoverySymbol, ...]


def _decode_target(metadata: BlobMetadata, target: Axis, target_index: int, symbols: list[RecoverySymbol]) -> Sliver:
    config = metadata.config
    known = {sym.source_index: sym.data for sym in symbols}
    data = b"".join(_decode_symbols(known, needed_symbols(config, target), config.n_shards))
    return Sliver(target, target_index, metadata.symbol_size, data)


def _checked(metadata: BlobMetadata, target: Axis, target_index: int, symbols: Iterable[RecoverySymbol]) -> list[RecoverySymbol]:
    """Distinct, individually verified symbols for the given target; invalid ones are dropped."""
    by_source: dict[int, RecoverySymbol] = {}
    for sym in symbols:
        if sym.target is not target or sym.target_index != target_index or sym.source_index in by_source:
            continue
        try:
            verify_recovery_symbol(metadata, sym)
        except (VerificationError, InvalidParameter):
            continue
        by_source[sym.source_index] = sym
    return [by_source[k] for k in sorted(by_source)]


def rebuild_sliver(
    metadata: BlobMetadata, target: Axis, target_index: int, symbols: Iterable[RecoverySymbol]
) -> Sliver:
    """Rebuild a lost sliver from recovery symbols; invalid or duplicate symbols are skipped.

    Raises ``NotEnoughSymbols`` when fewer than the needed valid symbols were given, and
    ``InconsistentBlob`` carrying an ``InconsistencyProof`` in ``.proof`` when the rebuilt
    sliver contradicts its commitment.
    """
    config = metadata.config
    config.check_index(target_index, f"target {target.value} sliver")
    needed = needed_symbols(config, target)
    valid = _checked(metadata, target, target_index, symbols)
    if len(valid) < needed:
        raise NotEnoughSymbols(
            f"rebuilding {target.value} sliver {target_index} needs {needed} valid recovery "
            f"symbols, got {len(valid)}"
        )
    chosen = valid[:needed]
    sliver = _decode_target(metadata, target, target_index, chosen)
    if sliver_root(config, sliver) != commitment(metadata, target, target_index):
        raise InconsistentBlob(
            f"rebuilt {target.value} sliver {target_index} does not match its commitment: "
            "the writer encoded this blob inconsistently",
            proof=InconsistencyProof(target, target_index, tuple(chosen)),
        )
    return sliver


def verify_inconsistency_proof(metadata: BlobMetadata, proof: InconsistencyProof) -> None:
    """Raise ``InvalidProof`` unless ``proof`` shows the blob was encoded inconsistently."""
    config = metadata.config
    try:
        config.check_index(proof.target_index, "inconsistency proof target")
    except InvalidParameter as exc:
        raise InvalidProof(str(exc)) from exc
    needed = needed_symbols(config, proof.target)
    if len(proof.symbols) != needed:
        raise InvalidProof(
            f"an inconsistency proof for a {proof.target.value} sliver holds exactly {needed} "
            f"symbols, got {len(proof.symbols)}"
        )
    sources = set()
    for sym in proof.symbols:
        if sym.target is not proof.target or sym.target_index != proof.target_index:
            raise InvalidProof("inconsistency proof mixes symbols for different target slivers")
        if sym.source_index in sources:
            raise InvalidProof(f"inconsistency proof repeats source sliver {sym.source_index}")
        sources.add(sym.source_index)
        try:
            verify_recovery_symbol(metadata, sym)
        except (VerificationError, InvalidParameter) as exc:
            raise InvalidProof(f"inconsistency proof holds an invalid symbol: {exc}") from exc
    sliver = _decode_target(metadata, proof.target, proof.target_index, list(proof.symbols))
    if sliver_root(config, sliver) == commitment(metadata, proof.target, proof.target_index):
        raise InvalidProof(
            f"the symbols rebuild {proof.target.value} sliver {proof.target_index} exactly as "
            "committed: the blob is not shown to be inconsistent"
        )


def find_inconsistency(metadata: BlobMetadata, slivers: Iterable[Sliver]) -> InconsistencyProof | None:
    """An inconsistency proof built from verified slivers of one axis, or None if they are consistent.

    A reader whose decoded blob fails its consistency check holds enough verified slivers
    (p primary or s secondary) to prove it: rebuild every sliver of the other axis from
    their recovery symbols; one that contradicts its commitment is the proof. If all of
    those match, rebuild every sliver of the first axis from them the same way.
    """
    config = metadata.config
    given = {s.index: s for s in slivers}
    if not given:
        raise InvalidParameter("find_inconsistency needs verified slivers")
    axis = next(iter(given.values())).axis
    if any(s.axis is not axis for s in given.values()):
        raise InvalidParameter("find_inconsistency takes slivers of one axis")
    sources = [given[k] for k in sorted(given)][: needed_symbols(config, _OTHER[axis])]
    if len(sources) < needed_symbols(config, _OTHER[axis]):
        raise NotEnoughSymbols(f"find_inconsistency needs {needed_symbols(config, _OTHER[axis])} {axis.value} slivers")
    for _ in range(2):
        per_source = [recovery_symbols(config, sliver, range(config.n_shards)) for sliver in sources]
        rebuilt = []
        for target in range(config.n_shards):
            try:
                rebuilt.append(rebuild_sliver(metadata, _OTHER[axis], target, [syms[target] for syms in per_source]))
            except InconsistentBlob as exc:
                return exc.proof  # type: ignore[attr-defined, no-any-return]
        axis = _OTHER[axis]
        sources = rebuilt[: needed_symbols(config, _OTHER[axis])]
    return None

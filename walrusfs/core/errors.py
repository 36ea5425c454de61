"""Exceptions raised by the pure core.

Every failure of the codec is a ``CodecError`` subclass, so callers can catch one type and
still tell a malformed input (``ValueError`` family) from a verification failure.
"""

from __future__ import annotations


class CodecError(Exception):
    """Base class of every error the RedStuff codec raises."""


class InvalidParameter(CodecError, ValueError):
    """A shard count, index, length or symbol size is out of range."""


class BlobTooLarge(InvalidParameter):
    """The blob exceeds the maximum size the encoding config supports."""


class InvalidBlobId(CodecError, ValueError):
    """A blob ID string or byte string is malformed."""


class VerificationError(CodecError):
    """Data does not match the commitment it claims to belong to."""


class NotEnoughSymbols(CodecError):
    """Too few valid slivers or recovery symbols were supplied to decode."""


class InconsistentBlob(VerificationError):
    """The writer's encoding is inconsistent: decoded data contradicts the metadata.

    When raised while rebuilding a sliver, ``proof`` holds the inconsistency proof.
    """

    def __init__(self, message: str, proof: object | None = None) -> None:
        super().__init__(message)
        self.proof = proof


class InvalidProof(VerificationError):
    """An inconsistency proof does not prove what it claims."""

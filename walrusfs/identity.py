"""A peer's Ed25519 identity: one 32-byte seed serves as libp2p identity and signing key."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from .core.committee import peer_id_from_public_key

IDENTITY_FILE = "identity.key"


class IdentityError(Exception):
    """The identity file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class Identity:
    """A peer's keys."""

    seed: bytes

    @property
    def signing_key(self) -> SigningKey:
        """PyNaCl signing key."""
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        """libp2p peer ID."""
        return peer_id_from_public_key(self.public_key)


class SeedFileError(ValueError):
    """A key file is readable by others or does not hold a 32-byte seed."""


def write_seed_file(path: Path, seed: bytes | None = None, text: str | None = None) -> bytes:
    """Write ``seed`` (default: a new random one; or ``text`` instead) to ``path`` (hex, mode 0600, fsynced).

    ``FileExistsError`` if the file is present: keys are never overwritten.
    """
    seed = os.urandom(32) if seed is None and text is None else seed or b""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write((seed.hex() if text is None else text).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return seed


def read_seed_file(path: Path) -> bytes:
    """The seed in ``path``, refusing files others can access; ``FileNotFoundError`` if absent."""
    mode = path.stat().st_mode
    text = path.read_text().strip()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SeedFileError(f"{path} is accessible by other users (mode {oct(mode & 0o777)}); chmod 600 it")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise SeedFileError(f"{path} must hold 64 hex digits (a 32-byte Ed25519 seed)")
    return seed


def create_identity(directory: Path) -> Identity:
    """Create ``directory`` (mode 0700) and a new identity in it (mode 0600); never overwrite."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / IDENTITY_FILE
    try:
        return Identity(write_seed_file(path))
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to replace a peer's identity") from None


def load_identity(directory: Path) -> Identity:
    """Load the identity in ``directory``, refusing files that others can read."""
    path = directory / IDENTITY_FILE
    try:
        return Identity(read_seed_file(path))
    except FileNotFoundError:
        raise IdentityError(f"no identity at {path}; run 'walrusfs init {directory}' first") from None
    except SeedFileError as exc:
        raise IdentityError(str(exc)) from None

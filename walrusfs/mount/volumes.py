"""Volumes: a namespace owned by an Ed25519 key, kept in the user's config directory.

A volume's ID is its public key (base64url, like blob IDs). Whoever holds the key can
delegate mount devices that write the namespace. A private volume (the default) also has
a read key: chunks and namespace ops are sealed under it, so peers hold only ciphertext.
Keys are stored as ``volumes/NAME.key`` (hex seed) and ``volumes/NAME.readkey`` (hex read
key, or ``public``), both mode 0600. A volume made before private volumes existed needs a
``.readkey`` file holding ``public``; a missing one is an error, never a guess.

Capabilities (``core.capabilities``) carry the same keys as copyable strings: a write
capability (both keys), a read capability (volume ID and read key) and a verify
capability (the volume ID alone).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

from ..core.capabilities import (
    CapabilityError,
    ReadCap,
    VerifyCap,
    WriteCap,
    parse_capability,
)
from ..core.sealing import new_key
from ..identity import SeedFileError, read_seed_file, write_seed_file

#: What NAME.readkey holds for a public volume.
PUBLIC_MARK = "public"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VolumeError(Exception):
    """A volume name, ID or key file is unusable."""


def config_dir() -> Path:
    """$WALRUSFS_CONFIG_DIR, else the user's config directory for walrusfs."""
    if os.environ.get("WALRUSFS_CONFIG_DIR"):
        return Path(os.environ["WALRUSFS_CONFIG_DIR"])
    import platformdirs

    return Path(platformdirs.user_config_dir("walrusfs"))


def format_volume_id(public_key: bytes) -> str:
    """The printable volume ID of a public key."""
    return base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()


def parse_volume_id(text: str) -> bytes:
    """The public key a volume ID names; ``VolumeError`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32 or format_volume_id(raw) != text:
        raise VolumeError(f"{text!r} is not a volume ID (43 base64url characters) or a known volume name")
    return raw


@dataclass(frozen=True)
class Volume:
    """A volume as this machine knows it: its ID, its key if this user holds it, its read key if private."""

    public_key: bytes
    name: str | None = None
    key: SigningKey | None = None
    read_key: bytes | None = field(default=None, repr=False)
    #: Whether this side knows the volume to be public (plaintext). False with no read key
    #: means only the ID is known (a verify capability, or an ID alone): names and
    #: contents of a private volume stay unreadable.
    public: bool = False

    @property
    def volume_id(self) -> str:
        """Printable ID."""
        return format_volume_id(self.public_key)

    @property
    def writable(self) -> bool:
        """Whether this machine can write the namespace."""
        return self.key is not None

    @property
    def readable(self) -> bool:
        """Whether this side can read names and contents."""
        return self.public or self.read_key is not None

    @property
    def kind(self) -> str:
        """``private``, ``public``, or ``unknown`` (no read key: a private volume cannot be read)."""
        return "private" if self.read_key is not None else "public" if self.public else "unknown"

    def capability(self, kind: str) -> WriteCap | ReadCap | VerifyCap:
        """The ``write``, ``read`` or ``verify`` capability this side can give; ``VolumeError`` if it holds less."""
        if kind == "verify":
            return VerifyCap(self.public_key)
        if not self.readable:
            raise VolumeError(f"volume {self.volume_id} is private and this side holds no read key")
        if kind == "read":
            return ReadCap(self.public_key, self.read_key)
        if self.key is None:
            raise VolumeError(f"volume {self.volume_id}: this side holds no write key")
        return WriteCap(bytes(self.key), self.read_key)


def volume_from_capability(cap: WriteCap | ReadCap | VerifyCap) -> Volume:
    """The volume a capability gives: writable, read-only or verify-only."""
    if isinstance(cap, WriteCap):
        return Volume(cap.volume, key=SigningKey(cap.signing_seed), read_key=cap.read_key,
                      public=cap.read_key is None)
    if isinstance(cap, ReadCap):
        return Volume(cap.volume, read_key=cap.read_key, public=cap.read_key is None)
    return Volume(cap.volume)


def _volumes_dir() -> Path:
    return config_dir() / "volumes"


def _read_key(path: Path) -> SigningKey:
    try:
        return SigningKey(read_seed_file(path))
    except SeedFileError as exc:
        raise VolumeError(str(exc)) from None


def _load(path: Path) -> Volume:
    """The volume whose signing key is ``path`` (NAME.key), with its read key from NAME.readkey."""
    key = _read_key(path)
    read_path = path.with_suffix(".readkey")
    try:
        if read_path.read_text().strip() == PUBLIC_MARK:
            read_key, public = None, True
        else:
            read_key, public = read_seed_file(read_path), False
    except FileNotFoundError:
        # Never guessed: reading a private volume's key file as public would write plaintext.
        raise VolumeError(f"{read_path} is missing: it holds the volume's read key (or, for a volume made "
                          f"before private volumes existed, the word {PUBLIC_MARK!r}: write that into it)") from None
    except (SeedFileError, OSError) as exc:
        raise VolumeError(str(exc)) from None
    return Volume(bytes(key.verify_key), path.stem, key, read_key, public)


def create_volume(name: str, public: bool = False, cap: WriteCap | None = None) -> Volume:
    """Make a new volume (private unless ``public``) under ``name``, or keep ``cap``'s; never overwrite one."""
    if not _NAME.match(name):
        raise VolumeError(f"volume name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    directory = _volumes_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{name}.key"
    read_path = path.with_suffix(".readkey")
    if path.exists():
        raise VolumeError(f"a volume named {name!r} already exists ({path})")
    if cap is not None:
        public = cap.read_key is None
    read_key = None if public else cap.read_key if cap is not None else new_key()
    # The read key is written first (exclusively, so two creates of one name cannot mix
    # keys): a crash before the volume key leaves an orphan read key that a new create
    # names, never a volume key without its read key.
    try:
        write_seed_file(read_path, read_key, PUBLIC_MARK if read_key is None else None)
    except FileExistsError:
        raise VolumeError(f"{read_path} exists without its volume key (a create was cut short, or another "
                          "is running); remove it and create the volume again") from None
    try:
        key = SigningKey(write_seed_file(path, cap.signing_seed if cap is not None else None))
    except FileExistsError:
        raise VolumeError(f"a volume named {name!r} already exists ({path})") from None
    return Volume(bytes(key.verify_key), name, key, read_key, read_key is None)


def list_volumes(problems: list[str] | None = None) -> list[Volume]:
    """Every volume whose key this user holds; unreadable key files are skipped (and described in ``problems``)."""
    directory = _volumes_dir()
    if not directory.is_dir():
        return []
    volumes = []
    for path in sorted(directory.glob("*.key")):
        try:
            volumes.append(_load(path))
        except VolumeError as exc:
            # One damaged key file must not hide the others.
            if problems is not None:
                problems.append(f"{path.stem}: {exc}")
    return volumes


def resolve_volume(text: str) -> Volume:
    """A volume by name, ID or capability, with its keys if this user holds them (else read-only)."""
    if text.startswith("walrusfs-"):
        try:
            cap = parse_capability(text)
        except CapabilityError as exc:
            raise VolumeError(str(exc)) from None
        if not isinstance(cap, (WriteCap, ReadCap, VerifyCap)):
            raise VolumeError("a blob capability names one blob, not a volume (read it with walrusfs read CAP)")
        return volume_from_capability(cap)
    path = _volumes_dir() / f"{text}.key"
    if _NAME.match(text) and path.is_file():
        return _load(path)
    public_key = parse_volume_id(text)
    for volume in list_volumes():
        if volume.public_key == public_key:
            return volume
    return Volume(public_key)

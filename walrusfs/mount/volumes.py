"""Volumes: a namespace owned by an Ed25519 key, kept in the user's config directory.

A volume's ID is its public key (base64url, like blob IDs). Whoever holds the key can
delegate mount devices that write the namespace; with only the ID a volume mounts
read-only. Keys are stored as ``volumes/NAME.key`` (hex seed, mode 0600).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from ..identity import SeedFileError, read_seed_file, write_seed_file

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
    """A volume as this machine knows it: its ID, and its key if this user holds it."""

    public_key: bytes
    name: str | None = None
    key: SigningKey | None = None

    @property
    def volume_id(self) -> str:
        """Printable ID."""
        return format_volume_id(self.public_key)

    @property
    def writable(self) -> bool:
        """Whether this machine can write the namespace."""
        return self.key is not None


def _volumes_dir() -> Path:
    return config_dir() / "volumes"


def _read_key(path: Path) -> SigningKey:
    try:
        return SigningKey(read_seed_file(path))
    except SeedFileError as exc:
        raise VolumeError(str(exc)) from None


def create_volume(name: str) -> Volume:
    """Make a new volume key under ``name``; never overwrite an existing one."""
    if not _NAME.match(name):
        raise VolumeError(f"volume name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    directory = _volumes_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{name}.key"
    try:
        key = SigningKey(write_seed_file(path))
    except FileExistsError:
        raise VolumeError(f"a volume named {name!r} already exists ({path})") from None
    return Volume(bytes(key.verify_key), name, key)


def list_volumes(problems: list[str] | None = None) -> list[Volume]:
    """Every volume whose key this user holds; unreadable key files are skipped (and described in ``problems``)."""
    directory = _volumes_dir()
    if not directory.is_dir():
        return []
    volumes = []
    for path in sorted(directory.glob("*.key")):
        try:
            key = _read_key(path)
        except VolumeError as exc:
            # One damaged key file must not hide the others.
            if problems is not None:
                problems.append(f"{path.stem}: {exc}")
            continue
        volumes.append(Volume(bytes(key.verify_key), path.stem, key))
    return volumes


def resolve_volume(text: str) -> Volume:
    """A volume by name or ID, with its key if this user holds it (else read-only)."""
    path = _volumes_dir() / f"{text}.key"
    if _NAME.match(text) and path.is_file():
        key = _read_key(path)
        return Volume(bytes(key.verify_key), text, key)
    public_key = parse_volume_id(text)
    for volume in list_volumes():
        if volume.public_key == public_key:
            return volume
    return Volume(public_key)

"""`walrusfs store --encrypt` and `walrusfs read CAP` against a real 4-peer devnet.

Peers get ciphertext only: the tests read every byte in every peer's directory (slivers,
SQLite and its WAL, logs) and look for a marker the plaintext repeats, and show the same
search finds it after a plain store of the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import blob_bytes
from tests.test_network import EXE, Devnet, walrusfs
from walrusfs.core import sealing
from walrusfs.core.capabilities import BlobCap, VerifyCap, parse_capability
from walrusfs.core.config import EncodingConfig
from walrusfs.core.metadata import BlobId
from walrusfs.core.redstuff import compute_metadata
from walrusfs.devnet import peer_dir

PEERS = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet"), PEERS)
    yield net
    net.down()


def store(net: Devnet, path: Path, *extra: str) -> dict:
    """``walrusfs store PATH --json`` (plus ``extra``), which must succeed."""
    result = walrusfs("store", str(path), "--json", *extra, committee=net.committee)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def read(net: Devnet, what: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """``walrusfs read WHAT`` with its stdout as bytes."""
    return subprocess.run([EXE, "read", what, *extra], capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "WALRUSFS_COMMITTEE": str(net.committee)})


def read_ok(net: Devnet, what: str, tmp_path: Path) -> bytes:
    """The bytes ``walrusfs read WHAT -o FILE`` writes."""
    out = tmp_path / "out"
    out.unlink(missing_ok=True)
    result = read(net, what, "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    return out.read_bytes()


def peer_bytes(net: Devnet) -> list[tuple[Path, bytes]]:
    """Every file in every peer's directory, whole (slivers, peer.sqlite and its -wal and -shm, logs)."""
    found = []
    for index in range(PEERS):
        for root, _, names in os.walk(peer_dir(net.directory, index)):
            for name in names:
                path = Path(root) / name
                try:
                    found.append((path, path.read_bytes()))
                except FileNotFoundError:  # a spool file renamed or removed while walking
                    continue
    return found


def holders(net: Devnet, needle: bytes) -> list[Path]:
    """The peer files that contain ``needle``."""
    return [path for path, data in peer_bytes(net) if needle in data]


@pytest.mark.parametrize("size", [0, 1000, (1 << 20) + 3], ids=["0B", "1000B", "1MiB"])
def test_encrypted_store_then_read_cap_round_trips(net: Devnet, tmp_path: Path, size: int) -> None:
    plaintext = blob_bytes(size, size)
    source = tmp_path / "source"
    source.write_bytes(plaintext)
    if size == 1000:
        # Text output: the capability is the last line, alone.
        result = walrusfs("store", str(source), "--encrypt", committee=net.committee)
        assert result.returncode == 0, result.stderr
        cap_text = result.stdout.splitlines()[-1]
        assert cap_text.startswith("walrusfs-blob:v1:")
        cap = parse_capability(cap_text)
        assert isinstance(cap, BlobCap) and f"Blob ID: {cap.blob_id}" in result.stdout
    else:
        report = store(net, source, "--encrypt")
        cap_text = report["capability"]
        cap = parse_capability(cap_text)
        assert isinstance(cap, BlobCap) and str(cap.blob_id) == report["blobId"]
        assert report["unencodedLength"] == size + sealing.BLOB_OVERHEAD == report["plaintextLength"] + 40
        assert report["encrypted"] is True
    # The blob is the ciphertext: another ID than a plain store of the file would get.
    assert cap.blob_id != compute_metadata(plaintext, EncodingConfig(PEERS)).blob_id()
    assert read_ok(net, cap_text, tmp_path) == plaintext
    if size == 1000:
        # To stdout as well, and a range of the plaintext.
        whole = read(net, cap_text)
        assert whole.returncode == 0 and whole.stdout == plaintext, whole.stderr.decode()
        part = read(net, cap_text, "--offset", "100", "--length", "50")
        assert part.returncode == 0 and part.stdout == plaintext[100:150], part.stderr.decode()


def test_peers_hold_only_ciphertext_and_the_blob_id_reads_it(net: Devnet, tmp_path: Path) -> None:
    marker = b"walrusfs-plaintext-marker-" + os.urandom(8).hex().encode() + b"|"
    plaintext = marker * (256 * 1024 // len(marker))
    source = tmp_path / "secret"
    source.write_bytes(plaintext)
    assert not holders(net, marker), "the marker is fresh: no peer can hold it yet"

    report = store(net, source, "--encrypt")
    ciphertext = read_ok(net, report["blobId"], tmp_path)
    # Plain Walrus behaviour for the blob ID: the stored bytes, which are not the plaintext.
    assert len(ciphertext) == len(plaintext) + sealing.BLOB_OVERHEAD
    assert marker not in ciphertext
    assert compute_metadata(ciphertext, EncodingConfig(PEERS)).blob_id() == BlobId.parse(report["blobId"])
    # The search sees the stored blob (pieces of its ciphertext are in the peers' files)...
    assert holders(net, ciphertext[1000:1064]), "no peer file holds the ciphertext: the search is blind"
    # ...and no peer file holds the marker.
    assert not holders(net, marker)

    # A plain store of the same file puts the marker in the peers' files, so the search can fail.
    plain = store(net, source)
    assert plain["blobId"] == str(compute_metadata(plaintext, EncodingConfig(PEERS)).blob_id())  # Walrus's ID
    found = holders(net, marker)
    assert found and any("slivers" in path.parts for path in found), found
    assert read_ok(net, report["capability"], tmp_path) == plaintext


def test_bad_capabilities_fail_with_one_clear_line(net: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"a short secret")
    report = store(net, source, "--encrypt")
    cap_text = report["capability"]
    cap = parse_capability(cap_text)
    assert isinstance(cap, BlobCap)
    key_text = cap_text.split(":")[3]

    # One character of the key changed (to another the alphabet allows): the check catches it.
    at = cap_text.index(key_text) + 10
    changed = cap_text[:at] + ("A" if cap_text[at] != "A" else "B") + cap_text[at + 1:]
    other_key = str(BlobCap(cap.blob_id, sealing.new_key()))
    cases = [
        (changed, 2, "check does not match: a character was changed"),
        (cap_text[:70], 2, "cut or mistyped"),  # cut inside the key
        (cap_text[:-6], 2, "cut or mistyped"),  # the check missing
        (other_key, 1, f"the key in this capability does not open blob {cap.blob_id}"),
        (str(VerifyCap(os.urandom(32))), 2, "volume capabilities (walrusfs-write, walrusfs-read, "
                                            "walrusfs-verify) are for `walrusfs mount --cap`"),
    ]
    for text, code, message in cases:
        result = read(net, text, "-o", str(tmp_path / "out"))
        stderr = result.stderr.decode()
        assert result.returncode == code, (text, stderr)
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and message in last, (text, stderr)
        assert "Traceback" not in stderr
        assert key_text not in stderr, "an error must not repeat the key"
        assert not (tmp_path / "out").exists(), "a failed read writes nothing"

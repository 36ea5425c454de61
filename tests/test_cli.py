"""The walrusfs command line, run as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from walrusfs import __version__
from walrusfs.core.config import EncodingConfig

REFERENCE_ID = "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY"


def walrusfs(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("walrusfs", path=str(Path(sys.executable).parent))
    assert exe, "the walrusfs console script is not installed next to this Python"
    return subprocess.run(
        [exe, *args], input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def reference_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"walrus blob id v1 regression test")
    return path


def test_blob_id_text(reference_file: Path) -> None:
    result = walrusfs("blob-id", str(reference_file), "--shards", "10")
    assert result.returncode == 0, result.stderr
    assert f"Blob ID: {REFERENCE_ID}" in result.stdout
    assert "Unencoded size: 33 bytes" in result.stdout
    assert "Encoded size: 6940 bytes" in result.stdout


def test_blob_id_json(reference_file: Path) -> None:
    result = walrusfs("blob-id", str(reference_file), "-n", "10", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "blobId": REFERENCE_ID,
        "file": str(reference_file),
        "unencodedLength": 33,
        "encodingType": "RS2",
        "nShards": 10,
        "symbolSize": 2,
        "encodedLength": 6940,
        "overheadFactor": round(6940 / 33, 3),
        "walrusCompatible": True,
    }


def test_blob_id_from_stdin() -> None:
    result = walrusfs("blob-id", "-", "--shards", "10", "--json", stdin=b"walrus blob id v1 regression test")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blobId"] == REFERENCE_ID


def test_empty_file_has_no_overhead_factor(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    report = json.loads(walrusfs("blob-id", str(empty), "-n", "4", "--json").stdout)
    assert report["unencodedLength"] == 0 and report["overheadFactor"] is None
    assert report["symbolSize"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["blob-id", "{file}", "--shards", "3"], "shard count must be between 4"),
        (["blob-id", "{file}", "--shards", "seven"], "is not a valid integer"),
        (["blob-id", "{file}"], "Missing option '--shards'"),
        (["blob-id", "/nonexistent/file", "--shards", "7"], "does not exist"),
        (["blob-id", "{dir}", "--shards", "7"], "is a directory"),
        (["no-such-command"], "No such command"),
    ],
)
def test_wrong_arguments_fail_with_usage_errors(reference_file: Path, args: list[str], message: str) -> None:
    args = [a.format(file=reference_file, dir=reference_file.parent) for a in args]
    result = walrusfs(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_blobs_beyond_walrus_limits_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "large"
    path.write_bytes(bytes(EncodingConfig(4).walrus_max_blob_size + 1))
    result = walrusfs("blob-id", str(path), "--shards", "4")
    assert result.returncode == 0, result.stderr
    assert "walrusfs extension" in result.stdout
    assert json.loads(walrusfs("blob-id", str(path), "-n", "4", "--json").stdout)["walrusCompatible"] is False


def test_file_too_large_for_one_blob(tmp_path: Path) -> None:
    big = tmp_path / "big"
    limit = EncodingConfig(4).max_blob_size
    with big.open("wb") as f:
        f.truncate(limit + 1)  # sparse: the size check comes before any read
    result = walrusfs("blob-id", str(big), "--shards", "4")
    assert result.returncode == 1
    assert f"holds at most {limit} bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help() -> None:
    assert walrusfs("--version").stdout.strip() == f"walrusfs, version {__version__}"
    help_text = walrusfs("--help").stdout
    assert "blob-id" in help_text
    assert "--shards" in walrusfs("blob-id", "--help").stdout

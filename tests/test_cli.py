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


def _committee_with(tmp_path: Path, peers: int, bad_addr: bool = False) -> Path:
    from walrusfs.core.committee import (
        Committee,
        PeerInfo,
        peer_id_from_public_key,
        render_committee,
    )

    infos = []
    for k in range(max(peers, 4)):
        key = bytes([k + 1]) * 32
        infos.append(PeerInfo(peer_id_from_public_key(key), key, (f"/ip4/127.0.0.1/tcp/{40000 + k}",), (k,)))
    text = render_committee(Committee(0, tuple(infos)))
    if peers < 4:
        text = "[[peers]]".join(text.split("[[peers]]")[: peers + 1])
    if bad_addr:
        text = text.replace("/tcp/40000", "/tcpx/40000", 1)
    path = tmp_path / "committee.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("peers", "bad_addr", "message"), [
    (3, False, "a committee needs n = 3f + 1 >= 4 shards, got 3"),
    (4, True, "peer #1: addrs: '/ip4/127.0.0.1/tcpx/40000' is not a multiaddr"),
])
def test_bad_committee_files_name_the_bad_field(tmp_path: Path, peers: int, bad_addr: bool, message: str) -> None:
    committee = _committee_with(tmp_path, peers, bad_addr)
    result = walrusfs("health", "--committee", str(committee))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_volume_list_skips_a_damaged_key_and_lists_the_rest(tmp_path: Path) -> None:
    env_dir = tmp_path / "config"
    exe = shutil.which("walrusfs", path=str(Path(sys.executable).parent))
    env = {**__import__("os").environ, "WALRUSFS_CONFIG_DIR": str(env_dir)}
    subprocess.run([exe, "volume", "create", "good"], env=env, check=True, capture_output=True, timeout=60)
    damaged = env_dir / "volumes" / "bad.key"
    damaged.write_text("not a key\n")
    damaged.chmod(0o600)
    result = subprocess.run([exe, "volume", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("good  ")
    assert "bad" in result.stderr and "Traceback" not in result.stderr


def test_ids_starting_with_a_dash_are_arguments_not_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One blob or volume ID in 64 starts with '-': pasted where an argument goes, it must not
    # be taken for an unknown option (which made such IDs unusable without a '--').
    monkeypatch.setenv("WALRUSFS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WALRUSFS_COMMITTEE", str(tmp_path / "no-committee.toml"))
    volume_id = "-" + "A" * 42
    for args in (["volume", "share", volume_id, "--verify"], ["volume", "share", "--verify", volume_id],
                 ["volume", "share", "--verify", "--", volume_id]):
        result = walrusfs(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith(f"walrusfs-verify:v1:{volume_id}:"), args
    for args in (["blob-status", volume_id, "--json"], ["read", volume_id, "-o", str(tmp_path / "out")],
                 ["read", "-o", str(tmp_path / "out"), volume_id]):
        result = walrusfs(*args)
        assert result.returncode == 2 and "no committee file" in result.stderr, (args, result.stderr)
    # A real unknown option is still one, and an option's value stays its value.
    assert "No such option '--bogus'" in walrusfs("read", volume_id, "--bogus").stderr
    result = walrusfs("read", volume_id, "-o", "-" + "B" * 42, "--committee", str(tmp_path / "none.toml"))
    assert result.returncode == 2 and "none.toml" in result.stderr, result.stderr


def test_blob_status_with_no_peer_answering_is_a_failure_not_a_missing_blob(tmp_path: Path) -> None:
    # Peers nobody could reach know nothing about whether a blob exists: exit 1, not 4.
    committee = _committee_with(tmp_path, 4)
    result = walrusfs("blob-status", "A" * 43, "--committee", str(committee))
    assert result.returncode == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert "only peers holding 0 of 4 shards answered (3 are needed to tell that it does not exist)" in last


def test_a_missing_read_key_file_is_an_error_never_a_public_volume(tmp_path: Path) -> None:
    # A volume key without its read key must not load as public: a mount would then write
    # plaintext into a private volume. An orphan read key (a create cut short) is named.
    env_dir = tmp_path / "config"
    exe = shutil.which("walrusfs", path=str(Path(sys.executable).parent))
    env = {**__import__("os").environ, "WALRUSFS_CONFIG_DIR": str(env_dir)}
    subprocess.run([exe, "volume", "create", "priv"], env=env, check=True, capture_output=True, timeout=60)
    (env_dir / "volumes" / "priv.readkey").unlink()
    result = subprocess.run([exe, "volume", "share", "priv", "--read"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "priv.readkey is missing" in result.stderr, result.stderr
    (env_dir / "volumes" / "orphan.readkey").write_text("public\n")
    result = subprocess.run([exe, "volume", "create", "orphan"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "exists without its volume key" in result.stderr, result.stderr

"""Storage peers as real processes on 127.0.0.1, driven through the walrusfs command line.

Every devnet here is a set of ``walrusfs peer`` processes started by ``walrusfs devnet up``
and stopped in teardown; faults are real stopped (or SIGKILLed) processes and peers running
a test-only lying mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import blob_bytes
from tests.ledgerkit import devnet_authority
from walrusfs.core.committee import parse_committee
from walrusfs.core.lifecycle import Authority

EXE = shutil.which("walrusfs", path=str(Path(sys.executable).parent))


def walrusfs(*args: str, committee: Path | None = None, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if committee:
        env["WALRUSFS_COMMITTEE"] = str(committee)
    result = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"walrusfs {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


class Devnet:
    """A running devnet in ``directory``."""

    def __init__(self, directory: Path, peers: int, faults: dict[int, str] | None = None, *options: str) -> None:
        self.directory = directory
        self.peers = peers
        self.committee = directory / "committee.toml"
        args = ["devnet", "up", "--peers", str(peers), *options, str(directory)]
        for index, mode in (faults or {}).items():
            args += ["--fault", f"{index}={mode}"]
        try:
            walrusfs(*args, check=True)
        except BaseException:
            self.down()  # the peers that did start must not outlive a failed setup
            raise

    def stop(self, *indices: int, kill: bool = False) -> None:
        for index in indices:
            walrusfs("devnet", "stop", str(self.directory), "--peer", str(index), *(["--kill"] if kill else []), check=True)

    def start(self, *indices: int) -> None:
        for index in indices:
            walrusfs("devnet", "start", str(self.directory), "--peer", str(index), check=True)

    def store(self, path: Path) -> subprocess.CompletedProcess[str]:
        return walrusfs("store", str(path), "--json", committee=self.committee)

    def store_ok(self, path: Path) -> dict:
        result = self.store(path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def read(self, blob_id: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return walrusfs("read", blob_id, "-o", str(out), *extra, committee=self.committee)

    def down(self) -> None:
        walrusfs("devnet", "down", str(self.directory))

    @property
    def authority(self) -> Authority:
        """The devnet's writer key (granted storage by its operator) as a client's authority."""
        return devnet_authority(self.directory)


@pytest.fixture(scope="module")
def devnet4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet4"), 4)
    yield net
    net.down()


@pytest.fixture(scope="module")
def devnet7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet7"), 7)
    yield net
    net.down()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 64 << 20], ids=["0B", "1B", "1MiB", "64MiB"])
@pytest.mark.parametrize("n", [4, 7])
def test_store_and_read_back(n: int, size: int, devnet4: Devnet, devnet7: Devnet, tmp_path: Path) -> None:
    net = devnet4 if n == 4 else devnet7
    source = tmp_path / "source"
    source.write_bytes(blob_bytes(size + n, size))
    report = net.store_ok(source)
    cert = report["certificate"]
    assert cert["shards"] >= cert["quorum"] == 2 * ((n - 1) // 3) + 1
    assert len(set(cert["signers"])) == len(cert["signers"])
    # The certificate is in the log of at least f + 1 peers before store returns.
    assert len(report["entryId"]) == 64 and len(report["loggedBy"]) >= (n - 1) // 3 + 1
    status = json.loads(walrusfs("blob-status", report["blobId"], "--json", committee=net.committee, check=True).stdout)
    assert status["certified"] and status["pointOfAvailability"]["entryId"] == report["entryId"]
    out = tmp_path / "out"
    result = net.read(report["blobId"], out)
    assert result.returncode == 0, result.stderr
    assert sha256(out) == sha256(source)
    # The blob ID is the one `walrusfs blob-id` computes offline.
    offline = walrusfs("blob-id", str(source), "--shards", str(n), "--json", check=True)
    assert json.loads(offline.stdout)["blobId"] == report["blobId"]


@pytest.mark.parametrize(("n", "down_at_store", "down_at_read"), [(4, (0,), (3,)), (7, (0, 1), (5, 6))])
def test_f_down_at_store_and_other_f_down_at_read(
    n: int, down_at_store: tuple[int, ...], down_at_read: tuple[int, ...], devnet4: Devnet, devnet7: Devnet, tmp_path: Path
) -> None:
    net = devnet4 if n == 4 else devnet7
    source = tmp_path / "source"
    source.write_bytes(blob_bytes(77, 3 << 20))
    net.stop(*down_at_store)
    try:
        report = net.store_ok(source)
        assert len(report["failures"]) == len(down_at_store)
    finally:
        net.start(*down_at_store)
    net.stop(*down_at_read)
    try:
        out = tmp_path / "out"
        result = net.read(report["blobId"], out)
        assert result.returncode == 0, result.stderr
        assert sha256(out) == sha256(source)
        # Ranges read only the rows they need, from whichever peers are up.
        ranged = net.read(report["blobId"], tmp_path / "range", "--offset", "1000000", "--length", "777")
        assert ranged.returncode == 0, ranged.stderr
        assert (tmp_path / "range").read_bytes() == source.read_bytes()[1000000:1000777]
    finally:
        net.start(*down_at_read)


def test_read_and_blob_status_errors_are_one_line_with_their_exit_codes(devnet4: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(blob_bytes(5, 10_000))
    blob = devnet4.store_ok(source)["blobId"]
    missing_dir = devnet4.read(blob, tmp_path / "no" / "such" / "dir")
    assert missing_dir.returncode == 2 and "does not exist" in missing_dir.stderr and "Traceback" not in missing_dir.stderr
    beyond = walrusfs("read", blob, "--offset", "20000", "-o", str(tmp_path / "out"), committee=devnet4.committee)
    assert beyond.returncode == 1 and "beyond the end" in beyond.stderr and "-" + "10000" not in beyond.stderr
    unknown = walrusfs("blob-status", "A" * 43, committee=devnet4.committee)
    assert unknown.returncode == 4, unknown
    known = walrusfs("blob-status", blob, committee=devnet4.committee)
    assert known.returncode == 0, known


def test_f_plus_one_down_fails_store_without_certificate(devnet4: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"not enough peers")
    devnet4.stop(2, 3)
    try:
        result = devnet4.store(source)
    finally:
        devnet4.start(2, 3)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "a certificate needs 3" in result.stderr
    assert "cannot open" in result.stderr  # names the unreachable peers and why
    assert "Traceback" not in result.stderr


def test_peer_killed_after_confirming_still_serves_after_restart(devnet4: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(blob_bytes(5, 2 << 20))
    report = devnet4.store_ok(source)
    devnet4.stop(0, kill=True)
    devnet4.start(0)
    status = json.loads(walrusfs("blob-status", report["blobId"], "--json", committee=devnet4.committee, check=True).stdout)
    peer0 = status["peers"][0]
    assert peer0["reachable"] and peer0["confirmed"] and peer0["pairs"] == peer0["pairs_expected"]
    # With two of the others down, peer 0's sliver is one of the two the read needs.
    devnet4.stop(1, 2)
    try:
        out = tmp_path / "out"
        result = devnet4.read(report["blobId"], out)
        assert result.returncode == 0, result.stderr
        assert sha256(out) == sha256(source)
    finally:
        devnet4.start(1, 2)


@pytest.mark.parametrize(
    "faults",
    [
        {0: "corrupt-slivers", 1: "wrong-metadata"},
        {2: "bad-confirmations", 3: "corrupt-slivers"},
    ],
    ids=["slivers+metadata", "confirmations+slivers"],
)
def test_f_lying_peers_cannot_corrupt_reads_or_certificates(faults: dict[int, str], tmp_path: Path) -> None:
    net = Devnet(tmp_path / "net", 7, faults)
    try:
        for k, size in enumerate([1, 100_000, 3 << 20]):
            source = tmp_path / f"source{k}"
            source.write_bytes(blob_bytes(k, size))
            report = net.store_ok(source)
            members = parse_committee(net.committee.read_text()).peers
            liars = {members[i].peer_id for i, mode in faults.items() if mode == "bad-confirmations"}
            assert not liars & set(report["certificate"]["signers"])
            assert report["certificate"]["shards"] >= 5
            for attempt in range(3):
                out = tmp_path / f"out{k}.{attempt}"
                result = net.read(report["blobId"], out, *(["--strict"] if attempt else []))
                assert result.returncode == 0, result.stderr
                assert out.read_bytes() == source.read_bytes()
    finally:
        net.down()

"""A malicious member answers every request with junk: nobody else may crash, stall or serve wrong bytes.

Peer 3 of 4 (f = 1) runs ``--fault hostile``: each reply is the honest one with fields
replaced by values of the wrong type, shape or size (huge integers, nested lists, junk
log entries, maps with non-hex keys), or a junk header, or a junk body, and once a
second it pushes the others junk log entries (random bytes, junk fields signed with its
key, impossible stamps, broken signatures). Otherwise it acts honestly (its own entries,
challenges), so every path that *reads* what it says is exercised: clients, mounts, and
the honest peers' replication and healing. Found in review (issue 15): a reply header with a CBOR tag, a log entry with a
mistyped field and a recovery-symbol proof made of integers each crashed all honest
peers. Here the honest peers must stay up through it and through a restart, with
stores certified, reads correct, mounts working and a challenge round closing with
every honest peer passed.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.mounting import MountedVolume, fsync, wait_for
from tests.procstat import rss_mib
from tests.test_network import walrusfs
from walrusfs.devnet import peer_dir, running

HOSTILE = 3
HONEST = (0, 1, 2)


def store_and_read(vol: MountedVolume, tmp_path: Path, tag: str) -> str:
    data = random.Random(tag).randbytes(300_000)
    source = tmp_path / f"blob-{tag}"
    source.write_bytes(data)
    stored = walrusfs("store", str(source), "--json", committee=vol.net.committee, timeout=120)
    assert stored.returncode == 0, stored.stderr
    blob = json.loads(stored.stdout)["blobId"]
    for k in range(3):  # several reads, so the hostile peer is asked for something
        out = tmp_path / f"out-{tag}-{k}"
        read = walrusfs("read", blob, "-o", str(out), committee=vol.net.committee, timeout=120)
        assert read.returncode == 0, read.stderr
        assert out.read_bytes() == data
    return blob


def audit_round(vol: MountedVolume) -> None:
    """A challenge round closes with every honest peer passed, though the hostile member answers junk.

    A pass needs 2f + 1 = 3 attestations: the prover's own counts as one (issue 15), so
    the two other honest peers suffice and the member that answers junk cannot hold it up.
    """
    started = time.monotonic()
    key = str(peer_dir(vol.net.directory, 0))  # only members start rounds
    begun = walrusfs("audit", "start", "--sample", "2", "--no-wait", "--json", "--key", key,
                     committee=vol.net.committee, timeout=120)
    assert begun.returncode == 0, begun.stderr
    start = json.loads(begun.stdout)["start"]
    phases = []
    while time.monotonic() - started < 90:
        status = walrusfs("audit", "status", "--json", committee=vol.net.committee, timeout=120)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        info = json.loads(status.stdout)
        assert info["start"] == start, info
        phases.append(info["phase"])
        assert info["phase"] in ("revealing", "open", "closing", "closed"), info
        if info["phase"] == "closed":
            break
        time.sleep(1)
    results = {row["peer"]: row["result"] for row in info["peers"]}
    print(f"\nchallenge round with a hostile member: {phases} in {time.monotonic() - started:.0f} s, {results}")
    assert info["phase"] == "closed", phases
    assert all(results[k] == "passed" for k in HONEST), results


def honest_alive(vol: MountedVolume) -> dict[int, int]:
    pids = running(vol.net.directory)
    assert all(k in pids for k in HONEST), f"an honest peer died: running {pids}"
    return {k: pids[k] for k in HONEST}


def test_a_hostile_member_crashes_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALRUSFS_DEBUG", "1")  # a command that fails unexpectedly shows its traceback
    vol = MountedVolume(tmp_path / "vol", 4, {HOSTILE: "hostile"})
    try:
        peak: dict[int, int] = {}
        started = time.monotonic()
        blob = store_and_read(vol, tmp_path, "first")
        for command in (["blob-status", blob, "--json"], ["log", "--json"], ["health", "--json"],
                        ["audit", "status", "--json"]):
            result = walrusfs(*command, committee=vol.net.committee, timeout=120)
            assert result.returncode in (0, 1), (command, result.stderr)  # 1: a peer is not healthy
            assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, (command, result.stderr)
        audit_round(vol)

        writer, second = vol.mount("writer"), vol.mount("second")
        files = {f"f{k}": random.Random(k).randbytes(1000 + 50_000 * k) for k in range(5)}
        for name, data in files.items():
            (writer.path / name).write_bytes(data)
            fsync(writer.path / name)
        assert wait_for(lambda: all((second.path / n).exists() and (second.path / n).read_bytes() == d
                                    for n, d in files.items()), limit=60), "the second mount did not see the files"
        fresh = vol.mount("fresh", volume=vol.read_cap, config=vol.root / "no-keys")
        for name, data in files.items():
            assert (fresh.path / name).read_bytes() == data
        for mount in (writer, second, fresh):
            assert mount.process is not None and mount.process.poll() is None, "a mount died"

        # Anti-entropy pulls from the hostile peer every few rounds; give it time.
        time.sleep(10)
        for k, pid in honest_alive(vol).items():
            peak[k] = rss_mib(pid)
        print(f"\nhonest peers up after {time.monotonic() - started:.0f} s with a hostile member; RSS MiB {peak}")
        assert max(peak.values()) < 400

        # A restart takes the same paths again (catch-up from everyone, healing).
        for k in HONEST:
            vol.net.stop(k)
            vol.net.start(k)
        time.sleep(5)
        honest_alive(vol)
        store_and_read(vol, tmp_path, "after-restart")
        report = json.loads(walrusfs("health", "--json", committee=vol.net.committee, timeout=120).stdout)
        assert all(report[k]["reachable"] for k in HONEST), report
        assert (fresh.path / "f4").read_bytes() == files["f4"]
        honest_alive(vol)
    finally:
        vol.close()

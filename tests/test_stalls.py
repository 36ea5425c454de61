"""Stalled peers: progress whenever peers holding 2f + 1 shards answer, however silent the rest are.

A stalled peer keeps its sockets open and never answers: a peer paused with SIGSTOP
(``walrusfs devnet pause``) or one running ``--fault stall`` (it accepts connections and
requests, and answers nothing). At n = 4 every position is stalled in turn, so a random
choice of peer cannot hide a dependency on one; at n = 7 two peers stall for good. Every
command must succeed with correct bytes. The subprocess timeouts only stop a hang; the
timings are printed, and the ratio targets live in ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.host import running_host
from tests.faultnet import DelayProxy, point_at, port_of
from tests.mounting import MountedVolume, fsync, wait_for
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
from walrusfs.core import messages as m
from walrusfs.core.committee import parse_committee
from walrusfs.core.metadata import BlobId
from walrusfs.devnet import peer_dir

LIMIT = 60.0  # a command that takes longer than this with f peers stalled is hung


def timed(*args: str, committee: Path) -> tuple[float, Any]:
    started = time.monotonic()
    result = walrusfs(*args, committee=committee, timeout=LIMIT)
    return time.monotonic() - started, result


def exercise_cli(net: Devnet, tmp_path: Path, stalled: list[int], tag: str,
                 committee: Path | None = None) -> dict[str, float]:
    """store, read, blob-status, log, health and audit start with ``stalled`` peers silent; their times."""
    committee = committee or net.committee
    times: dict[str, float] = {}
    data = random.Random(tag).randbytes(1 << 20)
    source = tmp_path / f"blob-{tag}"
    source.write_bytes(data)
    times["store"], stored = timed("store", str(source), "--json", committee=committee)
    assert stored.returncode == 0, stored.stderr
    blob = json.loads(stored.stdout)["blobId"]
    out = tmp_path / f"read-{tag}"
    times["read"], read = timed("read", blob, "-o", str(out), committee=committee)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == data
    times["blob-status"], status = timed("blob-status", blob, "--json", committee=committee)
    assert status.returncode == 0, status.stderr
    peers = json.loads(status.stdout)["peers"]
    for k in stalled:
        assert not peers[k]["reachable"] and "unresponsive" in peers[k]["error"], peers[k]
    times["log"], logged = timed("log", "--json", committee=committee)
    assert logged.returncode == 0, logged.stderr
    assert blob in logged.stdout
    times["health"], health = timed("health", "--json", committee=committee)
    assert health.returncode == 1  # a peer is unresponsive: not healthy, but answered in time
    report = json.loads(health.stdout)
    assert [k for k, s in enumerate(report) if not s["reachable"]] == stalled, [s.get("error") for s in report]
    member = str(peer_dir(net.directory, 0))  # only members start rounds
    times["audit start"], audit = timed("audit", "start", "--no-wait", "--sample", "1", "--key", member,
                                        committee=committee)
    # A round the previous case started may still be open: refusing is then the right answer.
    # (or, had this case's blob not reached the start's heads, too little log progress).
    assert audit.returncode == 0 or "is still" in audit.stderr or "certified since" in audit.stderr, audit.stderr
    print(f"\n{tag}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return times


@pytest.fixture(scope="module")
def net4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("stall4"), 4)
    try:
        yield net
    finally:
        net.down()


@pytest.mark.parametrize("position", range(4))
def test_every_command_works_with_any_one_of_4_peers_paused(net4: Devnet, tmp_path: Path, position: int) -> None:
    walrusfs("devnet", "pause", str(net4.directory), "--peer", str(position), check=True)
    try:
        exercise_cli(net4, tmp_path, [position], f"n4-paused-{position}")
    finally:
        walrusfs("devnet", "resume", str(net4.directory), "--peer", str(position), check=True)


def test_two_of_7_peers_stalled_for_good(tmp_path: Path) -> None:
    vol = MountedVolume(tmp_path / "vol", 7, {5: "stall", 6: "stall"})
    try:
        exercise_cli(vol.net, tmp_path, [5, 6], "n7-fault-stall")
        writer, second = vol.mount("writer"), vol.mount("second")
        files = {f"small-{k}": random.Random(k).randbytes(2000 + k) for k in range(4)}
        files["big"] = random.Random(7).randbytes(6 << 20)
        started = time.monotonic()
        for name, data in files.items():
            (writer.path / name).write_bytes(data)
            fsync(writer.path / name)
        print(f"mount at n = 7, 2 stalled: writes + fsyncs {time.monotonic() - started:.1f} s")
        assert wait_for(lambda: all((second.path / n).exists() and (second.path / n).read_bytes() == d
                                    for n, d in files.items()), limit=30), "the second mount did not see the files"
        fresh = vol.mount("fresh", volume=vol.read_cap, config=vol.root / "no-keys")
        for name, data in files.items():
            assert (fresh.path / name).read_bytes() == data
    finally:
        vol.close()


def test_healing_and_a_challenge_round_with_a_stalled_peer(tmp_path: Path) -> None:
    # n = 7, f = 2: peer 6 never answers; peer 5 is down while blobs are stored, then
    # comes back and must rebuild its slivers from the others' recovery symbols without
    # waiting for peer 6. Then a full storage-challenge round closes without peer 6, which
    # fails it; everyone else passes.
    net = Devnet(tmp_path / "net", 7, {6: "stall"})
    try:
        net.stop(5)
        blobs = []
        for k in range(2):
            source = tmp_path / f"blob-{k}"
            source.write_bytes(random.Random(k).randbytes(200_000 + k))
            blobs.append(net.store_ok(source)["blobId"])
        net.start(5)
        started = time.monotonic()

        def healed() -> bool:
            report = json.loads(walrusfs("health", "--json", committee=net.committee, timeout=LIMIT).stdout)
            h = report[5].get("healing") or {}
            return report[5]["reachable"] and h.get("missing") == 0 and h.get("held") == h.get("certified") == 2
        assert wait_for(healed, limit=120, step=2), "peer 5 did not heal while peer 6 was stalled"
        print(f"\npeer 5 healed in {time.monotonic() - started:.1f} s with peer 6 stalled")
        # A --fault stall peer answers nothing but still acts on its own (it healed its
        # slivers through its own requests and would pass); paused, it is silent for good.
        walrusfs("devnet", "pause", str(net.directory), "--peer", "6", check=True)
        took, result = timed("audit", "start", "--sample", "2", "--json", "--key", str(peer_dir(net.directory, 0)),
                             committee=net.committee)
        info = json.loads(result.stdout)
        print(f"challenge round closed in {took:.1f} s: {[row['result'] for row in info['peers']]}")
        assert info["phase"] == "closed"
        assert {row["peer"]: row["result"] for row in info["peers"]} == {**{k: "passed" for k in range(6)}, 6: "failed"}
        assert result.returncode == 1  # a peer failed the round
    finally:
        walrusfs("devnet", "resume", str(net.directory), "--peer", "6")
        net.down()


def test_a_black_hole_in_place_of_a_peer(tmp_path: Path) -> None:
    # Harder than SIGSTOP: peer 3 is a listener (--fault black-hole) that takes TCP
    # connections and never says a word, so no handshake after TCP's ever completes.
    net = Devnet(tmp_path / "net", 4, {3: "black-hole"})
    try:
        exercise_cli(net, tmp_path, [3], "n4-black-hole")
    finally:
        net.down()


def peer_blob_status(committee_path: Path, peer: int, blob: str) -> dict[str, Any]:
    """``peer``'s own blob-status answer, waited for however long it takes."""
    committee = parse_committee(committee_path.read_text())

    async def ask() -> dict[str, Any]:
        async with running_host(os.urandom(32)) as host:
            reply, _ = await Client(host, committee)._call(peer, m.GET_BLOB_STATUS, blob_id=BlobId.parse(blob).raw)
            return reply

    return trio.run(ask)


def logs_converged(committee_path: Path) -> bool:
    """Whether every peer answers with the same log heads (the same entries from every author)."""
    committee = parse_committee(committee_path.read_text())

    async def heads() -> list[Any]:
        async with running_host(os.urandom(32)) as host:
            return [reply and reply.get("heads") for _, reply, _ in await Client(host, committee).log_heads()]

    answers = trio.run(heads)
    return all(a is not None and a == answers[0] for a in answers)


def test_a_slow_peer_and_a_slow_link(tmp_path: Path) -> None:
    # Peer 1 answers everything 1 s late and sends bodies at 1 MB/s (--fault slow); the
    # clients reach peer 2 through a proxy that holds every 16 KiB for 50 ms (latency and
    # about 300 KB/s). Work goes to the fast peers; the slow ones still end up with their pairs.
    net = Devnet(tmp_path / "net", 4, {1: "slow"})
    proxy = DelayProxy(port_of(net.committee, 2), delay=0.05)
    try:
        committee = point_at(net.committee, 2, proxy.port, tmp_path / "via-proxy.toml")
        data = random.Random(5).randbytes(1 << 20)
        (tmp_path / "blob").write_bytes(data)
        took, stored = timed("store", str(tmp_path / "blob"), "--json", committee=committee)
        assert stored.returncode == 0, stored.stderr
        blob = json.loads(stored.stdout)["blobId"]
        read_took, read = timed("read", blob, "-o", str(tmp_path / "out"), committee=committee)
        assert read.returncode == 0, read.stderr
        assert (tmp_path / "out").read_bytes() == data
        assert proxy.forwarded > 0
        print(f"\nslow peer + slow link: store {took:.1f} s, read {read_took:.1f} s")
        for peer in (1, 2):
            assert wait_for(lambda: peer_blob_status(net.committee, peer, blob).get("confirmed"), limit=60, step=1), \
                f"slow peer {peer} never stored its pairs"
    finally:
        proxy.close()
        net.down()


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    volume = MountedVolume(tmp_path_factory.mktemp("stall-mount"), 4)
    try:
        yield volume
    finally:
        volume.close()


def test_mount_works_with_any_one_peer_paused_and_each_catches_up(vol: MountedVolume, tmp_path: Path) -> None:
    # Each of the 4 peers is paused in turn (so no choice of "the" peer to publish to or
    # follow can hide behind luck): write + fsync, small-file fsyncs, a second mount
    # seeing the changes and a fresh read-only mount reading them, then it resumes.
    writer = vol.mount("writer")
    second = vol.mount("second")
    for paused in range(4):
        walrusfs("devnet", "pause", str(vol.net.directory), "--peer", str(paused), check=True)
        files = {f"p{paused}-small-{k}": random.Random(k + 10 * paused).randbytes(3000 + k) for k in range(3)}
        files[f"p{paused}-big"] = random.Random(99 + paused).randbytes(4 << 20)
        try:
            started = time.monotonic()
            for name, data in files.items():
                (writer.path / name).write_bytes(data)
                fsync(writer.path / name)
            print(f"\npeer {paused} paused: writes + fsyncs {time.monotonic() - started:.1f} s", end="")
            assert wait_for(lambda: all((second.path / n).exists() and (second.path / n).read_bytes() == d
                                        for n, d in files.items()), limit=30), "the second mount did not see the files"
            fresh = vol.mount(f"fresh-{paused}", volume=vol.read_cap, config=vol.root / "no-keys")
            started = time.monotonic()
            for name, data in files.items():
                assert (fresh.path / name).read_bytes() == data
            print(f", fresh read-only mount read them in {time.monotonic() - started:.1f} s", end="")
            fresh.stop()
        finally:
            walrusfs("devnet", "resume", str(vol.net.directory), "--peer", str(paused), check=True)

    def caught_up() -> bool:
        report = json.loads(walrusfs("health", "--json", committee=vol.net.committee, timeout=LIMIT).stdout)
        return all(s["reachable"] and s["healing"]["missing"] == 0 and s["healing"]["held"] == s["healing"]["certified"]
                   for s in report) and logs_converged(vol.net.committee)
    assert wait_for(caught_up, limit=120, step=2), "a resumed peer did not heal what it missed or its log differs"
    assert writer.process is not None and writer.process.poll() is None
    assert os.path.ismount(writer.path)

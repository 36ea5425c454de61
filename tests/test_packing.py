"""Small files packed into one blob by the mount, on a real devnet (n = 4) with real mounts.

Issue 19: each small file was a blob of its own (metadata, pairs, confirmations,
certificate) plus several signed namespace entries, about 4 durable files/s. A mount now
packs the small files of a burst into one blob, each file's write naming the pack and where
its bytes start, and signs the burst's ops as a few batched entries. Here: an untar of 1,000
files reads back bit-exactly from a fresh mount (one file's read fetches only its rows);
overwriting, changing, extending and deleting packed files leaves their neighbours intact
after a remount; a private volume's pack holds only ciphertext; and a malicious writer's
entries naming ranges outside a pack, or another volume's pack, hurt only its own files.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests.mounting import MountedVolume, create_volume, fsync, wait_for
from tests.test_malicious_writer import Writer
from walrusfs.client.members import call_member
from walrusfs.client.writer import load_key
from walrusfs.core.committee import parse_committee
from walrusfs.core.config import EncodingConfig
from walrusfs.core.log import LogError, Outcome, check_op
from walrusfs.core.messages import LOG_PUSH
from walrusfs.core.metadata import BlobId
from walrusfs.core.namespace import ROOT, Op
from walrusfs.core.quilt import decode_quilt
from walrusfs.core.redstuff import rows_for_range
from walrusfs.devnet import peer_dir
from walrusfs.identity import read_seed_file
from walrusfs.mount.contents import lay_out_pack
from walrusfs.mount.lifecycle import fold_usage

PEERS = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    """One devnet for the module: the private volume "vol" and a public one, "pub"."""
    vol = MountedVolume(tmp_path_factory.mktemp("packing"), PEERS)
    try:
        create_volume(vol.config, "pub", "--public")
        yield vol
    finally:
        vol.close()


def small_tree(seed: int, count: int) -> dict[str, bytes]:
    """``count`` files of 0-6 KB in 20 directories, some identical, a few above the packing threshold."""
    rng = random.Random(seed)
    files = {}
    for k in range(count):
        size = 300 << 10 if k % 250 == 7 else rng.choice([0, 1, rng.randrange(2, 6000)])
        files[f"src/d{k % 20}/f{k}.bin"] = files["src/d0/f0.bin"] if k % 97 == 5 else rng.randbytes(size)
    return files


def tar_of(files: dict[str, bytes]) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def mismatches(root: Path, files: dict[str, bytes]) -> list[str]:
    return [name for name, data in files.items() if (root / name).read_bytes() != data]


def test_an_untar_of_1000_files_is_packed_and_reads_back_bit_exactly_from_a_fresh_mount(
    net: MountedVolume, tmp_path: Path,
) -> None:
    files = small_tree(1, 1000)
    (tmp_path / "small.tar").write_bytes(tar_of(files))
    writer = net.mount("untar-writer", volume="pub")
    started = time.monotonic()
    subprocess.run(["tar", "-xf", str(tmp_path / "small.tar"), "-C", str(writer.path)], check=True, timeout=300)
    fsync(writer.path / "src")  # every file certified and its ops in the log
    durable = time.monotonic() - started
    status = writer.status()
    print(f"\n1,000 files durable in {durable:.1f} s: {status['packs']} packs, {status['packed_files']} files "
          f"packed, {status['entries_signed']} namespace entries")
    # Nearly every file went into a pack, and the namespace ops of the burst into few entries.
    small = sum(1 for data in files.values() if 0 < len(data) <= 256 << 10 and data.count(0) < len(data))
    assert status["packed_files"] >= small - 10 and status["packs"] <= 60, (small, status)
    assert status["entries_signed"] <= 100, status
    fresh = net.mount("untar-fresh", volume="pub")
    # One packed file: only the rows (primary slivers) its bytes lie on, one or two of p.
    assert (fresh.path / "src/d3/f3.bin").read_bytes() == files["src/d3/f3.bin"]
    assert fresh.status()["pack_rows_fetched"] in (1, 2), fresh.status()
    started = time.monotonic()
    assert mismatches(fresh.path, files) == []
    print(f"read back through a fresh mount in {time.monotonic() - started:.1f} s, "
          f"{fresh.status()['pack_rows_fetched']} pack rows fetched")
    assert sorted(str(p.relative_to(fresh.path)) for p in (fresh.path / "src").rglob("*.bin")) == sorted(files)
    fresh.stop()
    writer.stop()
    writer.start()  # the remount shows the same tree, from its own entries and the log
    assert mismatches(writer.path, files) == []


def test_overwrite_change_extend_and_delete_of_packed_files_leave_the_neighbours(
    net: MountedVolume, tmp_path: Path,
) -> None:
    rng = random.Random(2)
    files = {f"pk/f{k}.txt": rng.randbytes(rng.randrange(100, 5000)) for k in range(30)}
    source = tmp_path / "pk"
    source.mkdir()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    writer = net.mount("pk-writer")  # the private volume
    subprocess.run(["cp", "-r", str(source), str(writer.path / "pk")], check=True, timeout=120)
    fsync(writer.path / "pk")
    assert writer.status()["packed_files"] >= 25, writer.status()
    # Which files share a blob depends on how fast cp closed them (a pack takes the files
    # closed within 0.1 s of each other, so a loaded machine splits a burst into several):
    # the anchor is an untouched file that shares its blob with another.
    blobs = {name: os.getxattr(writer.path / name, "user.walrus.blob_ids") for name in files}
    untouched = [name for name in files if name not in ("pk/f3.txt", "pk/f5.txt", "pk/f7.txt", "pk/f9.txt")]
    anchor = next(name for name in untouched if list(blobs.values()).count(blobs[name]) > 1)
    pack = blobs[anchor]

    (writer.path / "pk/f3.txt").write_bytes(b"replaced")
    files["pk/f3.txt"] = b"replaced"
    with open(writer.path / "pk/f5.txt", "r+b") as f:  # a change in the middle: read from the pack first
        f.seek(50)
        f.write(b"CHANGED")
    files["pk/f5.txt"] = files["pk/f5.txt"][:50] + b"CHANGED" + files["pk/f5.txt"][57:]
    with open(writer.path / "pk/f9.txt", "ab") as f:
        f.write(b"appended")
    files["pk/f9.txt"] += b"appended"
    os.unlink(writer.path / "pk/f7.txt")
    del files["pk/f7.txt"]
    started = time.monotonic()
    fsync(writer.path / "pk/f5.txt")  # one file's fsync: prompt, its pack (or blob) flushed early
    assert time.monotonic() - started < 30
    writer.sync()

    writer.stop()
    writer.start()
    other = net.mount("pk-other")
    for mount in (writer, other):
        assert mismatches(mount.path, files) == [], mount.path
        assert sorted(os.listdir(mount.path / "pk")) == sorted(name.split("/")[1] for name in files)
    # Untouched neighbours still name the pack.
    assert os.getxattr(other.path / anchor, "user.walrus.blob_ids") == pack
    assert int(os.getxattr(other.path / anchor, "user.walrus.packed")) >= 0
    assert os.getxattr(other.path / "pk/f3.txt", "user.walrus.blob_ids") != pack  # rewritten: stored anew
    other.stop()


def test_a_private_pack_holds_only_ciphertext(net: MountedVolume, tmp_path: Path) -> None:
    markers = {f"secret/m{k}.txt": f"PACKED-PLAINTEXT-MARKER-{k:04d}-".encode() * 40 for k in range(12)}
    source = tmp_path / "secret"
    source.mkdir()
    for name, data in markers.items():
        (tmp_path / name).write_bytes(data)
    writer = net.mount("secret-writer")
    subprocess.run(["cp", "-r", str(source), str(writer.path / "secret")], check=True, timeout=120)
    fsync(writer.path / "secret")
    assert writer.status()["packed_files"] >= 10
    pack = BlobId.parse(os.getxattr(writer.path / "secret/m1.txt", "user.walrus.blob_ids").decode())
    found = []
    for index in range(PEERS):
        for root, _, names in os.walk(peer_dir(net.net.directory, index)):
            for name in names:
                try:
                    data = (Path(root) / name).read_bytes()
                except FileNotFoundError:
                    continue
                if b"PACKED-PLAINTEXT-MARKER" in data:
                    found.append(str(Path(root) / name))
    assert found == []
    # The search is not blind: the peers hold the pack's slivers (files named by its blob ID).
    assert any(name.startswith(str(pack)) for index in range(PEERS)
               for _, _, names in os.walk(peer_dir(net.net.directory, index)) for name in names)
    assert mismatches(writer.path, markers) == []


async def push(committee_path: Path, entries: list) -> list[list[str]]:
    """Push entries to every peer; each peer's outcomes."""
    committee = parse_committee(committee_path.read_text())
    async with running_host(os.urandom(32)) as host:
        outcomes = []
        for peer in range(len(committee.peers)):
            reply, _ = await call_member(host, committee, peer, LOG_PUSH, entries=[e.encode() for e in entries])
            outcomes.append([outcome for outcome, _ in reply["results"]])
        return outcomes


def test_a_malicious_writers_pack_ranges_hurt_only_its_own_files(net: MountedVolume, tmp_path: Path) -> None:
    honest = net.mount("evil-honest", volume="pub")
    files = {f"h/f{k}": random.Random(k).randbytes(3000) for k in range(6)}
    (tmp_path / "h").mkdir()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    subprocess.run(["cp", "-r", str(tmp_path / "h"), str(honest.path / "h")], check=True, timeout=120)
    fsync(honest.path / "h")
    pack = BlobId.parse(os.getxattr(honest.path / "h/f1", "user.walrus.blob_ids").decode()).raw
    # A pack of the private volume, for the writer of the public one to point at.
    other = net.mount("evil-other")
    subprocess.run(["cp", "-r", str(tmp_path / "h"), str(other.path / "h")], check=True, timeout=120)
    fsync(other.path / "h")
    private_pack = BlobId.parse(os.getxattr(other.path / "h/f1", "user.walrus.blob_ids").decode()).raw
    assert private_pack != pack
    volume_key = SigningKey(read_seed_file(net.config / "volumes" / "pub.key"))
    account = load_key(net.net.committee.parent / "writer.key")
    evil = Writer(volume_key, account, None)
    outside, elsewhere = b"\xe5" * 32, b"\xe6" * 32

    def content(blob: bytes, offset: int, size: int = 3000) -> dict:
        return {"size": size, "chunk_size": 4 << 20, "chunks": [blob], "offsets": [offset]}

    entries = [
        evil.sign("create", parent=ROOT, name="outside", node=outside, mode=0o644),
        evil.sign("write", node=outside, content=content(pack, 1 << 40)),
        evil.sign("create", parent=ROOT, name="elsewhere", node=elsewhere, mode=0o644),
        # Another volume's blob (or any blob): its bytes, verified, are all a reader can get.
        evil.sign("write", node=elsewhere, content=content(private_pack, 0, 100)),
    ]
    assert all(set(got) <= {Outcome.ACCEPTED.value, Outcome.DUPLICATE.value}
               for got in trio.run(push, net.net.committee, entries))
    # Malformed ranges never get past the peers.
    bad = Writer(volume_key, account, None)  # each from a device of its own: a rejected entry ends a chain
    rejected = [
        bad.sign("write", node=outside, content=content(pack, -1)),
        Writer(volume_key, account, None).sign("write", node=outside, content={
            "size": 3000, "chunk_size": 4 << 20, "chunks": [None], "offsets": [0]}),
        Writer(volume_key, account, None).sign("write", node=outside, content={**content(pack, 0), "offsets": []}),
    ]
    for entry in rejected:
        assert trio.run(push, net.net.committee, [entry]) == [[Outcome.REJECTED.value]] * PEERS

    fresh = net.mount("evil-fresh", volume="pub")
    for mount in (honest, fresh):
        assert wait_for(lambda: (mount.path / "elsewhere").exists(), limit=30)  # noqa: B023
        with pytest.raises(OSError):
            (mount.path / "outside").read_bytes()  # EIO: this file alone
        assert len((mount.path / "elsewhere").read_bytes()) == 100
        assert mismatches(mount.path, files) == []
        assert mount.process is not None and mount.process.poll() is None
    assert (other.path / "h/f1").read_bytes() == files["h/f1"]  # the other volume's pack is untouched
    fresh.stop()
    honest.stop()
    other.stop()


# ---------------------------------------------------------------------------- the pure parts


@pytest.mark.parametrize("shards", [4, 7, 160])
def test_a_pack_holds_each_part_at_its_offset_identical_parts_once(shards: int) -> None:
    config = EncodingConfig(shards)
    rng = random.Random(shards)
    parts = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(40)]
    parts[7] = parts[3]
    layout = lay_out_pack(parts, config)
    assert all(layout.data[o:o + len(p)] == p for o, p in zip(layout.offsets, parts))
    assert layout.offsets[7] == layout.offsets[3]
    assert layout.quilt == (shards == 160)  # 39 distinct files fit a quilt only on many shards' rows
    if layout.quilt:
        decoded = decode_quilt(layout.data, config)
        assert [p.data for p in decoded.patches] == list(dict.fromkeys(parts))
        # Each file on rows of its own: reading one fetches none of another's.
        rows = [set(rows_for_range(config, len(layout.data), o, len(p))) for o, p in zip(layout.offsets, parts)]
        assert all(not rows[a] & rows[b] for a in range(40) for b in range(a) if parts[a] != parts[b])
    two = lay_out_pack(parts[:2], EncodingConfig(7))  # p - 1 = 2 files: a quilt even at n = 7
    assert two.quilt and all(two.data[o:o + len(p)] == p for o, p in zip(two.offsets, parts[:2]))


@pytest.mark.parametrize("offsets, ok", [
    ([0], True), ([2**63 - 1], True), ([None], True),
    ([-1], False), ([2**63], False), (["0"], False), ([True], False), ([], False), ([0, 0], False),
])
def test_offsets_are_checked_like_every_field(offsets: list, ok: bool) -> None:
    op = {"kind": "write", "args": {"node": b"\x01" * 32, "content": {
        "size": 10, "chunk_size": 64, "chunks": [b"\x02" * 32], "offsets": offsets}}}
    if ok:
        check_op(op)
    else:
        with pytest.raises(LogError, match="offsets"):
            check_op(op)
    hole = {"kind": "write", "args": {"node": b"\x01" * 32, "content": {
        "size": 10, "chunk_size": 64, "chunks": [None], "offsets": [0]}}}
    with pytest.raises(LogError, match="offsets"):
        check_op(hole)  # a hole lies in no pack


def test_a_pack_is_released_only_once_none_of_its_files_is_referenced() -> None:
    author, pack, other = b"\xaa" * 32, b"\x10" * 32, b"\x20" * 32
    nodes = [bytes([k]) * 32 for k in range(1, 4)]
    ops: list[Op] = []

    def add(kind: str, **args: object) -> None:
        ops.append(Op(len(ops).to_bytes(32, "big"), (len(ops) + 1) << 16, author, kind, args))

    for k, node in enumerate(nodes):
        add("create", parent=ROOT, name=f"f{k}", node=node)
        add("write", node=node, content={"size": 100, "chunk_size": 4096, "chunks": [pack], "offsets": [k * 100]})
    assert fold_usage(ops).referenced == {pack}
    add("unlink", parent=ROOT, name="f0", node=nodes[0])
    add("write", node=nodes[1], content={"size": 5, "chunk_size": 4096, "chunks": [other]},
        base=ops[3].op_id)  # overwritten (based on its packed version)
    usage = fold_usage(ops)
    assert pack in usage.referenced and pack not in usage.unreferenced_since
    add("rename", parent=ROOT, name="f2", node=nodes[2], new_parent=ROOT, new_name="g")
    assert pack in fold_usage(ops).referenced  # renamed, still there
    add("unlink", parent=ROOT, name="g", node=nodes[2])
    usage = fold_usage(ops)
    assert usage.referenced == {other} and usage.unreferenced_since[pack] == ops[-1].hlc
    # The trash keeps each removed version with its range, so a restore names it again.
    restored = [item for item in usage.trash if item.node == nodes[2]]
    assert restored and restored[-1].content.offsets == (200,)

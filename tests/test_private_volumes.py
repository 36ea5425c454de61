"""Private volumes (issue 17) on a real 4-peer devnet through real FUSE mounts.

Peers and the log hold only ciphertext: every byte of every peer file and of every peer's
log, as served to a client, is searched for markers written as contents, names, xattr
values, symlink targets and directory names, and nothing is found; the same search finds
them in a public volume. Read, write and verify capabilities do what they say, bad ones
fail in one clear line, dedupe works within a volume and never across two, and a wiped
peer heals a private volume's blobs and passes a challenge round on them.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from p2p.host import running_host
from p2p.rpc import PeerUnavailable
from tests.conftest import blob_bytes
from tests.mounting import Mount, MountedVolume, create_volume, fsync, wait_for
from tests.test_audit import wait_settled
from tests.test_healing import committee_of, wait_healed
from tests.test_network import EXE
from walrusfs.cli.common import with_client
from walrusfs.client.blob import Client
from walrusfs.core.capabilities import ReadCap, parse_capability
from walrusfs.core.log import NAMESPACE, Entry
from walrusfs.core.metadata import BlobId
from walrusfs.core.sealing import chunk_hash, open_ops, seal_chunk
from walrusfs.devnet import peer_dir
from walrusfs.mount.volumelog import entry_context
from walrusfs.mount.volumes import parse_volume_id

PEERS = 4
QUORUM = 3  # shards a blob needs to be available (2f + 1)
CHUNK = 64 << 10  # small chunks: several per file, so one changed byte is one chunk of many


def cli(net: MountedVolume, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``walrusfs ARGS`` against the devnet, with ``config`` as the config directory (keys)."""
    env = {**os.environ, "WALRUSFS_COMMITTEE": str(net.net.committee), "WALRUSFS_CONFIG_DIR": str(config)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def cli_ok(net: MountedVolume, config: Path, *args: str) -> str:
    """The stdout of a ``walrusfs`` command that must succeed."""
    result = cli(net, config, *args)
    assert result.returncode == 0, f"walrusfs {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class Tree:
    """What was written through a mount under ``top``: path -> bytes, symlink targets, user xattrs."""

    markers: dict[str, bytes]
    top: str
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        """Every name in the tree (path components)."""
        return {part for path in [*self.files, *self.links, *self.dirs] for part in Path(path).parts}


def write_tree(mount: Mount, kind: str) -> Tree:
    """Files, a directory, a symlink and xattrs carrying fresh markers, written and fsynced through ``mount``."""
    tag = os.urandom(6).hex()
    markers = {what: f"wfs-{kind}-{what}-{tag}".encode() for what in ("content", "name", "xattr", "link", "dir")}
    text = {what: marker.decode() for what, marker in markers.items()}
    tree = Tree(markers, top=text["dir"])
    secret = f"{tree.top}/secret-{text['name']}.txt"
    # 256 KiB and a bit of a repeated marker whose length does not divide a chunk: five
    # different sealed chunks, each full of the marker, so a public one is in every symbol.
    unit = markers["content"] + b"|"
    tree.files[secret] = unit * ((256 << 10) // len(unit) + 100)
    # Every name carries the name marker (a short name like "sub" could turn up by chance in
    # the base64 of an ID, and then in a search of what a verify capability prints).
    sub = f"{tree.top}/sub-{text['name']}"
    tree.files[f"{sub}/notes-{text['name']}"] = b"dear diary: " + markers["content"] + blob_bytes(1, 3000)
    tree.files[f"{tree.top}/empty-{text['name']}"] = b""
    tree.links[f"{tree.top}/link-{text['name']}"] = f"../{text['link']}/target"
    tree.dirs |= {tree.top, sub}
    tree.xattrs[secret] = {"user.comment": markers["xattr"], f"user.n-{text['name']}": b"plain"}
    for directory in sorted(tree.dirs):
        (mount.path / directory).mkdir()
    for path, data in tree.files.items():
        (mount.path / path).write_bytes(data)
    for path, values in tree.xattrs.items():
        for name, value in values.items():
            os.setxattr(mount.path / path, name, value)
    for path, target in tree.links.items():
        os.symlink(target, mount.path / path)
    for path in tree.files:
        fsync(mount.path / path)  # certified and logged
    mount.sync()  # and every namespace entry (mkdir, symlink, xattrs) in the log
    assert mount.status()["pending"] == []
    return tree


def check_tree(root: Path, tree: Tree) -> None:
    """``root`` shows exactly ``tree``: every byte, type, symlink target and user xattr."""
    found = {str(p.relative_to(root)) for p in (root / tree.top).rglob("*")} | {tree.top}
    assert found == set(tree.files) | set(tree.links) | tree.dirs
    for path, data in tree.files.items():
        assert (root / path).read_bytes() == data, path
        names = {n for n in os.listxattr(root / path) if not n.startswith("user.walrus.")}
        assert names == set(tree.xattrs.get(path, {})), path
        for name, value in tree.xattrs.get(path, {}).items():
            assert os.getxattr(root / path, name) == value
    for path, target in tree.links.items():
        assert os.path.islink(root / path) and os.readlink(root / path) == target
    for path in tree.dirs:
        assert (root / path).is_dir() and not (root / path).is_symlink()


def blob_ids(path: Path) -> list[str]:
    """The blob of each chunk of a file, as the mount shows it."""
    return [b for b in os.getxattr(path, "user.walrus.blob_ids").decode().split("\n") if b]


def files_blobs(root: Path) -> set[str]:
    """Every blob the regular files under ``root`` use."""
    return {b for p in root.rglob("*") if p.is_file() and not p.is_symlink() for b in blob_ids(p)}


class Volumes(MountedVolume):
    """The devnet, the private volume ``vol`` and a public volume ``pub``, each with a writer mount."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, PEERS)
        try:
            create_volume(self.config, "pub", "--public")
            self.writer = self.mount("writer", "--chunk-size", "64KiB")
            self.public = self.mount("public", "--chunk-size", "64KiB", volume="pub")
        except BaseException:
            self.close()
            raise
        self.trees: dict[str, Tree] = {}

    def tree(self, kind: str) -> Tree:
        """The marker tree of ``kind`` (private or public), written on first use."""
        if kind not in self.trees:
            self.trees[kind] = write_tree(self.writer if kind == "private" else self.public, kind)
        return self.trees[kind]

    def share(self, kind: str) -> str:
        """A ``kind`` capability of the private volume."""
        return cli_ok(self, self.config, "volume", "share", "vol", f"--{kind}").strip()

    def empty_config(self, name: str) -> Path:
        """A config directory holding no key (what a person given only a capability has)."""
        path = self.root / f"config-{name}"
        path.mkdir(exist_ok=True)
        return path


@pytest.fixture(scope="module")
def vols(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volumes]:
    volumes = Volumes(tmp_path_factory.mktemp("private"))
    try:
        yield volumes
    finally:
        volumes.close()


@pytest.fixture(scope="module")
def reader(vols: Volumes) -> Mount:
    """A read-only mount of the private volume from its read capability, by someone holding no key."""
    vols.tree("private")
    return vols.mount("reader", volume=vols.share("read"), config=vols.empty_config("reader"))


# ---------------------------------------------------------------------- what peers and the log see


def peer_files(vols: Volumes) -> list[tuple[Path, bytes]]:
    """Every file in every peer's directory, whole (slivers, peer.sqlite and its -wal and -shm, logs)."""
    found = []
    for index in range(PEERS):
        for root, _, names in os.walk(peer_dir(vols.net.directory, index)):
            for name in names:
                try:
                    found.append((Path(root) / name, (Path(root) / name).read_bytes()))
                except FileNotFoundError:  # a spool file renamed or removed while walking
                    continue
    return found


def served_logs(vols: Volumes) -> list[list[Entry]]:
    """Every peer's whole log as it serves it to any client (no key needed), entry by entry."""

    async def job(client: Client) -> list[list[Entry]]:
        return [await client.log_entries(peer) for peer in range(PEERS)]

    return with_client(committee_of(vols.net), job)


def settled_logs(vols: Volumes, mount: Mount) -> list[list[Entry]]:
    """Every peer's log once each holds all of ``mount``'s entries and every peer holds its slivers of every blob.

    A store and an fsync return once enough peers hold things; a search of a peer that has
    not caught up yet would find nothing for the wrong reason.
    """
    with_client(committee_of(vols.net), wait_settled)
    status = mount.status()
    volume, author, signed = parse_volume_id(status["volume"]), bytes.fromhex(status["device"]), status["entries_signed"]
    logs: list[list[Entry]] = []

    def caught_up() -> bool:
        nonlocal logs
        try:
            logs = served_logs(vols)
        except PeerUnavailable:  # one peer slow to answer on a loaded machine: ask again
            return False
        return all(len([e for e in entries if e.kind == NAMESPACE and e.author == author
                        and e.payload.get("volume") == volume]) >= signed for entries in logs)

    assert wait_for(caught_up, limit=30), "a peer's log lacks the mount's entries after 30 s"
    return logs


@pytest.mark.parametrize("kind", ["private", "public"])
def test_markers_reach_peers_and_the_log_only_from_a_public_volume(vols: Volumes, kind: str) -> None:
    tree = vols.tree(kind)
    logs = settled_logs(vols, vols.writer if kind == "private" else vols.public)
    disk = peer_files(vols)
    # Canonical CBOR: an entry's encoding is the bytes the peer sent.
    log_bytes = [b"".join(entry.encode() for entry in entries) for entries in logs]
    in_files = {what: [p for p, data in disk if m in data] for what, m in tree.markers.items()}
    in_logs = {what: [k for k, data in enumerate(log_bytes) if m in data] for what, m in tree.markers.items()}
    if kind == "private":
        assert in_files == {what: [] for what in tree.markers}, in_files
        assert in_logs == {what: [] for what in tree.markers}, in_logs
        # The search is not blind: the peers hold the sealed chunks, and every peer serves
        # the volume's namespace entries (sealed, so they show who wrote when, not what).
        cap = parse_capability(vols.share("read"))
        first = tree.files[next(p for p in tree.files if "secret-" in p)][:CHUNK]
        sealed = seal_chunk(cap.read_key, cap.volume, first).ciphertext
        assert [p for p, d in disk if sealed[1000:1064] in d], "no peer file holds the sealed chunk: the search is blind"
        for entries in logs:
            mine = [e for e in entries if e.kind == NAMESPACE and e.payload.get("volume") == cap.volume]
            assert mine and all(not {"op", "ops"} & set(e.payload) for e in mine)
            # Batched: fewer entries than ops; the ops are all there once opened.
            opened = [op for e in mine for op in open_ops(cap.read_key, cap.volume, e.payload["sealed_ops"],
                                                          entry_context(e.author, e.seq))]
            assert len(opened) >= 10
        # Nor is a plaintext hash of a chunk (what opens it) anywhere the peers can see.
        assert not any(chunk_hash(first) in d for d in [*(d for _, d in disk), *log_bytes])
    else:
        assert any("slivers" in p.parts for p in in_files["content"]), in_files["content"]
        for what in ("name", "xattr", "link", "dir"):
            assert in_logs[what] == list(range(PEERS)), (what, in_logs)


# ---------------------------------------------------------------------- capabilities


def test_read_capability_mounts_read_only_and_reads_everything(vols: Volumes, reader: Mount) -> None:
    tree = vols.tree("private")
    assert wait_for(lambda: (reader.path / tree.top).is_dir())
    check_tree(reader.path, tree)
    status = reader.status()
    assert status["read_only"] and status["volume_kind"] == "private" and not status["unreadable_entries"]
    text = cli_ok(vols, vols.empty_config("reader"), "status", str(reader.path))
    assert "read-only; private: peers hold only ciphertext" in text
    secret = next(reader.path / p for p in tree.files if "secret-" in p)
    attempts = {
        "create": lambda: (reader.path / tree.top / "new").write_bytes(b"x"),
        "overwrite": lambda: open(secret, "r+b").close(),
        "mkdir": lambda: (reader.path / tree.top / "newdir").mkdir(),
        "unlink": lambda: secret.unlink(),
        "rename": lambda: secret.rename(secret.with_name("renamed")),
        "symlink": lambda: os.symlink("x", reader.path / "newlink"),
        "setxattr": lambda: os.setxattr(secret, "user.comment", b"changed"),
        "chmod": lambda: os.chmod(secret, 0o600),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS, name
    check_tree(reader.path, tree)


def test_write_capability_makes_a_second_writer_both_ways(vols: Volumes, reader: Mount) -> None:
    tree = vols.tree("private")
    config = vols.empty_config("second")
    made = json.loads(cli_ok(vols, config, "volume", "create", "other", "--from-cap", vols.share("write"), "--json"))
    assert made["volumeId"] == vols.volume_id and made["kind"] == "private"
    second = vols.mount("second", "--chunk-size", "64KiB", volume="other", config=config)
    try:
        assert wait_for(lambda: (second.path / tree.top).is_dir())
        check_tree(second.path, tree)
        data = blob_bytes(2, CHUNK + 77)
        (second.path / "from-second").write_bytes(data)
        fsync(second.path / "from-second")
        second.sync()
        for mount in (vols.writer, reader):
            assert wait_for(lambda m=mount: (m.path / "from-second").read_bytes() == data), mount.path
        # The first writer, mounted again, still has both its own files and the second's.
        vols.writer.stop()
        vols.writer.start()
        assert (vols.writer.path / "from-second").read_bytes() == data
        check_tree(vols.writer.path, tree)
        # And the second writer sees what the first writes after it.
        (vols.writer.path / "reply").write_bytes(b"from the first writer")
        vols.writer.sync()
        assert wait_for(lambda: (second.path / "reply").read_bytes() == b"from the first writer")
    finally:
        second.stop()


def test_verify_capability_lists_and_checks_blobs_but_reads_nothing(vols: Volumes, tmp_path: Path) -> None:
    tree = vols.tree("private")
    verify = vols.share("verify")
    config = vols.empty_config("verifier")
    outputs = []
    target = tmp_path / "mnt"
    target.mkdir()
    refused = cli(vols, config, "mount", str(target), "--cap", verify, "--state", str(tmp_path / "state"))
    assert refused.returncode == 1 and not os.path.ismount(target)
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: a verify capability reads nothing, so it cannot be mounted; list and check the volume's "
        "blobs with: walrusfs volume blobs CAP")
    outputs.append(refused.stdout + refused.stderr)

    vols.writer.sync()
    used = files_blobs(vols.writer.path)
    assert len(used) >= 6
    rows = json.loads(listing := cli_ok(vols, config, "volume", "blobs", verify, "--check", "--json"))
    outputs.append(listing)
    assert {row["blobId"] for row in rows} == used
    assert all(row["live"] and row["available"] for row in rows), rows
    env = {**os.environ, "WALRUSFS_COMMITTEE": str(vols.net.committee), "WALRUSFS_CONFIG_DIR": str(config)}
    # Two blob-status commands at a time: each mostly waits, but ten starting at once on a
    # loaded machine kept peers from answering within the 3 s a status call waits.
    blobs = sorted(used)
    for pair in (blobs[k : k + 2] for k in range(0, len(blobs), 2)):
        runs = {blob: subprocess.Popen([EXE, "blob-status", blob, "--json"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
                for blob in pair}
        for blob, run in runs.items():
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, err
            status = json.loads(out)
            assert status["blobId"] == blob and status["certified"] and status["validShards"] >= QUORUM, status
            outputs.append(out + err)
    everything = "\n".join(outputs)
    for secret in [*(m.decode() for m in tree.markers.values()), *tree.names]:
        assert secret not in everything, secret


def test_bad_capabilities_fail_in_one_clear_line(vols: Volumes, tmp_path: Path) -> None:
    vols.tree("private")  # a key is found wrong by the entries it cannot open
    read = vols.share("read")
    cap = parse_capability(read)
    key_text = read.split(":")[3]
    at = read.index(key_text) + 20
    changed = read[:at] + ("A" if read[at] != "A" else "B") + read[at + 1:]
    other_key = str(ReadCap(cap.volume, os.urandom(32)))
    cases = {
        "cut in the key": (read[:60], 2, "cut or mistyped"),
        "check cut off": (read[:-7], 2, "cut or mistyped"),
        "a character changed": (changed, 2, "check does not match: a character was changed"),
        "another read key": (other_key, 1, f"the read key given for volume {vols.volume_id} opens none of its"),
    }
    config = vols.empty_config("bad")
    target = tmp_path / "mnt"
    target.mkdir()
    for case, (text, code, message) in cases.items():
        result = cli(vols, config, "mount", str(target), "--cap", text, "--state", str(tmp_path / case))
        assert not os.path.ismount(target), case
        assert result.returncode == code, (case, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and message in last, (case, result.stderr)
        assert "Traceback" not in result.stderr
        # One line per entry that does not open would bury the error (a volume has thousands).
        assert len(result.stderr.strip().splitlines()) <= 6, result.stderr
        for secret in (key_text[:12], other_key.split(":")[3][:12]):
            assert secret not in result.stderr, f"{case}: an error must not repeat the key"
    # The other commands that take a capability refuse them the same way.
    listing = cli(vols, config, "volume", "blobs", read[:60])
    assert listing.returncode == 2 and "cut or mistyped" in listing.stderr.strip().splitlines()[-1]
    kept = cli(vols, config, "volume", "create", "mine", "--from-cap", read)
    assert kept.returncode == 2 and "only a write capability can be kept" in kept.stderr
    assert not (config / "volumes" / "mine.key").exists()


# ---------------------------------------------------------------------- dedupe


def test_dedupe_within_a_volume_and_never_across_two(vols: Volumes) -> None:
    for name in ("dd1", "dd2"):
        create_volume(vols.config, name)
    one = vols.mount("dd1", "--chunk-size", "64KiB", volume="dd1")
    two = vols.mount("dd2", "--chunk-size", "64KiB", volume="dd2")
    try:
        data = blob_bytes(3, 5 * CHUNK + 100)  # six chunks, all different

        def put(mount: Mount, name: str, content: bytes) -> list[str]:
            (mount.path / name).write_bytes(content)
            fsync(mount.path / name)
            return blob_ids(mount.path / name)

        first = put(one, "a", data)
        assert len(set(first)) == 6 and one.status()["uploaded_chunks"] == 6
        # An identical file stores nothing new.
        assert put(one, "b", data) == first
        assert (one.status()["uploaded_chunks"], one.status()["deduplicated_chunks"]) == (6, 6)
        # One changed byte rewrites one chunk.
        with open(one.path / "a", "r+b") as f:
            f.seek(2 * CHUNK + 5)
            f.write(bytes([data[2 * CHUNK + 5] ^ 1]))
        fsync(one.path / "a")
        changed = blob_ids(one.path / "a")
        assert [k for k in range(6) if changed[k] != first[k]] == [2]
        assert one.status()["uploaded_chunks"] == 7
        assert blob_ids(one.path / "b") == first and (one.path / "b").read_bytes() == data
        # The same file in another private volume shares no blob with the first.
        other = put(two, "a", data)
        assert len(set(other)) == 6 and not set(other) & (set(first) | set(changed))
        assert two.status()["uploaded_chunks"] == 6
        assert (two.path / "a").read_bytes() == data
    finally:
        one.stop()
        two.stop()


# ---------------------------------------------------------------------- healing and challenges (last: wipes a peer)


async def test_wiped_peer_heals_private_blobs_and_passes_a_challenge_round(vols: Volumes) -> None:
    tree = vols.tree("private")
    ids = sorted({BlobId.parse(b) for p in tree.files for b in blob_ids(vols.writer.path / p)}, key=str)
    victim = 2
    vols.net.stop(victim)
    result = subprocess.run([EXE, "devnet", "wipe", str(vols.net.directory), "--peer", str(victim)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (peer_dir(vols.net.directory, victim) / "slivers").exists()
    vols.net.start(victim)
    committee = committee_of(vols.net)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=vols.net.authority)
        status = await wait_healed(client, victim, ids)
        healed = {r["blob_id"] for r in status["recent_heals"]}
        assert {str(b) for b in ids} <= healed, healed
        await wait_settled(client)
        certified = {(h.get("healing") or {}).get("certified") for h in await client.health()}
    # A round samples up to --sample certified blobs; this one challenges every blob there is.
    [count] = certified
    assert count <= 256
    member = str(peer_dir(vols.net.directory, 0))
    result = cli(vols, vols.config, "audit", "start", "--sample", "256", "--key", member, "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["phase"] == "closed" and {row["result"] for row in info["peers"]} == {"passed"}, info
    # And the private files still read back, through a mount that starts with an empty cache.
    fresh = vols.mount("after-heal", volume=vols.share("read"), config=vols.empty_config("after-heal"))
    try:
        assert await trio.to_thread.run_sync(wait_for, lambda: (fresh.path / tree.top).is_dir())
        await trio.to_thread.run_sync(check_tree, fresh.path, tree)
    finally:
        fresh.stop()

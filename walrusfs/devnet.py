"""A local network of peers: N ``walrusfs peer`` processes on 127.0.0.1 and their committee.

``DIR/committee.toml`` is written once and reused, so identities and ports survive
``down``/``up``; ``DIR/metrics.json`` likewise holds each peer's metrics address (loopback,
``walrusfs peer --metrics``); ``DIR/devnet.json`` records the running processes (with their
metrics addresses) and ``DIR/options.json`` the options every peer is started with. Peers
run in their own sessions with logs in ``DIR/peer-K/peer.log``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .core.committee import Committee, PeerInfo, parse_committee, render_committee
from .identity import IdentityError, create_identity, load_identity

STATE_FILE = "devnet.json"
OPTIONS_FILE = "options.json"
METRICS_FILE = "metrics.json"
COMMITTEE_FILE = "committee.toml"
#: The devnet's operator key (it grants storage) and the writer key it grants: commands
#: that use this devnet's committee file store with the writer key beside it.
OPERATOR_FILE = "operator.key"
WRITER_FILE = "writer.key"
GRANTED_MARK = "writer.key.granted"
#: A devnet's storage epochs are short, so lifetimes can be seen ending (a real
#: committee's are days); tests shorten them further.
DEVNET_EPOCH_SECONDS = 600
#: What the devnet grants its writer key: plenty for anything run on one machine.
DEVNET_QUOTA = 1 << 40


class DevnetError(Exception):
    """The devnet cannot be started, found or stopped as asked."""


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def peer_dir(directory: Path, index: int) -> Path:
    """Data directory of peer ``index``."""
    return directory / f"peer-{index}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live walrusfs peer (a zombie's command line is empty)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"walrusfs" in command and b"peer" in command


def _read_state(directory: Path) -> dict[str, dict[str, int | str]]:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}


def _write_state(directory: Path, state: dict[str, dict[str, int | str]]) -> None:
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(directory / STATE_FILE)


def create(directory: Path, peers: int, epoch_seconds: int = DEVNET_EPOCH_SECONDS) -> Committee:
    """Make identities, an operator and a writer key and a committee for ``peers`` peers, or load the existing one."""
    path = directory / COMMITTEE_FILE
    if path.exists():
        committee = parse_committee(path.read_text())
        if len(committee.peers) != peers:
            raise DevnetError(f"{path} describes {len(committee.peers)} peers, not {peers}; use another directory")
        return committee
    directory.mkdir(parents=True, exist_ok=True)
    members = []
    for index, port in enumerate(_free_ports(peers)):
        try:
            identity = load_identity(peer_dir(directory, index))
        except IdentityError:
            identity = create_identity(peer_dir(directory, index))
        members.append(PeerInfo(identity.peer_id, identity.public_key, (f"/ip4/127.0.0.1/tcp/{port}",), (index,)))
    from nacl.signing import SigningKey

    from .identity import read_seed_file, write_seed_file

    try:
        operator = SigningKey(write_seed_file(directory / OPERATOR_FILE))
    except FileExistsError:
        operator = SigningKey(read_seed_file(directory / OPERATOR_FILE))
    if not (directory / WRITER_FILE).exists():
        write_seed_file(directory / WRITER_FILE)
    committee = Committee(0, tuple(members), (bytes(operator.verify_key),), epoch_seconds * 1000,
                          int(time.time() * 1000))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_committee(committee))
    tmp.replace(path)
    return committee


def metrics_addresses(directory: Path) -> dict[int, str]:
    """Each peer's metrics address (HOST:PORT on loopback), chosen once and kept, like its libp2p port."""
    path = directory / METRICS_FILE
    try:
        return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        pass
    committee = parse_committee((directory / COMMITTEE_FILE).read_text())
    taken = {addr.rsplit("/", 1)[-1] for peer in committee.peers for addr in peer.addrs}
    # Bound all at once, so they differ from each other; never one of the peers' own ports.
    ports = [p for p in _free_ports(2 * len(committee.peers)) if str(p) not in taken][: len(committee.peers)]
    addresses = {k: f"127.0.0.1:{port}" for k, port in enumerate(ports)}
    tmp = directory / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in addresses.items()}, indent=2))
    tmp.replace(path)
    return addresses


def set_peer_options(directory: Path, options: dict[str, str]) -> None:
    """Record ``walrusfs peer`` options (name -> value) that every peer starts with from now on."""
    tmp = directory / (OPTIONS_FILE + ".tmp")
    tmp.write_text(json.dumps(options, indent=2))
    tmp.replace(directory / OPTIONS_FILE)


def peer_options(directory: Path) -> dict[str, str]:
    """The options recorded by ``set_peer_options`` (none by default)."""
    try:
        return dict(json.loads((directory / OPTIONS_FILE).read_text()))
    except FileNotFoundError:
        return {}


def start_peer(directory: Path, index: int, fault: str | None = None) -> int:
    """Start peer ``index`` in the background; return its PID."""
    state = _read_state(directory)
    entry = state.get(str(index))
    if entry and _alive(int(entry["pid"])):
        raise DevnetError(f"peer {index} is already running (pid {entry['pid']})")
    data = peer_dir(directory, index)
    metrics = metrics_addresses(directory).get(index)
    args = [sys.executable, "-m", "walrusfs", "peer", str(data), "--committee", str(directory / COMMITTEE_FILE)]
    for name, value in sorted(peer_options(directory).items()):
        args += [f"--{name}", value]
    if metrics:
        args += ["--metrics", metrics]
    if fault:
        args += ["--fault", fault]
    with open(data / "peer.log", "ab") as logfile:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
    state[str(index)] = {"pid": process.pid, "fault": fault or "", "metrics": metrics or ""}
    _write_state(directory, state)
    return process.pid


def stop_peer(directory: Path, index: int, kill: bool = False, wait: float = 10.0) -> bool:
    """Stop peer ``index`` (SIGTERM, or SIGKILL with ``kill``); False if it was not running."""
    return bool(stop_peers(directory, [index], kill, wait))


def stop_peers(directory: Path, indices: list[int], kill: bool = False, wait: float = 10.0) -> list[int]:
    """Stop several peers at once (all signalled, then all waited for); return those that were running."""
    state = _read_state(directory)
    entries = {index: state.pop(str(index), None) for index in indices}
    _write_state(directory, state)
    pids = {index: int(e["pid"]) for index, e in entries.items() if e and _alive(int(e["pid"]))}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a paused peer must see the SIGTERM
    deadline = time.monotonic() + wait
    for pid in pids.values():
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)  # it did not shut down in time: a crash is all that is left
            while _alive(pid) and time.monotonic() < deadline + 5:
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
    return sorted(pids)


def signal_peer(directory: Path, index: int, signum: int) -> bool:
    """Send ``signum`` to peer ``index`` (SIGSTOP pauses it: sockets open, nothing answered); False if not running."""
    entry = _read_state(directory).get(str(index))
    if not entry or not _alive(int(entry["pid"])):
        return False
    os.kill(int(entry["pid"]), signum)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wipe_peer(directory: Path, index: int) -> None:
    """Delete a stopped peer's stored data (slivers, metadata, log), keeping its identity."""
    import shutil

    if index in running(directory):
        raise DevnetError(f"peer {index} is running; stop it before wiping its data")
    data = peer_dir(directory, index)
    if not data.is_dir():
        raise DevnetError(f"no peer {index} in {directory}")
    for item in data.iterdir():
        if item.name in ("identity.key", "peer.log"):
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def running(directory: Path) -> dict[int, int]:
    """Running peers: index -> PID."""
    return {int(k): int(v["pid"]) for k, v in _read_state(directory).items() if _alive(int(v["pid"]))}


def down(directory: Path) -> list[int]:
    """Stop every peer of the devnet; return the indices that were running."""
    if not (directory / COMMITTEE_FILE).exists():
        raise DevnetError(f"no devnet in {directory} (no {COMMITTEE_FILE})")
    stopped = stop_peers(directory, sorted(running(directory)))
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped

"""walrusfs against Tahoe-LAFS, both 3-of-7 on 127.0.0.1, measured in one run.

Run ``python benchmarks/versus_tahoe.py [--size-mib 64] [--files 1000] [--rounds 3]``.

It installs tahoe-lafs (``TAHOE_VERSION``, pinned) into its own virtual environment,
``$XDG_CACHE_HOME/walrusfs-bench/tahoe-venv`` (``~/.cache/...``), made if missing and
reused otherwise (``--skip-install`` only checks it). It then starts, all on 127.0.0.1:

* Tahoe: an introducer, 7 storage nodes and a client node (web API only) with
  shares.needed = 3, shares.happy = 7, shares.total = 7, and waits until the client is
  connected to all 7 storage servers;
* walrusfs: a devnet of 7 peers (n = 7, f = 2: 3-of-7 like Tahoe's encoding) and a mount of
  a private volume (sealed chunks and names; Tahoe encrypts everything too).

Each round measures both sides, alternating which goes first, on fresh random data (both
systems deduplicate identical content, so nothing is reused between rounds):

* put: ``walrusfs store --encrypt`` against ``tahoe put`` of a SIZE MiB file (each returns
  once the data is on the storage nodes; both CLIs pay their process start-up);
* get: ``walrusfs read CAP -o OUT`` against ``tahoe get CAP OUT`` of that file;
* small files made durable: ``cp -r`` of FILES 4 KiB files (in 20 directories) into the
  mount, then fsync of the mount's root, which returns once every file is certified and
  every namespace entry is in the replicated log (the "untar until certified" definition
  of benchmarks/mount.py), against ``tahoe cp -r DIR alias:roundK``, which returns once
  every file's shares are placed on 7 servers (happy = 7) and the directories are written.

It prints medians over the rounds (MB/s or files/s), the ratio walrusfs / Tahoe, the
issue's targets, and the machine's core count and load averages. Every process it starts
is stopped by its PID, and its temporary directory removed, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TAHOE_VERSION = "1.20.0"
NEEDED, HAPPY, TOTAL = 3, 7, 7
STORAGE_NODES = 7
#: (measurement, issue target for walrusfs / Tahoe) in print order.
TARGETS = {"put": 1.0, "get": 1.5, "small": 3.0}
SMALL_FILE = 4096
SMALL_DIRS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options, checked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64, help="MiB for put and get (default 64)")
    parser.add_argument("--files", type=int, default=1000, help="4 KiB files made durable per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--skip-install", action="store_true",
                        help=f"use the existing Tahoe environment as it is (must hold tahoe-lafs {TAHOE_VERSION})")
    args = parser.parse_args(argv)
    for name in ("size_mib", "files", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def tahoe_venv() -> Path:
    """Where the benchmark keeps its own Tahoe virtual environment."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "walrusfs-bench" / "tahoe-venv"


def installed_version(venv: Path) -> str | None:
    """The tahoe-lafs version in ``venv`` (None if it has none that runs)."""
    exe = venv / "bin" / "tahoe"
    if not exe.exists():
        return None
    result = subprocess.run([str(exe), "--version"], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    for word in result.stdout.split():
        if word.startswith("tahoe-lafs/"):
            return word.split("/", 1)[1]
    return None


def ensure_tahoe(venv: Path, skip_install: bool) -> Path:
    """The ``tahoe`` executable of the pinned version, installing it into ``venv`` if needed."""
    version = installed_version(venv)
    if version != TAHOE_VERSION:
        if skip_install:
            raise SystemExit(f"--skip-install: {venv} has tahoe-lafs {version or 'not installed'}, "
                             f"not {TAHOE_VERSION}; run without --skip-install to install it")
        print(f"installing tahoe-lafs {TAHOE_VERSION} into {venv} ...", file=sys.stderr, flush=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdin=subprocess.DEVNULL)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        f"tahoe-lafs=={TAHOE_VERSION}"], check=True, stdin=subprocess.DEVNULL)
        if installed_version(venv) != TAHOE_VERSION:
            raise SystemExit(f"tahoe-lafs {TAHOE_VERSION} did not install into {venv}")
    return venv / "bin" / "tahoe"


#: How each node is started: ``tahoe run``, except that Tahoe's Foolscap log port (for
#: ``flogtool``; allmydata/node.py create_log_tub) binds every interface in 1.20 and has no
#: setting, so it is made to listen on 127.0.0.1 like every other port of the grid.
NODE_LAUNCHER = """
import socket, sys
from allmydata.util import iputil

def listen_on_localhost(tub, portnum=None):
    if portnum is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            portnum = s.getsockname()[1]
    tub.listenOn(f"tcp:{portnum}:interface=127.0.0.1")
    tub.setLocation(f"127.0.0.1:{portnum}")
    return portnum

iputil.listenOnUnused = listen_on_localhost
from allmydata.scripts.runner import run
sys.exit(run())
"""


def node_files(kind: str, nickname: str, tub_port: int | None = None, web_port: int | None = None,
               introducer_furl: str | None = None) -> dict[str, str]:
    """The files of a Tahoe node directory (relative path -> text) for ``kind`` introducer, storage or client.

    Every listener is bound to 127.0.0.1; the client node has no Foolscap listener at all
    and only the storage nodes offer storage. The ``.tac`` file is the marker ``tahoe run``
    reads a node's kind from (what ``tahoe create-node`` writes).
    """
    if kind not in ("introducer", "storage", "client"):
        raise ValueError(f"unknown Tahoe node kind {kind!r}")
    if kind != "client" and tub_port is None:
        raise ValueError(f"a Tahoe {kind} node needs a tub port")
    if kind != "introducer" and not introducer_furl:
        raise ValueError(f"a Tahoe {kind} node needs the introducer's FURL")
    if kind == "client":
        tub = "tub.port = disabled\ntub.location = disabled\n"
    else:
        tub = f"tub.port = tcp:{tub_port}:interface=127.0.0.1\ntub.location = tcp:127.0.0.1:{tub_port}\n"
    web = f"tcp:{web_port}:interface=127.0.0.1" if web_port is not None else ""
    cfg = f"[node]\nnickname = {nickname}\nreveal-IP-address = true\nweb.port = {web}\n{tub}"
    files = {}
    if kind == "introducer":
        files["tahoe-introducer.tac"] = "# Tahoe-LAFS introducer (walrusfs benchmark)\n"
    else:
        cfg += (f"\n[client]\nshares.needed = {NEEDED}\nshares.happy = {HAPPY}\nshares.total = {TOTAL}\n"
                f"\n[storage]\nenabled = {'true' if kind == 'storage' else 'false'}\nreserved_space = 0\n")
        files["tahoe-client.tac"] = "# Tahoe-LAFS client node (walrusfs benchmark)\n"
        files["private/introducers.yaml"] = f"introducers:\n  default:\n    furl: {introducer_furl}\n"
    files["tahoe.cfg"] = cfg
    return files


def write_node(directory: Path, files: dict[str, str]) -> None:
    """Write a node directory from ``node_files`` (with the ``private`` directory Tahoe keeps its keys in)."""
    (directory / "private").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 right now."""
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


class OperationFailed(SystemExit):
    """A measured command failed: the round records it (left out of the median); during set-up it ends the run."""


def wait_until(what: str, predicate: Callable[[], bool], limit: float, alive: Callable[[], str | None]) -> None:
    """Poll ``predicate`` for at most ``limit`` s; fail with ``alive()``'s complaint as soon as it has one."""
    deadline = time.monotonic() + limit
    while not predicate():
        problem = alive()
        if problem:
            raise SystemExit(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not after {limit:.0f} s")
        time.sleep(0.2)


class TahoeGrid:
    """An introducer, storage nodes and a client node, each a ``tahoe run`` process we hold the PID of."""

    def __init__(self, tahoe: Path, work: Path) -> None:
        self.tahoe = tahoe
        self.work = work
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.client = work / "client"
        self.web_port = 0

    def _run(self, name: str, directory: Path) -> None:
        log = open(directory / "run.log", "ab")  # noqa: SIM115 - the process keeps it
        with log:
            # Own session: a Ctrl-C reaches only this script, which then stops the nodes in order.
            python = self.tahoe.parent / "python"
            process = subprocess.Popen([str(python), "-c", NODE_LAUNCHER, "run", "--allow-stdin-close", str(directory)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append((name, process))

    def _dead(self) -> str | None:
        for name, process in self.processes:
            if process.poll() is not None:
                log = self.work / name / "run.log"
                return f"tahoe node {name} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        return None

    def start(self) -> None:
        """Start every node and wait until the client sees all storage servers."""
        intro_port, web_port, *storage_ports = free_ports(2 + STORAGE_NODES)
        intro = self.work / "introducer"
        write_node(intro, node_files("introducer", "introducer", intro_port))
        self._run("introducer", intro)
        furl_file = intro / "private" / "introducer.furl"
        wait_until("Tahoe introducer start", lambda: furl_file.exists() and "pb://" in furl_file.read_text(),
                   120, self._dead)
        furl = furl_file.read_text().strip()
        for k, port in enumerate(storage_ports):
            write_node(self.work / f"storage-{k}", node_files("storage", f"storage-{k}", port, None, furl))
            self._run(f"storage-{k}", self.work / f"storage-{k}")
        self.web_port = web_port
        write_node(self.client, node_files("client", "client", None, web_port, furl))
        self._run("client", self.client)
        wait_until(f"Tahoe client connected to {STORAGE_NODES} storage servers",
                   lambda: self.connected() >= STORAGE_NODES, 180, self._dead)

    def connected(self) -> int:
        """Storage servers the client node is connected to (0 while its web API is not up)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/?t=json", timeout=5) as reply:
                servers = json.loads(reply.read())["servers"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(1 for s in servers if str(s.get("connection_status", "")).lower().startswith("connected"))

    def cli(self, *args: str) -> str:
        """Run a ``tahoe`` command against the client node; its stdout."""
        result = subprocess.run([str(self.tahoe), "-d", str(self.client), *args], check=False, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise OperationFailed(f"tahoe {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result.stdout

    def stop(self) -> None:
        """SIGTERM every node by PID (the client first), then SIGKILL what has not exited after 10 s."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()


class Walrus:
    """A devnet of 7 peers (``walrusfs devnet up``, stopped by PID with ``devnet down``) and one mount."""

    def __init__(self, work: Path) -> None:
        self.exe = shutil.which("walrusfs", path=str(Path(sys.executable).parent)) or "walrusfs"
        self.work = work
        self.net = work / "net"
        self.committee = self.net / "committee.toml"
        self.mount = None
        self.up = False

    def run(self, *args: str) -> str:
        """Run walrusfs, failing loudly; its stdout."""
        result = subprocess.run([self.exe, *args], check=False, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise OperationFailed(f"walrusfs {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self) -> None:
        """Start the devnet and mount a fresh private volume."""
        from tests.mounting import Mount, create_volume

        self.up = True  # devnet.json records every peer started, even if `up` fails half way
        self.run("devnet", "up", "--peers", "7", str(self.net))
        config = self.work / "config"
        create_volume(config, "bench")
        self.mount = Mount(self.committee, self.work / "mnt", "bench", config, self.work / "state" / "mount")
        self.mount.start()

    def store(self, path: Path) -> str:
        """Store ``path`` sealed; its blob capability."""
        return json.loads(self.run("store", str(path), "--encrypt", "--json", "--committee",
                                   str(self.committee)))["capability"]

    def read(self, cap: str, out: Path) -> None:
        """Read a blob capability into ``out``."""
        self.run("read", cap, "-o", str(out), "--committee", str(self.committee))

    def copy_durable(self, source: Path, name: str) -> None:
        """``cp -r`` into the mount, then fsync its root: every file certified and logged."""
        from tests.mounting import fsync

        assert self.mount is not None
        self.check_mounted()
        try:
            subprocess.run(["cp", "-r", str(source), str(self.mount.path / name)], check=True,
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            fsync(self.mount.path)
        except (subprocess.CalledProcessError, OSError) as exc:
            self.check_mounted()
            detail = exc.stderr[-2000:] if isinstance(exc, subprocess.CalledProcessError) else exc
            raise OperationFailed(f"cp -r into the mount and fsync failed: {detail}") from exc
        self.check_mounted()  # else cp and fsync went to the bare mount point

    def check_mounted(self) -> None:
        """Fail if the mount process has gone (its mount point is then a plain local directory)."""
        assert self.mount is not None and self.mount.process is not None
        if self.mount.process.poll() is not None or not os.path.ismount(self.mount.path):
            raise SystemExit(f"the walrusfs mount has gone (exit {self.mount.process.returncode}):\n"
                             f"{self.mount.log.read_text()[-3000:]}")

    def pending(self) -> int:
        """Uploads the mount still has pending (0 after a successful fsync of its root)."""
        assert self.mount is not None
        return int(self.mount.status().get("pending_count", 0))

    def stop(self) -> None:
        """Unmount (waiting for the mount process by PID), then stop the peers by their recorded PIDs."""
        if self.mount is not None:
            self.mount.stop()
        if self.up and self.net.exists():
            subprocess.run([self.exe, "devnet", "down", str(self.net)], check=False, capture_output=True,
                           stdin=subprocess.DEVNULL)


def random_file(path: Path, size: int) -> None:
    """``size`` random bytes, written in 1 MiB blocks."""
    with open(path, "wb") as f:
        f.writelines(os.urandom(min(1 << 20, size - start)) for start in range(0, size, 1 << 20))


def small_tree(path: Path, files: int) -> None:
    """``files`` random 4 KiB files in ``SMALL_DIRS`` directories."""
    for i in range(files):
        directory = path / f"d{i % SMALL_DIRS}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i}.bin").write_bytes(os.urandom(SMALL_FILE))


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


Seconds = dict[str, dict[str, list[float]]]
Failures = list[tuple[int, str, str, str]]


def attempt(k: int, side: str, what: str, action: Callable[[], object], seconds: Seconds,
            failures: Failures) -> bool:
    """Time ``action`` into ``seconds``; if its command fails, record that in ``failures`` instead."""
    try:
        seconds[side][what].append(timed(action))
        return True
    except OperationFailed as exc:
        message = " ".join(str(exc.code).split())
        failures.append((k, side, what, message))
        print(f"round {k + 1}: {side} {what} FAILED: {message[:2000]}", file=sys.stderr, flush=True)
        return False


def one_round(k: int, walrus: Walrus, tahoe: TahoeGrid, work: Path, size: int, files: int,
              seconds: Seconds, failures: Failures) -> None:
    """Measure put, get and small files once on each side, walrusfs first in even rounds."""
    order = ["walrusfs", "tahoe"] if k % 2 == 0 else ["tahoe", "walrusfs"]
    data = work / f"data-{k}.bin"
    random_file(data, size)
    caps: dict[str, str] = {}
    put = {"walrusfs": lambda: caps.update(walrusfs=walrus.store(data)),
           "tahoe": lambda: caps.update(tahoe=tahoe.cli("put", str(data)).strip())}
    for side in order:
        attempt(k, side, "put", put[side], seconds, failures)
    for side in order:
        if side not in caps:
            continue  # its put failed: nothing to get
        out = work / f"out-{side}-{k}.bin"
        get = {"walrusfs": lambda out=out: walrus.read(caps["walrusfs"], out),
               "tahoe": lambda out=out: tahoe.cli("get", caps["tahoe"], str(out))}
        if attempt(k, side, "get", get[side], seconds, failures) and not same_bytes(data, out):
            raise SystemExit(f"{side} read back different bytes in round {k + 1}")
        out.unlink(missing_ok=True)
    data.unlink()
    for side in order:
        tree = work / f"small-{side}-{k}"
        small_tree(tree, files)
        copy = {"walrusfs": lambda tree=tree: walrus.copy_durable(tree, f"round{k}"),
                "tahoe": lambda tree=tree: tahoe.cli("cp", "-r", str(tree), f"bench:round{k}")}
        if attempt(k, side, "small", copy[side], seconds, failures) and side == "walrusfs" and walrus.pending():
            raise SystemExit(f"the mount still has {walrus.pending()} uploads pending after fsync")
        shutil.rmtree(tree)

    def shown(side: str, what: str) -> str:
        failed = any(f[:3] == (k, side, what) for f in failures)
        return f"{what} failed" if failed or not seconds[side][what] else f"{what} {seconds[side][what][-1]:.1f} s"

    report = ", ".join(f"{side} " + " ".join(shown(side, what) for what in TARGETS) for side in order)
    print(f"round {k + 1}: {report}; load {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
          file=sys.stderr, flush=True)


def table(seconds: Seconds, failures: Failures, size: int, files: int, rounds: int) -> list[str]:
    """The result table (Markdown) from the seconds each round took; a failed operation is left out of its median."""
    mb = size / 1e6

    def rate(side: str, what: str) -> float | None:
        amount = files if what == "small" else mb
        return amount / statistics.median(seconds[side][what]) if seconds[side][what] else None

    def cell(side: str, what: str, unit: str) -> str:
        value = rate(side, what)
        if value is None:
            return "failed"
        count = len(seconds[side][what])
        return f"{value:.1f} {unit}" + (f" ({count} of {rounds} rounds)" if count < rounds else "")

    labels = {
        "put": (f"put {size >> 20} MiB (`walrusfs store --encrypt` / `tahoe put`)", "MB/s"),
        "get": (f"get {size >> 20} MiB (`walrusfs read` / `tahoe get`)", "MB/s"),
        "small": (f"{files:,} files of 4 KiB made durable (`cp -r` + fsync / `tahoe cp -r`)", "files/s"),
    }
    lines = [f"| measurement (median of {rounds}) | walrusfs | Tahoe-LAFS | walrusfs / Tahoe | target |",
             "|---|---|---|---|---|"]
    for what, target in TARGETS.items():
        label, unit = labels[what]
        ours, theirs = rate("walrusfs", what), rate("tahoe", what)
        ratio = f"{ours / theirs:.2f}" if ours is not None and theirs is not None else "-"
        lines.append(f"| {label} | {cell('walrusfs', what, unit)} | {cell('tahoe', what, unit)} | {ratio} "
                     f"| >= {target:.1f} |")
    if failures:
        lines.append("")
    for k, side, what, message in failures:
        lines.append(f"round {k + 1}: {side} {what} failed (left out of the median): {message[:400]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    tahoe_exe = ensure_tahoe(tahoe_venv(), args.skip_install)
    size = args.size_mib << 20
    load_start = os.getloadavg()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    work = Path(tempfile.mkdtemp(prefix="walrusfs-vs-tahoe-"))
    walrus = Walrus(work / "walrusfs")
    grid = TahoeGrid(tahoe_exe, work / "tahoe")
    (work / "walrusfs").mkdir()
    (work / "tahoe").mkdir()
    seconds: Seconds = {side: {what: [] for what in TARGETS} for side in ("walrusfs", "tahoe")}
    failures: Failures = []
    try:
        print("starting a walrusfs devnet of 7 peers and a mount ...", file=sys.stderr, flush=True)
        walrus.start()
        print(f"starting Tahoe-LAFS {TAHOE_VERSION}: introducer, {STORAGE_NODES} storage nodes, client ...",
              file=sys.stderr, flush=True)
        grid.start()
        grid.cli("create-alias", "bench")
        for k in range(args.rounds):
            one_round(k, walrus, grid, work, size, args.files, seconds, failures)
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            grid.stop()
        finally:
            walrus.stop()
            mounted = walrus.mount is not None and os.path.ismount(walrus.mount.path)
            if mounted:
                print(f"{walrus.mount.path} is still mounted; leaving {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)
    load_end = os.getloadavg()
    print(f"\nwalrusfs vs Tahoe-LAFS {TAHOE_VERSION}: 3-of-7 on 127.0.0.1 (walrusfs n = 7, f = 2; Tahoe "
          f"needed {NEEDED}, happy {HAPPY}, total {TOTAL}), {args.rounds} alternating rounds")
    print(f"cores: {os.cpu_count()}; load average at start {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {' '.join(f'{x:.2f}' for x in load_end)}")
    print("durable: walrusfs - fsync of the mount root returned (every file certified by 2f + 1 peers and "
          "every namespace entry in the log); Tahoe - `tahoe cp` returned (shares placed on 7 servers, "
          "directories written)")
    for line in table(seconds, failures, size, args.files, args.rounds):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

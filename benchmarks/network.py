"""Network benchmark: store and read blobs on 7 local peer processes vs one raw libp2p stream.

Run ``python benchmarks/network.py``. It starts a devnet of 7 ``walrusfs peer`` processes
on 127.0.0.1 (in a temporary directory), then, in one run:

* store: ``Client.store`` of a 16 MiB and a 256 MiB blob (encode, send every sliver pair,
  collect 2f + 1 signed confirmations; the grace period for the rest is not counted);
* read: ``Client.read`` of the same blob (metadata, p verified systematic slivers);
* raw: one py-libp2p stream, with the same Noise + Yamux host configuration, moving the
  same number of bytes to (upload) and from (download) a sink process in 1 MiB writes;
* CPU: a 64 MiB store (delivered to all 7 peers) and read, with the CPU time (utime +
  stime from /proc/<pid>/stat) the client process and the 7 peer processes spent on it,
  per MB of blob. The peers' idle rate, measured just before, is subtracted, and each
  measurement runs until the peers are idle again (so work they finish after the reply,
  such as the last fsyncs, is counted). A first round on the fresh peers is reported on
  its own (processes that have not yet used their memory pay page faults for it), then the
  mean of ``--cpu-runs`` more.

Throughputs are blob bytes per second; ratios compare them with the raw stream.
Targets on the 2-core development machine: store >= 40 MB/s, read >= 60 MB/s.
``--cpu-only`` runs just the CPU measurement (``--cpu-runs`` times), for profiling work.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

SIZES = {"16 MiB": 16 << 20, "256 MiB": 256 << 20}
SINK = "/walrusfs-bench/sink/1.0.0"
SOURCE = "/walrusfs-bench/source/1.0.0"
TARGET_STORE = 40.0
TARGET_READ = 60.0
CPU_SIZE = 64 << 20
#: The peers' CPU is sampled this often until it rises by less than SETTLED seconds (all 7) per sample.
SETTLE_STEP = 0.5
SETTLED = 0.03
SETTLE_LIMIT = 30.0
IDLE_WINDOW = 2.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sink_server(seed: bytes, addr_file: Path) -> None:
    """A host that discards uploads and serves downloads, for the raw baseline."""
    import struct

    from p2p.framing import CHUNK
    from p2p.host import running_host

    async with running_host(seed, ["/ip4/127.0.0.1/tcp/0"]) as host:

        async def sink(stream: object) -> None:
            total = 0
            (expected,) = struct.unpack(">Q", await stream.read(8))  # type: ignore[attr-defined]
            while total < expected:
                total += len(await stream.read(CHUNK))  # type: ignore[attr-defined]
            await stream.write(b"done")  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]

        async def source(stream: object) -> None:
            (size,) = struct.unpack(">Q", await stream.read(8))  # type: ignore[attr-defined]
            block = os.urandom(CHUNK)
            for start in range(0, size, CHUNK):
                await stream.write(block[: min(CHUNK, size - start)])  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]

        host.set_stream_handler(SINK, sink)
        host.set_stream_handler(SOURCE, source)
        addr_file.write_text(str(host.get_transport_addrs()[0]))
        await trio.sleep_forever()


async def raw_stream(peer_id: str, addr: str, size: int) -> tuple[float, float]:
    """Seconds to upload and to download ``size`` bytes on one stream."""
    import struct

    from p2p.framing import CHUNK
    from p2p.host import peer_info, running_host

    async with running_host(os.urandom(32)) as host:
        info = peer_info(peer_id, [addr])
        await host.connect(info)
        block = os.urandom(CHUNK)
        start = time.perf_counter()
        stream = await host.new_stream(info.peer_id, [SINK])
        await stream.write(struct.pack(">Q", size))
        for offset in range(0, size, CHUNK):
            await stream.write(block[: min(CHUNK, size - offset)])
        assert await stream.read(4) == b"done"
        upload = time.perf_counter() - start
        start = time.perf_counter()
        stream = await host.new_stream(info.peer_id, [SOURCE])
        await stream.write(struct.pack(">Q", size))
        got = 0
        while got < size:
            got += len(await stream.read(CHUNK))
        download = time.perf_counter() - start
    return upload, download


async def blob_round_trip(committee_path: Path, size: int) -> tuple[float, float]:
    """Seconds to store and to read back a ``size``-byte blob."""
    from p2p.host import running_host
    from walrusfs.client.blob import Client
    from walrusfs.client.writer import load_authority
    from walrusfs.core.committee import parse_committee

    committee = parse_committee(committee_path.read_text())
    data = os.urandom(size)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=load_authority(committee_path))
        start = time.perf_counter()
        result = await client.store(data, grace=0)
        stored = time.perf_counter() - start
        start = time.perf_counter()
        back = await client.read(result.blob_id)
        read = time.perf_counter() - start
    assert back == data
    return stored, read


async def _peers_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def _settle(pids: list[int]) -> float:
    """Wait until the peers are idle again (bounded); their total CPU seconds then."""
    last = await _peers_cpu(pids)
    deadline = trio.current_time() + SETTLE_LIMIT
    while trio.current_time() < deadline:
        await trio.sleep(SETTLE_STEP)
        now = await _peers_cpu(pids)
        if now - last < SETTLED:
            return now
        last = now
    return last


async def cpu_round_trip(committee_path: Path, pids: list[int], size: int) -> dict[str, float]:
    """Client and peer CPU seconds (peers' idle rate subtracted) and wall seconds of one store and one read."""
    from p2p.host import running_host
    from walrusfs.client.blob import Client
    from walrusfs.client.writer import load_authority
    from walrusfs.core.committee import parse_committee

    committee = parse_committee(committee_path.read_text())
    data = os.urandom(size)
    me = os.getpid()
    out: dict[str, float] = {}
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=load_authority(committee_path))
        await client.health()  # connections and streams up, so neither phase pays for dialing
        await _settle(pids)
        start, before = trio.current_time(), await _peers_cpu(pids)
        await trio.sleep(IDLE_WINDOW)
        idle = (await _peers_cpu(pids) - before) / (trio.current_time() - start)
        out["idle"] = idle
        for phase in ("store", "read"):
            client_before, peers_before, start = cpu_seconds(me), await _peers_cpu(pids), trio.current_time()
            if phase == "store":
                # A grace period long enough for every peer: all 7 verify and store their pairs.
                result = await client.store(data, grace=60)
                assert not result.failures, result.failures
            else:
                assert await client.read(result.blob_id) == data
            out[f"{phase}_s"] = trio.current_time() - start
            out[f"{phase}_client"] = cpu_seconds(me) - client_before
            peers_after = await _settle(pids)
            out[f"{phase}_peers"] = peers_after - peers_before - idle * (trio.current_time() - start)
    return out


def cpu_table(runs: list[dict[str, float]], size: int, cold: dict[str, float]) -> list[str]:
    """Markdown rows of per-MB CPU: each phase's mean over ``runs``, then the first (``cold``) round alone."""
    mb = size / 1e6

    def row(label: str, phase: str, of: list[dict[str, float]]) -> str:
        wall = sum(r[f"{phase}_s"] for r in of) / len(of)
        client = 1000 * sum(r[f"{phase}_client"] for r in of) / len(of) / mb
        peers = 1000 * sum(r[f"{phase}_peers"] for r in of) / len(of) / mb
        return f"| {label} | {mb / wall:.1f} | {client:.1f} | {peers:.1f} | {client + peers:.1f} |"

    return [
        f"CPU per MB of blob, {size >> 20} MiB blob, mean of {len(runs)} run(s) after a first round on fresh "
        f"peers; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; peers idle "
        f"{1000 * sum(r['idle'] for r in runs) / len(runs):.0f} ms/s (subtracted)",
        "| phase | MB/s | client ms/MB | peers ms/MB | total ms/MB |",
        "|---|---|---|---|---|",
        row("store (all 7 peers)", "store", runs),
        row("read", "read", runs),
        row("first store on fresh peers", "store", [cold]),
        row("first read", "read", [cold]),
    ]


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sink", nargs=2, metavar=("SEED_HEX", "ADDR_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--cpu-only", action="store_true", help="only the 64 MiB CPU measurement")
    parser.add_argument("--cpu-runs", type=int, default=1, help="CPU measurements to average (default 1)")
    args = parser.parse_args()
    from p2p.host import configure_logging
    from walrusfs.allocator import tune_allocator

    configure_logging(50)
    tune_allocator()
    if args.sink:
        trio.run(sink_server, bytes.fromhex(args.sink[0]), Path(args.sink[1]))
        return 0
    exe = str(Path(sys.executable).parent / "walrusfs")
    with tempfile.TemporaryDirectory(prefix="walrusfs-bench-") as tmp:
        directory = Path(tmp) / "devnet"
        subprocess.run([exe, "devnet", "up", "--peers", "7", str(directory)], check=True, stdout=subprocess.DEVNULL)
        seed = os.urandom(32)
        addr_file = Path(tmp) / "sink.addr"
        sink = subprocess.Popen([sys.executable, __file__, "--sink", seed.hex(), str(addr_file)], stdin=subprocess.DEVNULL)
        try:
            from walrusfs.identity import Identity

            for _ in range(600):
                if addr_file.exists() and addr_file.read_text():
                    break
                time.sleep(0.05)
            from walrusfs.devnet import running

            rows = []
            for label in [] if args.cpu_only else args.sizes:
                size = SIZES[label]
                print(f"running {label} ...", file=sys.stderr, flush=True)
                up, down = trio.run(raw_stream, Identity(seed).peer_id, addr_file.read_text(), size)
                stored, read = trio.run(blob_round_trip, directory / "committee.toml", size)
                rows.append((label, size, up, down, stored, read))
            pids = sorted(running(directory).values())
            cpu_runs = []
            for k in range(max(1, args.cpu_runs) + 1):
                print(f"running CPU {k} ...", file=sys.stderr, flush=True)
                cpu_runs.append(trio.run(cpu_round_trip, directory / "committee.toml", pids, CPU_SIZE))
            cold, cpu_runs = cpu_runs[0], cpu_runs[1:]
        finally:
            sink.terminate()
            sink.wait()
            subprocess.run([exe, "devnet", "down", str(directory)], check=True, stdout=subprocess.DEVNULL)
    print(f"cores: {os.cpu_count()}, 7 peer processes on 127.0.0.1, Noise + Yamux")
    if args.cpu_only:
        print("\n".join(cpu_table(cpu_runs, CPU_SIZE, cold)))
        return 0
    print("| blob | raw stream up MB/s | store MB/s (ratio) | raw stream down MB/s | read MB/s (ratio) |")
    print("|---|---|---|---|---|")
    ok = True
    for label, size, up, down, stored, read in rows:
        mb = size / 1e6
        print(
            f"| {label} | {mb / up:.0f} | {mb / stored:.1f} ({up / stored:.2f}x) | "
            f"{mb / down:.0f} | {mb / read:.1f} ({down / read:.2f}x) |"
        )
        ok &= mb / stored >= TARGET_STORE and mb / read >= TARGET_READ
    print(f"{'PASS' if ok else 'FAIL'}: store >= {TARGET_STORE:.0f} MB/s and read >= {TARGET_READ:.0f} MB/s")
    print()
    print("\n".join(cpu_table(cpu_runs, CPU_SIZE, cold)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

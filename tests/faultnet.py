"""Network faults for tests, in userspace on 127.0.0.1 (this kernel has no netem).

``DelayProxy`` sits between clients and one peer and holds every chunk it forwards, which
gives that link latency and a low byte rate (a host that takes TCP connections and never
says a word is ``walrusfs peer --fault black-hole``). ``point_at`` writes a copy of a committee file in which
one member's address is replaced, so only the clients that use the copy see the fault.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
from pathlib import Path


def _listener(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.settimeout(0.2)  # the accept loop checks for close() this often
    return sock


class DelayProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``, holding each chunk of up to ``chunk`` bytes ``delay`` s.

    Each direction of a connection is pumped by its own thread, so a chunk's delay adds
    latency and caps the rate at about ``chunk / delay`` bytes per second.
    """

    def __init__(self, target: int, delay: float, chunk: int = 16384) -> None:
        self._sock = _listener()
        self.port = self._sock.getsockname()[1]
        self.target = target
        self.delay = delay
        self.chunk = chunk
        self.forwarded = 0
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = source.recv(self.chunk)
                if not data:
                    break
                self._stop.wait(self.delay)
                sink.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting and end every forwarded connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        for sock in self._open:
            sock.close()


def port_of(committee: Path, index: int) -> int:
    """The TCP port of member ``index`` in a committee file."""
    ports = re.findall(r'addrs = \["/ip4/127\.0\.0\.1/tcp/(\d+)', committee.read_text())
    return int(ports[index])


def point_at(committee: Path, index: int, port: int, out: Path) -> Path:
    """Write a copy of ``committee`` whose member ``index`` is reached at 127.0.0.1:``port``; return it."""
    old = f"/ip4/127.0.0.1/tcp/{port_of(committee, index)}\""
    text = committee.read_text()
    assert text.count(old) == 1, old
    out.write_text(text.replace(old, f"/ip4/127.0.0.1/tcp/{port}\""))
    # Commands store with the writer key beside their committee file: the devnet's, granted.
    writer = committee.parent / "writer.key"
    if writer.exists() and out.parent != committee.parent:
        shutil.copy2(writer, out.parent / "writer.key")
    return out

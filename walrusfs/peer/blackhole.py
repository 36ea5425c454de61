"""A black hole in place of a peer (test fault): takes TCP connections and never says a word.

Harder on everyone else than a paused process: the TCP handshake completes and nothing
after it ever does (no Noise, no Yamux, no reply), like a host behind a firewall that
drops packets after the handshake or an adversary holding connections open.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import multiaddr


def listen_address(addr: str) -> tuple[str, int]:
    """(host, port) of a ``/ip4/HOST/tcp/PORT`` multiaddr."""
    parsed = multiaddr.Multiaddr(addr)
    return parsed.value_for_protocol("ip4"), int(parsed.value_for_protocol("tcp"))


def run_black_hole(addr: str, announce: Callable[[str], object] = print) -> None:
    """Accept connections on ``addr`` and hold them, silent, until the process is stopped."""
    host, port = listen_address(addr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    announce("accepting connections and never answering")
    held = []  # kept open (and unread) for the life of the process
    while True:
        conn, _ = sock.accept()
        held.append(conn)

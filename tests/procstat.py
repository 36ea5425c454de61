"""What a test reads of another process from /proc: resident memory and CPU time."""

from __future__ import annotations

import os


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (``OSError`` if it is gone)."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds (``OSError`` if it is gone)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

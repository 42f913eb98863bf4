"""
Free loopback ports for servers the tests start in other processes.

A port found free now is bound by the other process a moment later; in
between, any outgoing connection may take it if it lies in the kernel's
ephemeral range (then the server cannot listen).  So ports are chosen below
that range, and checked free for TCP and UDP alike.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _below_ephemeral() -> tuple[int, int]:
    """
    Ports to choose from: below the kernel's ephemeral range, which outgoing
    connections (the browsers', the tests', the load generator's) take ports
    from at any moment.  A port checked free there could be taken by one of
    them before coturn binds it (its TCP listener then fails to bind, and it
    retries for ever without answering).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 10000, max(10000 + 1000, low)


def free_port_range(count: int, exclude: range = range(0)) -> int:
    """
    The first of C{count} consecutive ports free on 127.0.0.1 just now, for
    both UDP and TCP (coturn listens on both), below the ephemeral range.
    """
    lowest, highest = _below_ephemeral()
    for _ in range(200):
        base = random.randrange(lowest, highest - count)
        if set(range(base, base + count)) & set(exclude):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    sockets.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1 below the ephemeral range")


def free_port() -> int:
    """One loopback port free for TCP and UDP just now, below the ephemeral range."""
    return free_port_range(1)

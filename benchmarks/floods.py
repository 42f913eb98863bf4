#!/usr/bin/env python3
"""
Hostile floods against a server in a child process: its CPU time and memory,
and a normal chat's latency alongside.

    python3 benchmarks/floods.py flood [--code DIR] [-- extra server options]
    python3 benchmarks/floods.py pong  [--code DIR] [--seconds 20] [-- extra server options]

C{flood}: 32 clients each open a text message with a non-final frame and send
empty continuation frames and pings as fast as the server takes them, for
10 s.  C{pong}: one client with a 4 KiB receive buffer that never reads opens
a message the same way and floods 125-byte pings (plus a continuation frame
every 2 s), for C{--seconds}.  Meanwhile two clients chat (a message every
0.2 s, C{/healthz} every 5th).  Prints one JSON line: the server's CPU
seconds and RSS (from /proc), when the attackers were dropped, the chat's
latency.  C{--code} runs the server from another checkout's C{chatroulette/}
(with its C{static/}), for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")

SERVER = """
import sys
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor
from twisted.application.app import startApplication
from twisted.application.service import Application
from chatroulette.tap import Options, makeService
options = Options()
options.parseOptions(["--listen", "tcp:%s:interface=127.0.0.1" % sys.argv[2], *sys.argv[3:]])
application = Application("chatroulette")
makeService(options).setServiceParent(application)
startApplication(application, False)
reactor.run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu(pid: int) -> float:
    """User plus system CPU seconds of process C{pid}."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def masked(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """One masked client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


PING = masked(b"p" * 125, opcode=9)
OPEN = masked(b'{"type":', fin=False)
CONT = masked(b"", opcode=0, fin=False)




class Client:
    """A minimal WebSocket client: JSON events in a queue, pings answered."""

    async def open(self, port: int) -> Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(handshake(port))
        await self.reader.readuntil(b"\r\n\r\n")
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.ensure_future(self.read())
        return self

    async def read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(2)
                opcode, n = head[0] & 15, head[1] & 127
                if n == 126:
                    n = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                payload = await self.reader.readexactly(n)
                if opcode == 1:
                    self.events.put_nowait(json.loads(payload))
                elif opcode == 9:
                    self.writer.write(masked(payload, opcode=10))
                elif opcode == 8:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.events.put_nowait({"type": "closed"})

    def send(self, **frame: Any) -> None:
        self.writer.write(masked(json.dumps(frame).encode()))

    async def next(self, type: str) -> dict[str, Any]:
        while True:
            event = await asyncio.wait_for(self.events.get(), 30)
            if event["type"] in (type, "closed"):
                return event


async def healthz(port: int) -> float:
    """Seconds a GET /healthz takes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    return time.monotonic() - started


async def chat(port: int, seconds: float, out: dict[str, Any]) -> None:
    """Two clients chat for C{seconds}: a message every 0.2 s, /healthz every 5th."""
    a, b = await Client().open(port), await Client().open(port)
    a.send(type="find")
    b.send(type="find")
    await a.next("paired")
    await b.next("paired")
    latencies, health = [], []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        a.send(type="message", text=f"{i} {time.monotonic()}")
        event = await b.next("message")
        if event["type"] != "message":
            out["chat_closed"] = True
            break
        latencies.append(time.monotonic() - float(event["text"].split()[1]))
        if i % 5 == 0:
            health.append(await healthz(port))
        i += 1
        await asyncio.sleep(0.2)
    out["chat_messages"] = len(latencies)
    if latencies:
        out["chat_latency_ms_median"] = round(statistics.median(latencies) * 1000, 1)
        out["chat_latency_ms_max"] = round(max(latencies) * 1000, 1)
    if health:
        out["healthz_ms_max"] = round(max(health) * 1000, 1)


async def flood_attacker(port: int, stop_at: float) -> float | None:
    """Empty continuation frames and pings until C{stop_at}; when the server dropped us, if it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake(port))
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OPEN)
    chunk = CONT * 5000 + PING * 50
    started = time.monotonic()
    ended: list[float] = []

    async def read_all() -> None:  # this attacker reads: it sees the close frame
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        ended.append(time.monotonic() - started)

    reading = asyncio.ensure_future(read_all())
    try:
        while time.monotonic() < stop_at and not ended:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 2)
    except (ConnectionError, asyncio.TimeoutError):
        pass
    await asyncio.wait([reading], timeout=max(0.0, stop_at - time.monotonic()))
    writer.close()
    return ended[0] if ended else None


async def pong_attacker(port: int, stop_at: float, out: dict[str, Any]) -> None:
    """Pings from a socket that never reads, until C{stop_at} or the server drops it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(handshake(port))
    response = b""
    while b"\r\n\r\n" not in response:
        response += s.recv(1024)
    s.setblocking(False)
    s.send(OPEN)
    started = time.monotonic()
    last_continuation = 0.0
    flood, pending, sent = PING * 200, b"", 0
    while time.monotonic() < stop_at:
        try:
            if not pending:  # whole frames only: a send may take part of them
                pending = flood
                if time.monotonic() - last_continuation > 2:
                    pending = CONT + flood
                    last_continuation = time.monotonic()
            n = s.send(pending)
            pending = pending[n:]
            sent += n
        except BlockingIOError:
            pass
        except OSError as e:
            out["attacker_dropped_after_s"] = round(time.monotonic() - started, 2)
            out["attacker_error"] = type(e).__name__
            break
        await asyncio.sleep(0.001)
    out["attacker_sent_mb"] = round(sent / 1e6, 1)
    s.close()


async def run(scenario: str, code: str, seconds: float, server_args: list[str]) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, code, str(port), *server_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        out: dict[str, Any] = {"scenario": scenario, "server_options": server_args}
        out["rss_start_mb"] = round(rss_mb(server.pid), 1)
        cpu_before, started = cpu(server.pid), time.monotonic()
        stop_at = started + seconds
        if scenario == "pong":
            samples: list[float] = []

            async def sample() -> None:
                while time.monotonic() < stop_at:
                    samples.append(round(rss_mb(server.pid), 1))
                    await asyncio.sleep(1)

            await asyncio.gather(pong_attacker(port, stop_at, out), chat(port, seconds, out), sample())
            out["rss_each_second_mb"] = samples
        else:
            results = await asyncio.gather(chat(port, seconds, out), *(flood_attacker(port, stop_at) for _ in range(32)))
            dropped = [r for r in results[1:] if r is not None]
            out["attackers_dropped"] = f"{len(dropped)}/32"
            if dropped:
                out["attackers_dropped_after_s_max"] = round(max(dropped), 2)
        out["wall_s"] = round(time.monotonic() - started, 1)
        out["server_cpu_s"] = round(cpu(server.pid) - cpu_before, 2)
        out["rss_end_mb"] = round(rss_mb(server.pid), 1)
        return out
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["flood", "pong"])
    parser.add_argument("--code", default=os.path.dirname(HERE), help="checkout to run the server from")
    parser.add_argument("--seconds", type=float, default=None, help="attack length (flood 10, pong 20)")
    parser.add_argument("server_args", nargs="*", help="extra server options (after --)")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.scenario == "flood" else 20.0)
    print(json.dumps(asyncio.run(run(args.scenario, args.code, seconds, args.server_args))))


if __name__ == "__main__":
    main()

"""
Real clusters for the tests: a real C{redis-server} and real server
processes (C{twistd chatroulette --redis ...}), each on its own loopback port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from twisted.internet import reactor, task
from twisted.internet.interfaces import IProcessTransport
from twisted.web.client import Agent

from .loopback import QueueClient, open_client, read_body
from .process import TWISTD, ServerProcess, start

POLL = 0.05


@dataclass
class Node:
    process: ServerProcess
    transport: IProcessTransport
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def client(self) -> QueueClient:
        return await open_client(self.url)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """C{/healthz}: the status code and the JSON body."""
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{self.port}/healthz".encode())
        body = await read_body(response)
        return response.code, json.loads(body)

    async def metrics(self) -> dict[str, float]:
        """C{/metrics}: each unlabelled sample's value."""
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{self.port}/metrics".encode())
        samples = {}
        for line in (await read_body(response)).decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def kill(self, signal: str = "KILL") -> None:
        if not self.process.ended.called:
            self.transport.signalProcess(signal)

    async def ended(self, timeout: float = 15) -> int | None:
        self.process.ended.addTimeout(timeout, reactor)
        return await self.process.ended

    def output(self) -> str:
        return self.process.output.decode(errors="replace")


async def start_node(redis_url: str, *options: str) -> Node:
    process, transport, port = await start(TWISTD, "--redis", redis_url, *options)
    return Node(process, transport, port)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Poll C{check} until it holds; fail saying C{what} did not happen within C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await task.deferLater(reactor, POLL, lambda: None)


async def ready(node: Node, timeout: float = 20) -> None:
    async def check() -> bool:
        code, _ = await node.health()
        return code == 200

    await eventually(check, f"node on port {node.port} ready:\n{node.output()}", timeout)

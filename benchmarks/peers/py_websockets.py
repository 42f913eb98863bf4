"""
Reference peer: a chat roulette server on the C{websockets} library (asyncio),
speaking the subset of docs/protocol.md that the load generator uses: welcome,
find -> waiting / paired, message and typing relay, leave, partner_left, error
(not_chatting, bad_request).  Random pairing from an O(1) waiting pool; no
interests, cooldowns or limits.  Pings like chatroulette: every 25 s, 10 s to
answer (the library's keep-alive).

    python py_websockets.py PORT
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve


class Lobby:
    def __init__(self) -> None:
        self.waiting: list[ServerConnection] = []
        self.slot: dict[ServerConnection, int] = {}
        self.partner: dict[ServerConnection, ServerConnection] = {}
        self.chat: dict[ServerConnection, str] = {}
        self.ids = itertools.count(1)

    def stop_waiting(self, ws: ServerConnection) -> None:
        i = self.slot.pop(ws, None)
        if i is None:
            return
        last = self.waiting.pop()
        if last is not ws:
            self.waiting[i] = last
            self.slot[last] = i

    def end_chat(self, ws: ServerConnection) -> None:
        other = self.partner.pop(ws, None)
        if other is not None:
            del self.partner[other]
            send(other, {"type": "partner_left", "chat": self.chat.pop(ws)})
            self.chat.pop(other, None)

    def find(self, ws: ServerConnection) -> None:
        self.end_chat(ws)
        if ws in self.slot:
            return
        if not self.waiting:
            self.slot[ws] = len(self.waiting)
            self.waiting.append(ws)
            send(ws, {"type": "waiting"})
            return
        other = self.waiting[random.randrange(len(self.waiting))]
        self.stop_waiting(other)
        chat = format(next(self.ids), "x")
        self.partner[ws], self.partner[other] = other, ws
        self.chat[ws] = self.chat[other] = chat
        paired = {"type": "paired", "chat": chat, "interests": [], "mode": "text"}
        send(other, paired)
        send(ws, paired)


def send(ws: ServerConnection, event: dict[str, object]) -> None:
    # broadcast() writes without awaiting: no task per frame.
    broadcast((ws,), json.dumps(event))


lobby = Lobby()
online = 0


async def handler(ws: ServerConnection) -> None:
    global online
    online += 1
    send(ws, {"type": "welcome", "online": online})
    try:
        async for raw in ws:
            try:
                m = json.loads(raw)
            except ValueError:
                send(ws, {"type": "error", "code": "bad_request", "message": "not JSON"})
                continue
            kind = m.get("type") if isinstance(m, dict) else None
            if kind == "find":
                lobby.find(ws)
            elif kind == "message":
                text = m.get("text")
                if not isinstance(text, str) or not text.strip():
                    send(ws, {"type": "error", "code": "bad_request", "message": "bad text"})
                elif ws in lobby.partner:
                    send(lobby.partner[ws], {"type": "message", "text": text})
                else:
                    send(ws, {"type": "error", "code": "not_chatting", "message": "no partner"})
            elif kind == "typing":
                if ws in lobby.partner:
                    send(lobby.partner[ws], {"type": "typing", "active": bool(m.get("active"))})
            elif kind == "leave":
                lobby.end_chat(ws)
                lobby.stop_waiting(ws)
            else:
                send(ws, {"type": "error", "code": "bad_request", "message": "unknown type"})
    finally:
        online -= 1
        lobby.stop_waiting(ws)
        lobby.end_chat(ws)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        handler, "127.0.0.1", port, compression=None, max_size=65536,
        ping_interval=25, ping_timeout=10, backlog=4096,
    ):
        print(f"websockets peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""
The shared lobby: many processes, one service, with the state in Redis.

Every state change is one call of the Lua script C{lobby.lua} (atomic in
Redis: see there for the key schema).  This node keeps a directory of its
own connections (L{_Local}) with what it last heard of each: the script's
answers and the events other nodes' calls published on this node's channel.
Each client's state carries an epoch, raised by every change in Redis, so an
event that arrives after a later answer (they come over two connections) is
recognised as stale and dropped.

Requests answer through the L{Peer} events, as in L{chatroulette.lobby.Lobby},
only later (after one Redis round trip).  Chats within this node relay in
process; across nodes through Redis pub/sub, on the partner node's channel.

While Redis cannot be reached (L{ready} false), chats within this node go on,
chats across nodes end with C{partner_left}, and requests that need the
shared state are refused with C{unavailable}.  Once Redis is back, the node
writes back what it owns (its clients, their queue places and chats) before
it calls itself ready again.
"""

from __future__ import annotations

import itertools
import json
import random
import secrets
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from typing import Any, Callable, Sequence

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .lobby import (
    DEFAULT_INTEREST_TIMEOUT,
    DEFAULT_REPEAT_COOLDOWN,
    INVITE_LIFETIME,
    Clock,
    DelayedCall,
    LobbyStats,
    Peer,
    State,
)
from .messages import BAD_REQUEST, NOT_CHATTING, TEXT, UNAVAILABLE, VIDEO, Mode, ProtocolError
from .redislink import LinkStats, RedisLink

SCRIPT = resources.files(__package__).joinpath("lobby.lua").read_text()
DEFAULT_PREFIX = "{chatroulette}"
UNAVAILABLE_TEXT = "The service is briefly unavailable; please try again in a moment."
_NOBODY = "You are not chatting with anyone."

_IDLE, _WAITING, _INVITING, _CHATTING = State.IDLE, State.WAITING, State.INVITING, State.CHATTING
_STATES = {s.value: s for s in State}
_FINDS = frozenset({"find", "join"})


def _cancel(call: DelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A (past) partner as this node knows it: enough to report them."""

    id: str
    client_id: str
    address_key: str | None
    node: str


@dataclass(eq=False, slots=True)
class _Local:
    """One of this node's clients, as this node last heard of it."""

    peer: Peer
    id: str
    client_id: str
    address_key: str | None
    state: State = _IDLE
    epoch: int = 0
    mode: Mode = TEXT
    interests: tuple[str, ...] = ()
    open: bool = False
    chat: str = ""
    partner: ClientInfo | None = None
    partner_peer: Peer | None = None  # the partner's peer, when on this node
    last: ClientInfo | None = None
    reported: str = ""
    invite: str = ""
    timers: list[DelayedCall] = field(default_factory=list)
    finding: int = 0  # finds (and joins) sent and not yet answered
    # Answers to this client's requests sent before this one (a leave) are
    # applied without telling the client: it has moved on.
    quiet_before: int = 0

    def stop_timers(self) -> None:
        for call in self.timers:
            _cancel(call)
        self.timers.clear()


class RedisLobby:
    """
    L{chatroulette.lobby.ILobby} on Redis: see the module docstring.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Clock,
        link: RedisLink,
        rng: random.Random | None = None,
        interest_timeout: float = DEFAULT_INTEREST_TIMEOUT,
        repeat_cooldown: float = DEFAULT_REPEAT_COOLDOWN,
        make_token: Callable[[], str] = lambda: secrets.token_urlsafe(9),
        on_pair: Callable[[str, str, str, Sequence[str]], None] | None = None,
        prefix: str = DEFAULT_PREFIX,
        node: str | None = None,
        on_ban: Callable[[str, float], None] | None = None,
    ) -> None:
        """
        @param on_ban: called on every node when the service bans an address
            (see L{report_address}), and for each ban in force when the node
            (re)joins Redis.
        """
        self._clock = clock
        self._link = link
        self._rng = rng if rng is not None else random.Random()
        self._interest_timeout = interest_timeout
        self._repeat_cooldown = repeat_cooldown
        self._make_token = make_token
        self._on_pair = on_pair
        self._on_ban = on_ban
        self.prefix = prefix
        self.node = node if node is not None else secrets.token_hex(6)
        self.channel = f"{prefix}:ch:{self.node}"
        self._ids = itertools.count(1)
        self._seqs = itertools.count(1)
        self._clients: dict[Peer, _Local] = {}
        self._by_id: dict[str, _Local] = {}
        self._counts = (0, 0, 0)
        self._connecting = 0
        # The service's bans as this node heard of them: written back with
        # its view, so they outlive a Redis that restarted empty.
        self._bans: dict[str, float] = {}
        self.stats = LobbyStats()
        self.cross_node_messages = 0
        link.attach(self.channel, SCRIPT, self._on_event, self._assert_view, self._on_lost)

    # Counts -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._link.ready

    @property
    def online(self) -> int:
        if not self._link.ready:
            return max(self._counts[0], len(self._clients))
        # Connections whose connect is still on its way are online already
        # (a newcomer's welcome counts itself).
        return self._counts[0] + self._connecting

    @property
    def waiting(self) -> int:
        return self._counts[1]

    @property
    def chatting(self) -> int:
        return self._counts[2]

    @property
    def link_stats(self) -> LinkStats:
        return self._link.stats

    @property
    def local_counts(self) -> tuple[int, int, int]:
        """This node's own online, waiting and chatting clients."""
        waiting = sum(1 for c in self._clients.values() if c.state in (_WAITING, _INVITING))
        chatting = sum(1 for c in self._clients.values() if c.state is _CHATTING)
        return len(self._clients), waiting, chatting

    def state_of(self, peer: Peer) -> State:
        local = self._clients[peer]
        if local.state is _IDLE and local.finding:
            return _WAITING  # queued as far as anyone here can tell: a leave takes it out
        return local.state

    def partner_of(self, peer: Peer) -> Peer | None:
        return self._clients[peer].partner_peer

    def flush(self) -> Deferred[None]:
        """
        Fires once every call made so far has been answered, every event
        published before has arrived, and the counts are the service's now.
        """
        if self._link.ready:
            self._call("counts", None)
        return self._link.flush()

    # Requests ---------------------------------------------------------------

    def connect(self, peer: Peer) -> None:
        local = _Local(
            peer,
            f"{self.node}.{next(self._ids)}",
            str(getattr(peer, "client_id", "-")),
            getattr(peer, "address_key", None),
        )
        self._clients[peer] = local
        self._by_id[local.id] = local
        if self._link.ready:
            self._connecting += 1
            self._call("connect", local, local.id, local.client_id, local.address_key or "")

    def disconnect(self, peer: Peer) -> None:
        local = self._clients.pop(peer, None)
        if local is None:
            return
        del self._by_id[local.id]
        local.stop_timers()
        self._end_locally(local, tell_partner=not self._link.ready)
        if self._link.ready:
            self._call("disconnect", None, local.id)

    def find(
        self, peer: Peer, interests: Sequence[str] = (), invite: str | None = None, mode: Mode = TEXT
    ) -> None:
        local = self._clients[peer]
        self._need_redis()
        if invite is not None:
            self._call("join", local, local.id, invite)
            return
        self._leave_locally(local)
        local.interests = tuple(interests)
        local.mode = mode
        local.open = not local.interests
        self._call("find", local, local.id, mode, orjson.dumps(local.interests).decode())

    def leave(self, peer: Peer) -> None:
        local = self._clients[peer]
        self._leave_locally(local)
        if self._link.ready:
            local.quiet_before = self._call("leave", local, local.id)

    def create_invite(self, peer: Peer, mode: Mode = TEXT) -> str:
        local = self._clients[peer]
        self._need_redis()
        self._leave_locally(local)
        code = self._make_token()
        local.invite = code
        local.mode = mode
        local.state = _INVITING
        local.timers.append(self._clock.callLater(INVITE_LIFETIME, self._expire, local, code))
        self._call("invite", local, local.id, mode, code, INVITE_LIFETIME)
        return code

    def report(self, peer: Peer, reason: str = "") -> ClientInfo | None:
        local = self._clients[peer]
        reported = local.partner if local.state is _CHATTING else local.last
        if reported is None:
            raise ProtocolError(NOT_CHATTING, "There is nobody to report.")
        if reported.id == local.reported:
            return None
        self._need_redis()
        local.reported = reported.id
        if local.state is _CHATTING:
            self._leave_locally(local)
        self._call("report", local, local.id, reported.id)
        self.stats.reports += 1
        return reported

    def message(self, peer: Peer, text: str) -> None:
        local = self._clients[peer]
        if local.state is not _CHATTING:
            raise ProtocolError(NOT_CHATTING, _NOBODY)
        self.stats.messages += 1
        if local.partner_peer is not None:
            local.partner_peer.send_message(text)
        else:
            self._relay(local, "m", text)

    def typing(self, peer: Peer, active: bool) -> None:
        local = self._clients[peer]
        if local.state is not _CHATTING:
            return
        if local.partner_peer is not None:
            local.partner_peer.send_typing(active)
        else:
            self._relay(local, "t", active)

    def signal(self, peer: Peer, data: bytes) -> None:
        local = self._clients[peer]
        if local.state is not _CHATTING:
            raise ProtocolError(NOT_CHATTING, _NOBODY)
        if local.mode != VIDEO:
            raise ProtocolError(BAD_REQUEST, "Signals are for video chats only.")
        self.stats.signals += 1
        if local.partner_peer is not None:
            local.partner_peer.send_signal(data)
        else:
            self._relay(local, "s", data.decode())

    # Talking to Redis ---------------------------------------------------------

    def _need_redis(self) -> None:
        if not self._link.ready:
            raise ProtocolError(UNAVAILABLE, UNAVAILABLE_TEXT)

    def _args(self, command: str, *args: object) -> list[object]:
        seed = 1 + self._rng.getrandbits(31) % (2**31 - 2)  # 1 .. 2**31 - 2, for the script's generator
        return [command, self.node, repr(self._clock.seconds()), seed, repr(self._repeat_cooldown), *args]

    def _call(self, command: str, local: _Local | None, *args: object) -> int:
        """Run C{command} for C{local} (None: a client gone); apply the answer.  Returns the call's number."""
        seq = next(self._seqs)
        if local is not None and command in _FINDS:
            local.finding += 1
        d = self._link.call([self.prefix], self._args(command, *args))
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(local, command, seq), errbackArgs=(local, command)
        )
        return seq

    def _answered(self, reply: str, local: _Local | None, command: str, seq: int) -> None:
        if command == "connect":
            self._connecting -= 1
        result = orjson.loads(reply)
        self._take_counts(result)
        for chat in result.get("pairs") or ():
            self._paired(chat)
        quiet = local.id if local is not None and seq < local.quiet_before else None
        for event in result.get("ev") or ():
            self._apply(event, tell=event["id"] != quiet)
        if local is None or self._by_id.get(local.id) is not local:
            return
        if command in _FINDS:
            local.finding -= 1
        error = result.get("err")
        if error == "invite_invalid":
            local.peer.send_error(
                "invite_invalid", "That invite is unknown, used or expired."
            )
            return
        if error == "unknown":
            # Redis lost this node's state (restarted empty, or swept it):
            # write it back.
            local.peer.send_error(UNAVAILABLE, UNAVAILABLE_TEXT)
            self._link.reassert()
            return
        epoch = result.get("e")
        state = result.get("s")
        if epoch is None or epoch < local.epoch:
            return  # an event newer than this answer arrived already
        local.epoch = epoch
        if state is not None:
            # The last answer is the truth: what this node did at once (leave,
            # invite) or heard in between gives way to it.
            new = _STATES[state]
            if new is not _CHATTING and local.state is _CHATTING:
                self._end_locally(local, tell_partner=False)
            if new is not _INVITING:
                local.invite = ""
            local.state = new
            if new is _IDLE:
                local.stop_timers()
        retry = result.get("retry")
        if retry is not None and local.state is _WAITING:
            delay = max(0.0, float(retry) - self._clock.seconds())
            local.timers.append(self._clock.callLater(delay, self._timer_call, local, "retry"))

    def _failed(self, failure: Failure, local: _Local | None, command: str) -> None:
        if self._link.ready:
            # Once per loss, not once per call in flight (the log has a budget).
            self._log.warn(
                "Redis call {command} failed ({why}): writing this node's state back",
                command=command,
                why=failure.getErrorMessage(),
                event="redis",
            )
        if command == "connect":
            self._connecting -= 1
        if local is not None and command in _FINDS:
            local.finding -= 1
        if local is not None and self._by_id.get(local.id) is local and command in ("find", "join", "invite"):
            local.peer.send_error(UNAVAILABLE, UNAVAILABLE_TEXT)
        self._link.reassert()

    def _take_counts(self, result: dict[str, Any]) -> None:
        counts = result.get("counts")
        if counts:
            self._counts = (int(counts[0]), int(counts[1]), int(counts[2]))

    def _paired(self, chat: dict[str, Any]) -> None:
        shared = chat.get("shared")
        shared = shared if isinstance(shared, list) else []
        self.stats.pairings += 1
        if chat.get("mode") == VIDEO:
            self.stats.video_pairings += 1
        if self._on_pair is not None:
            self._on_pair(chat["chat"], chat["one"], chat["other"], shared)

    def _timer_call(self, local: _Local, command: str) -> None:
        if self._by_id.get(local.id) is local and local.state is _WAITING and self._link.ready:
            self._call(command, local, local.id)

    def _expire(self, local: _Local, code: str) -> None:
        if self._by_id.get(local.id) is not local:
            return
        if not self._link.ready:
            if local.state is _INVITING and local.invite == code:
                local.state, local.invite = _IDLE, ""
                local.peer.send_invite_expired(code)
            return
        self._call("expire", local, local.id, code)

    # Events -------------------------------------------------------------------

    def _on_event(self, payload: str) -> None:
        """Something published on this node's channel."""
        event = orjson.loads(payload)
        if isinstance(event, list):
            for item in event:  # a node's batch of relayed messages, in order
                self._relayed(item)
        elif event.get("t") == "ban":
            self._banned(event["addr"], event["until"])
        else:
            self._apply(event)

    def _banned(self, key: str, until: float) -> None:
        until = float(until)
        if until > self._bans.get(key, 0.0):
            self._bans[key] = until
        if self._on_ban is not None:
            self._on_ban(key, until)

    def report_address(self, reporter: str, reported: str, threshold: int, window: float, ban_seconds: float) -> None:
        """
        Count, for the whole service, a report of address key C{reported} by
        C{reporter}; C{threshold} distinct reporters within C{window} seconds
        ban it for C{ban_seconds} on every node (through C{on_ban}).
        """
        if self._link.ready:
            d = self._link.call([self.prefix], self._args("report_addr", reporter, reported, threshold, window, ban_seconds))
            d.addErrback(lambda f: self._log.failure("Redis call report_addr failed", f, event="redis"))

    def _apply(self, event: dict[str, Any], tell: bool = True) -> None:
        local = self._by_id.get(event["id"])
        if local is None or event["e"] <= local.epoch:
            return  # gone, or stale: a later answer overtook it
        local.epoch = event["e"]
        kind = event["t"]
        peer = local.peer
        if kind == "waiting":
            local.stop_timers()
            local.state = _WAITING
            if local.interests and not local.open:
                local.timers.append(
                    self._clock.callLater(self._interest_timeout, self._open_up, local)
                )
            if tell:
                peer.send_waiting()
        elif kind == "paired":
            local.stop_timers()
            local.state = _CHATTING
            local.mode = event["mode"]
            local.chat = event["chat"]
            local.invite = ""
            node = event["pnode"]
            local.partner = ClientInfo(event["pid"], event["pname"], event["paddr"] or None, node)
            partner = self._by_id.get(event["pid"]) if node == self.node else None
            local.partner_peer = partner.peer if partner is not None else None
            shared = event.get("shared")
            if tell:
                peer.send_paired(local.chat, shared if isinstance(shared, list) else [], local.mode, bool(event["init"]))
        elif kind == "left":
            chat = event["chat"]
            self._end_locally(local, tell_partner=False)
            if tell:
                peer.send_partner_left(chat)
        elif kind == "expired":
            local.state, local.invite = _IDLE, ""
            local.stop_timers()
            if tell:
                peer.send_invite_expired(event["code"])

    def _open_up(self, local: _Local) -> None:
        local.open = True
        self._timer_call(local, "open_up")

    def _relay(self, local: _Local, kind: str, payload: object) -> None:
        partner = local.partner
        assert partner is not None
        if not self._link.ready:
            local.peer.send_error(UNAVAILABLE, UNAVAILABLE_TEXT)
            return
        self.cross_node_messages += 1
        item = [kind, partner.id, local.chat, local.id, payload]
        delivered = None if kind == "t" else partial(self._published, local)
        self._link.publish_soon(f"{self.prefix}:ch:{partner.node}", item, delivered)

    def _published(self, local: _Local, receivers: int) -> None:
        """Nobody received it (that node is gone): the sender hears so."""
        if not receivers and self._by_id.get(local.id) is local:
            local.peer.send_error(UNAVAILABLE, UNAVAILABLE_TEXT)

    def _relayed(self, event: list[Any]) -> None:
        kind, to, chat, sender, payload = event
        local = self._by_id.get(to)
        if local is None or local.chat != chat or local.state is not _CHATTING:
            if kind != "t" and kind != "x":
                # Undeliverable (the chat ended here first): the sender hears so.
                node = sender.split(".", 1)[0]
                self._link.publish_soon(f"{self.prefix}:ch:{node}", ["x", sender, chat, to, None], None)
            return
        peer = local.peer
        if kind == "m":
            peer.send_message(payload)
        elif kind == "t":
            peer.send_typing(bool(payload))
        elif kind == "s":
            peer.send_signal(payload.encode())
        elif kind == "x":
            peer.send_error(NOT_CHATTING, _NOBODY)

    # This node's own view ------------------------------------------------------

    def _leave_locally(self, local: _Local) -> None:
        """What C{leave} will do in Redis, done here at once: no more relaying."""
        local.stop_timers()
        if local.state is _CHATTING:
            self._end_locally(local, tell_partner=not self._link.ready)
        local.state = _IDLE
        local.invite = ""

    def _end_locally(self, local: _Local, tell_partner: bool) -> None:
        """
        End C{local}'s chat in this node's view, on both sides if the partner
        is on this node (nothing is relayed between them any more); with
        C{tell_partner}, also tell that partner now (when Redis cannot).
        Otherwise the event from Redis tells it.
        """
        partner, chat = local.partner, local.chat
        partner_peer = local.partner_peer
        local.state = _IDLE
        local.partner = local.partner_peer = None
        local.chat = ""
        if partner is not None:
            local.last = partner
        if partner_peer is not None:
            other = self._clients.get(partner_peer)
            if other is not None and other.chat == chat:
                other.state, other.partner, other.partner_peer, other.chat = _IDLE, None, None, ""
                other.last = ClientInfo(local.id, local.client_id, local.address_key, self.node)
                if tell_partner:
                    partner_peer.send_partner_left(chat)

    def _on_lost(self) -> None:
        """Redis is gone: chats with other nodes end now, on this side."""
        for local in list(self._clients.values()):
            if local.state is _CHATTING and local.partner_peer is None:
                chat = local.chat
                self._end_locally(local, tell_partner=False)
                local.peer.send_partner_left(chat)

    def _assert_view(self) -> list[object]:
        """The arguments that write this node's view back to Redis."""
        view = []
        for local in self._clients.values():
            if local.state is _CHATTING and local.partner_peer is None:
                # A partner elsewhere: that chat cannot be trusted to exist.
                chat = local.chat
                self._end_locally(local, tell_partner=False)
                local.peer.send_partner_left(chat)
            local.epoch += 1
            view.append(
                {
                    "id": local.id,
                    "name": local.client_id,
                    "addr": local.address_key or "",
                    "state": local.state.value,
                    "mode": local.mode,
                    "interests": json.dumps(list(local.interests)),
                    "open": local.open,
                    "partner": local.partner.id if local.partner is not None else "",
                    "chat": local.chat,
                    "invite": local.invite,
                    "epoch": local.epoch,
                }
            )
        now = self._clock.seconds()
        self._bans = {key: until for key, until in self._bans.items() if until > now}
        return self._args("assert", json.dumps(view), json.dumps(self._bans))

    def heartbeat_args(self, dead_after: float) -> list[object]:
        return self._args("heartbeat", dead_after)

    def take_assert(self, reply: str) -> None:
        """
        The answer to writing this node's view back: the epochs it set, the
        counts, chats its waiters started, and the bans in force.
        """
        result = json.loads(reply)
        self._take_counts(result)
        epochs = result.get("epochs")
        if isinstance(epochs, dict):
            for id, epoch in epochs.items():
                local = self._by_id.get(id)
                if local is not None:
                    local.epoch = max(local.epoch, int(epoch))
        for chat in result.get("pairs") or ():
            self._paired(chat)
        for event in result.get("ev") or ():
            self._apply(event)
        bans = result.get("bans")
        if isinstance(bans, dict):
            for key, until in bans.items():
                self._banned(key, until)

    def take_heartbeat(self, reply: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(reply)
        self._take_counts(result)
        for event in result.get("ev") or ():
            self._apply(event)
        return result

    def gone_args(self) -> list[object]:
        return self._args("gone")

"""
The matchmaking core, without I/O: the waiting pool, the pairs and every pairing rule.

Nothing here imports Twisted or Autobahn.  Time comes from an injected
L{Clock} (C{twisted.internet.task.Clock} in tests, the reactor in production),
randomness from an injected C{random.Random}, invite codes from an injected
token factory.  Connected clients are L{Peer}s: whatever can be told about
pairing events.  L{Lobby} is the single-process implementation of
L{ILobby}; a shared (Redis-backed) lobby can replace it behind that interface.
"""

from __future__ import annotations

import enum
import random
import secrets
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Protocol, Sequence, TypeVar

from .messages import INVITE_INVALID, NOT_CHATTING

INVITE_LIFETIME = 600.0
DEFAULT_INTEREST_TIMEOUT = 10.0
DEFAULT_REPEAT_COOLDOWN = 30.0

# Pools no bigger than this are scanned in full when picking a partner, so a
# small pool never leaves two compatible waiters apart; bigger pools are
# sampled this many times (a miss just means waiting for the next arrival).
_SCAN_LIMIT = 32


class DelayedCall(Protocol):
    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The subset of C{IReactorTime} the lobby uses."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object) -> DelayedCall: ...


class Peer(Hashable, Protocol):
    """A connected client, as the lobby sees it: something to tell about events."""

    def send_waiting(self) -> None: ...

    def send_paired(self, chat: str, interests: Sequence[str]) -> None: ...

    def send_message(self, text: str) -> None: ...

    def send_typing(self, active: bool) -> None: ...

    def send_partner_left(self, chat: str) -> None: ...

    def send_invite_expired(self, code: str) -> None: ...


class LobbyError(Exception):
    """A request the lobby refused; nothing changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class ILobby(Protocol):
    """
    What the WebSocket layer needs from a lobby.

    Every method is called with a peer that was passed to L{connect} and not
    yet to L{disconnect}.
    """

    @property
    def online(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def chatting(self) -> int: ...

    @property
    def stats(self) -> "LobbyStats": ...

    # Called once per chat started (chat id, the two peers, shared interests).
    on_pair: Callable[[str, Peer, Peer, Sequence[str]], None] | None

    def connect(self, peer: Peer) -> None: ...

    def disconnect(self, peer: Peer) -> None: ...

    def find(self, peer: Peer, interests: Sequence[str] = (), invite: str | None = None) -> None: ...

    def leave(self, peer: Peer) -> None: ...

    def message(self, peer: Peer, text: str) -> None: ...

    def typing(self, peer: Peer, active: bool) -> None: ...

    def report(self, peer: Peer, reason: str = "") -> Peer: ...

    def create_invite(self, peer: Peer) -> str: ...


@dataclass
class LobbyStats:
    """Monotonic counters, read by the metrics endpoint."""

    pairings: int = 0
    messages: int = 0
    reports: int = 0


class State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    INVITING = "inviting"
    CHATTING = "chatting"


# Module-level aliases: comparing against these is cheaper than State.X
# lookups on the hot path (Python 3.11 resolves enum members through the
# metaclass).
_IDLE, _WAITING, _INVITING, _CHATTING = State.IDLE, State.WAITING, State.INVITING, State.CHATTING

T = TypeVar("T")


class _Pool(Generic[T]):
    """A set with O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._index: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: T) -> bool:
        return item in self._index

    def add(self, item: T) -> None:
        if item not in self._index:
            self._index[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: T) -> None:
        i = self._index.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._index[last] = i


@dataclass(eq=False, slots=True)
class _Client:
    peer: Peer
    state: State = State.IDLE
    interests: tuple[str, ...] = ()
    partner: _Client | None = None
    chat: str | None = None
    open: bool = False
    timer: DelayedCall | None = None
    invite: str | None = None
    last_partner: _Client | None = None
    # Clients this one must not be paired with: True for good (a report),
    # False until a repeat cooldown ends.  None while empty, which is the
    # usual case: an empty dict per connection is memory for nothing.
    avoid: dict[_Client, bool] | None = None

    def compatible(self, other: _Client) -> bool:
        return other is not self and (self.avoid is None or other not in self.avoid)

    def keep_apart(self, other: _Client, forever: bool) -> None:
        for one, two in ((self, other), (other, self)):
            if one.avoid is None:
                one.avoid = {}
            one.avoid[two] = forever or one.avoid.get(two, False)

    def cooled_down(self, other: _Client) -> None:
        for one, two in ((self, other), (other, self)):
            if one.avoid is not None and one.avoid.get(two) is False:
                del one.avoid[two]
                if not one.avoid:
                    one.avoid = None

    def forget(self) -> None:
        """Drop every keep-apart relation, on both sides (at disconnect)."""
        if self.avoid is not None:
            for other in self.avoid:
                if other.avoid is not None:
                    other.avoid.pop(self, None)
                    if not other.avoid:
                        other.avoid = None
            self.avoid = None


class Lobby:
    """
    The single-process lobby: see C{docs/design.md} for the rules it keeps.
    """

    def __init__(
        self,
        clock: Clock,
        rng: random.Random | None = None,
        interest_timeout: float = DEFAULT_INTEREST_TIMEOUT,
        repeat_cooldown: float = DEFAULT_REPEAT_COOLDOWN,
        make_token: Callable[[], str] = lambda: secrets.token_urlsafe(9),
        on_pair: Callable[[str, Peer, Peer, Sequence[str]], None] | None = None,
    ) -> None:
        """
        @param on_pair: called once per chat started, with the chat id, the
            two peers and their shared interests (for logging).
        """
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._interest_timeout = interest_timeout
        self._repeat_cooldown = repeat_cooldown
        self._make_token = make_token
        self.on_pair = on_pair
        self._clients: dict[Peer, _Client] = {}
        self._open: _Pool[_Client] = _Pool()
        self._by_interest: dict[str, _Pool[_Client]] = {}
        self._invites: dict[str, tuple[_Client, DelayedCall]] = {}
        self._cooldowns: dict[frozenset[_Client], DelayedCall] = {}
        self._waiting = 0  # WAITING or INVITING
        self._chatting = 0
        self.stats = LobbyStats()

    # Counts -----------------------------------------------------------------

    @property
    def online(self) -> int:
        return len(self._clients)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def chatting(self) -> int:
        return self._chatting

    def state_of(self, peer: Peer) -> State:
        return self._clients[peer].state

    def partner_of(self, peer: Peer) -> Peer | None:
        partner = self._clients[peer].partner
        return partner.peer if partner is not None else None

    # Requests ---------------------------------------------------------------

    def connect(self, peer: Peer) -> None:
        self._clients[peer] = _Client(peer)

    def disconnect(self, peer: Peer) -> None:
        client = self._clients.pop(peer, None)
        if client is None:
            return
        self._become_idle(client)
        for other in client.avoid or ():
            timer = self._cooldowns.pop(frozenset((client, other)), None)
            if timer is not None and timer.active():
                timer.cancel()
        client.forget()
        client.last_partner = None

    def find(self, peer: Peer, interests: Sequence[str] = (), invite: str | None = None) -> None:
        client = self._clients[peer]
        if invite is not None:
            self._join_invite(client, invite)
            return
        self._become_idle(client)
        client.interests = tuple(interests)
        self._set_state(client, _WAITING)
        if client.interests:
            for interest in client.interests:
                self._by_interest.setdefault(interest, _Pool()).add(client)
            client.timer = self._clock.callLater(self._interest_timeout, self._open_up, client)
        else:
            self._open.add(client)
            client.open = True
        if not self._match(client):
            peer.send_waiting()

    def leave(self, peer: Peer) -> None:
        self._become_idle(self._clients[peer])

    def message(self, peer: Peer, text: str) -> None:
        partner = self._clients[peer].partner
        if partner is None:
            raise LobbyError(NOT_CHATTING, "You are not chatting with anyone.")
        self.stats.messages += 1
        partner.peer.send_message(text)

    def typing(self, peer: Peer, active: bool) -> None:
        # A typing signal racing with the end of a chat is harmless: dropped.
        partner = self._clients[peer].partner
        if partner is not None:
            partner.peer.send_typing(active)

    def report(self, peer: Peer, reason: str = "") -> Peer:
        """
        Report the current partner (ending the chat) or, if the chat already
        ended, the most recent one; the two are never paired again.

        @return: the reported peer.
        """
        client = self._clients[peer]
        reported = client.partner or client.last_partner
        if reported is None:
            raise LobbyError(NOT_CHATTING, "There is nobody to report.")
        if client.partner is not None:
            self._become_idle(client)
        client.keep_apart(reported, forever=True)
        self.stats.reports += 1
        return reported.peer

    def create_invite(self, peer: Peer) -> str:
        client = self._clients[peer]
        self._become_idle(client)
        code = self._make_token()
        expiry = self._clock.callLater(INVITE_LIFETIME, self._expire_invite, code)
        self._invites[code] = (client, expiry)
        client.invite = code
        self._set_state(client, _INVITING)
        return code

    # Internals --------------------------------------------------------------

    def _set_state(self, client: _Client, state: State) -> None:
        old = client.state
        if old is _CHATTING:
            self._chatting -= 1
        elif old is not _IDLE:
            self._waiting -= 1
        if state is _CHATTING:
            self._chatting += 1
        elif state is not _IDLE:
            self._waiting += 1
        client.state = state

    def _become_idle(self, client: _Client) -> None:
        """Leave the queue, the invite or the chat (telling the partner)."""
        if client.state is _WAITING:
            self._unqueue(client)
        elif client.state is _INVITING:
            self._cancel_invite(client)
        elif client.state is _CHATTING:
            self._end_chat(client)
        self._set_state(client, _IDLE)

    def _unqueue(self, client: _Client) -> None:
        if client.open:
            self._open.discard(client)
            client.open = False
        for interest in client.interests:
            pool = self._by_interest.get(interest)
            if pool is not None:
                pool.discard(client)
                if not pool:
                    del self._by_interest[interest]
        if client.timer is not None:
            if client.timer.active():
                client.timer.cancel()
            client.timer = None

    def _cancel_invite(self, client: _Client) -> None:
        if client.invite is not None:
            _, expiry = self._invites.pop(client.invite)
            if expiry.active():
                expiry.cancel()
            client.invite = None

    def _end_chat(self, client: _Client) -> None:
        partner, chat = client.partner, client.chat
        assert partner is not None and chat is not None
        for one, other in ((client, partner), (partner, client)):
            one.partner = one.chat = None
            one.last_partner = other
        self._set_state(partner, _IDLE)
        if self._repeat_cooldown > 0:
            client.keep_apart(partner, forever=False)
            key = frozenset((client, partner))
            previous = self._cooldowns.pop(key, None)
            if previous is not None and previous.active():
                previous.cancel()
            self._cooldowns[key] = self._clock.callLater(
                self._repeat_cooldown, self._cool_down, client, partner
            )
        else:
            self._cool_down(client, partner)
        partner.peer.send_partner_left(chat)

    def _cool_down(self, one: _Client, other: _Client) -> None:
        self._cooldowns.pop(frozenset((one, other)), None)
        one.cooled_down(other)
        for client in (one, other):
            if client.state is _WAITING and self._clients.get(client.peer) is client:
                self._match(client)

    def _open_up(self, client: _Client) -> None:
        """The interest timeout passed: this waiter now accepts anyone."""
        client.timer = None
        if client.state is _WAITING:
            self._open.add(client)
            client.open = True
            self._match(client)

    def _expire_invite(self, code: str) -> None:
        client, _ = self._invites.pop(code)
        client.invite = None
        if client.state is _INVITING:
            self._set_state(client, _IDLE)
            client.peer.send_invite_expired(code)

    def _join_invite(self, client: _Client, code: str) -> None:
        entry = self._invites.get(code)
        if entry is None or entry[0] is client:
            raise LobbyError(INVITE_INVALID, "That invite is unknown, used or expired.")
        inviter = entry[0]
        self._become_idle(client)
        self._become_idle(inviter)
        self._pair(inviter, client, ())

    def _pick(self, client: _Client, pools: Sequence[_Pool[_Client]]) -> _Client | None:
        """A random compatible waiter from C{pools}, or L{None}."""
        total = sum(len(pool) for pool in pools)
        if total == 0:
            return None
        if total <= _SCAN_LIMIT:
            candidates = [c for pool in pools for c in pool.items if client.compatible(c)]
            return self._rng.choice(candidates) if candidates else None
        for _ in range(_SCAN_LIMIT):
            n = self._rng.randrange(total)
            for pool in pools:
                if n < len(pool):
                    candidate = pool.items[n]
                    break
                n -= len(pool)
            if client.compatible(candidate):
                return candidate
        return None

    def _match(self, client: _Client) -> bool:
        """Pair a waiting client with a random compatible waiter, if any."""
        partner: _Client | None = None
        if client.interests:
            pools = [self._by_interest[i] for i in client.interests if i in self._by_interest]
            partner = self._pick(client, pools)
        if partner is None and client.open:
            partner = self._pick(client, [self._open])
        if partner is None:
            return False
        shared = sorted(set(client.interests) & set(partner.interests))
        self._become_idle(client)
        self._become_idle(partner)
        self._pair(client, partner, shared)
        return True

    def _pair(self, one: _Client, other: _Client, shared: Sequence[str]) -> None:
        chat = f"{self._rng.getrandbits(64):016x}"
        for a, b in ((one, other), (other, one)):
            a.partner, a.chat = b, chat
            self._set_state(a, _CHATTING)
        self.stats.pairings += 1
        if self.on_pair is not None:
            self.on_pair(chat, one.peer, other.peer, shared)
        one.peer.send_paired(chat, shared)
        other.peer.send_paired(chat, shared)

"""
The matchmaking core, without I/O: the waiting pool, the pairs and every pairing rule.

Nothing here imports Twisted or Autobahn.  Time comes from an injected
L{Clock} (C{twisted.internet.task.Clock} in tests, the reactor in production),
randomness from an injected C{random.Random}, invite codes from an injected
token factory.  Every waiter asks for a chat mode (text or video), and is
paired only within it.  Connected clients are L{Peer}s: whatever can be told about
pairing events.  L{Lobby} is the single-process implementation of
L{ILobby}; a shared (Redis-backed) lobby can replace it behind that interface.
"""

from __future__ import annotations

import enum
import random
import secrets
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Protocol, Sequence, TypeVar

from .messages import BAD_REQUEST, INVITE_INVALID, MODES, NOT_CHATTING, TEXT, VIDEO, Mode, ProtocolError

INVITE_LIFETIME = 600.0
DEFAULT_INTEREST_TIMEOUT = 10.0
DEFAULT_REPEAT_COOLDOWN = 30.0

# Picking a partner first tries this many random waiters (rejection sampling:
# the first compatible one is a uniformly random compatible waiter)...
_PROBES = 8
# ...and when they are all kept apart (cooldowns, reports), scans the pools in
# full if they hold no more than this, so that a waiter is never left waiting
# while a compatible one is there.  Bigger pools only sample (a miss means
# waiting for the next arrival), so no find costs O(n): to miss, nearly all
# of a big pool must be kept from this client, which the request rate limit
# makes impossible (at 2 finds a second, a client meets at most about 70
# strangers in a 30 s cooldown).
_SCAN_LIMIT = 1024

_FOREVER = float("inf")
# A client's keep-apart map is pruned of ended cooldowns when it grows past
# twice its size after the last pruning, and never below this.
_PRUNE_MIN = 16


class DelayedCall(Protocol):
    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The subset of C{IReactorTime} the lobby uses."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object) -> DelayedCall: ...


class Someone(Protocol):
    """A client as a report names it: for the log, and the address key bans apply to."""

    @property
    def client_id(self) -> str: ...

    @property
    def address_key(self) -> str | None: ...


class Peer(Someone, Hashable, Protocol):
    """
    A connected client, as the lobby sees it: something to tell about events,
    with a name for the log and the address key bans apply to (None: exempt).
    """

    def send_waiting(self) -> None: ...

    def send_paired(self, chat: str, interests: Sequence[str], mode: Mode, initiator: bool) -> None:
        """
        A chat started.  C{initiator} is true on exactly one side of each
        chat (the one picked from the queue, or the inviter), which makes the
        WebRTC offer in a video chat.
        """

    def send_signal(self, data: bytes) -> None:
        """The partner's signalling data, compact JSON (see L{Lobby.signal})."""

    def send_message(self, text: str) -> None: ...

    def send_typing(self, active: bool) -> None: ...

    def send_partner_left(self, chat: str) -> None: ...

    def send_invite_expired(self, code: str) -> None: ...

    def send_error(self, code: str, message: str) -> None:
        """A request was refused after the call that made it returned (a shared lobby answers later)."""


# Called once per chat started: chat id, the two clients' names (client_id),
# their shared interests.
PairObserver = Callable[[str, str, str, Sequence[str]], None]


class ILobby(Protocol):
    """
    What the WebSocket layer needs from a lobby.

    Every method is called with a peer that was passed to L{connect} and not
    yet to L{disconnect}.  Requests answer through the peer's C{send_*}
    events: at once here (L{Lobby}), after a round trip in a shared lobby
    (L{chatroulette.redislobby.RedisLobby}), which may also refuse a request
    later with C{send_error}.  C{ProtocolError} raised by a call refuses it
    at once.  Observers (C{on_pair}) are passed to the constructor.
    """

    @property
    def ready(self) -> bool:
        """Whether requests can be served (a shared lobby is not while its store is out of reach)."""

    @property
    def online(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def chatting(self) -> int: ...

    @property
    def stats(self) -> "LobbyStats": ...

    def connect(self, peer: Peer) -> None: ...

    def disconnect(self, peer: Peer) -> None: ...

    def find(
        self, peer: Peer, interests: Sequence[str] = (), invite: str | None = None, mode: Mode = TEXT
    ) -> None: ...

    def leave(self, peer: Peer) -> None: ...

    def state_of(self, peer: Peer) -> "State": ...

    def partner_of(self, peer: Peer) -> Peer | None:
        """The partner, if chatting with a client of this process."""

    def message(self, peer: Peer, text: str) -> None: ...

    def typing(self, peer: Peer, active: bool) -> None: ...

    def signal(self, peer: Peer, data: bytes) -> None: ...

    def report(self, peer: Peer, reason: str = "") -> Someone | None: ...

    def create_invite(self, peer: Peer, mode: Mode = TEXT) -> str: ...


@dataclass
class LobbyStats:
    """Monotonic counters, read by the metrics endpoint."""

    pairings: int = 0
    video_pairings: int = 0  # of the pairings, video chats
    messages: int = 0
    signals: int = 0
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


def _cancel(call: DelayedCall | None) -> None:
    """Cancel a timer, if there is one and it has not run yet."""
    if call is not None and call.active():
        call.cancel()


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


class _Pools:
    """The waiters of one mode: those who accept anyone, and one pool per interest."""

    __slots__ = ("open", "by_interest")

    def __init__(self) -> None:
        self.open: _Pool[_Client] = _Pool()
        self.by_interest: dict[str, _Pool[_Client]] = {}


@dataclass(eq=False, slots=True)
class _Client:
    peer: Peer
    state: State = State.IDLE
    # The mode waited for (WAITING, INVITING) or chatted in (CHATTING).
    mode: Mode = TEXT
    interests: tuple[str, ...] = ()
    partner: _Client | None = None
    chat: str | None = None
    open: bool = False
    timer: DelayedCall | None = None  # the interest timeout
    retry: DelayedCall | None = None  # a match again when a cooldown ends
    invite: str | None = None
    last_partner: _Client | None = None
    reported: _Client | None = None  # the last partner this client reported
    # Clients this one must not be paired with, and until when: _FOREVER
    # after a report, the end of the repeat cooldown otherwise.  Always
    # symmetric: an entry is added, pruned and forgotten on both sides at
    # once, so no map refers to a client that has gone.  Expired entries are
    # not removed by timers (a timer per ended chat costs more than the chat)
    # but pruned as entries are added, in amortised O(1), so a map holds at
    # most about twice one cooldown's worth of partners (at least 16).  None
    # until a first chat ends: an empty dict per connection is memory for
    # nothing.
    avoid: dict[_Client, float] | None = None
    prune_at: int = _PRUNE_MIN

    def compatible(self, other: _Client, now: float) -> bool:
        """The pairing rule, which L{Lobby._pick} applies inline for speed."""
        if other is self:
            return False
        avoid = self.avoid
        return avoid is None or avoid.get(other, now) <= now

    def keep_apart(self, other: _Client, until: float, now: float) -> None:
        for one, two in ((self, other), (other, self)):
            avoid = one.avoid
            if avoid is None:
                avoid = one.avoid = {}
            avoid[two] = max(until, avoid.get(two, until))
            if len(avoid) > one.prune_at:
                one.prune(now)

    def prune(self, now: float) -> None:
        """Drop the relations whose cooldown has ended, on both sides."""
        avoid = self.avoid
        if avoid is not None:
            for other in [o for o, until in avoid.items() if until <= now]:
                del avoid[other]
                other.drop(self)
            self.prune_at = max(_PRUNE_MIN, 2 * len(avoid))
            if not avoid:
                self.avoid = None

    def drop(self, other: _Client) -> None:
        """Drop the relation with C{other} from this side."""
        if self.avoid is not None:
            self.avoid.pop(other, None)
            if not self.avoid:
                self.avoid = None

    def forget(self) -> None:
        """Drop every keep-apart relation, on both sides (at disconnect)."""
        if self.avoid is not None:
            for other in self.avoid:
                other.drop(self)
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
        on_pair: PairObserver | None = None,
    ) -> None:
        """
        @param on_pair: called once per chat started, with the chat id, the
            two clients' names and their shared interests (for logging).
        """
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._interest_timeout = interest_timeout
        self._repeat_cooldown = repeat_cooldown
        self._make_token = make_token
        self._on_pair = on_pair
        self._clients: dict[Peer, _Client] = {}
        # Waiters are paired only within their mode.
        self._pools: dict[Mode, _Pools] = {mode: _Pools() for mode in MODES}
        self._invites: dict[str, tuple[_Client, DelayedCall]] = {}
        self._waiting = 0  # WAITING or INVITING
        self._chatting = 0
        self.stats = LobbyStats()

    # Counts -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return True

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
        client.forget()
        client.last_partner = client.reported = None

    def find(
        self, peer: Peer, interests: Sequence[str] = (), invite: str | None = None, mode: Mode = TEXT
    ) -> None:
        """
        Wait for a random partner of the same C{mode}; or, with C{invite},
        join that invite in the inviter's mode (C{mode} is then ignored).
        """
        client = self._clients[peer]
        if invite is not None:
            self._join_invite(client, invite)
            return
        self._become_idle(client)
        client.interests = tuple(interests)
        client.mode = mode
        self._set_state(client, _WAITING)
        pools = self._pools[mode]
        if client.interests:
            for interest in client.interests:
                pools.by_interest.setdefault(interest, _Pool()).add(client)
            client.timer = self._clock.callLater(self._interest_timeout, self._open_up, client)
        else:
            pools.open.add(client)
            client.open = True
        if not self._match(client):
            peer.send_waiting()

    def leave(self, peer: Peer) -> None:
        self._become_idle(self._clients[peer])

    def message(self, peer: Peer, text: str) -> None:
        partner = self._clients[peer].partner
        if partner is None:
            raise ProtocolError(NOT_CHATTING, "You are not chatting with anyone.")
        self.stats.messages += 1
        partner.peer.send_message(text)

    def typing(self, peer: Peer, active: bool) -> None:
        # A typing signal racing with the end of a chat is harmless: dropped.
        partner = self._clients[peer].partner
        if partner is not None:
            partner.peer.send_typing(active)

    def signal(self, peer: Peer, data: bytes) -> None:
        """
        Relay WebRTC signalling to the partner in a video chat.  C{data} is
        opaque: compact JSON of an object, validated and size-checked by the
        wire format, never looked into here.

        @raise ProtocolError: C{not_chatting} without a partner,
            C{bad_request} in a text chat.
        """
        client = self._clients[peer]
        partner = client.partner
        if partner is None:
            raise ProtocolError(NOT_CHATTING, "You are not chatting with anyone.")
        if client.mode != VIDEO:
            raise ProtocolError(BAD_REQUEST, "Signals are for video chats only.")
        self.stats.signals += 1
        partner.peer.send_signal(data)

    def report(self, peer: Peer, reason: str = "") -> Peer | None:
        """
        Report the current partner (ending the chat) or, if the chat already
        ended, the most recent one; the two are never paired again.  Reporting
        that partner again changes and counts nothing.

        @return: the reported peer, or None when this client reported that
            partner already.
        """
        client = self._clients[peer]
        reported = client.partner or client.last_partner
        if reported is None:
            raise ProtocolError(NOT_CHATTING, "There is nobody to report.")
        if reported is client.reported:
            return None
        client.reported = reported
        if client.partner is not None:
            self._become_idle(client)
        if self._clients.get(reported.peer) is reported:  # not if already gone
            client.keep_apart(reported, _FOREVER, self._clock.seconds())
        self.stats.reports += 1
        return reported.peer

    def create_invite(self, peer: Peer, mode: Mode = TEXT) -> str:
        """Wait for a friend to join with the code returned; the chat will be in C{mode}."""
        client = self._clients[peer]
        self._become_idle(client)
        client.mode = mode
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
        pools = self._pools[client.mode]
        if client.open:
            pools.open.discard(client)
            client.open = False
        by_interest = pools.by_interest
        for interest in client.interests:
            pool = by_interest.get(interest)
            if pool is not None:
                pool.discard(client)
                if not pool:
                    del by_interest[interest]
        _cancel(client.timer)
        client.timer = None
        _cancel(client.retry)
        client.retry = None

    def _cancel_invite(self, client: _Client) -> None:
        if client.invite is not None:
            _, expiry = self._invites.pop(client.invite)
            _cancel(expiry)
            client.invite = None

    def _end_chat(self, client: _Client) -> None:
        partner, chat = client.partner, client.chat
        assert partner is not None and chat is not None
        for one, other in ((client, partner), (partner, client)):
            one.partner = one.chat = None
            one.last_partner = other
        self._set_state(partner, _IDLE)
        if self._repeat_cooldown > 0:
            now = self._clock.seconds()
            client.keep_apart(partner, now + self._repeat_cooldown, now)
        partner.peer.send_partner_left(chat)

    def _retry(self, client: _Client) -> None:
        """A cooldown that kept this waiter from someone has ended: try again."""
        client.retry = None
        if client.state is _WAITING:
            self._match(client)

    def _open_up(self, client: _Client) -> None:
        """The interest timeout passed: this waiter now accepts anyone."""
        client.timer = None
        if client.state is _WAITING:
            self._pools[client.mode].open.add(client)
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
            raise ProtocolError(INVITE_INVALID, "That invite is unknown, used or expired.")
        inviter = entry[0]
        self._become_idle(client)
        self._become_idle(inviter)
        # The inviter was waiting: it initiates (see _pair).
        self._pair(inviter, client, (), inviter.mode, inviter)

    def _pick(
        self, client: _Client, pools: Sequence[_Pool[_Client]], now: float
    ) -> tuple[_Client | None, float]:
        """
        A random compatible waiter from C{pools}, or L{None}; and the earliest
        time a repeat cooldown that kept someone in C{pools} from C{client}
        ends (C{inf} if none did).
        """
        if len(pools) == 1:
            items: list[_Client] | None = pools[0].items
            total = len(pools[0].items)
        else:
            items = None
            total = sum([len(pool.items) for pool in pools])
        avoid = client.avoid
        blocked = _FOREVER
        # One draw per probe: random() * total is uniform to within 2**-53 per
        # waiter, and is cheaper than randrange()'s rejection sampling.
        draw = self._rng.random
        for _ in range(min(total, _PROBES)):
            n = int(draw() * total)
            if items is not None:
                candidate = items[n]
            else:
                for pool in pools:
                    if n < len(pool.items):
                        candidate = pool.items[n]
                        break
                    n -= len(pool.items)
            if candidate is client:
                continue
            if avoid is None:
                return candidate, blocked
            until = avoid.get(candidate, now)
            if until <= now:
                return candidate, blocked
            if until < blocked:
                blocked = until
        if total > _SCAN_LIMIT:
            return None, blocked
        everyone = [c for pool in pools for c in pool.items if c is not client]
        if avoid is None:
            candidates = everyone
        else:
            candidates = [c for c in everyone if avoid.get(c, now) <= now]
            if not candidates:
                # Everyone here is kept apart: until when?
                return None, min([avoid[c] for c in everyone], default=_FOREVER)
        return (self._rng.choice(candidates) if candidates else None), blocked

    def _match(self, client: _Client) -> bool:
        """
        Pair a waiting client with a random compatible waiter, if any; if a
        repeat cooldown is all that keeps them apart, try again when it ends.
        """
        now = self._clock.seconds()
        partner: _Client | None = None
        blocked = _FOREVER
        mode_pools = self._pools[client.mode]
        if client.interests:
            by_interest = mode_pools.by_interest
            pools = [by_interest[i] for i in client.interests if i in by_interest]
            partner, blocked = self._pick(client, pools, now)
        if partner is None and client.open:
            partner, blocked_open = self._pick(client, [mode_pools.open], now)
            blocked = min(blocked, blocked_open)
        if partner is None:
            if blocked < _FOREVER:
                _cancel(client.retry)
                client.retry = self._clock.callLater(blocked - now, self._retry, client)
            return False
        shared = sorted(set(client.interests) & set(partner.interests)) if client.interests else ()
        mode = client.mode
        self._become_idle(client)
        self._become_idle(partner)
        # The partner was picked from the queue: it initiates (see _pair).
        self._pair(client, partner, shared, mode, partner)
        return True

    def _pair(
        self, one: _Client, other: _Client, shared: Sequence[str], mode: Mode, initiator: _Client
    ) -> None:
        """
        Start a chat in C{mode}.  C{initiator} (one of the two) makes the
        WebRTC offer in a video chat: the one picked from the queue, or the
        inviter.  A fixed rule rather than a coin: both sides know their
        role from C{paired} alone, and the one who waited (camera ready, a
        preview running) starts.
        """
        chat = f"{self._rng.getrandbits(64):016x}"
        for a, b in ((one, other), (other, one)):
            a.partner, a.chat, a.mode = b, chat, mode
            self._set_state(a, _CHATTING)
        self.stats.pairings += 1
        if mode == VIDEO:
            self.stats.video_pairings += 1
        if self._on_pair is not None:
            self._on_pair(chat, one.peer.client_id, other.peer.client_id, shared)
        one.peer.send_paired(chat, shared, mode, initiator is one)
        other.peer.send_paired(chat, shared, mode, initiator is other)

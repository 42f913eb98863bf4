"""
Two Redis lobbies (two nodes) on one real redis-server, racing: requests on
both nodes are sent without waiting for answers, in any order, and the
invariants hold once the answers are in.
"""

from __future__ import annotations

from typing import Any, Callable, cast

import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet import task
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.lobby import State
from chatroulette.messages import ProtocolError
from chatroulette.redislink import RedisLink
from chatroulette.redislobby import RedisLobby

from .delaying_proxy import DelayingProxy
from .lobbies import RecordingPeer, redis_node, shared_redis
from .redis_server import RedisServer

# One request: (kind, peer index, argument).
requests = st.tuples(
    st.sampled_from(["find", "find", "find_interest", "leave", "message", "invite", "join", "disconnect", "connect"]),
    st.integers(0, 20),
    st.integers(0, 20),
)
PREFIXES = iter(range(10**6))


class TwoNodes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        prefix = "{race%d}" % next(PREFIXES)
        server = shared_redis()
        self.nodes: list[RedisLobby] = []
        self.links: list[Any] = []
        for seed in (1, 2):
            lobby, link = redis_node(server, self.clock, seed, prefix=prefix, repeat_cooldown=0.0)
            self.nodes.append(lobby)
            self.links.append(link)
        self.home: dict[RecordingPeer, RedisLobby] = {}
        self.connected: list[RecordingPeer] = []
        self.codes: list[str] = []
        self.count = 0
        self.asked: dict[RecordingPeer, str] = {}

    def teardown(self) -> None:
        for link in self.links:
            pytest_twisted.blockon(link.stopService())

    def settle(self) -> None:
        for _ in range(2):  # answers, then what the other node published in reply
            for lobby in self.nodes:
                pytest_twisted.blockon(lobby.flush())

    def _connect(self) -> None:
        peer = RecordingPeer(f"p{self.count}")
        lobby = self.nodes[self.count % 2]
        self.count += 1
        self.home[peer] = lobby
        lobby.connect(peer)
        self.connected.append(peer)

    @initialize()
    def start(self) -> None:
        for _ in range(6):
            self._connect()
        self.settle()

    @rule(batch=st.lists(requests, min_size=1, max_size=8))
    def race(self, batch: list[tuple[str, int, int]]) -> None:
        """Send a batch of requests on both nodes at once, then let every answer arrive."""
        self._send(batch)
        self.settle()

    @rule(
        before=st.lists(requests, max_size=6),
        after=st.lists(requests, max_size=6),
        victim=st.integers(0, 1),
    )
    def node_dies_mid_race(
        self, before: list[tuple[str, int, int]], after: list[tuple[str, int, int]], victim: int
    ) -> None:
        """
        Requests race on both nodes; one node dies (its connections dropped,
        no goodbye) after its first requests reached Redis and before their
        answers, or the later requests, did.  The other node's heartbeat
        sweeps it; a new node takes its place.
        """
        from twisted.internet import reactor

        self._send(before)
        pytest_twisted.blockon(task.deferLater(reactor, 0, lambda: None))  # written; answers on their way
        self._send(after)
        dead, survivor = self.nodes[victim], self.nodes[1 - victim]
        self.links[victim].abort()
        self.connected = [p for p in self.connected if self.home[p] is not dead]
        self.clock.advance(1.0)
        link = self.links[1 - victim]
        beat = link.call([survivor.prefix], survivor.heartbeat_args(0.5))
        swept = pytest_twisted.blockon(beat.addCallback(survivor.take_heartbeat))
        assert swept.get("swept") == 1, swept
        lobby, new_link = redis_node(
            shared_redis(), self.clock, 3 + self.count, prefix=survivor.prefix, repeat_cooldown=0.0
        )
        self.nodes[victim], self.links[victim] = lobby, new_link
        self.settle()

    def _send(self, batch: list[tuple[str, int, int]]) -> None:
        for kind, i, j in batch:
            if kind == "connect":
                self._connect()
                continue
            if not self.connected:
                continue
            peer = self.connected[i % len(self.connected)]
            lobby = self.home[peer]
            try:
                if kind == "find":
                    self.asked[peer] = "open"
                    lobby.find(peer)
                elif kind == "find_interest":
                    self.asked[peer] = "interest"
                    lobby.find(peer, ["x"])
                elif kind == "leave":
                    lobby.leave(peer)
                elif kind == "message":
                    lobby.message(peer, "hi")
                elif kind == "invite":
                    self.codes.append(lobby.create_invite(peer))
                elif kind == "join" and self.codes:
                    lobby.find(peer, invite=self.codes[j % len(self.codes)])
                elif kind == "disconnect":
                    lobby.disconnect(peer)
                    self.connected.remove(peer)
            except ProtocolError as e:
                assert e.code == "not_chatting", e.code

    @rule(seconds=st.sampled_from([1.0, 10.0, 700.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    def _chat(self, peer: RecordingPeer) -> str:
        return cast(str, [e for e in peer.events if e[0] == "paired"][-1][1])

    @invariant()
    def pairs_are_symmetric(self) -> None:
        """Every chatting client has exactly one partner, chatting in the same chat, on either node."""
        chatting = [p for p in self.connected if self.home[p].state_of(p) is State.CHATTING]
        chats: dict[str, list[RecordingPeer]] = {}
        for peer in chatting:
            chats.setdefault(self._chat(peer), []).append(peer)
        for chat, members in chats.items():
            assert len(members) == 2, (chat, members)
        for peer in chatting:
            local = self.home[peer].partner_of(peer)
            if local is not None:
                assert self.home[peer].partner_of(local) is peer

    @invariant()
    def counts_are_the_clusters(self) -> None:
        states = [self.home[p].state_of(p) for p in self.connected]
        for lobby in self.nodes:
            assert lobby.online == len(self.connected)
            assert lobby.waiting == sum(s in (State.WAITING, State.INVITING) for s in states)
            assert lobby.chatting == sum(s is State.CHATTING for s in states)

    @invariant()
    def no_two_open_waiters(self) -> None:
        """With no cooldown, two waiters who accept anyone are never both left waiting, whatever their nodes."""
        open_waiters = [
            p for p in self.connected if self.home[p].state_of(p) is State.WAITING and self.asked.get(p) == "open"
        ]
        assert len(open_waiters) <= 1, open_waiters


class RacingNodesTests(SynchronousTestCase):
    def test_racing_requests_on_two_nodes(self) -> None:
        """Hypothesis races request batches across two nodes; pairs, counts and the queue stay sound."""
        TwoNodes.TestCase.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
        TwoNodes.TestCase("runTest").runTest()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll C{condition} on the real reactor until it holds; fail after C{timeout} seconds."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        pytest_twisted.blockon(task.deferLater(reactor, 0.02, lambda: None))


def stop(link: RedisLink) -> None:
    pytest_twisted.blockon(link.stopService())


class RedisRestartTests(SynchronousTestCase):
    def test_waiters_written_back_meet(self) -> None:
        """
        Redis restarts empty while two waiters on two nodes are kept apart only
        by their interests; their interest timeouts pass meanwhile.  When the
        nodes write their state back, the two meet: nobody is left waiting.
        """
        server = RedisServer()
        server.start()
        self.addCleanup(server.cleanup)
        clock = Clock()
        nodes = []
        for seed in (1, 2):
            lobby, link = redis_node(server, clock, seed, prefix="{restart}")
            self.addCleanup(stop, link)
            nodes.append((lobby, link))
        (one, link_one), (two, link_two) = nodes
        x, y = RecordingPeer("x"), RecordingPeer("y")
        one.connect(x)
        two.connect(y)
        one.find(x, ["chess"])
        two.find(y, ["go"])
        for lobby, _ in nodes:
            pytest_twisted.blockon(lobby.flush())
        self.assertEqual((x.take(), y.take()), ([("waiting",)], [("waiting",)]))
        server.restart()
        wait_until(lambda: not (link_one.ready or link_two.ready), 5, "both nodes see Redis gone")
        clock.advance(10)  # the interest timeouts pass while Redis is away
        for lobby, link in nodes:
            pytest_twisted.blockon(link.when_ready())
        wait_until(lambda: bool(x.events and y.events), 5, "the two waiters are told")
        (paired_x,), (paired_y,) = x.take(), y.take()
        self.assertEqual((paired_x[0], paired_y[0]), ("paired", "paired"))
        self.assertEqual(paired_x[1], paired_y[1])
        for lobby, _ in nodes:
            pytest_twisted.blockon(lobby.flush())
            self.assertEqual((lobby.online, lobby.waiting, lobby.chatting), (2, 0, 2))

    def test_bans_outlive_a_restart(self) -> None:
        """
        Redis restarts empty: the bans the nodes knew are written back with
        their state, so a node that joins afterwards still gets them.
        """
        server = RedisServer()
        server.start()
        self.addCleanup(server.cleanup)
        clock = Clock()
        clock.advance(1000)
        heard: list[tuple[str, float]] = []
        one, link_one = redis_node(server, clock, 1, prefix="{bans}", on_ban=lambda *ban: heard.append(ban))
        self.addCleanup(stop, link_one)
        one.report_address("reporter", "rude", 1, 60.0, 3600.0)
        pytest_twisted.blockon(one.flush())
        self.assertEqual(heard, [("rude", 4600.0)])
        server.restart()
        wait_until(lambda: not link_one.ready, 5, "the node sees Redis gone")
        pytest_twisted.blockon(link_one.when_ready())
        later: list[tuple[str, float]] = []
        two, link_two = redis_node(server, clock, 2, prefix="{bans}", on_ban=lambda *ban: later.append(ban))
        self.addCleanup(stop, link_two)
        self.assertEqual(later, [("rude", 4600.0)])
        clock.advance(3600)  # the ban ends: the next node to join drops it
        _, link_three = redis_node(server, clock, 3, prefix="{bans}")
        self.addCleanup(stop, link_three)
        self.assertEqual(server.command("HLEN", "{bans}:bans"), b":0\r\n")

    def test_events_that_overtake_the_write_back_answer(self) -> None:
        """
        A node writes its state back (its waiter x, open to anyone), and
        another node pairs x before the answer to that write-back has
        arrived: x's event comes on the subscriber connection, ahead of the
        answer on the command connection (held back here by a proxy).  x is
        told it is paired, once the answer is in.
        """
        server = RedisServer()
        server.start()
        self.addCleanup(server.cleanup)
        proxy = DelayingProxy(server.port, hold=0.5, after=b"EVALSHA")
        self.addCleanup(proxy.close)
        clock = Clock()
        one, link_one = redis_node(server, clock, 1, prefix="{early}", url=f"redis://127.0.0.1:{proxy.port}/0")
        self.addCleanup(stop, link_one)
        two, link_two = redis_node(server, clock, 2, prefix="{early}")
        self.addCleanup(stop, link_two)
        x, y = RecordingPeer("x"), RecordingPeer("y")
        one.connect(x)
        two.connect(y)
        one.find(x)
        pytest_twisted.blockon(one.flush())
        self.assertEqual(x.take(), [("waiting",)])
        key = "{early}:c:%s.1" % one.node

        def epoch() -> bytes:
            return server.command("HGET", key, "epoch")

        before = epoch()
        proxy.drop_all()
        wait_until(lambda: not link_one.ready and epoch() not in (before, b"$-1\r\n"), 5, "x written back")
        self.assertFalse(link_one.ready)  # its answer is still held back
        two.find(y)
        wait_until(lambda: bool(x.events), 5, "x is told")
        (paired_x,) = x.take()
        self.assertEqual(paired_x[0], "paired")
        pytest_twisted.blockon(two.flush())
        self.assertEqual([e[:2] for e in y.take()], [("paired", paired_x[1])])

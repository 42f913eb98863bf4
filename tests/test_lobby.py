"""
The lobby's rules, one contract for both lobbies.

Every test class here runs twice: against the in-memory L{Lobby} with no
reactor (a L{Clock}, a seeded random source, recording peers), and, as its
C{...OnRedis} twin, against L{RedisLobby} on a real C{redis-server} (see
L{tests.lobbies}).  The tests drive both through L{ILobby} only; the few
that look at the in-memory lobby's own structures are in
L{MemoryLobbyInternalsTests}.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.lobby import INVITE_LIFETIME, Clock as LobbyClock
from chatroulette.lobby import Lobby, State
from chatroulette.messages import MODES, Mode, ProtocolError

from .lobbies import LobbyTestCase, RecordingPeer, also_on_redis, make_memory_lobby, open_lobby


class PairingTests(LobbyTestCase):
    def test_first_waits_second_pairs(self) -> None:
        """The first stranger waits; the second is paired with them at once, both told the same chat."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.assertEqual(a.take(), [("waiting",)])
        self.lobby.find(b)
        (ea,), (eb,) = a.take(), b.take()
        self.assertEqual(ea[0], "paired")
        self.assertEqual(ea, eb)
        self.assertTrue(ea[1])
        self.assertEqual(ea[2], [])
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual((self.lobby.online, self.lobby.waiting, self.lobby.chatting), (2, 0, 2))

    def test_pair_observed_once(self) -> None:
        """The on_pair hook hears about each chat once, with both names and what they share."""
        seen: list[tuple[Any, ...]] = []
        self.lobby, _ = self.make_lobby(on_pair=lambda *args: seen.append(args))
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a, ["x", "y"])
        self.lobby.find(b, ["y"])
        self.assertEqual(seen, [(self.chat_of(a), "b", "a", ["y"])])

    def test_alone_never_paired_with_self(self) -> None:
        """A lone stranger pressing find again and again keeps waiting."""
        a = self.peer("a")
        for _ in range(3):
            self.lobby.find(a)
        self.assertEqual(a.take(), [("waiting",)] * 3)
        self.assertEqual(self.lobby.waiting, 1)
        self.clock.advance(100)
        self.assertEqual(a.take(), [])

    def test_random_not_fifo(self) -> None:
        """With several compatible waiters, who gets the newcomer depends on the random source."""
        self.assertGreater(len(self.newcomers_partners(waiters=5, seeds=20)), 2)

    def test_random_among_more_waiters_than_probes(self) -> None:
        """With more compatible waiters than the random probes, the choice is still spread."""
        self.assertGreater(len(self.newcomers_partners(waiters=30, seeds=12)), 4)

    def newcomers_partners(self, waiters: int, seeds: int) -> set[str]:
        """Who a newcomer sharing an interest with each of C{waiters} waiters meets, over C{seeds} lobbies."""
        partners = set()
        for seed in range(seeds):
            lobby, _ = self.make_lobby(seed)
            for i in range(waiters):
                waiter = RecordingPeer(str(i))
                lobby.connect(waiter)
                lobby.find(waiter, [f"x{i}"])  # distinct interests: nobody pairs yet
            newcomer = RecordingPeer("n")
            lobby.connect(newcomer)
            lobby.find(newcomer, [f"x{i}" for i in range(waiters)])
            partner = lobby.partner_of(newcomer)
            assert partner is not None
            partners.add(cast(RecordingPeer, partner).name)
        return partners

    def test_message_relayed_to_partner_only(self) -> None:
        """A message reaches the partner, not the sender or anyone else."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(c)
        for p in (a, b, c):
            p.take()
        self.lobby.message(a, "hello")
        self.lobby.typing(b, True)
        self.assertEqual(b.take(), [("message", "hello")])
        self.assertEqual(a.take(), [("typing", True)])
        self.assertEqual(c.take(), [])
        self.assertEqual(self.lobby.stats.messages, 1)

    def test_message_without_partner(self) -> None:
        """A message with nobody to receive it is refused with not_chatting."""
        a = self.peer("a")
        with self.assertRaises(ProtocolError) as e:
            self.lobby.message(a, "hello?")
        self.assertEqual(e.exception.code, "not_chatting")
        self.lobby.typing(a, True)  # silently dropped
        self.assertEqual(a.take(), [])

    def test_leave_tells_partner(self) -> None:
        """Leaving ends the chat: the partner is told, the leaver is not."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        chat = self.chat_of(a)
        a.take(), b.take()
        self.lobby.leave(a)
        self.assertEqual(b.take(), [("partner_left", chat)])
        self.assertEqual(a.take(), [])
        self.assertEqual(self.lobby.state_of(a), State.IDLE)
        self.assertEqual(self.lobby.state_of(b), State.IDLE)

    def test_leave_while_waiting(self) -> None:
        """Leaving the queue means nobody is paired with you afterwards."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.leave(a)
        self.lobby.find(b)
        self.assertEqual(b.take(), [("waiting",)])
        self.assertEqual(self.lobby.waiting, 1)

    def test_next_ends_chat_and_requeues(self) -> None:
        """find while chatting ends the chat (partner told) and looks for someone else."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a)
        self.lobby.find(b)
        chat = self.chat_of(b)
        self.lobby.find(c)
        a.take(), b.take(), c.take()
        self.lobby.find(a)
        self.assertEqual(b.take(), [("partner_left", chat)])
        self.assertIs(self.lobby.partner_of(a), c)

    def test_disconnect_tells_partner_and_forgets(self) -> None:
        """A disconnect ends the chat and removes the client from every count."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        chat = self.chat_of(a)
        b.take()
        self.lobby.disconnect(a)
        self.assertEqual(b.take(), [("partner_left", chat)])
        self.assertEqual((self.lobby.online, self.lobby.waiting, self.lobby.chatting), (1, 0, 0))
        self.lobby.disconnect(a)  # twice is harmless

    def test_disconnect_cancels_cooldown_retry(self) -> None:
        """
        A waiter kept from its last partner by the cooldown waits on one timer;
        once both have gone, no timer and no keep-apart relation is left.
        """
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(b)  # next: the chat ends, b waits
        self.lobby.find(a)  # a waits too, kept from b
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.lobby.disconnect(a)
        self.lobby.disconnect(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disconnect_while_waiting(self) -> None:
        """A waiter who disconnects is never paired afterwards."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.disconnect(a)
        self.lobby.find(b)
        self.assertEqual(b.take(), [("waiting",)])


class InterestTests(LobbyTestCase):
    def test_shared_interest_preferred(self) -> None:
        """Someone with interests is paired with a waiter sharing one, told what they share."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a, ["music"])
        self.lobby.find(b, ["chess", "music"])
        self.assertEqual(self.lobby.partner_of(a), b)
        self.assertEqual(self.chat_of(b), self.chat_of(a))
        self.assertEqual(b.events[-1][2], ["music"])
        self.lobby.find(c, ["chess"])
        self.assertEqual(c.take(), [("waiting",)])

    def test_no_random_match_before_timeout(self) -> None:
        """A waiter with interests is not given a random stranger before the interest timeout."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a, ["music"])
        self.lobby.find(b)
        self.assertEqual(b.take(), [("waiting",)])
        self.clock.advance(9.9)
        self.assertIsNone(self.lobby.partner_of(a))
        self.clock.advance(0.1)
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual(b.take()[-1][2], [])

    def test_two_timed_out_interest_waiters_pair(self) -> None:
        """Two waiters with different interests meet once both timeouts pass."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a, ["music"])
        self.clock.advance(5)
        self.lobby.find(b, ["chess"])
        self.clock.advance(5)
        self.assertIsNone(self.lobby.partner_of(a))
        self.clock.advance(5)
        self.assertIs(self.lobby.partner_of(a), b)

    def test_timeout_cancelled_by_leave(self) -> None:
        """Leaving cancels the pending interest timeout."""
        a = self.peer("a")
        self.lobby.find(a, ["music"])
        self.lobby.leave(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CooldownTests(LobbyTestCase):
    def test_no_repeat_within_cooldown(self) -> None:
        """Two strangers whose chat ended are kept apart for the cooldown, then may meet."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(b)  # next
        self.lobby.find(a)
        self.assertIsNone(self.lobby.partner_of(a))
        self.assertEqual(self.lobby.waiting, 2)
        self.clock.advance(29.9)
        self.assertIsNone(self.lobby.partner_of(a))
        self.clock.advance(0.1)
        self.assertIs(self.lobby.partner_of(a), b)

    def test_third_party_during_cooldown(self) -> None:
        """During a cooldown, each of the two can still meet someone else."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.leave(a)
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(c)
        self.assertIn(self.lobby.partner_of(c), (a, b))

    def test_ended_chats_leave_no_timers(self) -> None:
        """Cooldowns need no timer per chat: churning strangers leave none behind."""
        peers = [self.peer(str(i)) for i in range(40)]
        for _ in range(20):
            for p in peers:
                self.lobby.find(p)
            self.clock.advance(1)
            for p in peers:
                self.lobby.leave(p)
        self.assertGreater(self.lobby.stats.pairings, 300)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_moves_earlier(self) -> None:
        """
        A waiter kept from everyone by cooldowns meets the first stranger
        whose cooldown ends, even when a later one was found first.
        """
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a)
        self.lobby.find(c)  # t=0: a meets c
        self.lobby.leave(a)  # a and c kept apart until t=30
        self.clock.advance(4)
        self.lobby.find(b)
        self.lobby.find(c)  # t=4: b meets c
        self.lobby.leave(b)  # b and c kept apart until t=34
        self.clock.advance(1)
        self.lobby.find(a, ["x"])
        self.lobby.find(b, ["x"])  # t=5: a meets b on a shared interest
        self.lobby.leave(b)  # a and b kept apart until t=35
        self.lobby.find(b, ["x"])
        self.lobby.find(a, ["x"])  # a waits for b (until t=35)
        self.lobby.find(c)  # c waits for anyone, kept from a until t=30
        self.clock.advance(10)  # t=15: interest timeouts; c is kept from both
        self.assertEqual(self.lobby.waiting, 3)
        self.clock.advance(14.9)
        self.assertIsNone(self.lobby.partner_of(a))
        self.clock.advance(0.1)  # t=30
        self.assertIs(self.lobby.partner_of(a), c)

    def test_zero_cooldown(self) -> None:
        """With no cooldown, the same two can meet again immediately."""
        self.lobby, self.clock = self.make_lobby(repeat_cooldown=0.0)
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(a)
        self.lobby.find(b)
        self.assertIs(self.lobby.partner_of(a), b)


class ReportTests(LobbyTestCase):
    def test_report_ends_and_blocks_forever(self) -> None:
        """A reported pair is split and never paired again, even after the cooldown."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        chat = self.chat_of(b)
        b.take()
        self.assertEqual(self.lobby.report(a, "rude").client_id, "b")
        self.assertEqual(b.take(), [("partner_left", chat)])
        self.lobby.find(a)
        self.lobby.find(b)
        self.clock.advance(3600)
        self.assertIsNone(self.lobby.partner_of(a))
        self.assertEqual(self.lobby.stats.reports, 1)

    def test_report_after_partner_left(self) -> None:
        """Reporting after the stranger left reports that stranger."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.leave(b)
        self.assertEqual(self.lobby.report(a).client_id, "b")

    def test_a_partner_counted_once_per_reporter(self) -> None:
        """One report per reporter and partner; the partner's own report of the reporter counts too."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        self.lobby.find(a)
        self.lobby.find(b)
        self.assertEqual(self.lobby.report(a, "rude").client_id, "b")
        self.assertIsNone(self.lobby.report(a, "rude"))
        self.assertIsNone(self.lobby.report(a))
        self.assertEqual(self.lobby.stats.reports, 1)
        self.assertEqual(self.lobby.report(b).client_id, "a")
        self.lobby.find(a)
        self.lobby.find(c)
        self.assertEqual(self.lobby.report(a).client_id, "c")
        self.assertEqual(self.lobby.stats.reports, 3)

    def test_report_nobody(self) -> None:
        """Reporting with no partner ever is refused."""
        a = self.peer("a")
        with self.assertRaises(ProtocolError) as e:
            self.lobby.report(a)
        self.assertEqual(e.exception.code, "not_chatting")
        self.assertEqual(self.lobby.stats.reports, 0)


class InviteTests(LobbyTestCase):
    def test_invite_pairs_friend(self) -> None:
        """A friend with the code is paired with the inviter, who never entered the random queue."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        code = self.lobby.create_invite(a)
        self.lobby.find(c)  # a random stranger is not given the inviter
        self.assertEqual(c.take(), [("waiting",)])
        self.lobby.find(b, invite=code)
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual(a.take()[-1][2], [])

    def test_invite_single_use(self) -> None:
        """A used code is invalid afterwards and the refusal changes nothing."""
        a, b, c = self.peer("a"), self.peer("b"), self.peer("c")
        code = self.lobby.create_invite(a)
        self.lobby.find(b, invite=code)
        with self.assertRaises(ProtocolError) as e:
            self.lobby.find(c, invite=code)
        self.assertEqual(e.exception.code, "invite_invalid")
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual(self.lobby.state_of(c), State.IDLE)

    def test_invalid_invite_keeps_chat(self) -> None:
        """A bad code while chatting leaves the chat going."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        b.take()
        with self.assertRaises(ProtocolError):
            self.lobby.find(a, invite="nope")
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual(b.take(), [])

    def test_own_invite_refused(self) -> None:
        """Nobody can join their own invite."""
        a = self.peer("a")
        code = self.lobby.create_invite(a)
        with self.assertRaises(ProtocolError):
            self.lobby.find(a, invite=code)
        self.assertEqual(self.lobby.state_of(a), State.INVITING)

    def test_invite_expires(self) -> None:
        """After ten minutes the code is dead and the inviter is told and idle."""
        a, b = self.peer("a"), self.peer("b")
        code = self.lobby.create_invite(a)
        self.assertGreaterEqual(len(code), 8)
        self.clock.advance(INVITE_LIFETIME)
        self.assertEqual(a.take(), [("invite_expired", code)])
        self.assertEqual(self.lobby.state_of(a), State.IDLE)
        with self.assertRaises(ProtocolError):
            self.lobby.find(b, invite=code)

    def test_leave_cancels_invite(self) -> None:
        """Leaving cancels the invite: the code no longer works, no timer lingers."""
        a, b = self.peer("a"), self.peer("b")
        code = self.lobby.create_invite(a)
        self.lobby.leave(a)
        with self.assertRaises(ProtocolError):
            self.lobby.find(b, invite=code)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invite_ends_current_chat(self) -> None:
        """Creating an invite while chatting ends that chat."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        chat = self.chat_of(b)
        b.take()
        self.lobby.create_invite(a)
        self.assertEqual(b.take(), [("partner_left", chat)])

class ModeTests(LobbyTestCase):
    def test_modes_never_meet(self) -> None:
        """A text waiter and a video waiter are never paired; each is paired with its own mode."""
        t1, v1, t2, v2 = self.peer("t1"), self.peer("v1"), self.peer("t2"), self.peer("v2")
        self.lobby.find(t1)
        self.lobby.find(v1, mode="video")
        self.clock.advance(100)
        self.assertEqual((t1.take(), v1.take()), ([("waiting",)], [("waiting",)]))
        self.lobby.find(v2, mode="video")
        self.assertIs(self.lobby.partner_of(v1), v2)
        self.lobby.find(t2, mode="text")
        self.assertIs(self.lobby.partner_of(t1), t2)
        self.assertEqual([r[1] for r in t1.roles + t2.roles], ["text", "text"])
        self.assertEqual([r[1] for r in v1.roles + v2.roles], ["video", "video"])

    def test_interests_within_a_mode(self) -> None:
        """A shared interest does not cross modes, before or after the interest timeout."""
        t, v = self.peer("t"), self.peer("v")
        self.lobby.find(t, ["chess"])
        self.lobby.find(v, ["chess"], mode="video")
        self.clock.advance(100)
        self.assertIsNone(self.lobby.partner_of(t))
        self.assertEqual(self.lobby.waiting, 2)

    def test_interest_timeout_within_a_mode(self) -> None:
        """Two video waiters with different interests meet after the timeout; a text waiter is never picked."""
        t, v1, v2 = self.peer("t"), self.peer("v1"), self.peer("v2")
        self.lobby.find(t)
        self.lobby.find(v1, ["chess"], mode="video")
        self.lobby.find(v2, ["go"], mode="video")
        self.assertIsNone(self.lobby.partner_of(v1))
        self.clock.advance(10)
        self.assertIs(self.lobby.partner_of(v1), v2)
        self.assertEqual(t.take(), [("waiting",)])

    def test_requeue_in_another_mode(self) -> None:
        """A waiter who finds again in the other mode leaves the first mode's queue."""
        a, t, v = self.peer("a"), self.peer("t"), self.peer("v")
        self.lobby.find(a, mode="video")
        self.lobby.find(a, mode="text")
        self.lobby.find(v, mode="video")
        self.assertIsNone(self.lobby.partner_of(v))
        self.lobby.find(t)
        self.assertIs(self.lobby.partner_of(a), t)

    def test_cooldown_holds_across_modes(self) -> None:
        """Two who just chatted in text are not paired in video within the cooldown, and are after it."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(a, mode="video")
        self.lobby.find(b, mode="video")
        self.assertIsNone(self.lobby.partner_of(a))
        self.clock.advance(30)
        self.assertIs(self.lobby.partner_of(a), b)
        self.assertEqual(a.roles[-1][1], "video")

    def test_report_holds_across_modes(self) -> None:
        """Two kept apart by a report in a text chat are never paired in video either."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.report(a)
        self.lobby.find(a, mode="video")
        self.lobby.find(b, mode="video")
        self.clock.advance(10_000)
        self.assertIsNone(self.lobby.partner_of(a))

    def test_one_initiator_the_waiter(self) -> None:
        """Exactly one side initiates: the one who was waiting, in text and video chats alike."""
        for mode in MODES:
            a, b = self.peer("a" + mode), self.peer("b" + mode)
            self.lobby.find(a, mode=mode)
            self.lobby.find(b, mode=mode)
            chat = self.chat_of(a)
            self.assertEqual(a.roles, [(chat, mode, True)])
            self.assertEqual(b.roles, [(chat, mode, False)])

    def test_timer_match_has_one_initiator(self) -> None:
        """A match made when an interest timeout fires also has exactly one initiator."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a, ["x"], mode="video")
        self.lobby.find(b, ["y"], mode="video")
        self.clock.advance(10)
        self.assertEqual(sorted([a.roles[-1][2], b.roles[-1][2]]), [False, True])

    def test_invite_pairs_in_the_inviters_mode(self) -> None:
        """An invite pairs in the inviter's mode whatever the joiner asks for; the inviter initiates."""
        a, b = self.peer("a"), self.peer("b")
        code = self.lobby.create_invite(a, mode="video")
        self.lobby.find(b, invite=code, mode="text")
        chat = self.chat_of(a)
        self.assertEqual((a.roles, b.roles), ([(chat, "video", True)], [(chat, "video", False)]))
        c, d = self.peer("c"), self.peer("d")
        self.lobby.find(d, invite=self.lobby.create_invite(c), mode="video")
        self.assertEqual(d.roles[-1][1], "text")

    def test_video_chats_counted(self) -> None:
        """Pairings count every chat; video pairings count the video ones."""
        a, b, c, d = self.peer("a"), self.peer("b"), self.peer("c"), self.peer("d")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.find(c, mode="video")
        self.lobby.find(d, mode="video")
        self.assertEqual((self.lobby.stats.pairings, self.lobby.stats.video_pairings), (2, 1))


class SignalTests(LobbyTestCase):
    def video_pair(self) -> tuple[RecordingPeer, RecordingPeer]:
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a, mode="video")
        self.lobby.find(b, mode="video")
        a.take(), b.take()
        return a, b

    def test_relayed_to_the_partner(self) -> None:
        """A signal in a video chat reaches the partner unchanged, and nobody else, and is counted."""
        a, b = self.video_pair()
        c = self.peer("c")
        self.lobby.signal(a, b'{"sdp":"v=0"}')
        self.lobby.signal(b, b'{"candidate":""}')
        self.assertEqual(b.take(), [("signal", b'{"sdp":"v=0"}')])
        self.assertEqual(a.take(), [("signal", b'{"candidate":""}')])
        self.assertEqual(c.take(), [])
        self.assertEqual(self.lobby.stats.signals, 2)

    def assertRefused(self, peer: RecordingPeer, code: str) -> None:
        with self.assertRaises(ProtocolError) as e:
            self.lobby.signal(peer, b"{}")
        self.assertEqual(e.exception.code, code)

    def test_refused_outside_a_chat(self) -> None:
        """Idle, waiting, inviting or after the chat ended: not_chatting, and nothing relayed."""
        a, b = self.video_pair()
        idle = self.peer("idle")
        waiting = self.peer("waiting")
        self.lobby.find(waiting, mode="video")
        inviting = self.peer("inviting")
        self.lobby.create_invite(inviting, mode="video")
        self.lobby.leave(b)
        for peer in (idle, waiting, inviting, a, b):
            self.assertRefused(peer, "not_chatting")
        self.assertEqual([e[0] for e in a.take() + b.take()], ["partner_left"])
        self.assertEqual(self.lobby.stats.signals, 0)

    def test_refused_in_a_text_chat(self) -> None:
        """In a text chat a signal is a bad request and the partner hears nothing."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        b.take()
        self.assertRefused(a, "bad_request")
        self.assertEqual(b.take(), [])

    def test_invited_video_chat_signals(self) -> None:
        """A joiner who asked for text but joined a video invite may signal."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(b, invite=self.lobby.create_invite(a, mode="video"))
        self.lobby.signal(b, b"{}")
        self.assertEqual(a.events[-1], ("signal", b"{}"))


class LargePoolTests(LobbyTestCase):
    def test_everyone_paired(self) -> None:
        """A thousand strangers arriving one by one all end up in pairs."""
        lobby, _ = self.make_lobby()
        peers = [RecordingPeer(str(i)) for i in range(1000)]
        for p in peers:
            lobby.connect(p)
            lobby.find(p)
        self.assertEqual(lobby.chatting, 1000)
        for p in peers:
            partner = lobby.partner_of(p)
            self.assertIsNotNone(partner)
            self.assertIs(lobby.partner_of(cast(RecordingPeer, partner)), p)

    def test_the_one_allowed_waiter_found_among_many_kept_apart(self) -> None:
        """Of 41 waiters sharing an interest with the newcomer, 40 reported by it, it meets the one left."""
        for seed in range(3):
            lobby, _ = self.make_lobby(seed)
            n = RecordingPeer("n")
            lobby.connect(n)
            for i in range(40):
                w = RecordingPeer(f"w{i}")
                lobby.connect(w)
                lobby.find(w, [f"y{i}"])
                lobby.find(n, [f"y{i}"])
                self.assertIs(lobby.partner_of(n), w)
                lobby.report(n, "rude")
                lobby.find(w, [f"y{i}"])
            c = RecordingPeer("c")
            lobby.connect(c)
            lobby.find(c, ["y40"])
            lobby.find(n, [f"y{i}" for i in range(41)])
            self.assertIs(lobby.partner_of(n), c)
            self.assertEqual(lobby.waiting, 40)

    def test_the_one_allowed_waiter_found_in_a_big_pool(self) -> None:
        """
        A pool of waiters all kept apart from each other (each pair just
        chatted) and from the newcomer, but one: past the random probes, the
        scan finds that one.
        """
        for seed in range(3):
            lobby, _ = self.make_lobby(seed)
            n, x = RecordingPeer("n"), RecordingPeer("x")
            clique = [n, x] + [RecordingPeer(f"w{i}") for i in range(12)]
            for p in clique:
                lobby.connect(p)
            for i, a in enumerate(clique):
                for b in clique[i + 1 :]:
                    if {a.name, b.name} == {"n", "x"}:
                        continue
                    lobby.find(a)
                    lobby.find(b)
                    self.assertIs(lobby.partner_of(a), b)
                    lobby.leave(a)
                    lobby.leave(b)
            for p in clique[1:]:
                lobby.find(p)
            self.assertEqual(lobby.waiting, 13)
            lobby.find(n)
            self.assertIs(lobby.partner_of(n), x)


class MemoryLobbyInternalsTests(SynchronousTestCase):
    """The in-memory lobby's own structures: bounded, and free of clients that left."""

    def setUp(self) -> None:
        self.lobby, self.clock = make_memory_lobby()

    def peer(self, name: str) -> RecordingPeer:
        peer = RecordingPeer(name)
        self.lobby.connect(peer)
        return peer

    def test_no_map_keeps_a_client_that_left(self) -> None:
        """
        A busy client prunes its ended cooldowns on both sides: when it
        leaves, a quiet client it once met holds no reference to it.
        """
        quiet, busy = self.peer("quiet"), self.peer("busy")
        self.lobby.find(quiet)
        self.lobby.find(busy)
        self.lobby.leave(busy)
        self.clock.advance(31)
        for i in range(40):  # enough chats to make busy prune its map
            other = self.peer(f"o{i}")
            self.lobby.find(other)
            self.lobby.find(busy)
            self.lobby.leave(busy)
        self.lobby.disconnect(busy)
        self.assertIsNone(self.lobby._clients[quiet].avoid)
        for client in self.lobby._clients.values():
            self.assertNotIn(busy, [other.peer for other in client.avoid or ()])

    def test_disconnect_forgets_keep_apart(self) -> None:
        """A client that disconnects is removed from its past partners' keep-apart maps."""
        a, b = self.peer("a"), self.peer("b")
        self.lobby.find(a)
        self.lobby.find(b)
        self.lobby.report(a)
        self.lobby.disconnect(b)
        self.assertIsNone(self.lobby._clients[a].avoid)

    def test_keep_apart_maps_stay_bounded(self) -> None:
        """
        Ended cooldowns are pruned: a client who has met thousands of
        strangers keeps only about the ones of the last cooldown period.
        """
        a = self.peer("a")
        for i in range(2000):
            b = self.peer(f"b{i}")
            self.lobby.find(b)
            self.lobby.find(a)
            self.assertIs(self.lobby.partner_of(a), b)
            self.lobby.leave(a)
            self.clock.advance(1)
        avoid = self.lobby._clients[a].avoid
        assert avoid is not None
        # 30 s of cooldown at one chat a second, and at most twice that
        # before the next pruning.
        self.assertLessEqual(len(avoid), 2 * 31)
        self.assertGreaterEqual(len(avoid), 30)

    def test_one_compatible_waiter_among_hundreds(self) -> None:
        """
        However many waiters are kept apart from a newcomer, a pool of up to
        a thousand is searched in full: the one it may meet is found.
        """
        for seed in range(5):
            self.lobby, self.clock = make_memory_lobby(seed)
            a, c = self.peer("a"), self.peer("c")
            kept = [self.peer(f"b{i}") for i in range(300)]
            clients = [self.lobby._clients[p] for p in [a, c, *kept]]
            # Everyone is kept apart from everyone, except a and c.
            for i, one in enumerate(clients):
                for other in clients[i + 1 :]:
                    if {one.peer, other.peer} != {a, c}:
                        one.keep_apart(other, float("inf"), 0.0)
            for p in [*kept, c]:
                self.lobby.find(p)
            self.assertEqual(self.lobby.waiting, 301)
            self.lobby.find(a)
            self.assertIs(self.lobby.partner_of(a), c)

    def test_default_tokens_unguessable(self) -> None:
        """Without an injected token factory, codes are long URL-safe random strings."""
        lobby = Lobby(cast(LobbyClock, Clock()))
        peer = RecordingPeer("a")
        lobby.connect(peer)
        codes = {lobby.create_invite(peer) for _ in range(50)}
        self.assertEqual(len(codes), 50)
        for code in codes:
            self.assertGreaterEqual(len(code), 8)
            self.assertRegex(code, r"^[A-Za-z0-9_-]+$")


modes = st.sampled_from(["text", "video"])


class LobbyMachine(RuleBasedStateMachine):
    """
    Random sequences of requests, racing in any order, never break the
    invariants.  The machine keeps its own model of who must be kept apart
    (a cooldown after each chat, for ever after a report) and of what each
    waiter asked for, so that it checks the lobby from the outside only.
    """

    on_redis = False
    INTEREST_TIMEOUT = 3.0
    COOLDOWN = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.lobby, self.clock, self._close = open_lobby(
            self.on_redis, interest_timeout=self.INTEREST_TIMEOUT, repeat_cooldown=self.COOLDOWN
        )
        self.peers: list[RecordingPeer] = []
        self.connected: list[RecordingPeer] = []
        self.codes: list[str] = []
        # The model: pairs kept apart until when; each client's last partner;
        # what each waiter asked for, and since when.
        self.kept: dict[frozenset[RecordingPeer], float] = {}
        self.last: dict[RecordingPeer, RecordingPeer] = {}
        self.asked: dict[RecordingPeer, tuple[str, tuple[str, ...], float]] = {}

    def teardown(self) -> None:
        self._close()

    @initialize()
    def start(self) -> None:
        for i in range(6):
            peer = RecordingPeer(str(i))
            self.peers.append(peer)
            self.lobby.connect(peer)
            self.connected.append(peer)

    def _pick(self, i: int) -> RecordingPeer | None:
        return self.connected[i % len(self.connected)] if self.connected else None

    def _pairs(self) -> dict[RecordingPeer, RecordingPeer]:
        return {
            p: cast(RecordingPeer, self.lobby.partner_of(p))
            for p in self.connected
            if self.lobby.partner_of(p) is not None
        }

    def _track(self, request: Callable[[], object]) -> None:
        """Run C{request}; note the chats it ended (kept apart for the cooldown)."""
        before = self._pairs()
        try:
            request()
        finally:
            after = self._pairs()
            now = self.clock.seconds()
            for one, other in before.items():
                if after.get(one) is not other:
                    self.last[one], self.last[other] = other, one
                    key = frozenset((one, other))
                    self.kept[key] = max(self.kept.get(key, 0.0), now + self.COOLDOWN)

    @rule(
        i=st.integers(0, 10),
        interests=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
        mode=modes,
    )
    def find(self, i: int, interests: list[str], mode: Mode) -> None:
        peer = self._pick(i)
        if peer:
            wanted = tuple(sorted(set(interests)))
            self.asked[peer] = (mode, wanted, self.clock.seconds())
            self._track(lambda: self.lobby.find(peer, list(wanted), mode=mode))

    @rule(i=st.integers(0, 10))
    def leave(self, i: int) -> None:
        peer = self._pick(i)
        if peer:
            self._track(lambda: self.lobby.leave(peer))

    @rule(i=st.integers(0, 10))
    def message(self, i: int) -> None:
        peer = self._pick(i)
        if peer:
            partner = self.lobby.partner_of(peer)
            try:
                self.lobby.message(peer, "hi")
            except ProtocolError as e:
                assert e.code == "not_chatting"
                assert partner is None
            else:
                assert partner is not None
                assert cast(RecordingPeer, partner).events[-1] == ("message", "hi")

    @rule(i=st.integers(0, 10))
    def signal(self, i: int) -> None:
        peer = self._pick(i)
        if peer:
            partner = self.lobby.partner_of(peer)
            try:
                self.lobby.signal(peer, b"{}")
            except ProtocolError as e:
                if partner is None:
                    assert e.code == "not_chatting"
                else:
                    assert e.code == "bad_request" and peer.roles[-1][1] == "text"
            else:
                assert partner is not None and peer.roles[-1][1] == "video"
                assert cast(RecordingPeer, partner).events[-1] == ("signal", b"{}")

    @rule(i=st.integers(0, 10))
    def report(self, i: int) -> None:
        peer = self._pick(i)
        if peer:
            reported = cast("RecordingPeer | None", self.lobby.partner_of(peer)) or self.last.get(peer)
            try:
                self._track(lambda: self.lobby.report(peer))
            except ProtocolError as e:
                assert e.code == "not_chatting" and reported is None
            else:
                assert reported is not None
                self.kept[frozenset((peer, reported))] = float("inf")

    @rule(i=st.integers(0, 10), mode=modes)
    def invite(self, i: int, mode: Mode) -> None:
        peer = self._pick(i)
        if peer:
            self._track(lambda: self.codes.append(self.lobby.create_invite(peer, mode)))

    @rule(i=st.integers(0, 10), j=st.integers(0, 10), mode=modes)
    def join(self, i: int, j: int, mode: Mode) -> None:
        peer = self._pick(i)
        if peer and self.codes:
            try:
                self._track(lambda: self.lobby.find(peer, invite=self.codes[j % len(self.codes)], mode=mode))
            except ProtocolError as e:
                assert e.code == "invite_invalid"

    @rule(i=st.integers(0, 10))
    def disconnect(self, i: int) -> None:
        peer = self._pick(i)
        if peer:

            def request() -> None:
                self.lobby.disconnect(peer)
                self.connected.remove(peer)

            self._track(request)

    @rule()
    def reconnect(self) -> None:
        peer = RecordingPeer(str(len(self.peers)))
        self.peers.append(peer)
        self.lobby.connect(peer)
        self.connected.append(peer)

    @rule(seconds=st.sampled_from([0.1, 0.5, 2.9, 3.0, 4.9, 5.0, 700.0]))
    def wait(self, seconds: float) -> None:
        self._track(lambda: self.clock.advance(seconds))

    @invariant()
    def consistent(self) -> None:
        lobby = self.lobby
        states = {p: lobby.state_of(p) for p in self.connected}
        for peer, state in states.items():
            partner = lobby.partner_of(peer)
            if state is State.CHATTING:
                assert partner is not None and partner is not peer
                assert partner in states, "paired with a disconnected client"
                assert lobby.partner_of(partner) is peer, "pairs are symmetric"
            else:
                assert partner is None
        assert lobby.online == len(self.connected)
        assert lobby.waiting == sum(s in (State.WAITING, State.INVITING) for s in states.values())
        assert lobby.chatting == sum(s is State.CHATTING for s in states.values())
        assert lobby.chatting % 2 == 0

    @invariant()
    def last_word_matches_state(self) -> None:
        """What each client was told last agrees with its state."""
        for peer in self.connected:
            state = self.lobby.state_of(peer)
            told = [e[0] for e in peer.events if e[0] in ("paired", "partner_left")]
            if state is State.CHATTING:
                assert told and told[-1] == "paired"

    @invariant()
    def pairs_share_a_mode(self) -> None:
        """Both sides of a chat were told the same chat and mode, and exactly one of them initiates."""
        for peer in self.connected:
            if self.lobby.state_of(peer) is State.CHATTING:
                partner = cast(RecordingPeer, self.lobby.partner_of(peer))
                (chat, mode, initiator), (other_chat, other_mode, other_initiator) = (
                    peer.roles[-1],
                    partner.roles[-1],
                )
                assert (chat, mode) == (other_chat, other_mode)
                assert initiator != other_initiator

    @invariant()
    def no_waiters_left_apart(self) -> None:
        """
        Two waiters who could meet (same mode, and both open to anyone or
        sharing an interest) and are not kept apart are never both left waiting.
        """
        now = self.clock.seconds()
        waiters = [p for p in self.connected if self.lobby.state_of(p) is State.WAITING]

        def is_open(peer: RecordingPeer) -> bool:
            _, interests, since = self.asked[peer]
            return not interests or now - since >= self.INTEREST_TIMEOUT

        for x in waiters:
            for y in waiters:
                if x is y or self.asked[x][0] != self.asked[y][0]:
                    continue
                could_meet = (is_open(x) and is_open(y)) or bool(set(self.asked[x][1]) & set(self.asked[y][1]))
                allowed = self.kept.get(frozenset((x, y)), 0.0) <= now
                assert not (could_meet and allowed), (x, y)


class MemoryLobbyMachine(LobbyMachine):
    """The same, plus the in-memory lobby's own structures."""

    @invariant()
    def keep_apart_symmetric(self) -> None:
        """Keep-apart maps agree on both sides and name only connected clients."""
        clients = cast(Lobby, self.lobby)._clients
        for client in clients.values():
            for other, until in (client.avoid or {}).items():
                assert clients.get(other.peer) is other, "a map refers to a client that left"
                assert other.avoid is not None and other.avoid.get(client) == until


class RedisLobbyMachine(LobbyMachine):
    on_redis = True


class LobbyPropertyTests(SynchronousTestCase):
    def test_invariants(self) -> None:
        """Hypothesis drives random request sequences; invariants hold after every step."""
        MemoryLobbyMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
        MemoryLobbyMachine.TestCase("runTest").runTest()

    def test_invariants_on_redis(self) -> None:
        """The same machine against the Redis lobby on a real redis-server."""
        RedisLobbyMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
        RedisLobbyMachine.TestCase("runTest").runTest()


also_on_redis(globals())

"""
Behind a trusted reverse proxy, in memory: the client address comes from the
one header the proxy sets (the last entry of X-Forwarded-For by default), so
a header the client adds itself cannot dodge per-address caps, ban a victim
or evade a ban.

The proxy is set up as operations.md recommends: on the same host (the TCP
peer is loopback) and setting X-Forwarded-For to the client's address, while
passing any other header the client sent through unchanged.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatroulette.moderation import Moderation
from chatroulette.settings import Settings

from .hostile import RawClient, connect_as, handshake, raw_connect
from .memory import MemoryClient, MemoryServer, also_without_fast_path

PROXY = "127.0.0.1"
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.50"


class ProxyTestCase(SynchronousTestCase):
    settings = Settings(trust_proxy_headers=True, max_connections_per_ip=3, handshake_rate=0)

    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings, fast_path=self.fast_path)
        self.server.factory.moderation = Moderation(threshold=3, window=3600, ban_seconds=600)

    def via_proxy(self, client: str, **sent: str) -> MemoryClient:
        """A WebSocket from C{client} through the proxy, with the headers the client C{sent} passed on."""
        return connect_as(self.server, PROXY, headers={**sent, "X-Forwarded-For": client})

    def raw_via_proxy(self, headers: dict[str, str]) -> RawClient:
        """A handshake with exactly these headers arriving from the proxy; the raw response."""
        client, pump = raw_connect(self.server, PROXY)
        pump.clientIO.write(handshake(extra=headers))
        self.server.flush()
        return client

    def pair_and_report(self, reporter: MemoryClient, target: MemoryClient) -> None:
        """C{reporter} joins C{target}'s invite, then reports it."""
        target.send_json(type="invite")
        self.server.flush()
        reporter.send_json(type="find", invite=target.last("invite")["code"])
        self.server.flush()
        assert reporter.chat is not None and reporter.chat == target.chat
        reporter.send_json(type="report", reason="rude")
        self.server.flush()

    def banned(self, client: MemoryClient) -> bool:
        """Is a find from C{client} refused as banned (rather than queued or paired)?"""
        client.take()
        client.send_json(type="find")
        self.server.flush()
        (event,) = client.take()[-1:]
        return event.get("type") == "error" and event.get("code") == "banned"


class SpoofedForwardedTests(ProxyTestCase):
    def test_spoofed_forwarded_does_not_dodge_the_cap(self) -> None:
        """One real address sending a new Forwarded for= each time is still capped at its 3 connections."""
        clients = [self.via_proxy(ATTACKER, Forwarded=f"for=192.0.2.{i}") for i in range(3)]
        self.assertTrue(all(c.opened for c in clients))
        refused = self.raw_via_proxy({"Forwarded": "for=192.0.2.99", "X-Forwarded-For": ATTACKER})
        self.assertEqual(refused.status(), 429)
        self.assertEqual(self.server.factory.refused["connections"], 1)
        self.assertTrue(self.via_proxy("203.0.113.67").opened)

    def test_spoofed_reporters_cannot_ban(self) -> None:
        """Three reports from one real address under three spoofed Forwarded addresses count once: no ban."""
        victim = self.via_proxy(VICTIM)
        for i in range(3):
            reporter = self.via_proxy(ATTACKER, Forwarded=f"for=192.0.2.{i}")
            self.pair_and_report(reporter, victim)
            reporter.sendClose()
            self.server.flush()
        self.assertFalse(self.banned(victim))
        self.assertFalse(self.banned(self.via_proxy(VICTIM)))

    def test_ban_not_evaded_with_forwarded(self) -> None:
        """A banned address stays banned however it fills in a Forwarded header of its own."""
        victim = self.via_proxy(VICTIM)
        for i in range(3):
            self.pair_and_report(self.via_proxy(f"192.0.2.{i}"), victim)
        self.assertTrue(self.banned(victim))
        for sent in ["for=198.51.100.99", "for=unknown", "for=127.0.0.1"]:
            again = self.via_proxy(VICTIM, Forwarded=sent)
            self.assertTrue(self.banned(again), sent)
            again.sendClose()
            self.server.flush()

    def test_forwarded_unknown_is_not_loopback(self) -> None:
        """A client's Forwarded: for=unknown is ignored: capped by its real address, not exempt as the proxy."""
        clients = [self.via_proxy(ATTACKER, Forwarded="for=unknown") for _ in range(3)]
        self.assertTrue(all(c.opened for c in clients))
        refused = self.raw_via_proxy({"Forwarded": "for=unknown", "X-Forwarded-For": ATTACKER})
        self.assertEqual(refused.status(), 429)


class MissingProxyHeaderTests(ProxyTestCase):
    def test_no_header_refused_400(self) -> None:
        """A handshake without the proxy's header is refused with 400, never taken for the loopback proxy."""
        for headers in [{}, {"Forwarded": "for=unknown"}, {"X-Forwarded-For": "unknown"}]:
            self.assertEqual(self.raw_via_proxy(headers).status(), 400, headers)
        self.assertEqual(self.server.factory.refused["proxy_header"], 3)
        self.assertEqual(self.server.lobby.online, 0)

    def test_client_on_the_proxy_host_exempt(self) -> None:
        """A loopback address the proxy appended (a client on its own host) is exempt, as a direct one is."""
        local = [self.via_proxy("127.0.0.1") for _ in range(5)]
        self.assertTrue(all(c.opened for c in local))
        for i in range(3):
            self.pair_and_report(self.via_proxy(f"192.0.2.{i}"), local[0])
        self.assertFalse(self.banned(local[0]))


class ForwardedProxyTests(ProxyTestCase):
    settings = Settings(
        trust_proxy_headers=True, proxy_header="Forwarded", max_connections_per_ip=3, handshake_rate=0
    )

    def test_last_forwarded_element_is_the_client(self) -> None:
        """With --proxy-header Forwarded, the last element's for= is the client; X-Forwarded-For is ignored."""
        for i in range(3):
            headers = {"Forwarded": f"for=192.0.2.{i}, for={ATTACKER}", "X-Forwarded-For": f"192.0.2.{i}"}
            self.assertTrue(connect_as(self.server, PROXY, headers=headers).opened)
        refused = self.raw_via_proxy({"Forwarded": f'for="[2001:db8::1]", for="{ATTACKER}:4711"'})
        self.assertEqual(refused.status(), 429)

    def test_unknown_last_element_refused_400(self) -> None:
        """for=unknown (or no for=) in the last element is refused with 400, not treated as loopback."""
        for value in ["for=unknown", f"for={ATTACKER}, for=unknown", f"for={ATTACKER}, proto=https", ""]:
            self.assertEqual(self.raw_via_proxy({"Forwarded": value}).status(), 400, value)
        self.assertEqual(self.raw_via_proxy({"X-Forwarded-For": ATTACKER}).status(), 400)


also_without_fast_path(globals())

"""
The abuse limits without I/O: token buckets, addresses, the Origin policy,
per-address accounting.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.limits import (
    RESERVE_SHARE,
    AddressLimits,
    Origin,
    OriginPolicy,
    Slot,
    TokenBucket,
    address_key,
    forwarded_address,
    is_loopback,
)


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_refused(self) -> None:
        """A full bucket accepts exactly its burst at once, then refuses."""
        bucket = TokenBucket(5, 10, now=100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(12)], [True] * 10 + [False] * 2)

    def test_refills_at_rate(self) -> None:
        """Tokens come back at the rate, never beyond the burst."""
        bucket = TokenBucket(5, 10, now=0.0)
        for _ in range(10):
            bucket.take(0.0)
        self.assertFalse(bucket.take(0.1))
        self.assertTrue(bucket.take(0.2))
        self.assertEqual(sum(bucket.take(1000.0) for _ in range(20)), 10)

    def test_flooding_after_three_bursts(self) -> None:
        """Three times the burst at once: the last refusal marks the client as flooding."""
        bucket = TokenBucket(5, 10, now=0.0)
        results = [(bucket.take(0.0), bucket.flooding) for _ in range(30)]
        self.assertEqual([r for r, _ in results].count(True), 10)
        self.assertEqual([f for _, f in results].index(True), 29)

    def test_slightly_too_fast_is_not_flooding(self) -> None:
        """A client a little over the rate is refused now and then but never flagged as flooding."""
        bucket = TokenBucket(5, 10, now=0.0)
        accepted = 0
        for i in range(600):  # 6 per second for 100 seconds
            accepted += bucket.take(i / 6)
            self.assertFalse(bucket.flooding)
        self.assertLess(accepted, 600)
        self.assertGreater(accepted, 490)

    def test_delay(self) -> None:
        """delay() is 0 while a token is there, else the time until the next one refills."""
        bucket = TokenBucket(4, 2, now=0.0)
        self.assertEqual(bucket.delay(0.0), 0.0)
        bucket.take(0.0)
        bucket.take(0.0)
        self.assertEqual(bucket.delay(0.0), 0.25)
        self.assertAlmostEqual(bucket.delay(0.1), 0.15)
        self.assertEqual(bucket.delay(0.25), 0.0)
        self.assertTrue(bucket.take(0.25))

    def test_delay_changes_nothing(self) -> None:
        """Asking for the delay neither refills the bucket nor counts a strike."""
        bucket = TokenBucket(4, 2, now=0.0)
        bucket.take(0.0)
        bucket.take(0.0)
        before = (bucket.tokens, bucket.strikes, bucket.stamp)
        for now in (0.0, 0.1, 10.0):
            bucket.delay(now)
        self.assertEqual((bucket.tokens, bucket.strikes, bucket.stamp), before)

    @given(
        st.floats(0.1, 100),
        st.integers(1, 20),
        st.lists(st.floats(0, 2), min_size=1, max_size=50),
    )
    def test_delay_agrees_with_take(self, rate: float, burst: int, gaps: list[float]) -> None:
        """At any moment, delay() is 0 exactly when take() succeeds."""
        bucket = TokenBucket(rate, burst, now=0.0)
        now = 0.0
        for gap in gaps:
            now += gap
            waiting = bucket.delay(now)
            self.assertGreaterEqual(waiting, 0.0)
            self.assertEqual(waiting == 0.0, bucket.take(now))

    def test_paced_sender_is_never_refused(self) -> None:
        """A sender that waits delay() before each send gets rate * time + burst, never a strike."""
        bucket = TokenBucket(4, 5, now=0.0)
        now, sent = 0.0, 0
        while now < 10.0:
            waiting = bucket.delay(now)
            if waiting:
                now += waiting
                continue
            self.assertTrue(bucket.take(now))
            sent += 1
        self.assertEqual(bucket.strikes, 0)
        self.assertLessEqual(sent, 4 * 10 + 5 + 1)
        self.assertGreaterEqual(sent, 4 * 10 + 5 - 1)

    def test_invalid(self) -> None:
        """A bucket needs a positive rate and room for at least one token."""
        for rate, burst in [(0, 10), (-1, 10), (float("nan"), 10), (5, 0), (5, 0.5)]:
            self.assertRaises(ValueError, TokenBucket, rate, burst, 0.0)

    def test_full_at(self) -> None:
        """A bucket knows when it will be full again (and can be forgotten)."""
        bucket = TokenBucket(2, 4, now=0.0)
        bucket.take(0.0)
        bucket.take(0.0)
        self.assertFalse(bucket.full_at(0.5))
        self.assertTrue(bucket.full_at(1.0))


class AddressTests(SynchronousTestCase):
    def test_ipv4_key(self) -> None:
        """An IPv4 address is its own key; IPv4-mapped IPv6 counts as IPv4."""
        self.assertEqual(address_key("203.0.113.7"), "203.0.113.7")
        self.assertEqual(address_key("::ffff:203.0.113.7"), "203.0.113.7")

    def test_ipv6_grouped_by_64(self) -> None:
        """IPv6 addresses of one /64 share a key; another /64 does not."""
        one = address_key("2001:db8:1:2:aaaa::1")
        self.assertEqual(one, "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2:ffff:ffff:ffff:ffff"), one)
        self.assertNotEqual(address_key("2001:db8:1:3::1"), one)
        self.assertEqual(address_key("[fe80::1%eth0]"), "fe80::/64")

    def test_not_an_ip(self) -> None:
        """Something that is not an IP address is its own key."""
        self.assertEqual(address_key("/run/chat.sock"), "/run/chat.sock")

    def test_loopback(self) -> None:
        """127/8, ::1 and mapped loopback are loopback; others are not."""
        for host in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"]:
            self.assertTrue(is_loopback(host), host)
        for host in ["10.0.0.1", "203.0.113.7", "2001:db8::1", "localhost", ""]:
            self.assertFalse(is_loopback(host), host)



class ProxyHeaderTests(SynchronousTestCase):
    def test_last_entry_is_the_client(self) -> None:
        """The last entry, the one the proxy appended, is the client; earlier ones are the client's own words."""
        xff = "X-Forwarded-For"
        self.assertEqual(forwarded_address({"x-forwarded-for": "10.9.9.9, 198.51.100.4"}, xff), "198.51.100.4")
        self.assertEqual(forwarded_address({"x-forwarded-for": "198.51.100.4:4711"}, xff), "198.51.100.4")
        self.assertEqual(forwarded_address({"x-forwarded-for": "1.2.3.4, 2001:db8::7"}, xff), "2001:db8::7")
        self.assertEqual(forwarded_address({"x-forwarded-for": '"[2001:db8::7]:80"'}, xff), "2001:db8::7")
        self.assertEqual(forwarded_address({"x-real-ip": "198.51.100.4"}, "X-Real-IP"), "198.51.100.4")

    def test_only_the_named_header_is_read(self) -> None:
        """A Forwarded header is never read when the proxy sets X-Forwarded-For, nor the reverse."""
        both = {"forwarded": "for=198.51.100.9", "x-forwarded-for": "203.0.113.7"}
        self.assertEqual(forwarded_address(both, "X-Forwarded-For"), "203.0.113.7")
        self.assertEqual(forwarded_address(both, "Forwarded"), "198.51.100.9")
        self.assertIsNone(forwarded_address({"forwarded": "for=198.51.100.9"}, "X-Forwarded-For"))
        self.assertIsNone(forwarded_address({"x-forwarded-for": "203.0.113.7"}, "Forwarded"))

    def test_forwarded_last_element(self) -> None:
        """As the trusted header, Forwarded gives the for= of its last element (RFC 7239)."""
        fwd = "Forwarded"
        self.assertEqual(
            forwarded_address({"forwarded": 'for=10.1.1.1, for="[2001:db8::7]:4711";proto=https'}, fwd),
            "2001:db8::7",
        )
        self.assertEqual(forwarded_address({"forwarded": "for=192.0.2.60:8080"}, fwd), "192.0.2.60")
        self.assertEqual(forwarded_address({"forwarded": "proto=https;For=192.0.2.61"}, fwd), "192.0.2.61")
        # A client's unbalanced quote does not swallow the proxy's element.
        self.assertEqual(forwarded_address({"forwarded": 'for="198.51.100.9, for=192.0.2.62'}, fwd), "192.0.2.62")

    def test_unusable_values_give_no_address(self) -> None:
        """No header, unknown, an obfuscated node, an empty last entry or garbage give no address (never a guess)."""
        for headers, header in [
            ({}, "X-Forwarded-For"),
            ({"x-forwarded-for": "unknown"}, "X-Forwarded-For"),
            ({"x-forwarded-for": "203.0.113.7, "}, "X-Forwarded-For"),
            ({"x-forwarded-for": "203.0.113.7, not an ip"}, "X-Forwarded-For"),
            ({"forwarded": "for=unknown"}, "Forwarded"),
            ({"forwarded": "for=198.51.100.9, for=_hidden"}, "Forwarded"),
            ({"forwarded": "for=198.51.100.9, by=10.0.0.1"}, "Forwarded"),
        ]:
            self.assertIsNone(forwarded_address(headers, header), headers)


class OriginTests(SynchronousTestCase):
    def test_parse_fills_default_ports(self) -> None:
        """Default ports are implied, explicit or not; hosts are lower-cased."""
        self.assertEqual(Origin.parse("https://Chat.Example.com"), Origin("https", "chat.example.com", 443))
        self.assertEqual(Origin.parse("https://chat.example.com:443"), Origin.parse("https://chat.example.com/"))
        self.assertEqual(Origin.parse("http://[::1]:8080").port, 8080)

    def test_parse_refuses_non_origins(self) -> None:
        """Paths, missing schemes and bad ports are not origins."""
        for bad in ["chat.example.com", "https://example.com/chat", "https://example.com:99999", "https://"]:
            self.assertRaises(ValueError, Origin.parse, bad)

    def test_no_origin_allowed(self) -> None:
        """Clients that send no Origin (not browsers) are allowed."""
        self.assertTrue(OriginPolicy().allows(None, "chat.example.com"))

    def test_same_host_and_port(self) -> None:
        """A page from the host and port the request was sent to is allowed, whatever its scheme."""
        policy = OriginPolicy()
        self.assertTrue(policy.allows("http://localhost:8080", "localhost:8080"))
        self.assertTrue(policy.allows("https://chat.example.com", "chat.example.com"))
        self.assertTrue(policy.allows("https://chat.example.com", "Chat.Example.com:443"))
        self.assertTrue(policy.allows("http://[::1]:8080", "[::1]:8080"))

    def test_cross_site_refused(self) -> None:
        """Other hosts, other ports, null and garbage are refused."""
        policy = OriginPolicy()
        self.assertFalse(policy.allows("https://evil.example", "chat.example.com"))
        self.assertFalse(policy.allows("http://localhost:9999", "localhost:8080"))
        self.assertFalse(policy.allows("http://localhost", "localhost:8080"))
        self.assertFalse(policy.allows("null", "localhost:8080"))
        self.assertFalse(policy.allows("garbage", "localhost:8080"))
        self.assertFalse(policy.allows("https://chat.example.com", None))

    def test_allowed_list(self) -> None:
        """Listed origins are allowed with or without their default port."""
        policy = OriginPolicy(["https://chat.example.com", "http://localhost:3000"])
        self.assertTrue(policy.allows("https://chat.example.com:443", "127.0.0.1:8080"))
        self.assertTrue(policy.allows("http://localhost:3000", "127.0.0.1:8080"))
        self.assertFalse(policy.allows("http://chat.example.com", "127.0.0.1:8080"))
        self.assertTrue(OriginPolicy(["null"]).allows("null", "localhost:8080"))


class AddressLimitsTests(SynchronousTestCase):
    def test_concurrent_cap(self) -> None:
        """The per-address cap refuses the next connection until one is released."""
        limits = AddressLimits(max_connections_per_address=2, handshake_rate=0, handshake_burst=1)
        first, second = limits.open("a", False), limits.open("a", False)
        assert isinstance(first, Slot) and isinstance(second, Slot)
        self.assertEqual(limits.open("a", False), "connections")
        self.assertIsInstance(limits.open("b", False), Slot)
        first.release()
        third = limits.open("a", False)
        assert isinstance(third, Slot)
        for slot in (second, third):
            slot.release()
        self.assertNotIn("a", limits.connections)
        self.assertEqual(limits.total, 1)

    def test_release_is_idempotent(self) -> None:
        """A connection is uncounted once, however many of its protocols release it."""
        limits = AddressLimits(max_connections_per_address=2, handshake_rate=0, handshake_burst=1)
        slot = limits.open("a", False)
        kept = limits.open("a", False)
        assert isinstance(slot, Slot) and isinstance(kept, Slot)
        for _ in range(3):
            slot.release()
        self.assertEqual((limits.total, limits.connections), (1, {"a": 1}))

    def test_exempt_counted_not_capped(self) -> None:
        """Exempt (loopback) connections are counted per address but never hit the per-address cap."""
        limits = AddressLimits(max_connections_per_address=2, handshake_rate=0, handshake_burst=1)
        slots = [limits.open("127.0.0.1", True) for _ in range(10)]
        self.assertTrue(all(isinstance(s, Slot) and s.address_key is None for s in slots))
        self.assertEqual(limits.connections, {"127.0.0.1": 10})

    def test_global_cap(self) -> None:
        """Past max_connections every address is refused, exempt or unknown alike, until one closes."""
        limits = AddressLimits(max_connections_per_address=0, handshake_rate=0, handshake_burst=1,
                               max_connections=4, reserve=0)
        slots = [limits.open(f"10.0.0.{i}", False) for i in range(3)] + [limits.open(None, True)]
        self.assertEqual([limits.open(k, e) for k, e in [("10.0.0.9", False), ("127.0.0.1", True), (None, True)]],
                         ["max_connections"] * 3)
        slot = slots[0]
        assert isinstance(slot, Slot)
        slot.release()
        self.assertIsInstance(limits.open("10.0.0.9", False), Slot)

    def test_reserve_for_new_addresses(self) -> None:
        """In the last reserved slots an address holding RESERVE_SHARE connections waits; newcomers get in."""
        limits = AddressLimits(max_connections_per_address=0, handshake_rate=0, handshake_burst=1,
                               max_connections=16)
        self.assertEqual(limits.reserve, 2)
        for _ in range(14):
            self.assertIsInstance(limits.open("127.0.0.1", True), Slot)
        self.assertEqual(limits.open("127.0.0.1", True), "reserved")
        held = [limits.open("10.0.0.2", False) for _ in range(2)]
        self.assertTrue(all(isinstance(s, Slot) for s in held))
        self.assertEqual(limits.open("10.0.0.3", False), "max_connections")

    def test_reserve_admits_small_holders(self) -> None:
        """An address below RESERVE_SHARE still gets into the reserve; at RESERVE_SHARE it is refused there."""
        limits = AddressLimits(max_connections_per_address=0, handshake_rate=0, handshake_burst=1,
                               max_connections=100, reserve=50)
        for i in range(50):
            limits.open(f"10.1.0.{i}", False)
        results = [limits.open("10.0.0.1", False) for _ in range(RESERVE_SHARE + 1)]
        self.assertTrue(all(isinstance(r, Slot) for r in results[:RESERVE_SHARE]))
        self.assertEqual(results[RESERVE_SHARE], "reserved")

    def test_attribute_moves_the_count(self) -> None:
        """A connection counted as unknown moves to the address its proxy names, under that address's caps."""
        limits = AddressLimits(max_connections_per_address=1, handshake_rate=0, handshake_burst=1,
                               max_connections=10)
        one, two = limits.open(None, True), limits.open(None, True)
        assert isinstance(one, Slot) and isinstance(two, Slot)
        self.assertIsNone(limits.attribute(one, "203.0.113.7", False))
        self.assertEqual((one.address_key, limits.total, limits.connections), ("203.0.113.7", 2, {"203.0.113.7": 1}))
        self.assertEqual(limits.attribute(two, "203.0.113.7", False), "connections")
        self.assertIsNone(two.key)
        self.assertIsNone(limits.attribute(two, "127.0.0.1", True))
        self.assertIsNone(two.address_key)
        one.release()
        two.release()
        self.assertEqual((limits.total, limits.connections), (0, {}))

    def test_handshake_rate(self) -> None:
        """The handshake bucket refuses beyond the burst and refills with time."""
        limits = AddressLimits(max_connections_per_address=0, handshake_rate=20, handshake_burst=50)
        results = [limits.handshake("a", 0.0) for _ in range(51)]
        self.assertEqual(results[:50], [None] * 50)
        self.assertEqual(results[50], "handshake_rate")
        self.assertEqual([limits.handshake("a", 1.0) for _ in range(21)].count(None), 20)

    def test_quiet_addresses_forgotten(self) -> None:
        """Buckets of addresses that went quiet are pruned, so the table stays bounded."""
        limits = AddressLimits(max_connections_per_address=0, handshake_rate=1, handshake_burst=1)
        for i in range(5000):
            limits.handshake(f"10.0.{i // 256}.{i % 256}", float(i))
        self.assertLess(limits.tracked, 2100)

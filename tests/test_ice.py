"""
ICE servers and TURN credentials, at a fixed clock: no network, no real time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from chatroulette.ice import IceConfig, check_url, turn_credentials

NOW = 1_700_000_000.0
SECRET = b"north-sea-secret"


def fixed_token() -> str:
    return "abcdefghijkl"


class CredentialTests(SynchronousTestCase):
    def test_known_vector(self) -> None:
        """The password is base64 HMAC-SHA1 of the username, checked against a value computed with openssl."""
        # printf '%s' '1700003600:abcdefghijkl' | openssl dgst -sha1 -hmac north-sea-secret -binary | base64
        self.assertEqual(
            turn_credentials(SECRET, 1_700_003_600, "abcdefghijkl"),
            ("1700003600:abcdefghijkl", "PIyxt2YwXBAD6r80fQ892pSF18A="),
        )

    def test_username_is_expiry_and_random_id(self) -> None:
        """The username is the unix expiry (now + ttl), a colon and the random id."""
        config = IceConfig(("turn:turn.example.com:3478",), SECRET, turn_ttl=600)
        (server,) = config.client_config(NOW, fixed_token)["ice_servers"]
        expiry, _, token = server["username"].partition(":")
        self.assertEqual((int(expiry), token), (1_700_000_600, "abcdefghijkl"))
        digest = hmac.new(SECRET, server["username"].encode(), hashlib.sha1).digest()
        self.assertEqual(base64.b64decode(server["credential"]), digest)

    def test_default_ttl_is_an_hour(self) -> None:
        """Without --turn-ttl the credentials expire an hour after they were handed out."""
        config = IceConfig(("turn:t.example",), SECRET)
        (server,) = config.client_config(NOW, fixed_token)["ice_servers"]
        self.assertEqual(server["username"], "1700003600:abcdefghijkl")

    def test_fresh_random_id_each_time(self) -> None:
        """Each call mints a new username; the default id is 12 URL-safe characters without a colon."""
        config = IceConfig(("turn:t.example",), SECRET)
        names = {config.client_config(NOW)["ice_servers"][0]["username"] for _ in range(20)}
        self.assertEqual(len(names), 20)
        for name in names:
            expiry, _, token = name.partition(":")
            self.assertEqual(expiry, "1700003600")
            self.assertEqual(len(token), 12)
            self.assertNotIn(":", token)


class ClientConfigTests(SynchronousTestCase):
    def test_no_servers_by_default(self) -> None:
        """With no ICE servers configured the client gets an empty list and the "all" policy."""
        self.assertEqual(
            IceConfig().client_config(NOW), {"ice_servers": [], "ice_transport_policy": "all"}
        )

    def test_credentials_only_on_turn(self) -> None:
        """STUN URLs come in one server without credentials, turn: and turns: URLs in one with them."""
        config = IceConfig(
            ("stun:s.example", "turn:t.example:3478?transport=udp", "STUN:s2.example", "turns:t.example:5349"),
            SECRET,
        )
        stun, turn = config.client_config(NOW, fixed_token)["ice_servers"]
        self.assertEqual(stun, {"urls": ["stun:s.example", "STUN:s2.example"]})
        self.assertEqual(turn["urls"], ["turn:t.example:3478?transport=udp", "turns:t.example:5349"])
        self.assertEqual(
            (turn["username"], turn["credential"]),
            turn_credentials(SECRET, 1_700_003_600, "abcdefghijkl"),
        )

    def test_relay_only(self) -> None:
        """--ice-relay-only makes the policy "relay"."""
        config = IceConfig(("turn:t.example",), SECRET, relay_only=True)
        self.assertEqual(config.client_config(NOW)["ice_transport_policy"], "relay")


class ValidationTests(SynchronousTestCase):
    def test_good_urls(self) -> None:
        """stun:, turn: and turns: URLs with a host pass unchanged."""
        for url in ["stun:stun.example.com", "turn:10.0.0.1:3478?transport=tcp", "turns:[::1]:5349", "TURN:x"]:
            self.assertEqual(check_url(url), url)

    def test_bad_urls(self) -> None:
        """Other schemes, a missing host or spaces are refused with a message naming the URL."""
        for url in ["http://x", "stun", "stuns:x", "turn:", "turn:?transport=udp", "stun://x", "turn:a b", ""]:
            with self.assertRaises(ValueError) as e:
                check_url(url)
            self.assertIn(repr(url), str(e.exception))

    def test_problems(self) -> None:
        """Unusable combinations are named: TURN without a secret, a secret or relay-only without TURN."""
        self.assertIsNone(IceConfig().problem())
        self.assertIsNone(IceConfig(("stun:s",)).problem())
        self.assertIsNone(IceConfig(("turn:t",), SECRET, relay_only=True).problem())
        for config, words in [
            (IceConfig(("turn:t",)), "--turn-secret"),
            (IceConfig(("stun:s",), SECRET), "turn:"),
            (IceConfig(("stun:s",), relay_only=True), "--ice-relay-only"),
            (IceConfig(("turn:t",), b""), "empty"),
            (IceConfig(("turn:t",), SECRET, turn_ttl=0), "--turn-ttl"),
            (IceConfig(("ftp:x",)), "'ftp:x'"),
        ]:
            problem = config.problem()
            assert problem is not None
            self.assertIn(words, problem)

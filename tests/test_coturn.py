"""
The TURN credentials chatroulette hands out are accepted by a real coturn
configured as operations.md says (C{use-auth-secret}), and refused when
they are wrong or expired: the credential format proved against the server
that implements it, not only against our reading of the draft.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from chatroulette.ice import IceConfig, turn_credentials

from .coturn import ALLOCATE_REQUEST, ERROR, REALM, Coturn, allocate

SECRET = "the-shared-turn-secret"


class CoturnTests(SynchronousTestCase):
    turn: Coturn

    @classmethod
    def setUpClass(cls) -> None:
        cls.turn = Coturn(SECRET)
        cls.turn.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.turn.stop()

    def minted(self, now: float) -> tuple[str, str]:
        """Credentials exactly as a video client receives them in paired."""
        host, port = self.turn.address
        config = IceConfig((f"turn:{host}:{port}?transport=udp",), SECRET.encode(), turn_ttl=3600)
        (server,) = config.client_config(now)["ice_servers"]
        return server["username"], server["credential"]

    def test_minted_credentials_allocate_a_relay(self) -> None:
        """coturn accepts the minted username and credential and allocates a loopback relay in its port range."""
        username, credential = self.minted(time.time())
        result = allocate(self.turn.address, username, credential)
        self.assertEqual(result.challenge.error_code, 401)
        self.assertTrue(result.succeeded, (result.answer.error_code, self.turn.log[-2000:]))
        host, port = result.answer.relayed_address()
        self.assertEqual(host, "127.0.0.1")
        low, high = self.turn.relay_ports
        self.assertTrue(low <= port <= high, (port, self.turn.relay_ports))
        # coturn logs the allocation (verbose, as the helper configures it).
        self.assertIn(f"new, realm=<{REALM}>, username=<{username}>", self.turn.log)

    def test_realm_is_the_configured_one(self) -> None:
        """The 401 challenge names the configured realm."""
        username, credential = self.minted(time.time())
        result = allocate(self.turn.address, username, credential)
        self.assertEqual(result.challenge.attributes[0x0014].decode(), REALM)

    def test_wrong_secret_refused(self) -> None:
        """Credentials made with another secret are refused with 401."""
        username, credential = turn_credentials(b"not-the-secret", int(time.time()) + 3600, "abcdefghijkl")
        result = allocate(self.turn.address, username, credential)
        self.assertEqual((result.answer.kind, result.answer.error_code), (ALLOCATE_REQUEST | ERROR, 401))

    def test_expired_credentials_refused(self) -> None:
        """Credentials minted more than the TTL ago are refused with 401."""
        username, credential = self.minted(time.time() - 3700)
        result = allocate(self.turn.address, username, credential)
        self.assertEqual((result.answer.kind, result.answer.error_code), (ALLOCATE_REQUEST | ERROR, 401))

    def test_started_and_stopped_by_pid(self) -> None:
        """The helper's process is the one coturn names in its pidfile; a second server stops by that PID."""
        assert self.turn.process is not None
        self.assertEqual(self.turn.pid(), self.turn.process.pid)
        with Coturn("another-secret") as other:
            assert other.process is not None
            process = other.process
            self.assertNotEqual(other.port, self.turn.port)
        self.assertIsNotNone(process.poll())

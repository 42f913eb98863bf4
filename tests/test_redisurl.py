"""--redis URLs: every form operators may write, and clear refusals of the rest."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.redislink import RedisAddress, RedisURLError
from chatroulette.tap import Options


class RedisURLTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Host, port, database, user and password, TLS with a CA file, and Unix sockets."""
        cases = {
            "redis://localhost": RedisAddress("redis", "localhost", 6379),
            "redis://:pw@10.0.0.5:6380/2": RedisAddress("redis", "10.0.0.5", 6380, password="pw", db=2),
            "redis://chat:p%40ss@[::1]:7000/0": RedisAddress("redis", "::1", 7000, username="chat", password="p@ss"),
            "rediss://redis.example:6390/1?ssl_ca_certs=/etc/ca.pem": RedisAddress(
                "rediss", "redis.example", 6390, db=1, ca_file="/etc/ca.pem"
            ),
            "unix:///run/redis/redis.sock?db=3": RedisAddress("unix", path="/run/redis/redis.sock", db=3),
            "unix://:pw@/run/redis.sock": RedisAddress("unix", path="/run/redis.sock", password="pw"),
        }
        for url, expected in cases.items():
            self.assertEqual(RedisAddress.parse(url), expected, url)

    def test_refused(self) -> None:
        """Other schemes, bad ports, databases that are not numbers and socket URLs without a path."""
        for url in ("http://localhost", "redis://localhost:99999", "redis://localhost/x", "unix://", "localhost:6379"):
            with self.assertRaises(RedisURLError, msg=url):
                RedisAddress.parse(url)

    def test_logs_never_show_the_password(self) -> None:
        described = RedisAddress.parse("redis://user:hunter2@localhost:6379/1").describe()
        self.assertNotIn("hunter2", described)
        self.assertEqual(described, "redis://localhost:6379 db 1")

    def test_option(self) -> None:
        """--redis is checked when the options are parsed; --redis-prefix must be a hash tag."""
        options = Options()
        options.parseOptions(["--redis", "redis://localhost:6379/0", "--state-dir", self.mktemp()])
        self.assertEqual(options["redis"], RedisAddress("redis", "localhost", 6379))
        self.assertEqual(options["redis-prefix"], "{chatroulette}")
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--redis", "mysql://x"])
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--redis-prefix", "chatroulette"])

"""
The lobby's random source: every bit from the kernel, read a block at a time.
"""

from __future__ import annotations

import collections
import os
import sys
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from chatroulette.randomness import BlockSystemRandom


class BlockSystemRandomTests(SynchronousTestCase):
    def test_reads_the_kernel_in_blocks(self) -> None:
        """Hundreds of draws cost one os.urandom call, not one each."""
        calls: list[int] = []
        real = os.urandom

        def urandom(n: int) -> bytes:
            calls.append(n)
            return real(n)

        rng = BlockSystemRandom()
        with mock.patch("chatroulette.randomness.os.urandom", urandom):
            for _ in range(400):
                rng.getrandbits(64)
        self.assertEqual(calls, [4096])

    def test_bits_come_from_the_kernel(self) -> None:
        """Draws are made of the bits os.urandom returned, and nothing else."""
        word = 0x0123456789ABCDEF
        block = word.to_bytes(8, sys.byteorder) * 512
        rng = BlockSystemRandom()
        with mock.patch("chatroulette.randomness.os.urandom", lambda n: block[:n]):
            self.assertEqual(rng.getrandbits(16), 0x0123)
            self.assertEqual(rng.getrandbits(0), 0)
            self.assertEqual(rng.getrandbits(64), word)
            self.assertEqual(rng.getrandbits(100), ((word << 64) | word) >> 28)
            self.assertEqual(rng.random(), (word >> 11) / 2**53)

    def test_draws_across_a_block_boundary(self) -> None:
        """Draws go on across blocks, and a draw may be bigger than a block."""
        rng = BlockSystemRandom()
        values = [rng.getrandbits(64) for _ in range(3 * 4096 // 8)]
        self.assertEqual(len(set(values)), len(values))
        big = rng.getrandbits(8 * 10000)  # bigger than a block
        self.assertLess(big, 2 ** (8 * 10000))
        self.assertGreater(big, 2 ** (8 * 10000 - 64))

    def test_ranges(self) -> None:
        """Every helper of random.Random stays in range and covers it."""
        rng = BlockSystemRandom()
        for k in range(1, 70):
            self.assertLess(rng.getrandbits(k), 2**k)
        floats = [rng.random() for _ in range(2000)]
        self.assertTrue(all(0.0 <= f < 1.0 for f in floats))
        self.assertLess(min(floats), 0.01)
        self.assertGreater(max(floats), 0.99)
        counts = collections.Counter(rng.randrange(6) for _ in range(6000))
        self.assertEqual(sorted(counts), [0, 1, 2, 3, 4, 5])
        for n in counts.values():
            self.assertTrue(800 < n < 1200, counts)
        self.assertEqual(sorted(rng.sample(range(10), 10)), list(range(10)))

    def test_two_generators_differ(self) -> None:
        """No seed, no shared state: two generators give different streams."""
        self.assertNotEqual(BlockSystemRandom().getrandbits(128), BlockSystemRandom().getrandbits(128))

    def test_no_state(self) -> None:
        """Like SystemRandom, it can neither be seeded nor have its state saved."""
        rng = BlockSystemRandom()
        rng.seed(1)
        self.assertNotEqual(rng.getrandbits(128), BlockSystemRandom().getrandbits(128))
        self.assertRaises(NotImplementedError, rng.getstate)
        self.assertRaises(NotImplementedError, rng.setstate, None)
        self.assertRaises(ValueError, rng.getrandbits, -1)

    def test_forked_child_draws_its_own(self) -> None:
        """A child forked after draws does not repeat what its parent draws next."""
        rng = BlockSystemRandom()
        rng.getrandbits(64)  # the parent now holds a block
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report one draw and leave at once
            try:
                os.write(write, rng.getrandbits(64).to_bytes(8, "big"))
            finally:
                os._exit(0)
        os.close(write)
        child = int.from_bytes(os.read(read, 8), "big")
        os.close(read)
        os.waitpid(pid, 0)
        self.assertNotEqual(child, rng.getrandbits(64))

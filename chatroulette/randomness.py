"""
Unpredictable randomness for the lobby, without a system call per draw.

Partner choice and chat ids should not be predictable from what a client can
observe (a Mersenne Twister's state can be rebuilt from about 20 KB of its
output, and chat ids are output), so the lobby draws from the kernel's
generator, as C{random.SystemRandom} does.  But C{SystemRandom} makes one
C{getrandom()} call per draw: several per pairing, about a tenth of the CPU a
pairing costs at churn rates.  L{BlockSystemRandom} reads the same kernel
generator a block at a time and hands out slices of it.
"""

from __future__ import annotations

import os
import random
from typing import NoReturn

_BLOCK = 4096
_TWO_TO_MINUS_53 = 2.0**-53


class BlockSystemRandom(random.Random):
    """
    A C{random.Random} whose every bit comes from C{os.urandom}, read in
    4 KiB blocks.  Like C{SystemRandom}, it cannot be seeded and has no state
    to save or restore.
    """

    def __init__(self) -> None:
        self._block = b""
        self._used = 0
        super().__init__()

    def seed(self, *args: object, **kwargs: object) -> None:
        """Ignored: the kernel's generator needs no seed."""

    def _take(self, n: int) -> bytes:
        start = self._used
        if start + n > len(self._block):
            self._block = os.urandom(max(_BLOCK, n))
            start = 0
        self._used = start + n
        return self._block[start : start + n]

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        n = (k + 7) // 8
        return int.from_bytes(self._take(n), "big") >> (n * 8 - k)

    def random(self) -> float:
        """A float in [0.0, 1.0) with 53 random bits, as C{SystemRandom.random}."""
        return (int.from_bytes(self._take(7), "big") >> 3) * _TWO_TO_MINUS_53

    def getstate(self) -> NoReturn:
        raise NotImplementedError("BlockSystemRandom has no state to save")

    def setstate(self, state: object) -> NoReturn:
        raise NotImplementedError("BlockSystemRandom has no state to restore")

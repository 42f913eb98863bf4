"""
Unpredictable randomness for the lobby, without a system call per draw.

Partner choice and chat ids should not be predictable from what a client can
observe (a Mersenne Twister's state can be rebuilt from 624 consecutive
32-bit outputs, and chat ids are output), so the lobby draws from the kernel's
generator, as C{random.SystemRandom} does.  But C{SystemRandom} makes one
C{getrandom()} call per draw, several per pairing, a measurable share of
the lobby's cost per pairing (benchmarks/RESULTS.md).  L{BlockSystemRandom}
reads the same kernel generator a block at a time and hands out 64-bit words
of it.
"""

from __future__ import annotations

import os
import random
import weakref
from array import array
from typing import NoReturn

_BLOCK = 4096
_TWO_TO_MINUS_53 = 2.0**-53


def _words(data: bytes) -> array[int]:
    """C{data} as unsigned 64-bit words, drawn from the end (C{pop})."""
    words = array("Q")
    assert words.itemsize == 8
    words.frombytes(data)
    return words


class BlockSystemRandom(random.Random):
    """
    A C{random.Random} whose every bit comes from C{os.urandom}, read in
    4 KiB blocks of 64-bit words.  Like C{SystemRandom}, it cannot be seeded
    and has no state to save or restore.  A forked child throws away what its
    parent had read, so the two never draw the same words.
    """

    def __init__(self) -> None:
        self._words = array("Q")
        super().__init__()
        _live.add(self)

    def seed(self, *args: object, **kwargs: object) -> None:
        """Ignored: the kernel's generator needs no seed."""

    def _word(self) -> int:
        try:
            return self._words.pop()
        except IndexError:
            self._words = _words(os.urandom(_BLOCK))
            return self._words.pop()

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        if k <= 64:
            return self._word() >> (64 - k)
        value = 0
        for _ in range((k + 63) // 64):
            value = (value << 64) | self._word()
        return value >> (-k % 64)

    def random(self) -> float:
        """A float in [0.0, 1.0) with 53 random bits, as C{SystemRandom.random}."""
        return (self._word() >> 11) * _TWO_TO_MINUS_53

    def getstate(self) -> NoReturn:
        raise NotImplementedError("BlockSystemRandom has no state to save")

    def setstate(self, state: object) -> NoReturn:
        raise NotImplementedError("BlockSystemRandom has no state to restore")


_live: weakref.WeakSet[BlockSystemRandom] = weakref.WeakSet()


def _forget_in_child() -> None:
    for rng in list(_live):
        rng._words = array("Q")


os.register_at_fork(after_in_child=_forget_in_child)

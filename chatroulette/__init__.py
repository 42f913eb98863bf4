"""chatroulette: anonymous one-to-one random text chat on Twisted and Autobahn."""

__version__ = "1.0.0"

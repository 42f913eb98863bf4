"""
C{chatroulette-load}: drive a running chatroulette server through its public
WebSocket protocol and report what users would have seen.

Scenarios:
  - C{relay}: N pairs exchanging messages at a fixed rate per connection (or
    as fast as the server's rate limit allows);
  - C{churn}: clients doing find -> paired -> one message -> next, over and over;
  - C{soak}: N paired, mostly idle connections held for a while, with an
    occasional message.

Each scenario takes one URL or several: with several (the processes of a
cluster), the clients are spread over them round robin, and the report
counts connections per URL (both sides of a chat may have come through
different URLs: pairing is the servers' business).

The Python API (L{run_relay}, L{run_churn}, L{run_soak}) returns a L{Report};
the command line prints it (or C{--json}) and exits non-zero when a message
was lost, duplicated, reordered or misrouted, or when errors exceed
C{--max-errors}.

By default each connection stays 20% under the server's default rate limits:
at most 4 chat messages and 1.6 requests (C{find}) a second, 5 in a burst,
paced with the server's own L{chatroulette.limits.TokenBucket}.
C{--max-rate}, C{--max-request-rate} or C{--no-rate-limit} lift that for
servers configured with looser limits.

The modules:
  - L{chatroulette.load.stats}: probes, the delivery ledger, percentiles and
    the report; no I/O, time passed in;
  - L{chatroulette.load.client}: one simulated user (an Autobahn client) and
    the options all clients share (L{ClientConfig});
  - L{chatroulette.load.scenarios}: one run's state and the three scenarios;
  - L{chatroulette.load.cli}: the command line.

The server never imports this package: it is a client of the public protocol.
"""

from .client import ClientConfig
from .scenarios import run_churn, run_relay, run_soak
from .stats import Report

__all__ = ["ClientConfig", "Report", "run_churn", "run_relay", "run_soak"]

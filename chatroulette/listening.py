"""
Listening on one C{--listen} endpoint, and saying where: once the port is
bound, one log line with a URL a person can open.
"""

from __future__ import annotations

import ipaddress

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


def _is_wildcard(host: str) -> bool:
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def serving_url(address: IAddress, tls: bool = False) -> str:
    """
    Where a person can reach a server bound to C{address}: C{http://} or,
    for TLS, C{https://}; the bound address, C{localhost} for a wildcard bind
    (C{0.0.0.0}, C{::}), IPv6 in brackets; the port, unless it is the
    scheme's default.  A Unix socket is C{unix:} and its path.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        scheme, default_port = ("https", 443) if tls else ("http", 80)
        host = address.host
        if _is_wildcard(host):
            host = "localhost"
        elif ":" in host:
            host = "[" + host.replace("%", "%25") + "]"  # a zone index, escaped (RFC 6874)
        port = "" if address.port == default_port else f":{address.port}"
        return f"{scheme}://{host}{port}/"
    if isinstance(address, UNIXAddress):
        name = address.name or b""
        if name.startswith(b"\0"):
            name = b"@" + name[1:]  # Linux's abstract namespace, written as ss(8) does
        return "unix:" + name.decode("utf-8", "backslashreplace")
    return str(address)


class ListeningService(Service):
    """
    Listen on an endpoint (a Twisted endpoint description) while running,
    and log C{chatroulette serving <url> (WebSocket <path>)} from the port
    actually bound, so C{tcp:0} shows its port too.

    Like the service C{twisted.application.strports.service} makes, it
    listens in C{privilegedStartService} (so twistd can bind port 80 before
    shedding root) and raises there if listening fails at once (an address
    in use ends twistd with that error).
    """

    def __init__(
        self,
        description: str,
        factory: IProtocolFactory,
        reactor: object,
        websocket_path: str = "/ws",
    ) -> None:
        self.description = description
        self.endpoint = endpoints.serverFromString(reactor, description)
        self.factory = factory
        self.websocket_path = websocket_path
        self.port: IListeningPort | None = None
        self.url: str | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._starting = False
        self._failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    @property
    def tls(self) -> bool:
        """Does this endpoint speak TLS (an C{ssl:} endpoint)?"""
        return isinstance(self.endpoint, endpoints.SSL4ServerEndpoint)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        self._failure = None
        self._starting = True
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)
        self._starting = False
        failure = self._failure
        if failure is not None:
            self._listening = None
            failure.raiseException()

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.url = serving_url(port.getHost(), self.tls)
        _log.info(
            "chatroulette serving {url} (WebSocket {websocket})",
            url=self.url,
            websocket=self.websocket_path,
            listen=self.description,
            event="serving",
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port

    def _failed(self, failure: Failure) -> None:
        self._failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)
        if not self._starting and not failure.check(CancelledError):
            # Failed later, not during start: say so, as strports' service does.
            _log.failure("could not listen on {listen}", failure, listen=self.description)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once it is bound (at once if it is)."""
        if self.port is not None:
            return succeed(self.port)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            return stopped if stopped is not None else succeed(None)
        if listening is not None:
            listening.cancel()
        return succeed(None)

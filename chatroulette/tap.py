"""
The twistd plugin's real work: command-line options and the service tree.

Nothing happens at import time; C{makeService} builds everything.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.application import service, strports
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python import usage

from .limits import Origin
from .ice import DEFAULT_TURN_TTL, IceConfig, check_url
from .internals import Hooks
from .listening import ListeningService
from .logbudget import CLIENT_TEXT_LIMIT, DEFAULT_BYTES_PER_SECOND, DEFAULT_LINES_PER_SECOND
from .logsetup import DEFAULT_LEVEL, LEVELS, LogSetup, level_named
from .lobby import DEFAULT_INTEREST_TIMEOUT, DEFAULT_REPEAT_COOLDOWN, Clock, ILobby, Lobby
from .redislink import DEFAULT_DEAD_AFTER, RedisAddress, RedisLink, RedisURLError
from .redislobby import DEFAULT_PREFIX, RedisLobby
from .messages import MAX_TEXT_CHARS
from .moderation import (
    BANS_FILE,
    DEFAULT_BAN_SECONDS,
    DEFAULT_REPORT_BAN_THRESHOLD,
    DEFAULT_REPORT_WINDOW,
    Moderation,
    SharedModeration,
    SQLiteBanStore,
)
from .protocol import ChatServerFactory, log_pair
from .settings import Settings
from . import tuning
from .randomness import BlockSystemRandom
from .service import DEFAULT_SHUTDOWN_TIMEOUT, ChatService
from .web import DEFAULT_HTTP_IDLE_TIMEOUT, WEBSOCKET_PATH, build_site, default_static_dir

DEFAULT_LISTEN = "tcp:8080"
FD_RESERVE = 128
"""
File descriptors kept outside the default --max-connections: about 15 for the
process itself (an idle server holds 12: standard streams, the reactor's, the
listening socket, the log; then the bans database), up to
refusal.MAX_REFUSING (32) for refused connections still taking their
response, and up to the listen backlog (50 by default) for connections
accepted in one go before those refused among them are closed.
"""
_DEFAULTS = Settings()
# The longest legal message, every character sent as a JSON \uXXXX
# surrogate pair, inside {"type":"message","text":"..."}.
_MIN_FRAME_BYTES = MAX_TEXT_CHARS * 12 + 64


def _seconds(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"--{name} must be a number of seconds, not {value!r}") from None
        if not 0 <= seconds < 10**7:
            raise ValueError(f"--{name} must be between 0 and 10000000 seconds, not {value!r}")
        return seconds

    return coerce


def _count(name: str, minimum: int = 0) -> Any:
    def coerce(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--{name} must be a whole number, not {value!r}") from None
        if not minimum <= n < 2**40:
            raise ValueError(f"--{name} must be at least {minimum}, not {value!r}")
        return n

    coerce.coerceDoc = f"A whole number >= {minimum}."  # type: ignore[attr-defined]
    return coerce


def _rate(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"--{name} must be a number per second, not {value!r}") from None
        if not 0 <= rate < 10**9:
            raise ValueError(f"--{name} must be 0 (no limit) or a positive number, not {value!r}")
        return rate

    return coerce


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(name: str) -> Any:
    def coerce(value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"--{name} must be an HTTP header name, not {value!r}")
        return value

    coerce.coerceDoc = "An HTTP header name."  # type: ignore[attr-defined]
    return coerce


def open_file_limit() -> int | None:
    """This process's open-file soft limit (C{ulimit -n}), or None if there is none."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections(limit: int | None) -> int:
    """
    The default --max-connections for an open-file limit: the limit less
    L{FD_RESERVE} (for tiny limits, half of it); 0 (no cap) without a limit.
    """
    if limit is None:
        return 0
    return max(limit - FD_RESERVE, limit // 2)


def _yes_no(name: str) -> Any:
    def coerce(value: str) -> bool:
        if value.lower() in ("yes", "true", "on", "1"):
            return True
        if value.lower() in ("no", "false", "off", "0"):
            return False
        raise ValueError(f"--{name} must be yes or no, not {value!r}")

    coerce.coerceDoc = "yes or no."  # type: ignore[attr-defined]
    return coerce


def _redis_url(value: str) -> RedisAddress:
    try:
        return RedisAddress.parse(value)
    except RedisURLError as e:
        raise usage.UsageError(f"--redis: {e}") from e


_redis_url.coerceDoc = "A redis://, rediss:// or unix:// URL."  # type: ignore[attr-defined]


def _redis_prefix(value: str) -> str:
    if not re.fullmatch(r"\{[A-Za-z0-9_.:-]{1,64}\}", value):
        raise usage.UsageError("--redis-prefix must be a hash tag: {name}, with letters, digits and _.:-")
    return value


def _log_level(value: str) -> Any:
    return level_named(value)


_log_level.coerceDoc = f"One of {', '.join(LEVELS)}."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Anonymous one-to-one random text and video chat (video over WebRTC: media goes "
        "browser to browser or through your TURN server, never through this one). Serves the browser client at /, "
        "the WebSocket at /ws, health at /healthz and Prometheus metrics at /metrics."
    )

    optParameters: list[list[Any]] = [
        [
            "static",
            None,
            None,
            "Directory of the browser client to serve at / (default: the packaged client).",
        ],
        [
            "redis",
            None,
            None,
            "Run as one node of a cluster: share the lobby with every node using this Redis "
            "(redis://[user:password@]host[:port][/db], rediss://... for TLS, with "
            "?ssl_ca_certs=FILE for a private CA, or unix://[user:password@]/path?db=N). "
            "Default: the lobby is in this process.",
            _redis_url,
        ],
        [
            "redis-file",
            None,
            None,
            "A file holding the --redis URL (its first line): a password in it stays off the "
            "command line and out of the process list.",
        ],
        [
            "redis-prefix",
            None,
            DEFAULT_PREFIX,
            "Key prefix in Redis (a hash tag, {...}: every key in one Cluster slot); "
            "services sharing one Redis need different prefixes.",
            _redis_prefix,
        ],
        [
            "node-dead-after",
            None,
            DEFAULT_DEAD_AFTER,
            "With --redis: seconds after its last heartbeat a node that stopped "
            "without saying so (crash, power loss) is declared dead and its clients "
            "leave the lobby.",
            _seconds("node-dead-after"),
        ],
        [
            "interest-timeout",
            None,
            DEFAULT_INTEREST_TIMEOUT,
            "Seconds a stranger with interests waits for a shared interest before "
            "being matched with anyone.",
            _seconds("interest-timeout"),
        ],
        [
            "repeat-cooldown",
            None,
            DEFAULT_REPEAT_COOLDOWN,
            "Seconds before two strangers whose chat ended can be paired again.",
            _seconds("repeat-cooldown"),
        ],
        [
            "max-frame-bytes",
            None,
            _DEFAULTS.max_frame_bytes,
            "Largest WebSocket frame or message accepted; bigger ones close the connection "
            f"with 1009 (at least {_MIN_FRAME_BYTES}, room for the longest message however "
            "it is escaped).",
            _count("max-frame-bytes", _MIN_FRAME_BYTES),
        ],
        [
            "message-rate",
            None,
            _DEFAULTS.message_rate,
            "Chat messages per second per connection (token bucket; 0: no limit).",
            _rate("message-rate"),
        ],
        [
            "message-burst",
            None,
            _DEFAULTS.message_burst,
            "Chat messages a connection may send at once before --message-rate applies.",
            _count("message-burst", 1),
        ],
        [
            "typing-rate",
            None,
            _DEFAULTS.typing_rate,
            "Typing signals per second per connection (0: no limit).",
            _rate("typing-rate"),
        ],
        [
            "typing-burst",
            None,
            _DEFAULTS.typing_burst,
            "Typing signals a connection may send at once before --typing-rate applies.",
            _count("typing-burst", 1),
        ],
        [
            "request-rate",
            None,
            _DEFAULTS.request_rate,
            "Requests (find, invite, report, leave, malformed frames) per second per "
            "connection (0: no limit).",
            _rate("request-rate"),
        ],
        [
            "request-burst",
            None,
            _DEFAULTS.request_burst,
            "Requests (find, invite, report, leave, malformed frames) a connection may send "
            "at once before --request-rate applies.",
            _count("request-burst", 1),
        ],
        [
            "signal-rate",
            None,
            _DEFAULTS.signal_rate,
            "WebRTC signals (offers, answers, ICE candidates) per second per connection "
            "in a video chat (0: no limit).",
            _rate("signal-rate"),
        ],
        [
            "signal-burst",
            None,
            _DEFAULTS.signal_burst,
            "Signals a connection may send at once before --signal-rate applies (room for "
            "every ICE candidate a browser gathers).",
            _count("signal-burst", 1),
        ],
        [
            "turn-secret",
            None,
            None,
            "Shared secret for time-limited TURN credentials (the TURN REST API; coturn's "
            "use-auth-secret with static-auth-secret set to the same value). Needed by "
            "turn: and turns: --ice-server URLs.",
        ],
        [
            "turn-secret-file",
            None,
            None,
            "A file holding the --turn-secret (its first line), so that the secret is not "
            "on the command line for every user to see in the process list.",
        ],
        [
            "turn-ttl",
            None,
            DEFAULT_TURN_TTL,
            "Seconds the TURN credentials handed out at the start of a video chat stay valid.",
            _seconds("turn-ttl"),
        ],
        [
            "frame-rate",
            None,
            _DEFAULTS.frame_rate,
            "WebSocket frames of any kind (messages, fragments, pings, pongs) per second per "
            "connection; a client over it is closed with 1008 and dropped (0: no limit).",
            _rate("frame-rate"),
        ],
        [
            "frame-burst",
            None,
            _DEFAULTS.frame_burst,
            "Frames a connection may send at once before --frame-rate applies.",
            _count("frame-burst", 1),
        ],
        [
            "max-connections-per-ip",
            None,
            _DEFAULTS.max_connections_per_ip,
            "Open connections per client address (IPv6: per /64), HTTP and WebSocket "
            "together, each counted from accept to close (behind a trusted proxy: WebSockets, "
            "from the handshake); more are refused with HTTP 429. Loopback is exempt. "
            "0: no limit.",
            _count("max-connections-per-ip"),
        ],
        [
            "max-connections",
            None,
            None,
            "Open connections, HTTP and WebSocket together (each counted from accept to "
            "close), the server keeps at once; more are answered with HTTP 503 and closed. "
            "The last eighth is kept for addresses holding fewer than 8 connections. "
            f"Default: the open-file limit (ulimit -n) less {FD_RESERVE} descriptors kept "
            "for the server's own files and for refusing connections. 0: no limit (only if "
            "something in front of the server limits connections).",
            _count("max-connections"),
        ],
        [
            "max-handshake-rate",
            None,
            _DEFAULTS.handshake_rate,
            "WebSocket handshakes per second per client address; more are refused "
            "with HTTP 429 (0: no limit).",
            _rate("max-handshake-rate"),
        ],
        [
            "handshake-burst",
            None,
            _DEFAULTS.handshake_burst,
            "Handshakes a client address may make at once before --max-handshake-rate applies.",
            _count("handshake-burst", 1),
        ],
        [
            "proxy-header",
            None,
            _DEFAULTS.proxy_header,
            "With --trust-proxy-headers: the one request header the reverse proxy puts "
            "the client address in; no other is ever read. Its last entry (the one the "
            "proxy appended; earlier ones come from the client) is the client. "
            "X-Forwarded-For or another header of that form (a comma-separated list of "
            "addresses), or Forwarded (RFC 7239: the for= of its last element). A WebSocket "
            "handshake without an address there is refused with HTTP 400.",
            _header_name("proxy-header"),
        ],
        [
            "handshake-timeout",
            None,
            _DEFAULTS.open_handshake_timeout,
            "Seconds a client has to send a complete HTTP request and to complete the "
            "WebSocket opening handshake; slower ones are cut off.",
            _seconds("handshake-timeout"),
        ],
        [
            "http-idle-timeout",
            None,
            DEFAULT_HTTP_IDLE_TIMEOUT,
            "Seconds an idle kept-alive HTTP connection stays open.",
            _seconds("http-idle-timeout"),
        ],
        [
            "close-timeout",
            None,
            _DEFAULTS.close_handshake_timeout,
            "Seconds to wait for a client to answer a close frame before dropping it.",
            _seconds("close-timeout"),
        ],
        [
            "ping-interval",
            None,
            _DEFAULTS.ping_interval,
            "Seconds between WebSocket pings to each client (0: no pings).",
            _seconds("ping-interval"),
        ],
        [
            "online-interval",
            None,
            _DEFAULTS.online_interval,
            "Seconds between updates of the online count sent to clients on the start "
            "screen or in the queue, when it has changed (jittered by a fifth; 0: never).",
            _seconds("online-interval"),
        ],
        [
            "ping-timeout",
            None,
            _DEFAULTS.ping_timeout,
            "Seconds a client has to answer a ping before it is dropped as dead.",
            _seconds("ping-timeout"),
        ],
        [
            "max-buffer-bytes",
            None,
            _DEFAULTS.max_buffer_bytes,
            "Bytes that may pile up for a client that does not read (beyond the "
            "kernel's and the transport's buffers) before it is closed with 1008 (0: no limit).",
            _count("max-buffer-bytes"),
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT,
            "Seconds to wait at shutdown for clients to acknowledge the 1001 close.",
            _seconds("shutdown-timeout"),
        ],
        [
            "log-addresses",
            None,
            "yes",
            "yes: log client addresses hashed with a per-process key; no: log no address at all.",
            _yes_no("log-addresses"),
        ],
        [
            "log-level",
            None,
            DEFAULT_LEVEL.name,
            "Write log events of this level and above, from every source (this server, "
            "Autobahn, Twisted); chatroulette's and Autobahn's events below it are not even "
            "built. debug adds a line per chat started and per chat left. "
            "Under twist, twist's own --log-level (given before the plugin name) filters too.",
            _log_level,
        ],
        [
            "refused-log-lines",
            None,
            DEFAULT_LINES_PER_SECOND,
            "Log lines per second the whole server may write about refused or malformed "
            "requests, whoever logs them (Autobahn's handshake failures, Twisted's web "
            "server, this server's refusals and limits, access-log lines of 4xx answers), "
            "loopback clients included; a burst of one second's worth. Lines over it are "
            "dropped and counted in a summary line once a second. Other lines are never "
            f"dropped. In those lines client-chosen text is capped at {CLIENT_TEXT_LIMIT} "
            "characters, escaped, whatever the limit. 0: no limit.",
            _rate("refused-log-lines"),
        ],
        [
            "refused-log-bytes",
            None,
            DEFAULT_BYTES_PER_SECOND,
            "Bytes of message per second that the log lines about refused or malformed "
            "requests (see --refused-log-lines) may take, for the whole server (0: no limit).",
            _rate("refused-log-bytes"),
        ],
        [
            "report-ban-threshold",
            None,
            DEFAULT_REPORT_BAN_THRESHOLD,
            "Ban an address from chatting once this many distinct addresses reported it "
            "within --report-window (0: never ban).",
            _count("report-ban-threshold"),
        ],
        [
            "report-window",
            None,
            DEFAULT_REPORT_WINDOW,
            "Seconds within which reports count towards a ban.",
            _seconds("report-window"),
        ],
        [
            "ban-seconds",
            None,
            DEFAULT_BAN_SECONDS,
            "How long a ban lasts, in seconds.",
            _seconds("ban-seconds"),
        ],
        [
            "state-dir",
            None,
            ".",
            f"Directory for the bans file ({BANS_FILE}), created on the first ban.",
        ],
    ]

    optFlags = [
        [
            "no-fast-path",
            None,
            "Serve on Twisted's and Autobahn's public APIs only: no frame fast path, "
            "write-through or write batching (slower; for diagnosing a suspected fast-path "
            "problem; the fast path also turns itself off if a start-up check fails).",
        ],
        [
            "ice-relay-only",
            None,
            "Tell video clients to use only the TURN relay (iceTransportPolicy \"relay\"), so "
            "no stranger learns another's IP address; every video chat's media then goes "
            "through the TURN server. Needs a turn: or turns: --ice-server.",
        ],
        [
            "trust-proxy-headers",
            None,
            "Take the client address from the last entry of the --proxy-header header "
            "(default X-Forwarded-For), which the reverse proxy sets; use it only behind "
            "such a proxy, and only if clients cannot reach this server directly.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allowed-origin"] = []
        self["ice-server"] = []

    def opt_ice_server(self, url: str) -> None:
        """A STUN or TURN server for video chats' WebRTC connections (repeatable), a stun:, turn: or turns: URL, e.g. stun:stun.example.com:3478 or turn:turn.example.com:3478?transport=udp. TURN needs --turn-secret. Default: none (enough on a LAN or localhost)."""
        try:
            check_url(url)
        except ValueError as e:
            raise usage.UsageError(f"--ice-server: {e}")
        self["ice-server"].append(url)

    def opt_allowed_origin(self, origin: str) -> None:
        """Also accept WebSocket connections from pages of this origin (repeatable), e.g. https://chat.example.com (default port optional). Pages from the host the client connects to, and clients sending no Origin (not browsers), are always accepted."""
        if origin.strip() != "null":
            try:
                Origin.parse(origin)
            except ValueError as e:
                raise usage.UsageError(f"--allowed-origin: {e}")
        self["allowed-origin"].append(origin)

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint (repeatable; default tcp:8080), for example tcp:8080:interface=127.0.0.1 or ssl:8443:privateKey=key.pem:certKey=cert.pem."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for description in self["listen"]:
            try:
                strports.service(description, None, reactor)  # type: ignore[arg-type]
            except Exception as e:
                raise usage.UsageError(f"--listen {description!r} is not a valid endpoint: {e}")
        if self["static"] is not None:
            static = Path(self["static"])
            if not (static / "index.html").is_file():
                raise usage.UsageError(f"--static {self['static']!r} has no index.html")
            self["static"] = static
        else:
            try:
                self["static"] = default_static_dir()
            except FileNotFoundError as e:
                raise usage.UsageError(str(e))
        if isinstance(self["log-level"], str):
            self["log-level"] = level_named(self["log-level"])
        if isinstance(self["log-addresses"], str):
            self["log-addresses"] = _yes_no("log-addresses")(self["log-addresses"])
        if not self["handshake-timeout"]:
            raise usage.UsageError("--handshake-timeout must be positive")
        if self["ping-interval"] and not self["ping-timeout"]:
            raise usage.UsageError("--ping-timeout must be positive when pings are sent")
        if self["proxy-header"] != _DEFAULTS.proxy_header and not self["trust-proxy-headers"]:
            raise usage.UsageError("--proxy-header has no effect without --trust-proxy-headers")
        self._check_max_connections()
        self._read_secret_files()
        if self["turn-ttl"] != DEFAULT_TURN_TTL and self["turn-secret"] is None:
            raise usage.UsageError("--turn-ttl has no effect without --turn-secret")
        problem = self.ice().problem()
        if problem is not None:
            raise usage.UsageError(problem)
        state = Path(self["state-dir"])
        if state.exists() and not state.is_dir():
            raise usage.UsageError(f"--state-dir {self['state-dir']!r} is not a directory")
        # Found out now, not as a failed write at the first ban.
        try:
            state.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=state, prefix=".chatroulette-probe-") as probe:
                probe.write(b"probe")
                probe.flush()
        except OSError as e:
            raise usage.UsageError(
                f"--state-dir {self['state-dir']!r} cannot be created or written: {e.strerror or e}"
            )
        self["state-dir"] = state

    def _read_secret_files(self) -> None:
        """--turn-secret-file and --redis-file: the value is the file's first line."""
        for option, target, coerce in (
            ("turn-secret-file", "turn-secret", str),
            ("redis-file", "redis", _redis_url),
        ):
            path = self[option]
            if path is None:
                continue
            if self[target] is not None:
                raise usage.UsageError(f"--{option} and --{target} are two ways to say one thing: give one")
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--{option} {path!r} cannot be read: {getattr(e, 'strerror', None) or e}")
            if not lines or not lines[0].strip():
                raise usage.UsageError(f"--{option} {path!r} is empty")
            self[target] = coerce(lines[0].strip())

    def _check_max_connections(self) -> None:
        if tuning.running_as_program(self):
            tuning.raise_open_file_limit()
        limit = open_file_limit()
        most = default_max_connections(limit)
        if self["max-connections"] is None:
            self["max-connections"] = most
        elif limit is not None and self["max-connections"] > most:
            raise usage.UsageError(
                f"--max-connections {self['max-connections']} would run out of file descriptors: "
                f"the open-file limit (ulimit -n) is {limit}, room for at most {most}. "
                "Raise the limit (ulimit -n, systemd's LimitNOFILE=) or lower --max-connections."
            )

    def ice(self) -> IceConfig:
        """The ICE servers video clients are told about."""
        secret = self["turn-secret"]
        return IceConfig(
            urls=tuple(self["ice-server"]),
            turn_secret=secret.encode("utf-8") if secret is not None else None,
            turn_ttl=self["turn-ttl"],
            relay_only=bool(self["ice-relay-only"]),
        )

    def settings(self) -> Settings:
        """The connection-level settings these options describe."""
        return Settings(
            max_frame_bytes=self["max-frame-bytes"],
            open_handshake_timeout=self["handshake-timeout"],
            close_handshake_timeout=self["close-timeout"],
            ping_interval=self["ping-interval"],
            ping_timeout=self["ping-timeout"],
            online_interval=self["online-interval"],
            log_addresses=self["log-addresses"],
            message_rate=self["message-rate"],
            message_burst=self["message-burst"],
            typing_rate=self["typing-rate"],
            typing_burst=self["typing-burst"],
            request_rate=self["request-rate"],
            request_burst=self["request-burst"],
            signal_rate=self["signal-rate"],
            signal_burst=self["signal-burst"],
            frame_rate=self["frame-rate"],
            frame_burst=self["frame-burst"],
            max_buffer_bytes=self["max-buffer-bytes"],
            allowed_origins=tuple(self["allowed-origin"]),
            max_connections_per_ip=self["max-connections-per-ip"],
            max_connections=self["max-connections"],
            handshake_rate=self["max-handshake-rate"],
            handshake_burst=self["handshake-burst"],
            trust_proxy_headers=bool(self["trust-proxy-headers"]),
            proxy_header=self["proxy-header"],
            fast_path=not self["no-fast-path"],
        )


def makeService(options: Options) -> service.MultiService:
    """
    The service tree: one listening service per --listen endpoint, one shared
    site, all under the log configuration (--log-level and the log budget).
    """
    from twisted.internet import reactor

    clock = cast(IReactorTime, reactor)
    top = LogSetup(
        options["log-level"],
        cast(IReactorCore, reactor),
        clock,
        refused_lines=options["refused-log-lines"],
        refused_bytes=options["refused-log-bytes"],
    )
    lobby: ILobby
    moderation: Moderation
    link: RedisLink | None = None
    store: SQLiteBanStore | None = None
    settings = options.settings()
    hooks = Hooks.detect(settings.fast_path)
    if options["redis"] is not None:
        link = RedisLink(options["redis"], reactor, dead_after=options["node-dead-after"], fast=hooks.fast)
        shared = SharedModeration(
            lambda *report: redis_lobby.report_address(*report),
            options["report-ban-threshold"],
            options["report-window"],
            options["ban-seconds"],
        )
        redis_lobby = RedisLobby(
            cast(Clock, clock),
            link,
            BlockSystemRandom(),
            interest_timeout=options["interest-timeout"],
            repeat_cooldown=options["repeat-cooldown"],
            on_pair=log_pair,
            prefix=options["redis-prefix"],
            on_ban=shared.ban,
        )
        link.attach_lobby(redis_lobby)
        lobby, moderation = redis_lobby, shared
    else:
        lobby = Lobby(
            cast(Clock, clock),
            BlockSystemRandom(),
            interest_timeout=options["interest-timeout"],
            repeat_cooldown=options["repeat-cooldown"],
            on_pair=log_pair,
        )
        store = SQLiteBanStore(options["state-dir"] / BANS_FILE, reactor)  # type: ignore[arg-type]
        moderation = Moderation(
            options["report-ban-threshold"],
            options["report-window"],
            options["ban-seconds"],
            store,
        )
    factory = ChatServerFactory(
        lobby, clock, settings, moderation=moderation, ice=options.ice(), hooks=hooks
    )
    site = build_site(factory, options["static"], idle_timeout=options["http-idle-timeout"])
    for description in options["listen"]:
        ListeningService(description, site, reactor, WEBSOCKET_PATH).setServiceParent(top)
    ChatService(
        factory, clock, store, options["shutdown-timeout"], reactor=reactor, redis=link
    ).setServiceParent(top)
    if tuning.running_as_program(options):
        reactor.callWhenRunning(tuning.tune_collector)
    return top

"""
The wire format, without I/O: parse and validate client frames, encode server events.

Every client frame is a JSON object with a ``"type"``; every refusal is a
L{ProtocolError} carrying one of the error codes of C{docs/protocol.md}.
Nothing here imports Twisted or Autobahn.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final, Literal, Mapping, Sequence, Union

import orjson

MAX_TEXT_CHARS: Final = 2000
MAX_REASON_CHARS: Final = 200
MAX_INTERESTS: Final = 10
MAX_INTEREST_CHARS: Final = 32
MAX_INVITE_CHARS: Final = 64
# A signal's data, as compact UTF-8 JSON (what orjson writes).
MAX_SIGNAL_BYTES: Final = 16384

# Chat modes: what `find` and `invite` ask for, what `paired` says.
Mode = Literal["text", "video"]
TEXT: Final = "text"
VIDEO: Final = "video"
MODES: Final[tuple[Mode, ...]] = (TEXT, VIDEO)

BAD_REQUEST: Final = "bad_request"
TEXT_TOO_LONG: Final = "text_too_long"
NOT_CHATTING: Final = "not_chatting"
INVITE_INVALID: Final = "invite_invalid"
RATE_LIMITED: Final = "rate_limited"
BANNED: Final = "banned"
# The shared lobby (--redis) cannot be reached just now: retry later.
UNAVAILABLE: Final = "unavailable"

ERROR_CODES: Final = (BAD_REQUEST, TEXT_TOO_LONG, NOT_CHATTING, INVITE_INVALID, RATE_LIMITED, BANNED, UNAVAILABLE)

_WHITESPACE = re.compile(r"\s+")
# Hangul fillers: letters (category Lo) that render as nothing, so no
# whitespace test catches them.
_HANGUL_FILLERS: Final = frozenset("\u115f\u1160\u3164\uffa0")


class ProtocolError(Exception):
    """
    A client request was refused, by the parser or by the lobby: the client
    gets an C{error} frame with C{code}, the connection stays open and
    nothing changed.
    """

    def __init__(self, code: str, message: str, kind: str | None = None) -> None:
        """
        @param kind: the C{type} of the refused frame when the parser knew it
            before refusing (counted per type for some types: see C{signal}).
        """
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class Find:
    """Enter the random queue, or join a friend's invite."""

    interests: tuple[str, ...] = ()
    invite: str | None = None
    mode: Mode = TEXT


@dataclass(frozen=True)
class Message:
    """Text for the partner."""

    text: str


@dataclass(frozen=True)
class Typing:
    """The sender started or stopped typing."""

    active: bool


@dataclass(frozen=True)
class Leave:
    """End the chat or stop waiting."""


@dataclass(frozen=True)
class Report:
    """End the chat and never meet that partner again."""

    reason: str = ""


@dataclass(frozen=True)
class Invite:
    """Create a private invite code and wait for it."""

    mode: Mode = TEXT


@dataclass(frozen=True)
class Signal:
    """
    WebRTC signalling for the partner in a video chat, opaque to the server.

    C{data} is the client's object as compact UTF-8 JSON (at most
    L{MAX_SIGNAL_BYTES}): relayed as it is, never looked into.
    """

    data: bytes


ClientFrame = Union[Find, Message, Typing, Leave, Report, Invite, Signal]


def is_blank(text: str) -> bool:
    """
    Whether C{text} shows nothing: it is made only of whitespace, format
    characters (Unicode category Cf: zero-width space U+200B, word joiner
    U+2060, byte order mark U+FEFF, ...) and Hangul fillers (U+115F, U+1160,
    U+3164, U+FFA0).  The empty string is blank.

    It stops at the first visible character: one step for most text.
    """
    category = unicodedata.category
    for c in text:
        if not (c.isspace() or c in _HANGUL_FILLERS or category(c) == "Cf"):
            return False
    return True


def normalise_interest(raw: object) -> str:
    """
    Trim, lower-case and collapse inner whitespace of one interest.

    @raise ProtocolError: (C{bad_request}) when it is not a string of 1 to
        L{MAX_INTEREST_CHARS} characters once normalised, or is blank (see
        L{is_blank}).
    """
    if not isinstance(raw, str):
        raise ProtocolError(BAD_REQUEST, "Each interest must be a string.")
    interest = _WHITESPACE.sub(" ", raw).strip().lower()
    if not 1 <= len(interest) <= MAX_INTEREST_CHARS or is_blank(interest):
        raise ProtocolError(
            BAD_REQUEST, f"Each interest must be 1 to {MAX_INTEREST_CHARS} characters."
        )
    return interest


def normalise_interests(raw: object) -> tuple[str, ...]:
    """
    Validate and normalise an C{interests} field (absent/null means none).

    Duplicates after normalisation are merged; the result is sorted.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(BAD_REQUEST, "'interests' must be a list of strings.")
    if len(raw) > MAX_INTERESTS:
        raise ProtocolError(BAD_REQUEST, f"At most {MAX_INTERESTS} interests are allowed.")
    return tuple(sorted({normalise_interest(item) for item in raw}))


def _text(frame: dict[str, Any]) -> str:
    text = frame.get("text")
    if not isinstance(text, str):
        raise ProtocolError(BAD_REQUEST, "'text' must be a string.")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(TEXT_TOO_LONG, f"Messages are limited to {MAX_TEXT_CHARS} characters.")
    if is_blank(text):
        raise ProtocolError(BAD_REQUEST, "Empty messages are not sent.")
    return text


def _mode(frame: dict[str, Any]) -> Mode:
    """The C{mode} field: absent or null for text, else "text" or "video"."""
    mode = frame.get("mode")
    if mode is None or mode == TEXT:
        return TEXT
    if mode == VIDEO:
        return VIDEO
    raise ProtocolError(BAD_REQUEST, "'mode' must be \"text\" or \"video\".")


def _find(frame: dict[str, Any]) -> Find:
    invite = frame.get("invite")
    if invite is not None and (not isinstance(invite, str) or len(invite) > MAX_INVITE_CHARS):
        raise ProtocolError(BAD_REQUEST, "'invite' must be an invite code string.")
    return Find(normalise_interests(frame.get("interests")), invite, _mode(frame))


def _signal(frame: dict[str, Any]) -> Signal:
    # Only the type and the size are checked: the data (SDP, ICE candidates)
    # holds addresses, and the server never looks into it.
    data = frame.get("data")
    if not isinstance(data, dict):
        raise ProtocolError(BAD_REQUEST, "'data' must be an object.", "signal")
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError:
        # Parsed, but deeper than orjson writes (254 levels).
        raise ProtocolError(BAD_REQUEST, "'data' is nested too deeply.", "signal") from None
    if len(encoded) > MAX_SIGNAL_BYTES:
        raise ProtocolError(
            BAD_REQUEST, f"'data' is limited to {MAX_SIGNAL_BYTES} bytes of JSON.", "signal"
        )
    return Signal(encoded)


def _typing(frame: dict[str, Any]) -> Typing:
    active = frame.get("active")
    if not isinstance(active, bool):
        raise ProtocolError(BAD_REQUEST, "'active' must be true or false.")
    return Typing(active)


def _report(frame: dict[str, Any]) -> Report:
    reason = frame.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ProtocolError(
            BAD_REQUEST, f"'reason' must be a string of at most {MAX_REASON_CHARS} characters."
        )
    return Report(reason)


def parse_client_frame(payload: bytes | str) -> ClientFrame:
    """
    Parse one client text frame into a typed request.

    orjson is strict where the standard library is lenient, which is what a
    chat server wants: it refuses invalid UTF-8, lone surrogates (so every
    string it returns can be encoded again), NaN/Infinity, and nesting deeper
    than 1024.

    @raise ProtocolError: with code C{bad_request} or C{text_too_long}.
    """
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProtocolError(BAD_REQUEST, "Frames must be JSON objects.") from None
    if not isinstance(frame, dict):
        raise ProtocolError(BAD_REQUEST, "Frames must be JSON objects.")
    kind = frame.get("type")
    # The hot path first: most frames are messages and typing signals.
    if kind == "message":
        return Message(_text(frame))
    if kind == "typing":
        return _typing(frame)
    if kind == "signal":
        return _signal(frame)
    if kind == "find":
        return _find(frame)
    if kind == "leave":
        return Leave()
    if kind == "report":
        return _report(frame)
    if kind == "invite":
        return Invite(_mode(frame))
    raise ProtocolError(BAD_REQUEST, "Unknown or missing 'type'.")


def encode(event: dict[str, Any]) -> bytes:
    """Encode one server event as a compact UTF-8 JSON text frame."""
    return orjson.dumps(event)


def welcome(online: int) -> bytes:
    return encode({"type": "welcome", "online": online})


def waiting() -> bytes:
    return encode({"type": "waiting"})


def paired(
    chat: str,
    interests: Sequence[str],
    mode: Mode = TEXT,
    initiator: bool = False,
    ice: Mapping[str, Any] | None = None,
) -> bytes:
    """
    The C{paired} event.  A video chat's adds C{initiator} and the fields of
    C{ice} (C{ice_servers} and C{ice_transport_policy}, see
    L{chatroulette.ice.IceConfig.client_config}); a text chat's has neither.
    """
    event: dict[str, Any] = {"type": "paired", "chat": chat, "interests": sorted(interests), "mode": mode}
    if mode == VIDEO:
        event["initiator"] = initiator
        if ice is not None:
            event.update(ice)
    return encode(event)


def message(text: str) -> bytes:
    return encode({"type": "message", "text": text})


def typing(active: bool) -> bytes:
    return b'{"type":"typing","active":true}' if active else b'{"type":"typing","active":false}'


def signal(data: bytes) -> bytes:
    """The partner's signal: C{data} is already compact JSON (see L{Signal})."""
    return b'{"type":"signal","data":' + data + b"}"


def partner_left(chat: str) -> bytes:
    return encode({"type": "partner_left", "chat": chat})


def invite(code: str) -> bytes:
    return encode({"type": "invite", "code": code})


def invite_expired(code: str) -> bytes:
    return encode({"type": "invite_expired", "code": code})


def online(count: int) -> bytes:
    return encode({"type": "online", "count": count})


def error(code: str, message: str) -> bytes:
    return encode({"type": "error", "code": code, "message": message})

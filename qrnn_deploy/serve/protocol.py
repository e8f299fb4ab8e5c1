"""The wire protocol: parsing and checking client messages (docs/server.md has the full protocol).

Client -> server (WebSocket text frames, JSON objects; UTF-8 binary frames are read the same):
  {"type": "source", "text": "..."}                  a piece of the source (any number)
  {"type": "end", "beam": K?, "max_len": N?, "length_penalty": a?}   the source is complete
  {"type": "reset"}                                  drop every unfinished sentence (source or decoding)
  {"type": "ping"}                                   answered with {"type": "pong"}
Server -> client:
  {"type": "token", "text", "ids", "index", "ms"}     target tokens that became final (one or more)
  {"type": "done", "text", "tokens", ...timings}      the full translation
  {"type": "reset"} / {"type": "pong"}                acknowledgements
  {"type": "error", "code", "message"}                a problem; the connection stays usable unless
                                                      it is then closed (busy, unauthorized, idle)
"""

from __future__ import annotations

import json
from typing import Optional, Union

from qrnn_deploy.limits import LENGTH_PENALTY_RANGE
from qrnn_deploy.serve.config import ServeConfig

CLIENT_TYPES = ("source", "end", "reset", "ping")

# WebSocket close codes the server uses (RFC 6455 section 7.4; 4xxx are ours).
CLOSE_TRY_AGAIN_LATER = 1013  # too many streams, or the server is draining
CLOSE_POLICY = 1008  # missing or wrong API key
CLOSE_IDLE = 4408  # idle timeout (like HTTP 408)
CLOSE_INTERNAL_ERROR = 1011  # a server bug ended the connection (after an "internal" error message)


class ProtocolError(Exception):
    """A client message the server cannot use; `code` is a short machine-readable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def to_json(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


def decode_frame(data: Union[str, bytes, None], max_bytes: int) -> str:
    """A WebSocket message -> its text. Binary frames must hold UTF-8; both are size-checked."""
    if data is None:
        raise ProtocolError("bad_message", "empty WebSocket message")
    if isinstance(data, (bytes, bytearray)):
        if len(data) > max_bytes:
            raise ProtocolError("too_large", f"message of {len(data)} bytes is over the limit of {max_bytes} bytes; "
                                             "send the source in smaller pieces")
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("bad_utf8", f"binary message is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                            "send JSON text messages") from None
    # Text frames arrive decoded; their size in UTF-8 is at most 4 bytes a character, so the exact
    # count is needed only near the limit.
    if len(data) * 4 > max_bytes and len(data.encode("utf-8")) > max_bytes:
        raise ProtocolError("too_large", f"message of {len(data.encode('utf-8'))} bytes is over the limit of "
                                         f"{max_bytes} bytes; send the source in smaller pieces")
    return data


def parse_message(text: str) -> dict:
    """JSON text -> a checked client message dict with a known "type"."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, and numbers over the digit limit
        raise ProtocolError("bad_json", f"malformed JSON ({e}); send objects like "
                                        '{"type": "source", "text": "..."}') from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"expected a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("bad_type", f"unknown message type {shown(kind)}; expected one of {list(CLIENT_TYPES)}")
    if kind == "source" and not isinstance(msg.get("text"), str):
        raise ProtocolError("bad_message", 'a "source" message needs a string "text"')
    return msg


def shown(v, limit: int = 40) -> str:
    """repr(v) for an error message, cut to about `limit` characters (a message must not echo a
    client's whole, possibly huge, value back)."""
    r = repr(v)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def _int(d: dict, key: str, lo: int, hi: int, default: int) -> int:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError("bad_option", f'"{key}" must be an integer in [{lo}, {hi}], got {shown(v)}')
    return v


def decode_options(d: dict, cfg: ServeConfig) -> tuple[int, int, float]:
    """(beam, max_len, length_penalty) from a request, within the server's limits."""
    beam = _int(d, "beam", 1, cfg.max_beam, cfg.beam)
    max_len = _int(d, "max_len", 1, cfg.max_len, cfg.max_len)
    lp = d.get("length_penalty")
    if lp is None:
        lp = cfg.length_penalty
    elif isinstance(lp, bool) or not isinstance(lp, (int, float)) or not LENGTH_PENALTY_RANGE[0] <= lp <= LENGTH_PENALTY_RANGE[1]:
        lo, hi = LENGTH_PENALTY_RANGE
        raise ProtocolError("bad_option", f'"length_penalty" must be a number in [{lo:g}, {hi:g}], got {shown(lp)}')
    return beam, max_len, float(lp)


def check_source_length(current: int, piece: str, cfg: ServeConfig) -> Optional[ProtocolError]:
    """The error to send when `piece` would make the source longer than allowed, else None."""
    if current + len(piece) > cfg.max_source_chars:
        return ProtocolError("source_too_long",
                             f"the source would be {current + len(piece)} characters, over the limit of "
                             f"{cfg.max_source_chars}; the sentence was dropped, send a shorter one")
    return None
